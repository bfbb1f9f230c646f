-- Suspension by an operator (the admin API, issue 24): while set, the user cannot sign in or
-- refresh (403 `suspended`) and every token of theirs is refused. NULL: active.
ALTER TABLE users ADD COLUMN suspended_at TIMESTAMPTZ;
