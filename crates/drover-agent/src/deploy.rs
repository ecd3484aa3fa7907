//! Deploys and switches: a new generation started beside the live one and switched to once
//! healthy, rollbacks, fleet confirms, canaries (promote, abort) and the app's deploy lock.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use drover_store::Manifest;

use crate::instances::{base_env, last_lines, run_streaming, zero_values};
use crate::layers::Layers;
use crate::routes::ProxyPlan;
use crate::{
    Agent, AppDir, Error, Instance, Out, Phase, Result, proc, read_generation, release_of, state,
};

impl Agent {
    /// A fleet deploy is live here but not yet kept: waits `secs` for the deployer's
    /// `Confirm`. Without one (it died, or the network between us did) the app returns to
    /// the generation it had, and the host's audit log says why.
    pub(crate) fn await_confirm(
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
        // Some(true): confirmed; Some(false): the deployer declined; None: no word in time.
        let word = match drover_wire::read_line(reader) {
            Ok(Some(line)) => serde_json::from_str::<drover_wire::Confirm>(&line)
                .ok()
                .map(|c| c.confirm),
            _ => None,
        };
        let _ = reader.get_ref().set_read_timeout(None);
        if word == Some(true) {
            return Ok(());
        }
        let dir = self.app_dir(app)?;
        let live = dir.current().and_then(|c| dir.generation(c));
        let from = live.as_ref().and_then(|g| g.from);
        let reason = match word {
            Some(_) => "the deployer declined the new generation".to_string(),
            None => format!("the deployer did not confirm within {secs}s"),
        };
        let _ = dir.record(
            live.as_ref().map_or(0, |g| g.generation),
            "unconfirmed",
            Some(reason.clone()),
        );
        let who_revert = format!("{who} (unconfirmed)");
        // The fleet's revert rule, the same as its all-or-back.
        let reverted = match drover_rollout::revert_to(from) {
            drover_rollout::Revert::Rollback { generation } => {
                self.rollback(app, Some(generation), &who_revert, out)
            }
            drover_rollout::Revert::Stop => self.stop_app(app, &who_revert),
        };
        let entry = drover_wire::AuditEntry::new(
            state::now(),
            who,
            environment.as_deref(),
            app,
            "auto-revert",
        )
        .moved(
            live.as_ref().map(|g| g.version.clone()),
            live.as_ref().map(|g| g.generation),
            from,
        )
        .ended(
            if reverted.is_ok() {
                "reverted"
            } else {
                "failed"
            },
            Some(reason.clone()),
        );
        let _ = state::append_audit(&self.root, &entry);
        reverted?;
        Err(Error::Unconfirmed {
            app: app.to_string(),
            reason,
            back_on: from,
        })
    }

    pub(crate) fn deploy(
        &self,
        query: &str,
        who: &str,
        canary: Option<u8>,
        layers: Layers,
        run_hook: bool,
        out: &mut Out,
    ) -> Result<String> {
        let (id, manifest) = self.release_to_run(query)?;
        let app = manifest.app.clone();
        let _guard = self.claim(&app, who)?;
        if let Some((generation, _)) = self.lock().get(&app).and_then(|rt| rt.canary) {
            return Err(Error::CanaryInProgress { app, generation });
        }
        out.event(format!(
            "deploying {}@{} ({})",
            app,
            manifest.version,
            id.short()
        ));
        let (dir, g) = self.next_generation(&id, &manifest, who, canary, layers)?;
        dir.create()
            .map_err(Error::io(format!("cannot create the state of `{app}`")))?;
        dir.write_generation(&g)
            .map_err(write_failed(&app, g.generation))?;
        self.switch(&dir, &g, &manifest, run_hook, canary, out)?;
        Ok(app)
    }

    /// A stored release, its signature checked, within the bounds a release may ask for.
    fn release_to_run(&self, query: &str) -> Result<(drover_store::Hash, Manifest)> {
        let id = self.store.resolve(query)?;
        let manifest = self.store.trusted_manifest(&id)?;
        manifest.runtime.check_bounds().map_err(|(m, h)| {
            Error::bounds((
                format!("release {}@{}: {m}", manifest.app, manifest.version),
                h,
            ))
        })?;
        Ok((id, manifest))
    }

    /// The generation a deploy of `manifest` with `layers` would make next (not written),
    /// its config merged and checked.
    fn next_generation(
        &self,
        id: &drover_store::Hash,
        manifest: &Manifest,
        who: &str,
        canary: Option<u8>,
        layers: Layers,
    ) -> Result<(AppDir, state::Generation)> {
        let app = manifest.app.clone();
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
                return Err(Error::UnknownProcess {
                    app,
                    version: manifest.version.clone(),
                    process: p.clone(),
                    processes: manifest.runtime.process.keys().cloned().collect(),
                });
            }
        }
        g.env = self.check_config(manifest, &g)?.0;
        // Every user it names exists here, before anything is written or started.
        self.users(manifest)?;
        Ok((dir, g))
    }
    /// The release hook of `query`, run as a deploy with `layers` would run it, its output
    /// sent line by line; no generation is made (a fleet deploy runs it once, then deploys
    /// with the hook skipped).
    pub(crate) fn release_hook(
        &self,
        query: &str,
        who: &str,
        layers: Layers,
        out: &mut Out,
    ) -> Result<()> {
        let (id, manifest) = self.release_to_run(query)?;
        let app = manifest.app.clone();
        let _guard = self.claim(&app, who)?;
        let Some(hook) = manifest.runtime.hooks.release.clone() else {
            out.event("the release has no release hook");
            return Ok(());
        };
        let (dir, g) = self.next_generation(&id, &manifest, who, None, layers)?;
        dir.create()
            .map_err(Error::io(format!("cannot create the state of `{app}`")))?;
        let tree = self.store.materialise_manifest(&id, &manifest)?.path;
        // Each dependency's tree materialised (and checked) before the hook starts.
        let deps = self.store.dependency_env(&manifest.depends)?;
        self.run_release_hook(&dir, &g, &manifest, &hook, &tree, &deps, out)
    }

    /// Runs `hook` for generation `g` in its tree, as the app's user, confined, with its
    /// config, dependencies and secrets; its output goes to the generation's release log
    /// and, line by line, to the client.
    #[allow(clippy::too_many_arguments)]
    fn run_release_hook(
        &self,
        dir: &AppDir,
        g: &state::Generation,
        manifest: &Manifest,
        hook: &str,
        tree: &std::path::Path,
        deps: &BTreeMap<String, String>,
        out: &mut Out,
    ) -> Result<()> {
        out.event(format!("running release hook `{hook}`"));
        let log = dir.logs_dir().join(format!("{}-release.log", g.generation));
        let mut env = base_env(&self.tag, &manifest.app, g, deps);
        let user = self.users(manifest)?.app;
        let place = self.place(
            dir,
            user.as_ref(),
            &format!("{}-release", g.generation),
            deps,
        );
        place
            .make_dirs(user.as_ref())
            .map_err(Error::io("cannot make the release hook's directories"))?;
        place.put_env(&mut env);
        for (k, v) in self.secrets_of(g.secrets.as_deref())? {
            env.insert(k, v.to_string());
        }
        let ran = run_streaming(hook, tree, &env, &log, &place.confine, |line| out.log(line));
        zero_values(&mut env);
        let _ = std::fs::remove_dir_all(&place.tmp);
        match ran {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::HookFailed {
                hook: hook.to_string(),
                details: last_lines("release", &log),
            }),
            Err(e) => Err(Error::io("cannot run release hook")(e)),
        }
    }

    pub(crate) fn rollback(
        &self,
        app: &str,
        to: Option<u64>,
        who: &str,
        out: &mut Out,
    ) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let current = dir.current();
        let history = dir.history();
        let target = match to {
            Some(n) => history.iter().find(|g| g.generation == n).ok_or_else(|| {
                Error::UnknownGeneration {
                    app: app.to_string(),
                    generation: n,
                }
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
                    .ok_or_else(|| Error::NoEarlierGeneration {
                        app: app.to_string(),
                    })?
            }
        };
        if Some(target.generation) == current {
            return Err(Error::AlreadyLive {
                app: app.to_string(),
                generation: target.generation,
            });
        }
        let full = read_generation(&dir, app, target.generation)?;
        let manifest = match self.store.trusted_manifest(&release_of(app, &full)?) {
            Err(drover_store::Error::NotFound(_)) => {
                return Err(Error::ReleaseCollected {
                    app: app.to_string(),
                    generation: full.generation,
                    version: full.version.clone(),
                    release: full.release[..12.min(full.release.len())].to_string(),
                });
            }
            r => r?,
        };
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
        dir.write_generation(&g)
            .map_err(write_failed(app, g.generation))?;
        if !warm_pids.is_empty() {
            out.event(format!(
                "generation {} is still warm: switching without a start",
                target.generation
            ));
            // Nothing of its own to stop; recorded failed unless it goes live.
            let attempt = Attempt::new(self, &dir, app, g.generation);
            let plan = self
                .prepare_proxy(app, manifest.runtime.proxy.as_ref())
                .inspect_err(|e| attempt.fail(e.to_string()))?;
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
    pub(crate) fn claim(&self, app: &str, who: &str) -> Result<ClaimGuard<'_>> {
        let mut apps = self.lock();
        let rt = apps.entry(app.to_string()).or_default();
        if let Some((holder, since)) = &rt.deploying {
            return Err(Error::Locked {
                app: app.to_string(),
                holder: holder.clone(),
                since: *since,
            });
        }
        rt.deploying = Some((who.to_string(), state::now()));
        Ok(ClaimGuard {
            agent: self,
            app: app.to_string(),
        })
    }

    /// Starts generation `g`'s instances beside the old ones, waits for health, switches,
    /// then stops the old ones. On failure the old ones are never touched.
    pub(crate) fn switch(
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
        let fail = |cause: Error| -> Error {
            attempt.fail(cause.to_string());
            Error::DeployFailed {
                app: app.clone(),
                version: g.version.clone(),
                generation: g.generation,
                cause: Box::new(cause),
            }
        };
        let id = release_of(&app, g)?;
        let checked = self
            .store
            .materialise_manifest(&id, manifest)
            .map_err(|e| fail(e.into()))?;
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
        // Each dependency's tree materialised (and checked) before anything starts.
        let deps = self
            .store
            .dependency_env(&manifest.depends)
            .map_err(|e| fail(e.into()))?;
        let plan = self
            .prepare_proxy(&app, manifest.runtime.proxy.as_ref())
            .map_err(fail)?;
        if canary.is_some() && !matches!(plan, ProxyPlan::Keep) {
            return Err(fail(Error::CanaryChangesProxy));
        }

        if run_hook && let Some(hook) = &manifest.runtime.hooks.release {
            self.run_release_hook(dir, g, manifest, hook, &tree, &deps, out)
                .map_err(fail)?;
        }

        let specs = self.specs(dir, g, manifest, &tree, &deps).map_err(fail)?;
        out.event(match specs.len() {
            1 => "starting 1 instance".to_string(),
            n => format!("starting {n} instances"),
        });
        for (process, index, spec) in specs {
            match self.spawn_instance(&app, &process, index, g.generation, spec, false) {
                Ok(pid) => attempt.started.borrow_mut().push(pid),
                Err(e) => {
                    return Err(fail(Error::io(format!("cannot start {process}.{index}"))(
                        e,
                    )));
                }
            }
        }
        let started = attempt.started.borrow().clone();
        if canary.is_none() {
            // Prepared while the instances start: the switch will be a single rename.
            dir.stage_current(g.generation)
                .map_err(|e| fail(Error::io("cannot stage the switch")(e)))?;
        }
        self.wait_healthy(&app, &started, manifest, out)
            .map_err(fail)?;
        let healthy_at = Instant::now();

        if let Some(weight) = canary {
            dir.record(g.generation, "canary", None)
                .map_err(|e| fail(Error::io("cannot record the canary")(e)))?;
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
            let e = Error::io("cannot switch `current`")(e);
            if let Some(a) = attempt {
                a.fail(e.to_string());
            }
            e
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
            eprintln!("drover agent: {app}: {e}");
            out.event(format!("the proxy did not change: {e}"));
        }
        self.refresh_routes(&app);
        let moved = healthy_at.elapsed();
        dir.sync()
            .map_err(Error::io(format!("cannot sync the switch of `{app}`")))?;
        dir.record(g.generation, "live", None)
            .map_err(record_failed(&app, g.generation))?;
        dir.set_stopped(false)
            .map_err(Error::io(format!("cannot mark `{app}` started")))?;
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

    pub(crate) fn promote(&self, app: &str, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let Some((gen_n, _)) = self.lock().get(app).and_then(|rt| rt.canary) else {
            return Err(Error::NoCanary {
                app: app.to_string(),
            });
        };
        let g = read_generation(&dir, app, gen_n)?;
        let manifest = self.store.trusted_manifest(&release_of(app, &g)?)?;
        let pids = self.pids_of(app, gen_n);
        let plan = self.prepare_proxy(app, manifest.runtime.proxy.as_ref())?;
        out.event(format!("promoting generation {gen_n} to all traffic"));
        self.go_live(&dir, &g, &manifest, &pids, Instant::now(), plan, None, out)
    }

    pub(crate) fn abort(&self, app: &str, who: &str, out: &mut Out) -> Result<()> {
        let dir = self.app_dir(app)?;
        let _guard = self.claim(app, who)?;
        let Some((gen_n, _)) = self.lock().get_mut(app).and_then(|rt| rt.canary.take()) else {
            return Err(Error::NoCanary {
                app: app.to_string(),
            });
        };
        self.refresh_routes(app);
        dir.record(gen_n, "aborted", Some(format!("aborted by {who}")))
            .map_err(record_failed(app, gen_n))?;
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

pub(crate) struct ClaimGuard<'a> {
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

/// A generation's file that could not be written.
pub(crate) fn write_failed(app: &str, generation: u64) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!("cannot write generation {generation} of `{app}`"))
}

/// A generation's outcome that could not be recorded.
fn record_failed(app: &str, generation: u64) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!(
        "cannot record the outcome of generation {generation} of `{app}`"
    ))
}
