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
    /// TLS on `port`, with plain HTTP on `http_port` (redirecting to https, or not).
    tls: Option<drover_config::Tls>,
    http_port: u16,
    redirect: bool,
    acme: Option<drover_config::Acme>,
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
                redirect: None,
            },
            tls: cfg.tls.clone(),
            http_port: cfg.http_port(),
            redirect: cfg.redirects(),
            acme: cfg.acme.clone(),
        }
    }

    /// Its hosts, and how its TLS stands (`acme`: what the app's ACME renewer last said).
    pub(crate) fn describe(&self, acme: Option<String>) -> (Vec<String>, Option<String>) {
        let tls = self.tls.as_ref().map(|t| match t {
            drover_config::Tls::Files { cert, .. } => format!("certificate {}", cert.display()),
            drover_config::Tls::Acme(_) => format!(
                "ACME: {}",
                acme.unwrap_or_else(|| "ordering a certificate".into())
            ),
        });
        (self.claim.hosts.clone(), tls)
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
    /// Behind the port that apps share by host name or that speaks TLS (a listener opens
    /// it when no app is behind it yet), and with TLS behind its plain-HTTP port too.
    Attach {
        main: Option<std::net::TcpListener>,
        http: Option<std::net::TcpListener>,
        conf: ProxyConf,
    },
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
        let answers = self.challenges.clone();
        rt.set_challenges(Arc::new(move |token| answers.get(token)));
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
        if !want.claim.hosts.is_empty() || want.tls.is_some() {
            self.check_certificates(app, &want)?;
            let main = self.port_for(app, want.port, &want.claim, want.tls.is_some(), &current)?;
            let http = match want.tls {
                Some(_) => self.port_for(app, want.http_port, &want.claim, false, &current)?,
                None => None,
            };
            return Ok(ProxyPlan::Attach {
                main,
                http,
                conf: want,
            });
        }
        if let Some(f) = self.front(want.port) {
            let others = f.apps_besides(app);
            if !others.is_empty() {
                return Err(Error::PortClaimed {
                    app: app.to_string(),
                    port: want.port,
                    why: format!(
                        "apps {} share it by host name: name `[proxy] hosts` for `{app}` too",
                        others.join(", ")
                    ),
                });
            }
        }
        let listener = match self.own_listener(app, want.port, &current)? {
            Some(l) => l,
            None => self.bind(app, want.port)?,
        };
        Ok(ProxyPlan::Serve(listener, want))
    }

    /// What app `app` needs to be behind the shared `port` with `claim` (`tls`: a TLS port):
    /// nothing when the port is open already, else its listener (the app's own, one handed
    /// over, or newly bound). A claim another app holds, a port of the other kind or one
    /// another app holds alone is refused, naming that app.
    fn port_for(
        &self,
        app: &str,
        port: u16,
        claim: &drover_proxy::Claim,
        tls: bool,
        current: &Option<ProxyHandle>,
    ) -> Result<Option<std::net::TcpListener>> {
        let claimed = |why: String| Error::PortClaimed {
            app: app.to_string(),
            port,
            why,
        };
        if let Some(f) = self.front(port) {
            let others = f.apps_besides(app);
            if f.is_tls() != tls && !others.is_empty() {
                return Err(claimed(format!(
                    "it serves {} for apps {}",
                    if f.is_tls() { "TLS" } else { "plain HTTP" },
                    others.join(", ")
                )));
            }
            if f.is_tls() == tls {
                return match f.conflict(app, claim) {
                    Some(why) => Err(claimed(why)),
                    None => Ok(None),
                };
            }
        }
        let alone = self.proxies_now().into_iter().find(|(a, p)| {
            a != app && !p.shared() && p.listeners().iter().any(|(n, _)| *n == port)
        });
        if let Some((other, _)) = alone {
            return Err(claimed(format!(
                "app `{other}` holds it alone (it names no `[proxy] hosts`)"
            )));
        }
        Ok(Some(match self.own_listener(app, port, current)? {
            Some(l) => l,
            None => self.bind(app, port)?,
        }))
    }

    /// The app's own socket of `port`, when its proxy serves there now: a new proxy takes it
    /// over, it is not bound again.
    fn own_listener(
        &self,
        app: &str,
        port: u16,
        current: &Option<ProxyHandle>,
    ) -> Result<Option<std::net::TcpListener>> {
        let Some(p) = current else {
            return Ok(None);
        };
        match p.listeners().into_iter().find(|(n, _)| *n == port) {
            Some((_, l)) => l.try_clone().map(Some).map_err(Error::io(format!(
                "cannot take over the socket of the proxy of `{app}`"
            ))),
            None => Ok(None),
        }
    }

    /// `port`'s socket: handed over by the agent this one replaced, or bound now.
    fn bind(&self, app: &str, port: u16) -> Result<std::net::TcpListener> {
        let inherited = self
            .inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
        match inherited {
            Some(l) => Ok(l),
            None => std::net::TcpListener::bind(("0.0.0.0", port)),
        }
        .map_err(|err| Error::PortInUse {
            app: app.to_string(),
            port,
            err,
        })
    }

    /// `[proxy] tls = { cert, key }`: the pair loads, is valid now and covers every host.
    fn check_certificates(&self, app: &str, want: &ProxyConf) -> Result<()> {
        let Some(drover_config::Tls::Files { cert, key }) = &want.tls else {
            return Ok(());
        };
        let bad = |e: drover_proxy::tls::TlsError| Error::Certificate {
            app: app.to_string(),
            hint: e.hint(),
            message: e.to_string(),
        };
        let pair = drover_proxy::tls::load_pair(cert, key).map_err(bad)?;
        if let Some(h) = want.claim.hosts.iter().find(|h| !pair.covers(h)) {
            return Err(Error::Certificate {
                app: app.to_string(),
                message: format!(
                    "{}: the certificate does not cover {h} (it names {})",
                    cert.display(),
                    pair.names.join(", ")
                ),
                hint: Some(
                    "give a certificate whose names include every host in `[proxy] hosts`".into(),
                ),
            });
        }
        Ok(())
    }

    /// What the app's ACME renewer last said.
    pub(crate) fn acme_status(&self, app: &str) -> Option<String> {
        self.acme
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .map(|s| s.status.clone())
            .filter(|s| !s.is_empty())
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

    /// The shared port `port`: open already, or opened on `listener`.
    fn open_front(
        &self,
        app: &str,
        port: u16,
        listener: Option<std::net::TcpListener>,
        conf: &ProxyConf,
        tls: bool,
    ) -> Result<drover_proxy::FrontHandle> {
        let cannot = || format!("cannot start the proxy of `{app}` on port {port}");
        if let Some(f) = self.front(port).filter(|f| f.is_tls() == tls) {
            return Ok(f);
        }
        let Some(l) = listener else {
            return Err(Error::io(cannot())(std::io::Error::other(
                "the port's listener has gone",
            )));
        };
        let f = self
            .runtime()
            .and_then(|rt| rt.shared_front(l, conf.settings(), tls))
            .map_err(Error::io(cannot()))?;
        self.fronts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port, f.clone());
        Ok(f)
    }

    /// The certificates of the app's hosts on its TLS port: its files (watched), or those
    /// ordered by ACME (once they are issued; meanwhile the app serves plain HTTP only).
    fn serve_certificates(
        &self,
        app: &str,
        front: &drover_proxy::FrontHandle,
        plain: &drover_proxy::FrontHandle,
        conf: &ProxyConf,
    ) -> Result<()> {
        let (cert, key) = match &conf.tls {
            Some(drover_config::Tls::Files { cert, key }) => (cert.clone(), key.clone()),
            Some(drover_config::Tls::Acme(_)) => {
                crate::acme::serve(
                    self,
                    app,
                    front,
                    plain,
                    conf.claim.hosts.clone(),
                    conf.acme.clone(),
                );
                return Ok(());
            }
            None => return Ok(()),
        };
        let bad = |e: drover_proxy::tls::TlsError| Error::Certificate {
            app: app.to_string(),
            hint: e.hint(),
            message: e.to_string(),
        };
        if conf.claim.hosts.is_empty() {
            // The port alone: its certificate answers every name.
            let pair = drover_proxy::tls::load_pair(&cert, &key).map_err(bad)?;
            let name = pair.names.first().cloned().unwrap_or_default();
            front
                .watch_certificate(&name, &cert, &key, true)
                .map_err(bad)?;
            return Ok(());
        }
        for (k, h) in conf.claim.hosts.iter().enumerate() {
            front
                .watch_certificate(h, &cert, &key, k == 0 && conf.claim.default)
                .map_err(bad)?;
        }
        Ok(())
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
            ProxyPlan::Attach { main, http, conf } => {
                let tls = conf.tls.is_some();
                let front = self.open_front(app, conf.port, main, &conf, tls)?;
                let claimed = |port: u16| {
                    move |why: String| Error::PortClaimed {
                        app: app.to_string(),
                        port,
                        why,
                    }
                };
                let mut handle = front
                    .attach(
                        app,
                        conf.claim.clone(),
                        conf.settings(),
                        self.routes_for(app),
                    )
                    .map_err(claimed(conf.port))?;
                let mut opened = vec![front.clone()];
                if tls {
                    let plain = self.open_front(app, conf.http_port, http, &conf, false)?;
                    let claim = drover_proxy::Claim {
                        redirect: conf.redirect.then_some(conf.port),
                        ..conf.claim.clone()
                    };
                    plain
                        .attach_also(&mut handle, claim)
                        .map_err(claimed(conf.http_port))?;
                    opened.push(plain.clone());
                    self.serve_certificates(app, &front, &plain, &conf)?;
                }
                // A recovering agent starts its shared ports once every app is behind them.
                if !self.recovering.load(std::sync::atomic::Ordering::SeqCst) {
                    for f in opened {
                        f.start();
                    }
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
