//! `drover remote ...`: what a fleet deploy runs on each host, over ssh (and, as `relay`,
//! under the controller's ssh). Not for people: every subcommand reads and writes a machine
//! format on stdin and stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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
    /// Print this host's audit log (JSON lines), only ENV's entries with --env.
    AuditRead {
        #[arg(long = "env")]
        environment: Option<String>,
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

pub use drover_wire::{EndOp, Hello, LockHolder, LockOutcome, LockRequest, ServeOp};

pub use drover_fleet::build_id;

pub fn lock_path(root: &Path, env: &str) -> PathBuf {
    root.join("locks").join(format!("{env}.json"))
}

pub fn run(root: &Path, args: RemoteArgs) -> anyhow::Result<()> {
    match args.command {
        RemoteCommand::Hello { lock, .. } => {
            let mut h = hello(root, None, None)?;
            if lock.is_some() {
                h.lock = Some(LockOutcome {
                    acquired: false,
                    holder: None,
                });
            }
            println!("{}", serde_json::to_string(&h)?);
        }
        RemoteCommand::Serve { timeout } => serve(
            root,
            timeout.map(|s| std::time::Duration::from_secs(s.max(1))),
        )?,
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

/// This host, and with `lock`, the outcome of taking that lock.
fn hello(
    root: &Path,
    expect_build: Option<&str>,
    lock: Option<LockRequest>,
) -> anyhow::Result<Hello> {
    let build = build_id();
    let lock = match lock {
        None => None,
        Some(_) if expect_build.is_some_and(|b| b != build) => Some(LockOutcome {
            acquired: false,
            holder: None,
        }),
        Some(l) => Some(match try_lock(root, &l.env, l.holder, l.token)? {
            Ok(mine) => LockOutcome {
                acquired: true,
                holder: Some(mine),
            },
            Err(theirs) => LockOutcome {
                acquired: false,
                holder: theirs,
            },
        }),
    };
    Ok(Hello {
        version: drover_fleet::VERSION.to_string(),
        build,
        root: root.display().to_string(),
        agent: client::is_running(root),
        lock,
    })
}

/// Stdin, whose read fails with `TimedOut` when nothing arrives within `limit`: over a link
/// that died without a reset, sshd keeps the session's stdin open for hours.
struct DeployerInput {
    limit: Option<std::time::Duration>,
}

impl Read for DeployerInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        use std::os::fd::AsFd;
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        if let Some(limit) = self.limit {
            let deadline = std::time::Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let timeout = Timespec::try_from(left).map_err(std::io::Error::other)?;
                let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) if left.is_zero() => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "nothing from the deployer for {}s, not even a keep-alive: taken for gone",
                                limit.as_secs()
                            ),
                        ));
                    }
                    Ok(0) | Err(rustix::io::Errno::INTR) => {}
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        loop {
            match rustix::io::read(fd, &mut *buf) {
                Err(rustix::io::Errno::INTR) => {}
                r => return Ok(r?),
            }
        }
    }
}

/// `drover remote serve`: one session carries a whole fleet action on this host. With a
/// `timeout`, a deployer silent for longer is taken for gone: the session ends as if stdin had
/// ended (an unconfirmed deploy returns to its previous generation; the environment's lock
/// stays, for `drover lock release`).
fn serve(root: &Path, timeout: Option<std::time::Duration>) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::with_capacity(64 << 10, DeployerInput { limit: timeout });
    let answer = |r: anyhow::Result<serde_json::Value>| -> anyhow::Result<()> {
        let reply = match r {
            Ok(v) => drover_wire::Reply::Ok(v),
            Err(e) => error_reply(format!("{e:#}"), crate::output::hint_of(&e)),
        };
        drover_wire::write_line(&mut std::io::stdout().lock(), &reply)?;
        Ok(())
    };
    // An op line wraps an agent request of up to `MAX_LINE`.
    let max = drover_wire::MAX_LINE + (64 << 10);
    while let Some(line) = drover_wire::read_line_max(&mut input, max)? {
        if line.is_empty() {
            continue;
        }
        let op: ServeOp = match serde_json::from_str(&line) {
            Ok(op) => op,
            Err(e) => {
                // Not ours to guess at: the stream may hold more of it.
                return Err(anyhow::anyhow!("not a request: {e}"));
            }
        };
        match op {
            ServeOp::Hello { expect_build, lock } => answer(
                hello(root, expect_build.as_deref(), lock)
                    .and_then(|h| Ok(serde_json::to_value(h)?)),
            )?,
            ServeOp::Receive => {
                let mut output = std::io::stdout().lock();
                let store = match super::open_store(root) {
                    Ok(s) => s,
                    Err(e) => {
                        drover_store::transfer::refuse(
                            &mut output,
                            format!("{e:#}"),
                            crate::output::hint_of(&e),
                        );
                        return Err(e);
                    }
                };
                drover_store::transfer::receive(&store, &mut input, &mut output)?;
            }
            ServeOp::Agent { request } => {
                if !agent_op(root, &mut input, &request)? {
                    return Ok(());
                }
            }
            ServeOp::Finish { env, token, audit } => answer((|| {
                // The lock is given back even when the audit entry cannot be written.
                let audited = match audit {
                    Some(entry) => std::fs::create_dir_all(root)
                        .map_err(anyhow::Error::from)
                        .and_then(|()| Ok(drover_agent::append_audit(root, &entry)?)),
                    None => Ok(()),
                };
                unlock(root, &env, Some(&token), false)?;
                audited.map(|()| serde_json::Value::Null)
            })())?,
        }
    }
    Ok(())
}

fn error_reply(message: String, hint: Option<String>) -> drover_wire::Reply {
    drover_wire::Reply::Error(drover_wire::WireError {
        message,
        hint,
        details: Vec::new(),
    })
}

/// One `Agent` op: the request to the agent's socket, its lines to stdout until its reply;
/// the deployer's lines to the agent until an `EndOp`. `false` when stdin ended (the
/// deployer is gone: the agent is told by the socket's write side closing).
fn agent_op(
    root: &Path,
    input: &mut impl std::io::BufRead,
    request: &drover_wire::Request,
) -> anyhow::Result<bool> {
    let to_stdout = |line: &str| {
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
    };
    let connected = UnixStream::connect(client::socket(root)).and_then(|sock| {
        let mut to_agent = sock.try_clone()?;
        drover_wire::write_line(&mut to_agent, request)?;
        Ok((sock, to_agent))
    });
    let pump = match connected {
        Err(e) => {
            let reply = error_reply(
                format!("no drover agent answers for {} ({e})", root.display()),
                Some("run `drover host setup` for this host, which starts it".into()),
            );
            drover_wire::write_line(&mut std::io::stdout().lock(), &reply)?;
            None
        }
        Ok((sock, to_agent)) => {
            let pump = std::thread::spawn(move || {
                let mut from_agent = std::io::BufReader::new(sock);
                loop {
                    let line = match drover_wire::read_line(&mut from_agent) {
                        Ok(Some(l)) => l,
                        _ => {
                            let reply = error_reply(
                                "the agent closed the connection before answering".into(),
                                None,
                            );
                            let _ = drover_wire::write_line(&mut std::io::stdout().lock(), &reply);
                            break;
                        }
                    };
                    if to_stdout(&line).is_err() {
                        break;
                    }
                    if matches!(
                        serde_json::from_str::<drover_wire::Line>(&line),
                        Ok(drover_wire::Line::Reply(_))
                    ) {
                        break;
                    }
                }
            });
            Some((to_agent, pump))
        }
    };
    let mut to_agent: Option<&UnixStream> = pump.as_ref().map(|(s, _)| s);
    let mut open = true;
    let mut gone = None;
    loop {
        match drover_wire::read_line(input) {
            Ok(None) => {
                open = false;
                break;
            }
            // Silent past the timeout (or the stream broke): gone, as when stdin ends.
            Err(e) => {
                open = false;
                gone = Some(e);
                break;
            }
            Ok(Some(l)) if l.is_empty() => {}
            Ok(Some(l)) if serde_json::from_str::<EndOp>(&l).is_ok_and(|e| e.end) => break,
            Ok(Some(l)) => {
                if serde_json::from_str::<drover_wire::Confirm>(&l).is_ok() {
                    drover_store::failpoint::hit("serve.confirm-received");
                }
                if let Some(mut sock) = to_agent
                    && sock.write_all(format!("{l}\n").as_bytes()).is_err()
                {
                    to_agent = None;
                }
            }
        }
    }
    if let Some((sock, pump)) = pump {
        let _ = sock.shutdown(std::net::Shutdown::Write);
        // With the deployer gone there is no one to pass the agent's lines to: the session
        // ends now (the agent sees its socket close), whatever the agent still sends.
        if open {
            let _ = pump.join();
        }
    }
    match gone {
        Some(e) => Err(e.into()),
        None => Ok(open),
    }
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
