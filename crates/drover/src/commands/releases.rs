//! `drover releases`: list stored releases, newest first.

use std::path::Path;

use clap::Args;

use crate::cli::JsonFlag;
use crate::output;

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// Only this app's releases.
    pub app: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: ReleasesArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let mut releases = store.releases()?;
    if let Some(app) = &args.app {
        releases.retain(|r| &r.app == app);
        if releases.is_empty() && !args.json.json {
            return Err(output::hinted(
                format!("no releases of app `{app}` in the store"),
                "`drover releases` lists every app's releases",
            ));
        }
    }
    if args.json.json {
        return output::json(&releases);
    }
    if releases.is_empty() {
        eprintln!("no releases yet: run `drover build DIR`");
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<12} {:<20} {:>7} {:>10}  DEPENDS",
        "APP", "VERSION", "RELEASE", "STORED", "FILES", "SIZE"
    );
    for r in releases {
        println!(
            "{:<20} {:<16} {:<12} {:<20} {:>7} {:>10}  {}",
            r.app,
            r.version,
            r.release.short(),
            super::history::fmt_utc(r.stored_at),
            r.files,
            output::bytes(r.bytes),
            super::depends_line(&store, &r.depends)
        );
    }
    Ok(())
}
