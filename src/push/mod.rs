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
mod http;
mod target;
pub mod vapid;
pub mod webpush;

use anyhow::Context;

pub use self::{
    apns::Apns,
    fcm::Fcm,
    target::{Outcome, Target, Urgency, retry_after},
    vapid::Vapid,
};
use crate::config::Config;

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
        let http = http::client(config.push_timeout, config.push_allow_insecure_endpoints)?;
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
