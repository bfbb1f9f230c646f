//! Push services: how a wake-up reaches a device with no live socket. The push says only
//! "something is waiting" (and how urgent): no content, no sender, no conversation. The device
//! wakes, connects, and drains its queue. Which device to wake, and when, is the domain's
//! business (`domain::push`); this module only delivers one push and reports how it went.
//!
//! - Web Push (RFC 8030), encrypted (RFC 8291, `aes128gcm`) and signed (RFC 8292, VAPID); this
//!   is also how UnifiedPush distributors are reached. See `webpush.rs`.
//! - UnifiedPush without encryption: a plain POST of the same marker.
//! - FCM HTTP v1 (`fcm.rs`) and APNs (`apns.rs`), when the operator configured credentials.
//!
//! Endpoints are URLs users chose: `endpoint.rs` refuses those that would reach this server's
//! own network, at registration and again before each request.

mod apns;
pub mod endpoint;
mod fcm;
pub mod vapid;
pub mod webpush;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use self::{apns::Apns, fcm::Fcm, vapid::Vapid};
use crate::config::Config;

/// How soon the device should wake: a call ring is `High` (RFC 8030 `Urgency: high`, FCM high
/// priority, APNs priority 10); anything else is `Normal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Urgency {
    Normal,
    High,
}

impl Urgency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
        }
    }

    /// The push's whole plaintext: a marker and the urgency, nothing else.
    pub fn wake_body(self) -> String {
        format!(r#"{{"type":"wake","urgency":"{}"}}"#, self.as_str())
    }
}

/// Where one device's wake-ups go, as registered by the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Web Push subscription: its endpoint, and the keys its payload is encrypted for
    /// (base64url: the 65-byte uncompressed P-256 point, and the 16-byte auth secret).
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    /// A UnifiedPush endpoint taking plain POSTs.
    UnifiedPush { endpoint: String },
    /// An FCM registration token.
    Fcm { token: String },
    /// An APNs device token, and the app's topic (bundle id) when not `APNS_TOPIC`.
    Apns {
        token: String,
        topic: Option<String>,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WebPush { .. } => "webpush",
            Self::UnifiedPush { .. } => "unifiedpush",
            Self::Fcm { .. } => "fcm",
            Self::Apns { .. } => "apns",
        }
    }

    /// The URL a request goes to, for the kinds whose URL the user chose.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::WebPush { endpoint, .. } | Self::UnifiedPush { endpoint } => Some(endpoint),
            Self::Fcm { .. } | Self::Apns { .. } => None,
        }
    }
}

/// How one attempt to push went.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The push service took it.
    Sent,
    /// The registration is dead (404/410, an unregistered token): remove it.
    Gone,
    /// Try again later (429, 5xx, a timeout, a connection error), after `after` if the service
    /// said (`Retry-After`).
    Retry { after: Option<Duration> },
    /// Refused for good (another 4xx, an endpoint that became unsafe, a push kind no longer
    /// configured): counted and logged, without the endpoint.
    Failed(String),
}

impl Outcome {
    /// What an HTTP status means for a push (the same for every service): 2xx taken; 404 and
    /// 410 gone; 429 and 5xx retried (after `Retry-After` seconds if given); the rest refused.
    pub fn from_status(status: reqwest::StatusCode, retry_after: Option<Duration>) -> Self {
        match status.as_u16() {
            200..=299 => Self::Sent,
            404 | 410 => Self::Gone,
            429 | 500..=599 => Self::Retry { after: retry_after },
            other => Self::Failed(format!("push service answered {other}")),
        }
    }

    /// A request that did not get an answer: a timeout or a connection error is worth a retry;
    /// anything else (a redirect refused, a bad URL) is not.
    pub fn from_error(error: reqwest::Error) -> Self {
        if error.is_timeout() || error.is_connect() || error.is_request() {
            Self::Retry { after: None }
        } else {
            Self::Failed(format!("push request failed: {}", error.without_url()))
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for push services and read as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

/// The push services this node can reach: Web Push always (with this deployment's VAPID key),
/// FCM and APNs when configured.
pub struct Pushers {
    http: reqwest::Client,
    pub vapid: Vapid,
    vapid_subject: String,
    fcm: Option<Fcm>,
    apns: Option<Apns>,
    allow_insecure: bool,
}

impl Pushers {
    /// Builds the client and the services `config` enables; `vapid` is the deployment's key
    /// (from the settings or the database).
    pub fn new(config: &Config, vapid: Vapid) -> anyhow::Result<Self> {
        let http = client(config.push_timeout, config.push_allow_insecure_endpoints)?;
        let fcm = match &config.fcm_service_account_file {
            Some(path) => Some(Fcm::from_file(path, &config.fcm_base_url).context("FCM settings")?),
            None => None,
        };
        let apns = match &config.apns_key_file {
            Some(path) => Some(Apns::from_settings(config, path).context("APNs settings")?),
            None => None,
        };
        Ok(Self {
            http,
            vapid,
            vapid_subject: config.vapid_subject.clone(),
            fcm,
            apns,
            allow_insecure: config.push_allow_insecure_endpoints,
        })
    }

    /// Whether wake-ups of `kind` can be sent here (registration refuses the others).
    pub fn supports(&self, kind: &str) -> bool {
        match kind {
            "webpush" | "unifiedpush" => true,
            "fcm" => self.fcm.is_some(),
            "apns" => self.apns.is_some(),
            _ => false,
        }
    }

    pub fn allow_insecure(&self) -> bool {
        self.allow_insecure
    }

    /// One attempt to wake the device behind `target`.
    pub async fn send(&self, target: &Target, urgency: Urgency) -> Outcome {
        if let Some(url) = target.endpoint() {
            // Checked again now: the name may resolve elsewhere than at registration.
            if let Err(e) = endpoint::check(url, self.allow_insecure).await {
                return Outcome::Failed(e.to_string());
            }
        }
        match target {
            Target::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                let request = webpush::Request {
                    endpoint,
                    p256dh,
                    auth,
                    vapid: &self.vapid,
                    subject: &self.vapid_subject,
                };
                request.send(&self.http, urgency).await
            }
            Target::UnifiedPush { endpoint } => {
                webpush::send_plain(&self.http, endpoint, urgency).await
            }
            Target::Fcm { token } => match &self.fcm {
                Some(fcm) => fcm.send(&self.http, token, urgency).await,
                None => Outcome::Failed("FCM is not configured".into()),
            },
            Target::Apns { token, topic } => match &self.apns {
                Some(apns) => {
                    apns.send(&self.http, token, topic.as_deref(), urgency)
                        .await
                }
                None => Outcome::Failed("APNs is not configured".into()),
            },
        }
    }
}

/// The client every push goes through: tight timeouts, no redirects (a redirect could lead
/// anywhere), no proxy from the environment, and names resolved through `endpoint`'s filter so
/// that a name cannot be re-pointed at a private address between the check and the connect.
fn client(timeout: Duration, allow_insecure: bool) -> anyhow::Result<reqwest::Client> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("kisse/", env!("CARGO_PKG_VERSION")));
    if !allow_insecure {
        builder = builder.dns_resolver(Arc::new(endpoint::PublicOnly));
    }
    builder.build().context("building the push HTTP client")
}
