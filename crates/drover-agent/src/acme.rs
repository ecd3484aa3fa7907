//! `[proxy] tls = "acme"`: certificates for an app's hosts ordered from its ACME directory
//! (HTTP-01, answered on the app's plain-HTTP port), kept under `ROOT/acme` (0600) across
//! restarts, served from there (the TLS port watches the files) and renewed ahead of expiry.
//! A failed order leaves the app serving as it was; the reason is in `status` and the agent
//! log, and the order is tried again with backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover_proxy::FrontHandle;

use crate::Agent;

/// What `status` says of an app's ACME certificate.
#[derive(Debug, Clone, Default)]
pub(crate) struct AcmeState {
    /// Bumped whenever the app's certificates are set up again: an older renewer ends.
    pub token: u64,
    pub status: String,
}

/// The longest an order may take.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed order, the next one waits this long, doubling up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// Serves the app's certificate from `ROOT/acme` when one is there and valid, and keeps a
/// renewer running for it (ordering one first when there is none).
pub(crate) fn serve(
    agent: &Agent,
    app: &str,
    front: &FrontHandle,
    _plain: &FrontHandle,
    hosts: Vec<String>,
    cfg: Option<drover_config::Acme>,
) {
    // drover.toml refuses `tls = "acme"` without hosts or [proxy.acme]; nothing to order.
    let (Some(cfg), Some(name)) = (cfg, hosts.first().cloned()) else {
        return;
    };
    let dir = agent.root.join("acme");
    let store = drover_acme::Store::new(&dir);
    if let Ok(Some(issued)) = store.load(&name) {
        if let Ok((cert, key)) = store.paths(&name) {
            for h in &hosts {
                let _ = front.watch_certificate(h, &cert, &key, false);
            }
        }
        set_status(agent, app, None, describe(&issued));
    }
    let token = {
        let mut all = agent.acme.lock().unwrap_or_else(|e| e.into_inner());
        let st = all.entry(app.to_string()).or_default();
        st.token += 1;
        st.token
    };
    let renewer = Renewer {
        agent: agent.weak(),
        app: app.to_string(),
        front: front.clone(),
        hosts,
        cfg,
        dir,
        token,
    };
    let _ = std::thread::Builder::new()
        .name(format!("acme-{app}"))
        .spawn(move || renewer.run());
}

fn describe(issued: &drover_acme::Issued) -> String {
    let secs = issued
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("certificate valid until {}", drover_wire::time::table(secs))
}

fn set_status(agent: &Agent, app: &str, token: Option<u64>, status: String) {
    let mut all = agent.acme.lock().unwrap_or_else(|e| e.into_inner());
    let st = all.entry(app.to_string()).or_default();
    if token.is_none_or(|t| t == st.token) {
        st.status = status;
    }
}

struct Renewer {
    agent: std::sync::Weak<Agent>,
    app: String,
    front: FrontHandle,
    hosts: Vec<String>,
    cfg: drover_config::Acme,
    dir: std::path::PathBuf,
    token: u64,
}

impl Renewer {
    /// Still the app's renewer (the agent runs, and the app's certificates were not set up
    /// again since)?
    fn current(&self) -> Option<Arc<Agent>> {
        let agent = self.agent.upgrade()?;
        let live = agent
            .acme
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.app)
            .is_some_and(|s| s.token == self.token);
        live.then_some(agent)
    }

    fn run(self) {
        let store = drover_acme::Store::new(&self.dir);
        let Some(name) = self.hosts.first().cloned() else {
            return;
        };
        let mut retry = FIRST_RETRY;
        loop {
            let Some(agent) = self.current() else {
                return;
            };
            let now = SystemTime::now();
            if let Ok(Some(issued)) = store.load(&name)
                && !issued.renew_due(now)
            {
                drop(agent);
                // Asleep until it is due (looked at again at least hourly).
                let wait = issued
                    .renew_at()
                    .duration_since(now)
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(500), Duration::from_secs(3600));
                self.sleep(wait);
                continue;
            }
            let result = drover_acme::Client::new(
                drover_acme::AcmeConfig {
                    directory: self.cfg.directory.clone(),
                    email: self.cfg.email.clone(),
                    ca: self.cfg.ca.clone(),
                },
                &self.dir,
            )
            .and_then(|c| c.order(&self.hosts, &agent.challenges, ORDER_TIMEOUT))
            .and_then(|issued| store.save(&name, &issued).map(|()| issued));
            match result {
                Ok(issued) => {
                    retry = FIRST_RETRY;
                    let served = store.paths(&name).ok().map(|(cert, key)| {
                        self.hosts
                            .iter()
                            .map(|h| self.front.watch_certificate(h, &cert, &key, false))
                            .find_map(Result::err)
                    });
                    let status = match served {
                        Some(Some(e)) => format!("issued, but not served: {e}"),
                        _ => describe(&issued),
                    };
                    eprintln!(
                        "drover agent: {}: ACME {} for {}",
                        self.app,
                        status,
                        self.hosts.join(", ")
                    );
                    set_status(&agent, &self.app, Some(self.token), status);
                }
                Err(e) => {
                    let mut text = format!("ordering a certificate failed: {e}");
                    if let Some(h) = e.hint() {
                        text.push_str(&format!(" (hint: {h})"));
                    }
                    text.push_str(&format!("; trying again in {}s", retry.as_secs()));
                    eprintln!("drover agent: {}: {text}", self.app);
                    set_status(&agent, &self.app, Some(self.token), text);
                    drop(agent);
                    self.sleep(retry);
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Sleeps `d`, waking early (every second) to end once it is no longer current.
    fn sleep(&self, d: Duration) {
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until {
            if self.current().is_none() {
                return;
            }
            std::thread::sleep(
                until
                    .saturating_duration_since(std::time::Instant::now())
                    .min(Duration::from_secs(1)),
            );
        }
    }
}
