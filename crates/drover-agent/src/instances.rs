//! The app's instances: their specs, starting them (with their secrets and ports), waiting
//! for their health, stopping them, and starting and stopping a whole app.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_proxy::Backend;
use drover_store::Manifest;
use rustix::process::Signal;

use crate::confine::{self, AppUser, Confine};
use crate::health::{self, History};
use crate::proc::ProbeFailure;
use crate::{
    Agent, AppDir, Error, Instance, InstanceSpec, Out, Phase, Result, proc, read_generation,
    release_of, spawn_or_run, state,
};

/// The users of a release's processes: the app's (`[app] user`, which owns its data) and
/// each process's (`[process.NAME] user`, else the app's). None: the agent's own.
pub(crate) struct Users {
    pub(crate) app: Option<AppUser>,
    pub(crate) process: BTreeMap<String, Option<AppUser>>,
}

/// Where a process writes, and how it is confined.
pub(crate) struct Place {
    /// The store read-only, the user, what it may write (`confine`).
    pub(crate) confine: Confine,
    /// `$DROVER_DATA`, the app's user's.
    pub(crate) data: std::path::PathBuf,
    /// `$TMPDIR`, the process's user's: made anew at each start, removed when it stops.
    pub(crate) tmp: std::path::PathBuf,
}

impl Place {
    /// `$DROVER_DATA` and `$TMPDIR` in a process's environment.
    pub(crate) fn put_env(&self, env: &mut BTreeMap<String, String>) {
        env.insert("DROVER_DATA".into(), self.data.display().to_string());
        env.insert("TMPDIR".into(), self.tmp.display().to_string());
    }

    /// Makes the data directory (if missing) for `data_owner`, and the tmp directory anew.
    pub(crate) fn make_dirs(&self, data_owner: Option<&AppUser>) -> std::io::Result<()> {
        own_dir(&self.data, data_owner, false)?;
        own_dir(&self.tmp, self.confine.user.as_ref(), true)
    }
}

impl Agent {
    pub(crate) fn secrets_of(
        &self,
        text: Option<&str>,
    ) -> Result<BTreeMap<String, zeroize::Zeroizing<String>>> {
        let Some(text) = text else {
            return Ok(BTreeMap::new());
        };
        let file = drover_config::secrets::SecretsFile::parse(text, "the secrets file")?;
        Ok(file.decrypt_all(&self.identity, "the secrets file")?)
    }

    /// Starts an instance with its secrets decrypted into its environment; the agent's
    /// copies are zeroed as soon as the process exists.
    pub(crate) fn launch(
        &self,
        spec: &InstanceSpec,
        mut env: BTreeMap<String, String>,
    ) -> std::io::Result<Child> {
        let secrets = self
            .secrets_of(spec.secrets.as_deref())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for (k, v) in &secrets {
            env.insert(k.clone(), v.to_string());
        }
        spec.place.make_dirs(spec.data_owner.as_ref())?;
        let child = proc::spawn(
            &spec.command,
            &spec.dir,
            &env,
            &spec.log,
            &spec.place.confine,
            true,
        );
        zero_values(&mut env);
        child
    }

    /// Takes instances out of traffic, lets their requests finish (up to `drain`), then
    /// stops them (SIGTERM to each group, SIGKILL after its stop timeout), in the background.
    pub(crate) fn retire(
        &self,
        app: &str,
        pids: &[u32],
        drain: Duration,
    ) -> Option<std::thread::JoinHandle<()>> {
        let (targets, backends, tmp) = {
            let mut apps = self.lock();
            let rt = apps.get_mut(app)?;
            let mut t: Vec<(u32, Duration, Signal)> = Vec::new();
            let mut b: Vec<Arc<Backend>> = Vec::new();
            let mut tmp = Vec::new();
            for i in rt.instances.iter_mut().filter(|i| pids.contains(&i.pid)) {
                i.supervised = false;
                i.phase = Phase::Stopping;
                t.push((i.pid, i.spec.stop_timeout, i.spec.stop_signal));
                b.extend(i.backend.clone());
                tmp.push(i.spec.place.tmp.clone());
            }
            (t, b, tmp)
        };
        self.refresh_routes(app);
        let proxy = self.proxy(app);
        spawn_or_run("drover-retire", move || {
            if let Some(p) = proxy {
                p.drain(&backends, drain);
            }
            stop_groups(&targets);
            for t in tmp {
                let _ = std::fs::remove_dir_all(t);
            }
        })
    }

    /// The user a process runs as, from the value of its user key (None: the agent's own).
    fn user_of(
        &self,
        manifest: &Manifest,
        key: &str,
        name: Option<&str>,
    ) -> Result<Option<AppUser>> {
        if !self.powers.switch_users {
            return match name {
                Some(user) if user != self.powers.own_user => Err(Error::CannotSwitchUser {
                    app: manifest.app.clone(),
                    version: manifest.version.clone(),
                    key: key.to_string(),
                    user: user.to_string(),
                    agent_user: self.powers.own_user.clone(),
                }),
                _ => Ok(None),
            };
        }
        let user = name.unwrap_or(confine::DEFAULT_USER);
        let found = if user == confine::DEFAULT_USER {
            confine::ensure_default_user().map(Some)
        } else {
            confine::lookup(user)
        };
        found
            .map_err(Error::io(format!("cannot look up user `{user}`")))?
            .map(Some)
            .ok_or_else(|| Error::UnknownUser {
                app: manifest.app.clone(),
                version: manifest.version.clone(),
                key: key.to_string(),
                user: user.to_string(),
            })
    }

    /// Every user a release runs as, each looked up (an unknown one is an error naming its
    /// key): checked before a deploy writes anything, and again at each start.
    pub(crate) fn users(&self, manifest: &Manifest) -> Result<Users> {
        let app = self.user_of(manifest, "app.user", manifest.runtime.user.as_deref())?;
        let mut process = BTreeMap::new();
        for (name, p) in &manifest.runtime.process {
            let user = match &p.user {
                Some(u) => self.user_of(manifest, &format!("process.{name}.user"), Some(u))?,
                None => app.clone(),
            };
            process.insert(name.clone(), user);
        }
        Ok(Users { app, process })
    }

    /// Where a process of the app runs and writes, and how it is confined; `deps` (what
    /// `Store::dependency_env` gave) names the dependency trees it reads too.
    pub(crate) fn place(
        &self,
        dir: &AppDir,
        user: Option<&AppUser>,
        tmp: &str,
        deps: &BTreeMap<String, String>,
    ) -> Place {
        let data = dir.data_dir();
        let tmp = dir.tmp_dir().join(tmp);
        let trees: Vec<&Path> = deps
            .iter()
            .filter(|(k, _)| k.starts_with(drover_config::DEP_VARIABLE_PREFIX))
            .map(|(_, v)| Path::new(v.as_str()))
            .collect();
        let confine = self
            .powers
            .confine(&self.root.join("store"), user, &[&data, &tmp], &trees);
        Place { confine, data, tmp }
    }

    pub(crate) fn specs(
        &self,
        dir: &AppDir,
        g: &state::Generation,
        manifest: &Manifest,
        tree: &Path,
        deps: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, u32, Arc<InstanceSpec>)>> {
        let users = self.users(manifest)?;
        let mut out = Vec::new();
        for (name, p) in &manifest.runtime.process {
            if g.processes
                .as_ref()
                .is_some_and(|only| !only.contains(name))
            {
                continue;
            }
            for index in 0..p.instances {
                let mut env = base_env(&self.tag, &manifest.app, g, deps);
                env.insert(
                    proc::ENV_INSTANCE.into(),
                    format!("{}/{}/{name}/{index}", manifest.app, g.instance_gen()),
                );
                env.insert("DROVER_PROCESS".into(), format!("{name}.{index}"));
                let user = users.process.get(name).cloned().flatten();
                let place = self.place(
                    dir,
                    user.as_ref(),
                    &format!("{}-{name}-{index}", g.instance_gen()),
                    deps,
                );
                place.put_env(&mut env);
                out.push((
                    name.clone(),
                    index,
                    Arc::new(InstanceSpec {
                        app: manifest.app.clone(),
                        command: p.command.clone(),
                        dir: tree.to_path_buf(),
                        env,
                        http: p.http,
                        health_path: manifest
                            .runtime
                            .health
                            .as_ref()
                            .and_then(|h| h.path.clone()),
                        health_interval: manifest.runtime.health.as_ref().map_or(
                            drover_config::DEFAULT_HEALTH_INTERVAL,
                            drover_config::Health::interval,
                        ),
                        log: dir
                            .logs_dir()
                            .join(format!("{}-{name}-{index}.log", g.instance_gen())),
                        stop_timeout: p.stop_timeout.0,
                        stop_signal: stop_signal(p.stop_signal),
                        release: g.release[..12.min(g.release.len())].to_string(),
                        secrets: g.secrets.clone(),
                        protection: confine::protection(&place.confine, &self.powers.own_user),
                        place,
                        data_owner: users.app.clone(),
                    }),
                ));
            }
        }
        Ok(out)
    }

    /// Spawns one instance and registers it; returns its pid.
    pub(crate) fn spawn_instance(
        &self,
        app: &str,
        process: &str,
        index: u32,
        generation: u64,
        spec: Arc<InstanceSpec>,
        supervised: bool,
    ) -> std::io::Result<u32> {
        let mut env = spec.env.clone();
        let port = if spec.http {
            let port = proc::free_port()?;
            env.insert("PORT".into(), port.to_string());
            Some(port)
        } else {
            None
        };
        let child = self.launch(&spec, env)?;
        let pid = child.id();
        let started = proc::start_time(pid).unwrap_or(0);
        let mut apps = self.lock();
        apps.entry(app.to_string())
            .or_default()
            .instances
            .push(Instance {
                child: Some(child),
                supervised,
                ..Instance::running(spec, process, index, generation, pid, started, port)
            });
        Ok(pid)
    }

    /// Waits until every instance in `pids` passes the health check, or explains why not:
    /// each one's probes in short, its last answer, whether it still runs, its last log
    /// lines, and where it listens when that is not `$PORT`. It probes fast (from every
    /// 1 ms up to every 20 ms): most apps are up within milliseconds.
    pub(crate) fn wait_healthy(
        &self,
        app: &str,
        pids: &[u32],
        manifest: &Manifest,
        out: &mut Out,
    ) -> Result<()> {
        let health = manifest.runtime.health.as_ref();
        let timeout = health
            .map(|h| h.timeout.0)
            .unwrap_or(Duration::from_secs(30));
        let start = Instant::now();
        let deadline = start + timeout;
        let mut pending: Vec<u32> = pids.to_vec();
        let mut last_answer: HashMap<u32, String> = HashMap::new();
        let mut history: HashMap<u32, History> = HashMap::new();
        let settle = start + Duration::from_millis(300);
        // The probe goes to `$PORT` (an HTTP GET or a connect), not through a command.
        let by_port = health.is_none_or(|h| h.command.is_none());
        let mut poll = Duration::from_micros(500);
        loop {
            let snapshot: Vec<Probe> = {
                let mut apps = self.lock();
                let rt = apps.entry(app.to_string()).or_default();
                let mut snap = Vec::new();
                for i in rt.instances.iter_mut().filter(|i| pending.contains(&i.pid)) {
                    let exited = match i.child.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(Some(status))) => Some(status.to_string()),
                        _ => None,
                    };
                    snap.push((
                        i.pid,
                        format!("{}.{}", i.process, i.index),
                        i.port,
                        exited,
                        i.spec.clone(),
                    ));
                }
                snap
            };
            for (pid, name, port, exited, spec) in snapshot {
                if let Some(status) = exited {
                    let mut details: Vec<String> = history
                        .get(&pid)
                        .and_then(History::summary)
                        .map(|h| format!("{name}: {h}"))
                        .into_iter()
                        .collect();
                    details.push(format!("last lines of {name}:"));
                    // What it wrote before it exited is in its log once its writer ends.
                    crate::logs::flushed(pid, Duration::from_secs(1));
                    details.extend(last_lines(&name, &spec.log));
                    return Err(Error::Exited {
                        instance: name,
                        status,
                        details,
                    });
                }
                let result = match (health, port) {
                    (Some(h), Some(port)) if h.path.is_some() => proc::probe_http(
                        port,
                        h.path.as_deref().unwrap_or("/"),
                        Duration::from_millis(500),
                    )
                    .map(|_| ()),
                    (Some(h), _) if h.command.is_some() => {
                        let mut env = spec.env.clone();
                        if let Some(p) = port {
                            env.insert("PORT".into(), p.to_string());
                        }
                        let cmd = h.command.as_deref().unwrap_or("true");
                        match run_to_end(
                            cmd,
                            &spec.dir,
                            &env,
                            &spec.log,
                            &spec.place.confine,
                            false,
                        ) {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(ProbeFailure::new(
                                "command failed",
                                format!("health command `{cmd}` failed"),
                            )),
                            Err(e) => Err(ProbeFailure::new(
                                "command did not run",
                                format!("health command `{cmd}`: {e}"),
                            )),
                        }
                    }
                    (_, Some(port)) => proc::probe_tcp(port, Duration::from_millis(500)),
                    (_, None) => {
                        if Instant::now() >= settle {
                            Ok(())
                        } else {
                            // Nothing to probe: it is healthy if it is still there then.
                            continue;
                        }
                    }
                };
                match result {
                    Ok(()) => {
                        pending.retain(|p| *p != pid);
                        out.event(format!("{name} is healthy"));
                        let mut apps = self.lock();
                        if let Some(i) = apps
                            .get_mut(app)
                            .and_then(|rt| rt.instances.iter_mut().find(|i| i.pid == pid))
                        {
                            i.healthy = true;
                            // From now on the monitor probes it, once per interval.
                            i.probe_in(i.spec.health_interval);
                        }
                    }
                    Err(answer) => {
                        history
                            .entry(pid)
                            .or_insert_with(|| History::new(start))
                            .record(&answer.kind, Instant::now());
                        last_answer.insert(pid, format!("{name}: {answer}"));
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut details = Vec::new();
                let mut listeners = Vec::new();
                {
                    let mut apps = self.lock();
                    let instances = apps.get_mut(app).map(|rt| &mut rt.instances);
                    for i in instances
                        .into_iter()
                        .flatten()
                        .filter(|i| pending.contains(&i.pid))
                    {
                        let name = format!("{}.{}", i.process, i.index);
                        if let Some(h) = history.get(&i.pid).and_then(History::summary) {
                            details.push(format!("{name}: {h}"));
                        }
                        if let Some(a) = last_answer.get(&i.pid) {
                            details.push(format!("last health answer: {a}"));
                        }
                        details.push(match i.child.as_mut().map(|c| c.try_wait()) {
                            Some(Ok(Some(status))) => format!("{name} has exited ({status})"),
                            _ => format!("{name} (pid {}) is still running", i.pid),
                        });
                        details.push(format!("last lines of {name}:"));
                        details.extend(last_lines(&name, &i.spec.log));
                        if by_port && let Some(port) = i.port {
                            listeners.push((name, i.pid, port));
                        }
                    }
                }
                // Read from /proc with the lock released.
                let port_hint = listeners.into_iter().find_map(|(name, pid, port)| {
                    health::port_hint(&name, port, &proc::listening(pid))
                });
                return Err(Error::Unhealthy {
                    timeout,
                    details,
                    port_hint,
                });
            }
            // Probe often at first (most apps are up within milliseconds), then back off.
            poll = (poll * 2).min(Duration::from_millis(20));
            std::thread::sleep(poll);
        }
    }

    /// Stops instances now (no drain) and waits until they are gone.
    pub(crate) fn stop_now(&self, app: &str, pids: &[u32]) {
        if let Some(h) = self.retire(app, pids, Duration::ZERO) {
            let _ = h.join();
        }
        self.reap(app);
    }

    /// Drops stopped instances that are gone (reaping our own children).
    fn reap(&self, app: &str) {
        let mut apps = self.lock();
        if let Some(rt) = apps.get_mut(app) {
            rt.instances.retain_mut(|i| {
                let gone = match i.child.as_mut() {
                    Some(c) => !matches!(c.try_wait(), Ok(None)),
                    None => !proc::alive(i.pid, i.started),
                };
                !(gone && i.phase == Phase::Stopping)
            });
        }
    }

    pub(crate) fn stop_app(&self, app: &str, who: &str) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        dir.set_stopped(true)
            .map_err(Error::io(format!("cannot mark `{app}` stopped")))?;
        let pids: Vec<u32> = self
            .lock()
            .get(app)
            .map(|rt| rt.instances.iter().map(|i| i.pid).collect())
            .unwrap_or_default();
        self.stop_now(app, &pids);
        Ok(())
    }

    pub(crate) fn start_app(&self, app: &str, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let Some(current) = dir.current() else {
            return Err(Error::NotDeployed {
                app: app.to_string(),
            });
        };
        let running = self.lock().get(app).is_some_and(|rt| {
            rt.instances
                .iter()
                .any(|i| i.generation == current && i.phase != Phase::Stopping)
        });
        if running && !dir.stopped() {
            return Ok(());
        }
        let g = read_generation(&dir, app, current)?;
        let id = release_of(app, &g)?;
        let manifest = self.store.trusted_manifest(&id)?;
        let tree = self.store.materialise_manifest(&id, &manifest)?.path;
        let deps = self.store.dependency_env(&manifest.depends)?;
        let mut started = Vec::new();
        for (process, index, spec) in self.specs(&dir, &g, &manifest, &tree, &deps)? {
            let pid = self
                .spawn_instance(app, &process, index, g.instance_gen(), spec, false)
                .map_err(Error::io(format!("cannot start {process}.{index}")));
            match pid {
                Ok(pid) => started.push(pid),
                Err(e) => {
                    self.stop_now(app, &started);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.wait_healthy(app, &started, &manifest, out) {
            self.stop_now(app, &started);
            return Err(Error::StartFailed {
                app: app.to_string(),
                cause: Box::new(e),
            });
        }
        dir.set_stopped(false)
            .map_err(Error::io(format!("cannot mark `{app}` started")))?;
        let mut apps = self.lock();
        for i in apps
            .entry(app.to_string())
            .or_default()
            .instances
            .iter_mut()
        {
            if started.contains(&i.pid) {
                i.supervised = true;
            }
        }
        drop(apps);
        let _ = who;
        Ok(())
    }
}

/// One new instance as seen by a health-wait round: pid, name, port, exit status, spec.
type Probe = (u32, String, Option<u16>, Option<String>, Arc<InstanceSpec>);

pub(crate) fn zero_values(env: &mut BTreeMap<String, String>) {
    use zeroize::Zeroize;
    for v in env.values_mut() {
        v.zeroize();
    }
}

/// The environment every process of a generation sees (before `PORT` and instance tags).
/// `deps` is what the release's dependencies give (`Store::dependency_env`: their `PATH`,
/// `DROVER_DEP_*` and `[provides] env`); the generation's config overrides it.
pub(crate) fn base_env(
    tag: &str,
    app: &str,
    g: &state::Generation,
    deps: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = deps.clone();
    env.extend(g.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert(proc::ENV_ROOT.into(), tag.to_string());
    env.insert("DROVER_APP".into(), app.to_string());
    env.insert("DROVER_VERSION".into(), g.version.clone());
    env.insert("DROVER_RELEASE".into(), g.release.clone());
    env.insert("DROVER_GENERATION".into(), g.generation.to_string());
    env
}

/// Runs a command to completion with output appended to `log` (`stamped`: each line with
/// its time); true when it exits 0.
pub(crate) fn run_to_end(
    cmd: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    log: &Path,
    how: &Confine,
    stamped: bool,
) -> std::io::Result<bool> {
    let mut env = env.clone();
    env.remove(proc::ENV_ROOT);
    env.remove(proc::ENV_INSTANCE);
    let mut child = proc::spawn(cmd, dir, &env, log, how, stamped)?;
    let status = child.wait()?;
    // All it wrote is in its log before anyone reads the log for it.
    crate::logs::flushed(child.id(), Duration::from_secs(2));
    Ok(status.success())
}

/// `run_to_end`, each line of output passed to `on_line` as it is written.
pub(crate) fn run_streaming(
    cmd: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    log: &Path,
    how: &Confine,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<bool> {
    use std::io::{BufRead, Seek};
    let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    std::thread::scope(|s| {
        let run = s.spawn(|| run_to_end(cmd, dir, env, log, how, true));
        let mut reader: Option<std::io::BufReader<std::fs::File>> = None;
        let mut partial = String::new();
        loop {
            let finished = run.is_finished();
            if reader.is_none()
                && let Ok(mut f) = std::fs::File::open(log)
                && f.seek(std::io::SeekFrom::Start(from)).is_ok()
            {
                reader = Some(std::io::BufReader::new(f));
            }
            if let Some(r) = reader.as_mut() {
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                    partial.push_str(&String::from_utf8_lossy(&buf));
                    buf.clear();
                    if partial.ends_with('\n') {
                        on_line(drover_wire::time::split_stamp(partial.trim_end_matches('\n')).1);
                        partial.clear();
                    }
                }
            }
            if finished {
                if !partial.is_empty() {
                    on_line(drover_wire::time::split_stamp(&partial).1);
                }
                return run
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Makes `path` a 0700 directory of `owner` (None: the agent's user); `fresh`: empty,
/// whatever was there before.
fn own_dir(path: &Path, owner: Option<&AppUser>, fresh: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let at = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if fresh {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(at(e)),
            _ => {}
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(at)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(at(e)),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(path).map_err(at)?;
    if !meta.is_dir() {
        return Err(at(std::io::Error::other("not a directory")));
    }
    if let Some(u) = owner
        && (meta.uid() != u.uid || meta.gid() != u.gid)
    {
        rustix::fs::chown(
            path,
            Some(rustix::fs::Uid::from_raw(u.uid)),
            Some(rustix::fs::Gid::from_raw(u.gid)),
        )
        .map_err(|e| at(e.into()))?;
    }
    if meta.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(at)?;
    }
    Ok(())
}

/// The last lines of `log`, without their stamps, for an error's details.
pub(crate) fn last_lines(name: &str, log: &Path) -> Vec<String> {
    proc::tail(log, 10)
        .into_iter()
        .map(|l| format!("  {name} | {}", drover_wire::time::split_stamp(&l).1))
        .collect()
}

/// The signal a process's `stop_signal` names.
pub(crate) fn stop_signal(s: Option<drover_config::StopSignal>) -> Signal {
    use drover_config::StopSignal as S;
    match s {
        None | Some(S::Term) => Signal::TERM,
        Some(S::Int) => Signal::INT,
        Some(S::Quit) => Signal::QUIT,
        Some(S::Hup) => Signal::HUP,
        Some(S::Usr1) => Signal::USR1,
        Some(S::Usr2) => Signal::USR2,
        Some(S::Winch) => Signal::WINCH,
    }
}

/// Sends each group its stop signal, waits up to its timeout, then SIGKILLs what is left.
pub(crate) fn stop_groups(targets: &[(u32, Duration, Signal)]) {
    for (pgid, _, signal) in targets {
        proc::signal_group(*pgid, *signal);
    }
    let start = Instant::now();
    for (pgid, timeout, _) in targets {
        while proc::group_alive(*pgid) && start.elapsed() < *timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        if proc::group_alive(*pgid) {
            proc::signal_group(*pgid, Signal::KILL);
        }
    }
}
