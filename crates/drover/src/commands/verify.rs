//! `drover verify`: re-hash objects, check materialised trees, and name every bad one;
//! `--repair` rebuilds what verified chunks can make again.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::JsonFlag;
use crate::output::{self, Failed};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this release (id, id prefix, app@version or app); default: the whole store.
    pub release: Option<String>,
    /// Rebuild each damaged release tree and bad cache file from verified chunks, then
    /// check again. With ARCHIVE (a file made by `drover pack`; its signer must be
    /// trusted), first replace the damaged or missing objects of its release with the
    /// archive's good ones. (Name RELEASE before `--repair`.)
    #[arg(long, value_name = "ARCHIVE", num_args = 0..=1)]
    pub repair: Option<Option<PathBuf>>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: VerifyArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    if let Some(Some(archive)) = &args.repair {
        let opts = drover_store::pack::UnpackOptions::default();
        let u = super::pack::unpack_file(&store, archive, opts)?;
        eprintln!(
            "{}@{} from {}: {} damaged objects replaced, {} missing chunks added{}",
            u.app,
            u.version,
            archive.display(),
            u.repaired,
            u.new_chunks,
            if u.added { ", release added" } else { "" }
        );
    }
    let only = args
        .release
        .as_deref()
        .map(|r| store.resolve(r))
        .transpose()?;
    let mut report = store.verify(only.as_ref())?;
    if args.repair.is_some() && report.repairable() {
        if !args.json.json {
            for p in &report.problems {
                eprintln!("{} {}: {}", output::red("bad"), p.object, p.reason);
            }
        }
        let repaired = store.repair(&report)?;
        for release in &repaired.trees {
            eprintln!("rebuilt the tree of {release} from verified chunks");
        }
        if repaired.files > 0 {
            eprintln!(
                "removed {} bad cached files (made again from verified chunks when a tree needs them)",
                repaired.files
            );
        }
        for p in &repaired.failed {
            eprintln!("{} {}: {}", output::red("bad"), p.object, p.reason);
        }
        eprintln!("checking again");
        report = store.verify(only.as_ref())?;
        report.repaired = repaired.trees;
    }
    if args.json.json {
        output::json(&report)?;
    } else {
        for p in &report.problems {
            eprintln!("{} {}: {}", output::red("bad"), p.object, p.reason);
        }
        eprintln!(
            "checked {} releases, {} chunks, {} cached files: {} problems",
            report.releases,
            report.chunks,
            report.files,
            report.problems.len()
        );
    }
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(Failed(format!(
            "{} bad objects in the store",
            report.problems.len()
        ))
        .into())
    }
}
