//! Fleet operations over ssh: connect to an environment's hosts, move a release to them
//! (only the chunks each lacks), switch them batch by batch behind health checks, and on any
//! failure return every switched host to its previous generation.
//!
//! Every host runs the same `drover` (installed by `drover host setup`); the controller drives
//! it with `drover remote ...` over one multiplexed ssh connection per host, and reaches the
//! host's agent with the same JSON-lines protocol as the local socket, all in one
//! `drover remote serve` session per host.

pub mod elf;
pub mod error;
pub mod host;
pub mod link;
pub mod ops;
pub mod platform;
pub mod relay;
pub mod run;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_rollout::{Action, Failure, Observation, Outcome, Rollout};
use drover_wire::{Answer, AuditEntry, Request};
use serde::Serialize;

use drover_wire::{EndOp, Hello, LockRequest, ServeOp};
use error::{Exit, hinted, kinded};
pub use link::{HostError, HostLink, InProcess, OpError, Serve};
pub use ssh::{Session, SshSettings};

/// The version of drover, as a host's `hello` tells it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Who is acting: `user@host`.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", rustix::process::getuid().as_raw()));
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{user}@{host}")
}

/// Human-readable byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What a fleet deploy tells as it goes, host by host (`host` is the host's place in the
/// environment's list).
pub trait Progress: Sync {
    /// Host `host` enters a phase.
    fn phase(&self, host: usize, text: &str);
    /// Host `host` has sent `sent` of `total` bytes.
    fn bytes(&self, host: usize, sent: u64, total: u64);
    /// The deploy's hosts are done.
    fn finish(&self);
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
            .map(|b| build_id_of(&b))
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

/// Environment `name` of the `drover.toml` in `dir`; an unknown one is an error naming
/// the file and the environments it has.
pub fn environment<'a>(
    config: &'a drover_config::Config,
    dir: &Path,
    name: &str,
) -> anyhow::Result<&'a drover_config::Environment> {
    config.environments.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.environments.keys().map(String::as_str).collect();
        hinted(
            format!(
                "{}: no environment `{name}`",
                dir.join(drover_config::FILE_NAME).display()
            ),
            if known.is_empty() {
                "add an [environments.NAME] table".to_string()
            } else {
                format!("known environments: {}", known.join(", "))
            },
        )
    })
}

/// An environment with hosts, read from an app directory's drover.toml.
pub struct Target {
    pub config: drover_config::Config,
    pub name: String,
    pub env: drover_config::Environment,
    pub settings: SshSettings,
}

impl Target {
    /// `Ok(None)` when the environment has no hosts (a local config layer).
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Option<Target>> {
        let config = drover_config::Config::load_dir(dir)?;
        let env = environment(&config, dir, name)?.clone();
        if env.hosts.is_empty() {
            return Ok(None);
        }
        let settings = SshSettings::from_config(&config.ssh, dir);
        Ok(Some(Target {
            config,
            name: name.to_string(),
            env,
            settings,
        }))
    }

    /// Like `load`, but an environment without hosts is an error.
    pub fn require(dir: &Path, name: &str) -> anyhow::Result<Target> {
        Target::load(dir, name)?.ok_or_else(|| {
            hinted(
                format!("environment `{name}` lists no hosts"),
                format!("add `hosts = [\"web1\", ...]` to [environments.{name}]"),
            )
        })
    }

    /// The same environment narrowed to `hosts` (a subset of its own, in their order).
    pub fn only(&self, hosts: &[String]) -> Target {
        let mut env = self.env.clone();
        env.hosts.retain(|h| hosts.contains(h));
        Target {
            config: self.config.clone(),
            name: self.name.clone(),
            env,
            settings: self.settings.clone(),
        }
    }

    /// Connects to every host (at most `[ssh] parallel` at once), and starts each one's
    /// serve session in the background.
    pub fn connect(&self) -> anyhow::Result<Connected> {
        let conn = Connected::open(&self.env.hosts, &self.settings, self.config.ssh.parallel)?;
        conn.start_serving();
        Ok(conn)
    }

    /// Connects to every host and runs `f` on each reachable one (at most `[ssh] parallel`
    /// at once, or `limit`); an unreachable host gets its connection error.
    pub fn each<R: Send>(
        &self,
        limit: Option<usize>,
        f: impl Fn(&Session) -> Result<R, HostError> + Sync,
    ) -> anyhow::Result<Vec<(String, Result<R, HostError>)>> {
        let conn = Connected::open(&self.env.hosts, &self.settings, self.config.ssh.parallel)?;
        let out = par(
            &conn.sessions,
            limit.unwrap_or(self.config.ssh.parallel),
            |i, s| {
                let r = match s {
                    Ok(s) => f(s),
                    Err(e) => Err(e.clone()),
                };
                (conn.hosts[i].clone(), r)
            },
        );
        conn.close();
        Ok(out)
    }

    /// The role a host plays, if any.
    pub fn role_of(&self, host: &str) -> Option<(&String, &drover_config::Role)> {
        self.env
            .roles
            .iter()
            .find(|(_, r)| r.hosts.iter().any(|h| h == host))
    }
}

/// Runs `f` for every item, at most `limit` at once; results in input order.
pub fn par<T: Sync, R: Send>(
    items: &[T],
    limit: usize,
    f: impl Fn(usize, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..limit.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(i, &items[i]);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item ran")
        })
        .collect()
}

/// The control sockets' directory: short (socket paths are limited), private, removed after.
pub struct CtlDir(pub PathBuf);

impl CtlDir {
    pub fn new() -> anyhow::Result<CtlDir> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("drover-ssh-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&p)?;
        Ok(CtlDir(p))
    }
}

impl Drop for CtlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Links to every host (in config order); a host that cannot be reached is an `Err`.
pub struct Connected<L = Session> {
    pub hosts: Vec<String>,
    pub sessions: Vec<Result<L, HostError>>,
    _ctl: Option<CtlDir>,
}

impl Connected<Session> {
    pub fn open(
        hosts: &[String],
        settings: &SshSettings,
        parallel: usize,
    ) -> anyhow::Result<Connected> {
        let ctl = CtlDir::new()?;
        let sessions = par(hosts, parallel, |i, h| {
            Session::connect(h, settings, &ctl.0, i)
        });
        Ok(Connected {
            hosts: hosts.to_vec(),
            sessions,
            _ctl: Some(ctl),
        })
    }
}

impl<L: HostLink> Connected<L> {
    /// Links made by the caller, one per host of `hosts`.
    pub fn of(hosts: &[String], links: Vec<Result<L, HostError>>) -> Connected<L> {
        Connected {
            hosts: hosts.to_vec(),
            sessions: links,
            _ctl: None,
        }
    }

    /// Every host reachable, or an error naming each one that is not.
    pub fn all(&self) -> anyhow::Result<Vec<&L>> {
        let errors: Vec<&HostError> = self
            .sessions
            .iter()
            .filter_map(|s| s.as_ref().err())
            .collect();
        if errors.is_empty() {
            return Ok(self
                .sessions
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .collect());
        }
        Err(host_errors(&errors))
    }

    /// Starts every reachable host's serve session in the background (it gets going while
    /// the caller does other work; the first request waits for it).
    pub fn start_serving(&self) {
        for s in self.sessions.iter().flatten() {
            s.start_serving();
        }
    }

    pub fn close(self) {
        // Every host told first, then each waited for: the waits overlap.
        for s in self.sessions.iter().flatten() {
            s.hang_up();
        }
        for s in self.sessions.into_iter().flatten() {
            s.close();
        }
    }
}

/// One error naming every failed host, with the first hint.
pub fn host_errors(errors: &[&HostError]) -> anyhow::Error {
    host_errors_after(None, errors)
}

/// `host_errors` under a first line that says what they stopped.
pub fn host_errors_after(lead: Option<String>, errors: &[&HostError]) -> anyhow::Error {
    let message = if errors.len() == 1 {
        errors[0].message.clone()
    } else {
        format!(
            "{} hosts failed:\n  {}",
            errors.len(),
            errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        )
    };
    let message = match lead {
        Some(lead) => format!("{lead}\n{message}"),
        None => message,
    };
    match errors.iter().find_map(|e| e.hint()) {
        Some(h) => hinted(message, h),
        None => anyhow::anyhow!(message),
    }
}

/// Asks a host who it is; a different drover build is an error that says how to fix it.
pub fn hello(s: &Session) -> Result<Hello, HostError> {
    let out = s.run(&["hello"], b"")?;
    let hello: Hello = serde_json::from_slice(&out.stdout)
        .map_err(|e| HostError::new(format!("{}: bad answer to hello: {e}", s.name)))?;
    Ok(hello)
}

/// The build id of a drover binary's bytes, as [`build_id`] gives this one's.
pub fn build_id_of(binary: &[u8]) -> String {
    blake3::hash(binary).to_hex()[..16].to_string()
}

pub fn check_version(host: &str, hello: &Hello) -> Result<(), HostError> {
    check_build(host, hello, &build_id())
}

/// That `host` runs the drover of build `expect` (this one's, or the one `host setup`
/// installed there) and its agent.
pub fn check_build(host: &str, hello: &Hello, expect: &str) -> Result<(), HostError> {
    let ours = build_id();
    if expect != ours && hello.build != expect {
        return Err(HostError::new(format!(
            "{}: runs drover {} (build {}), not the build {expect} installed there",
            host, hello.version, hello.build
        )));
    }
    if expect == ours && (hello.version != VERSION || hello.build != ours) {
        return Err(HostError::new(format!(
            "{}: runs drover {} (build {}), this is drover {} (build {ours})",
            host, hello.version, hello.build, VERSION
        ))
        .with_hint(format!(
            "`drover host setup {host}` installs this drover there"
        )));
    }
    if !hello.agent {
        return Err(
            HostError::new(format!("{host}: no drover agent is running there"))
                .with_hint(format!("`drover host setup {host}` starts it")),
        );
    }
    Ok(())
}

/// Sends one request to the host's agent over its serve session; its reply read as `T`
/// (`serde::de::IgnoredAny` when it does not matter). `on_event` sees progress events and
/// log lines; with `confirm`, an `AWAITING_CONFIRM` event is answered with a `Confirm`
/// saying what it decides (without, the host reverts once its wait is over).
pub fn agent_call<T: serde::de::DeserializeOwned>(
    s: &impl HostLink,
    req: &Request,
    confirm: Option<&dyn Fn() -> bool>,
    mut on_event: impl FnMut(&str),
) -> Result<T, HostError> {
    s.with_serve(|sv| {
        sv.send(&ServeOp::Agent {
            request: req.clone(),
        })?;
        let mut items = 0;
        let reply = loop {
            let line = sv.line()?;
            match drover_wire::read_answer::<T, serde::de::IgnoredAny>(&line) {
                Ok(Answer::Ok(v)) => break Ok(v),
                Ok(Answer::Error(e)) => break Err(wire_error(s.name(), e)),
                Ok(Answer::Event(e)) => {
                    if let Some(decide) =
                        confirm.filter(|_| e.event == drover_wire::AWAITING_CONFIRM)
                    {
                        let confirm = decide();
                        drover_store::failpoint::hit("fleet.confirm-before-send");
                        sv.send(&drover_wire::Confirm { confirm })?;
                        drover_store::failpoint::hit("fleet.confirm-after-send");
                    }
                    on_event(&e.event);
                }
                Ok(Answer::Log(log)) => on_event(&log),
                Ok(Answer::Item(_)) => items += 1,
                Err(why) if drover_wire::is_reply(&line) => {
                    break Err(HostError::new(format!("{}: {why}", s.name())));
                }
                // Not a line of ours (a newer agent's): passed over.
                Err(_) => {}
            }
        };
        sv.send(&EndOp { end: true })?;
        if items > 0 && reply.is_ok() {
            // No fleet request asks for a list sent item by item (only history is).
            return Err(OpError::Host(HostError::new(format!(
                "{}: unexpected answer: a list in {items} lines",
                s.name()
            ))));
        }
        reply.map_err(OpError::Host)
    })
}

/// An error the host answered with, as this host's error.
fn wire_error(host: &str, e: drover_wire::WireError) -> HostError {
    let details = if e.details.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.details.join("; "))
    };
    HostError::new(format!("{host}: {}{details}", e.message)).with_hint_opt(e.hint)
}

/// A `Reply` line from the serve session, its `Ok` value read as `T`.
fn serve_reply<T: serde::de::DeserializeOwned>(host: &str, sv: &mut Serve) -> Result<T, OpError> {
    let line = sv.line()?;
    match drover_wire::read_reply::<T>(&line) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpError::Host(wire_error(host, e))),
        Err(why) if drover_wire::is_reply(&line) => {
            Err(OpError::Host(HostError::new(format!("{host}: {why}"))))
        }
        Err(why) => Err(OpError::Broken(why)),
    }
}

/// Whether a host serves the app: it is not stopped there and has a healthy instance (a host
/// that never ran the app is not counted as down).
fn available<L: HostLink>(s: &L, app: &str) -> bool {
    let Ok(apps) =
        agent_call::<Vec<drover_wire::AppStatus>>(s, &Request::Status { app: None }, None, |_| {})
    else {
        return false;
    };
    match apps.iter().find(|a| a.app == app) {
        None => true,
        Some(a) => a.state != "stopped" && a.instances.iter().any(|i| i.healthy),
    }
}

/// The app's live generation on a host (`None`: not deployed there yet).
pub fn current_generation<L: HostLink>(s: &L, app: &str) -> Result<Option<u64>, HostError> {
    let apps: Vec<drover_wire::AppStatus> =
        agent_call(s, &Request::Status { app: None }, None, |_| {})?;
    Ok(apps
        .into_iter()
        .find(|a| a.app == app)
        .and_then(|a| a.generation))
}

/// Sends release `id` to a host over its serve session, after each release it depends on
/// (`Store::closure`, dependencies first: the host stores a release only with its
/// dependencies), each only when the host lacks it (then just its offer travels); returns
/// what was sent, the dependencies' chunks and bytes counted in.
pub fn transfer<L: HostLink>(
    store: &drover_store::Store,
    id: &drover_store::Hash,
    encoded: &drover_store::transfer::Encoded,
    s: &L,
    mut progress: impl FnMut(u64, u64),
) -> Result<drover_store::transfer::Sent, HostError> {
    let closure = store
        .closure(id)
        .map_err(|e| HostError::new(format!("{}: transfer failed here: {e}", s.name())))?;
    let (mut chunks, mut bytes, mut deltas) = (0, 0, 0);
    for dep in &closure {
        let sent = transfer_one(store, dep, encoded, s, &mut progress)?;
        chunks += sent.chunks_sent;
        bytes += sent.bytes_sent;
        deltas += sent.chunks_delta;
    }
    let mut sent = transfer_one(store, id, encoded, s, &mut progress)?;
    sent.chunks_sent += chunks;
    sent.bytes_sent += bytes;
    sent.chunks_delta += deltas;
    Ok(sent)
}

fn transfer_one<L: HostLink>(
    store: &drover_store::Store,
    id: &drover_store::Hash,
    encoded: &drover_store::transfer::Encoded,
    s: &L,
    progress: &mut impl FnMut(u64, u64),
) -> Result<drover_store::transfer::Sent, HostError> {
    s.with_serve(|sv| {
        // Held from the op's line to the transfer's end: no keep-alive comes between.
        let (from_host, mut to_host) = sv.streams()?;
        drover_wire::write_line(&mut to_host, &ServeOp::Receive)?;
        let sent = drover_store::transfer::send(
            store,
            id,
            encoded,
            from_host,
            &mut to_host,
            s.name(),
            |p| progress(p.sent, p.total),
        );
        match sent {
            Ok(sent) => Ok(sent),
            Err(drover_store::Error::Remote {
                message,
                hint,
                untrusted,
            }) => {
                // The host's own hint speaks of its store; from here, setup is the fix.
                let hint = if untrusted {
                    Some(format!(
                        "`drover host setup {}` trusts this machine's signing key there",
                        s.name()
                    ))
                } else {
                    hint
                };
                Err(OpError::Ended(
                    HostError::new(format!("{}: {message}", s.name())).with_hint_opt(hint),
                ))
            }
            // The stream to the host broke: what ssh says about it is the better message.
            Err(e @ drover_store::Error::Stream { .. }) => {
                Err(OpError::Broken(format!("transfer failed: {e}")))
            }
            // This machine's store failed (reading the release): that is the message.
            Err(e) => Err(OpError::Ended(HostError::new(format!(
                "{}: transfer failed here: {e}",
                s.name()
            )))),
        }
    })
}

// ---- locks -------------------------------------------------------------------

/// The environment's lock, held on every host. The first host in name order decides
/// between racing deployers; the others are then taken together. Taking it also checks that
/// each host runs this drover and its agent (one ssh session per host for both).
pub struct Locks<'a, L: HostLink = Session> {
    env: String,
    token: String,
    held: Vec<&'a L>,
}

/// How a lock is asked for: who for, why, and how long to wait for a holder to finish.
#[derive(Debug, Clone, Default)]
pub struct LockAsk {
    /// Said to whoever finds the lock taken (`drover lock acquire -m`).
    pub message: Option<String>,
    /// Wait this long for another holder to let go, instead of failing at once.
    pub wait: Option<std::time::Duration>,
}

impl<'a, L: HostLink> Locks<'a, L> {
    pub fn acquire(env: &str, sessions: &[&'a L], what: &str) -> anyhow::Result<Locks<'a, L>> {
        Locks::acquire_with(env, sessions, what, &LockAsk::default(), |_| {})
    }

    /// `acquire`, with a message for others, and waiting up to `ask.wait` while another
    /// holder has it (`on_wait` hears who, each time the holder changes).
    pub fn acquire_with(
        env: &str,
        sessions: &[&'a L],
        what: &str,
        ask: &LockAsk,
        on_wait: impl Fn(&str),
    ) -> anyhow::Result<Locks<'a, L>> {
        let deadline = ask.wait.map(|w| std::time::Instant::now() + w);
        let mut told = String::new();
        loop {
            match Locks::try_acquire(env, sessions, what, ask.message.as_deref()) {
                Err(e)
                    if deadline.is_some_and(|d| std::time::Instant::now() < d)
                        && e.downcast_ref::<error::Kinded>()
                            .is_some_and(|k| k.exit == Exit::Locked) =>
                {
                    let first = format!("{e}");
                    let first = first.lines().next().unwrap_or("").to_string();
                    if first != told {
                        on_wait(&first);
                        told = first;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Holds the lock past this command (`drover lock acquire`): it stays on every host
    /// until `drover lock release` (nothing gives a lock back but `release` and `finish`).
    pub fn keep(self) {}

    fn try_acquire(
        env: &str,
        sessions: &[&'a L],
        what: &str,
        message: Option<&str>,
    ) -> anyhow::Result<Locks<'a, L>> {
        let token = blake3::hash(
            format!("{}-{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
        )
        .to_hex()[..16]
            .to_string();
        let holder = format!("{} ({what}, pid {})", who(), std::process::id());
        let build = build_id();
        let mut order: Vec<&L> = sessions.to_vec();
        order.sort_by(|a, b| a.name().cmp(b.name()));
        let rest = if order.is_empty() {
            Vec::new()
        } else {
            order.split_off(1)
        };
        let mut locks = Locks {
            env: env.to_string(),
            token: token.clone(),
            held: Vec::new(),
        };
        let attempt = |hosts: &[&'a L]| {
            par(hosts, 16, |_, s| {
                let hello = s.with_serve_bounded(|sv| {
                    sv.send(&ServeOp::Hello {
                        expect_build: Some(build.clone()),
                        lock: Some(LockRequest {
                            env: env.to_string(),
                            holder: holder.clone(),
                            token: token.clone(),
                            message: message.map(str::to_string),
                        }),
                    })?;
                    serve_reply::<Hello>(s.name(), sv)
                });
                (*s, hello)
            })
        };
        let mut results = attempt(&order);
        let first_ok = results.iter().all(|(_, r)| {
            r.as_ref()
                .is_ok_and(|h| h.lock.as_ref().is_some_and(|l| l.acquired))
        });
        if first_ok {
            results.extend(attempt(&rest));
        }
        let mut taken_by_other = None;
        let mut errors = Vec::new();
        for (s, r) in results {
            match r {
                Ok(hello) => {
                    if hello.lock.as_ref().is_some_and(|l| l.acquired) {
                        locks.held.push(s);
                    }
                    if let Err(e) = check_version(s.name(), &hello) {
                        errors.push(e);
                    } else if let Some(l) = hello.lock.filter(|l| !l.acquired) {
                        taken_by_other.get_or_insert((s.name().to_string(), l.holder));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            locks.release();
            let refs: Vec<&HostError> = errors.iter().collect();
            return Err(host_errors(&refs));
        }
        if let Some((host, h)) = taken_by_other {
            locks.release();
            return Err(kinded(
                Exit::Locked,
                match h {
                    Some(h) => hinted(
                        format!(
                            "environment `{env}` is locked on {host}: {} has held it since {}{}",
                            h.holder,
                            fmt_time(h.since),
                            h.message.map(|m| format!(": \"{m}\"")).unwrap_or_default()
                        ),
                        format!(
                            "wait for that deploy to finish; if it is dead, `drover lock release -e {env}`"
                        ),
                    ),
                    None => anyhow::anyhow!("environment `{env}` is locked on {host}"),
                },
            ));
        }
        Ok(locks)
    }

    /// Gives the lock back on every host that is still reachable; names the others.
    pub fn release(&mut self) -> Vec<String> {
        self.finish(&[])
    }

    /// Appends each host's audit entry (by host name) and gives the lock back, in one
    /// session per host; returns the hosts that could not be reached.
    pub fn finish(&mut self, audit: &[(String, AuditEntry)]) -> Vec<String> {
        let held = std::mem::take(&mut self.held);
        let results = par(&held, 16, |_, s| {
            let entry = audit
                .iter()
                .find(|(h, _)| h == s.name())
                .map(|(_, e)| e.clone());
            s.with_serve_bounded(|sv| {
                sv.send(&ServeOp::Finish {
                    env: self.env.clone(),
                    token: self.token.clone(),
                    audit: entry,
                })?;
                serve_reply::<()>(s.name(), sv)
            })
            .map_err(|_| s.name().to_string())
        });
        results.into_iter().filter_map(Result::err).collect()
    }
}

pub fn fmt_time(secs: u64) -> String {
    let now = drover_agent::now();
    let ago = now.saturating_sub(secs);
    if ago < 120 {
        format!("{ago}s ago")
    } else if ago < 7200 {
        format!("{}m ago", ago / 60)
    } else {
        format!("{}h ago", ago / 3600)
    }
}

// ---- deploy ------------------------------------------------------------------

/// Where one host ended up.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    /// live (on the new release), reverted, unchanged, failed, unreachable, kept (partial).
    pub state: String,
    pub generation: Option<u64>,
    pub previous: Option<u64>,
    pub error: Option<String>,
    pub bytes_sent: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct DeployReport {
    pub environment: String,
    pub app: String,
    pub version: String,
    pub release: String,
    pub ok: bool,
    pub hosts: Vec<HostReport>,
}

pub struct DeployPlan {
    pub release: drover_store::Hash,
    pub app: String,
    pub version: String,
    pub secrets: Option<String>,
    pub keep_partial: bool,
    /// Wait this long for the environment's lock while another holder has it.
    pub lock_wait: Option<std::time::Duration>,
    /// The release's `[hooks] release`, run once for the fleet, and `release_on`, the role
    /// on whose first host it runs (default: the environment's first host).
    pub release_hook: Option<String>,
    pub release_on: Option<String>,
}

impl DeployPlan {
    /// The plan to deploy release `id` (whose manifest is `manifest`), with the
    /// environment's secrets file; the rest as a plain deploy has it.
    pub fn of(
        id: drover_store::Hash,
        manifest: &drover_store::Manifest,
        secrets: Option<String>,
    ) -> DeployPlan {
        DeployPlan {
            release: id,
            app: manifest.app.clone(),
            version: manifest.version.clone(),
            secrets,
            keep_partial: false,
            lock_wait: None,
            release_hook: manifest.runtime.hooks.release.clone(),
            release_on: manifest.runtime.hooks.release_on.clone(),
        }
    }

    /// The host the release hook runs on, if the release has one; a role that is not the
    /// environment's is an error naming the key.
    pub fn hook_host(&self, target: &Target) -> anyhow::Result<Option<usize>> {
        if self.release_hook.is_none() {
            return Ok(None);
        }
        let Some(role) = &self.release_on else {
            return Ok(Some(0));
        };
        let first = target
            .env
            .roles
            .get(role)
            .and_then(|r| r.hosts.first())
            .and_then(|h| target.env.hosts.iter().position(|x| x == h));
        match first {
            Some(i) => Ok(Some(i)),
            None => Err(error::kinded(
                Exit::Input,
                hinted(
                    format!(
                        "[hooks] release_on = \"{role}\": environment `{}` has no role `{role}` with hosts",
                        target.name
                    ),
                    format!(
                        "name one of its roles ({}), or leave release_on out to run the hook on its first host",
                        target
                            .env
                            .roles
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            )),
        }
    }
}

/// How a fleet deploy ended.
pub struct Deployed {
    pub report: DeployReport,
    /// The hosts whose lock could not be given back (unreachable at the end).
    pub stuck: Vec<String>,
    /// Why the rollout stopped, of the kind its exit code says (every host back, or not).
    pub failure: Option<anyhow::Error>,
}

/// A host as the rollout left it, and the bytes its transfer sent.
struct HostState {
    host: drover_rollout::Host,
    bytes: u64,
}

/// The whole fleet deploy over `conn`, connections opened by the caller (while it built
/// the release): preflight, transfer, batches, and all-or-back. An error is one that
/// stopped it before any host was touched (a host unreachable, the lock not taken).
pub fn deploy<L: HostLink>(
    store: &drover_store::Store,
    target: &Target,
    plan: &DeployPlan,
    conn: Connected<L>,
    progress: &dyn Progress,
    started: std::time::Instant,
) -> anyhow::Result<Deployed> {
    let result = deploy_connected(store, target, plan, &conn, progress, started);
    conn.close();
    result
}

fn deploy_connected<L: HostLink>(
    store: &drover_store::Store,
    target: &Target,
    plan: &DeployPlan,
    conn: &Connected<L>,
    progress: &dyn Progress,
    started: std::time::Instant,
) -> anyhow::Result<Deployed> {
    for (i, s) in conn.sessions.iter().enumerate() {
        if let Err(e) = s {
            progress.phase(i, &format!("unreachable: {}", e.message));
        }
    }
    let sessions = conn.all()?;
    let hook_on = plan.hook_host(target)?;
    for i in 0..sessions.len() {
        progress.phase(i, "checking and locking");
    }
    let ask = LockAsk {
        message: None,
        wait: plan.lock_wait,
    };
    let mut locks = match Locks::acquire_with(
        &target.name,
        &sessions,
        &format!("deploy of {}@{}", plan.app, plan.version),
        &ask,
        |holder| {
            for i in 0..sessions.len() {
                progress.phase(i, &format!("waiting for the lock: {holder}"));
            }
        },
    ) {
        Ok(l) => l,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let (states, failure, audit) =
        rollout(store, target, plan, hook_on, &sessions, progress, started);
    let stuck = locks.finish(&audit);
    progress.finish();
    let report = DeployReport {
        environment: target.name.clone(),
        app: plan.app.clone(),
        version: plan.version.clone(),
        release: plan.release.to_hex(),
        ok: failure.is_none(),
        hosts: states
            .iter()
            .zip(&sessions)
            .map(|(st, s)| HostReport {
                host: s.name().to_string(),
                state: st.host.outcome().as_str().to_string(),
                generation: st.host.generation,
                previous: st.host.previous,
                error: st.host.error.clone(),
                bytes_sent: st.bytes,
                seconds: st.host.at.as_secs_f64(),
            })
            .collect(),
    };
    let failure = failure.map(|f| {
        let exit = if states.iter().any(|st| !st.host.is_back()) {
            Exit::Partial
        } else {
            Exit::RolledBack
        };
        kinded(exit, f)
    });
    Ok(Deployed {
        report,
        stuck,
        failure,
    })
}

/// What an executor thread saw on a host, for the rollout engine; `error` keeps the host's
/// own error (with its hint) for the deploy's message.
struct Seen {
    obs: Observation,
    error: Option<HostError>,
    bytes: Option<u64>,
}

impl From<Observation> for Seen {
    fn from(obs: Observation) -> Seen {
        Seen {
            obs,
            error: None,
            bytes: None,
        }
    }
}

/// Carries out a rollout (`drover_rollout` decides every step) on the environment's
/// sessions: transfers, availability checks, pauses, health-gated switches with their
/// confirms, reverts. Returns each host's state, the failure, if any, and the audit entries.
#[allow(clippy::too_many_arguments)]
fn rollout<L: HostLink>(
    store: &drover_store::Store,
    target: &Target,
    plan: &DeployPlan,
    hook_on: Option<usize>,
    sessions: &[&L],
    progress: &dyn Progress,
    started: std::time::Instant,
) -> (
    Vec<HostState>,
    Option<anyhow::Error>,
    Vec<(String, AuditEntry)>,
) {
    let parallel = target.config.ssh.parallel.max(1);
    let n = sessions.len();
    let strategy = &target.env.strategy;
    let mut engine = Rollout::new(drover_rollout::Plan {
        hosts: sessions.iter().map(|s| s.name().to_string()).collect(),
        batches: strategy.batches(n),
        pause: strategy.pause(),
        max_unavailable: strategy.max_unavailable(n),
        keep_partial: plan.keep_partial,
        hook_on,
    });
    let mut bytes = vec![0u64; n];
    let mut errors: Vec<Option<HostError>> = (0..n).map(|_| None).collect();
    let encoded = drover_store::transfer::Encoded::default();
    let confirm_within = target.settings.timeout.as_secs().max(1);
    let (tx, rx) = std::sync::mpsc::channel::<Seen>();

    let failure = std::thread::scope(|scope| {
        let mut confirms: BTreeMap<usize, std::sync::mpsc::Sender<bool>> = BTreeMap::new();
        let mut actions = std::collections::VecDeque::from(engine.start());
        let mut deadline: Option<std::time::Instant> = None;
        loop {
            let mut reverts: Vec<(usize, drover_rollout::Revert)> = Vec::new();
            while let Some(action) = actions.pop_front() {
                match action {
                    Action::Transfer { hosts } => {
                        let tx = tx.clone();
                        let encoded = &encoded;
                        scope.spawn(move || {
                            par(&hosts, parallel, |_, &i| {
                                let seen =
                                    send_release(store, plan, encoded, sessions[i], i, progress);
                                let _ = tx.send(seen);
                            });
                        });
                    }
                    Action::CheckAvailable { hosts } => {
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let down: Vec<usize> = par(&hosts, parallel, |_, &i| {
                                (!available(sessions[i], &plan.app)).then_some(i)
                            })
                            .into_iter()
                            .flatten()
                            .collect();
                            let _ = tx.send(Observation::Availability { down }.into());
                        });
                    }
                    Action::WaitUntil { at, hosts } => {
                        // In whole seconds, as a pause is written.
                        let left = at.saturating_sub(started.elapsed()).as_secs_f64().round();
                        let left = std::time::Duration::from_secs(left as u64);
                        for &i in &hosts {
                            progress.phase(i, &format!("waiting {}", drover_config::Seconds(left)));
                        }
                        deadline = Some(started + at);
                    }
                    Action::Switch { hosts, .. } => {
                        for i in hosts {
                            let (confirm_tx, confirm_rx) = std::sync::mpsc::channel();
                            confirms.insert(i, confirm_tx);
                            let tx = tx.clone();
                            scope.spawn(move || {
                                let seen = switch_host(
                                    target,
                                    plan,
                                    sessions[i],
                                    i,
                                    confirm_within,
                                    progress,
                                    &tx,
                                    confirm_rx,
                                );
                                let _ = tx.send(seen);
                            });
                        }
                    }
                    Action::RunHook { host } => {
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let error = run_hook(target, plan, sessions[host], host, progress);
                            let _ = tx.send(Seen {
                                obs: Observation::HookRan {
                                    error: error.as_ref().map(|e| e.message.clone()),
                                },
                                error,
                                bytes: None,
                            });
                        });
                    }
                    Action::Confirm { host } => {
                        if let Some(c) = confirms.remove(&host) {
                            let _ = c.send(true);
                        }
                    }
                    Action::Revert { host, to } => reverts.push((host, to)),
                    Action::Done { failure } => return failure,
                }
            }
            if !reverts.is_empty() {
                let tx = tx.clone();
                scope.spawn(move || {
                    par(&reverts, parallel, |_, &(i, to)| {
                        let _ = tx.send(revert_host(plan, sessions[i], i, to, progress));
                    });
                });
            }
            let seen = match deadline {
                Some(d) => {
                    match rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now())) {
                        Ok(seen) => seen,
                        Err(_) => {
                            deadline = None;
                            Observation::Tick.into()
                        }
                    }
                }
                // The engine waits only on what a thread of this scope will send.
                None => rx.recv().expect("a rollout thread answers"),
            };
            if let Some(h) = observed_host(&seen.obs, hook_on) {
                if let Some(b) = seen.bytes {
                    bytes[h] = b;
                }
                if seen.error.is_some() {
                    errors[h] = seen.error;
                }
            }
            actions.extend(engine.observe(started.elapsed(), seen.obs));
        }
    });

    let failure = failure.map(|f| failure_error(&f, engine.hosts(), &errors, sessions));
    let states: Vec<HostState> = engine
        .hosts()
        .iter()
        .zip(bytes)
        .map(|(h, bytes)| HostState {
            host: h.clone(),
            bytes,
        })
        .collect();
    let audit = audit_entries(target, plan, sessions, &states, failure.as_ref());
    (states, failure, audit)
}

/// The host an observation is about.
fn observed_host(obs: &Observation, hook_on: Option<usize>) -> Option<usize> {
    match obs {
        Observation::Sent { host }
        | Observation::SendFailed { host, .. }
        | Observation::Healthy { host }
        | Observation::Live { host, .. }
        | Observation::SwitchFailed { host, .. }
        | Observation::Reverted { host }
        | Observation::RevertFailed { host, .. } => Some(*host),
        Observation::HookRan { .. } => hook_on,
        Observation::Availability { .. } | Observation::Tick => None,
    }
}

/// Sends the release to host `i`.
fn send_release<L: HostLink>(
    store: &drover_store::Store,
    plan: &DeployPlan,
    encoded: &drover_store::transfer::Encoded,
    s: &L,
    i: usize,
    progress: &dyn Progress,
) -> Seen {
    progress.phase(i, "sending");
    match transfer(store, &plan.release, encoded, s, |sent, total| {
        progress.bytes(i, sent, total)
    }) {
        Ok(x) => {
            progress.phase(
                i,
                &format!(
                    "sent {} ({} of {} chunks were there, {} went as deltas)",
                    bytes(x.bytes_sent),
                    x.received.had_chunks,
                    x.received.had_chunks + x.received.new_chunks,
                    x.chunks_delta
                ),
            );
            Seen {
                obs: Observation::Sent { host: i },
                error: None,
                bytes: Some(x.bytes_sent),
            }
        }
        Err(e) => {
            progress.phase(i, &format!("transfer failed: {}", e.message));
            Seen {
                obs: Observation::SendFailed {
                    host: i,
                    error: e.message.clone(),
                    unreachable: e.unreachable,
                },
                error: Some(e),
                bytes: None,
            }
        }
    }
}

/// Host `i`'s role, its config layer, and the processes it runs (`None`: all).
fn host_layers(
    target: &Target,
    i: usize,
) -> (
    Option<String>,
    BTreeMap<String, String>,
    Option<Vec<String>>,
) {
    match target.role_of(&target.env.hosts[i]) {
        Some((name, r)) => (
            Some(name.clone()),
            r.env.clone(),
            (!r.processes.is_empty()).then(|| r.processes.clone()),
        ),
        None => (None, BTreeMap::new(), None),
    }
}

/// Runs the release hook on host `i`, in that host's config layers, its output told as
/// progress; the error when it failed.
fn run_hook<L: HostLink>(
    target: &Target,
    plan: &DeployPlan,
    s: &L,
    i: usize,
    progress: &dyn Progress,
) -> Option<HostError> {
    progress.phase(i, "running the release hook");
    let (role, role_layer, _) = host_layers(target, i);
    let req = Request::ReleaseHook {
        release: plan.release.to_hex(),
        who: who(),
        environment: Some(target.name.clone()),
        env_layer: target.env.env.clone(),
        role,
        role_layer,
        secrets: plan.secrets.clone(),
    };
    match agent_call::<serde::de::IgnoredAny>(s, &req, None, |line| {
        progress.phase(i, &format!("hook | {line}"))
    }) {
        Ok(_) => {
            progress.phase(i, "release hook done");
            None
        }
        Err(e) => {
            progress.phase(i, &format!("release hook failed: {}", e.message));
            Some(e)
        }
    }
}

/// Switches host `i` to the release, health-gated; its `Healthy` goes to the engine at once
/// (over `tx`), and the confirm waits for the engine's word (over `confirm`).
#[allow(clippy::too_many_arguments)]
fn switch_host<L: HostLink>(
    target: &Target,
    plan: &DeployPlan,
    s: &L,
    i: usize,
    confirm_within: u64,
    progress: &dyn Progress,
    tx: &std::sync::mpsc::Sender<Seen>,
    confirm: std::sync::mpsc::Receiver<bool>,
) -> Seen {
    progress.phase(i, "switching");
    let (role, role_layer, processes) = host_layers(target, i);
    let req = Request::Deploy {
        release: plan.release.to_hex(),
        who: who(),
        canary: None,
        environment: Some(target.name.clone()),
        env_layer: target.env.env.clone(),
        role,
        role_layer,
        secrets: plan.secrets.clone(),
        confirm_within: Some(confirm_within),
        processes,
        // Run once for the fleet before any switch (`run_hook`).
        skip_release_hook: plan.release_hook.is_some(),
    };
    let decide = || {
        let _ = tx.send(Observation::Healthy { host: i }.into());
        confirm.recv().unwrap_or(false)
    };
    let r = agent_call::<drover_wire::AppStatus>(s, &req, Some(&decide), |e| {
        if e != drover_wire::AWAITING_CONFIRM {
            progress.phase(i, e);
        }
    });
    match r {
        Ok(st) => {
            progress.phase(
                i,
                &format!("live: generation {}", st.generation.unwrap_or_default()),
            );
            Observation::Live {
                host: i,
                generation: st.generation,
                previous: st.from,
            }
            .into()
        }
        Err(e) => {
            progress.phase(i, &format!("failed: {}", e.message));
            Seen {
                obs: Observation::SwitchFailed {
                    host: i,
                    error: e.message.clone(),
                    unreachable: e.unreachable,
                },
                error: Some(e),
                bytes: None,
            }
        }
    }
}

/// Returns host `i` from the new generation, as the engine's revert rule said.
fn revert_host<L: HostLink>(
    plan: &DeployPlan,
    s: &L,
    i: usize,
    to: drover_rollout::Revert,
    progress: &dyn Progress,
) -> Seen {
    progress.phase(i, "reverting");
    let req = match to {
        drover_rollout::Revert::Rollback { generation } => Request::Rollback {
            app: plan.app.clone(),
            to: Some(generation),
            who: who(),
        },
        drover_rollout::Revert::Stop => Request::Stop {
            app: plan.app.clone(),
            who: who(),
        },
    };
    match agent_call::<serde::de::IgnoredAny>(s, &req, None, |_| {}) {
        Ok(_) => {
            progress.phase(i, "reverted");
            Observation::Reverted { host: i }.into()
        }
        Err(e) => {
            progress.phase(i, &format!("revert failed: {}", e.message));
            Observation::RevertFailed {
                host: i,
                error: e.message,
            }
            .into()
        }
    }
}

/// Why the rollout stopped, as the deploy's error: the engine's reason and each host's own
/// error (with its hint).
fn failure_error<L: HostLink>(
    failure: &Failure,
    hosts: &[drover_rollout::Host],
    errors: &[Option<HostError>],
    sessions: &[&L],
) -> anyhow::Error {
    let of_hosts = |ids: &[usize]| -> Vec<HostError> {
        ids.iter()
            .map(|&i| {
                errors[i].clone().unwrap_or_else(|| {
                    HostError::new(
                        hosts[i]
                            .error
                            .clone()
                            .unwrap_or_else(|| format!("{}: failed", sessions[i].name())),
                    )
                })
            })
            .collect()
    };
    match failure {
        Failure::Hook { host, .. } => {
            let errs = of_hosts(&[*host]);
            host_errors_after(
                Some(format!(
                    "the release hook failed on {}, so no host was switched",
                    sessions[*host].name()
                )),
                &errs.iter().collect::<Vec<_>>(),
            )
        }
        Failure::Transfer { hosts: ids } => {
            let errs = of_hosts(ids);
            host_errors_after(
                Some("the release did not reach every host, so no host was switched".into()),
                &errs.iter().collect::<Vec<_>>(),
            )
        }
        Failure::Batch {
            batch,
            of,
            hosts: ids,
        } => {
            let errs = of_hosts(ids);
            host_errors_after(
                Some(format!(
                    "batch {} of {of} failed; the rollout stopped",
                    batch + 1
                )),
                &errs.iter().collect::<Vec<_>>(),
            )
        }
        Failure::Unavailable {
            batch,
            of,
            down,
            size,
            max,
        } => {
            let names: Vec<&str> = down.iter().map(|&i| sessions[i].name()).collect();
            hinted(
                format!(
                    "batch {} of {of} not started: {} hosts are unavailable ({}) and the batch has {size}, more than max_unavailable = {max}",
                    batch + 1,
                    down.len(),
                    names.join(", "),
                ),
                "`drover status -e ENV` shows what is unhealthy",
            )
        }
    }
}

fn audit_entries<L: HostLink>(
    target: &Target,
    plan: &DeployPlan,
    sessions: &[&L],
    states: &[HostState],
    failure: Option<&anyhow::Error>,
) -> Vec<(String, AuditEntry)> {
    states
        .iter()
        .zip(sessions)
        .filter(|(st, _)| st.host.outcome() != Outcome::Unreachable)
        .map(|(st, s)| {
            (
                s.name().to_string(),
                AuditEntry::new(
                    drover_agent::now(),
                    &who(),
                    Some(&target.name),
                    &plan.app,
                    "deploy",
                )
                .moved(
                    Some(plan.version.clone()),
                    st.host.previous,
                    st.host.generation,
                )
                .ended(
                    st.host.outcome().audit(),
                    st.host.error.clone().or_else(|| {
                        failure
                            .filter(|_| st.host.outcome() != Outcome::Live)
                            .map(|f| format!("{f}").lines().next().unwrap_or("").to_string())
                    }),
                ),
            )
        })
        .collect()
}
