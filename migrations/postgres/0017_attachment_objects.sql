-- Attachments in an S3-compatible object store (ATTACHMENT_S3_BUCKET): an upload's bytes go to
-- S3 in parts of 5 MiB (multipart upload), which survive between tus PATCH requests, so the
-- upload id and each stored part's id (its ETag) are kept here; the bytes short of a part wait
-- in an object `<id>.tail`. Unused with files (ATTACHMENT_DIR). Both go with their attachment.
ALTER TABLE attachments ADD COLUMN multipart_id TEXT;   -- the S3 upload id, once a part is stored
CREATE TABLE attachment_parts (
    attachment_id TEXT NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    part_index    INTEGER NOT NULL,                    -- from 0 (S3's part number - 1)
    content_id    TEXT NOT NULL,                       -- what completing the upload names it by
    PRIMARY KEY (attachment_id, part_index)
);
