//! `drover keys`: the local signing key and the keys whose releases this store trusts.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use drover_store::PublicKey;
use serde::Serialize;

use crate::cli::JsonFlag;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: Option<KeysCommand>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the local public key (the default).
    Show,
    /// List the trusted keys (the local one first).
    List(JsonFlag),
    /// Trust releases signed by KEY (`ed25519:<hex>`, as `drover keys` prints it).
    Trust {
        /// The public key, `ed25519:<hex>`.
        key: String,
        /// A name for the key (default: derived from the key).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the local secret signing key (to move it to another machine: keep it secret).
    Export,
    /// Replace the local signing key with one from FILE (written by `drover keys export`).
    Import {
        /// The file `drover keys export` wrote.
        file: PathBuf,
    },
}

#[derive(Serialize)]
struct KeyRow {
    name: String,
    key: String,
}

pub fn run(root: &Path, args: KeysArgs) -> anyhow::Result<()> {
    let ring = drover_store::Keyring::new(root);
    match args.command.unwrap_or(KeysCommand::Show) {
        KeysCommand::Show => println!("{}", ring.public_key()?),
        KeysCommand::List(json) => {
            let rows: Vec<KeyRow> = ring
                .trusted()?
                .into_iter()
                .map(|(name, key)| KeyRow {
                    name,
                    key: key.to_string(),
                })
                .collect();
            if json.json {
                output::json(&rows)?;
            } else {
                for r in rows {
                    println!("{:<16} {}", r.name, r.key);
                }
            }
        }
        KeysCommand::Trust { key, name } => {
            let parsed: PublicKey = key.parse().map_err(|e: String| {
                hinted(
                    e,
                    "copy the key exactly as `drover keys` prints it on the signing machine",
                )
            })?;
            let name = name.unwrap_or_else(|| format!("key-{}", &key[8..20.min(key.len())]));
            let path = ring.trust(&parsed, &name)?;
            eprintln!("trusting {parsed} as `{name}` ({})", path.display());
        }
        KeysCommand::Export => print!("{}", ring.export()?),
        KeysCommand::Import { file } => {
            let key = ring.import(&file)?;
            eprintln!("imported signing key {key}");
        }
    }
    Ok(())
}
