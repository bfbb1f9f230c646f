//! The deployment's VAPID key (RFC 8292): Web Push services check that every push to a
//! subscription is signed by the key the subscription was made with. Browsers and UnifiedPush
//! distributors get the public half from `GET /api/push/vapid`.

use std::time::Duration;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{SecretKey, pkcs8::EncodePrivateKey};
use serde::Serialize;

/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct Vapid {
    secret: SecretKey,
    signing: EncodingKey,
    public: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: i64,
    sub: &'a str,
}

impl Vapid {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_secret(SecretKey::random(
            &mut p256::elliptic_curve::rand_core::OsRng,
        ))
        .expect("a fresh P-256 key encodes")
    }

    /// The key whose 32-byte secret is `encoded` (base64url, padded or not).
    pub fn from_base64(encoded: &str) -> anyhow::Result<Self> {
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim().trim_end_matches('='))
            .context("not base64url")?;
        let secret = SecretKey::from_slice(&bytes).context("not a P-256 secret (32 bytes)")?;
        Self::from_secret(secret)
    }

    fn from_secret(secret: SecretKey) -> anyhow::Result<Self> {
        crate::jwt::install();
        let der = secret.to_pkcs8_der().context("encoding the VAPID key")?;
        let point = secret.public_key().to_sec1_bytes();
        Ok(Self {
            signing: EncodingKey::from_ec_der(der.as_bytes()),
            public: URL_SAFE_NO_PAD.encode(point),
            secret,
        })
    }

    /// The secret as stored (base64url, 32 bytes).
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }

    /// The public key: base64url (unpadded) of the uncompressed point, as browsers take it
    /// for `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a push to `endpoint`: `vapid t=<ES256 JWT>, k=<key>`,
    /// the token's audience being the endpoint's origin.
    pub fn authorization(&self, endpoint: &reqwest::Url, subject: &str) -> anyhow::Result<String> {
        let audience = endpoint.origin().ascii_serialization();
        let exp = chrono::Utc::now().timestamp() + TOKEN_LIFETIME.as_secs() as i64;
        let claims = Claims {
            aud: &audience,
            exp,
            sub: subject,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.signing)
            .context("signing the VAPID token")?;
        Ok(format!("vapid t={token}, k={}", self.public))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_reads_back_the_same() {
        let key = Vapid::generate();
        let again = Vapid::from_base64(&key.to_base64()).expect("valid");
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(key.public_key()).expect("b64").len(),
            65
        );
        assert!(Vapid::from_base64("not a key").is_err());
        assert!(Vapid::from_base64(&URL_SAFE_NO_PAD.encode([0u8; 32])).is_err());
    }
}
