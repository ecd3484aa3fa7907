//! The glue to each app's proxy: what it serves with, preparing and installing it at a
//! switch, and the routes it is given (the live generation's instances and the canary's).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proxy::{Backend, ProxyHandle, Routes};

use crate::{Agent, AppDir, Error, Instance, Phase, Result};

/// The settings an app's proxy serves with: what `[proxy]` says besides how to switch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProxyConf {
    port: u16,
    max_body: u64,
    request_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Option<Duration>,
    body_timeout: Option<Duration>,
    max_connections: Option<usize>,
    /// The host names (and path prefix) it claims of a shared port; none: its port alone.
    claim: drover_proxy::Claim,
}

impl ProxyConf {
    fn of(cfg: &drover_config::Proxy) -> ProxyConf {
        ProxyConf {
            port: cfg.port,
            max_body: cfg.max_body,
            request_timeout: cfg.request_timeout.0,
            header_timeout: cfg.header_timeout.0,
            idle_timeout: cfg.idle_timeout.map(|s| s.0),
            body_timeout: cfg.body_timeout.map(|s| s.0),
            max_connections: cfg.max_connections.map(|n| n.get()),
            claim: drover_proxy::Claim {
                hosts: cfg.hosts.clone(),
                path_prefix: cfg.path_prefix.clone(),
                default: cfg.default,
            },
        }
    }

    fn settings(&self) -> drover_proxy::Settings {
        let d = drover_proxy::Settings::default();
        drover_proxy::Settings {
            max_body: self.max_body,
            request_timeout: self.request_timeout,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            body_timeout: self.body_timeout.unwrap_or(d.body_timeout),
            max_connections: self.max_connections,
            ..d
        }
    }
}

/// What a generation's `[proxy]` asks of the app's proxy: made ready before its switch
/// (a port in use fails the deploy before anything starts) and put in place by the switch
/// (`install_proxy`). Until then nothing changes what serves.
pub(crate) enum ProxyPlan {
    /// The proxy serves as asked already (or there is none and none is asked for).
    Keep,
    /// A new proxy on this listener (newly bound, or the live proxy's own socket when only
    /// its settings change) takes over from the app's proxy.
    Serve(std::net::TcpListener, ProxyConf),
    /// Behind the port that apps share by host name (this listener opens it when no app
    /// is behind it yet).
    Attach(Option<std::net::TcpListener>, ProxyConf),
    /// No `[proxy]` any more: the app's proxy stops.
    Remove,
}

impl Agent {
    pub(crate) fn proxies_now(&self) -> HashMap<String, ProxyHandle> {
        self.proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn proxy(&self, app: &str) -> Option<ProxyHandle> {
        self.proxies_now().remove(app)
    }

    pub(crate) fn runtime(&self) -> std::io::Result<&drover_proxy::Runtime> {
        if let Some(rt) = self.proxy_rt.get() {
            return Ok(rt);
        }
        let rt = drover_proxy::Runtime::new()?;
        Ok(self.proxy_rt.get_or_init(|| rt))
    }

    pub(crate) fn proxy_of(&self, app: &str) -> Result<ProxyHandle> {
        self.app_dir(app)?;
        self.proxy(app).ok_or_else(|| Error::NoProxy {
            app: app.to_string(),
        })
    }

    /// Makes ready what `cfg` (a generation's `[proxy]`) asks of the app's proxy; changes
    /// nothing that serves (see `ProxyPlan`).
    pub(crate) fn prepare_proxy(
        &self,
        app: &str,
        cfg: Option<&drover_config::Proxy>,
    ) -> Result<ProxyPlan> {
        let current = self.proxy(app);
        let Some(cfg) = cfg else {
            return Ok(match current {
                Some(_) => ProxyPlan::Remove,
                None => ProxyPlan::Keep,
            });
        };
        let want = ProxyConf::of(cfg);
        if current.is_some()
            && self.lock().get(app).and_then(|rt| rt.proxy_conf.as_ref()) == Some(&want)
        {
            return Ok(ProxyPlan::Keep);
        }
        let claimed = |why: String| Error::PortClaimed {
            app: app.to_string(),
            port: want.port,
            why,
        };
        let front = self.front(want.port);
        let others: Vec<String> = front
            .iter()
            .flat_map(|f| f.apps())
            .map(|(a, _)| a)
            .filter(|a| a != app)
            .collect();
        if !want.claim.hosts.is_empty() {
            if let Some(f) = &front {
                return match f.conflict(app, &want.claim) {
                    Some(why) => Err(claimed(why)),
                    None => Ok(ProxyPlan::Attach(None, want)),
                };
            }
            let alone = self
                .proxies_now()
                .into_iter()
                .find(|(a, p)| a != app && p.port == want.port && !p.shared());
            if let Some((other, _)) = alone {
                return Err(claimed(format!(
                    "app `{other}` holds it alone (it names no `[proxy] hosts`)"
                )));
            }
        } else if !others.is_empty() {
            return Err(claimed(format!(
                "apps {} share it by host name: name `[proxy] hosts` for `{app}` too",
                others.join(", ")
            )));
        }
        // Other settings on the port this app serves now (alone, or the last behind a shared
        // one): a new proxy takes over the same socket, not bound again.
        let own = current
            .as_ref()
            .filter(|p| p.port == want.port)
            .map(|p| p.listener().try_clone());
        if let Some(l) = own {
            let l = l.map_err(Error::io(format!(
                "cannot take over the socket of the proxy of `{app}`"
            )))?;
            return Ok(if want.claim.hosts.is_empty() {
                ProxyPlan::Serve(l, want)
            } else {
                ProxyPlan::Attach(Some(l), want)
            });
        }
        let inherited = self
            .inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&want.port);
        let listener = match inherited {
            Some(l) => Ok(l),
            None => std::net::TcpListener::bind(("0.0.0.0", want.port)),
        }
        .map_err(|err| Error::PortInUse {
            app: app.to_string(),
            port: want.port,
            err,
        })?;
        Ok(if want.claim.hosts.is_empty() {
            ProxyPlan::Serve(listener, want)
        } else {
            ProxyPlan::Attach(Some(listener), want)
        })
    }

    /// Starts accepting on every shared port (after recovery has put each app behind its).
    pub(crate) fn start_fronts(&self) {
        self.recovering
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let fronts: Vec<drover_proxy::FrontHandle> = self
            .fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for f in fronts {
            f.start();
        }
    }

    /// The shared port `port`, if apps are behind it.
    fn front(&self, port: u16) -> Option<drover_proxy::FrontHandle> {
        self.fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&port)
            .filter(|f| !f.apps().is_empty())
            .cloned()
    }

    /// Puts a prepared proxy in place: the app's public port and settings become the ones
    /// of the generation now live. The proxy it replaces stops accepting and finishes its
    /// connections (routed like the new one).
    pub(crate) fn install_proxy(&self, app: &str, plan: ProxyPlan) -> Result<()> {
        let (handle, conf) = match plan {
            ProxyPlan::Keep => return Ok(()),
            ProxyPlan::Remove => (None, None),
            ProxyPlan::Serve(listener, conf) => {
                // Routed from its first connection: an agent taking over serves at once.
                let handle = self
                    .runtime()
                    .and_then(|rt| rt.serve(app, listener, conf.settings(), self.routes_for(app)))
                    .map_err(Error::io(format!(
                        "cannot start the proxy of `{app}` on port {}",
                        conf.port
                    )))?;
                (Some(handle), Some(conf))
            }
            ProxyPlan::Attach(listener, conf) => {
                let cannot = || format!("cannot start the proxy of `{app}` on port {}", conf.port);
                let front = match (self.front(conf.port), listener) {
                    (Some(f), _) => f,
                    (None, Some(l)) => {
                        let f = self
                            .runtime()
                            .and_then(|rt| rt.shared_front(l, conf.settings()))
                            .map_err(Error::io(cannot()))?;
                        self.fronts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(conf.port, f.clone());
                        f
                    }
                    (None, None) => {
                        return Err(Error::io(cannot())(std::io::Error::other(
                            "the port's listener has gone",
                        )));
                    }
                };
                let handle = front
                    .attach(
                        app,
                        conf.claim.clone(),
                        conf.settings(),
                        self.routes_for(app),
                    )
                    .map_err(|why| Error::PortClaimed {
                        app: app.to_string(),
                        port: conf.port,
                        why,
                    })?;
                // A recovering agent starts its shared ports once every app is behind them.
                if !self.recovering.load(std::sync::atomic::Ordering::SeqCst) {
                    front.start();
                }
                (Some(handle), Some(conf))
            }
        };
        let old = {
            let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
            match &handle {
                Some(h) => proxies.insert(app.to_string(), h.clone()),
                None => proxies.remove(app),
            }
        };
        self.lock().entry(app.to_string()).or_default().proxy_conf = conf;
        if let Some(old) = old {
            if let Some(h) = &handle {
                if old.paused() {
                    h.pause();
                }
                old.set_routes(self.routes_for(app));
            }
            // Behind the same shared port, the new one has taken its place already.
            old.shutdown();
        }
        // A shared port with no app left behind it has stopped: its socket goes.
        self.fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, f| !f.apps().is_empty());
        Ok(())
    }

    /// Points the app's proxy at the live generation's healthy instances (and the canary's).
    pub(crate) fn refresh_routes(&self, app: &str) {
        if let Some(proxy) = self.proxy(app) {
            proxy.set_routes(self.routes_for(app));
        }
    }

    /// The live generation's healthy instances (and the canary's), as the proxy routes.
    fn routes_for(&self, app: &str) -> Routes {
        let cached = self.lock().get(app).and_then(|rt| rt.live_gen);
        let live = cached.or_else(|| {
            let dir = AppDir::new(&self.root, app);
            dir.current()
                .and_then(|c| dir.generation(c))
                .map(|g| g.instance_gen())
        });
        let apps = self.lock();
        let Some(rt) = apps.get(app) else {
            return Routes::default();
        };
        route_table(&rt.instances, live, rt.canary)
    }
}

/// The routes to an app's `instances`: of generation `live`, those in traffic (running,
/// not kept warm) that are healthy, or all of them when none is; with a `canary` (its
/// generation and weight), all of the canary's in traffic, at its weight.
fn route_table(instances: &[Instance], live: Option<u64>, canary: Option<(u64, u8)>) -> Routes {
    let pick = |gen_n: Option<u64>, strict: bool| -> Vec<Arc<Backend>> {
        instances
            .iter()
            .filter(|i| {
                Some(i.generation) == gen_n && i.phase == Phase::Running && i.warm_until.is_none()
            })
            .filter(|i| !strict || i.healthy)
            .filter_map(|i| i.backend.clone())
            .collect()
    };
    let mut stable = pick(live, true);
    if stable.is_empty() {
        // Better an instance that failed a probe than no instance at all.
        stable = pick(live, false);
    }
    let (canary, weight) = match canary {
        Some((g, w)) => (pick(Some(g), false), w),
        None => (Vec::new(), 0),
    };
    Routes {
        stable,
        canary,
        canary_weight: weight,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Instant;

    use super::*;
    use crate::InstanceSpec;

    fn instance(generation: u64, port: u16, healthy: bool) -> Instance {
        let spec = Arc::new(InstanceSpec {
            app: "web".into(),
            command: "true".into(),
            dir: PathBuf::new(),
            env: BTreeMap::new(),
            http: true,
            health_path: None,
            health_interval: Duration::from_secs(10),
            log: PathBuf::new(),
            stop_timeout: Duration::ZERO,
            stop_signal: rustix::process::Signal::TERM,
            release: "r".into(),
            secrets: None,
            place: crate::instances::Place {
                confine: Default::default(),
                data: PathBuf::new(),
                tmp: PathBuf::new(),
            },
            protection: String::new(),
            data_owner: None,
        });
        Instance {
            healthy,
            ..Instance::running(spec, "web", 0, generation, u32::from(port), 0, Some(port))
        }
    }

    fn ports(backends: &[Arc<Backend>]) -> Vec<u16> {
        backends.iter().map(|b| b.addr.port()).collect()
    }

    #[test]
    fn the_live_generations_healthy_instances_take_the_traffic() {
        let instances = [
            instance(1, 8001, true),
            instance(2, 8002, true),
            instance(2, 8003, false),
            instance(2, 8004, true),
        ];
        let r = route_table(&instances, Some(2), None);
        assert_eq!(ports(&r.stable), [8002, 8004]);
        assert!(r.canary.is_empty());
        assert_eq!(r.canary_weight, 0);
    }

    #[test]
    fn with_no_healthy_instance_the_live_ones_still_serve() {
        let instances = [
            instance(1, 8001, true),
            instance(2, 8002, false),
            instance(2, 8003, false),
        ];
        let r = route_table(&instances, Some(2), None);
        assert_eq!(ports(&r.stable), [8002, 8003]);
    }

    #[test]
    fn stopping_restarting_warm_and_portless_instances_are_out_of_traffic() {
        let mut stopping = instance(2, 8001, true);
        stopping.phase = Phase::Stopping;
        let mut restarting = instance(2, 8002, true);
        restarting.phase = Phase::Backoff(Instant::now());
        let mut warm = instance(2, 8003, true);
        warm.warm_until = Some(Instant::now());
        let mut worker = instance(2, 8004, true);
        worker.backend = None;
        let instances = [stopping, restarting, warm, worker];
        let r = route_table(&instances, Some(2), None);
        assert!(r.stable.is_empty());
        // Not even as the fallback for want of a healthy one.
        let r = route_table(&instances[..3], Some(2), Some((2, 50)));
        assert!(r.stable.is_empty() && r.canary.is_empty());
    }

    #[test]
    fn no_live_generation_or_no_instance_routes_nowhere() {
        let r = route_table(&[instance(1, 8001, true)], None, None);
        assert!(r.stable.is_empty());
        let r = route_table(&[], Some(1), Some((2, 10)));
        assert!(r.stable.is_empty() && r.canary.is_empty());
        assert_eq!(r.canary_weight, 10);
    }

    #[test]
    fn a_canary_gets_all_its_instances_at_its_weight() {
        let instances = [
            instance(1, 8001, true),
            instance(2, 8002, false),
            instance(2, 8003, true),
        ];
        for weight in [0, 1, 99, 100] {
            let r = route_table(&instances, Some(1), Some((2, weight)));
            assert_eq!(ports(&r.stable), [8001]);
            // Healthy or not: the canary's health wait passed, and its probes do not drop it.
            assert_eq!(ports(&r.canary), [8002, 8003]);
            assert_eq!(r.canary_weight, weight);
        }
    }
}
