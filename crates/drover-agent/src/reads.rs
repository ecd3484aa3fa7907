//! What the agent answers without changing anything: status, history lines, logs (followed
//! or not) and the live generation's run spec.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use drover_wire::{AppStatus, CanaryStatus, InstanceStatus, Line, ProxyStatus, RunSpec};

use crate::instances::base_env;
use crate::{Agent, AppDir, Phase, Result, apps, proc, release_of, to_json};

/// A generation as one history line, shorter than the protocol's limit: one written before
/// config values were bounded shows the sizes of its values, not the values.
pub(crate) fn fit_line(mut g: drover_wire::GenerationInfo) -> serde_json::Value {
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
    pub(crate) fn status(&self, app: Option<&str>) -> Result<Vec<AppStatus>> {
        match app {
            Some(a) => {
                self.app_dir(a)?;
                Ok(vec![self.status_of(a)?])
            }
            None => apps(&self.root).iter().map(|a| self.status_of(a)).collect(),
        }
    }

    pub(crate) fn status_of(&self, app: &str) -> Result<AppStatus> {
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
                        started: proc::started_at(i.started),
                        protection: i.spec.protection.clone(),
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
        let depends = g
            .as_ref()
            .and_then(|g| g.release.parse::<drover_store::Hash>().ok())
            .and_then(|id| self.store.manifest(&id).ok())
            .map(|m| {
                m.depends
                    .iter()
                    .map(|(name, id)| {
                        let meta = self.store.meta(id).ok();
                        drover_wire::DependencyStatus {
                            name: name.clone(),
                            app: meta.as_ref().map(|m| m.app.clone()).unwrap_or_default(),
                            version: meta.map(|m| m.version).unwrap_or_default(),
                            release: id.to_hex(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(AppStatus {
            depends,
            app: app.to_string(),
            generation: current,
            from: g.as_ref().and_then(|g| g.from),
            version: g.as_ref().map(|g| g.version.clone()),
            release: g.as_ref().map(|g| g.release.clone()),
            state: state.into(),
            instances,
            proxy: proxy.map(|p| {
                let (hosts, tls) = rt
                    .and_then(|rt| rt.proxy_conf.as_ref())
                    .map(|c| c.describe(self.acme_status(app)))
                    .unwrap_or_default();
                ProxyStatus {
                    port: p.port,
                    paused: p.paused(),
                    releases: p.metrics(),
                    hosts,
                    tls,
                }
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

    /// The app's last `lines` lines per process (with `filter.since`: of every log of the
    /// app), then with `follow` whatever it writes next, to `stream`.
    pub(crate) fn logs(
        &self,
        app: &str,
        lines: usize,
        follow: bool,
        filter: &crate::logs::Filter,
        stream: &mut UnixStream,
    ) -> Result<serde_json::Value> {
        let dir = self.app_dir(app)?;
        let files: Vec<(String, PathBuf)> = if filter.since.is_some() {
            crate::logs::every_log(&dir.logs_dir())
        } else {
            match dir.current().and_then(|c| dir.generation(c)) {
                Some(g) => {
                    let manifest = self.store.manifest(&release_of(app, &g)?)?;
                    let mut names = vec![format!("{}-release.log", g.generation)];
                    for (name, p) in &manifest.runtime.process {
                        for i in 0..p.instances {
                            names.push(format!("{}-{name}-{i}.log", g.instance_gen()));
                        }
                    }
                    names
                        .into_iter()
                        .filter_map(|n| {
                            let who = crate::logs::owner(&n)?;
                            Some((who, dir.logs_dir().join(n)))
                        })
                        .filter(|(_, p)| p.exists())
                        .collect()
                }
                None => Vec::new(),
            }
        };
        for l in crate::logs::tail(&files, lines, filter) {
            let _ = drover_wire::write_line(stream, &Line::Log { log: l.show() });
        }
        if follow {
            crate::logs::follow(&dir.logs_dir(), filter, stream);
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::json!({"files": files.len()}))
    }

    pub(crate) fn run_spec(&self, app: &str) -> Result<RunSpec> {
        let (dir, g, manifest) = self.live_generation(app)?;
        let tree = self
            .store
            .materialise_manifest(&release_of(app, &g)?, &manifest)?
            .path;
        let user = self.users(&manifest)?.app;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let deps = self.store.dependency_env(&manifest.depends)?;
        let place = self.place(&dir, user.as_ref(), &format!("run-{nonce}"), &deps);
        place
            .make_dirs(user.as_ref())
            .map_err(crate::Error::io("cannot make the run's directories"))?;
        let mut env = base_env(&self.tag, app, &g, &deps);
        env.remove(proc::ENV_ROOT);
        place.put_env(&mut env);
        // Over the 0600 socket to the CLI, which puts them in the task's environment.
        for (k, v) in self.secrets_of(g.secrets.as_deref())? {
            env.insert(k, v.to_string());
        }
        Ok(RunSpec {
            dir: tree.display().to_string(),
            env,
            generation: g.generation,
            confine: place.confine,
            tmp: Some(place.tmp.display().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
}
