use kisse_backend::config::Config;
use tracing_subscriber::{EnvFilter, fmt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    init_logging();
    if config.jwt_secret_generated {
        tracing::warn!(
            "JWT_SECRET is not set: using a random secret for this run; tokens will not survive a restart"
        );
    }
    kisse_backend::run(config).await
}

/// `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object per line.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}
