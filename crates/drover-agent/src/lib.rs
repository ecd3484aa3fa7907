//! The host agent: owns the store, the generations and the app processes of one drover root,
//! and serves the CLI over `ROOT/agent.sock` (JSON lines, see `drover-wire`).
//!
//! Apps run in their own process groups with output going straight to log files, so they
//! outlive the agent; a restarted agent finds them again through their environment tag.

mod deploy;
mod handover;
mod instances;
mod layers;
mod proc;
mod reads;
mod recover;
mod routes;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_proxy::{Backend, ProxyHandle};
use drover_store::{Manifest, Store};
use drover_wire::{Event, Line, WireError};

use instances::{base_env, last_lines, run_to_end, stop_groups, zero_values};
use layers::Layers;
use routes::{ProxyConf, ProxyPlan};
use server::Conns;
pub use state::{AppDir, append_audit, apps, now, read_audit};

const LOG_ROTATE_BYTES: u64 = 16 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// An error answered to the client: a message, a hint, and extra lines.
#[derive(Debug)]
pub struct Failure(WireError);

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure(WireError {
            message: message.into(),
            hint: None,
            details: Vec::new(),
        })
    }

    fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.0.hint = Some(hint.into());
        self
    }

    fn details(mut self, details: Vec<String>) -> Failure {
        self.0.details = details;
        self
    }
}

impl From<drover_store::Error> for Failure {
    fn from(e: drover_store::Error) -> Failure {
        let hint = e.hint();
        let mut f = Failure::new(e.to_string());
        f.0.hint = hint;
        f
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(format!("agent I/O error: {e}"))
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

#[derive(Debug, PartialEq)]
enum Phase {
    Running,
    Backoff(Instant),
    Stopping,
}

struct Instance {
    process: String,
    index: u32,
    generation: u64,
    pid: u32,
    started: u64,
    port: Option<u16>,
    child: Option<Child>,
    restarts: u32,
    healthy: bool,
    /// Restarted when it dies (the live generation's instances).
    supervised: bool,
    /// What the proxy routes to (HTTP instances).
    backend: Option<Arc<Backend>>,
    /// Blue-green: kept running, out of traffic, until then.
    warm_until: Option<Instant>,
    probe_failures: u32,
    phase: Phase,
    backoff: Duration,
    last_start: Instant,
    spec: Arc<InstanceSpec>,
}

impl Instance {
    /// A just-started (or just-found) instance: not yet healthy, not supervised, no child
    /// handle.
    fn running(
        spec: Arc<InstanceSpec>,
        process: &str,
        index: u32,
        generation: u64,
        pid: u32,
        started: u64,
        port: Option<u16>,
    ) -> Instance {
        Instance {
            process: process.to_string(),
            index,
            generation,
            pid,
            started,
            port,
            child: None,
            restarts: 0,
            healthy: false,
            supervised: false,
            backend: port.map(|p| backend_for(&spec, p)),
            warm_until: None,
            probe_failures: 0,
            phase: Phase::Running,
            backoff: FIRST_BACKOFF,
            last_start: Instant::now(),
            spec,
        }
    }
}

/// Everything needed to (re)start one instance.
struct InstanceSpec {
    app: String,
    command: String,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    http: bool,
    /// The HTTP path the monitor keeps probing (None: a TCP connect).
    health_path: Option<String>,
    log: PathBuf,
    stop_timeout: Duration,
    /// The release's short id: the proxy's metrics key.
    release: String,
    /// The generation's secrets file, encrypted; decrypted at each start, in memory only.
    secrets: Option<String>,
}

/// What the proxy routes to for an instance listening on `port`.
fn backend_for(spec: &InstanceSpec, port: u16) -> Arc<Backend> {
    Backend::new(([127, 0, 0, 1], port).into(), &spec.release)
}

#[derive(Default)]
struct AppRt {
    instances: Vec<Instance>,
    deploying: Option<(String, u64)>,
    /// A canary in progress: its generation and traffic weight.
    canary: Option<(u64, u8)>,
    /// The generation tag of the live instances, once known (saves reading `current`).
    live_gen: Option<u64>,
    /// What the app's proxy serves with (the live generation's `[proxy]`).
    proxy_conf: Option<ProxyConf>,
}

pub struct Agent {
    root: PathBuf,
    tag: String,
    store: Store,
    apps: Mutex<HashMap<String, AppRt>>,
    proxy_rt: std::sync::OnceLock<drover_proxy::Runtime>,
    proxies: Arc<Mutex<HashMap<String, ProxyHandle>>>,
    /// This host's age identity: the key its apps' secrets are encrypted to.
    identity: drover_config::secrets::Identity,
    /// Listening sockets handed over by the agent this one replaced, by port.
    inherited: Mutex<HashMap<u16, std::net::TcpListener>>,
    /// The client connections being served.
    conns: Mutex<Conns>,
}

/// Runs `f` on a new thread, or here and now when no thread can be started (a pids or
/// memory limit): the work is done either way, and the agent does not panic.
fn spawn_or_run(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let job = Arc::new(Mutex::new(Some(f)));
    let theirs = Arc::clone(&job);
    let take = |j: &Mutex<Option<_>>| j.lock().unwrap_or_else(|e| e.into_inner()).take();
    match std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            if let Some(f) = take(&theirs) {
                f()
            }
        }) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("drover agent: cannot start a thread ({e}): {name} runs on this one");
            if let Some(f) = take(&job) {
                f()
            }
            None
        }
    }
}

/// How the agent runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve Prometheus metrics of every proxy on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Take over from a running agent (an upgrade): its listening sockets are handed over,
    /// so no connection to an app's public port is refused.
    pub replace: bool,
}

/// Streams progress lines to the client while a request runs.
struct Out<'a> {
    stream: &'a mut UnixStream,
}

impl Out<'_> {
    fn event(&mut self, msg: impl Into<String>) {
        let _ = drover_wire::write_line(self.stream, &Line::Event(Event { event: msg.into() }));
    }

    /// One element of a list reply (`Line::Item`).
    fn item(&mut self, item: serde_json::Value) -> Result<()> {
        drover_wire::write_line(self.stream, &Line::Item { item })?;
        Ok(())
    }
}

impl Agent {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppRt>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn app_dir(&self, app: &str) -> Result<AppDir> {
        let dir = AppDir::new(&self.root, app);
        if !drover_config::valid_name(app) || !dir.exists() {
            return Err(Failure::new(format!("no app named `{app}` on this host"))
                .hint("`drover status` lists the apps this host runs"));
        }
        Ok(dir)
    }

    // ---- deploys ----------------------------------------------------------------

    fn live_generation(&self, app: &str) -> Result<(AppDir, state::Generation, Manifest)> {
        let dir = self.app_dir(app)?;
        let g = dir
            .current()
            .and_then(|c| dir.generation(c))
            .ok_or_else(|| Failure::new(format!("app `{app}` has no live generation")))?;
        let id: drover_store::Hash = g.release.parse().map_err(|e: String| Failure::new(e))?;
        let manifest = self.store.trusted_manifest(&id)?;
        Ok((dir, g, manifest))
    }

    // ---- secrets ----------------------------------------------------------------------

    // ---- the proxy ------------------------------------------------------------------

    // ---- reads ---------------------------------------------------------------------

    // ---- supervision ------------------------------------------------------------------

    fn monitor(&self) {
        let mut last_probe = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut respawn: Vec<(String, usize)> = Vec::new();
            let mut changed: Vec<String> = Vec::new();
            let mut expired: Vec<(String, u32)> = Vec::new();
            {
                let mut apps = self.lock();
                for (app, rt) in apps.iter_mut() {
                    let before = rt.instances.len();
                    let mut died = false;
                    rt.instances.retain_mut(|i| {
                        let dead = match i.child.as_mut() {
                            Some(c) => !matches!(c.try_wait(), Ok(None)),
                            None => !proc::alive(i.pid, i.started),
                        };
                        if i.phase == Phase::Stopping {
                            return !dead;
                        }
                        if let Some(until) = i.warm_until {
                            if dead {
                                return false;
                            }
                            if Instant::now() >= until && !i.supervised {
                                expired.push((app.clone(), i.pid));
                            }
                            return true;
                        }
                        if !i.supervised {
                            return true;
                        }
                        match i.phase {
                            Phase::Running if dead => {
                                died = true;
                                i.healthy = false;
                                if i.last_start.elapsed() > Duration::from_secs(30) {
                                    i.backoff = FIRST_BACKOFF;
                                }
                                eprintln!(
                                    "drover agent: {app} {}.{} exited; restarting in {:?}",
                                    i.process, i.index, i.backoff
                                );
                                i.phase = Phase::Backoff(Instant::now() + i.backoff);
                                i.backoff = (i.backoff * 2).min(MAX_BACKOFF);
                            }
                            _ => {}
                        }
                        true
                    });
                    if died || before != rt.instances.len() {
                        changed.push(app.clone());
                    }
                    for (k, i) in rt.instances.iter().enumerate() {
                        if let Phase::Backoff(at) = i.phase
                            && Instant::now() >= at
                        {
                            respawn.push((app.clone(), k));
                        }
                    }
                }
                for (app, k) in respawn.iter().rev() {
                    let Some(rt) = apps.get_mut(app) else {
                        continue;
                    };
                    let i = &mut rt.instances[*k];
                    let mut env = i.spec.env.clone();
                    if i.spec.http
                        && let Ok(p) = proc::free_port()
                    {
                        env.insert("PORT".into(), p.to_string());
                        i.port = Some(p);
                    }
                    match self.launch(&i.spec, env) {
                        Ok(child) => {
                            i.pid = child.id();
                            i.started = proc::start_time(i.pid).unwrap_or(0);
                            i.child = Some(child);
                            i.restarts += 1;
                            i.phase = Phase::Running;
                            i.last_start = Instant::now();
                            i.probe_failures = 0;
                            i.backend = i.port.map(|p| backend_for(&i.spec, p));
                            changed.push(app.clone());
                        }
                        Err(e) => {
                            eprintln!("drover agent: cannot restart {}: {e}", i.spec.app);
                            i.phase = Phase::Backoff(Instant::now() + i.backoff);
                        }
                    }
                }
            }
            for (app, pid) in expired {
                self.retire(&app, &[pid], Duration::from_secs(5));
            }
            changed.sort();
            changed.dedup();
            for app in changed {
                self.refresh_routes(&app);
            }
            if last_probe.elapsed() >= Duration::from_millis(500) {
                last_probe = Instant::now();
                self.probe_all();
                self.rotate_logs();
            }
        }
    }

    /// Copy-truncates instance logs grown past the limit (on the probe cadence, not the
    /// monitor's 100 ms tick: a stat per log is not free).
    fn rotate_logs(&self) {
        let logs: Vec<PathBuf> = self
            .lock()
            .values()
            .flat_map(|rt| rt.instances.iter().map(|i| i.spec.log.clone()))
            .collect();
        for log in logs {
            if fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
                rotate(&log);
            }
        }
    }

    /// Refreshes `healthy` of the live instances.
    fn probe_all(&self) {
        let targets: Vec<(String, u32, Option<u16>, Option<String>)> = {
            let apps = self.lock();
            apps.iter()
                .flat_map(|(app, rt)| {
                    rt.instances
                        .iter()
                        .filter(|i| i.supervised && i.phase == Phase::Running)
                        .map(|i| (app.clone(), i.pid, i.port, i.spec.health_path.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (app, pid, port, path) in targets {
            let healthy = match (port, path) {
                (Some(port), Some(p)) => {
                    proc::probe_http(port, &p, Duration::from_millis(300)).is_ok()
                }
                (Some(port), None) => proc::probe_tcp(port, Duration::from_millis(300)).is_ok(),
                (None, _) => true,
            };
            let flipped = {
                let mut apps = self.lock();
                match apps
                    .get_mut(&app)
                    .and_then(|rt| rt.instances.iter_mut().find(|i| i.pid == pid))
                {
                    Some(i) => {
                        // Three failed probes in a row take an instance out of traffic.
                        i.probe_failures = if healthy { 0 } else { i.probe_failures + 1 };
                        let now = healthy || (i.healthy && i.probe_failures < 3);
                        let flipped = now != i.healthy;
                        i.healthy = now;
                        flipped
                    }
                    None => false,
                }
            };
            if flipped {
                self.refresh_routes(&app);
            }
        }
    }
}

/// Where a root's host identity lives (`drover host key` prints its public key).
pub fn host_key_path(root: &Path) -> PathBuf {
    root.join("keys/host.age")
}

/// A value out of `drover_config`'s bounds: its message and hint.
fn bounds_failure((message, hint): (String, Option<String>)) -> Failure {
    let mut f = Failure::new(message);
    f.0.hint = hint;
    f
}

fn secrets_failure(e: drover_config::secrets::SecretsError) -> Failure {
    let hint = e.hint();
    let mut f = Failure::new(e.to_string());
    f.0.hint = hint;
    f
}

/// Copy-truncate: the process keeps writing (O_APPEND) into the emptied file.
fn rotate(log: &Path) {
    let old = log.with_extension("log.1");
    if fs::copy(log, &old).is_ok()
        && let Ok(f) = fs::OpenOptions::new().write(true).open(log)
    {
        let _ = f.set_len(0);
    }
}

fn to_json(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_done_whether_or_not_a_thread_starts() {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(h) = spawn_or_run("test", move || tx.send(1).unwrap()) {
            h.join().unwrap();
        }
        assert_eq!(rx.recv().unwrap(), 1);
    }
}
