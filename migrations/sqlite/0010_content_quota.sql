-- Each stored blob's sender and size, so that a sender's unread content (CONTENT_QUOTA_BYTES)
-- is summed from an index, without reading the blobs or the messages.
ALTER TABLE message_contents ADD COLUMN sender_id BLOB;
ALTER TABLE message_contents ADD COLUMN size_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE message_contents
SET sender_id = (SELECT sender_id FROM messages WHERE messages.id = message_contents.message_id),
    size_bytes = length(content);
CREATE INDEX message_contents_sender ON message_contents (sender_id);
