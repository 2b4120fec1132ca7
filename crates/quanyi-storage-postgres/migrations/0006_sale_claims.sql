-- Claims that sale writes take in their own transaction (the engine's idempotency keys first;
-- later one-use coupons and once-per-member packs). Each (tenant, scope, key) is taken at most
-- once and keeps the value it was taken with; taken_at is when (microseconds since the Unix
-- epoch, UTC). No existing table changes.
CREATE TABLE sale_claims (
    tenant   text COLLATE "C" NOT NULL,
    scope    text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    value    text NOT NULL,
    taken_at bigint NOT NULL,
    CONSTRAINT sale_claims_pkey PRIMARY KEY (tenant, scope, key)
);
