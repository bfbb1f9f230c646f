-- Devices as first-class: the registry of a user's devices (whether or not they published
-- keys), each with its own queue of end-to-end-encrypted envelopes, deleted when the device
-- acknowledges them. `devices` (0004) stays the key directory.

CREATE TABLE user_devices (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id  BIGINT NOT NULL,
    name       TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    last_seen  DATE NOT NULL,             -- a day, never finer
    queue_head BIGINT NOT NULL DEFAULT 0, -- number of the device's latest envelope
    dropped    BIGINT NOT NULL DEFAULT 0, -- envelopes dropped (queue full, expired), not told yet
    PRIMARY KEY (user_id, device_id)
);
INSERT INTO user_devices (user_id, device_id, created_at, last_seen)
SELECT user_id, device_id, created_at, (updated_at AT TIME ZONE 'UTC')::date FROM devices;

-- One row per (message, recipient device): the device's copy, numbered in its queue in commit
-- order (`seq`, from `user_devices.queue_head`, whose row lock orders the device's commits).
CREATE TABLE envelopes (
    user_id         UUID NOT NULL,
    device_id       BIGINT NOT NULL,
    seq             BIGINT NOT NULL,
    message_id      UUID NOT NULL,
    sender_id       UUID NOT NULL,
    sender_device   BIGINT NOT NULL,
    conversation_id UUID,                 -- none for a message to oneself (a sync)
    message_type    TEXT NOT NULL,
    kind            BIGINT NOT NULL,      -- the Signal ciphertext type, not interpreted
    content         BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, device_id, seq),
    FOREIGN KEY (user_id, device_id) REFERENCES user_devices (user_id, device_id) ON DELETE CASCADE
);
-- A retry is found by (recipient, message id), an ack by id within one device.
CREATE UNIQUE INDEX envelopes_message ON envelopes (user_id, message_id, device_id);
CREATE INDEX envelopes_created_at ON envelopes (created_at);

-- A session signed in as one device (`POST /api/auth/login` with `device_id`); NULL: device 1.
ALTER TABLE sessions ADD COLUMN device_id BIGINT;
