//! `drover logs`: the app's process output, from the agent.

use std::path::Path;

use clap::Args;
use drover_wire::{Line, Request};

use crate::output::hinted;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app.
    pub app: String,
    /// Keep printing what any of the app's processes writes next, across deploys,
    /// rollbacks and restarts, until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to show per process (default 50; with --since, all).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Only lines written since then, in every log of the app (old generations' too): how
    /// long ago (`10m`, `2h`, `90s`, `1d`) or a UTC time (`2026-12-02T17:50:00Z`,
    /// `2026-12-02 17:50`, `2026-12-02`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only lines containing TEXT (as it is: no pattern).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// With -e: every host's lines, each prefixed by its host.
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
}

pub fn run(root: &Path, args: LogsArgs) -> anyhow::Result<()> {
    let since = match &args.since {
        Some(s) => Some(
            drover_wire::time::parse_since(s, drover_wire::time::now_ms()).map_err(|e| {
                hinted(
                    format!("--since {e}"),
                    "give how long ago (10m, 2h, 1d) or a UTC time (2026-12-02T17:50:00Z)",
                )
            })?,
        ),
        None => None,
    };
    let req = Request::Logs {
        app: args.app.clone(),
        lines: args
            .lines
            .unwrap_or(if since.is_some() { usize::MAX } else { 50 }),
        follow: args.follow,
        since,
        grep: args.grep.clone(),
    };
    if let Some(target) = args.fleet.target()? {
        let width = target.env.hosts.iter().map(String::len).max().unwrap_or(0);
        let stdout = std::sync::Mutex::new(std::io::stdout());
        return drover_fleet::ops::logs(&target, &req, |host, line| {
            use std::io::Write;
            let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{host:width$} | {line}");
        });
    }
    crate::client::call::<serde::de::IgnoredAny>(root, &req, |line| {
        if let Line::Log { log } = line {
            println!("{log}");
        }
    })?;
    Ok(())
}
