-- Privacy controls (issue 21).
--
-- Blocks: `blocker_id` no longer hears from `blocked_id` (messages withheld, calls never ring)
-- and neither sees the other's presence, typing, stories or identity changes. Removed with
-- either account.
CREATE TABLE blocks (
    blocker_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (blocker_id, blocked_id)
);
CREATE INDEX blocks_blocked ON blocks (blocked_id);

-- Contacts by consent: the member who opened a conversation, until the other one replies in it
-- or accepts it (then NULL). Conversations that existed before are accepted.
ALTER TABLE conversations ADD COLUMN requested_by UUID;

-- A user who hides their last-seen time (and so their online status) from everyone.
ALTER TABLE users ADD COLUMN hide_last_seen BOOLEAN NOT NULL DEFAULT FALSE;

-- Messages and calls from a blocked user: stored for their sender (acknowledged, in their
-- history) but never delivered to, listed for or rung at the recipient.
ALTER TABLE messages ADD COLUMN withheld BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE calls ADD COLUMN withheld BOOLEAN NOT NULL DEFAULT FALSE;
