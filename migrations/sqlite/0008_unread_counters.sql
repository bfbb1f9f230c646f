-- Unread messages per member, kept on the conversation row, which every group commit already
-- writes (its latest message time). The partial index they replace took a page write per
-- message. `unread_a` counts the messages that `user_a` received and has not read; `unread_b`
-- the others'.
ALTER TABLE conversations ADD COLUMN unread_a INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN unread_b INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET
    unread_a = (SELECT count(*) FROM messages m
                WHERE m.conversation_id = conversations.id AND m.is_read = FALSE
                  AND m.recipient_id = conversations.user_a),
    unread_b = (SELECT count(*) FROM messages m
                WHERE m.conversation_id = conversations.id AND m.is_read = FALSE
                  AND m.recipient_id <> conversations.user_a);
DROP INDEX messages_unread;
