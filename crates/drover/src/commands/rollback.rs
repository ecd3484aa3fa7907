//! `drover rollback`: back to the previous generation (or `--to N`), on this machine or
//! with -e on every host of an environment, under its lock.

use std::path::Path;

use clap::Args;
use drover_wire::{AppStatus, Request};

use crate::cli::{EnvArgs, JsonFlag};
use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app (default: the only app on this host, or the app in --dir with -e).
    pub app: Option<String>,
    /// The generation to return to (default: the previous live one).
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub fleet: EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_rollback(root: &Path, args: RollbackArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return rollback_fleet(target, args.app, args.to, args.json.json);
    }
    let app = match args.app {
        Some(a) => a,
        None => super::deploy::only_app(root)?,
    };
    let v: AppStatus = client::call(
        root,
        &Request::Rollback {
            app,
            to: args.to,
            who: client::who(),
        },
        client::print_events,
    )?;
    super::deploy::show(&v, args.json.json)
}

fn rollback_fleet(
    target: drover_fleet::Target,
    app: Option<String>,
    to: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let app = app.unwrap_or_else(|| target.config.app.name.clone());
    let report = drover_fleet::ops::rollback(&target, &app, to)?;
    let failed = report.iter().filter(|r| r.error.is_some()).count();
    if json {
        output::json(&report)?;
    } else {
        for r in &report {
            match (&r.result, &r.error) {
                (Some(st), _) => println!(
                    "  {}  back on generation {} ({})",
                    r.host,
                    st.generation.map_or("-".into(), |g| g.to_string()),
                    st.version.as_deref().unwrap_or("-")
                ),
                (_, Some(e)) => println!("  {}  FAILED: {e}", r.host),
                _ => {}
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("rollback failed on {failed} of {} hosts", report.len());
    }
    Ok(())
}
