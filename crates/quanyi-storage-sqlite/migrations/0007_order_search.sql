-- Operators search orders by when they were placed: each order's placement time
-- (`quanyi_storage::placed_at`: `Order::created_at` to the microsecond, stored in nanoseconds
-- since the epoch like every instant here) in a column of its own, indexed per tenant. Orders
-- stored before this version take it from their document, whose `created_at` is RFC 3339 in
-- UTC with 0 to 9 fraction digits ("2026-12-05T10:00:00Z", "2026-12-05T10:00:00.123456789Z");
-- digits past the sixth are cut.
ALTER TABLE orders ADD COLUMN placed_at INTEGER NOT NULL DEFAULT 0;
UPDATE orders SET placed_at = (
    SELECT CAST(strftime('%s', substr(c, 1, 19)) AS INTEGER) * 1000000000
         + CASE WHEN substr(c, 20, 1) = '.'
                THEN CAST(substr(substr(c, 21, length(c) - 21) || '000000', 1, 6) AS INTEGER) * 1000
                ELSE 0 END
    FROM (SELECT json_extract(orders.doc, '$.created_at') AS c)
);
CREATE INDEX orders_placed ON orders (tenant, placed_at, id);
