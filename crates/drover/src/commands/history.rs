//! `drover history`: what ran, on this machine (its generations) or with -e (the
//! environment's audit log, merged from every host).

use std::path::Path;

use clap::Args;
use drover_fleet::HostError;
use drover_wire::{GenerationInfo, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The app (default: the only app on this host). With -e: the environment's audit log,
    /// merged from every host.
    pub app: Option<String>,
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_history(root: &Path, args: HistoryArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return history_fleet(target, args.app, args.json.json);
    }
    let app = match args.app {
        Some(a) => a,
        None => super::deploy::only_app(root)?,
    };
    let gens: Vec<GenerationInfo> = client::call_list(root, &Request::History { app }, |_| {})?;
    // Oldest first, the newest at the bottom, in the table and in --json alike.
    if args.json.json {
        return output::json(&gens);
    }
    println!(
        "{:>4}  {:<20} {:<10} {:<14} {:<12} {:<10} {:<20} REASON",
        "GEN", "TIME", "OUTCOME", "VERSION", "RELEASE", "KIND", "WHO"
    );
    for g in &gens {
        println!(
            "{:>4}  {:<20} {:<10} {:<14} {:<12} {:<10} {:<20} {}",
            g.generation,
            fmt_utc(g.created),
            g.outcome,
            g.version,
            &g.release[..12.min(g.release.len())],
            match g.from {
                Some(f) if g.kind == "rollback" => format!("rollback:{f}"),
                _ => g.kind.clone(),
            },
            g.who,
            g.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn history_fleet(
    target: drover_fleet::Target,
    app: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (merged, errors) = drover_fleet::ops::history(&target, app.as_deref())?;
    if json {
        output::json(&merged)?;
    } else {
        for e in &merged {
            println!(
                "{}  {}  {} {} {}  {} -> {}  {}  by {}{}",
                fmt_utc(e.at),
                e.host.as_deref().unwrap_or("-"),
                e.action,
                e.app,
                e.version.as_deref().unwrap_or("-"),
                e.from.map_or("-".into(), |g| g.to_string()),
                e.to.map_or("-".into(), |g| g.to_string()),
                e.outcome,
                e.who,
                e.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    if !errors.is_empty() {
        let refs: Vec<&HostError> = errors.iter().collect();
        return Err(
            drover_fleet::host_errors(&refs).context("some hosts' audit logs are missing above")
        );
    }
    Ok(())
}

/// `2026-11-22 10:04:05Z`.
pub fn fmt_utc(secs: u64) -> String {
    drover_wire::time::table(secs)
}
