-- Stories (24 h) and channels: metadata only, like messages. `seq` gives each list a stable,
-- commit-ordered cursor. Timestamps are RFC 3339 text, ids 16-byte blobs.

CREATE TABLE stories (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_text TEXT,
    media_url    TEXT,
    media_type   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX stories_user ON stories (user_id, seq);
CREATE INDEX stories_expires_at ON stories (expires_at);

CREATE TABLE story_views (
    story_id  BLOB NOT NULL REFERENCES stories (id) ON DELETE CASCADE,
    viewer_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    viewed_at TEXT NOT NULL,
    PRIMARY KEY (story_id, viewer_id)
);
CREATE INDEX story_views_viewer ON story_views (viewer_id);

CREATE TABLE channels (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    description     TEXT,
    avatar_url      TEXT,
    is_private      BOOLEAN NOT NULL,
    creator_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      TEXT NOT NULL,
    last_message_at TEXT
);
CREATE INDEX channels_creator ON channels (creator_id);

CREATE TABLE channel_members (
    channel_id BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  TEXT NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members (user_id);

CREATE TABLE channel_messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           BLOB NOT NULL UNIQUE,
    channel_id   BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    sender_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_type TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX channel_messages_channel_seq ON channel_messages (channel_id, seq);
CREATE INDEX channel_messages_sender ON channel_messages (sender_id);
