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
    // Every release a kept generation points to is a root: the newest `keep` generations
    // of each app and its live one.
    let mut roots = HashSet::new();
    for app in drover_agent::apps(root) {
        let dir = drover_agent::AppDir::new(root, &app);
        let current = dir.current();
        let gens = dir.generations();
        let n = gens.len();
        for (k, g) in gens.into_iter().enumerate() {
            if (k + args.keep >= n || Some(g.generation) == current)
                && let Ok(id) = g.release.parse()
            {
                roots.insert(id);
            }
        }
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
