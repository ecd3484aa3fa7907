//! `drover logs`: the app's process output, from the agent.

use std::path::Path;

use clap::Args;
use drover_wire::{Line, Request};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app.
    pub app: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to show per instance.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// With -e: every host's lines, each prefixed by its host.
    #[command(flatten)]
    pub fleet: crate::cli::EnvArgs,
}

pub fn run(root: &Path, args: LogsArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        let width = target.env.hosts.iter().map(String::len).max().unwrap_or(0);
        let stdout = std::sync::Mutex::new(std::io::stdout());
        return drover_fleet::ops::logs(
            &target,
            &args.app,
            args.lines,
            args.follow,
            |host, line| {
                use std::io::Write;
                let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(out, "{host:width$} | {line}");
            },
        );
    }
    crate::client::call::<serde::de::IgnoredAny>(
        root,
        &Request::Logs {
            app: args.app,
            lines: args.lines,
            follow: args.follow,
        },
        |line| {
            if let Line::Log { log } = line {
                println!("{log}");
            }
        },
    )?;
    Ok(())
}
