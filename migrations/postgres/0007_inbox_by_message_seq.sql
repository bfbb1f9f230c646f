-- Inbox entries name their message by its number (`messages.seq`) instead of its id. The
-- index that finds a message's entries (for ON DELETE CASCADE) then grows at its end, where
-- an index of random ids dirtied a page per message in every group commit.
ALTER TABLE inbox ADD COLUMN message_seq BIGINT;
UPDATE inbox SET message_seq = m.seq FROM messages m WHERE m.id = inbox.message_id;
ALTER TABLE inbox
    ALTER COLUMN message_seq SET NOT NULL,
    ADD CONSTRAINT inbox_message_seq_fkey
        FOREIGN KEY (message_seq) REFERENCES messages (seq) ON DELETE CASCADE,
    DROP COLUMN message_id;                  -- its index and reference go with it
CREATE INDEX inbox_message ON inbox (message_seq);
