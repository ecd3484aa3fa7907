//! `drover status` and `drover history`: what runs, and what ran.

use std::path::Path;

use clap::Args;
use drover_wire::{AppStatus, GenerationInfo, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this app.
    pub app: Option<String>,
    #[command(flatten)]
    pub fleet: crate::commands::fleet::EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The app (default: the only app on this host). With -e: the environment's audit log,
    /// merged from every host.
    pub app: Option<String>,
    #[command(flatten)]
    pub fleet: crate::commands::fleet::EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_status(root: &Path, args: StatusArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return super::fleet::status(target, args.app, args.json.json);
    }
    let apps: Vec<AppStatus> = client::call(root, &Request::Status { app: args.app }, |_| {})?;
    if args.json.json {
        return output::json(&apps);
    }
    if apps.is_empty() {
        eprintln!("no apps on this host yet: `drover deploy DIR` or `drover up DIR`");
    }
    for a in &apps {
        print_status(a);
    }
    Ok(())
}

pub fn print_status(a: &AppStatus) {
    let version = a.version.as_deref().unwrap_or("-");
    let release = a
        .release
        .as_deref()
        .map(|r| &r[..12.min(r.len())])
        .unwrap_or("-");
    let generation = a
        .generation
        .map(|g| g.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "{}  generation {generation}  {version} ({release})  {}",
        a.app, a.state
    );
    if let Some(c) = &a.canary {
        println!(
            "  canary: generation {} ({}) takes {}% of clients",
            c.generation, c.version, c.weight
        );
    }
    if let Some(p) = &a.proxy {
        let paused = if p.paused { "  PAUSED" } else { "" };
        println!("  proxy: port {}{paused}", p.port);
        for r in &p.releases {
            println!(
                "    {}  {} requests  2xx {}  4xx {}  5xx {}  open {}  p50 {}ms  p90 {}ms  p99 {}ms",
                r.release,
                r.requests,
                r.responses_2xx,
                r.responses_4xx,
                r.responses_5xx,
                r.open,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms
            );
        }
    }
    for i in &a.instances {
        let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let port = i.port.map(|p| format!("port {p}")).unwrap_or_default();
        let health = if i.healthy { "healthy" } else { "unhealthy" };
        println!(
            "  {}.{}  gen {}  pid {pid}  {port}  {}  {health}  restarts {}{}",
            i.process,
            i.index,
            i.generation,
            i.state,
            i.restarts,
            if i.serving { "  serving" } else { "" }
        );
    }
}

pub fn run_history(root: &Path, args: HistoryArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return super::fleet::history(target, args.app, args.json.json);
    }
    let app = match args.app {
        Some(a) => a,
        None => super::deploy::only_app(root)?,
    };
    let gens: Vec<GenerationInfo> = client::call_list(root, &Request::History { app }, |_| {})?;
    if args.json.json {
        return output::json(&gens);
    }
    println!(
        "{:>4}  {:<10} {:<14} {:<12} {:<10} {:<20} REASON",
        "GEN", "OUTCOME", "VERSION", "RELEASE", "KIND", "WHO"
    );
    for g in gens.iter().rev() {
        println!(
            "{:>4}  {:<10} {:<14} {:<12} {:<10} {:<20} {}",
            g.generation,
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
