//! What every push service shares: where a device is woken, how urgently, and what came of an
//! attempt.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
