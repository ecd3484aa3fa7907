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
    let store = super::open_store(root).ok();
    for a in &apps {
        print_status_with(a, store.as_ref());
    }
    Ok(())
}

pub fn print_status(a: &AppStatus) {
    print_status_with(a, None);
}

/// `n THING` or `n THINGs`.
fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// How long since `since` (Unix seconds): `45s`, `12m`, `3h`, `2d`.
fn age(since: u64) -> String {
    let s = drover_agent::now().saturating_sub(since);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// An app as a person reads it. With `store` (this host's), each release the proxy counted
/// is named by its version, and one gc has removed is left out.
pub fn print_status_with(a: &AppStatus, store: Option<&drover_store::Store>) {
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
    let live = a
        .instances
        .iter()
        .filter(|i| Some(i.generation) == a.generation || a.generation.is_none())
        .count();
    // Where it answers: the proxy's fixed port, else the live instance's own (which moves
    // with every deploy).
    let url = match (&a.proxy, a.instances.iter().find_map(|i| i.port)) {
        (Some(p), _) if !p.hosts.is_empty() => {
            let (scheme, usual) = if p.tls.is_some() {
                ("https", 443)
            } else {
                ("http", 80)
            };
            let port = if p.port == usual {
                String::new()
            } else {
                format!(":{}", p.port)
            };
            let urls: Vec<String> = p
                .hosts
                .iter()
                .map(|h| format!("{scheme}://{h}{port}/"))
                .collect();
            format!("  {}", urls.join(" "))
        }
        (Some(p), _) if p.tls.is_some() => format!("  https://127.0.0.1:{}/", p.port),
        (Some(p), _) => format!("  http://127.0.0.1:{}/", p.port),
        (None, Some(port)) => format!("  http://127.0.0.1:{port}/ (moves with each deploy)"),
        (None, None) => String::new(),
    };
    println!(
        "{}  generation {generation}  {version} ({release})  {}  {}{url}",
        a.app,
        a.state,
        count(live, "instance")
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
        if let Some(tls) = &p.tls {
            println!("  tls: {tls}");
        }
        for r in &p.releases {
            let named = match store {
                None => Some(r.release.clone()),
                Some(st) => st
                    .resolve(&r.release)
                    .ok()
                    .and_then(|id| st.meta(&id).ok())
                    .map(|m| format!("{} ({})", m.version, r.release)),
            };
            // A release gc removed: nothing of it runs any more.
            let Some(named) = named else { continue };
            println!(
                "    {named}  {}  2xx {}  4xx {}  5xx {}  open {}  p50 {}ms  p90 {}ms  p99 {}ms",
                count(r.requests as usize, "request"),
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
    if a.instances.is_empty() {
        return;
    }
    println!(
        "  {:<14} {:>4} {:>8} {:>6}  {:<10} {:<9} {:>6} {:>11}  PROTECTION",
        "INSTANCE", "GEN", "PID", "PORT", "STATE", "HEALTH", "UP", "RESTARTS"
    );
    for i in &a.instances {
        let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let port = i.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let health = if i.healthy { "healthy" } else { "unhealthy" };
        let up = i.started.map(age).unwrap_or_else(|| "-".into());
        let protection = if i.protection.is_empty() {
            String::new()
        } else {
            format!("({})", i.protection)
        };
        println!(
            "  {:<14} {:>4} {:>8} {:>6}  {:<10} {:<9} {:>6} {:>11}  {protection}{}",
            format!("{}.{}", i.process, i.index),
            i.generation,
            pid,
            port,
            i.state,
            health,
            up,
            count(i.restarts as usize, "restart"),
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
