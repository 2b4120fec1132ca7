-- quanyi SQLite schema, version 1.
-- Ids are 16-byte UUID v7 BLOBs (byte order = time order). Instants are INTEGER nanoseconds
-- since the Unix epoch (UTC). Aggregates are JSON documents (`doc`) plus the columns the
-- queries need; the columns are written from the document in the same statement.

CREATE TABLE goods (
    tenant  TEXT    NOT NULL,
    id      BLOB    NOT NULL,
    version INTEGER NOT NULL,
    doc     TEXT    NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;

-- Which goods hold a SKU (a SKU never moves to other goods).
CREATE TABLE skus (
    tenant TEXT NOT NULL,
    sku    BLOB NOT NULL,
    goods  BLOB NOT NULL,
    PRIMARY KEY (tenant, sku)
) WITHOUT ROWID;

CREATE TABLE orders (
    tenant     TEXT    NOT NULL,
    id         BLOB    NOT NULL,
    member     TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    doc        TEXT    NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;

CREATE INDEX orders_by_member ON orders (tenant, member, id);
CREATE INDEX orders_unpaid_due ON orders (expires_at, tenant, id)
    WHERE status = 'awaiting_payment';

-- Order lines as the member limits count them (quantity per SKU per member); the key leads
-- with what the limit query looks up.
CREATE TABLE order_lines (
    tenant   TEXT    NOT NULL,
    member   TEXT    NOT NULL,
    sku      BLOB    NOT NULL,
    order_id BLOB    NOT NULL,
    line     INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (tenant, member, sku, order_id, line)
) WITHOUT ROWID;

-- Sealed card keys. state: available | reserved (order_id, until) | sold (order_id, sold_at).
-- hold_seq orders the cards an order holds (reservation order, then commit order).
CREATE TABLE cards (
    id          BLOB    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    sku         BLOB    NOT NULL,
    batch       BLOB    NOT NULL,
    blind_index BLOB    NOT NULL,
    code        BLOB    NOT NULL,
    secret      BLOB,
    key_id      INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('available', 'reserved', 'sold')),
    order_id    BLOB,
    until       INTEGER,
    sold_at     INTEGER,
    hold_seq    INTEGER,
    imported_at INTEGER NOT NULL,
    UNIQUE (tenant, blind_index),
    CHECK ((state = 'available') = (order_id IS NULL)),
    CHECK ((state = 'reserved') = (until IS NOT NULL)),
    CHECK ((state = 'sold') = (sold_at IS NOT NULL))
) WITHOUT ROWID;

-- Available cards oldest first, and stock counts per state.
CREATE INDEX cards_pool ON cards (tenant, sku, state, id);
-- Reservations by deadline: lapsed ones are free again.
CREATE INDEX cards_deadlines ON cards (tenant, sku, until) WHERE state = 'reserved';
CREATE INDEX cards_by_order ON cards (order_id, hold_seq) WHERE order_id IS NOT NULL;
CREATE INDEX cards_by_key ON cards (tenant, key_id, id);

CREATE TABLE key_rings (
    tenant  TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL,
    doc     TEXT    NOT NULL
) WITHOUT ROWID;

-- seq is the order notices were recorded in.
CREATE TABLE payment_notices (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    reconcile      INTEGER NOT NULL,
    doc            TEXT    NOT NULL,
    UNIQUE (tenant, provider, transaction_id)
);

CREATE INDEX payment_notices_to_reconcile ON payment_notices (tenant, seq) WHERE reconcile = 1;

-- seq is the global write order the event feed pages by.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    tenant         TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    doc            TEXT    NOT NULL
);

CREATE INDEX events_by_aggregate ON events (tenant, aggregate_type, aggregate_id, seq);

CREATE TABLE audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    id     BLOB    NOT NULL UNIQUE,
    tenant TEXT    NOT NULL,
    doc    TEXT    NOT NULL
);

CREATE INDEX audit_by_tenant ON audit (tenant, seq);

-- status: queued (run_at) | running (worker, lease_until) | done | dead (dead_reason).
CREATE TABLE jobs (
    id          BLOB    NOT NULL PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    dedupe_key  TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    run_at      INTEGER NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'done', 'dead')),
    worker      TEXT,
    lease_until INTEGER,
    dead_reason TEXT,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (tenant, dedupe_key)
) WITHOUT ROWID;

CREATE INDEX jobs_queued ON jobs (run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until, id) WHERE status = 'running';
CREATE INDEX jobs_dead ON jobs (tenant, id) WHERE status = 'dead';
