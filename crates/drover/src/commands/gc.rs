//! `drover gc`: free what no kept release needs.

use std::collections::HashSet;
use std::path::Path;

use clap::Args;

use crate::cli::JsonFlag;
use crate::output;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// How many of each app's newest releases to keep.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: GcArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let roots = HashSet::new();
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
