//! The TLS every outgoing HTTPS client of the server uses (push services, an S3 object store):
//! rustls with ring, the crypto provider sqlx and redis already use (reqwest is built without a
//! provider of its own: its default would bring aws-lc), trusting the compiled-in webpki roots,
//! since the runtime image has no CA store.

use std::sync::Arc;

use anyhow::Context;

/// A client configuration: ring, safe protocol versions, the webpki roots, no client auth.
/// It also installs ring as the process's default provider, for any other client.
pub fn client_config() -> anyhow::Result<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
