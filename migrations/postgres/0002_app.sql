-- What the app needs beyond the core: the encrypted content mailbox and calls.

-- When the sender's content arrived (NULL: still awaited; see the content-id quirk).
ALTER TABLE messages ADD COLUMN content_received_at TIMESTAMPTZ;
CREATE INDEX messages_awaiting_content ON messages (sender_id, seq) WHERE content_received_at IS NULL;

-- Opaque ciphertext, kept until the recipient reads the message or it expires.
CREATE TABLE message_contents (
    message_id   UUID PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    content      BYTEA NOT NULL,
    content_hash TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX message_contents_expires_at ON message_contents (expires_at);

-- Ids the app made up for a message it sent without an id.
CREATE TABLE message_aliases (
    alias_id   UUID PRIMARY KEY,
    message_id UUID NOT NULL REFERENCES messages (id) ON DELETE CASCADE
);

CREATE TABLE calls (
    id             UUID PRIMARY KEY,
    call_id        TEXT NOT NULL UNIQUE,      -- the server's id, as the app sees it
    client_call_id TEXT,                      -- the caller app's own id (WebSocket)
    -- TRUE when the call was created by the WebSocket request: the callee was rung with the
    -- app's id. FALSE when created by POST /api/calls: the callee knows the server's id.
    rung_with_client_id BOOLEAN NOT NULL DEFAULT FALSE,
    caller_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipient_id   UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    call_type      TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    answered_at    TIMESTAMPTZ,
    ended_at       TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX calls_caller ON calls (caller_id, created_at);
CREATE INDEX calls_recipient ON calls (recipient_id, created_at);
CREATE INDEX calls_ringing ON calls (created_at) WHERE status = 'ringing';

-- Who is in a live (ringing or active) call: one row per user makes "busy" race-free.
CREATE TABLE call_participants (
    user_id UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    call_id UUID NOT NULL REFERENCES calls (id) ON DELETE CASCADE
);
