use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kisse_backend::config::{self, Config, LogFormat};
use tracing_subscriber::{EnvFilter, fmt};

/// Every frame allocates a few short-lived buffers, and glibc's allocator (its arena locks and
/// consolidation passes) showed as about a fifth of the server's CPU when routing at
/// saturation. mimalloc took 4 % off the CPU per routed message and a tenth off the memory of
/// an idle socket (docs/PERFORMANCE.md, round 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Blind gateway for the Kisse end-to-end-encrypted messenger.
#[derive(Parser)]
#[command(name = "kisse-backend", version)]
struct Cli {
    /// A TOML file of settings (keys: the settings below in lower case, e.g. `database_url`);
    /// the environment overrides it. Default: $KISSE_CONFIG, if set.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve HTTP and WebSockets until SIGINT or SIGTERM (default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the settings and print the effective ones, secrets redacted; exit 1 if invalid.
    CheckConfig,
    /// Copy the SQLite database of DATABASE_URL (every table, every id) into a new PostgreSQL
    /// database, migrating it first; refused if the target holds any row. Stop the server
    /// first.
    PortDb {
        /// The PostgreSQL database to fill (postgres://...).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Write a consistent copy of the SQLite database of DATABASE_URL to FILE (a new file),
    /// while the server runs or not; a server starts on the copy as it is.
    Backup {
        /// Where to write the copy; must not exist.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command()
        .after_help(config::settings_help())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let config = match config::read_dotenv().and_then(|()| {
        // Read here rather than by clap: a .env may set it, and empty counts as unset (as for
        // a setting).
        let file = cli.config.or_else(|| {
            std::env::var_os("KISSE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        Config::load(file.as_deref())
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kisse-backend: invalid configuration: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::CheckConfig = command {
        for (name, value) in config.describe() {
            println!("{name}={value}");
        }
        if config.jwt_secret_generated {
            println!("# JWT_SECRET is not set: a random secret is generated at each start");
        }
        println!("# configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_logging(&config.rust_log, config.log_format);
    if config.jwt_secret_generated && matches!(command, Command::Serve) {
        tracing::warn!(
            "JWT_SECRET is not set: using a random secret for this run; tokens will not survive a restart"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kisse-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // An operator's one-off command says why it failed on stderr, in a line of its own rather
    // than in a log line.
    let one_off = matches!(command, Command::PortDb { .. } | Command::Backup { .. });
    let result = runtime.block_on(async {
        match command {
            Command::Migrate => kisse_backend::migrate(&config).await,
            Command::PortDb { to } => kisse_backend::port_db(&config, &to).await,
            Command::Backup { file } => kisse_backend::backup(&config, &file),
            _ => kisse_backend::run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if one_off => {
            eprintln!("kisse-backend: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` filters (`info` if it cannot be read); `LOG_FORMAT=json` writes one JSON object
/// per line.
fn init_logging(rust_log: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(rust_log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
