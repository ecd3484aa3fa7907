//! `drover init`: write a commented drover.toml.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::output::hinted;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The app directory (created if missing).
    pub dir: Option<PathBuf>,
    /// The app's name (default: the directory's name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join(drover_config::FILE_NAME);
    if path.exists() {
        return Err(hinted(
            format!("{} already exists", path.display()),
            "edit it, or remove it first to start over",
        ));
    }
    let name = match args.name {
        Some(n) => n,
        None => {
            let abs = std::path::absolute(&dir)?;
            let base = abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "app".into());
            let cleaned: String = base
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if drover_config::valid_name(&cleaned) {
                cleaned
            } else {
                "app".into()
            }
        }
    };
    if !drover_config::valid_name(&name) {
        return Err(hinted(
            format!("`{name}` is not a valid app name"),
            "use letters, digits, `-` and `_`, starting with a letter or digit",
        ));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, drover_config::init_template(&name))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {} for app `{name}`", path.display());
    eprintln!(
        "next: edit [process.web] and run `drover build {}`",
        dir.display()
    );
    Ok(())
}
