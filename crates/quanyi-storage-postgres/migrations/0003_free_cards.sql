-- Available cards as a queue of their own. Allocation deletes the oldest rows it can lock
-- (FOR UPDATE SKIP LOCKED, card order). A buyer whose scan reaches a card another buyer took
-- meanwhile finds the row deleted and moves on without locking anything; when allocation
-- updated the card row itself, it locked the newer version while rechecking it, and the
-- payment that sold that card waited for the buyer to commit.
--
-- Invariant: a card has a row here exactly while its state is 'available'.
CREATE TABLE free_cards (
    tenant text COLLATE "C" NOT NULL,
    sku    uuid NOT NULL,
    id     uuid NOT NULL,
    CONSTRAINT free_cards_pkey PRIMARY KEY (tenant, sku, id)
);
INSERT INTO free_cards (tenant, sku, id)
    SELECT tenant, sku, id FROM cards WHERE state = 'available';
DROP INDEX cards_free;
-- Reservations by deadline: a lapsed one is free to take again.
CREATE INDEX cards_reserved ON cards (tenant, sku, reserved_until) WHERE state = 'reserved';
