-- Stories (24 h) and channels: metadata only, like messages. `seq` gives each list a stable,
-- commit-ordered cursor.

CREATE TABLE stories (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           UUID NOT NULL UNIQUE,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content_text TEXT,
    media_url    TEXT,
    media_type   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX stories_user ON stories (user_id, seq);
CREATE INDEX stories_expires_at ON stories (expires_at);

CREATE TABLE story_views (
    story_id  UUID NOT NULL REFERENCES stories (id) ON DELETE CASCADE,
    viewer_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    viewed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (story_id, viewer_id)
);
CREATE INDEX story_views_viewer ON story_views (viewer_id);

CREATE TABLE channels (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    description     TEXT,
    avatar_url      TEXT,
    is_private      BOOLEAN NOT NULL,
    creator_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      TIMESTAMPTZ NOT NULL,
    last_message_at TIMESTAMPTZ
);
CREATE INDEX channels_creator ON channels (creator_id);

CREATE TABLE channel_members (
    channel_id UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members (user_id);

CREATE TABLE channel_messages (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           UUID NOT NULL UNIQUE,
    channel_id   UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    sender_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_type TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX channel_messages_channel_seq ON channel_messages (channel_id, seq);
CREATE INDEX channel_messages_sender ON channel_messages (sender_id);
