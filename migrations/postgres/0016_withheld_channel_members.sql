-- A channel invitation from a user the invitee blocks (issue 21): the row is kept, withheld, so
-- that the channel's creator counts the member as after any add (the block is not revealed),
-- while the invitee is not a member anywhere else: the channel is not listed for them, its
-- posts do not reach them, and they may not read or post. Joining (a public channel) or a later
-- add the invitee does not block makes them a member; unblocking alone does not.
ALTER TABLE channel_members ADD COLUMN withheld BOOLEAN NOT NULL DEFAULT FALSE;
