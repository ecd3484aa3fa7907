//! The host agent: owns the store, the generations and the app processes of one drover root,
//! and serves the CLI over `ROOT/agent.sock` (JSON lines, see `drover-wire`).
//!
//! Apps run in their own process groups with output going straight to log files, so they
//! outlive the agent; a restarted agent finds them again through their environment tag.

mod acme;
pub mod confine;
mod deploy;
mod error;
mod handover;
mod health;
mod instances;
mod layers;
pub mod logs;
mod monitor;
mod proc;
mod reads;
mod recover;
mod routes;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_proxy::{Backend, ProxyHandle};
use drover_store::{Manifest, Store};
use drover_wire::{Event, Line};

pub use error::Error;
use error::Result;
use monitor::{FIRST_BACKOFF, FIRST_PROBE};
use routes::ProxyConf;
use server::Conns;
pub use state::{AppDir, append_audit, apps, now, read_audit};

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
    /// When the monitor probes it next (once per `[health] interval` while it is healthy).
    next_probe: Instant,
    phase: Phase,
    backoff: Duration,
    last_start: Instant,
    spec: Arc<InstanceSpec>,
}

impl Instance {
    /// A just-started (or just-found) instance: not yet healthy (probed soon), not
    /// supervised, no child handle.
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
            next_probe: Instant::now() + FIRST_PROBE,
            phase: Phase::Running,
            backoff: FIRST_BACKOFF,
            last_start: Instant::now(),
            spec,
        }
    }

    /// Its next probe in `after` (at the latest in a year: an `Instant` cannot go on for
    /// ever, and adding to one must not panic).
    fn probe_in(&mut self, after: Duration) {
        let now = Instant::now();
        self.next_probe = now
            .checked_add(after.min(drover_config::Seconds::MAX))
            .unwrap_or(now);
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
    /// How often the monitor probes it while it is healthy (`[health] interval`).
    health_interval: Duration,
    log: PathBuf,
    stop_timeout: Duration,
    /// What asks it to stop (SIGTERM unless the process says otherwise).
    stop_signal: rustix::process::Signal,
    /// The release's short id: the proxy's metrics key.
    release: String,
    /// The generation's secrets file, encrypted; decrypted at each start, in memory only.
    secrets: Option<String>,
    /// How it is confined, and where it writes.
    place: instances::Place,
    /// What a status says of that confinement.
    protection: String,
    /// The user `$DROVER_DATA` is made for (the app's).
    data_owner: Option<confine::AppUser>,
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

impl Agent {
    /// This agent, weakly (for a thread that must not keep it alive).
    pub(crate) fn weak(&self) -> std::sync::Weak<Agent> {
        self.me.get().cloned().unwrap_or_default()
    }
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
    /// The ports apps share by host name, each with the apps behind it.
    fronts: Mutex<HashMap<u16, drover_proxy::FrontHandle>>,
    /// Set until recovery has put every app behind its shared port.
    recovering: std::sync::atomic::AtomicBool,
    /// Pending ACME HTTP-01 answers, served on every plain port.
    challenges: drover_acme::ChallengeMap,
    /// Each app's ACME certificate, as `status` tells it.
    acme: Mutex<HashMap<String, acme::AcmeState>>,
    /// This agent, for the threads it starts (set once it is in its `Arc`).
    me: std::sync::OnceLock<std::sync::Weak<Agent>>,
    /// The client connections being served.
    conns: Mutex<Conns>,
    /// After a deploy, collect what each app's `gc_keep` newest generations do not need
    /// (0: never).
    gc_keep: usize,
    /// How the apps' processes can be confined here.
    powers: confine::Powers,
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
    /// After each deploy, gc what no app's `gc_keep` newest generations need (0: never).
    pub gc_keep: usize,
}

/// The releases gc must keep: those of each app's live generation and of its `keep` newest
/// generations.
pub fn gc_roots(root: &Path, keep: usize) -> std::collections::HashSet<drover_store::Hash> {
    let mut roots = std::collections::HashSet::new();
    for app in apps(root) {
        let dir = AppDir::new(root, &app);
        let current = dir.current();
        let gens = dir.generations();
        let n = gens.len();
        for (k, g) in gens.into_iter().enumerate() {
            if (k + keep >= n || Some(g.generation) == current)
                && let Ok(id) = g.release.parse()
            {
                roots.insert(id);
            }
        }
    }
    roots
}

/// Streams progress lines to the client while a request runs.
struct Out<'a> {
    stream: &'a mut UnixStream,
}

impl Out<'_> {
    fn event(&mut self, msg: impl Into<String>) {
        let _ = drover_wire::write_line(self.stream, &Line::Event(Event { event: msg.into() }));
    }

    /// A line of a command's output (a release hook's).
    fn log(&mut self, line: &str) {
        let _ = drover_wire::write_line(
            self.stream,
            &Line::Log {
                log: line.to_string(),
            },
        );
    }

    /// One element of a list reply (`Line::Item`).
    fn item(&mut self, item: serde_json::Value) -> Result<()> {
        drover_wire::write_line(self.stream, &Line::Item { item })
            .map_err(Error::io("cannot answer the client"))
    }
}

impl Agent {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppRt>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn app_dir(&self, app: &str) -> Result<AppDir> {
        let dir = AppDir::new(&self.root, app);
        if !drover_config::valid_name(app) || !dir.exists() {
            return Err(Error::UnknownApp {
                app: app.to_string(),
            });
        }
        Ok(dir)
    }

    fn live_generation(&self, app: &str) -> Result<(AppDir, state::Generation, Manifest)> {
        let dir = self.app_dir(app)?;
        let current = dir.current().ok_or_else(|| Error::NotDeployed {
            app: app.to_string(),
        })?;
        let g = read_generation(&dir, app, current)?;
        let manifest = self.store.trusted_manifest(&release_of(app, &g)?)?;
        Ok((dir, g, manifest))
    }
}

/// Where the agent of a root listens.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("agent.sock")
}

/// Where a root's host identity lives (`drover host key` prints its public key).
pub fn host_key_path(root: &Path) -> PathBuf {
    root.join("keys/host.age")
}

/// Generation `n` of `app`, read from its file.
fn read_generation(dir: &AppDir, app: &str, n: u64) -> Result<state::Generation> {
    dir.generation(n)
        .ok_or_else(|| Error::UnreadableGeneration {
            app: app.to_string(),
            generation: n,
        })
}

/// The release a generation runs.
fn release_of(app: &str, g: &state::Generation) -> Result<drover_store::Hash> {
    g.release.parse().map_err(|message| Error::BadReleaseId {
        app: app.to_string(),
        generation: g.generation,
        message,
    })
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
