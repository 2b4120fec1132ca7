-- After-sales refunds: a card remembers its first reveal and the refund that voided it (a card
-- is never both; neither column is indexed, so marking a card keeps its update in place), and
-- orders with an open refund are queued by when the refund needs attention (microseconds
-- since the epoch; null, and out of the index, for every other order).
ALTER TABLE cards ADD COLUMN revealed_at bigint, ADD COLUMN voided_at bigint;
ALTER TABLE orders ADD COLUMN refund_due bigint;
CREATE INDEX orders_refund_queue ON orders (tenant, refund_due, id) WHERE refund_due IS NOT NULL;
-- The refund ledger: every refund the payment provider paid back, once per refund id, by the
-- time it was recorded paid (microseconds), to reconcile a period with the provider.
CREATE TABLE refunds_paid (
    tenant    text COLLATE "C" NOT NULL,
    refund_id text COLLATE "C" NOT NULL,
    paid_at   bigint NOT NULL,
    doc       text NOT NULL,
    CONSTRAINT refunds_paid_pkey PRIMARY KEY (tenant, refund_id)
);
CREATE INDEX refunds_paid_by_time ON refunds_paid (tenant, paid_at, refund_id);
-- Budgets that placements take uses of (a coupon's total uses, its uses per member), with the
-- limit the last take named, and the uses each order holds until it is closed unpaid, when
-- they go back once.
CREATE TABLE sale_budgets (
    tenant text COLLATE "C" NOT NULL,
    scope  text COLLATE "C" NOT NULL,
    key    text COLLATE "C" NOT NULL,
    used   integer NOT NULL,
    lim    integer NOT NULL,
    CONSTRAINT sale_budgets_pkey PRIMARY KEY (tenant, scope, key)
);
CREATE TABLE order_budgets (
    tenant   text COLLATE "C" NOT NULL,
    order_id uuid NOT NULL,
    scope    text COLLATE "C" NOT NULL,
    key      text COLLATE "C" NOT NULL,
    CONSTRAINT order_budgets_pkey PRIMARY KEY (tenant, order_id, scope, key)
);
