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
    /// Print this host's drover version and state as JSON.
    Hello,
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
    /// Append the audit entry on stdin (JSON) to this host's audit log.
    AuditAppend,
    /// Print this host's audit log (JSON lines), only ENV's entries with --env.
    AuditRead {
        #[arg(long = "env")]
        environment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockOp {
    /// Take the lock, or fail naming its holder (exit 3).
    Acquire {
        env: String,
        #[arg(long)]
        holder: String,
        #[arg(long)]
        token: String,
    },
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
        std::env::current_exe()
            .and_then(std::fs::read)
            .map(|b| blake3::hash(&b).to_hex()[..16].to_string())
            .unwrap_or_else(|_| "unknown".into())
    })
    .clone()
}

pub fn lock_path(root: &Path, env: &str) -> PathBuf {
    root.join("locks").join(format!("{env}.json"))
}

pub fn run(root: &Path, args: RemoteArgs) -> anyhow::Result<()> {
    match args.command {
        RemoteCommand::Hello => {
            let hello = Hello {
                version: env!("CARGO_PKG_VERSION").to_string(),
                build: build_id(),
                root: root.display().to_string(),
                agent: client::is_running(root),
            };
            println!("{}", serde_json::to_string(&hello)?);
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
        RemoteCommand::AuditAppend => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let entry: drover_wire::AuditEntry = serde_json::from_str(text.trim())?;
            std::fs::create_dir_all(root)?;
            drover_agent::append_audit(root, &entry)?;
        }
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

fn lock(root: &Path, op: LockOp) -> anyhow::Result<()> {
    let check = |env: &str| {
        if drover_config::valid_name(env) {
            Ok(())
        } else {
            Err(anyhow::anyhow!("`{env}` is not an environment name"))
        }
    };
    match op {
        LockOp::Acquire { env, holder, token } => {
            check(&env)?;
            let path = lock_path(root, &env);
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            let body = serde_json::to_vec(&LockHolder {
                holder,
                since: drover_agent::now(),
                token,
            })?;
            // Written aside then linked into place: the lock exists whole or not at all, and
            // of two deployers racing for it exactly one link succeeds.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &body)?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => println!("{}", String::from_utf8_lossy(&body)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    println!(
                        "{}",
                        std::fs::read_to_string(&path).unwrap_or_default().trim()
                    );
                    std::process::exit(3);
                }
                Err(e) => return Err(e.into()),
            }
        }
        LockOp::Release { env, token, force } => {
            check(&env)?;
            let path = lock_path(root, &env);
            let held: Option<LockHolder> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match held {
                Some(h) if force || Some(&h.token) == token.as_ref() => {
                    std::fs::remove_file(&path)?;
                }
                _ => {}
            }
        }
        LockOp::Show { env } => {
            check(&env)?;
            let held: Option<LockHolder> = std::fs::read(lock_path(root, &env))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            println!("{}", serde_json::to_string(&held)?);
        }
    }
    Ok(())
}
