-- Withdrawn cards, blind-index schemes, and conflicting repeats of payment notices.

-- How each card's blind index was normalised (quanyi_vault::IndexScheme as a number). Every
-- card stored before schemes existed is Legacy (1); the default only fills those rows (adding
-- a column with a constant default rewrites nothing), and is dropped so that every insert
-- names its scheme.
ALTER TABLE cards ADD COLUMN index_scheme smallint NOT NULL DEFAULT 1;
ALTER TABLE cards ALTER COLUMN index_scheme DROP DEFAULT;

-- A card taken out of sale for good (a duplicate found by re-indexing, or sealed with a
-- destroyed data key): state 'withdrawn', held by no order, in no stock figure and not in
-- free_cards. The states a card leaves never set withdrawn_at, and a withdrawn card never
-- changes state again, so the branches of the other states do not test it: the check runs on
-- every write of a card, allocation and payment included.
ALTER TABLE cards ADD COLUMN withdrawn_at bigint;
ALTER TABLE cards DROP CONSTRAINT cards_state_check;
ALTER TABLE cards ADD CONSTRAINT cards_state_check CHECK (
    (state = 'available' AND order_id IS NULL AND reserved_until IS NULL AND sold_at IS NULL)
    OR (state = 'reserved' AND order_id IS NOT NULL AND reserved_until IS NOT NULL
        AND sold_at IS NULL)
    OR (state = 'sold' AND order_id IS NOT NULL AND sold_at IS NOT NULL)
    OR (state = 'withdrawn' AND order_id IS NULL AND reserved_until IS NULL AND sold_at IS NULL
        AND withdrawn_at IS NOT NULL)
);

-- What re-indexing still has to do: the cards indexed with a scheme older than the current
-- one (Nfkc, 2), in card order. Partial, so cards stored under the current scheme add no entry
-- and the index empties as re-indexing moves cards on.
CREATE INDEX cards_old_scheme ON cards (tenant, id) WHERE index_scheme < 2;

-- Notices that repeat a recorded transaction with another order or amount, kept once per claim
-- for reconciliation. seq draws from payment_notices' sequence, so the two tables list in the
-- order their rows were kept.
CREATE TABLE conflicting_notices (
    tenant         text COLLATE "C" NOT NULL,
    provider       text COLLATE "C" NOT NULL,
    transaction_id text COLLATE "C" NOT NULL,
    order_id       uuid NOT NULL,
    amount         bigint NOT NULL,
    currency       text COLLATE "C" NOT NULL,
    seq            bigint NOT NULL DEFAULT nextval('payment_notices_seq_seq'),
    doc            text NOT NULL,
    CONSTRAINT conflicting_notices_pkey
        PRIMARY KEY (tenant, provider, transaction_id, order_id, amount, currency)
);
CREATE INDEX conflicting_notices_seq ON conflicting_notices (tenant, seq);
