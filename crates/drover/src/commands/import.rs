//! `drover import SOURCE --name N --version V`: a release made of an upstream build (a
//! runtime's tarball or a directory), without a drover.toml, for others to depend on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use clap::Args;
use drover_config::{Provides, Runtime};
use drover_store::BuildInput;

use crate::cli::JsonFlag;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A `.tar.gz`, `.tgz` or `.tar.xz` (one top directory is stripped), or a directory.
    pub source: PathBuf,
    /// The release's name (what `[depends]` names as `NAME@VERSION`).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    #[arg(long = "version", value_name = "V")]
    pub version: String,
    /// A directory of the release that dependants get first on PATH (repeatable; default:
    /// `bin` when there is one).
    #[arg(long = "provides-path", value_name = "DIR")]
    pub provides_path: Vec<String>,
    /// A variable dependants get, `NAME=VALUE`; `{tree}` in VALUE is the release's tree
    /// (repeatable).
    #[arg(long = "provides-env", value_name = "NAME=VALUE")]
    pub provides_env: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run(root: &Path, args: ImportArgs) -> anyhow::Result<()> {
    if !drover_config::valid_name(&args.name) {
        return Err(hinted(
            format!("--name `{}` is not a valid release name", args.name),
            "use letters, digits, `-` and `_`, starting with a letter or digit",
        ));
    }
    if !drover_config::valid_version(&args.version) {
        return Err(hinted(
            format!("--version `{}` is not a valid version", args.version),
            "use letters, digits and `.-_+`, at most 64 characters",
        ));
    }
    let mut env = std::collections::BTreeMap::new();
    for kv in &args.provides_env {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(hinted(
                format!("--provides-env `{kv}` is not NAME=VALUE"),
                "for example --provides-env 'NODE_PATH={tree}/lib/node_modules'",
            ));
        };
        env.insert(k.to_string(), v.to_string());
    }
    let store = super::open_store(root)?;
    let source = &args.source;
    let meta =
        std::fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
    let scratch = store.tmp_path("import");
    let result = (|| {
        let dir = if meta.is_dir() {
            source.clone()
        } else {
            extract(source, &scratch)?;
            top_of(&scratch)?
        };
        let path = if args.provides_path.is_empty() {
            if dir.join("bin").is_dir() {
                vec!["bin".to_string()]
            } else {
                Vec::new()
            }
        } else {
            args.provides_path.clone()
        };
        let provides = Provides { path, env };
        provides.check().map_err(|(m, h)| {
            let m = format!("{}: {m}", source.display());
            match h {
                Some(h) => hinted(m, h),
                None => anyhow::Error::msg(m),
            }
        })?;
        for p in &provides.path {
            if !dir.join(p).is_dir() {
                return Err(hinted(
                    format!(
                        "--provides-path `{p}`: {} has no directory `{p}`",
                        source.display()
                    ),
                    "name a directory of the build, relative to its top",
                ));
            }
        }
        let built = drover_store::build(
            &store,
            BuildInput {
                dir: &dir,
                app: &args.name,
                version: Some(&args.version),
                runtime: Runtime {
                    provides,
                    ..Runtime::default()
                },
                depends: Default::default(),
                exclude: &[],
                remember: meta.is_dir(),
            },
        )?;
        Ok(built)
    })();
    if scratch.exists() {
        drover_store::remove_tree(&scratch);
    }
    let built = result?;
    if args.json.json {
        output::json(&built)?;
    } else {
        eprintln!(
            "imported {}@{} from {}: {} files, {}, {} newly stored",
            built.app,
            built.version,
            source.display(),
            built.files,
            output::bytes(built.bytes),
            output::bytes(built.stored_bytes)
        );
        println!("{}", built.release);
    }
    Ok(())
}

/// Unpacks a `.tar.gz`/`.tgz`/`.tar.xz` into `into` with the system's tar.
fn extract(archive: &Path, into: &Path) -> anyhow::Result<()> {
    let name = archive.to_string_lossy();
    let flag = if [".tar.gz", ".tgz"].iter().any(|s| name.ends_with(s)) {
        "-z"
    } else if [".tar.xz", ".txz"].iter().any(|s| name.ends_with(s)) {
        "-J"
    } else {
        return Err(hinted(
            format!("{name}: not a .tar.gz, .tgz or .tar.xz, nor a directory"),
            "give the runtime's release tarball, or a directory holding its build",
        ));
    };
    std::fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let out = Command::new("tar")
        .arg("-x")
        .arg(flag)
        .arg("--no-same-owner")
        .arg("-f")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .stdin(Stdio::null())
        .output()
        .context("cannot run tar")?;
    if !out.status.success() {
        return Err(hinted(
            format!(
                "{name}: tar could not unpack it ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check that the file is whole (download it again)",
        ));
    }
    Ok(())
}

/// The one top directory an archive holds, or the extraction itself.
fn top_of(dir: &Path) -> anyhow::Result<PathBuf> {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    match entries.as_slice() {
        [one] if one.file_type()?.is_dir() => Ok(one.path()),
        _ => Ok(dir.to_path_buf()),
    }
}
