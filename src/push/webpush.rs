//! Web Push (RFC 8030): one POST to the subscription's endpoint, its body encrypted for the
//! subscription's keys (RFC 8291, `aes128gcm`) and signed with the deployment's VAPID key
//! (RFC 8292). UnifiedPush endpoints without keys get the same marker in plain text.

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};

use super::{Outcome, Urgency, Vapid, retry_after};

/// How long a push service keeps an undelivered wake-up (a phone switched off for days still
/// wakes when it comes back; `Topic` keeps one per device).
const TTL_SECONDS: u64 = 28 * 86_400;
/// RFC 8030 `Topic`: a newer wake-up replaces one the service still holds for the device.
const TOPIC: &str = "kisse-wake";

/// A subscription's keys, decoded: the P-256 point and the 16-byte auth secret.
pub struct Keys {
    public: p256::PublicKey,
    auth: web_push_native::Auth,
}

impl Keys {
    /// Decodes `p256dh` and `auth` (base64url, padded or not), as browsers give them.
    pub fn decode(p256dh: &str, auth: &str) -> Result<Self, &'static str> {
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
        let point = decode(p256dh).map_err(|_| "keys.p256dh is not base64url")?;
        let public = p256::PublicKey::from_sec1_bytes(&point)
            .map_err(|_| "keys.p256dh is not a P-256 public key")?;
        let auth = decode(auth).map_err(|_| "keys.auth is not base64url")?;
        if auth.len() != 16 {
            return Err("keys.auth must be 16 bytes");
        }
        let mut secret = web_push_native::Auth::default();
        secret.copy_from_slice(&auth);
        Ok(Self {
            public,
            auth: secret,
        })
    }
}

/// One encrypted, signed push.
pub struct Request<'a> {
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
    pub vapid: &'a Vapid,
    pub subject: &'a str,
}

impl Request<'_> {
    pub async fn send(&self, http: &reqwest::Client, urgency: Urgency) -> Outcome {
        match self.build(http, urgency) {
            Ok(request) => deliver(request).await,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn build(
        &self,
        http: &reqwest::Client,
        urgency: Urgency,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let url = reqwest::Url::parse(self.endpoint).context("bad endpoint")?;
        let keys = Keys::decode(self.p256dh, self.auth).map_err(anyhow::Error::msg)?;
        let body =
            web_push_native::encrypt(urgency.wake_body().into_bytes(), &keys.public, &keys.auth)
                .map_err(|e| anyhow::anyhow!("encrypting the push: {e:?}"))?;
        let authorization = self.vapid.authorization(&url, self.subject)?;
        Ok(headers(http.post(url), urgency)
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(AUTHORIZATION, authorization)
            .body(body))
    }
}

/// A UnifiedPush POST without encryption: the same marker, as JSON.
pub async fn send_plain(http: &reqwest::Client, endpoint: &str, urgency: Urgency) -> Outcome {
    let request = headers(http.post(endpoint), urgency)
        .header(CONTENT_TYPE, "application/json")
        .body(urgency.wake_body());
    deliver(request).await
}

fn headers(request: reqwest::RequestBuilder, urgency: Urgency) -> reqwest::RequestBuilder {
    request
        .header("TTL", TTL_SECONDS)
        .header("Urgency", urgency.as_str())
        .header("Topic", TOPIC)
}

async fn deliver(request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Ok(response) => Outcome::from_status(response.status(), retry_after(response.headers())),
        Err(e) => Outcome::from_error(e),
    }
}
