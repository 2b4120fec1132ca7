-- A gap-free event feed. Every event row records the transaction that wrote it (`tx`, taken
-- from `pg_current_xact_id()` by default, so no write statement changes); the feed is ordered
-- by (tx, seq) and a reader returns only rows of transactions older than the oldest one still
-- running (`pg_snapshot_xmin`). A transaction that commits late therefore never lands behind
-- a position a reader has passed, and no writer waits for another (no counter row). Rows
-- written before this version hold tx 0 and come first, in write order.
ALTER TABLE events ADD COLUMN tx xid8 NOT NULL DEFAULT '0';
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX events_feed ON events (tenant, tx, seq);

-- The cursors of named event consumers, per tenant: a feed position, 16 bytes big-endian.
CREATE TABLE event_consumers (
    tenant   text COLLATE "C" NOT NULL,
    name     text COLLATE "C" NOT NULL,
    position bytea NOT NULL,
    CONSTRAINT event_consumers_pkey PRIMARY KEY (tenant, name)
);
