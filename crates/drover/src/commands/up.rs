//! `drover up`: build, start the local agent if needed, deploy, print the URL.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The app directory (default: the current directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
}

pub fn run(root: &Path, args: UpArgs) -> anyhow::Result<()> {
    if !args.dir.join(drover_config::FILE_NAME).is_file() {
        return Err(output::hinted(
            format!("{} has no {}", args.dir.display(), drover_config::FILE_NAME),
            format!("create one with `drover init {}`", args.dir.display()),
        ));
    }
    let release = super::deploy::release_for(
        root,
        &args.dir.display().to_string(),
        args.version.as_deref(),
    )?;
    client::ensure_agent(root)?;
    let layers = super::deploy::layers_for(&args.dir.display().to_string(), None, None)?;
    let status = super::deploy::deploy(root, release, None, layers)?;
    super::status::print_status(&status);
    let port = status.proxy.as_ref().map(|p| p.port).or_else(|| {
        status
            .instances
            .iter()
            .filter(|i| status.generation == Some(i.generation))
            .find_map(|i| i.port)
    });
    match port {
        Some(p) => {
            println!("http://127.0.0.1:{p}/");
            if status.proxy.is_none() {
                eprintln!(
                    "{} this is the instance's own port, which changes with every deploy; give the app a fixed one with `[proxy] port = N` in drover.toml",
                    output::red("note:")
                );
            }
        }
        None => eprintln!("{} is up (no HTTP process)", status.app),
    }
    Ok(())
}
