-- Inbox entries name their message by its number (`messages.seq`) instead of its id. The
-- index that finds a message's entries (for ON DELETE CASCADE) then grows at its end, where
-- an index of random ids dirtied a page per message in every group commit; and entries join
-- their message by its row number instead of through the id index.
-- (SQLite cannot change a column's reference in place: the table is rebuilt.)
CREATE TABLE inbox_by_seq (
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,              -- 'message' or 'read_receipt'
    message_seq  INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    delivered_at TEXT,                       -- first written to one of the user's sockets
    PRIMARY KEY (user_id, seq)
);
INSERT INTO inbox_by_seq (user_id, seq, kind, message_seq, created_at, delivered_at)
SELECT i.user_id, i.seq, i.kind, m.seq, i.created_at, i.delivered_at
FROM inbox i JOIN messages m ON m.id = i.message_id;
DROP TABLE inbox;
ALTER TABLE inbox_by_seq RENAME TO inbox;
CREATE INDEX inbox_undelivered ON inbox (user_id, seq) WHERE delivered_at IS NULL;
CREATE INDEX inbox_message ON inbox (message_seq);
