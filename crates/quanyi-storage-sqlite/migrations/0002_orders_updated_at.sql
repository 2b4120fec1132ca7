-- When each order last changed, for reconciliation over a period.
ALTER TABLE orders ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX orders_updated ON orders (tenant, updated_at, id);
