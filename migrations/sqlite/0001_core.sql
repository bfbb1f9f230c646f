-- Core tables: users, one-to-one conversations, message metadata (never content).
-- Timestamps are RFC 3339 text, ids 16-byte blobs (sqlx's encodings of chrono and uuid).

CREATE TABLE users (
    id                  BLOB PRIMARY KEY NOT NULL,
    email               TEXT NOT NULL UNIQUE,          -- stored lower-cased
    username            TEXT NOT NULL,
    name                TEXT,
    avatar_url          TEXT,
    password_hash       TEXT NOT NULL,
    presence            TEXT NOT NULL DEFAULT 'offline',
    last_seen           TEXT NOT NULL,
    presence_updated_at TEXT NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

CREATE TABLE conversations (
    id              BLOB PRIMARY KEY NOT NULL,
    user_a          BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_b          BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      TEXT NOT NULL,
    last_message_at TEXT,
    CHECK (user_a < user_b),
    UNIQUE (user_a, user_b)
);
CREATE INDEX conversations_user_b ON conversations (user_b);

CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB NOT NULL UNIQUE,
    conversation_id BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_type    TEXT NOT NULL,
    session_id      TEXT,
    created_at      TEXT NOT NULL,
    is_read         BOOLEAN NOT NULL DEFAULT FALSE,
    read_at         TEXT
);
CREATE INDEX messages_conversation_seq ON messages (conversation_id, seq);
CREATE INDEX messages_unread ON messages (recipient_id, conversation_id) WHERE is_read = FALSE;
