-- Less work per message written: fewer reference checks and one index fewer.

-- PostgreSQL checks each foreign key with a query of its own for every row inserted: five per
-- message (three for the message, two for its inbox entry), about a third of the database's
-- CPU under load. Three of them are implied by the others, so they go:
-- - a message's sender and recipient are its conversation's two members (the server sends
--   nothing else), and the conversation's own references to users cascade to its messages;
-- - an inbox entry belongs to its message's sender or recipient, and goes with the message.
-- Deleting a user still deletes their messages and inbox entries, through the conversation.
ALTER TABLE messages
    DROP CONSTRAINT messages_sender_id_fkey,
    DROP CONSTRAINT messages_recipient_id_fkey;
ALTER TABLE inbox DROP CONSTRAINT inbox_user_id_fkey;

-- No query reads undelivered entries through this index (a replay reads the user's range by
-- the primary key), yet every entry was added to it, and marking an entry delivered moved it
-- out, which also kept that update from being a cheap in-place (HOT) one. Worse, the delivery
-- marks' plan could scan the whole index, dead entries included, once per group.
DROP INDEX inbox_undelivered;
