//! `drover secrets` and `drover host key`: age-encrypted secrets in a file safe to commit,
//! encrypted to this host and the operator; and the host's public key.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use drover_config::secrets::{Identity, SecretsFile};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::cli::JsonFlag;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// The app directory whose secrets file to change.
    #[arg(long, global = true, default_value = ".")]
    pub dir: PathBuf,
    /// The environment (`drover.secrets.ENV.toml`; default `drover.secrets.toml`).
    #[arg(short = 'e', long = "env", global = true, value_name = "ENV")]
    pub environment: Option<String>,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set KEY; the value is read from stdin (or a hidden prompt), never from the command line.
    Set {
        key: String,
        /// Also encrypt to this age public key (a host's `drover host key`, an operator's).
        #[arg(long = "recipient", value_name = "AGE_KEY")]
        recipients: Vec<String>,
    },
    /// List the secrets' names and the recipients (never the values).
    List(JsonFlag),
    /// Edit KEY's value in $EDITOR (a 0600 file in memory-backed /dev/shm, wiped after).
    Edit { key: String },
    /// Remove KEY.
    Rm { key: String },
    /// Re-encrypt every value to the recipients (after adding or removing some).
    Rekey {
        #[arg(long = "recipient", value_name = "AGE_KEY")]
        add: Vec<String>,
        #[arg(long = "remove-recipient", value_name = "AGE_KEY")]
        remove: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Print this host's age public key: secrets must be encrypted to it to run here.
    Key,
    /// Install this drover on hosts over ssh, start their agents, and make them trust this
    /// machine's release-signing key. Reports hosts that ran another drover version.
    Setup(crate::commands::fleet::SetupArgs),
}

/// The operator's identity on this machine: lets `rekey` decrypt what it re-encrypts.
fn operator(root: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_or_create(&root.join("keys/operator.age"))?)
}

fn host(root: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_or_create(&drover_agent::host_key_path(
        root,
    ))?)
}

pub fn run_host(root: &Path, args: HostArgs) -> anyhow::Result<()> {
    match args.command {
        HostCommand::Key => println!("{}", host(root)?.public()),
        HostCommand::Setup(a) => return crate::commands::fleet::setup(root, a),
    }
    Ok(())
}

#[derive(Serialize)]
struct Listing {
    file: String,
    secrets: Vec<String>,
    recipients: Vec<String>,
}

pub fn run(root: &Path, args: SecretsArgs) -> anyhow::Result<()> {
    if !args.dir.join(drover_config::FILE_NAME).is_file() {
        return Err(hinted(
            format!("{} has no {}", args.dir.display(), drover_config::FILE_NAME),
            "pass the app directory with --dir",
        ));
    }
    let path = SecretsFile::path(&args.dir, args.environment.as_deref());
    let what = path.display().to_string();
    let mut file = SecretsFile::load(&path)?.unwrap_or_default();
    match args.command {
        SecretsCommand::Set { key, recipients } => {
            let value = read_value(&key)?;
            let operator = operator(root)?;
            let mut wanted = vec![operator.public(), host(root)?.public()];
            wanted.extend(recipients);
            let before = file.recipients.clone();
            file.add_recipients(&wanted, &what)?;
            if file.recipients != before && !file.secrets.is_empty() {
                // New recipients must be able to read the values already there too.
                file.rekey(&operator, &what)?;
            }
            file.set(&key, value.as_bytes(), &what)?;
            file.save(&path)?;
            eprintln!(
                "set secret `{key}` in {what} ({} recipients)",
                file.recipients.len()
            );
        }
        SecretsCommand::List(json) => {
            let listing = Listing {
                file: what,
                secrets: file.secrets.keys().cloned().collect(),
                recipients: file.recipients.clone(),
            };
            if json.json {
                output::json(&listing)?;
            } else {
                for s in &listing.secrets {
                    println!("{s}");
                }
                eprintln!(
                    "{} secrets in {}, encrypted to:",
                    listing.secrets.len(),
                    listing.file
                );
                for r in &listing.recipients {
                    eprintln!("  {r}");
                }
            }
        }
        SecretsCommand::Edit { key } => {
            let operator = operator(root)?;
            let mut values = file.decrypt_all(&operator, &what)?;
            let old = values.remove(&key).ok_or_else(|| {
                hinted(
                    format!("{what}: no secret `{key}`"),
                    format!("create it with `drover secrets set {key}`"),
                )
            })?;
            let new = edit_in_memory(&key, &old)?;
            if new.is_empty() {
                return Err(hinted(
                    format!("empty value for `{key}`: nothing changed"),
                    format!("remove it with `drover secrets rm {key}`"),
                ));
            }
            file.set(&key, new.as_bytes(), &what)?;
            file.save(&path)?;
            eprintln!("updated secret `{key}` in {what}");
        }
        SecretsCommand::Rm { key } => {
            if file.secrets.remove(&key).is_none() {
                return Err(hinted(
                    format!("{what}: no secret `{key}`"),
                    "`drover secrets list` shows the names",
                ));
            }
            file.save(&path)?;
            eprintln!("removed secret `{key}` from {what}");
        }
        SecretsCommand::Rekey { add, remove } => {
            let operator = operator(root)?;
            file.add_recipients(&add, &what)?;
            file.recipients.retain(|r| !remove.contains(r));
            file.rekey(&operator, &what)?;
            file.save(&path)?;
            eprintln!(
                "re-encrypted {} secrets in {what} to {} recipients",
                file.secrets.len(),
                file.recipients.len()
            );
        }
    }
    Ok(())
}

/// Runs $EDITOR on a 0600 file under /dev/shm (memory, not disk); overwrites it with zeros
/// and removes it afterwards, whatever happens.
fn edit_in_memory(key: &str, old: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = ["/dev/shm", "/run/user"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            hinted(
                "no memory-backed directory (/dev/shm) to edit in",
                "pipe the value into `drover secrets set` instead",
            )
        })?;
    let path = dir.join(format!("drover-secret-{}-{key}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::io::Write::write_all(&mut f, old.as_bytes())?;
    drop(f);
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let result = std::fs::read_to_string(&path).map(Zeroizing::new);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::write(&path, vec![0u8; len as usize]);
    let _ = std::fs::remove_file(&path);
    let status = status?;
    if !status.success() {
        return Err(hinted(
            format!("the editor `{editor}` failed ({status}): nothing changed"),
            "set $EDITOR",
        ));
    }
    let mut value = result?;
    while value.ends_with('\n') {
        value.pop();
    }
    Ok(value)
}

fn read_value(key: &str) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        Zeroizing::new(rpassword::prompt_password(format!("value of {key}: "))?)
    } else {
        let mut v = Zeroizing::new(String::new());
        stdin.lock().read_to_string(&mut v)?;
        if v.ends_with('\n') {
            v.pop();
        }
        v
    };
    if value.is_empty() {
        return Err(hinted(
            format!("no value given for `{key}`"),
            "pipe it in: `printf %s \"$VALUE\" | drover secrets set KEY`",
        ));
    }
    Ok(value)
}
