//! `kisse-bench`: measures the Kisse backend with real sockets, and the same load against a
//! minimal relay (no auth, no storage) started beside it, so results read as ratios of what
//! this machine can do.
//!
//! Build first: `cargo build --release --workspace`. Then, e.g.:
//! `target/release/kisse-bench routing --pairs 50 --saturate --seconds 10`.

mod client;
mod compare;
mod devices;
mod push;
mod relay;
mod server;
mod stages;
mod stats;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N sender→recipient pairs: delivered messages/s and latency, losses and duplicates.
    Routing(RoutingArgs),
    /// M authenticated idle sockets: the server's resident memory per socket.
    Idle(IdleArgs),
    /// One channel message to K online members: time until the last one has it.
    Fanout(FanoutArgs),
    /// Internal: the minimal relay the other commands compare against.
    Relay {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Args, Clone)]
pub struct Target {
    /// Server binary to start (ignored with --url).
    #[arg(long, default_value = "target/release/kisse-backend")]
    pub server_bin: String,
    /// DATABASE_URL for the started server (default: a fresh SQLite file).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Use a running server instead of starting one (no relay comparison, no memory figures).
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(Args)]
struct RoutingArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages per second in all (open loop); ignored with --saturate.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Closed loop: each sender keeps --window messages in flight.
    #[arg(long)]
    saturate: bool,
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Logins per second during the run (password hashing storm).
    #[arg(long, default_value_t = 0)]
    login_storm: u64,
    /// Recipients send a read receipt for every message (the app's flow; not to the relay).
    #[arg(long)]
    read_receipts: bool,
    /// Senders give each message an id of their own (random UUIDv4), as a client retrying a
    /// send does. By default they send none and the server assigns one, as the app does.
    #[arg(long)]
    client_ids: bool,
    /// Senders upload a 256-byte ciphertext for each acknowledged message, under an id of
    /// their own, as the app does (not to the relay).
    #[arg(long)]
    content: bool,
    /// Skip the relay run.
    #[arg(long)]
    no_relay: bool,
    /// Devices per recipient (1..=127). Above 1, each recipient logs in once per device
    /// (device-bound sessions) and keeps a socket per device, senders send one ~200-byte
    /// envelope per device (issue 19), and each device acknowledges its own; no relay run.
    /// 1 (the default) is the one-device run above, unchanged.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=127))]
    devices: u8,
    /// With --devices 1: send the one device an envelope anyway (the envelope path without
    /// the fan-out), instead of the app's plain message.
    #[arg(long)]
    envelopes: bool,
    /// Push wake-ups (issue 20), one-device runs only: the server may push to plain-http
    /// loopback endpoints, every recipient's device 1 is registered with a push sink inside the
    /// bench, and the sink's count is reported (expected 0: the recipients are online). No
    /// relay run.
    #[arg(long, conflicts_with_all = ["envelopes", "url"])]
    push: bool,
    /// As --push, and K more registered users who never connect: each sender's every 50th
    /// message goes to one of them, in turn, so that they are woken by pushes during the run.
    #[arg(long, value_name = "K", conflicts_with_all = ["envelopes", "url"])]
    push_offline: Option<usize>,
    /// --push-offline's baseline: the same K users who never connect and the same messages to
    /// them, on the same server settings, but no push registration at all (nobody is woken).
    #[arg(long, value_name = "K", conflicts_with_all = ["envelopes", "url", "push", "push_offline"])]
    offline: Option<usize>,
    /// Every recipient blocks its sender before the run (issue 21): each message is then
    /// acknowledged and withheld (a plain insert outside the group commit, delivered to nobody).
    /// Compare the acknowledged messages per second with a run without it; "lost" counts the
    /// withheld ones.
    #[arg(long, conflicts_with_all = ["envelopes", "url", "push", "push_offline", "offline", "read_receipts", "content"])]
    blocked: bool,
    /// Grow the database first: SECONDS of saturation by pairs of their own, on the same
    /// server, before the measured run (with new pairs) starts. One-device plain runs only.
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["push", "push_offline", "offline", "envelopes"])]
    grow: Option<u64>,
    /// Run the same load against `--server-bin` and this binary alternately, `--rounds` times
    /// each, each run on a server of its own (with `--grow`: on one database grown once, by
    /// `--server-bin`, in place, each server stopped gracefully), and print the ratios. Plain
    /// runs, or `--envelopes`/`--devices` runs (without `--grow`); no relay.
    #[arg(long, value_name = "SERVER_BIN", conflicts_with_all = ["push", "push_offline", "offline", "url"])]
    compare: Option<String>,
    /// Write each delivered message's send time and latency (µs, a line each, in the order
    /// sent) to FILE, to see where the slow ones cluster in time. One-device plain runs; with
    /// --compare, each run to FILE.a1, FILE.b1, FILE.b2, ... (a: --server-bin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["push", "push_offline", "offline", "envelopes", "devices"])]
    timeline: Option<std::path::PathBuf>,
    /// With --compare: runs of each binary.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// With --push/--push-offline/--offline: the server's PUSH_MIN_INTERVAL, in seconds.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    push_interval: u64,
}

impl RoutingArgs {
    /// Envelopes to each recipient's devices rather than plain messages.
    fn is_device_run(&self) -> bool {
        self.devices > 1 || self.envelopes
    }

    /// The load of a device run, refusing what such runs do not take.
    fn devices_load(&self) -> anyhow::Result<devices::Load> {
        if self.read_receipts || self.content || self.login_storm > 0 {
            anyhow::bail!(
                "--devices/--envelopes runs take no --read-receipts, --content or --login-storm"
            );
        }
        if self.push || self.push_offline.is_some() || self.offline.is_some() {
            anyhow::bail!("--push runs are one-device runs (no --devices)");
        }
        Ok(devices::Load {
            pairs: self.pairs,
            devices: self.devices,
            rate: (!self.saturate).then_some(self.rate),
            window: self.window,
            duration: Duration::from_secs(self.seconds),
            client_ids: self.client_ids,
        })
    }

    /// The one-device run's load.
    fn load(&self) -> client::Load {
        client::Load {
            pairs: self.pairs,
            rate: (!self.saturate).then_some(self.rate),
            window: self.window,
            duration: Duration::from_secs(self.seconds),
            login_storm: self.login_storm,
            read_receipts: self.read_receipts,
            client_ids: self.client_ids,
            content: self.content,
            blocked: self.blocked,
        }
    }
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Seconds to wait once every socket is open before reading the server's memory.
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// The last byte of the first source address (127.0.0.N; each holds 20,000 sockets): bench
    /// processes against the nodes of one cluster each need addresses of their own, since
    /// one process holds at most its open-file limit of sockets.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..))]
    first_source: u8,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 500)]
    members: usize,
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Already installed is fine: any provider serves the bench's plain-HTTP clients.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Relay { port } => relay::serve(port).await,
        Command::Routing(args) if args.grow.is_some() && args.is_device_run() => {
            anyhow::bail!("--grow is for one-device plain runs")
        }
        Command::Routing(args) if args.compare.is_some() => {
            let other = args.compare.as_deref().unwrap_or_default();
            let grow = args.grow.map(Duration::from_secs);
            let (plain, devices);
            let runs = if args.is_device_run() {
                devices = args.devices_load()?;
                compare::Runs::Devices(&devices)
            } else {
                plain = args.load();
                compare::Runs::Plain(&plain)
            };
            let timeline = args.timeline.as_deref();
            compare::run(
                &args.target,
                other,
                args.rounds as usize,
                runs,
                grow,
                timeline,
            )
            .await
        }
        Command::Routing(args) if args.is_device_run() => {
            let load = args.devices_load()?;
            let server = server::Running::start(&args.target).await?;
            let report = devices::routing(&server, &load).await?;
            report.print(&format!("kisse ({})", server.engine));
            if !args.no_relay && args.target.url.is_none() {
                println!("(no relay run: the relay has no devices; compare with --devices 1)");
            }
            if !report.clean() {
                anyhow::bail!(
                    "envelopes were refused, lost, duplicated, misdirected or left queued"
                );
            }
            Ok(())
        }
        Command::Routing(args)
            if args.push || args.push_offline.is_some() || args.offline.is_some() =>
        {
            let load = args.load();
            let interval = Duration::from_secs(args.push_interval);
            let plan = match args.offline {
                Some(offline) => push::Plan::start(offline, false, interval).await?,
                None => push::Plan::start(args.push_offline.unwrap_or(0), true, interval).await?,
            };
            let server =
                server::Running::start_with(&args.target, &push::server_env(interval)).await?;
            let report = client::routing_with_push(&server, &load, &plan).await?;
            report.print(&format!("kisse ({}, push)", server.engine));
            plan.print(args.pairs, load.duration);
            if !args.no_relay {
                println!("(no relay run with --push: compare with the plain run)");
            }
            Ok(())
        }
        Command::Routing(args) => {
            let load = args.load();
            let server = server::Running::start(&args.target).await?;
            if let Some(grow) = args.grow {
                compare::grow(&server, load.pairs, Duration::from_secs(grow)).await?;
            }
            let label = format!("kisse ({})", server.engine);
            let timeline = args.timeline.as_deref();
            let report = compare::measured(&server, &load, &label, timeline).await?;
            if !args.no_relay && args.target.url.is_none() {
                let relay = server::Running::relay().await?;
                let baseline = client::routing(
                    &relay,
                    &client::Load {
                        login_storm: 0,
                        ..load
                    },
                )
                .await?;
                baseline.print("minimal relay");
                println!(
                    "ratio kisse/relay: {:.2} (delivered/s)",
                    report.delivered_per_second() / baseline.delivered_per_second().max(1.0)
                );
            }
            Ok(())
        }
        Command::Idle(args) => {
            let server = server::Running::start(&args.target).await?;
            let settle = Duration::from_secs(args.settle);
            client::idle(&server, args.sockets, args.users, settle, args.first_source).await
        }
        Command::Fanout(args) => {
            let server = server::Running::start(&args.target).await?;
            client::fanout(&server, args.members, args.rounds).await
        }
    }
}
