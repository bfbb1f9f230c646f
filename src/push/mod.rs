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
mod target;
pub mod vapid;
pub mod webpush;

use std::{sync::Arc, time::Duration};

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
    // reqwest is built without a provider of its own (it would bring aws-lc): ring, which
    // sqlx's TLS already uses, serves this client and any other in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest offers HTTP/2 only on TLS it configures itself: APNs speaks nothing else.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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
