-- quanyi PostgreSQL schema, version 1.
--
-- Runs inside the store's schema (the search_path of every pooled connection). Timestamps are
-- BIGINT microseconds since the Unix epoch (UTC); aggregates are JSON text written and read by
-- serde_json, next to the columns the queries need. Keys and names compare byte-wise
-- (COLLATE "C"), as the in-memory reference adapter does.

CREATE TABLE goods (
    tenant  text COLLATE "C" NOT NULL,
    id      uuid NOT NULL,
    version bigint NOT NULL,
    doc     text NOT NULL,
    CONSTRAINT goods_pkey PRIMARY KEY (tenant, id)
);

-- Which goods hold a SKU. A SKU id belongs to one goods per tenant, for good.
CREATE TABLE skus (
    tenant text COLLATE "C" NOT NULL,
    sku    uuid NOT NULL,
    goods  uuid NOT NULL,
    CONSTRAINT skus_pkey PRIMARY KEY (tenant, sku)
);

CREATE TABLE orders (
    tenant     text COLLATE "C" NOT NULL,
    id         uuid NOT NULL,
    member     text COLLATE "C" NOT NULL,
    status     text NOT NULL,
    expires_at bigint NOT NULL,
    version    bigint NOT NULL,
    doc        text NOT NULL,
    CONSTRAINT orders_pkey PRIMARY KEY (tenant, id)
);
CREATE INDEX orders_member ON orders (tenant, member, id);
CREATE INDEX orders_unpaid_due ON orders (expires_at, tenant, id)
    WHERE status = 'awaiting_payment';

-- The SKU quantities of each order, for per-member limits (lines never change after placing).
CREATE TABLE order_lines (
    tenant   text COLLATE "C" NOT NULL,
    order_id uuid NOT NULL,
    no       integer NOT NULL,
    member   text COLLATE "C" NOT NULL,
    sku      uuid NOT NULL,
    quantity bigint NOT NULL,
    CONSTRAINT order_lines_pkey PRIMARY KEY (tenant, order_id, no)
);
CREATE INDEX order_lines_member_sku ON order_lines (tenant, member, sku);

-- Card keys, sealed. One row, one state, one holding order: a card is never held or sold by
-- two orders. hold_pos orders the cards of one order by when it took them.
CREATE TABLE cards (
    id             uuid NOT NULL,
    tenant         text COLLATE "C" NOT NULL,
    sku            uuid NOT NULL,
    batch          uuid NOT NULL,
    blind_index    bytea NOT NULL,
    code           bytea NOT NULL,
    secret         bytea,
    key_id         bigint NOT NULL,
    state          text NOT NULL,
    order_id       uuid,
    reserved_until bigint,
    sold_at        bigint,
    hold_pos       bigint,
    imported_at    bigint NOT NULL,
    CONSTRAINT cards_pkey PRIMARY KEY (id),
    CONSTRAINT cards_blind_index_key UNIQUE (tenant, blind_index),
    CONSTRAINT cards_state_check CHECK (
        (state = 'available' AND order_id IS NULL AND reserved_until IS NULL AND sold_at IS NULL)
        OR (state = 'reserved' AND order_id IS NOT NULL AND reserved_until IS NOT NULL
            AND sold_at IS NULL)
        OR (state = 'sold' AND order_id IS NOT NULL AND sold_at IS NOT NULL)
    )
);
-- Allocation: the unsold cards of a SKU in card order (FOR UPDATE SKIP LOCKED walks it). It is
-- the only index on (tenant, sku) that unsold cards are in, so no plan sorts a whole pool.
CREATE INDEX cards_free ON cards (tenant, sku, id) WHERE state <> 'sold';
-- Stock counts of sold cards.
CREATE INDEX cards_sold ON cards (tenant, sku) WHERE state = 'sold';
-- The cards an order holds. Every index on cards leads with a selective column (or is partial
-- on one SKU's pool), so even before the first ANALYZE no plan scans a whole tenant.
CREATE INDEX cards_order ON cards (order_id, tenant, hold_pos) WHERE order_id IS NOT NULL;
-- Resealing before a key is retired.
CREATE INDEX cards_key ON cards (key_id, tenant, id);

CREATE TABLE key_rings (
    tenant  text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    doc     text NOT NULL,
    CONSTRAINT key_rings_pkey PRIMARY KEY (tenant)
);

CREATE TABLE payment_notices (
    tenant         text COLLATE "C" NOT NULL,
    provider       text COLLATE "C" NOT NULL,
    transaction_id text COLLATE "C" NOT NULL,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    reconcile      boolean NOT NULL,
    doc            text NOT NULL,
    CONSTRAINT payment_notices_pkey PRIMARY KEY (tenant, provider, transaction_id)
);
CREATE INDEX payment_notices_reconcile ON payment_notices (tenant, seq) WHERE reconcile;

CREATE TABLE events (
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    id             uuid NOT NULL,
    tenant         text COLLATE "C" NOT NULL,
    aggregate_type text COLLATE "C" NOT NULL,
    aggregate_id   text COLLATE "C" NOT NULL,
    doc            text NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (seq),
    CONSTRAINT events_id_key UNIQUE (id)
);
CREATE INDEX events_aggregate ON events (tenant, aggregate_type, aggregate_id, seq);

CREATE TABLE audit (
    seq    bigint GENERATED ALWAYS AS IDENTITY,
    id     uuid NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    doc    text NOT NULL,
    CONSTRAINT audit_pkey PRIMARY KEY (seq),
    CONSTRAINT audit_id_key UNIQUE (id)
);
CREATE INDEX audit_tenant ON audit (tenant, seq);

CREATE TABLE jobs (
    id          uuid NOT NULL,
    tenant      text COLLATE "C" NOT NULL,
    kind        text NOT NULL,
    dedupe_key  text COLLATE "C" NOT NULL,
    payload     text NOT NULL,
    run_at      bigint NOT NULL,
    status      text NOT NULL,
    worker      text,
    lease_until bigint,
    dead_reason text,
    attempts    bigint NOT NULL,
    last_error  text,
    created_at  bigint NOT NULL,
    CONSTRAINT jobs_pkey PRIMARY KEY (id),
    CONSTRAINT jobs_dedupe_key UNIQUE (tenant, dedupe_key),
    CONSTRAINT jobs_status_check CHECK (
        (status = 'running' AND worker IS NOT NULL AND lease_until IS NOT NULL)
        OR (status = 'dead' AND dead_reason IS NOT NULL)
        OR status IN ('queued', 'done')
    )
);
CREATE INDEX jobs_queued ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until, id) WHERE status = 'running';
CREATE INDEX jobs_dead ON jobs (tenant, id) WHERE status = 'dead';
