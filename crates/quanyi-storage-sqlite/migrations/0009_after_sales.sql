-- After-sales refunds: a card remembers its first reveal and the refund that voided it (a card
-- is never both), and orders with an open refund are queued by when the refund needs attention.
ALTER TABLE cards ADD COLUMN revealed_at INTEGER;
ALTER TABLE cards ADD COLUMN voided_at INTEGER;
ALTER TABLE orders ADD COLUMN refund_due INTEGER;
CREATE INDEX orders_refund_queue ON orders (tenant, refund_due, id) WHERE refund_due IS NOT NULL;
