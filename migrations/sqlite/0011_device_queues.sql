-- Devices as first-class: the registry of a user's devices (whether or not they published
-- keys), each with its own queue of end-to-end-encrypted envelopes, deleted when the device
-- acknowledges them. `devices` (0004) stays the key directory.

CREATE TABLE user_devices (
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id  INTEGER NOT NULL,
    name       TEXT,
    created_at TEXT NOT NULL,
    last_seen  TEXT NOT NULL,              -- a day (YYYY-MM-DD), never finer
    queue_head INTEGER NOT NULL DEFAULT 0, -- number of the device's latest envelope
    dropped    INTEGER NOT NULL DEFAULT 0, -- envelopes dropped (queue full, expired), not told yet
    PRIMARY KEY (user_id, device_id)
);
INSERT INTO user_devices (user_id, device_id, created_at, last_seen)
SELECT user_id, device_id, created_at, substr(updated_at, 1, 10) FROM devices;

-- One row per (message, recipient device): the device's copy, numbered in its queue in commit
-- order (`seq`, from `user_devices.queue_head`).
CREATE TABLE envelopes (
    user_id         BLOB NOT NULL,
    device_id       INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    message_id      BLOB NOT NULL,
    sender_id       BLOB NOT NULL,
    sender_device   INTEGER NOT NULL,
    conversation_id BLOB,                 -- none for a message to oneself (a sync)
    message_type    TEXT NOT NULL,
    kind            INTEGER NOT NULL,     -- the Signal ciphertext type, not interpreted
    content         BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, seq),
    FOREIGN KEY (user_id, device_id) REFERENCES user_devices (user_id, device_id) ON DELETE CASCADE
);
-- A retry is found by (recipient, message id), an ack by id within one device.
CREATE UNIQUE INDEX envelopes_message ON envelopes (user_id, message_id, device_id);
CREATE INDEX envelopes_created_at ON envelopes (created_at);

-- A session signed in as one device (`POST /api/auth/login` with `device_id`); NULL: device 1.
ALTER TABLE sessions ADD COLUMN device_id INTEGER;
