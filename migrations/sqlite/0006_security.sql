-- Sessions: one row per signed-in device. Access tokens name their session (`sid`), so a
-- revoked session's access tokens are refused at once. Refresh tokens are stored only as
-- SHA-256 hashes; each is used once (rotation), and a second use revokes the whole session.

CREATE TABLE sessions (
    id           BLOB PRIMARY KEY NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL,
    refreshed_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,               -- of its current refresh token
    revoked_at   TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,       -- hex SHA-256 of the token; never the token
    session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    used_at    TEXT                             -- set when rotated; a second use is a reuse
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
