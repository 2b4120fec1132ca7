-- Version 3: withdrawn cards, the blind-index scheme of every card, and conflicting repeats of
-- payment notices kept for reconciliation.
--
-- SQLite cannot change a table's CHECK or UNIQUE constraints in place, so `cards` and
-- `payment_notices` are rebuilt as https://www.sqlite.org/lang_altertable.html#otheralter
-- describes: create the new table, copy every row, drop the old table (and its indexes), rename
-- the new one, create the indexes again. No foreign key, trigger or view refers to either table.
-- The migration runs in one transaction: it is applied whole or not at all.

-- Sealed card keys. state: available | reserved (order_id, until) | sold (order_id, sold_at) |
-- withdrawn (withdrawn_at; taken out of sale for good, its blind index still held).
-- index_scheme: how blind_index was normalised (quanyi_vault::IndexScheme; 1 = Legacy, the
-- scheme of every card stored before this version). hold_seq orders the cards an order holds
-- (reservation order, then commit order).
CREATE TABLE cards_v3 (
    id           BLOB    NOT NULL PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    sku          BLOB    NOT NULL,
    batch        BLOB    NOT NULL,
    blind_index  BLOB    NOT NULL,
    index_scheme INTEGER NOT NULL CHECK (index_scheme BETWEEN 1 AND 255),
    code         BLOB    NOT NULL,
    secret       BLOB,
    key_id       INTEGER NOT NULL,
    state        TEXT    NOT NULL
                 CHECK (state IN ('available', 'reserved', 'sold', 'withdrawn')),
    order_id     BLOB,
    until        INTEGER,
    sold_at      INTEGER,
    withdrawn_at INTEGER,
    hold_seq     INTEGER,
    imported_at  INTEGER NOT NULL,
    UNIQUE (tenant, blind_index),
    CHECK ((state IN ('reserved', 'sold')) = (order_id IS NOT NULL)),
    CHECK ((state = 'reserved') = (until IS NOT NULL)),
    CHECK ((state = 'sold') = (sold_at IS NOT NULL)),
    CHECK ((state = 'withdrawn') = (withdrawn_at IS NOT NULL))
) WITHOUT ROWID;

INSERT INTO cards_v3 (id, tenant, sku, batch, blind_index, index_scheme, code, secret, key_id,
                      state, order_id, until, sold_at, withdrawn_at, hold_seq, imported_at)
SELECT id, tenant, sku, batch, blind_index, 1, code, secret, key_id,
       state, order_id, until, sold_at, NULL, hold_seq, imported_at
FROM cards;

DROP TABLE cards;
ALTER TABLE cards_v3 RENAME TO cards;

-- Available cards oldest first, and stock counts per state.
CREATE INDEX cards_pool ON cards (tenant, sku, state, id);
-- Reservations by deadline: lapsed ones are free again.
CREATE INDEX cards_deadlines ON cards (tenant, sku, until) WHERE state = 'reserved';
CREATE INDEX cards_by_order ON cards (order_id, hold_seq) WHERE order_id IS NOT NULL;
-- Cards per key: resealing and destroying a key.
CREATE INDEX cards_by_key ON cards (tenant, key_id, id);
-- Cards of a scheme older than the current one (2), in card order: what re-indexing still has
-- to do. Empty once every card is re-indexed.
CREATE INDEX cards_to_reindex ON cards (tenant, id) WHERE index_scheme < 2;

-- Payment notices, in arrival order (seq): the first notice of each transaction (claim = ''),
-- and the repeats of a recorded transaction that name another order or amount, kept for
-- reconciliation once per claim (claim = 'order minor currency exponent'). Both draw seq from
-- the one AUTOINCREMENT sequence, so the notices to reconcile list in the order they came.
CREATE TABLE payment_notices_v3 (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    claim          TEXT    NOT NULL DEFAULT '',
    reconcile      INTEGER NOT NULL,
    doc            TEXT    NOT NULL,
    UNIQUE (tenant, provider, transaction_id, claim)
);

-- Copied with their seq, so the new table's sequence starts after the last notice.
INSERT INTO payment_notices_v3 (seq, tenant, provider, transaction_id, claim, reconcile, doc)
SELECT seq, tenant, provider, transaction_id, '', reconcile, doc
FROM payment_notices;

DROP TABLE payment_notices;
ALTER TABLE payment_notices_v3 RENAME TO payment_notices;

CREATE INDEX payment_notices_to_reconcile ON payment_notices (tenant, seq) WHERE reconcile = 1;
