-- Sessions: one row per signed-in device. Access tokens name their session (`sid`), so a
-- revoked session's access tokens are refused at once. Refresh tokens are stored only as
-- SHA-256 hashes; each is used once (rotation), and a second use revokes the whole session.

CREATE TABLE sessions (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL,
    refreshed_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,        -- of its current refresh token
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,                -- hex SHA-256 of the token; never the token
    session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ                      -- set when rotated; a second use is a reuse
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
