-- Version 10: a tenant's pricing rules (price lists, promotions, coupon templates) as a
-- versioned set of entries, every entry's revisions, the coupons issued to members, and budgets
-- of amounts. Instants are nanoseconds since the Unix epoch (UTC), as everywhere in this file.
--
-- The rules' version, one row per tenant that ever wrote its rules (no row: version 0). A
-- placement priced from a version reads this row by its key, inside its BEGIN IMMEDIATE
-- transaction, so no write of the rules comes between its check and its commit.
CREATE TABLE pricing_heads (
    tenant  TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;
-- The entries in force: each one's body (JSON text the store never reads) and the version that
-- last wrote it. A rowid table, unlike the small tables here: a body may be 256 KiB, and a
-- WITHOUT ROWID table keeps whole rows in its key's B-tree, where rows that large are slow.
CREATE TABLE pricing_entries (
    tenant     TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, id)
);
-- Every change of an entry, one row per version that changed it: its body, or NULL where the
-- version removed it. Read per entry, newest first. A rowid table for the same reason.
CREATE TABLE pricing_revisions (
    tenant  TEXT    NOT NULL,
    kind    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    body    TEXT,
    at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, id, version)
);
-- Coupons issued to members: each code once per tenant (codes compare byte-wise, so case
-- counts), listed per member by issue time then code.
CREATE TABLE coupons (
    tenant     TEXT    NOT NULL,
    code       TEXT    NOT NULL,
    template   TEXT    NOT NULL,
    member     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    valid_from INTEGER NOT NULL,
    valid_to   INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, code)
) WITHOUT ROWID;
CREATE INDEX coupons_by_member ON coupons (tenant, member, issued_at, code);
-- Budgets of amounts: a take names what it uses (one use, or a discount's minor units), and
-- an order closed unpaid gives back exactly what it took. Rows written by version 9 took one
-- use each, which the default says.
ALTER TABLE order_budgets ADD COLUMN amount INTEGER NOT NULL DEFAULT 1;
