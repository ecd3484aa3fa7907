//! Recovery after an agent restart: the history made consistent with `current`, the live
//! generation's instances adopted or restarted, and every other process stopped.

use std::collections::HashMap;
use std::time::Duration;

use crate::instances::stop_groups;
use crate::{Agent, AppDir, Instance, apps, proc};

impl Agent {
    /// Finds the apps' processes after an agent restart: adopts the live generation's,
    /// stops any other (an interrupted deploy's), and restarts what is missing.
    pub(crate) fn recover(&self) {
        let found = proc::scan(&self.tag);
        let mut by_app: HashMap<String, Vec<proc::Found>> = HashMap::new();
        for f in found {
            let app = f.instance.split('/').next().unwrap_or("").to_string();
            by_app.entry(app).or_default().push(f);
        }
        // Stray processes, each stopped as an unknown one is: TERM, then KILL after 10 s.
        let mut strays: Vec<(u32, Duration, rustix::process::Signal)> = Vec::new();
        let stray = |pid: u32| (pid, Duration::from_secs(10), rustix::process::Signal::TERM);
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
                strays.extend(procs.iter().map(|f| stray(f.pid)));
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
            let deps = match self.store.dependency_env(&manifest.depends) {
                Ok(deps) => deps,
                Err(e) => {
                    eprintln!(
                        "drover agent: generation {} of {app}: {e}; leaving it stopped",
                        g.generation
                    );
                    continue;
                }
            };
            let specs = match self.specs(&dir, &g, &manifest, &tree, &deps) {
                Ok(specs) => specs,
                Err(e) => {
                    eprintln!("drover agent: {app}: {e}; leaving it stopped");
                    strays.extend(procs.iter().map(|f| stray(f.pid)));
                    continue;
                }
            };
            let stopped = dir.stopped();
            for (process, index, spec) in specs {
                let tag = format!("{app}/{}/{process}/{index}", g.instance_gen());
                let pos = procs.iter().position(|f| f.instance == tag);
                match (pos, stopped) {
                    (Some(p), false) => {
                        let f = procs.remove(p);
                        let interval = spec.health_interval;
                        let mut adopted = Instance {
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
                        };
                        adopted.probe_in(interval);
                        let mut apps = self.lock();
                        apps.entry(app.clone()).or_default().instances.push(adopted);
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
            strays.extend(procs.iter().map(|f| stray(f.pid)));
            if let Some(p) = &manifest.runtime.proxy {
                match self
                    .prepare_proxy(&app, Some(p))
                    .and_then(|plan| self.install_proxy(&app, plan))
                {
                    Ok(()) => self.refresh_routes(&app),
                    Err(e) => eprintln!("drover agent: {e}"),
                }
            }
        }
        for (app, procs) in by_app {
            eprintln!(
                "drover agent: stopping {} processes of unknown app {app}",
                procs.len()
            );
            strays.extend(procs.iter().map(|f| stray(f.pid)));
        }
        if !strays.is_empty() {
            eprintln!(
                "drover agent: stopping {} processes left by an interrupted deploy",
                strays.len()
            );
            stop_groups(&strays);
        }
        for app in apps(&self.root) {
            self.sweep_tmp(&AppDir::new(&self.root, &app));
        }
    }

    /// Removes the `$TMPDIR`s no instance of the app uses (those of instances stopped while
    /// no agent ran); a `drover run`'s own stays until that run ends.
    fn sweep_tmp(&self, dir: &AppDir) {
        let Ok(rd) = std::fs::read_dir(dir.tmp_dir()) else {
            return;
        };
        let apps = self.lock();
        let used: Vec<&std::path::Path> = apps
            .values()
            .flat_map(|rt| rt.instances.iter().map(|i| i.spec.place.tmp.as_path()))
            .collect();
        for e in rd.flatten() {
            let path = e.path();
            let run = e.file_name().to_string_lossy().starts_with("run-");
            if !run && !used.contains(&path.as_path()) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}
