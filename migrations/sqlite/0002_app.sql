-- What the app needs beyond the core: the encrypted content mailbox and calls.

-- When the sender's content arrived (NULL: still awaited; see the content-id quirk).
ALTER TABLE messages ADD COLUMN content_received_at TEXT;
CREATE INDEX messages_awaiting_content ON messages (sender_id, seq) WHERE content_received_at IS NULL;

-- Opaque ciphertext, kept until the recipient reads the message or it expires.
CREATE TABLE message_contents (
    message_id   BLOB PRIMARY KEY NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    content      BLOB NOT NULL,
    content_hash TEXT,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX message_contents_expires_at ON message_contents (expires_at);

-- Ids the app made up for a message it sent without an id.
CREATE TABLE message_aliases (
    alias_id   BLOB PRIMARY KEY NOT NULL,
    message_id BLOB NOT NULL REFERENCES messages (id) ON DELETE CASCADE
);

CREATE TABLE calls (
    id             BLOB PRIMARY KEY NOT NULL,
    call_id        TEXT NOT NULL UNIQUE,      -- the server's id, as the app sees it
    client_call_id TEXT,                      -- the caller app's own id (WebSocket)
    -- TRUE when the call was created by the WebSocket request: the callee was rung with the
    -- app's id. FALSE when created by POST /api/calls: the callee knows the server's id.
    rung_with_client_id BOOLEAN NOT NULL DEFAULT FALSE,
    caller_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    call_type      TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    answered_at    TEXT,
    ended_at       TEXT,
    updated_at     TEXT NOT NULL
);
CREATE INDEX calls_caller ON calls (caller_id, created_at);
CREATE INDEX calls_recipient ON calls (recipient_id, created_at);
CREATE INDEX calls_ringing ON calls (created_at) WHERE status = 'ringing';

-- Who is in a live (ringing or active) call: one row per user makes "busy" race-free.
CREATE TABLE call_participants (
    user_id BLOB PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    call_id BLOB NOT NULL REFERENCES calls (id) ON DELETE CASCADE
);
