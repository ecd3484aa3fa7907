//! `drover verify`: re-hash objects and name every bad one.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::JsonFlag;
use crate::output::{self, Failed};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this release (id, id prefix, app@version or app); default: the whole store.
    pub release: Option<String>,
    /// First replace the damaged or missing objects of the release in ARCHIVE (a file made
    /// by `drover pack`; its signer must be trusted) with the archive's good ones.
    #[arg(long, value_name = "ARCHIVE")]
    pub repair: Option<PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: VerifyArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    if let Some(archive) = &args.repair {
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
    let report = store.verify(only.as_ref())?;
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
