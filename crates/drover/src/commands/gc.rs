//! `drover gc`: free what no kept release needs.

use std::path::Path;

use clap::Args;

use crate::cli::JsonFlag;
use crate::output;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep the releases of each app's N newest generations (and its live one, and each
    /// app's N newest stored releases), with everything they depend on; a rollback can go
    /// back N generations.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub keep: usize,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// On every host of this environment (over ssh) instead of this machine.
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: GcArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    if let Some(target) = args.fleet.target()? {
        return gc_fleet(target, args.keep, args.dry_run, args.json.json);
    }
    let roots = drover_agent::gc_roots(root, args.keep);
    if args.dry_run {
        let gone = store.gc_would_remove(args.keep, &roots)?;
        if args.json.json {
            return output::json(&gone);
        }
        for r in &gone {
            println!(
                "would remove {}@{} ({})",
                r.app,
                r.version,
                r.release.short()
            );
        }
        eprintln!(
            "{} releases would go (--keep {}); nothing was removed",
            gone.len(),
            args.keep
        );
        return Ok(());
    }
    let report = store.gc(args.keep, &roots)?;
    if args.json.json {
        return output::json(&report);
    }
    for r in &report.releases_removed {
        eprintln!("removed {}@{} ({})", r.app, r.version, r.release.short());
    }
    eprintln!(
        "removed {} releases, {} chunks, {} cached files; freed {}",
        report.releases_removed.len(),
        report.chunks_removed,
        report.files_removed,
        output::bytes(report.bytes_freed)
    );
    Ok(())
}

/// `gc` on every host of the environment: each host's report, by host.
fn gc_fleet(
    target: drover_fleet::Target,
    keep: usize,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let results = drover_fleet::ops::gc(&target, keep, dry_run)?;
    if json {
        output::json(&results)?;
    } else {
        for r in &results {
            match (&r.result, &r.error) {
                (Some(v), _) => println!("  {}  {}", r.host, v.trim()),
                (_, Some(e)) => println!("  {}  FAILED: {e}", r.host),
                _ => {}
            }
        }
    }
    drover_fleet::ops::failed(&results)
}
