//! `drover run APP -- CMD`: a one-off task in the live generation's exact environment.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::Args;
use drover_wire::{Request, RunSpec};

use crate::output::ExitWith;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The app whose live generation the command runs in.
    pub app: String,
    /// The command and its arguments (run directly, not through a shell).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(root: &Path, args: RunArgs) -> anyhow::Result<()> {
    let spec: RunSpec = crate::client::call(
        root,
        &Request::RunSpec {
            app: args.app.clone(),
        },
        |_| {},
    )?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env_clear();
    for key in ["HOME", "LANG", "TERM", "TZ"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    // The app's PATH (its dependencies' entries, then the system's), never the caller's.
    cmd.env("PATH", drover_store::SYSTEM_PATH);
    cmd.envs(&spec.env);
    // Confined as the app's processes are (a mount namespace and another user need root,
    // as the agent that asked for them is).
    let confine = if rustix::process::geteuid().is_root() {
        spec.confine
    } else {
        Default::default()
    };
    let status = drover_agent::confine::spawn(&mut cmd, Path::new(&spec.dir), &confine)
        .and_then(|mut child| child.wait());
    if let Some(tmp) = &spec.tmp {
        let _ = std::fs::remove_dir_all(tmp);
    }
    let status =
        status.with_context(|| format!("cannot run `{}` for {}", args.command[0], args.app))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(ExitWith(c.clamp(1, 255) as u8).into()),
        None => Err(ExitWith(128).into()),
    }
}
