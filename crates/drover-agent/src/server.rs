//! The agent's socket: its private binding, the bounded client connections, and the
//! dispatch of each `Request` to the agent.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proxy::ProxyHandle;
use drover_store::Store;
use drover_wire::{Line, Reply, Request, WireError};

use crate::layers::Layers;
use crate::reads::fit_line;
use crate::{Agent, Error, Options, Out, Result, handover, host_key_path, to_json};

/// Client connections the agent serves at once, in all.
const MAX_CONNS: usize = 128;

/// Client connections the agent serves at once from one client process.
const MAX_CONNS_PER_CLIENT: usize = 16;

/// How long a client has to send its request line once connected.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// The client connections being served, in all and by client process: bounded, so that
/// stalled or runaway clients cannot take every thread the host allows.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    total: usize,
    by_client: HashMap<u32, usize>,
}

impl Conns {
    /// Counts a new connection from process `client`, or says why it is refused.
    fn admit(&mut self, client: u32) -> Result<()> {
        let mine = self.by_client.get(&client).copied().unwrap_or(0);
        if mine >= MAX_CONNS_PER_CLIENT {
            return Err(Error::ClientBusy {
                client,
                open: mine,
                max: MAX_CONNS_PER_CLIENT,
            });
        }
        if self.total >= MAX_CONNS {
            return Err(Error::AgentBusy {
                open: self.total,
                max: MAX_CONNS,
            });
        }
        self.total += 1;
        *self.by_client.entry(client).or_default() += 1;
        Ok(())
    }

    fn release(&mut self, client: u32) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.by_client.remove(&client);
            }
        }
    }
}

/// One admitted connection; its count goes when this does (also when its thread panics,
/// or could not be started).
struct Admitted {
    agent: Arc<Agent>,
    client: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.agent
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.client);
    }
}

impl Agent {
    /// Runs the agent in the foreground until killed.
    pub fn run(root: &Path, opts: Options) -> std::io::Result<()> {
        fs::create_dir_all(root).map_err(at(root))?;
        let root = fs::canonicalize(root).map_err(at(root))?;
        let lock_path = root.join("agent.lock");
        let lock = File::create(&lock_path).map_err(at(&lock_path))?;
        let inherited = if opts.replace {
            let got = handover::receive(&crate::socket_path(&root))?;
            eprintln!("drover agent: took over {} listening sockets", got.len());
            // The old agent exits once its in-flight requests are done.
            let deadline = Instant::now() + Duration::from_secs(60);
            while lock.try_lock().is_err() {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::other(
                        "the old agent did not exit within 60s",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            got
        } else {
            HashMap::new()
        };
        if !opts.replace && lock.try_lock().is_err() {
            let pid = fs::read_to_string(root.join("agent.pid")).unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "an agent is already running for {} (pid {})",
                root.display(),
                pid.trim()
            )));
        }
        let pid_path = root.join("agent.pid");
        fs::write(&pid_path, std::process::id().to_string()).map_err(at(&pid_path))?;
        let store = Store::open(&root).map_err(std::io::Error::other)?;
        let powers = crate::confine::Powers::of_this_process();
        if powers.switch_users
            && let Err(e) = crate::confine::ensure_default_user()
        {
            eprintln!("drover agent: {e}");
        }
        eprintln!(
            "drover agent: apps run {}",
            match (powers.namespaces, powers.switch_users) {
                (true, _) => "with the store read-only in a mount namespace of their own",
                (false, true) =>
                    "without a mount namespace (unavailable): the trees' mode bits protect them",
                (false, false) => "as this agent's user: the trees' mode bits protect them",
            }
        );
        let agent = Arc::new(Agent {
            powers,
            tag: root.display().to_string(),
            root: root.clone(),
            store,
            apps: Mutex::new(HashMap::new()),
            proxy_rt: std::sync::OnceLock::new(),
            proxies: Arc::new(Mutex::new(HashMap::new())),
            inherited: Mutex::new(inherited),
            fronts: Mutex::default(),
            recovering: std::sync::atomic::AtomicBool::new(true),
            challenges: drover_acme::ChallengeMap::new(),
            acme: Mutex::default(),
            me: std::sync::OnceLock::new(),
            conns: Mutex::new(Conns::default()),
            identity: drover_config::secrets::Identity::load_or_create(&host_key_path(&root))
                .map_err(std::io::Error::other)?,
            gc_keep: opts.gc_keep,
        });
        let _ = agent.me.set(Arc::downgrade(&agent));
        agent.recover();
        agent.start_fronts();
        if let Some(addr) = opts.metrics {
            let listener = std::net::TcpListener::bind(addr)?;
            agent
                .runtime()?
                .serve_metrics(listener, agent.proxies.clone())?;
            eprintln!("drover agent: metrics on http://{addr}/metrics");
        }

        let sock = crate::socket_path(&root);
        let listener = bind_private(&root, &sock)?;
        eprintln!(
            "drover agent: serving {} (pid {})",
            sock.display(),
            std::process::id()
        );

        let monitor = Arc::clone(&agent);
        std::thread::Builder::new()
            .name("drover-monitor".into())
            .spawn(move || monitor.monitor())?;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            agent.accept(conn);
        }
        drop(lock);
        Ok(())
    }

    /// Serves one client connection on its own thread, within the connection bounds; a
    /// connection over them, or one no thread can be started for, gets an error reply.
    fn accept(self: &Arc<Agent>, conn: UnixStream) {
        let client = rustix::net::sockopt::socket_peercred(&conn)
            .map(|c| c.pid.as_raw_nonzero().get() as u32)
            .unwrap_or(0);
        let refuse = |conn: &UnixStream, e: Error| {
            eprintln!("drover agent: refused a connection: {e}");
            let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
            let reply = Reply::Error(WireError::from(&e));
            let _ = drover_wire::write_line(&mut &*conn, &Line::Reply(reply));
        };
        let admitted = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(client);
        if let Err(e) = admitted {
            refuse(&conn, e);
            return;
        }
        let slot = Admitted {
            agent: Arc::clone(self),
            client,
        };
        let spare = conn.try_clone().ok();
        let started = std::thread::Builder::new()
            .name("drover-request".into())
            .spawn(move || {
                slot.agent.serve(conn);
                drop(slot);
            });
        if let Err(e) = started
            && let Some(conn) = spare
        {
            refuse(&conn, Error::NoThread { err: e });
        }
    }

    fn serve(&self, mut stream: UnixStream) {
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        // A client that connects and says nothing gives its place up.
        let _ = stream.set_read_timeout(Some(REQUEST_WAIT));
        let line = match drover_wire::read_line(&mut reader) {
            Ok(Some(l)) => l,
            _ => return,
        };
        let _ = stream.set_read_timeout(None);
        let mut deployed = None;
        let result = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Handover) => return self.hand_over(&mut stream),
            Ok(req) => {
                let deploy = matches!(req, Request::Deploy { .. });
                let r = self.handle(req, &mut stream, &mut reader);
                if deploy && let Ok(v) = &r {
                    deployed = v.get("app").and_then(|a| a.as_str()).map(str::to_string);
                }
                r
            }
            Err(e) => Err(Error::BadRequest(e.to_string())),
        };
        let reply = match result {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(WireError::from(&e)),
        };
        let _ = drover_wire::write_line(&mut stream, &Line::Reply(reply));
        drop(stream);
        // The client has its answer: what the deploy left behind is collected now.
        if let Some(app) = deployed {
            self.collect_after_deploy(&app);
        }
    }

    /// Runs gc when `app` has a release stored that gc would remove, keeping
    /// the releases of every app's `gc_keep` newest generations (and what they depend on);
    /// transfers' small packs are merged on the way.
    fn collect_after_deploy(&self, app: &str) {
        if self.gc_keep == 0 {
            return;
        }
        let roots = crate::gc_roots(&self.root, self.gc_keep);
        let Ok(releases) = self.store.releases() else {
            return;
        };
        // Newest first, as gc counts them: past the newest `gc_keep`, one that no kept
        // generation points to is one gc would remove.
        let spare = releases
            .iter()
            .filter(|r| r.app == app)
            .skip(self.gc_keep)
            .any(|r| !roots.contains(&r.release));
        if !spare {
            return;
        }
        // This connection's thread, which ends after it, gives way to everything else: the
        // apps, and the other requests (a switch on this host, or a neighbour's).
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
        match self.store.gc(self.gc_keep, &roots) {
            Ok(r) if !r.releases_removed.is_empty() => eprintln!(
                "drover agent: gc after deploying {app}: removed {} releases, freed {} bytes",
                r.releases_removed.len(),
                r.bytes_freed
            ),
            Ok(_) => {}
            Err(e) => eprintln!("drover agent: gc after deploying {app} failed: {e}"),
        }
    }

    fn handle(
        &self,
        req: Request,
        stream: &mut UnixStream,
        reader: &mut BufReader<UnixStream>,
    ) -> Result<serde_json::Value> {
        let mut out = Out { stream };
        match req {
            Request::Handover => Err(Error::BadRequest(
                "a handover is answered before dispatch".into(),
            )),
            Request::Ping => Ok(to_json(drover_wire::Pong {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            Request::Deploy {
                release,
                who,
                canary,
                environment,
                env_layer,
                role,
                role_layer,
                secrets,
                confirm_within,
                processes,
                skip_release_hook,
            } => {
                if let Some(weight) = canary.filter(|w| *w == 0 || *w >= 100) {
                    return Err(Error::CanaryOutOfRange { weight });
                }
                let layers = Layers {
                    environment: environment.clone(),
                    env_layer,
                    role,
                    role_layer,
                    secrets,
                    processes,
                };
                let app =
                    self.deploy(&release, &who, canary, layers, !skip_release_hook, &mut out)?;
                if let Some(secs) = confirm_within.filter(|_| canary.is_none()) {
                    self.await_confirm(&app, &who, environment, secs, reader, &mut out)?;
                }
                self.status_of(&app).map(to_json)
            }
            Request::ReleaseHook {
                release,
                who,
                environment,
                env_layer,
                role,
                role_layer,
                secrets,
            } => {
                let layers = Layers {
                    environment,
                    env_layer,
                    role,
                    role_layer,
                    secrets,
                    processes: None,
                };
                self.release_hook(&release, &who, layers, &mut out)?;
                Ok(serde_json::Value::Null)
            }
            Request::ConfigSet {
                app,
                set,
                unset,
                who,
            } => {
                self.config_set(&app, set, unset, &who, &mut out)?;
                self.status_of(&app).map(to_json)
            }
            Request::ConfigList { app } => self.config_list(&app).map(to_json),
            Request::Promote { app, who } => {
                self.promote(&app, &who, &mut out)?;
                self.status_of(&app).map(to_json)
            }
            Request::Abort { app, who } => {
                self.abort(&app, &who, &mut out)?;
                self.status_of(&app).map(to_json)
            }
            Request::Pause { app } => {
                self.proxy_of(&app)?.pause();
                self.status_of(&app).map(to_json)
            }
            Request::Resume { app } => {
                self.proxy_of(&app)?.resume();
                self.status_of(&app).map(to_json)
            }
            Request::Rollback { app, to, who } => {
                self.rollback(&app, to, &who, &mut out)?;
                self.status_of(&app).map(to_json)
            }
            Request::Status { app } => self.status(app.as_deref()).map(to_json),
            Request::History { app } => {
                let dir = self.app_dir(&app)?;
                // One line per generation: a long history never makes a long line.
                for g in dir.history() {
                    out.item(fit_line(g))?;
                }
                Ok(serde_json::Value::Array(Vec::new()))
            }
            Request::Stop { app, who } => {
                self.stop_app(&app, &who)?;
                self.status_of(&app).map(to_json)
            }
            Request::Start { app, who } => {
                self.start_app(&app, &who, &mut out)?;
                self.status_of(&app).map(to_json)
            }
            Request::Logs {
                app,
                lines,
                follow,
                since,
                grep,
            } => self.logs(
                &app,
                lines,
                follow,
                &crate::logs::Filter { since, grep },
                out.stream,
            ),
            Request::RunSpec { app } => self.run_spec(&app).map(to_json),
        }
    }

    /// Passes every listening socket to a replacing agent, stops accepting, lets in-flight
    /// requests finish, and exits. The apps keep running.
    fn hand_over(&self, stream: &mut UnixStream) {
        let proxies: Vec<ProxyHandle> = self.proxies_now().into_values().collect();
        if let Err(e) = handover::send(stream, &proxies) {
            eprintln!("drover agent: handover failed: {e}");
            return;
        }
        eprintln!(
            "drover agent: handed {} listening sockets over; draining and exiting",
            proxies.len()
        );
        for p in &proxies {
            p.stop_accepting();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while proxies.iter().any(|p| !p.closed() || p.inflight() > 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::process::exit(0);
    }
}

/// Binds the agent's socket so that it is 0600 from the moment another user could reach
/// it, whatever the umask: bound inside a fresh 0700 directory of the root (which nobody
/// else can search, so nobody else can connect there), made 0600 there, then renamed over
/// `sock` (replacing an old agent's socket in one step). The umask is process-wide and
/// threads already run here (the proxy runtime, recovered instances), so it is not touched.
fn bind_private(root: &Path, sock: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    // Only the agent holding `agent.lock` binds: any other such directory is a leftover of
    // an agent killed between bind and rename.
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(SOCKET_DIR) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{SOCKET_DIR}{}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(at(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(at(&dir))?;
    let tmp = dir.join("s");
    let listener = UnixListener::bind(&tmp).map_err(at(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(at(&tmp))?;
    drover_store::failpoint::hit("agent.socket_bound");
    fs::rename(&tmp, sock).map_err(at(sock))?;
    let _ = fs::remove_dir(&dir);
    Ok(listener)
}

/// Names the path in an I/O error (keeping its kind).
fn at(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error {
    let path = path.to_owned();
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The name (then the pid) of the private directory the agent's socket is bound in.
const SOCKET_DIR: &str = ".sock.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_client_and_in_all() {
        let mut c = Conns::default();
        for _ in 0..MAX_CONNS_PER_CLIENT {
            c.admit(7).unwrap();
        }
        let e = c.admit(7).unwrap_err().to_string();
        assert!(
            e.contains("process 7") && e.contains("at most 16 per client"),
            "{e}"
        );
        c.release(7);
        c.admit(7).unwrap();
        for client in 100..(100 + MAX_CONNS - MAX_CONNS_PER_CLIENT) as u32 {
            c.admit(client).unwrap();
        }
        let e = c.admit(1).unwrap_err().to_string();
        assert!(e.contains("at most 128"), "{e}");
        c.release(100);
        c.admit(1).unwrap();
        assert_eq!(c.total, MAX_CONNS);
    }
}
