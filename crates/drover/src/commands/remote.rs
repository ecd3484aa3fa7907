//! `drover remote ...`: what a fleet deploy runs on each host, over ssh (and, as `relay`,
//! under the controller's ssh). Not for people: every subcommand reads and writes a machine
//! format on stdin and stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::client;

#[derive(Debug, Args)]
pub struct RemoteArgs {
    #[command(subcommand)]
    pub command: RemoteCommand,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Print this host's drover version and state as JSON.
    Hello {
        /// Asked by drover builds that took the lock with hello: never taken here (the
        /// asker is another build, which the answer shows).
        #[arg(long, hide = true)]
        lock: Option<String>,
        #[arg(long, hide = true)]
        expect_build: Option<String>,
        #[arg(long, hide = true)]
        holder: Option<String>,
        #[arg(long, hide = true)]
        token: Option<String>,
    },
    /// A fleet action's session: requests (`ServeOp`, JSON lines) on stdin, answers on
    /// stdout, until stdin ends.
    Serve {
        /// Seconds without a byte from the deployer (keep-alives included) after which it
        /// counts as gone and the session ends, as when stdin ends.
        #[arg(long)]
        timeout: Option<u64>,
    },
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
    /// `drover gc` on this host.
    Gc {
        #[arg(long)]
        keep: usize,
        #[arg(long)]
        dry_run: bool,
    },
    /// Print this host's audit log (JSON lines), only ENV's entries with --env.
    AuditRead {
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// `drover run APP -e ENV -- CMD` on this host: CMD in the app's live generation.
    Run {
        app: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Not on a host: the controller's ssh runs this as its ProxyCommand. Connects to
    /// HOST:PORT and relays the connection to stdin/stdout, sending and acknowledging at once.
    Relay {
        host: String,
        port: u16,
        /// any, inet or inet6 (ssh's AddressFamily).
        #[arg(long, default_value = "any")]
        family: String,
        /// Seconds to wait for the connection (ssh's ConnectTimeout).
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Also append a failure to connect to this file (the master connection's log).
        #[arg(long)]
        log: Option<PathBuf>,
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

use drover_fleet::host;
pub use drover_wire::LockOutcome;

pub fn run(root: &Path, args: RemoteArgs) -> anyhow::Result<()> {
    match args.command {
        RemoteCommand::Hello { lock, .. } => {
            let mut h = host::hello(root, None, None)?;
            if lock.is_some() {
                h.lock = Some(LockOutcome {
                    acquired: false,
                    holder: None,
                });
            }
            println!("{}", serde_json::to_string(&h)?);
        }
        RemoteCommand::Serve { timeout } => host::serve(
            root,
            std::io::stdin(),
            Box::new(std::io::stdout()),
            timeout.map(|s| std::time::Duration::from_secs(s.max(1))),
        )?,
        RemoteCommand::Run { app, command } => crate::commands::run::local(root, &app, &command)?,
        RemoteCommand::Relay {
            host,
            port,
            family,
            timeout,
            log,
        } => {
            let timeout = std::time::Duration::from_secs(timeout.max(1));
            // A failure is in the log already, or printed.
            if drover_fleet::relay::run(&host, port, &family, timeout, log.as_deref()).is_err() {
                std::process::exit(255);
            }
        }
        RemoteCommand::HostKey => println!("{}", super::secrets::host(root)?.public()),
        RemoteCommand::Gc { keep, dry_run } => super::gc::run(
            root,
            super::gc::GcArgs {
                keep,
                dry_run,
                fleet: crate::cli::EnvArgs {
                    environment: None,
                    dir: ".".into(),
                },
                json: crate::cli::JsonFlag { json: false },
            },
        )?,
        RemoteCommand::StartAgent { replace } => {
            // Where systemd runs (and we are root), the agent is its service: restarted
            // when it dies and started at boot.
            let binary = root.join("bin/drover");
            let binary = if binary.is_file() {
                binary
            } else {
                std::env::current_exe()?
            };
            if replace && client::is_running(root) {
                client::start_agent(root, true)?
            } else if !crate::service::install(root, &binary)? {
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

fn lock(root: &Path, op: LockOp) -> anyhow::Result<()> {
    match op {
        LockOp::Release { env, token, force } => host::unlock(root, &env, token.as_deref(), force)?,
        LockOp::Show { env } => {
            println!("{}", serde_json::to_string(&host::read_lock(root, &env)?)?);
        }
    }
    Ok(())
}
