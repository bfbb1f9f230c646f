-- Push wake-ups: at most one registration per device (Web Push, UnifiedPush, FCM or APNs),
-- removed with the device (and so with the account). `pushed_at` is when the device was last
-- woken: further events wait for its socket or PUSH_MIN_INTERVAL; its connect clears it.
CREATE TABLE push_registrations (
    user_id    UUID NOT NULL,
    device_id  BIGINT NOT NULL,
    kind       TEXT NOT NULL,    -- webpush, unifiedpush, fcm, apns
    endpoint   TEXT,             -- webpush, unifiedpush
    p256dh     TEXT,             -- webpush: the subscription's public key (base64url)
    auth       TEXT,             -- webpush: its auth secret (base64url)
    token      TEXT,             -- fcm, apns
    topic      TEXT,             -- apns, when not APNS_TOPIC
    created_at TIMESTAMPTZ NOT NULL,
    pushed_at  TIMESTAMPTZ,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES user_devices (user_id, device_id) ON DELETE CASCADE
);

-- Keys the server makes for itself once and every node shares (the VAPID key).
CREATE TABLE server_keys (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
