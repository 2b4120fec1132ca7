-- Version 5: claims that sale writes take in their own transaction (the engine's idempotency
-- keys first; later one-use coupons and once-per-member packs). Each (tenant, scope, key) is
-- taken at most once and keeps the value it was taken with; `taken_at` is when (nanoseconds
-- since the Unix epoch, UTC). No existing table changes.
CREATE TABLE sale_claims (
    tenant   TEXT    NOT NULL,
    scope    TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    taken_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope, key)
) WITHOUT ROWID;
