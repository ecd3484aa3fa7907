//! `drover secrets` and `drover host key`: age-encrypted secrets in a file safe to commit,
//! encrypted to this host and the operator; and the host's public key.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
        /// The secret's name (as the app sees it in its environment).
        key: String,
        /// Also encrypt to this age public key (a host's `drover host key`, an operator's).
        #[arg(long = "recipient", value_name = "AGE_KEY")]
        recipients: Vec<String>,
    },
    /// List the secrets' names and the recipients (never the values).
    List(JsonFlag),
    /// Edit KEY's value in $EDITOR (a 0600 file in memory-backed /dev/shm, wiped after).
    Edit {
        /// The secret's name.
        key: String,
    },
    /// Remove KEY.
    Rm {
        /// The secret's name.
        key: String,
    },
    /// Re-encrypt every value to the recipients (after adding or removing some).
    Rekey {
        /// Add this recipient (an age public key), then re-encrypt.
        #[arg(long = "recipient", value_name = "AGE_KEY")]
        add: Vec<String>,
        /// Remove this recipient, then re-encrypt (it can no longer read new values).
        #[arg(long = "remove-recipient", value_name = "AGE_KEY")]
        remove: Vec<String>,
    },
}

/// The operator's identity on this machine: lets `rekey` decrypt what it re-encrypts.
fn operator(root: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_or_create(&root.join("keys/operator.age"))?)
}

pub fn host(root: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::load_or_create(&drover_agent::host_key_path(
        root,
    ))?)
}

#[derive(Serialize)]
struct Listing {
    file: String,
    secrets: Vec<String>,
    recipients: Vec<String>,
}

pub fn run(root: &Path, args: SecretsArgs) -> anyhow::Result<()> {
    sweep_leftovers();
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

/// Where plaintext is edited: memory-backed directories, never a disk.
fn memory_dirs() -> [PathBuf; 2] {
    [
        PathBuf::from("/dev/shm"),
        PathBuf::from(format!("/run/user/{}", rustix::process::getuid().as_raw())),
    ]
}

/// The plaintext files of `secrets edit` are named `drover-secret-PID-KEY`, PID the drover
/// that made them.
const EDIT_PREFIX: &str = "drover-secret-";

/// Overwrites a file with zeros and removes it.
fn wipe(path: &Path) {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::write(path, vec![0u8; len as usize]);
    let _ = std::fs::remove_file(path);
}

/// Removes the plaintext left by an edit whose drover was killed (SIGKILL cannot be caught):
/// this user's files whose drover is gone.
fn sweep_leftovers() {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::geteuid().as_raw();
    for dir in memory_dirs() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(EDIT_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let mine = std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.uid() == uid);
            let dead = rustix::process::Pid::from_raw(pid).is_none_or(|p| {
                rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH)
            });
            if mine && dead {
                wipe(&e.path());
                eprintln!(
                    "removed {}: the plaintext of an edit whose drover (pid {pid}) was killed",
                    e.path().display()
                );
            }
        }
    }
}

/// What a signal must clean up while an edit runs: the plaintext file and the editor.
#[derive(Default)]
struct Editing {
    file: Option<PathBuf>,
    editor: Option<u32>,
}

/// From now on, SIGTERM, SIGHUP or SIGINT wipe and remove the plaintext being edited, pass
/// the signal on to the editor, and end drover by that signal. (SIGKILL cannot be caught:
/// `sweep_leftovers` removes what it leaves.)
fn on_signals_clean(editing: Arc<Mutex<Editing>>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let mut e = editing.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(file) = e.file.take() {
                wipe(&file);
            }
            if let Some(pid) = e.editor.take().and_then(|p| i32::try_from(p).ok())
                && let (Some(pid), Some(s)) = (
                    rustix::process::Pid::from_raw(pid),
                    rustix::process::Signal::from_named_raw(sig),
                )
            {
                let _ = rustix::process::kill_process(pid, s);
            }
            let _ = signal_hook::low_level::emulate_default_handler(sig);
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Runs $EDITOR on a 0600 file under /dev/shm (memory, not disk); overwrites it with zeros
/// and removes it afterwards, whatever happens: on return, on SIGTERM/SIGHUP/SIGINT, and
/// after SIGKILL at the next `drover secrets` run.
fn edit_in_memory(key: &str, old: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = memory_dirs()
        .into_iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            hinted(
                "no memory-backed directory (/dev/shm) to edit in",
                "pipe the value into `drover secrets set` instead",
            )
        })?;
    let editing = Arc::new(Mutex::new(Editing::default()));
    on_signals_clean(Arc::clone(&editing))?;
    let lock = || editing.lock().unwrap_or_else(|e| e.into_inner());
    let path = dir.join(format!("{EDIT_PREFIX}{}-{key}", std::process::id()));
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = {
        // Under the lock, so a signal sees the file and the editor or neither.
        let mut e = lock();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", path.display()))?;
        e.file = Some(path.clone());
        let child = std::io::Write::write_all(&mut f, old.as_bytes()).and_then(|()| {
            drop(f);
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{editor} \"$1\""))
                .arg("sh")
                .arg(&path)
                .spawn()
        });
        if let Ok(c) = &child {
            e.editor = Some(c.id());
        }
        child
    }
    .and_then(|mut child| child.wait());
    let result = {
        let mut e = lock();
        e.editor = None;
        let result = std::fs::read_to_string(&path).map(Zeroizing::new);
        if let Some(file) = e.file.take() {
            wipe(&file);
        }
        result
    };
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
