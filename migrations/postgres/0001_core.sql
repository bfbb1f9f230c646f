-- Core tables: users, one-to-one conversations, message metadata (never content).

CREATE TABLE users (
    id                  UUID PRIMARY KEY,
    email               TEXT NOT NULL UNIQUE,          -- stored lower-cased
    username            TEXT NOT NULL,
    name                TEXT,
    avatar_url          TEXT,
    password_hash       TEXT NOT NULL,
    presence            TEXT NOT NULL DEFAULT 'offline',
    last_seen           TIMESTAMPTZ NOT NULL,
    presence_updated_at TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

CREATE TABLE conversations (
    id              UUID PRIMARY KEY,
    user_a          UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_b          UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL,
    last_message_at TIMESTAMPTZ,
    CHECK (user_a < user_b),
    UNIQUE (user_a, user_b)
);
CREATE INDEX conversations_user_b ON conversations (user_b);

CREATE TABLE messages (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID NOT NULL UNIQUE,
    conversation_id UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_type    TEXT NOT NULL,
    session_id      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    is_read         BOOLEAN NOT NULL DEFAULT FALSE,
    read_at         TIMESTAMPTZ
);
CREATE INDEX messages_conversation_seq ON messages (conversation_id, seq);
CREATE INDEX messages_unread ON messages (recipient_id, conversation_id) WHERE is_read = FALSE;
