-- Version 6: the cursors of named event consumers, per tenant. A cursor is a feed position
-- (16 bytes, big-endian): on SQLite the row (`events.seq`) in the high bits and the event's place
-- in the row in the low 32. Writers take the database's one write lock in turn, so rows are
-- numbered in commit order and the feed is gap-free without anything more. No existing table
-- changes.
CREATE TABLE event_consumers (
    tenant   TEXT NOT NULL,
    name     TEXT NOT NULL,
    position BLOB NOT NULL,
    PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
