//! `routing --compare OTHER`: the same load against two server binaries, alternately (A B,
//! B A, A B, ...), each run on a server of its own and, with `--grow`, on one grown database in
//! turn; then each binary's figures and the ratios of the second to the first.

use std::{path::Path, time::Duration};

use crate::{
    Target,
    client::{self, Figures, Load},
    devices,
    server::{self, Running, tempfile_path::TempPath},
    stages,
};

/// The load each run of a comparison sends.
pub enum Runs<'a> {
    /// One-device plain messages (the app's inbox path).
    Plain(&'a Load),
    /// End-to-end envelopes to each recipient's devices.
    Devices(&'a devices::Load),
}

impl Runs<'_> {
    fn pairs(&self) -> usize {
        match self {
            Self::Plain(load) => load.pairs,
            Self::Devices(load) => load.pairs,
        }
    }

    /// One measured run on `server`, printed under `label`; an envelope run that refused, lost,
    /// duplicated or misdirected anything fails the comparison. A plain run writes its
    /// timeline to `timeline` when given.
    async fn measured(
        &self,
        server: &Running,
        label: &str,
        timeline: Option<&Path>,
    ) -> anyhow::Result<Figures> {
        match self {
            Self::Plain(load) => Ok(measured(server, load, label, timeline).await?.figures()),
            Self::Devices(load) => {
                let report = devices::routing(server, load).await?;
                report.print(label);
                anyhow::ensure!(
                    report.clean(),
                    "{label}: envelopes were refused, lost, duplicated, misdirected or left queued"
                );
                Ok(report.figures())
            }
        }
    }
}

/// Runs `runs` against `target`'s binary and `other` alternately, `rounds` times each; with
/// `grow` (plain runs only), each on one database grown once, in place, each server stopped as
/// an operator stops it so that the next one starts on a database left closed. Not on copies:
/// on a fresh copy of a grown database (1.9 GB written just before the run) the first seconds
/// of a run were slow on this VM, and most of its slow messages were there (p99 5.96 ms, 2.6–3.3
/// in place; the same copy after one run on it, 3.57; docs/PERFORMANCE.md, issue 25, thirteenth
/// round), a start no server on its own database has. Each run adds its messages to the
/// database (100,000 in 10 s at 10,000 msg/s: a few per cent of a grown one), and the binaries
/// take turns (A B, B A) so that neither always runs on the larger one. With `timeline`, each
/// plain run writes its timeline to `<timeline>.<a|b><round>` (a: `target`'s binary).
pub async fn run(
    target: &Target,
    other: &str,
    rounds: usize,
    runs: Runs<'_>,
    grow: Option<Duration>,
    timeline: Option<&Path>,
) -> anyhow::Result<()> {
    let grown = match grow {
        Some(grow) => Some(grown_database(target, runs.pairs(), grow).await?),
        None => None,
    };
    let binaries = [target.server_bin.as_str(), other];
    let mut figures: [Vec<Figures>; 2] = Default::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let target = Target {
                server_bin: binaries[side].to_owned(),
                ..target.clone()
            };
            let server = Running::start_on(&target, grown.as_ref().map(TempPath::path)).await?;
            let label = format!("{} (round {})", binaries[side], round + 1);
            let timeline = timeline.map(|path| {
                let side = ["a", "b"][side];
                path.with_added_extension(format!("{side}{}", round + 1))
            });
            figures[side].push(runs.measured(&server, &label, timeline.as_deref()).await?);
            server.stop().await?;
        }
    }
    println!();
    for (binary, runs) in binaries.iter().zip(&figures) {
        println!("{binary}: {}", Figures::summary(runs));
    }
    println!(
        "{} / {}: {}",
        binaries[1],
        binaries[0],
        Figures::ratios(&figures[0], &figures[1])
    );
    Ok(())
}

/// The measured run on `server`, printed under `label` with its stages from the server's
/// metrics; its timeline written to `timeline` when given.
pub async fn measured(
    server: &Running,
    load: &Load,
    label: &str,
    timeline: Option<&Path>,
) -> anyhow::Result<client::Report> {
    let before = server.metrics().await.unwrap_or_default();
    let report = client::routing(server, load).await?;
    report.print(label);
    if let Some(path) = timeline {
        report.write_timeline(path)?;
    }
    if let Ok(after) = server.metrics().await {
        stages::print(&before, &after);
    }
    Ok(report)
}

/// Grows the database of `server` by `seconds` of saturation from `pairs` pairs of their own.
pub async fn grow(server: &Running, pairs: usize, seconds: Duration) -> anyhow::Result<()> {
    let load = Load::saturating(pairs, seconds);
    let report = client::routing(server, &load).await?;
    report.print("grow");
    if let Some(file) = server.database_file() {
        let (database, log) = server::sqlite_size(file);
        println!(
            "  grown: database {:.0} MiB, write-ahead log {:.0} MiB",
            database as f64 / 1048576.0,
            log as f64 / 1048576.0
        );
    }
    Ok(())
}

/// A SQLite database grown once by the first binary, left closed, for every run to start on.
async fn grown_database(
    target: &Target,
    pairs: usize,
    seconds: Duration,
) -> anyhow::Result<TempPath> {
    if target.database_url.is_some() || target.url.is_some() {
        anyhow::bail!(
            "--compare --grow grows a SQLite database the bench makes: without --database-url and --url"
        );
    }
    let server = Running::start_on(target, None).await?;
    grow(&server, pairs, seconds).await?;
    let grown = TempPath::new("kisse-bench-grown", "db");
    server.stop_keeping_database(grown.path()).await?;
    Ok(grown)
}
