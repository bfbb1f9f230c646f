//! APNs with token-based authentication: an ES256 JWT signed with the operator's .p8 key.
//! (Filled in by the FCM/APNs task.)

use super::{Outcome, Urgency};
use crate::config::Config;

pub struct Apns {}

impl Apns {
    /// Reads the .p8 key at `key_file` and the key id, team id and topic from `config`.
    pub fn from_settings(config: &Config, key_file: &str) -> anyhow::Result<Self> {
        let _ = (config, key_file);
        anyhow::bail!("APNs is not implemented yet")
    }

    pub async fn send(
        &self,
        http: &reqwest::Client,
        token: &str,
        topic: Option<&str>,
        urgency: Urgency,
    ) -> Outcome {
        let _ = (http, token, topic, urgency);
        Outcome::Failed("APNs is not implemented yet".into())
    }
}
