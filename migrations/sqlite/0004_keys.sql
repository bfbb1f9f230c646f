-- Signal key directory: the public half of each device's prekey bundle, as opaque bytes.
-- No private key is ever sent to or stored by the server.

CREATE TABLE devices (
    user_id                 BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id               INTEGER NOT NULL,
    registration_id         INTEGER,
    identity_key            BLOB NOT NULL,
    signed_prekey_id        INTEGER NOT NULL,
    signed_prekey           BLOB NOT NULL,
    signed_prekey_signature BLOB NOT NULL,
    -- Kyber (PQXDH) last-resort prekey: reused until replaced, so it is never consumed.
    pq_prekey_id            INTEGER,
    pq_prekey               BLOB,
    pq_prekey_signature     BLOB,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Each row is handed out once, then deleted.
CREATE TABLE one_time_prekeys (
    user_id    BLOB NOT NULL,
    device_id  INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
