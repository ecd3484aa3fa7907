//! `drover checkout`: write a release's files into a new directory.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The release (id, id prefix, app@version or app).
    pub release: String,
    /// A directory that does not exist yet.
    pub dir: PathBuf,
}

pub fn run(root: &Path, args: CheckoutArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let id = store.resolve(&args.release)?;
    store.checkout(&id, &args.dir)?;
    eprintln!(
        "checked out release {} into {}",
        id.short(),
        args.dir.display()
    );
    Ok(())
}
