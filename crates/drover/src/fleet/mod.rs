//! Fleet operations over ssh: connect to an environment's hosts, move a release to them
//! (only the chunks each lacks), switch them batch by batch behind health checks, and on any
//! failure return every switched host to its previous generation.
//!
//! Every host runs the same `drover` (installed by `drover host setup`); the controller drives
//! it with `drover remote ...` over one multiplexed ssh connection per host, and reaches the
//! host's agent with the same JSON-lines protocol as the local socket, all in one
//! `drover remote serve` session per host.

pub mod progress;
pub mod relay;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use drover_wire::{AuditEntry, Line, Reply, Request};
use serde::Serialize;

use crate::client;
use crate::commands::remote::{EndOp, Hello, LockRequest, ServeOp};
use crate::output::{self, hinted};
pub use progress::Progress;
pub use ssh::{HostError, OpError, Serve, Session, SshSettings};

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
        let env = config.environments.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = config.environments.keys().map(String::as_str).collect();
            hinted(
                format!(
                    "{}: no environment `{name}`",
                    dir.join(drover_config::FILE_NAME).display()
                ),
                if known.is_empty() {
                    "add an [environments.NAME] table with `hosts`".to_string()
                } else {
                    format!("known environments: {}", known.join(", "))
                },
            )
        })?;
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

/// Connections to every host (in config order); a host that cannot be reached is an `Err`.
pub struct Connected {
    pub hosts: Vec<String>,
    pub sessions: Vec<Result<Session, HostError>>,
    _ctl: CtlDir,
}

impl Connected {
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
            _ctl: ctl,
        })
    }

    /// Every host reachable, or an error naming each one that is not.
    pub fn all(&self) -> anyhow::Result<Vec<&Session>> {
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
    match errors.iter().find_map(|e| e.hint.clone()) {
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

pub fn check_version(s: &Session, hello: &Hello) -> Result<(), HostError> {
    let ours = crate::commands::remote::build_id();
    if hello.version != env!("CARGO_PKG_VERSION") || hello.build != ours {
        return Err(HostError::new(format!(
            "{}: runs drover {} (build {}), this is drover {} (build {ours})",
            s.name,
            hello.version,
            hello.build,
            env!("CARGO_PKG_VERSION")
        ))
        .hint(format!(
            "`drover host setup {}` installs this drover there",
            s.name
        )));
    }
    if !hello.agent {
        return Err(
            HostError::new(format!("{}: no drover agent is running there", s.name))
                .hint(format!("`drover host setup {}` starts it", s.name)),
        );
    }
    Ok(())
}

/// Sends one request to the host's agent over its serve session. `on_event` sees progress
/// events and log lines; with `confirm`, an `AWAITING_CONFIRM` event is answered at once
/// with `Confirm`.
pub fn agent_call(
    s: &Session,
    req: &Request,
    confirm: bool,
    mut on_event: impl FnMut(&str),
) -> Result<serde_json::Value, HostError> {
    let request =
        serde_json::to_value(req).map_err(|e| HostError::new(format!("{}: {e}", s.name)))?;
    s.with_serve(|sv| {
        sv.send(&ServeOp::Agent { request })?;
        let mut items = drover_wire::Items::default();
        let reply = loop {
            let line = sv.line()?;
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Reply(r)) => break r,
                Ok(Line::Item { item }) => items.push(item),
                Ok(Line::Event(e)) => {
                    if confirm && e.event == drover_wire::AWAITING_CONFIRM {
                        drover_store::failpoint::hit("fleet.confirm-before-send");
                        sv.send(&drover_wire::Confirm { confirm: true })?;
                        drover_store::failpoint::hit("fleet.confirm-after-send");
                    }
                    on_event(&e.event);
                }
                Ok(Line::Log { log }) => on_event(&log),
                Err(_) => {}
            }
        };
        sv.send(&EndOp { end: true })?;
        match reply {
            Reply::Ok(v) => Ok(items.finish(v)),
            Reply::Error(e) => Err(OpError::Host(wire_error(s, e))),
        }
    })
}

/// An error the host answered with, as this host's error.
fn wire_error(s: &Session, e: drover_wire::WireError) -> HostError {
    let details = if e.details.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.details.join("; "))
    };
    HostError {
        message: format!("{}: {}{details}", s.name, e.message),
        hint: e.hint,
        unreachable: false,
    }
}

/// A `Reply` line from the serve session, its `Ok` value read as `T`.
fn serve_reply<T: serde::de::DeserializeOwned>(s: &Session, sv: &mut Serve) -> Result<T, OpError> {
    let line = sv.line()?;
    match serde_json::from_str::<Reply>(&line) {
        Ok(Reply::Ok(v)) => serde_json::from_value(v).map_err(|e| {
            OpError::Host(HostError::new(format!(
                "{}: unexpected answer: {e}",
                s.name
            )))
        }),
        Ok(Reply::Error(e)) => Err(OpError::Host(wire_error(s, e))),
        Err(e) => Err(OpError::Broken(format!("unexpected answer ({e})"))),
    }
}

/// Whether a host serves the app: it is not stopped there and has a healthy instance (a host
/// that never ran the app is not counted as down).
fn available(s: &Session, app: &str) -> bool {
    let Ok(apps) = agent_typed::<Vec<drover_wire::AppStatus>>(
        s,
        &Request::Status { app: None },
        false,
        |_| {},
    ) else {
        return false;
    };
    match apps.iter().find(|a| a.app == app) {
        None => true,
        Some(a) => a.state != "stopped" && a.instances.iter().any(|i| i.healthy),
    }
}

/// `agent_call`, its answer read as `T`.
pub fn agent_typed<T: serde::de::DeserializeOwned>(
    s: &Session,
    req: &Request,
    confirm: bool,
    on_event: impl FnMut(&str),
) -> Result<T, HostError> {
    let v = agent_call(s, req, confirm, on_event)?;
    serde_json::from_value(v)
        .map_err(|e| HostError::new(format!("{}: unexpected answer from the agent: {e}", s.name)))
}

/// The app's live generation on a host (`None`: not deployed there yet).
pub fn current_generation(s: &Session, app: &str) -> Result<Option<u64>, HostError> {
    let apps: Vec<drover_wire::AppStatus> =
        agent_typed(s, &Request::Status { app: None }, false, |_| {})?;
    Ok(apps
        .into_iter()
        .find(|a| a.app == app)
        .and_then(|a| a.generation))
}

/// Sends release `id` to a host over its serve session; returns what was sent.
pub fn transfer(
    store: &drover_store::Store,
    id: &drover_store::Hash,
    encoded: &drover_store::transfer::Encoded,
    s: &Session,
    mut progress: impl FnMut(u64, u64),
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
            &s.name,
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
                        s.name
                    ))
                } else {
                    hint
                };
                Err(OpError::Ended(HostError {
                    message: format!("{}: {message}", s.name),
                    hint,
                    unreachable: false,
                }))
            }
            // The stream to the host broke: what ssh says about it is the better message.
            Err(e @ drover_store::Error::Stream { .. }) => {
                Err(OpError::Broken(format!("transfer failed: {e}")))
            }
            // This machine's store failed (reading the release): that is the message.
            Err(e) => Err(OpError::Ended(HostError::new(format!(
                "{}: transfer failed here: {e}",
                s.name
            )))),
        }
    })
}

// ---- locks -------------------------------------------------------------------

/// The environment's lock, held on every host. The first host in name order decides
/// between racing deployers; the others are then taken together. Taking it also checks that
/// each host runs this drover and its agent (one ssh session per host for both).
pub struct Locks<'a> {
    env: String,
    token: String,
    held: Vec<&'a Session>,
}

impl<'a> Locks<'a> {
    pub fn acquire(env: &str, sessions: &[&'a Session], what: &str) -> anyhow::Result<Locks<'a>> {
        let token = blake3::hash(
            format!("{}-{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
        )
        .to_hex()[..16]
            .to_string();
        let holder = format!("{} ({what}, pid {})", client::who(), std::process::id());
        let build = crate::commands::remote::build_id();
        let mut order: Vec<&Session> = sessions.to_vec();
        order.sort_by(|a, b| a.name.cmp(&b.name));
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
        let attempt = |hosts: &[&'a Session]| {
            par(hosts, 16, |_, s| {
                let hello = s.with_serve_bounded(|sv| {
                    sv.send(&ServeOp::Hello {
                        expect_build: Some(build.clone()),
                        lock: Some(LockRequest {
                            env: env.to_string(),
                            holder: holder.clone(),
                            token: token.clone(),
                        }),
                    })?;
                    serve_reply::<Hello>(s, sv)
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
                    if let Err(e) = check_version(s, &hello) {
                        errors.push(e);
                    } else if let Some(l) = hello.lock.filter(|l| !l.acquired) {
                        taken_by_other.get_or_insert((s.name.clone(), l.holder));
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
            return Err(match h {
                Some(h) => hinted(
                    format!(
                        "environment `{env}` is locked on {host}: {} has held it since {}",
                        h.holder,
                        fmt_time(h.since)
                    ),
                    format!(
                        "wait for that deploy to finish; if it is dead, `drover lock release -e {env}`"
                    ),
                ),
                None => anyhow::anyhow!("environment `{env}` is locked on {host}"),
            });
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
                .find(|(h, _)| *h == s.name)
                .map(|(_, e)| e.clone());
            s.with_serve_bounded(|sv| {
                sv.send(&ServeOp::Finish {
                    env: self.env.clone(),
                    token: self.token.clone(),
                    audit: entry,
                })?;
                serve_reply::<serde_json::Value>(s, sv)
            })
            .map_err(|_| s.name.clone())
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
    pub json: bool,
}

#[derive(Default)]
struct HostState {
    previous: Option<u64>,
    generation: Option<u64>,
    switched: bool,
    state: &'static str,
    error: Option<String>,
    bytes: u64,
    /// When the host reached its final state, from the start of the deploy.
    seconds: f64,
}

/// The whole fleet deploy: preflight, transfer, batches, and all-or-back.
/// The whole fleet deploy over `conn`, connections opened by the caller (while it built
/// the release).
pub fn deploy(
    store: &drover_store::Store,
    target: &Target,
    plan: DeployPlan,
    conn: Connected,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let hosts = target.env.hosts.clone();
    let progress = Progress::new(&hosts, plan.json);
    if !plan.json {
        eprintln!(
            "deploying {}@{} ({}) to {} hosts of `{}` ({})",
            plan.app,
            plan.version,
            plan.release.short(),
            hosts.len(),
            target.name,
            target.env.strategy
        );
    }
    let result = deploy_connected(store, target, &plan, &conn, &progress, started);
    conn.close();
    result
}

fn deploy_connected(
    store: &drover_store::Store,
    target: &Target,
    plan: &DeployPlan,
    conn: &Connected,
    progress: &Progress,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    for (i, s) in conn.sessions.iter().enumerate() {
        if let Err(e) = s {
            progress.phase(i, format!("unreachable: {}", e.message));
        }
    }
    let sessions = conn.all()?;
    for i in 0..sessions.len() {
        progress.phase(i, "checking and locking");
    }
    let mut locks = match Locks::acquire(
        &target.name,
        &sessions,
        &format!("deploy of {}@{}", plan.app, plan.version),
    ) {
        Ok(l) => l,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let (states, failure, audit) = rollout(store, target, plan, &sessions, progress, started);
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
                host: s.name.clone(),
                state: st.state.to_string(),
                generation: st.generation,
                previous: st.previous,
                error: st.error.clone(),
                bytes_sent: st.bytes,
                seconds: st.seconds,
            })
            .collect(),
    };
    if plan.json {
        output::json(&report)?;
    } else {
        print_summary(&report);
    }
    if !stuck.is_empty() {
        eprintln!(
            "{} the lock of `{}` is still held on {} (unreachable); `drover lock release -e {}` once it is back",
            output::red("warning:"),
            target.name,
            stuck.join(", "),
            target.name
        );
    }
    match failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn print_summary(r: &DeployReport) {
    let width = r.hosts.iter().map(|h| h.host.len()).max().unwrap_or(4);
    println!();
    for h in &r.hosts {
        let what = match h.state.as_str() {
            "live" => format!(
                "live on {}@{} (generation {})",
                r.app,
                r.version,
                h.generation.map_or("?".into(), |g| g.to_string())
            ),
            "reverted" => format!(
                "reverted to generation {}",
                h.previous
                    .map_or("none (stopped)".into(), |g| g.to_string())
            ),
            "kept" => format!(
                "LEFT on {}@{} (generation {}): --keep-partial",
                r.app,
                r.version,
                h.generation.map_or("?".into(), |g| g.to_string())
            ),
            "unchanged" => "unchanged (still on its previous generation)".into(),
            other => other.to_string(),
        };
        let err = h
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!("  {:width$}  {what}{err}", h.host);
    }
    if r.ok {
        println!(
            "{}@{} is live on all {} hosts of `{}`",
            r.app,
            r.version,
            r.hosts.len(),
            r.environment
        );
    }
}

/// Transfer, then the batches; returns each host's state and the failure, if any.
fn rollout(
    store: &drover_store::Store,
    target: &Target,
    plan: &DeployPlan,
    sessions: &[&Session],
    progress: &Progress,
    started: std::time::Instant,
) -> (
    Vec<HostState>,
    Option<anyhow::Error>,
    Vec<(String, AuditEntry)>,
) {
    let parallel = target.config.ssh.parallel.max(1);
    let n = sessions.len();
    let mut states: Vec<HostState> = (0..n)
        .map(|_| HostState {
            state: "unchanged",
            ..Default::default()
        })
        .collect();

    // 1. Every host gets the release before any switches.
    let encoded = drover_store::transfer::Encoded::default();
    let sent = par(sessions, parallel, |i, s| {
        progress.phase(i, "sending");
        let r = transfer(store, &plan.release, &encoded, s, |sent, total| {
            progress.bytes(i, sent, total)
        });
        match &r {
            Ok(x) => progress.phase(
                i,
                format!(
                    "sent {} ({} of {} chunks were there, {} went as deltas)",
                    output::bytes(x.bytes_sent),
                    x.received.had_chunks,
                    x.received.had_chunks + x.received.new_chunks,
                    x.chunks_delta
                ),
            ),
            Err(e) => progress.phase(i, format!("transfer failed: {}", e.message)),
        }
        r
    });
    let mut failed: Vec<HostError> = Vec::new();
    for (i, r) in sent.into_iter().enumerate() {
        match r {
            Ok(x) => {
                states[i].bytes = x.bytes_sent;
                states[i].seconds = started.elapsed().as_secs_f64();
            }
            Err(e) => {
                states[i].seconds = started.elapsed().as_secs_f64();
                states[i].state = "failed";
                states[i].error = Some(e.message.clone());
                failed.push(e);
            }
        }
    }
    if !failed.is_empty() {
        let refs: Vec<&HostError> = failed.iter().collect();
        let failure = host_errors_after(
            Some("the release did not reach every host, so no host was switched".into()),
            &refs,
        );
        let audit = audit_entries(target, plan, sessions, &states, Some(&failure));
        return (states, Some(failure), audit);
    }

    // 2. Batch by batch, each healthy before the next.
    let batches = target.env.strategy.batches(n);
    let confirm_within = target.settings.timeout.as_secs().max(1);
    let mut failure: Option<anyhow::Error> = None;
    for (b, batch) in batches.iter().enumerate() {
        if b > 0
            && let Some(p) = target.env.strategy.pause()
        {
            for &i in batch {
                progress.phase(i, format!("waiting {}", drover_config::Seconds(p)));
            }
            std::thread::sleep(p);
        }
        if let Some(max) = target.env.strategy.max_unavailable(n) {
            let others: Vec<usize> = (0..n).filter(|i| !batch.contains(i)).collect();
            let down: Vec<usize> = par(&others, parallel, |_, &i| {
                !available(sessions[i], &plan.app)
            })
            .into_iter()
            .zip(&others)
            .filter_map(|(down, &i)| down.then_some(i))
            .collect();
            if down.len() + batch.len() > max {
                let names: Vec<&str> = down.iter().map(|&i| sessions[i].name.as_str()).collect();
                failure = Some(hinted(
                    format!(
                        "batch {} of {} not started: {} hosts are unavailable ({}) and the batch has {}, more than max_unavailable = {max}",
                        b + 1,
                        batches.len(),
                        down.len(),
                        names.join(", "),
                        batch.len()
                    ),
                    "`drover status -e ENV` shows what is unhealthy",
                ));
                break;
            }
        }
        let members: Vec<usize> = batch.clone();
        let results = par(&members, members.len(), |_, &i| {
            let s = sessions[i];
            progress.phase(i, "switching");
            let host = &target.env.hosts[i];
            let (role, role_layer, processes) = match target.role_of(host) {
                Some((name, r)) => (
                    Some(name.clone()),
                    r.env.clone(),
                    (!r.processes.is_empty()).then(|| r.processes.clone()),
                ),
                None => (None, BTreeMap::new(), None),
            };
            let req = Request::Deploy {
                release: plan.release.to_hex(),
                who: client::who(),
                canary: None,
                environment: Some(target.name.clone()),
                env_layer: target.env.env.clone(),
                role,
                role_layer,
                secrets: plan.secrets.clone(),
                confirm_within: Some(confirm_within),
                processes,
            };
            let r = agent_typed::<drover_wire::AppStatus>(s, &req, true, |e| {
                if e != drover_wire::AWAITING_CONFIRM {
                    progress.phase(i, e.to_string());
                }
            });
            match &r {
                Ok(st) => progress.phase(
                    i,
                    format!("live: generation {}", st.generation.unwrap_or_default()),
                ),
                Err(e) => progress.phase(i, format!("failed: {}", e.message)),
            }
            r.map(|st| (st.from, st))
        });
        let mut batch_failed = Vec::new();
        for (&i, r) in members.iter().zip(results) {
            match r {
                Ok((previous, st)) => {
                    states[i].seconds = started.elapsed().as_secs_f64();
                    states[i].switched = true;
                    states[i].state = "live";
                    states[i].generation = st.generation;
                    states[i].previous = previous;
                }
                Err(e) => {
                    states[i].seconds = started.elapsed().as_secs_f64();
                    states[i].state = if e.unreachable {
                        "unreachable"
                    } else {
                        "failed"
                    };
                    states[i].error = Some(e.message.clone());
                    batch_failed.push(e);
                }
            }
        }
        if !batch_failed.is_empty() {
            let refs: Vec<&HostError> = batch_failed.iter().collect();
            failure = Some(host_errors_after(
                Some(format!(
                    "batch {} of {} failed; the rollout stopped",
                    b + 1,
                    batches.len()
                )),
                &refs,
            ));
            break;
        }
    }

    // 3. All or back.
    if failure.is_some() {
        if plan.keep_partial {
            for st in states.iter_mut().filter(|s| s.switched) {
                st.state = "kept";
            }
            eprintln!(
                "{} --keep-partial: the hosts already switched STAY on the new release; the fleet runs mixed versions",
                output::red("warning:")
            );
        } else {
            let switched: Vec<usize> = (0..n).filter(|&i| states[i].switched).collect();
            let reverted = par(&switched, parallel, |_, &i| {
                let s = sessions[i];
                progress.phase(i, "reverting");
                let req = match states[i].previous {
                    Some(g) => Request::Rollback {
                        app: plan.app.clone(),
                        to: Some(g),
                        who: client::who(),
                    },
                    None => Request::Stop {
                        app: plan.app.clone(),
                        who: client::who(),
                    },
                };
                let r = agent_call(s, &req, false, |_| {});
                match &r {
                    Ok(_) => progress.phase(i, "reverted"),
                    Err(e) => progress.phase(i, format!("revert failed: {}", e.message)),
                }
                r
            });
            for (&i, r) in switched.iter().zip(reverted) {
                states[i].seconds = started.elapsed().as_secs_f64();
                match r {
                    Ok(_) => states[i].state = "reverted",
                    Err(e) => {
                        states[i].state = "failed";
                        states[i].error = Some(format!("could not revert: {}", e.message));
                    }
                }
            }
        }
    }

    // 4. Every host's audit log will say what happened to it.
    let audit = audit_entries(target, plan, sessions, &states, failure.as_ref());
    (states, failure, audit)
}

fn audit_entries(
    target: &Target,
    plan: &DeployPlan,
    sessions: &[&Session],
    states: &[HostState],
    failure: Option<&anyhow::Error>,
) -> Vec<(String, AuditEntry)> {
    states
        .iter()
        .zip(sessions)
        .filter(|(st, _)| st.state != "unreachable")
        .map(|(st, s)| {
            (
                s.name.clone(),
                AuditEntry {
                    at: drover_agent::now(),
                    who: client::who(),
                    environment: Some(target.name.clone()),
                    app: plan.app.clone(),
                    action: "deploy".into(),
                    version: Some(plan.version.clone()),
                    from: st.previous,
                    to: st.generation,
                    outcome: match st.state {
                        "live" => "ok",
                        "reverted" => "reverted",
                        "kept" => "kept-partial",
                        "unchanged" => "not-started",
                        _ => "failed",
                    }
                    .into(),
                    reason: st.error.clone().or_else(|| {
                        failure
                            .filter(|_| st.state != "live")
                            .map(|f| format!("{f}").lines().next().unwrap_or("").to_string())
                    }),
                    host: None,
                },
            )
        })
        .collect()
}
