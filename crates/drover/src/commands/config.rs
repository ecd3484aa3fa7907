//! `drover config`: host-side config values (the top layer), and the merged view.

use std::collections::BTreeMap;
use std::path::Path;

use clap::{Args, Subcommand};
use drover_wire::{AppStatus, ConfigEntry, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Set KEY=VALUE pairs on this host: a new generation (same release), health-gated.
    Set {
        /// The app.
        app: String,
        /// What to set.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove host-side keys: a new generation.
    Unset {
        /// The app.
        app: String,
        /// The keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// The live generation's merged config and where each value comes from (secrets by name).
    List {
        /// The app.
        app: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

pub fn run(root: &Path, args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Set { app, pairs } => {
            let mut set = BTreeMap::new();
            for p in pairs {
                let (k, v) = p.split_once('=').ok_or_else(|| {
                    hinted(
                        format!("`{p}` is not KEY=VALUE"),
                        "write e.g. `LOG_LEVEL=debug`",
                    )
                })?;
                set.insert(k.to_string(), v.to_string());
            }
            let largest = set.iter().max_by_key(|(_, v)| v.len()).map(|(k, v)| {
                let size = output::bytes(v.len() as u64);
                match set.len() {
                    1 => format!("the value of `{k}` ({size}) is too large"),
                    n => format!(
                        "the values of {n} keys are too large together (the largest, `{k}`, is {size})"
                    ),
                }
            });
            let req = Request::ConfigSet {
                app,
                set,
                unset: Vec::new(),
                who: client::who(),
            };
            if client::request_len(&req) > client::MAX_REQUEST {
                return Err(client::too_large(&req, largest.as_deref()));
            }
            let v: AppStatus = client::call(root, &req, client::print_events)?;
            super::status::print_status(&v);
        }
        ConfigCommand::Unset { app, keys } => {
            let req = Request::ConfigSet {
                app,
                set: BTreeMap::new(),
                unset: keys,
                who: client::who(),
            };
            let v: AppStatus = client::call(root, &req, client::print_events)?;
            super::status::print_status(&v);
        }
        ConfigCommand::List { app, json } => {
            let entries: Vec<ConfigEntry> =
                client::call(root, &Request::ConfigList { app }, |_| {})?;
            if json.json {
                return output::json(&entries);
            }
            for e in entries {
                let value = e.value.as_deref().unwrap_or("(secret, redacted)");
                println!("{}={value}    # {}", e.key, e.source);
            }
        }
    }
    Ok(())
}
