//! TURN credentials for calls, by the TURN REST API convention (draft-uberti-behave-turn-rest)
//! that coturn checks with `use-auth-secret` / `static-auth-secret`: the username is
//! `<unix expiry>:<user id>` and the password is base64(HMAC-SHA-1(secret, username)). The TURN
//! server recomputes it from the shared secret, so nothing is stored or sent between the two
//! servers, and a credential is refused once its expiry has passed.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

use crate::{
    AppState,
    error::{Error, Result},
    model::{UserId, now},
};

/// Credentials a user may ask for per minute (also the burst). Each lets a relay be allocated
/// until it expires: the app asks once per call, a few times at most on reconnects.
pub const CREDENTIALS_PER_MINUTE: u32 = 30;

/// What the app hands to WebRTC as its ICE servers (`urls`, `username`, `credential`). No
/// `Debug`: the credential must not end up in a log line.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TurnCredentials {
    /// `TURN_URIS`, as configured.
    pub urls: Vec<String>,
    /// `<unix expiry>:<user id>`.
    pub username: String,
    /// base64 of HMAC-SHA-1 of `username` under the secret shared with the TURN server.
    pub credential: String,
    /// Seconds the credential stays valid (`TURN_TTL`).
    pub ttl: u64,
    /// When the TURN server starts refusing the credential.
    pub expires_at: DateTime<Utc>,
}

/// Fresh credentials for `user`: 404 `turn_unavailable` when the server has no TURN settings,
/// 429 beyond `CREDENTIALS_PER_MINUTE`.
pub fn credentials(state: &AppState, user: UserId) -> Result<TurnCredentials> {
    let config = &state.config;
    // `Config::check` guarantees both are set, or neither.
    let Some(secret) = config
        .turn_secret
        .as_ref()
        .filter(|_| !config.turn_uris.is_empty())
    else {
        return Err(Error::Unavailable {
            code: "turn_unavailable",
            message: "this server offers no TURN relay (TURN_URIS and TURN_SECRET are unset)",
        });
    };
    state.turn_credentials.take(user)?;
    let ttl = config.turn_ttl.as_secs();
    let expires_at = now() + config.turn_ttl;
    let username = format!("{}:{user}", expires_at.timestamp());
    Ok(TurnCredentials {
        urls: config.turn_uris.clone(),
        credential: sign(secret.expose(), &username)?,
        username,
        ttl,
        expires_at,
    })
}

/// base64(HMAC-SHA-1(secret, username)): the password coturn expects for `username`.
fn sign(secret: &[u8], username: &str) -> Result<String> {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret).map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
    mac.update(username.as_bytes());
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value `openssl dgst -sha1 -hmac <secret> -binary | base64` gives, which coturn
    /// accepted for this username (and the RFC 2202 HMAC-SHA-1 test case 2).
    #[test]
    fn the_credential_is_base64_hmac_sha1_of_the_username() {
        assert_eq!(
            sign(b"abcdefghijklmnopqrstuvwxyz", "1796375600:alice").expect("signed"),
            "vjYyfMrrw/i90jQDTc0x5W72ACM="
        );
        assert_eq!(
            sign(b"Jefe", "what do ya want for nothing?").expect("signed"),
            STANDARD.encode([
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
                0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79
            ])
        );
    }
}
