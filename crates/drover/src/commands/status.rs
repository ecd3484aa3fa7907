//! `drover status`: what runs, on this machine or with -e on every host.

use std::path::Path;

use clap::Args;
use drover_wire::{AppStatus, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this app.
    pub app: Option<String>,
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_status(root: &Path, args: StatusArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return status_fleet(target, args.app, args.json.json);
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
    for d in &a.depends {
        println!(
            "  depends: {} = {}@{} ({})",
            d.name,
            d.app,
            d.version,
            &d.release[..12.min(d.release.len())]
        );
    }
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
        let protection = if i.protection.is_empty() {
            String::new()
        } else {
            format!("  ({})", i.protection)
        };
        println!(
            "  {}.{}  gen {}  pid {pid}  {port}  {}  {health}  restarts {}{}{protection}",
            i.process,
            i.index,
            i.generation,
            i.state,
            i.restarts,
            if i.serving { "  serving" } else { "" }
        );
    }
}

fn status_fleet(
    target: drover_fleet::Target,
    app: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let results = drover_fleet::ops::status(&target, app.as_deref())?;
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if json {
        output::json(&results)?;
    } else {
        for r in &results {
            println!("== {}", r.host);
            if let Some(e) = &r.error {
                println!("  {}: {e}", output::red("unreachable"));
            }
            for a in r.result.iter().flatten() {
                print_status(a);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} hosts did not answer", results.len());
    }
    Ok(())
}
