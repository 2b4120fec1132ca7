-- Version 4: a lean order path. A commit costs about one fsync plus the pages it writes to the
-- write-ahead log (each B-tree page an order touches is a whole page in the log), so this version
-- cuts the B-tree pages that placing and paying an order write:
--
-- 1. An order's lines live in its row (`orders.lines`): what member limits count is read from
--    the member's orders through `orders_by_member`, and `order_lines` is dropped.
-- 2. Events are stored one row per aggregate change: `events.doc` holds the change's events as
--    one JSON array (rows written before hold one event as a JSON object, and still read), and
--    `event_ids` maps every event id to the row that holds it (small entries, so the id check
--    and the feed's cursor stay exact for every event, not just a row's first).
-- 3. No index that the order path changes holds every card: `cards_pool` (every card, by state)
--    gives way to partial indexes of available and withdrawn cards and an index of all cards
--    by SKU for counts, so reserving a card and selling it move only the entries they must.
-- 4. `events` and `payment_notices` lose AUTOINCREMENT (rows are never deleted, so the largest
--    seq plus one is as good, and no write touches `sqlite_sequence`); `payment_notices` keeps
--    its notices in its unique key (WITHOUT ROWID), so a notice is one B-tree entry.
--
-- SQLite cannot drop AUTOINCREMENT or change a table to WITHOUT ROWID in place, so `events` and
-- `payment_notices` are rebuilt (create, copy, drop, rename, indexes again), as version 3 did.
-- No foreign key, trigger or view refers to any of these tables. The migration runs in one
-- transaction: it is applied whole or not at all.

-- 1. Order lines: each line's SKU (16 bytes) and quantity (4 bytes, big-endian), in line order.
ALTER TABLE orders ADD COLUMN lines BLOB NOT NULL DEFAULT x'';
UPDATE orders SET lines = COALESCE(
    (SELECT unhex(group_concat(hex(l.sku) || printf('%08X', l.quantity), '' ORDER BY l.line))
     FROM order_lines l
     WHERE l.tenant = orders.tenant AND l.order_id = orders.id),
    x'');
DROP TABLE order_lines;

-- 2 and 4. Events, one row per aggregate change; seq is the feed order (write order).
CREATE TABLE events_v4 (
    seq            INTEGER PRIMARY KEY,
    tenant         TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    doc            TEXT    NOT NULL
);

INSERT INTO events_v4 (seq, tenant, aggregate_type, aggregate_id, doc)
SELECT seq, tenant, aggregate_type, aggregate_id, doc FROM events;

-- Every stored event id and the row (seq) that holds it.
CREATE TABLE event_ids (
    id  BLOB    NOT NULL PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO event_ids (id, seq) SELECT id, seq FROM events;

DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;

CREATE INDEX events_by_aggregate ON events (tenant, aggregate_type, aggregate_id, seq);

-- 3. Cards: free cards oldest first (what allocation reads), withdrawn cards and all cards per
-- SKU (stock counts: sold = all - available - reserved - withdrawn). Reservations by deadline
-- (`cards_deadlines`) and an order's cards (`cards_by_order`) stay; selling a reserved card
-- changes neither `order_id` nor `hold_seq`, so it leaves `cards_by_order` alone.
DROP INDEX cards_pool;
CREATE INDEX cards_free ON cards (tenant, sku, id) WHERE state = 'available';
CREATE INDEX cards_withdrawn ON cards (tenant, sku) WHERE state = 'withdrawn';
CREATE INDEX cards_by_sku ON cards (tenant, sku);

-- 4. Payment notices in their unique key. seq orders the notices to reconcile (reconcile = 1)
-- of a tenant, in the order they came; it is NULL for notices that were applied.
CREATE TABLE payment_notices_v4 (
    tenant         TEXT    NOT NULL,
    provider       TEXT    NOT NULL,
    transaction_id TEXT    NOT NULL,
    claim          TEXT    NOT NULL DEFAULT '',
    reconcile      INTEGER NOT NULL,
    seq            INTEGER,
    doc            TEXT    NOT NULL,
    PRIMARY KEY (tenant, provider, transaction_id, claim),
    CHECK ((reconcile = 1) = (seq IS NOT NULL))
) WITHOUT ROWID;

-- Notices to reconcile keep their seq (so they list in the order they came); applied ones
-- need none.
INSERT INTO payment_notices_v4 (tenant, provider, transaction_id, claim, reconcile, seq, doc)
SELECT tenant, provider, transaction_id, claim, reconcile,
       CASE WHEN reconcile = 1 THEN seq END, doc
FROM payment_notices;

DROP TABLE payment_notices;
ALTER TABLE payment_notices_v4 RENAME TO payment_notices;

CREATE INDEX payment_notices_to_reconcile ON payment_notices (tenant, seq) WHERE reconcile = 1;
