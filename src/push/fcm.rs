//! FCM HTTP v1: a data-only message to a registration token, authorized by an OAuth2 access
//! token obtained with the operator's service-account key. (Filled in by the FCM/APNs task.)

use std::path::Path;

use super::{Outcome, Urgency};

pub struct Fcm {}

impl Fcm {
    /// Reads the service-account JSON key at `path`; requests go to `base_url`.
    pub fn from_file(path: impl AsRef<Path>, base_url: &str) -> anyhow::Result<Self> {
        let _ = (path.as_ref(), base_url);
        anyhow::bail!("FCM is not implemented yet")
    }

    pub async fn send(&self, http: &reqwest::Client, token: &str, urgency: Urgency) -> Outcome {
        let _ = (http, token, urgency);
        Outcome::Failed("FCM is not implemented yet".into())
    }
}
