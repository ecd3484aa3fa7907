//! `drover checkout`: write a release's files into a new directory, or materialise its tree
//! in the store.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckoutArgs {
    /// The release (id, id prefix, app@version or app).
    pub release: String,
    /// A directory that does not exist yet. Without it, the release's read-only tree in the
    /// store (where the agent runs it) is made, or checked and rebuilt when damaged, and its
    /// path printed.
    pub dir: Option<PathBuf>,
}

pub fn run(root: &Path, args: CheckoutArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let id = store.resolve(&args.release)?;
    let Some(dir) = &args.dir else {
        let tree = store.materialise_checked(&id)?;
        for p in &tree.rebuilt {
            eprintln!("damaged {}: {}", p.object, p.reason);
        }
        if !tree.rebuilt.is_empty() {
            eprintln!(
                "the tree of release {} was damaged: rebuilt it from verified chunks",
                id.short()
            );
        }
        println!("{}", tree.path.display());
        return Ok(());
    };
    store.checkout(&id, dir)?;
    eprintln!("checked out release {} into {}", id.short(), dir.display());
    Ok(())
}
