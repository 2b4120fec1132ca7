-- A tenant's pricing rules (price lists, promotions, coupon templates) as a versioned set of
-- entries, every entry's revisions, the coupons issued to members, and budgets of amounts.
-- Instants are microseconds since the Unix epoch (UTC), as everywhere in this schema.
--
-- The rules' version, one row per tenant that ever wrote its rules (no row: version 0). A write
-- of the rules moves it by compare-and-swap on this row (an UPDATE from the version it was made
-- from, or an INSERT that does nothing on conflict for version 0), so two writers from one
-- version queue on the row and only the first wins. A placement priced from a version reads
-- the row by its key in its own statement, as it reads the versions of its goods.
CREATE TABLE pricing_heads (
    tenant  text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    CONSTRAINT pricing_heads_pkey PRIMARY KEY (tenant)
);
-- The entries in force: each one's body (JSON text the store never reads; large ones are
-- TOASTed) and the version that last wrote it.
CREATE TABLE pricing_entries (
    tenant     text COLLATE "C" NOT NULL,
    kind       text COLLATE "C" NOT NULL,
    id         text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    body       text NOT NULL,
    updated_at bigint NOT NULL,
    CONSTRAINT pricing_entries_pkey PRIMARY KEY (tenant, kind, id)
);
-- Every change of an entry, one row per version that changed it: its body, or NULL where the
-- version removed it. Read per entry, newest first, through the key.
CREATE TABLE pricing_revisions (
    tenant  text COLLATE "C" NOT NULL,
    kind    text COLLATE "C" NOT NULL,
    id      text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    body    text,
    at      bigint NOT NULL,
    CONSTRAINT pricing_revisions_pkey PRIMARY KEY (tenant, kind, id, version)
);
-- Coupons issued to members: each code once per tenant (codes compare byte-wise, so case
-- counts; a code issued by a concurrent call fails on coupons_pkey), listed per member by
-- issue time then code.
CREATE TABLE coupons (
    tenant     text COLLATE "C" NOT NULL,
    code       text COLLATE "C" NOT NULL,
    template   text COLLATE "C" NOT NULL,
    member     text COLLATE "C" NOT NULL,
    source     text NOT NULL,
    valid_from bigint NOT NULL,
    valid_to   bigint NOT NULL,
    issued_at  bigint NOT NULL,
    CONSTRAINT coupons_pkey PRIMARY KEY (tenant, code)
);
CREATE INDEX coupons_by_member ON coupons (tenant, member, issued_at, code);
-- Budgets of amounts: a take names what it uses (one use, or a discount's minor units, which
-- pass integer), and an order closed unpaid gives back exactly what it took. Rows written by
-- version 10 took one use each, which the default says (a default that is a constant adds the
-- column without rewriting the table). Changing the type of sale_budgets' counters rewrites
-- that table, which holds one row per budget.
ALTER TABLE sale_budgets ALTER COLUMN used TYPE bigint, ALTER COLUMN lim TYPE bigint;
ALTER TABLE order_budgets ADD COLUMN amount bigint NOT NULL DEFAULT 1;
