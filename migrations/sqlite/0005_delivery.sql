-- Delivery that never loses a message: a per-user inbox of events (messages received, read
-- receipts for messages sent), numbered without gaps per user, in commit order.

-- The last inbox number given to the user; bumping it locks the user's inbox for the
-- transaction, so numbers are handed out (and committed) in order.
ALTER TABLE users ADD COLUMN inbox_seq INTEGER NOT NULL DEFAULT 0;

-- When the first socket of the recipient was sent the message.
ALTER TABLE messages ADD COLUMN delivered_at TEXT;

CREATE TABLE inbox (
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,              -- 'message' or 'read_receipt'
    message_id   BLOB NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    delivered_at TEXT,                       -- first written to one of the user's sockets
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX inbox_undelivered ON inbox (user_id, seq) WHERE delivered_at IS NULL;
CREATE INDEX inbox_message ON inbox (message_id);
