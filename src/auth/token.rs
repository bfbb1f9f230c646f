//! Access tokens: HS256 JWTs (the algorithm is pinned on decode), URL-safe by construction.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    config::Secret,
    model::{SessionId, UserId},
};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    iat: i64,
    exp: i64,
    jti: Uuid,
    /// The session the token was issued for; tokens without one are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<Uuid>,
    /// The device a device-bound session signed in as; absent: unbound (device 1). Tokens
    /// issued before devices existed have none and keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev: Option<i64>,
}

/// What a valid token says.
#[derive(Clone, Copy, Debug)]
pub struct TokenClaims {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// The device the session is bound to (`POST /api/auth/login` with `device_id`); `None`
    /// for an unbound session, which speaks for device 1 unless its socket names another.
    pub device: Option<i64>,
    /// Expiry, in seconds since the Unix epoch.
    pub expires_at: i64,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl TokenKeys {
    pub fn new(secret: &Secret, lifetime: Duration) -> Self {
        crate::jwt::install();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            lifetime,
        }
    }

    /// Seconds an access token lives.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    pub fn issue(
        &self,
        user: UserId,
        session: SessionId,
        device: Option<i64>,
    ) -> anyhow::Result<String> {
        self.issue_as(
            user,
            session,
            device,
            Utc::now().timestamp(),
            Uuid::new_v4(),
        )
    }

    /// A token issued at `iat` (seconds since the epoch) with the id `jti`: the same arguments
    /// give the same token, which lets a refresh answered twice answer the same pair.
    pub fn issue_as(
        &self,
        user: UserId,
        session: SessionId,
        device: Option<i64>,
        iat: i64,
        jti: Uuid,
    ) -> anyhow::Result<String> {
        let claims = Claims {
            sub: user.0,
            iat,
            exp: iat.saturating_add(i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX)),
            jti,
            sid: Some(session.0),
            dev: device,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a well-signed, unexpired token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some(TokenClaims {
            user_id: UserId(data.claims.sub),
            session_id: SessionId(data.claims.sid?),
            // Signed by us, so in range; a token naming an impossible device is refused anyway.
            device: match data.claims.dev {
                Some(device) if !(1..=127).contains(&device) => return None,
                device => device,
            },
            expires_at: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&Secret::new(secret), Duration::from_secs(60))
    }

    #[test]
    fn issued_tokens_verify_and_are_url_safe() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let user = UserId(Uuid::new_v4());
        let token = keys
            .issue(user, SessionId(Uuid::new_v4()), None)
            .expect("issue");
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
        assert_eq!(keys.verify(&token).map(|c| c.user_id), Some(user));
        assert_eq!(keys.verify(&token).and_then(|c| c.device), None);
    }

    #[test]
    fn a_bound_session_token_carries_its_device() {
        let keys = keys("0123456789abcdef0123456789abcdef");
        let token = keys
            .issue(UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()), Some(3))
            .expect("issue");
        assert_eq!(keys.verify(&token).and_then(|c| c.device), Some(3));
    }

    #[test]
    fn foreign_and_unsigned_tokens_are_refused() {
        let token = keys("0123456789abcdef0123456789abcdef")
            .issue(UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()), None)
            .expect("issue");
        assert!(
            keys("another secret of thirty-two bytes!")
                .verify(&token)
                .is_none()
        );
        // alg=none with the same claims must never pass.
        let payload = token.split('.').nth(1).expect("payload");
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(
            keys("0123456789abcdef0123456789abcdef")
                .verify(&unsigned)
                .is_none()
        );
    }
}
