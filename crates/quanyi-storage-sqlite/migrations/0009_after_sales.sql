-- After-sales refunds: a card remembers its first reveal and the refund that voided it (a card
-- is never both), and orders with an open refund are queued by when the refund needs attention.
ALTER TABLE cards ADD COLUMN revealed_at INTEGER;
ALTER TABLE cards ADD COLUMN voided_at INTEGER;
ALTER TABLE orders ADD COLUMN refund_due INTEGER;
CREATE INDEX orders_refund_queue ON orders (tenant, refund_due, id) WHERE refund_due IS NOT NULL;
-- The refund ledger: every refund the payment provider paid back, once per refund id, by the
-- time it was recorded paid, to reconcile a period with the provider.
CREATE TABLE refunds_paid (
    tenant    TEXT    NOT NULL,
    refund_id TEXT    NOT NULL,
    paid_at   INTEGER NOT NULL,
    doc       TEXT    NOT NULL,
    PRIMARY KEY (tenant, refund_id)
) WITHOUT ROWID;
CREATE INDEX refunds_paid_by_time ON refunds_paid (tenant, paid_at, refund_id);
-- Budgets that placements take uses of (a coupon's total uses, its uses per member), and the
-- uses each order holds until it is closed unpaid, when they go back once.
CREATE TABLE sale_budgets (
    tenant TEXT    NOT NULL,
    scope  TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    used   INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope, key)
) WITHOUT ROWID;
CREATE TABLE order_budgets (
    tenant   TEXT NOT NULL,
    order_id BLOB NOT NULL,
    scope    TEXT NOT NULL,
    key      TEXT NOT NULL,
    PRIMARY KEY (tenant, order_id, scope, key)
) WITHOUT ROWID;
