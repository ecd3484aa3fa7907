//! `drover build`: run the app's build command in a scratch copy, then store the release.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use drover_config::Config;
use drover_store::{BuildInput, Built, Store};

use crate::cli::JsonFlag;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The app directory, holding drover.toml (default: the current directory).
    pub dir: Option<PathBuf>,
    /// The release's version (default: drover.toml's, else `git describe`, else from the content).
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: BuildArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let store = super::open_store(root)?;
    let built = build_app(&store, &dir, args.version.as_deref())?;
    if args.json.json {
        output::json(&built)?;
    } else {
        eprintln!(
            "built {}@{}: {} files ({} unchanged since the last build), {}, {} newly stored",
            built.app,
            built.version,
            built.files,
            built.unchanged_files,
            output::bytes(built.bytes),
            output::bytes(built.stored_bytes)
        );
        println!("{}", built.release);
    }
    Ok(())
}

/// Builds the app in `dir` into `store` (shared by `build`, `deploy` and `up`).
pub fn build_app(store: &Store, dir: &Path, version: Option<&str>) -> anyhow::Result<Built> {
    if let Some(v) = version
        && !drover_config::valid_version(v)
    {
        return Err(hinted(
            format!("--version `{v}` is not a valid version"),
            "use letters, digits and `.-_+`, at most 64 characters",
        ));
    }
    let config = Config::load_dir(dir)?;
    // Refused before anything runs or is stored: an unknown, untrusted or cyclic dependency.
    let depends = store.resolve_depends(
        &config.app.name,
        &config.depends,
        &dir.join(drover_config::FILE_NAME).display().to_string(),
    )?;
    let version = version
        .map(str::to_string)
        .or_else(|| config.app.version.clone())
        .or_else(|| git_describe(dir));

    let scratch = store.tmp_path("build");
    let result = (|| {
        let base = match &config.build.command {
            Some(cmd) => {
                copy_tree(dir, &scratch).with_context(|| {
                    format!("cannot copy {} to a scratch directory", dir.display())
                })?;
                eprintln!("running build command `{cmd}` in a scratch copy");
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .current_dir(&scratch)
                    .stdin(Stdio::null())
                    // The build's output is a message, not drover's data: keep stdout clean.
                    .stdout(std::io::stderr())
                    .env("DROVER_APP", &config.app.name)
                    .status()
                    .with_context(|| format!("cannot run build command `{cmd}`"))?;
                if !status.success() {
                    bail!(
                        "build command `{cmd}` of {} failed ({status})",
                        dir.join(drover_config::FILE_NAME).display()
                    );
                }
                scratch.clone()
            }
            None => dir.to_path_buf(),
        };
        let out = match &config.build.output {
            Some(o) => base.join(o),
            None => base.clone(),
        };
        if !out.is_dir() {
            return Err(hinted(
                format!(
                    "{}: key `build.output`: `{}` is not a directory after the build",
                    dir.join(drover_config::FILE_NAME).display(),
                    config.build.output.as_deref().unwrap_or(".")
                ),
                "check that the build command writes its output there",
            ));
        }
        let built = drover_store::build(
            store,
            BuildInput {
                dir: &out,
                app: &config.app.name,
                version: version.as_deref(),
                runtime: config.runtime(),
                depends,
                exclude: &config.build.exclude,
                remember: config.build.command.is_none(),
            },
        )?;
        Ok(built)
    })();
    if scratch.exists() {
        drover_store::remove_tree(&scratch);
    }
    result
}

/// `git describe --always --dirty` when the directory is a git work tree.
fn git_describe(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["describe", "--tags", "--always", "--dirty"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && drover_config::valid_version(&v)).then_some(v)
}

/// Copies a tree, keeping modes and symlinks (the scratch copy for the build command).
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        let from = e.path();
        let to = dst.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&from, &to)?;
            let mode = fs::metadata(&from)?.permissions().mode();
            fs::set_permissions(&to, fs::Permissions::from_mode(mode | 0o700))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}
