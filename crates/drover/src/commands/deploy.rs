//! `drover deploy`, `rollback`, `stop`, `start`: change what an app runs, through the agent.

use std::path::{Path, PathBuf};

use clap::Args;
use drover_wire::{AppStatus, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// An app directory (built first) or a stored release (id, prefix, app@version, app).
    #[arg(default_value = ".")]
    pub target: String,
    /// The release's version when building (see `drover build --version`).
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
    /// Send only PERCENT% of clients (sticky, by cookie) to the new generation until
    /// `drover promote APP` or `drover abort APP`. Needs `[proxy]`.
    #[arg(long, value_name = "PERCENT")]
    pub canary: Option<u8>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app (default: the only app on this host).
    pub app: Option<String>,
    /// The generation to return to (default: the previous live one).
    #[arg(long)]
    pub to: Option<u64>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct AppArg {
    pub app: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Builds `target` when it is an app directory; returns the release to deploy.
pub fn release_for(root: &Path, target: &str, version: Option<&str>) -> anyhow::Result<String> {
    let dir = PathBuf::from(target);
    if dir.join(drover_config::FILE_NAME).is_file() {
        let store = super::open_store(root)?;
        let built = super::build::build_app(&store, &dir, version)?;
        eprintln!(
            "built {}@{} ({}, {} newly stored)",
            built.app,
            built.version,
            built.release.short(),
            output::bytes(built.stored_bytes)
        );
        return Ok(built.release.to_hex());
    }
    if dir.is_dir() {
        return Err(output::hinted(
            format!("{} has no {}", dir.display(), drover_config::FILE_NAME),
            format!("create one with `drover init {}`", dir.display()),
        ));
    }
    let store = super::open_store(root)?;
    Ok(store.resolve(target)?.to_hex())
}

pub fn deploy(root: &Path, release: String, canary: Option<u8>) -> anyhow::Result<AppStatus> {
    let v = client::call(
        root,
        &Request::Deploy {
            release,
            who: client::who(),
            canary,
        },
        client::print_events,
    )?;
    Ok(serde_json::from_value(v)?)
}

pub fn run_deploy(root: &Path, args: DeployArgs) -> anyhow::Result<()> {
    let release = release_for(root, &args.target, args.version.as_deref())?;
    let status = deploy(root, release, args.canary)?;
    show(&status, args.json.json)
}

pub fn run_rollback(root: &Path, args: RollbackArgs) -> anyhow::Result<()> {
    let app = match args.app {
        Some(a) => a,
        None => only_app(root)?,
    };
    let v = client::call(
        root,
        &Request::Rollback {
            app,
            to: args.to,
            who: client::who(),
        },
        client::print_events,
    )?;
    show(&serde_json::from_value(v)?, args.json.json)
}

/// The app-only requests: stop, start, promote, abort, pause, resume.
pub fn run_app_op(
    root: &Path,
    args: AppArg,
    op: fn(String, String) -> Request,
) -> anyhow::Result<()> {
    let v = client::call(root, &op(args.app, client::who()), client::print_events)?;
    show(&serde_json::from_value(v)?, args.json.json)
}

pub fn run_stop(root: &Path, args: AppArg) -> anyhow::Result<()> {
    let v = client::call(
        root,
        &Request::Stop {
            app: args.app,
            who: client::who(),
        },
        client::print_events,
    )?;
    show(&serde_json::from_value(v)?, args.json.json)
}

pub fn run_start(root: &Path, args: AppArg) -> anyhow::Result<()> {
    let v = client::call(
        root,
        &Request::Start {
            app: args.app,
            who: client::who(),
        },
        client::print_events,
    )?;
    show(&serde_json::from_value(v)?, args.json.json)
}

/// The app, when the host runs exactly one.
pub fn only_app(root: &Path) -> anyhow::Result<String> {
    let apps = drover_agent::apps(root);
    match apps.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(output::hinted(
            "no apps on this host yet",
            "deploy one with `drover deploy DIR`",
        )),
        many => Err(output::hinted(
            format!("this host runs {} apps: {}", many.len(), many.join(", ")),
            "name the app",
        )),
    }
}

fn show(status: &AppStatus, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(status);
    }
    super::status::print_status(status);
    Ok(())
}
