//! `drover verify`: re-hash objects and name every bad one.

use std::path::Path;

use clap::Args;

use crate::cli::JsonFlag;
use crate::output::{self, Failed};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this release (id, id prefix, app@version or app); default: the whole store.
    pub release: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: VerifyArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
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
