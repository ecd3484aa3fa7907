//! The host side of a fleet action: `drover remote serve` reads the deployer's ops
//! (`ServeOp`, JSON lines) and answers them — hello and the environment's lock, a release's
//! transfer into the host's store, requests to the host's agent with their events and
//! confirms, and the audit entry with the lock's release at the end. Over ssh its streams
//! are the session's stdin and stdout; `link::InProcess` runs it on a thread.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_wire::{EndOp, Hello, LockHolder, LockOutcome, LockRequest, Reply, ServeOp, WireError};

pub use drover_agent::socket_path as agent_socket;

/// Whether an agent answers on `root`'s socket.
pub fn agent_answers(root: &Path) -> bool {
    let Ok(mut sock) = UnixStream::connect(agent_socket(root)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    if drover_wire::write_line(&mut sock, &drover_wire::Request::Ping).is_err() {
        return false;
    }
    let mut from = std::io::BufReader::new(sock);
    loop {
        match drover_wire::read_line(&mut from) {
            Ok(Some(l)) => {
                match drover_wire::read_answer::<serde::de::IgnoredAny, serde::de::IgnoredAny>(&l) {
                    Ok(drover_wire::Answer::Ok(_)) => return true,
                    Ok(drover_wire::Answer::Error(_)) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
            _ => return false,
        }
    }
}

pub fn lock_path(root: &Path, env: &str) -> PathBuf {
    root.join("locks").join(format!("{env}.json"))
}

/// This host, and with `lock`, the outcome of taking that lock.
pub fn hello(
    root: &Path,
    expect_build: Option<&str>,
    lock: Option<LockRequest>,
) -> anyhow::Result<Hello> {
    let build = crate::build_id();
    let lock = match lock {
        None => None,
        Some(_) if expect_build.is_some_and(|b| b != build) => Some(LockOutcome {
            acquired: false,
            holder: None,
        }),
        Some(l) => Some(
            match try_lock(root, &l.env, l.holder, l.token, l.message)? {
                Ok(mine) => LockOutcome {
                    acquired: true,
                    holder: Some(mine),
                },
                Err(theirs) => LockOutcome {
                    acquired: false,
                    holder: theirs,
                },
            },
        ),
    };
    Ok(Hello {
        version: crate::VERSION.to_string(),
        build,
        root: root.display().to_string(),
        agent: agent_answers(root),
        lock,
    })
}

/// The deployer's stream, whose read fails with `TimedOut` when nothing arrives within
/// `limit`: over a link that died without a reset, sshd keeps the session's stdin open for
/// hours.
pub struct DeployerInput<F> {
    fd: F,
    limit: Option<Duration>,
}

impl<F: AsFd> DeployerInput<F> {
    pub fn new(fd: F, limit: Option<Duration>) -> DeployerInput<F> {
        DeployerInput { fd, limit }
    }
}

impl<F: AsFd> Read for DeployerInput<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let fd = self.fd.as_fd();
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

/// The stream to the deployer, shared by the session and the thread that passes the
/// agent's lines on.
type Output = Arc<Mutex<Box<dyn Write + Send>>>;

fn write_reply(out: &Output, reply: &Reply) -> std::io::Result<()> {
    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
    drover_wire::write_line(&mut *out, reply)
}

/// One serve session: ops from `input` until it ends, answers to `output`. With a
/// `timeout`, a deployer silent for longer is taken for gone: the session ends as if its
/// input had ended (an unconfirmed deploy returns to its previous generation; the
/// environment's lock stays, for `drover lock release`).
pub fn serve(
    root: &Path,
    input: impl AsFd,
    output: Box<dyn Write + Send>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let mut input = std::io::BufReader::with_capacity(64 << 10, DeployerInput::new(input, timeout));
    let output: Output = Arc::new(Mutex::new(output));
    fn answer<T: serde::Serialize>(output: &Output, r: anyhow::Result<T>) -> anyhow::Result<()> {
        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(v) => drover_wire::write_ok(&mut *out, &v)?,
            Err(e) => drover_wire::write_line(
                &mut *out,
                &error_reply(format!("{e:#}"), crate::error::hint_of(&e)),
            )?,
        }
        Ok(())
    }
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
            ServeOp::Hello { expect_build, lock } => {
                answer(&output, hello(root, expect_build.as_deref(), lock))?
            }
            ServeOp::Receive => {
                let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                let store = match drover_store::Store::open(root) {
                    Ok(s) => s,
                    Err(e) => {
                        let hint = e.hint();
                        let e = anyhow::Error::new(e).context(format!(
                            "cannot open the drover store under {}",
                            root.display()
                        ));
                        drover_store::transfer::refuse(&mut *out, format!("{e:#}"), hint);
                        return Err(e);
                    }
                };
                drover_store::transfer::receive(&store, &mut input, &mut *out)?;
            }
            ServeOp::Agent { request } => {
                if !agent_op(root, &mut input, &output, &request)? {
                    return Ok(());
                }
            }
            ServeOp::Finish { env, token, audit } => answer(
                &output,
                (|| {
                    // The lock is given back even when the audit entry cannot be written.
                    let audited = match audit {
                        Some(entry) => std::fs::create_dir_all(root)
                            .map_err(anyhow::Error::from)
                            .and_then(|()| Ok(drover_agent::append_audit(root, &entry)?)),
                        None => Ok(()),
                    };
                    unlock(root, &env, Some(&token), false)?;
                    audited
                })(),
            )?,
        }
    }
    Ok(())
}

fn error_reply(message: String, hint: Option<String>) -> Reply {
    Reply::Error(WireError {
        message,
        hint,
        details: Vec::new(),
    })
}

/// One `Agent` op: the request to the agent's socket, its lines to the deployer until its
/// reply; the deployer's lines to the agent until an `EndOp`. `false` when the input ended
/// (the deployer is gone: the agent is told by the socket's write side closing).
fn agent_op(
    root: &Path,
    input: &mut impl BufRead,
    output: &Output,
    request: &drover_wire::Request,
) -> anyhow::Result<bool> {
    let connected = UnixStream::connect(agent_socket(root)).and_then(|sock| {
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
            write_reply(output, &reply)?;
            None
        }
        Ok((sock, to_agent)) => {
            let output = output.clone();
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
                            let _ = write_reply(&output, &reply);
                            break;
                        }
                    };
                    let passed = {
                        let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                        out.write_all(line.as_bytes())
                            .and_then(|()| out.write_all(b"\n"))
                            .and_then(|()| out.flush())
                    };
                    if passed.is_err() {
                        break;
                    }
                    if drover_wire::is_reply(&line) {
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
            // Silent past the timeout (or the stream broke): gone, as when the input ends.
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
    message: Option<String>,
) -> anyhow::Result<Result<LockHolder, Option<LockHolder>>> {
    check_env(env)?;
    let path = lock_path(root, env);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mine = LockHolder {
        holder,
        since: drover_agent::now(),
        token,
        message,
    };
    // Written aside then linked into place: the lock exists whole or not at all, and of two
    // deployers racing for it exactly one link succeeds.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(&mine)?)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Ok(mine)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Err(read_lock(root, env)?)),
        Err(e) => Err(e.into()),
    }
}

/// The lock's holder (`None` when free).
pub fn read_lock(root: &Path, env: &str) -> anyhow::Result<Option<LockHolder>> {
    check_env(env)?;
    Ok(std::fs::read(lock_path(root, env))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Gives the lock back when `token` holds it (or always, with `force`).
pub fn unlock(root: &Path, env: &str, token: Option<&str>, force: bool) -> anyhow::Result<()> {
    match read_lock(root, env)? {
        Some(h) if force || Some(h.token.as_str()) == token => {
            std::fs::remove_file(lock_path(root, env))?;
        }
        _ => {}
    }
    Ok(())
}
