-- Encrypted attachments uploaded with tus 1.0 (issue 23): the bytes live in files under
-- ATTACHMENT_DIR (`<id>.part` while uploading, `<id>` once complete); a row says whose they
-- are, how far the upload got and when it expires. The id is the capability (128 random bits,
-- hex). A user's rows go with the account; their files are removed by the deletion itself.
CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    owner_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    length       BIGINT NOT NULL,
    received     BIGINT NOT NULL DEFAULT 0,    -- bytes stored so far (tus Upload-Offset)
    metadata     TEXT,                         -- the client's Upload-Metadata, opaque
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX attachments_owner ON attachments (owner_id);
CREATE INDEX attachments_expires_at ON attachments (expires_at);
