//! The host agent: owns the store, the generations and the app processes of one drover root,
//! and serves the CLI over `ROOT/agent.sock` (JSON lines, see `drover-wire`).
//!
//! Apps run in their own process groups with output going straight to log files, so they
//! outlive the agent; a restarted agent finds them again through their environment tag.

mod handover;
mod instances;
mod layers;
mod proc;
mod routes;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_proxy::{Backend, ProxyHandle};
use drover_store::{Manifest, Store};
use drover_wire::{
    AppStatus, CanaryStatus, Event, InstanceStatus, Line, ProxyStatus, RunSpec, WireError,
};

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

/// A generation as one history line, shorter than the protocol's limit: one written before
/// config values were bounded shows the sizes of its values, not the values.
fn fit_line(mut g: drover_wire::GenerationInfo) -> serde_json::Value {
    let fits = |g: &drover_wire::GenerationInfo| {
        serde_json::to_vec(g).map_or(0, |v| v.len()) < drover_wire::MAX_LINE - 64
    };
    if !fits(&g) {
        for v in g.env.values_mut() {
            *v = format!("({} bytes, too long to show)", v.len());
        }
        if let Some(r) = g.reason.as_mut().filter(|r| r.len() > 4096) {
            let mut end = 4096;
            while !r.is_char_boundary(end) {
                end -= 1;
            }
            r.truncate(end);
        }
    }
    to_json(g)
}

impl Agent {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, AppRt>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fleet deploy is live here but not yet kept: waits `secs` for the deployer's
    /// `Confirm`. Without one (it died, or the network between us did) the app returns to
    /// the generation it had, and the host's audit log says why.
    fn await_confirm(
        &self,
        app: &str,
        who: &str,
        environment: Option<String>,
        secs: u64,
        reader: &mut BufReader<UnixStream>,
        out: &mut Out,
    ) -> Result<()> {
        out.event(drover_wire::AWAITING_CONFIRM);
        let _ = reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(secs.max(1))));
        let confirmed = matches!(
            drover_wire::read_line(reader),
            Ok(Some(line)) if serde_json::from_str::<drover_wire::Confirm>(&line)
                .is_ok_and(|c| c.confirm)
        );
        let _ = reader.get_ref().set_read_timeout(None);
        if confirmed {
            return Ok(());
        }
        let dir = self.app_dir(app)?;
        let live = dir.current().and_then(|c| dir.generation(c));
        let from = live.as_ref().and_then(|g| g.from);
        let reason = format!("the deployer did not confirm within {secs}s");
        let _ = dir.record(
            live.as_ref().map_or(0, |g| g.generation),
            "unconfirmed",
            Some(reason.clone()),
        );
        let who_revert = format!("{who} (unconfirmed)");
        let reverted = match from {
            Some(g) => self.rollback(app, Some(g), &who_revert, out),
            None => self.stop_app(app, &who_revert),
        };
        let entry = drover_wire::AuditEntry {
            at: state::now(),
            who: who.to_string(),
            environment,
            app: app.to_string(),
            action: "auto-revert".into(),
            version: live.as_ref().map(|g| g.version.clone()),
            from: live.as_ref().map(|g| g.generation),
            to: from,
            outcome: if reverted.is_ok() {
                "reverted"
            } else {
                "failed"
            }
            .into(),
            reason: Some(reason.clone()),
            host: None,
        };
        let _ = state::append_audit(&self.root, &entry);
        reverted?;
        Err(Failure::new(format!(
            "{reason}: `{app}` is back on {}",
            from.map_or("no generation (stopped)".to_string(), |g| format!(
                "generation {g}"
            ))
        )))
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

    fn deploy(
        &self,
        query: &str,
        who: &str,
        canary: Option<u8>,
        layers: Layers,
        out: &mut Out,
    ) -> Result<String> {
        let id = self.store.resolve(query)?;
        let manifest = self.store.trusted_manifest(&id)?;
        let app = manifest.app.clone();
        manifest.runtime.check_bounds().map_err(|(m, h)| {
            bounds_failure((format!("release {app}@{}: {m}", manifest.version), h))
        })?;
        let _guard = self.claim(&app, who)?;
        if let Some((g, _)) = self.lock().get(&app).and_then(|rt| rt.canary) {
            return Err(Failure::new(format!(
                "a canary of `{app}` (generation {g}) is in progress"
            ))
            .hint(format!(
                "finish it first: `drover promote {app}` or `drover abort {app}`"
            )));
        }
        out.event(format!(
            "deploying {}@{} ({})",
            app,
            manifest.version,
            id.short()
        ));
        let dir = AppDir::new(&self.root, &app);
        let from = dir.current();
        let mut g = state::Generation {
            generation: dir.next_number(),
            release: id.to_hex(),
            version: manifest.version.clone(),
            who: who.to_string(),
            created: state::now(),
            from,
            kind: if canary.is_some() {
                "canary".into()
            } else {
                "deploy".into()
            },
            env: BTreeMap::new(),
            instances_of: None,
            environment: layers.environment,
            env_layer: layers.env_layer,
            role: layers.role,
            role_layer: layers.role_layer,
            // Host-side values carry over from the live generation.
            host_config: from
                .and_then(|c| dir.generation(c))
                .map(|g| g.host_config)
                .unwrap_or_default(),
            secrets: layers.secrets,
            processes: layers.processes,
        };
        for p in g.processes.iter().flatten() {
            if !manifest.runtime.process.contains_key(p) {
                return Err(Failure::new(format!(
                    "release {}@{} has no process `{p}`",
                    app, manifest.version
                ))
                .hint(format!(
                    "its processes: {}",
                    manifest
                        .runtime
                        .process
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        g.env = self.check_config(&manifest, &g)?.0;
        dir.create()?;
        dir.write_generation(&g)?;
        self.switch(&dir, &g, &manifest, true, canary, out)?;
        Ok(app)
    }

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

    fn rollback(&self, app: &str, to: Option<u64>, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let current = dir.current();
        let history = dir.history();
        let target = match to {
            Some(n) => history.iter().find(|g| g.generation == n).ok_or_else(|| {
                Failure::new(format!("app `{app}` has no generation {n}"))
                    .hint(format!("`drover history {app}` lists its generations"))
            })?,
            None => {
                let cur_release = current
                    .and_then(|c| history.iter().find(|g| g.generation == c))
                    .map(|g| g.release.clone());
                history
                    .iter()
                    .rev()
                    .filter(|g| Some(g.generation) < current.or(Some(u64::MAX)))
                    .find(|g| {
                        matches!(g.outcome.as_str(), "live" | "superseded")
                            && Some(&g.release) != cur_release.as_ref()
                    })
                    .ok_or_else(|| {
                        Failure::new(format!(
                            "app `{app}` has no earlier live generation to roll back to"
                        ))
                        .hint(format!("`drover history {app}` lists its generations"))
                    })?
            }
        };
        if Some(target.generation) == current {
            return Err(Failure::new(format!(
                "generation {} is already the live generation of `{app}`",
                target.generation
            )));
        }
        let id: drover_store::Hash = target
            .release
            .parse()
            .map_err(|e: String| Failure::new(e))?;
        let manifest = self.store.trusted_manifest(&id)?;
        out.event(format!(
            "rolling back {app} to generation {} ({}@{})",
            target.generation, app, target.version
        ));
        // Blue-green: the target's instances may still be running, warm.
        let target_inst_gen = dir
            .generation(target.generation)
            .map(|g| g.instance_gen())
            .unwrap_or(target.generation);
        let warm_pids: Vec<u32> = {
            let apps = self.lock();
            let w: Vec<&Instance> = apps
                .get(app)
                .map(|rt| {
                    rt.instances
                        .iter()
                        .filter(|i| {
                            i.generation == target_inst_gen
                                && i.warm_until.is_some()
                                && i.phase == Phase::Running
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !w.is_empty() && w.iter().all(|i| proc::alive(i.pid, i.started)) {
                w.iter().map(|i| i.pid).collect()
            } else {
                Vec::new()
            }
        };
        let full = dir.generation(target.generation).ok_or_else(|| {
            Failure::new(format!(
                "generation {} of `{app}` is unreadable",
                target.generation
            ))
        })?;
        // The target's release, config and secrets, as a new generation.
        let g = state::Generation {
            generation: dir.next_number(),
            who: who.to_string(),
            created: state::now(),
            from: Some(target.generation),
            kind: "rollback".into(),
            instances_of: (!warm_pids.is_empty()).then_some(target_inst_gen),
            ..full
        };
        dir.write_generation(&g)?;
        if !warm_pids.is_empty() {
            out.event(format!(
                "generation {} is still warm: switching without a start",
                target.generation
            ));
            // Nothing of its own to stop; recorded failed unless it goes live.
            let attempt = Attempt::new(self, &dir, app, g.generation);
            let plan = self
                .prepare_proxy(app, manifest.runtime.proxy.as_ref())
                .inspect_err(|e| attempt.fail(e.0.message.clone()))?;
            return self.go_live(
                &dir,
                &g,
                &manifest,
                &warm_pids,
                Instant::now(),
                plan,
                Some(&attempt),
                out,
            );
        }
        self.switch(&dir, &g, &manifest, false, None, out)
    }

    /// Takes the app's deploy lock, or fails fast naming who holds it.
    fn claim(&self, app: &str, who: &str) -> Result<ClaimGuard<'_>> {
        let mut apps = self.lock();
        let rt = apps.entry(app.to_string()).or_default();
        if let Some((holder, since)) = &rt.deploying {
            return Err(Failure::new(format!(
                "app `{app}` is locked: a deploy by {holder} has been running since {}",
                fmt_time(*since)
            ))
            .hint("wait for it to finish, then try again"));
        }
        rt.deploying = Some((who.to_string(), state::now()));
        Ok(ClaimGuard {
            agent: self,
            app: app.to_string(),
        })
    }

    /// Starts generation `g`'s instances beside the old ones, waits for health, switches,
    /// then stops the old ones. On failure the old ones are never touched.
    fn switch(
        &self,
        dir: &AppDir,
        g: &state::Generation,
        manifest: &Manifest,
        run_hook: bool,
        canary: Option<u8>,
        out: &mut Out,
    ) -> Result<()> {
        drover_store::failpoint::hit("agent.switch.pending");
        let app = manifest.app.clone();
        let attempt = Attempt::new(self, dir, &app, g.generation);
        let fail = |reason: String, details: Vec<String>| -> Failure {
            attempt.fail(reason.clone());
            Failure::new(format!(
                "deploy of {}@{} (generation {}) failed: {reason}",
                app, g.version, g.generation
            ))
            .details(details)
        };
        let id: drover_store::Hash = g.release.parse().map_err(|e: String| Failure::new(e))?;
        let checked = self
            .store
            .materialise_checked(&id)
            .map_err(|e| fail(e.to_string(), vec![]))?;
        if !checked.rebuilt.is_empty() {
            let damage: Vec<String> = checked
                .rebuilt
                .iter()
                .take(3)
                .map(|p| format!("{}: {}", p.object, p.reason))
                .collect();
            let more = match checked.rebuilt.len() {
                n if n > 3 => format!(" and {} more", n - 3),
                _ => String::new(),
            };
            let msg = format!(
                "the tree of release {} was damaged ({}{more}): rebuilt it from verified chunks",
                id.short(),
                damage.join("; ")
            );
            eprintln!("drover agent: {app}: {msg}");
            out.event(msg);
        }
        let tree = checked.path;
        let plan = self
            .prepare_proxy(&app, manifest.runtime.proxy.as_ref())
            .map_err(|e| fail(e.0.message, vec![]))?;
        if canary.is_some() && !matches!(plan, ProxyPlan::Keep) {
            return Err(fail(
                "a canary cannot change `[proxy]` (its port or settings): the live proxy serves both generations".into(),
                vec![],
            ));
        }

        if run_hook && let Some(hook) = &manifest.runtime.hooks.release {
            out.event(format!("running release hook `{hook}`"));
            let log = dir.logs_dir().join(format!("{}-release.log", g.generation));
            let mut env = base_env(&self.tag, &app, g, manifest);
            for (k, v) in self
                .secrets_of(g.secrets.as_deref())
                .map_err(|e| fail(e.0.message, vec![]))?
            {
                env.insert(k, v.to_string());
            }
            let ran = run_to_end(hook, &tree, &env, &log);
            zero_values(&mut env);
            match ran {
                Ok(true) => {}
                Ok(false) => {
                    return Err(fail(
                        format!("release hook `{hook}` failed"),
                        last_lines("release", &log),
                    ));
                }
                Err(e) => return Err(fail(format!("cannot run release hook: {e}"), vec![])),
            }
        }

        let specs = self.specs(dir, g, manifest, &tree);
        out.event(format!("starting {} instances", specs.len()));
        for (process, index, spec) in specs {
            match self.spawn_instance(&app, &process, index, g.generation, spec, false) {
                Ok(pid) => attempt.started.borrow_mut().push(pid),
                Err(e) => {
                    return Err(fail(format!("cannot start {process}.{index}: {e}"), vec![]));
                }
            }
        }
        let started = attempt.started.borrow().clone();
        if canary.is_none() {
            // Prepared while the instances start: the switch will be a single rename.
            dir.stage_current(g.generation)
                .map_err(|e| fail(format!("cannot stage the switch: {e}"), vec![]))?;
        }
        if let Err((reason, details)) = self.wait_healthy(&app, &started, manifest, out) {
            return Err(fail(reason, details));
        }
        let healthy_at = Instant::now();

        if let Some(weight) = canary {
            dir.record(g.generation, "canary", None)
                .map_err(|e| fail(format!("cannot record the canary: {e}"), vec![]))?;
            attempt.live.set(true);
            {
                let mut apps = self.lock();
                let rt = apps.entry(app.clone()).or_default();
                rt.canary = Some((g.generation, weight));
                for i in rt.instances.iter_mut().filter(|i| started.contains(&i.pid)) {
                    i.supervised = true;
                }
            }
            self.refresh_routes(&app);
            out.event(format!(
                "generation {} takes {weight}% of clients; `drover promote {app}` or `drover abort {app}`",
                g.generation
            ));
            return Ok(());
        }
        self.go_live(
            dir,
            g,
            manifest,
            &started,
            healthy_at,
            plan,
            Some(&attempt),
            out,
        )
    }

    /// The switch: `current` is renamed into place, the proxy routes to the `new` instances,
    /// and the previous ones drain and stop (or stay warm, blue-green).
    #[allow(clippy::too_many_arguments)]
    fn go_live(
        &self,
        dir: &AppDir,
        g: &state::Generation,
        manifest: &Manifest,
        new: &[u32],
        healthy_at: Instant,
        proxy: ProxyPlan,
        attempt: Option<&Attempt>,
        out: &mut Out,
    ) -> Result<()> {
        let app = manifest.app.clone();
        let previous = dir.current();
        // The switch: `current` is renamed into place (prepared and fsynced beforehand),
        // traffic moves at once, then the directory is synced and the history written.
        drover_store::failpoint::hit("agent.switch.before_rename");
        dir.switch_current(g.generation).map_err(|e| {
            let reason = format!("cannot switch `current`: {e}");
            if let Some(a) = attempt {
                a.fail(reason.clone());
            }
            Failure::new(reason)
        })?;
        // Live from here on, whatever fails next.
        if let Some(a) = attempt {
            a.live.set(true);
        }
        drover_store::failpoint::hit("agent.switch.after_rename");
        let old: Vec<u32> = {
            let mut apps = self.lock();
            let rt = apps.entry(app.clone()).or_default();
            rt.canary = None;
            rt.live_gen = Some(g.instance_gen());
            for i in rt.instances.iter_mut() {
                if new.contains(&i.pid) {
                    i.supervised = true;
                    i.warm_until = None;
                }
            }
            rt.instances
                .iter()
                .filter(|i| !new.contains(&i.pid) && i.phase != Phase::Stopping)
                .map(|i| i.pid)
                .collect()
        };
        // The proxy follows the generation that is live now, and only it.
        if let Err(e) = self.install_proxy(&app, proxy) {
            eprintln!("drover agent: {app}: {}", e.0.message);
            out.event(format!("the proxy did not change: {}", e.0.message));
        }
        self.refresh_routes(&app);
        let moved = healthy_at.elapsed();
        dir.sync()?;
        dir.record(g.generation, "live", None)?;
        dir.set_stopped(false)?;
        if let Some(p) = previous.filter(|p| *p != g.generation) {
            let _ = dir.record(p, "superseded", None);
        }
        drover_store::failpoint::hit("agent.switch.before_stop_old");
        let proxy = manifest.runtime.proxy.as_ref();
        if proxy.is_some_and(|p| p.strategy == drover_config::Strategy::BlueGreen) {
            let keep = proxy.map(|p| p.keep_warm.0).unwrap_or_default();
            out.event(format!(
                "generation {} is live (traffic moved {} µs after it was healthy); {} old instances stay warm for {}",
                g.generation,
                moved.as_micros(),
                old.len(),
                drover_config::Seconds(keep)
            ));
            let mut apps = self.lock();
            if let Some(rt) = apps.get_mut(&app) {
                for i in rt.instances.iter_mut().filter(|i| old.contains(&i.pid)) {
                    // Only the latest previous generation stays warm; older warm ones stop.
                    if i.warm_until.is_some() {
                        i.warm_until = Some(Instant::now());
                    } else {
                        i.supervised = false;
                        i.warm_until = Some(Instant::now() + keep);
                    }
                }
            }
        } else {
            out.event(format!(
                "generation {} is live (traffic moved {} µs after it was healthy); draining and stopping {} old instances",
                g.generation,
                moved.as_micros(),
                old.len()
            ));
            let drain = proxy.map(|p| p.drain_timeout.0).unwrap_or_default();
            self.retire(&app, &old, drain);
        }
        Ok(())
    }

    fn promote(&self, app: &str, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let Some((gen_n, _)) = self.lock().get(app).and_then(|rt| rt.canary) else {
            return Err(Failure::new(format!("`{app}` has no canary in progress")));
        };
        let g = dir
            .generation(gen_n)
            .ok_or_else(|| Failure::new(format!("generation {gen_n} is unreadable")))?;
        let id: drover_store::Hash = g.release.parse().map_err(|e: String| Failure::new(e))?;
        let manifest = self.store.trusted_manifest(&id)?;
        let pids = self.pids_of(app, gen_n);
        let plan = self.prepare_proxy(app, manifest.runtime.proxy.as_ref())?;
        out.event(format!("promoting generation {gen_n} to all traffic"));
        self.go_live(&dir, &g, &manifest, &pids, Instant::now(), plan, None, out)
    }

    fn abort(&self, app: &str, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let Some((gen_n, _)) = self.lock().get_mut(app).and_then(|rt| rt.canary.take()) else {
            return Err(Failure::new(format!("`{app}` has no canary in progress")));
        };
        self.refresh_routes(app);
        dir.record(gen_n, "aborted", Some(format!("aborted by {who}")))?;
        let pids = self.pids_of(app, gen_n);
        out.event(format!(
            "all traffic is back on the stable generation; stopping {} canary instances",
            pids.len()
        ));
        self.retire(app, &pids, Duration::from_secs(30));
        Ok(())
    }

    fn pids_of(&self, app: &str, generation: u64) -> Vec<u32> {
        self.lock()
            .get(app)
            .map(|rt| {
                rt.instances
                    .iter()
                    .filter(|i| i.generation == generation && i.phase != Phase::Stopping)
                    .map(|i| i.pid)
                    .collect()
            })
            .unwrap_or_default()
    }

    // ---- secrets ----------------------------------------------------------------------

    // ---- the proxy ------------------------------------------------------------------

    // ---- reads ---------------------------------------------------------------------

    fn status(&self, app: Option<&str>) -> Result<Vec<AppStatus>> {
        match app {
            Some(a) => {
                self.app_dir(a)?;
                Ok(vec![self.status_of(a)?])
            }
            None => apps(&self.root).iter().map(|a| self.status_of(a)).collect(),
        }
    }

    fn status_of(&self, app: &str) -> Result<AppStatus> {
        let dir = AppDir::new(&self.root, app);
        let current = dir.current();
        let g = current.and_then(|c| dir.generation(c));
        let proxy = self.proxy(app);
        let routes = proxy.as_ref().map(|p| p.routes());
        let apps = self.lock();
        let rt = apps.get(app);
        let serving: Vec<u32> = rt
            .map(|rt| {
                rt.instances
                    .iter()
                    .filter(|i| {
                        i.backend.as_ref().is_some_and(|b| {
                            routes.as_ref().is_some_and(|r| {
                                r.stable
                                    .iter()
                                    .chain(r.canary.iter())
                                    .any(|x| Arc::ptr_eq(x, b))
                            })
                        })
                    })
                    .map(|i| i.pid)
                    .collect()
            })
            .unwrap_or_default();
        let mut instances: Vec<InstanceStatus> = rt
            .map(|rt| {
                rt.instances
                    .iter()
                    .filter(|i| i.phase != Phase::Stopping || proc::alive(i.pid, i.started))
                    .map(|i| InstanceStatus {
                        process: i.process.clone(),
                        index: i.index,
                        generation: i.generation,
                        // Stopped-and-gone instances were filtered out just above.
                        pid: Some(i.pid),
                        port: i.port,
                        healthy: i.healthy && i.phase == Phase::Running,
                        restarts: i.restarts,
                        serving: serving.contains(&i.pid),
                        state: match i.phase {
                            Phase::Running => "running".into(),
                            Phase::Backoff(_) => "restarting".into(),
                            Phase::Stopping => "stopping".into(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        instances.sort_by(|a, b| {
            (a.generation, &a.process, a.index).cmp(&(b.generation, &b.process, b.index))
        });
        let state = if rt.is_some_and(|rt| rt.deploying.is_some()) {
            "deploying"
        } else if dir.stopped() {
            "stopped"
        } else if current.is_none() {
            "not deployed"
        } else {
            "running"
        };
        Ok(AppStatus {
            app: app.to_string(),
            generation: current,
            from: g.as_ref().and_then(|g| g.from),
            version: g.as_ref().map(|g| g.version.clone()),
            release: g.as_ref().map(|g| g.release.clone()),
            state: state.into(),
            instances,
            proxy: proxy.map(|p| ProxyStatus {
                port: p.port,
                paused: p.paused(),
                releases: p.metrics(),
            }),
            canary: rt
                .and_then(|rt| rt.canary)
                .map(|(generation, weight)| CanaryStatus {
                    generation,
                    version: dir
                        .generation(generation)
                        .map(|g| g.version)
                        .unwrap_or_default(),
                    weight,
                }),
        })
    }

    fn logs(
        &self,
        app: &str,
        lines: usize,
        follow: bool,
        stream: &mut UnixStream,
    ) -> Result<serde_json::Value> {
        let dir = self.app_dir(app)?;
        let current = dir.current();
        let files: Vec<(String, PathBuf)> = match current.and_then(|c| dir.generation(c)) {
            Some(g) => {
                let id: drover_store::Hash =
                    g.release.parse().map_err(|e: String| Failure::new(e))?;
                let manifest = self.store.manifest(&id)?;
                let mut v = Vec::new();
                let hook = dir.logs_dir().join(format!("{}-release.log", g.generation));
                if hook.exists() {
                    v.push(("release".to_string(), hook));
                }
                for (name, p) in &manifest.runtime.process {
                    for i in 0..p.instances {
                        v.push((
                            format!("{name}.{i}"),
                            dir.logs_dir()
                                .join(format!("{}-{name}-{i}.log", g.instance_gen())),
                        ));
                    }
                }
                v
            }
            None => Vec::new(),
        };
        let mut offsets = Vec::new();
        for (name, path) in &files {
            for l in proc::tail(path, lines) {
                let _ = drover_wire::write_line(
                    stream,
                    &Line::Log {
                        log: format!("{name} | {l}"),
                    },
                );
            }
            offsets.push(fs::metadata(path).map(|m| m.len()).unwrap_or(0));
        }
        if !follow {
            return Ok(serde_json::json!({"files": files.len()}));
        }
        stream.set_nonblocking(true).ok();
        let mut partial: Vec<String> = vec![String::new(); files.len()];
        loop {
            // The client closing its end is the only way out of a follow.
            let mut probe = [0u8; 1];
            match std::io::Read::read(stream, &mut probe) {
                Ok(0) => return Ok(serde_json::Value::Null),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                    return Ok(serde_json::Value::Null);
                }
                _ => {}
            }
            for (k, (name, path)) in files.iter().enumerate() {
                let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                if len < offsets[k] {
                    offsets[k] = 0; // rotated
                }
                if len > offsets[k]
                    && let Ok(mut f) = File::open(path)
                {
                    use std::io::{Read, Seek};
                    let _ = f.seek(std::io::SeekFrom::Start(offsets[k]));
                    let mut buf = Vec::new();
                    let _ = f.take(len - offsets[k]).read_to_end(&mut buf);
                    offsets[k] = len;
                    partial[k].push_str(&String::from_utf8_lossy(&buf));
                    while let Some(pos) = partial[k].find('\n') {
                        let l: String = partial[k].drain(..=pos).collect();
                        stream.set_nonblocking(false).ok();
                        if drover_wire::write_line(
                            stream,
                            &Line::Log {
                                log: format!("{name} | {}", l.trim_end()),
                            },
                        )
                        .is_err()
                        {
                            return Ok(serde_json::Value::Null);
                        }
                        stream.set_nonblocking(true).ok();
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_spec(&self, app: &str) -> Result<RunSpec> {
        let (_, g, manifest) = self.live_generation(app)?;
        let id: drover_store::Hash = g.release.parse().map_err(|e: String| Failure::new(e))?;
        let tree = self.store.materialise(&id)?;
        let mut env = base_env(&self.tag, app, &g, &manifest);
        env.remove(proc::ENV_ROOT);
        // Over the 0600 socket to the CLI, which puts them in the task's environment.
        for (k, v) in self.secrets_of(g.secrets.as_deref())? {
            env.insert(k, v.to_string());
        }
        Ok(RunSpec {
            dir: tree.display().to_string(),
            env,
            generation: g.generation,
        })
    }

    // ---- supervision ------------------------------------------------------------------

    /// Finds the apps' processes after an agent restart: adopts the live generation's,
    /// stops any other (an interrupted deploy's), and restarts what is missing.
    fn recover(&self) {
        let found = proc::scan(&self.tag);
        let mut by_app: HashMap<String, Vec<proc::Found>> = HashMap::new();
        for f in found {
            let app = f.instance.split('/').next().unwrap_or("").to_string();
            by_app.entry(app).or_default().push(f);
        }
        let mut strays: Vec<(u32, Duration)> = Vec::new();
        for app in apps(&self.root) {
            let dir = AppDir::new(&self.root, &app);
            dir.sweep_staged();
            let current = dir.current();
            for h in dir.history() {
                // An agent killed between the switch and its history: the one live
                // generation is the one `current` names.
                if h.outcome == "live" && Some(h.generation) != current {
                    let _ = dir.record(h.generation, "superseded", None);
                }
                if h.outcome == "pending" {
                    if Some(h.generation) == current {
                        let _ = dir.record(h.generation, "live", None);
                    } else {
                        let _ = dir.record(
                            h.generation,
                            "failed",
                            Some(
                                "interrupted: the agent stopped before this deploy finished".into(),
                            ),
                        );
                    }
                }
            }
            let mut procs = by_app.remove(&app).unwrap_or_default();
            let Some(g) = current.and_then(|c| dir.generation(c)) else {
                strays.extend(procs.iter().map(|f| (f.pid, Duration::from_secs(10))));
                continue;
            };
            let manifest = g
                .release
                .parse()
                .ok()
                .and_then(|id: drover_store::Hash| self.store.trusted_manifest(&id).ok());
            let tree = g
                .release
                .parse()
                .ok()
                .and_then(|id: drover_store::Hash| self.store.materialise(&id).ok());
            let (Some(manifest), Some(tree)) = (manifest, tree) else {
                eprintln!(
                    "drover agent: generation {} of {app} cannot be read or its signature does not check; leaving it stopped",
                    g.generation
                );
                continue;
            };
            let specs = self.specs(&dir, &g, &manifest, &tree);
            let stopped = dir.stopped();
            for (process, index, spec) in specs {
                let tag = format!("{app}/{}/{process}/{index}", g.instance_gen());
                let pos = procs.iter().position(|f| f.instance == tag);
                match (pos, stopped) {
                    (Some(p), false) => {
                        let f = procs.remove(p);
                        let mut apps = self.lock();
                        apps.entry(app.clone())
                            .or_default()
                            .instances
                            .push(Instance {
                                // Adopted: not our child, and it was serving already.
                                healthy: true,
                                supervised: true,
                                ..Instance::running(
                                    spec,
                                    &process,
                                    index,
                                    g.instance_gen(),
                                    f.pid,
                                    f.started,
                                    f.port,
                                )
                            });
                    }
                    (None, false) => {
                        if let Err(e) =
                            self.spawn_instance(&app, &process, index, g.instance_gen(), spec, true)
                        {
                            eprintln!("drover agent: cannot start {app} {process}.{index}: {e}");
                        }
                    }
                    _ => {}
                }
            }
            strays.extend(procs.iter().map(|f| (f.pid, Duration::from_secs(10))));
            if let Some(p) = &manifest.runtime.proxy {
                match self
                    .prepare_proxy(&app, Some(p))
                    .and_then(|plan| self.install_proxy(&app, plan))
                {
                    Ok(()) => self.refresh_routes(&app),
                    Err(e) => eprintln!("drover agent: {}", e.0.message),
                }
            }
        }
        for (app, procs) in by_app {
            eprintln!(
                "drover agent: stopping {} processes of unknown app {app}",
                procs.len()
            );
            strays.extend(procs.iter().map(|f| (f.pid, Duration::from_secs(10))));
        }
        if !strays.is_empty() {
            eprintln!(
                "drover agent: stopping {} processes left by an interrupted deploy",
                strays.len()
            );
            stop_groups(&strays);
        }
    }

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

/// A switch's new generation until it is live. Dropped before that (an error, an early
/// return, a panic), it stops the instances it started and records the generation failed:
/// a failed switch never leaves a generation pending or its instances running.
struct Attempt<'a> {
    agent: &'a Agent,
    dir: &'a AppDir,
    app: String,
    generation: u64,
    started: std::cell::RefCell<Vec<u32>>,
    reason: std::cell::RefCell<Option<String>>,
    live: std::cell::Cell<bool>,
}

impl<'a> Attempt<'a> {
    fn new(agent: &'a Agent, dir: &'a AppDir, app: &str, generation: u64) -> Attempt<'a> {
        Attempt {
            agent,
            dir,
            app: app.to_string(),
            generation,
            started: Default::default(),
            reason: Default::default(),
            live: Default::default(),
        }
    }

    /// Why it failed (the first reason given is the one recorded).
    fn fail(&self, reason: String) {
        self.reason.borrow_mut().get_or_insert(reason);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.live.get() {
            return;
        }
        self.dir.unstage_current(self.generation);
        let started = self.started.take();
        if !started.is_empty() {
            self.agent.stop_now(&self.app, &started);
        }
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "the deploy ended before its generation went live".to_string());
        if let Err(e) = self.dir.record(self.generation, "failed", Some(reason)) {
            eprintln!(
                "drover agent: {}: cannot record generation {} failed: {e}",
                self.app, self.generation
            );
        }
    }
}

struct ClaimGuard<'a> {
    agent: &'a Agent,
    app: String,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(rt) = self.agent.lock().get_mut(&self.app) {
            rt.deploying = None;
        }
    }
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

fn fmt_time(secs: u64) -> String {
    let ago = state::now().saturating_sub(secs);
    format!("{ago}s ago (unix time {secs})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_written_before_the_bounds_still_fits_one_history_line() {
        let g = drover_wire::GenerationInfo {
            generation: 1,
            release: "r".into(),
            version: "1".into(),
            who: "me".into(),
            created: 0,
            from: None,
            kind: "deploy".into(),
            outcome: "live".into(),
            reason: None,
            env: BTreeMap::from([
                ("BIG".to_string(), "x".repeat(2 << 20)),
                ("SMALL".to_string(), "y".into()),
            ]),
            secrets: Vec::new(),
        };
        let v = fit_line(g);
        assert!(serde_json::to_vec(&v).unwrap().len() < drover_wire::MAX_LINE);
        assert_eq!(v["env"]["BIG"], "(2097152 bytes, too long to show)");
        let small = fit_line(drover_wire::GenerationInfo {
            env: BTreeMap::from([("SMALL".to_string(), "y".into())]),
            ..serde_json::from_value(v).unwrap()
        });
        assert_eq!(small["env"]["SMALL"], "y");
    }

    #[test]
    fn work_is_done_whether_or_not_a_thread_starts() {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(h) = spawn_or_run("test", move || tx.send(1).unwrap()) {
            h.join().unwrap();
        }
        assert_eq!(rx.recv().unwrap(), 1);
    }
}
