//! `drover run APP -- CMD`: a one-off task in the live generation's exact environment.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::Args;
use drover_fleet::run::{On, Stream};
use drover_wire::{Request, RunSpec};

use crate::output::ExitWith;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The app whose live generation the command runs in.
    pub app: String,
    /// The command and its arguments (run directly, not through a shell).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// An interactive terminal for the command (a console, a shell): on one host only.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// With -e: run on this host (default: the environment's first).
    #[arg(long, value_name = "HOST", requires = "environment", conflicts_with_all = ["role", "all"])]
    pub host: Option<String>,
    /// With -e: run on every host of this role, each line prefixed by its host.
    #[arg(
        long,
        value_name = "ROLE",
        requires = "environment",
        conflicts_with = "all"
    )]
    pub role: Option<String>,
    /// With -e: run on every host, each line prefixed by its host.
    #[arg(long, requires = "environment")]
    pub all: bool,
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
}

pub fn run(root: &Path, args: RunArgs) -> anyhow::Result<()> {
    let Some(target) = args.fleet.target()? else {
        return local(root, &args.app, &args.command);
    };
    let on = match (&args.host, &args.role, args.all) {
        (Some(h), _, _) => On::Host(h.clone()),
        (_, Some(r), _) => On::Role(r.clone()),
        (_, _, true) => On::All,
        _ => On::First,
    };
    let hosts = drover_fleet::run::hosts(&target, &on)?;
    if hosts.len() == 1 {
        let status =
            drover_fleet::run::attached(&target, &hosts[0], &args.app, &args.command, args.tty)?;
        return exit_of(status);
    }
    if args.tty {
        return Err(crate::output::hinted(
            format!(
                "-t gives one host a terminal; this picks {} hosts ({})",
                hosts.len(),
                hosts.join(", ")
            ),
            "name one with --host HOST",
        ));
    }
    let width = hosts.iter().map(String::len).max().unwrap_or(0);
    let out = std::sync::Mutex::new(());
    let results = drover_fleet::run::each(
        &target,
        &hosts,
        &args.app,
        &args.command,
        |host, stream, line| {
            let _one_at_a_time = out.lock().unwrap_or_else(|e| e.into_inner());
            match stream {
                Stream::Stdout => println!("{host:width$} | {line}"),
                Stream::Stderr => eprintln!("{host:width$} | {line}"),
            }
        },
    )?;
    let mut failed = Vec::new();
    let mut code = 0u8;
    for (host, r) in results {
        match r {
            Ok(st) if st.success() => {}
            Ok(st) => {
                let c = st.code().map_or(128, |c| c.clamp(1, 255) as u8);
                if code == 0 {
                    code = c;
                }
                failed.push(format!("{host} (exit {})", st.code().unwrap_or(128)));
            }
            Err(e) => {
                if code == 0 {
                    code = 1;
                }
                failed.push(e.to_string());
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    eprintln!(
        "drover: `{}` failed on {} of {} hosts: {}",
        args.command.join(" "),
        failed.len(),
        hosts.len(),
        failed.join(", ")
    );
    Err(ExitWith(code).into())
}

fn exit_of(status: std::process::ExitStatus) -> anyhow::Result<()> {
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(ExitWith(c.clamp(1, 255) as u8).into()),
        None => Err(ExitWith(128).into()),
    }
}

/// Runs `command` in the live generation of `app` on this machine, with this process's
/// stdin, stdout and stderr (a terminal, if it has one).
pub fn local(root: &Path, app: &str, command: &[String]) -> anyhow::Result<()> {
    let spec: RunSpec = crate::client::call(
        root,
        &Request::RunSpec {
            app: app.to_string(),
        },
        |_| {},
    )?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).env_clear();
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
    let status = status.with_context(|| format!("cannot run `{}` for {app}", command[0]))?;
    exit_of(status)
}
