//! `drover remote ...`: what a fleet deploy runs on each host, over ssh. Not for people:
//! every subcommand reads and writes a machine format on stdin and stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::client;
use crate::output::hinted;

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    pub command: RemoteCommand,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Print this host's drover version and state as JSON; with --lock, also take that
    /// environment's lock when this drover's build is --expect-build.
    Hello {
        #[arg(long)]
        expect_build: Option<String>,
        #[arg(long, value_name = "ENV", requires_all = ["holder", "token"])]
        lock: Option<String>,
        #[arg(long)]
        holder: Option<String>,
        #[arg(long)]
        token: Option<String>,
    },
    /// End a fleet action: append the audit entry on stdin (JSON, if any), then give back
    /// the environment's lock held with TOKEN.
    Finish {
        #[arg(long = "env")]
        environment: String,
        #[arg(long)]
        token: String,
    },
    /// Receive a release on stdin (the transfer protocol), answering on stdout.
    Receive,
    /// Connect stdin and stdout to the local agent's socket.
    Bridge,
    /// Start the agent unless one answers; with --replace, replace the running one (after
    /// an upgrade of the binary).
    StartAgent {
        #[arg(long)]
        replace: bool,
    },
    /// Trust a release-signing public key read from stdin, under NAME.
    Trust { name: String },
    /// The environment lock on this host.
    Lock {
        #[command(subcommand)]
        op: LockOp,
    },
    /// Print this host's age public key.
    HostKey,
    /// Print this host's audit log (JSON lines), only ENV's entries with --env.
    AuditRead {
        #[arg(long = "env")]
        environment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockOp {
    /// Release the lock (only when it holds `token`, unless --force).
    Release {
        env: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Print the lock's holder as JSON (`null` when free).
    Show { env: String },
}

/// What `drover remote hello` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: String,
    /// The BLAKE3 of the running drover binary: two builds of one version differ here.
    pub build: String,
    pub root: String,
    pub agent: bool,
    /// With `--lock`: whether it was taken, and who holds it.
    #[serde(default)]
    pub lock: Option<LockOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockOutcome {
    pub acquired: bool,
    /// The holder: us when acquired, else whoever has it (`None`: not attempted, the build
    /// differs).
    pub holder: Option<LockHolder>,
}

/// An environment's lock, as held on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHolder {
    pub holder: String,
    pub since: u64,
    pub token: String,
}

/// The fingerprint of the running binary.
pub fn build_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let Ok(exe) = std::env::current_exe() else {
            return "unknown".into();
        };
        // Hashing the binary costs tens of milliseconds, on every ssh session of a deploy:
        // the id is kept beside it, keyed by the file's identity (a new binary is a new
        // inode, size and mtime).
        use std::os::unix::fs::MetadataExt;
        let key = std::fs::metadata(&exe)
            .map(|m| {
                format!(
                    "{}:{}:{}:{}",
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000
                )
            })
            .unwrap_or_default();
        let cache = exe.with_file_name(".drover.build-id");
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Some((k, id)) = text.trim().split_once(' ')
            && k == key
        {
            return id.to_string();
        }
        let id = std::fs::read(&exe)
            .map(|b| blake3::hash(&b).to_hex()[..16].to_string())
            .unwrap_or_else(|_| "unknown".into());
        if !key.is_empty() {
            let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, format!("{key} {id}\n")).is_ok() {
                let _ = std::fs::rename(&tmp, &cache);
            }
        }
        id
    })
    .clone()
}

pub fn lock_path(root: &Path, env: &str) -> PathBuf {
    root.join("locks").join(format!("{env}.json"))
}

pub fn run(root: &Path, args: RemoteArgs) -> anyhow::Result<()> {
    match args.command {
        RemoteCommand::Hello {
            expect_build,
            lock,
            holder,
            token,
        } => {
            let build = build_id();
            let lock = match (lock, holder, token) {
                (Some(env), Some(holder), Some(token)) => {
                    if expect_build.as_ref().is_some_and(|b| *b != build) {
                        Some(LockOutcome {
                            acquired: false,
                            holder: None,
                        })
                    } else {
                        Some(match try_lock(root, &env, holder, token)? {
                            Ok(mine) => LockOutcome {
                                acquired: true,
                                holder: Some(mine),
                            },
                            Err(theirs) => LockOutcome {
                                acquired: false,
                                holder: theirs,
                            },
                        })
                    }
                }
                _ => None,
            };
            let hello = Hello {
                version: env!("CARGO_PKG_VERSION").to_string(),
                build,
                root: root.display().to_string(),
                agent: client::is_running(root),
                lock,
            };
            println!("{}", serde_json::to_string(&hello)?);
        }
        RemoteCommand::Finish { environment, token } => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            if !text.trim().is_empty() {
                let entry: drover_wire::AuditEntry = serde_json::from_str(text.trim())?;
                std::fs::create_dir_all(root)?;
                drover_agent::append_audit(root, &entry)?;
            }
            unlock(root, &environment, Some(&token), false)?;
        }
        RemoteCommand::Receive => {
            let store = super::open_store(root)?;
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            drover_store::transfer::receive(&store, stdin, stdout)?;
        }
        RemoteCommand::Bridge => bridge(root)?,
        RemoteCommand::HostKey => super::secrets::run_host(
            root,
            super::secrets::HostArgs {
                command: super::secrets::HostCommand::Key,
            },
        )?,
        RemoteCommand::StartAgent { replace } => {
            if replace && client::is_running(root) {
                client::start_agent(root, true)?
            } else {
                client::ensure_agent(root)?
            }
        }
        RemoteCommand::Trust { name } => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let key: drover_store::PublicKey = text.trim().parse().map_err(anyhow::Error::msg)?;
            let store = super::open_store(root)?;
            store.keys().trust(&key, &name)?;
        }
        RemoteCommand::Lock { op } => lock(root, op)?,
        RemoteCommand::AuditRead { environment } => {
            let mut out = std::io::stdout().lock();
            for e in drover_agent::read_audit(root) {
                if environment.is_none() || e.environment == environment {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                }
            }
        }
    }
    Ok(())
}

/// Copies stdin to the agent's socket and the socket to stdout. When stdin ends the socket's
/// write side is shut, so the agent sees the deployer is gone.
fn bridge(root: &Path) -> anyhow::Result<()> {
    let sock = UnixStream::connect(client::socket(root)).map_err(|e| {
        hinted(
            format!("no drover agent is running for {} ({e})", root.display()),
            "run `drover host setup` for this host, which starts it",
        )
    })?;
    let mut to_agent = sock.try_clone()?;
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_agent);
        let _ = to_agent.shutdown(std::net::Shutdown::Write);
    });
    let mut from_agent = sock;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = from_agent.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
    drop(up);
    Ok(())
}

fn check_env(env: &str) -> anyhow::Result<()> {
    if drover_config::valid_name(env) {
        Ok(())
    } else {
        Err(anyhow::anyhow!("`{env}` is not an environment name"))
    }
}

/// Takes an environment's lock: `Ok(ours)`, or `Err(the holder)` when it is taken.
fn try_lock(
    root: &Path,
    env: &str,
    holder: String,
    token: String,
) -> anyhow::Result<Result<LockHolder, Option<LockHolder>>> {
    check_env(env)?;
    let path = lock_path(root, env);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mine = LockHolder {
        holder,
        since: drover_agent::now(),
        token,
    };
    // Written aside then linked into place: the lock exists whole or not at all, and of two
    // deployers racing for it exactly one link succeeds.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&mine)?)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Ok(mine)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Err(read_lock(root, env))),
        Err(e) => Err(e.into()),
    }
}

fn read_lock(root: &Path, env: &str) -> Option<LockHolder> {
    std::fs::read(lock_path(root, env))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Gives the lock back when `token` holds it (or always, with `force`).
fn unlock(root: &Path, env: &str, token: Option<&str>, force: bool) -> anyhow::Result<()> {
    check_env(env)?;
    match read_lock(root, env) {
        Some(h) if force || Some(h.token.as_str()) == token => {
            std::fs::remove_file(lock_path(root, env))?;
        }
        _ => {}
    }
    Ok(())
}

fn lock(root: &Path, op: LockOp) -> anyhow::Result<()> {
    match op {
        LockOp::Release { env, token, force } => unlock(root, &env, token.as_deref(), force)?,
        LockOp::Show { env } => {
            check_env(&env)?;
            println!("{}", serde_json::to_string(&read_lock(root, &env))?);
        }
    }
    Ok(())
}
