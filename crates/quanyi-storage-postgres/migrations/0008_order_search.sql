-- Operators search orders by when they were placed: each order's placement time
-- (`quanyi_storage::placed_at`: `Order::created_at` to the microsecond, in microseconds since
-- the epoch like every instant here) in a column of its own, indexed per tenant. Orders stored
-- before this version take it from their document, whose `created_at` is RFC 3339 in UTC with
-- 0 to 9 fraction digits; digits past the sixth are cut.
ALTER TABLE orders ADD COLUMN placed_at bigint;
UPDATE orders o SET placed_at = (
    SELECT extract(epoch FROM (substr(d.c, 1, 19) || 'Z')::timestamptz)::bigint * 1000000
         + CASE WHEN substr(d.c, 20, 1) = '.'
                THEN rpad(left(substr(d.c, 21, length(d.c) - 21), 6), 6, '0')::bigint
                ELSE 0 END
    FROM (SELECT o.doc::json ->> 'created_at' AS c) d
);
ALTER TABLE orders ALTER COLUMN placed_at SET NOT NULL;
CREATE INDEX orders_placed ON orders (tenant, placed_at, id);
