-- Each stored blob's sender and size, so that a sender's unread content (CONTENT_QUOTA_BYTES)
-- is summed from an index, without reading the blobs or the messages.
ALTER TABLE message_contents ADD COLUMN sender_id UUID, ADD COLUMN size_bytes INTEGER;
UPDATE message_contents c SET sender_id = m.sender_id, size_bytes = octet_length(c.content)
FROM messages m WHERE m.id = c.message_id;
ALTER TABLE message_contents ALTER COLUMN sender_id SET NOT NULL,
                             ALTER COLUMN size_bytes SET NOT NULL;
CREATE INDEX message_contents_sender ON message_contents (sender_id);
