//! `drover logs`: the app's process output, from the agent.

use std::path::Path;

use clap::Args;
use drover_wire::{Line, Request};

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub app: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the last lines to show per instance.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
    /// With -e: every host's lines, each prefixed by its host.
    #[command(flatten)]
    pub fleet: crate::commands::fleet::EnvArgs,
}

pub fn run(root: &Path, args: LogsArgs) -> anyhow::Result<()> {
    if let Some(target) = args.fleet.target()? {
        return crate::commands::fleet::logs(target, args.app, args.lines, args.follow);
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
