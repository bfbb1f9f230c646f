//! The HTTP client every push goes through.

use std::{sync::Arc, time::Duration};

use anyhow::Context;

use super::endpoint;

/// The client every push goes through: tight timeouts, no redirects (a redirect could lead
/// anywhere), no proxy from the environment, and names resolved through `endpoint`'s filter so
/// that a name cannot be re-pointed at a private address between the check and the connect.
pub fn client(timeout: Duration, allow_insecure: bool) -> anyhow::Result<reqwest::Client> {
    let mut tls = crate::tls::client_config()?;
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
