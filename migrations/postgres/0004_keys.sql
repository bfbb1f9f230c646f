-- Signal key directory: the public half of each device's prekey bundle, as opaque bytes.
-- No private key is ever sent to or stored by the server.

CREATE TABLE devices (
    user_id                 UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id               BIGINT NOT NULL,
    registration_id         BIGINT,
    identity_key            BYTEA NOT NULL,
    signed_prekey_id        BIGINT NOT NULL,
    signed_prekey           BYTEA NOT NULL,
    signed_prekey_signature BYTEA NOT NULL,
    -- Kyber (PQXDH) last-resort prekey: reused until replaced, so it is never consumed.
    pq_prekey_id            BIGINT,
    pq_prekey               BYTEA,
    pq_prekey_signature     BYTEA,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Each row is handed out once, then deleted.
CREATE TABLE one_time_prekeys (
    user_id    UUID NOT NULL,
    device_id  BIGINT NOT NULL,
    key_id     BIGINT NOT NULL,
    public_key BYTEA NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
