//! `drover lock`: the environment's deploy lock on its hosts: who holds it, and breaking it.

use clap::{Args, Subcommand};

use crate::cli::{EnvArgs, JsonFlag};
use crate::output;

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(subcommand)]
    pub command: LockCommand,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the environment's lock on each host, and since when.
    Status {
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Hold the environment's lock on every host, deploys held off, until `lock release`.
    Acquire {
        #[command(flatten)]
        env: EnvArgs,
        /// Why: shown to whoever finds it taken, and by `lock status`.
        #[arg(short, long, value_name = "MESSAGE")]
        message: String,
    },
    /// Break the environment's lock on every host (when its holder died).
    Release {
        #[command(flatten)]
        env: EnvArgs,
    },
}

pub fn run(args: LockArgs) -> anyhow::Result<()> {
    match args.command {
        LockCommand::Status { env, json } => {
            let target = env.require()?;
            let results = drover_fleet::ops::lock_status(&target)?;
            if json.json {
                return output::json(&results);
            }
            for r in &results {
                match (&r.result, &r.error) {
                    (Some(Some(h)), _) => println!(
                        "  {}  locked by {} since {} ({}){}",
                        r.host,
                        h.holder,
                        super::history::fmt_utc(h.since),
                        drover_fleet::fmt_time(h.since),
                        h.message
                            .as_ref()
                            .map(|m| format!(": \"{m}\""))
                            .unwrap_or_default()
                    ),
                    (Some(None), _) => println!("  {}  free", r.host),
                    (_, Some(e)) => println!("  {}  unknown: {e}", r.host),
                    _ => {}
                }
            }
            Ok(())
        }
        LockCommand::Acquire { env, message } => {
            let target = env.require()?;
            drover_fleet::ops::lock_acquire(&target, &message)?;
            eprintln!(
                "holding the lock of `{}` on every host: \"{message}\"; `drover lock release -e {}` gives it back",
                target.name, target.name
            );
            Ok(())
        }
        LockCommand::Release { env } => {
            let target = env.require()?;
            drover_fleet::ops::lock_release(&target)?;
            eprintln!("released the lock of `{}` on every host", target.name);
            Ok(())
        }
    }
}
