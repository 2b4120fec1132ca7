-- A lean order path: fewer rows and index entries per order, and no index that the order path
-- changes on the big tables, so that selling a card rewrites its row in place (a HOT update:
-- one WAL record, no index entry) and nothing the order path scans depends on a vacuum of a big
-- table.

-- 1. An order's lines live in its row: the SKU and quantity of every line, in line order (the
--    per-member purchase history is the member's orders, through orders_member).
ALTER TABLE orders ADD COLUMN line_skus uuid[], ADD COLUMN line_qtys bigint[];
UPDATE orders o SET line_skus = l.skus, line_qtys = l.qtys
FROM (SELECT tenant, order_id, array_agg(sku ORDER BY no) AS skus,
             array_agg(quantity ORDER BY no) AS qtys
      FROM order_lines GROUP BY tenant, order_id) l
WHERE o.tenant = l.tenant AND o.id = l.order_id;
UPDATE orders SET line_skus = '{}', line_qtys = '{}' WHERE line_skus IS NULL;
ALTER TABLE orders ALTER COLUMN line_skus SET NOT NULL, ALTER COLUMN line_qtys SET NOT NULL;
DROP TABLE order_lines;

-- 2. Reserved cards as a queue of their own, by deadline, as available ones are in free_cards:
--    a lapsed reservation is found here, and the table stays as small as the reservations in
--    flight (the store vacuums it with free_cards).
--
--    Invariant: a card has a row here exactly while its state is 'reserved', with its deadline.
CREATE TABLE held_cards (
    tenant text COLLATE "C" NOT NULL,
    sku    uuid NOT NULL,
    until  bigint NOT NULL,
    id     uuid NOT NULL,
    CONSTRAINT held_cards_pkey PRIMARY KEY (tenant, sku, until, id)
);
INSERT INTO held_cards (tenant, sku, until, id)
    SELECT tenant, sku, reserved_until, id FROM cards WHERE state = 'reserved';

-- 3. The cards each order took, in the order it took them. A row is written when an order
--    reserves, commits or buys a card, and removed when its reservation is released; a
--    reservation lost to another order after its deadline may leave its row behind, so readers
--    check the card's own order.
CREATE TABLE order_cards (
    order_id uuid NOT NULL,
    pos      bigint NOT NULL,
    card_id  uuid NOT NULL,
    CONSTRAINT order_cards_pkey PRIMARY KEY (order_id, pos)
);
INSERT INTO order_cards (order_id, pos, card_id)
    SELECT order_id,
           row_number() OVER (PARTITION BY order_id ORDER BY hold_pos NULLS LAST, id),
           id
    FROM cards WHERE order_id IS NOT NULL;

-- 4. The card row: no index on what the order path changes (state, order, deadline), so that
--    reserving and selling rewrite the row in place; room on each page for those versions.
DROP INDEX cards_order;
DROP INDEX cards_reserved;
DROP INDEX cards_sold;
ALTER TABLE cards DROP COLUMN hold_pos;
-- No index on cards is led by the tenant alone: it would offer every statement that names the
-- tenant beside the card ids it wants a scan of all the tenant's cards, and plans made from thin
-- statistics took it. A payment read the tenant's whole blind index (a bitmap of every card of
-- the tenant, ANDed with the primary key's) to find the one card it sells, a cost that grew with
-- the stock. So the blind index is unique on (blind_index, tenant), and stock counts go by
-- (sku, tenant).
ALTER TABLE cards DROP CONSTRAINT cards_blind_index_key;
ALTER TABLE cards ADD CONSTRAINT cards_blind_index_key UNIQUE (blind_index, tenant);
CREATE INDEX cards_sku ON cards (sku, tenant);
ALTER TABLE cards SET (fillfactor = 75);
