//! The built-in HTTP reverse proxy: a listener per public port (`front.rs`), held by one app
//! alone or shared by apps that claim host names, routing to each app's healthy instances, with switches that never refuse or fail a request, canary
//! splits sticky per client, pause/resume, and per-release metrics.
//!
//! The agent (sync, threads) drives it through `ProxyHandle`, whose methods never block on
//! I/O: they swap the route table and read counters. The proxy runs on its own tokio runtime.

mod conn;
mod fds;
mod front;
mod metrics;
mod pool;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

pub use front::Claim;
pub use metrics::{ReleaseMetrics, Snapshot};

type PBody = BoxBody<Bytes, hyper::Error>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body on its way to a backend (it may end in the proxy's own error, a timeout).
type ReqBody = BoxBody<Bytes, BoxError>;

/// What a 405 answer to CONNECT says the proxy forwards.
const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

const SPLIT_COOKIE: &str = "drover-split";

/// Responses up to this size (with a known length) are read whole before they are sent on.
const BUFFER_RESPONSE: u64 = 64 * 1024;

/// Limits and timeouts of one app's proxy.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body: u64,
    pub request_timeout: Duration,
    /// From the first byte of a request head to its end, at most.
    pub header_timeout: Duration,
    /// A client connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request body must have arrived whole within this after its head (else 408).
    pub body_timeout: Duration,
    /// Client connections at most; `None`: half of the descriptors the proxies may use.
    pub max_connections: Option<usize>,
    /// Requests queued while paused, at most.
    pub max_queued: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_body: 16 << 20,
            request_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: None,
            max_queued: 1024,
        }
    }
}

/// One app instance the proxy can send requests to.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// The release short id: the key of the metrics.
    pub release: String,
    inflight: AtomicUsize,
    /// Each backend has its own connection pool: a new instance that gets a port an old
    /// one used never inherits the old one's idle connections.
    pool: pool::Pool,
    /// This backend's release counters (looked up once, not per request).
    metrics: std::sync::OnceLock<Arc<ReleaseMetrics>>,
}

impl Backend {
    pub fn new(addr: SocketAddr, release: &str) -> Arc<Backend> {
        Arc::new(Backend {
            addr,
            release: release.to_string(),
            inflight: AtomicUsize::new(0),
            pool: pool::Pool::new(addr),
            metrics: std::sync::OnceLock::new(),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// Where requests go: the stable set, and optionally a canary set taking `weight`% of clients.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub stable: Vec<Arc<Backend>>,
    pub canary: Vec<Arc<Backend>>,
    pub canary_weight: u8,
}

struct Shared {
    app: String,
    routes: RwLock<Arc<Routes>>,
    paused: AtomicBool,
    resume: tokio::sync::Notify,
    queued: AtomicUsize,
    rr: AtomicUsize,
    split_counter: AtomicU64,
    metrics: metrics::Registry,
    settings: Settings,
    fds: Arc<fds::Budget>,
}

/// The agent's side of one app's proxy.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    front: Arc<front::Front>,
    pub port: u16,
    /// The app holds its port alone (no hosts).
    alone: bool,
    /// A duplicate of the listening socket, to hand over to a replacing agent.
    listener: Arc<std::net::TcpListener>,
    /// Other ports the app is behind as well (the plain-HTTP port beside a TLS one).
    also: Vec<FrontHandle>,
}

/// The answer to an ACME HTTP-01 challenge token (its key authorization), if one is pending.
pub type Challenges = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where ACME's HTTP-01 challenges are fetched (RFC 8555, 8.3).
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// What starts a front's accept loop.
type Starter = Box<dyn FnOnce() + Send>;

/// The agent's side of a port shared by apps that claim host names.
#[derive(Clone)]
pub struct FrontHandle {
    front: Arc<front::Front>,
    pub port: u16,
    listener: Arc<std::net::TcpListener>,
    /// Starts accepting, the first time it is called.
    start: Arc<Mutex<Option<Starter>>>,
}

impl FrontHandle {
    /// Puts `app` behind this port with `claim` (replacing what the app had here: its
    /// requests in flight finish as they were routed). A claim overlapping another app's
    /// changes nothing and says which app holds it.
    pub fn attach(
        &self,
        app: &str,
        claim: Claim,
        settings: Settings,
        routes: Routes,
    ) -> Result<ProxyHandle, String> {
        let shared = Arc::new(Shared::new(
            app,
            settings,
            routes,
            self.front.fds.clone(),
            &claim.hosts,
        ));
        self.front.attach(claim, shared.clone())?;
        Ok(ProxyHandle {
            shared,
            front: self.front.clone(),
            port: self.port,
            alone: false,
            listener: self.listener.clone(),
            also: Vec::new(),
        })
    }

    /// Puts the app of `handle` behind this port as well, with `claim` (its routes, pause
    /// and metrics are the same ones); `handle.shutdown` takes it from here too.
    pub fn attach_also(&self, handle: &mut ProxyHandle, claim: Claim) -> Result<(), String> {
        self.front.attach(claim, handle.shared.clone())?;
        handle.also.retain(|f| f.port != self.port);
        handle.also.push(self.clone());
        Ok(())
    }

    /// A TLS port?
    pub fn is_tls(&self) -> bool {
        self.front.tls.is_some()
    }

    /// Serves `cert` and `key` (PEM files, watched and reloaded when they change) for
    /// `host` on this TLS port; with `default`, also to clients that name no host or one
    /// nobody has. A pair that does not load, or does not cover `host`, changes nothing.
    pub fn watch_certificate(
        &self,
        host: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        default: bool,
    ) -> Result<tls::Pair, tls::TlsError> {
        let Some(t) = &self.front.tls else {
            return Err(tls::TlsError::NoCertificate { path: cert.into() });
        };
        let pair = t
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(host, cert, key)?;
        if default {
            t.certs.set_default(Some(host));
        }
        Ok(pair)
    }

    /// The hosts this TLS port has a certificate for.
    pub fn certificate_hosts(&self) -> Vec<String> {
        self.front
            .tls
            .as_ref()
            .map_or_else(Vec::new, |t| t.certs.hosts())
    }

    /// Starts accepting connections (once; later calls do nothing). Until then they wait
    /// in the listen backlog: an agent taking a port over puts every app behind it first.
    pub fn start(&self) {
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(start) = start {
            start();
        }
    }

    /// Would `app` claiming `claim` here overlap another app? The reason, naming it.
    pub fn conflict(&self, app: &str, claim: &Claim) -> Option<String> {
        front::conflict(&self.front.table(), app, claim)
    }

    /// The apps behind the port and what each claims.
    pub fn apps(&self) -> Vec<(String, Claim)> {
        self.front
            .table()
            .claims
            .iter()
            .map(|(c, a)| (a.app.clone(), c.clone()))
            .collect()
    }

    /// The apps behind the port but `app`.
    pub fn apps_besides(&self, app: &str) -> Vec<String> {
        self.apps()
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| a != app)
            .collect()
    }

    /// The listening socket (a duplicate), for a handover.
    pub fn listener(&self) -> &std::net::TcpListener {
        &self.listener
    }

    /// Stops accepting; connections in flight finish.
    pub fn shutdown(&self) {
        self.front.stop.notify_one();
    }

    /// True once `shutdown` has finished every connection.
    pub fn closed(&self) -> bool {
        self.front.closed()
    }
}

/// The proxies' runtime, one per agent: a few worker threads, each running its own
/// single-threaded tokio runtime. A client connection is handed to the worker with the fewest
/// open connections and stays there, with its requests and the backend connections they use,
/// so proxying a request wakes no other thread.
pub struct Runtime {
    workers: Arc<Workers>,
    /// The descriptors all of this runtime's sockets may use together.
    fds: Arc<fds::Budget>,
    /// The ACME challenges every plain port answers.
    challenges: Arc<std::sync::OnceLock<Challenges>>,
    /// Dropped with the runtime: each worker then ends, with its tasks.
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    /// Open client connections per worker.
    open: Vec<AtomicUsize>,
}

thread_local! {
    /// The index of the proxy worker running on this thread (`usize::MAX` elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The proxy worker this code runs on.
fn current_worker() -> usize {
    WORKER.with(|w| w.get())
}

impl Workers {
    /// The worker with the fewest open connections.
    fn least_busy(&self) -> usize {
        (0..self.open.len())
            .min_by_key(|&i| self.open[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl Runtime {
    pub fn new() -> std::io::Result<Runtime> {
        let n = std::env::var("DROVER_PROXY_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
                    .min(4)
            });
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            // Pushed before the thread starts: if a later worker fails to start, dropping
            // these ends the ones already running.
            stop.push(stop_tx);
            std::thread::Builder::new()
                .name("drover-proxy".into())
                .spawn(move || {
                    WORKER.with(|w| w.set(i));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Runs the tasks spawned onto this worker until the runtime is dropped.
                    let _ = rt.block_on(stop_rx);
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other("a proxy worker thread ended before it started")
            })??;
            handles.push(handle);
        }
        let open = (0..n).map(|_| AtomicUsize::new(0)).collect();
        Ok(Runtime {
            workers: Arc::new(Workers { handles, open }),
            fds: Arc::new(fds::Budget::from_rlimit()),
            challenges: Arc::default(),
            _stop: stop,
        })
    }

    /// The worker that accepts connections and serves metrics.
    fn main(&self) -> &tokio::runtime::Handle {
        &self.workers.handles[0]
    }

    /// Starts serving `app` alone on an already-bound listener (kept across switches).
    /// `routes` are in place before the first connection is accepted.
    pub fn serve(
        &self,
        app: &str,
        listener: std::net::TcpListener,
        settings: Settings,
        routes: Routes,
    ) -> std::io::Result<ProxyHandle> {
        let refused = format!("`{app}`");
        let front = self.front(listener, settings.clone(), &refused, false)?;
        let shared = Arc::new(Shared::new(app, settings, routes, self.fds.clone(), &[]));
        let _ = front.front.attach(Claim::default(), shared.clone());
        front.start();
        Ok(ProxyHandle {
            shared,
            front: front.front,
            port: front.port,
            alone: true,
            listener: front.listener,
            also: Vec::new(),
        })
    }

    /// A port that apps claiming host names share (`FrontHandle::attach`), on an
    /// already-bound listener, accepting from `FrontHandle::start`; its connection limits
    /// are `settings`'.
    /// With `tls`, the port speaks TLS (HTTP/2 or HTTP/1.1 by ALPN), with the certificates
    /// given by `FrontHandle::watch_certificate`.
    pub fn shared_front(
        &self,
        listener: std::net::TcpListener,
        settings: Settings,
        tls: bool,
    ) -> std::io::Result<FrontHandle> {
        let port = listener.local_addr()?.port();
        self.front(listener, settings, &format!("port {port}"), tls)
    }

    /// What every plain port answers to ACME's HTTP-01 challenges (set once).
    pub fn set_challenges(&self, answers: Challenges) {
        let _ = self.challenges.set(answers);
    }

    fn front(
        &self,
        listener: std::net::TcpListener,
        settings: Settings,
        refused: &str,
        tls: bool,
    ) -> std::io::Result<FrontHandle> {
        let tls = if tls {
            let certs = Arc::new(tls::Certs::new());
            let config = tls::server_config(certs.clone(), false)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(front::FrontTls {
                acceptor: tokio_rustls::TlsAcceptor::from(config),
                watch: Mutex::new(tls::Watch::new(certs.clone())),
                certs,
            })
        } else {
            None
        };
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let max_connections = settings
            .max_connections
            .unwrap_or(self.fds.limit() / 2)
            .max(1);
        let refusal = {
            let body = format!(
                "too many connections to {refused} (`[proxy] max_connections` is {max_connections})\n"
            );
            Bytes::from(format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ))
        };
        let front = Arc::new(front::Front {
            port,
            table: RwLock::default(),
            conns: Arc::default(),
            max_connections,
            refusal,
            fds: self.fds.clone(),
            settings,
            closed: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
            tls,
            challenges: self.challenges.clone(),
        });
        let workers = self.workers.clone();
        let accepting = front.clone();
        let main = self.main().clone();
        let dup = Arc::new(listener.try_clone()?);
        let start = move || {
            main.spawn(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("drover proxy: cannot serve port {port}: {e}");
                        return;
                    }
                };
                accept_loop(listener, accepting, workers).await;
            });
        };
        let handle = FrontHandle {
            front: front.clone(),
            port,
            listener: dup,
            start: Arc::new(Mutex::new(Some(Box::new(start)))),
        };
        self.main().spawn(async move {
            let s = &front.settings;
            let mut tick =
                tokio::time::interval(conn::sweep_interval(s.idle_timeout, s.header_timeout));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut polled = Instant::now();
            while !front.closed() {
                tick.tick().await;
                front
                    .conns
                    .sweep(Instant::now(), s.idle_timeout, s.header_timeout);
                // Certificate files replaced: served to the next handshake (once a second).
                if let Some(t) = &front.tls
                    && polled.elapsed() >= Duration::from_secs(1)
                {
                    polled = Instant::now();
                    let reloads = t.watch.lock().unwrap_or_else(|e| e.into_inner()).poll();
                    for r in reloads {
                        match r.result {
                            Ok(_) => eprintln!(
                                "drover proxy: port {}: reloaded the certificate of {}",
                                front.port, r.host
                            ),
                            Err(e) => eprintln!(
                                "drover proxy: port {}: kept the certificate of {}: {e}",
                                front.port, r.host
                            ),
                        }
                    }
                }
            }
        });
        Ok(handle)
    }

    /// Serves Prometheus metrics of every proxy on `listener`.
    pub fn serve_metrics(
        &self,
        listener: std::net::TcpListener,
        proxies: Arc<Mutex<Proxies>>,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let fds = self.fds.clone();
        self.main().spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let mut backoff = Duration::ZERO;
            loop {
                // Out of descriptors (none left in the budget, or EMFILE): wait, never spin.
                let accepted = match fds.take() {
                    Some(fd) => listener.accept().await.map(|(s, _)| (s, fd)).ok(),
                    None => None,
                };
                let Some((stream, fd)) = accepted else {
                    backoff = next_backoff(backoff);
                    tokio::time::sleep(backoff).await;
                    continue;
                };
                backoff = Duration::ZERO;
                let proxies = proxies.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let text = {
                            let list = proxies.lock().unwrap_or_else(|e| e.into_inner());
                            metrics::prometheus(
                                list.values()
                                    .map(|p| (p.shared.app.as_str(), &p.shared.metrics)),
                            )
                        };
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            resp.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    // A client that says nothing is closed after the header timeout.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(fds::Held::new(stream, fd)), svc)
                        .await;
                });
            }
        });
        Ok(())
    }
}

impl ProxyHandle {
    /// Replaces the route table: every new request sees the new one at once.
    pub fn set_routes(&self, routes: Routes) {
        *self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(routes);
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.shared
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.resume.notify_waiters();
    }

    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    pub fn metrics(&self) -> Vec<Snapshot> {
        self.shared.metrics.snapshot()
    }

    /// Takes the app off its port: an app holding the port alone stops accepting there (its
    /// copy of the listener closes); one of several is taken from behind the port, which
    /// stops once no app is left behind it. Connections in flight finish.
    pub fn shutdown(&self) {
        if self.alone || self.front.detach(&self.shared) {
            self.front.stop.notify_one();
        }
        for f in &self.also {
            if f.front.detach(&self.shared) {
                f.front.stop.notify_one();
            }
        }
    }

    /// Stops accepting on the app's ports, whoever else is behind them (a handover: the
    /// replacing agent accepts there now).
    pub fn stop_accepting(&self) {
        self.front.stop.notify_one();
        for f in &self.also {
            f.front.stop.notify_one();
        }
    }

    /// Every port the app is behind, with its listening socket (a duplicate): for a handover.
    pub fn listeners(&self) -> Vec<(u16, &std::net::TcpListener)> {
        let mut v = vec![(self.port, &*self.listener)];
        v.extend(self.also.iter().map(|f| (f.port, &*f.listener)));
        v
    }

    /// The app shares its port with others (it claims host names).
    pub fn shared(&self) -> bool {
        !self.alone
    }

    /// The listening socket (a duplicate), for a handover.
    pub fn listener(&self) -> &std::net::TcpListener {
        &self.listener
    }

    /// True once `shutdown` has finished every connection (for an app of a shared port:
    /// once it is no longer behind the port, or the port has closed).
    pub fn closed(&self) -> bool {
        self.front.closed()
            || !self
                .front
                .table()
                .apps()
                .any(|a| Arc::ptr_eq(a, &self.shared))
    }

    /// Requests in flight to any backend.
    pub fn inflight(&self) -> usize {
        let routes = self.routes();
        routes
            .stable
            .iter()
            .chain(routes.canary.iter())
            .map(|b| b.inflight())
            .sum()
    }

    /// Waits until none of `backends` has a request in flight, up to `timeout`.
    pub fn drain(&self, backends: &[Arc<Backend>], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if backends.iter().all(|b| b.inflight() == 0) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<front::Front>,
    workers: Arc<Workers>,
) {
    let stop = &shared.stop;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Idle and stalled connections are closed by the registry (conn.rs), not by hyper's
    // header timer: that one also cuts a keep-alive connection idle for `header_timeout`, and
    // never starts on a connection that sends nothing at all.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    // Tracks every connection so a shutdown can close idle keep-alive ones cleanly.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut backoff = Duration::ZERO;
    loop {
        // Every descriptor the proxies may hold is in use (or accept failed, EMFILE and the
        // like): free some and wait, leaving new connections queued in the listen backlog.
        // The agent's own descriptors are never taken, and established connections go on.
        let accepted = if shared.fds.has_room() {
            tokio::select! {
                a = listener.accept() => Some(a),
                _ = stop.notified() => break,
            }
        } else {
            None
        };
        let (stream, peer) = match accepted {
            Some(Ok(a)) => a,
            failed => {
                if failed.is_none_or(|r| r.is_err_and(|e| fds::out_of_fds(&e))) {
                    shared.make_room();
                }
                backoff = next_backoff(backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = stop.notified() => break,
                }
            }
        };
        backoff = Duration::ZERO;
        // Lost a race for the last descriptor to another proxy: closed at once.
        let Some(fd) = shared.fds.take() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(conn::Conn::default());
        let Some(registration) =
            shared
                .conns
                .admit(conn.clone(), shared.max_connections, Instant::now())
        else {
            tokio::spawn(refuse(stream, fd, shared.refusal.clone()));
            continue;
        };
        // Moved to the least busy worker: registered there, served there until it closes.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let w = workers.least_busy();
        workers.open[w].fetch_add(1, Ordering::Relaxed);
        // Counted until the task ends, or is dropped unrun.
        let open = OpenGuard(workers.clone(), w);
        let svc_shared = shared.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        workers.handles[w].spawn(async move {
            let _open = open;
            let _registration = registration;
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let io = conn::client_io(stream, conn.clone(), fd);
            let handshake = svc_shared.tls.as_ref().map(|t| t.acceptor.clone());
            let https = handshake.is_some();
            // The handshake is bounded like a request head.
            let handshake_timeout = svc_shared.settings.header_timeout;
            let svc_conn = conn.clone();
            let svc = hyper::service::service_fn(move |req| {
                let shared = svc_shared.clone();
                // In flight from here until its response has been sent.
                let active = conn::Active::start(svc_conn.clone());
                // Boxed: the request's future is large, and moving it inline costs more
                // than one allocation.
                Box::pin(async move {
                    let resp = route(shared, req, peer, https).await;
                    Ok::<_, Infallible>(resp.map(|body| conn::Finished {
                        body,
                        _active: active,
                    }))
                })
            });
            // Closed by the registry: idle too long, a stalled head, or room for another.
            match handshake {
                None => {
                    let served = builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned();
                    tokio::select! {
                        _ = watcher.watch(served) => {}
                        _ = conn.close.notified() => {}
                    }
                }
                Some(acceptor) => {
                    let Ok((tls, alpn, _)) = tls::accept(&acceptor, io, handshake_timeout).await
                    else {
                        return;
                    };
                    if alpn.as_deref() == Some(b"h2") {
                        conn.h2.store(true, Ordering::Relaxed);
                    }
                    let served = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .into_owned();
                    tokio::select! {
                        _ = watcher.watch(served) => {}
                        _ = conn.close.notified() => {}
                    }
                }
            }
        });
    }
    // Stop accepting (this copy of the listener closes), finish what is in flight.
    drop(listener);
    // A connection accepted just before the stop has not sent its request yet; closing it
    // now as "idle" would reset it. Give such clients a moment to speak first.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = tokio::time::timeout(shared.settings.request_timeout, graceful.shutdown()).await;
    shared.closed.store(true, Ordering::SeqCst);
}

/// The app behind `front` that `req` is for (by its Host, or its authority, and path),
/// then `handle`; none: 404.
async fn route(
    front: Arc<front::Front>,
    req: Request<Incoming>,
    peer: SocketAddr,
    https: bool,
) -> Response<PBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok());
    let path = req.uri().path();
    if !https
        && let Some(token) = path.strip_prefix(CHALLENGE_PATH)
        && let Some(answer) = front.challenges.get().and_then(|c| c(token))
    {
        let mut r = plain(StatusCode::OK, "");
        *r.body_mut() = Full::new(Bytes::from(answer))
            .map_err(|n| match n {})
            .boxed();
        return r;
    }
    let app = {
        let table = front.table();
        match table.pick(host, path) {
            Some((_, Some(port), _)) => return to_https(host, &req, *port),
            Some((app, None, counter)) => (app.clone(), *counter),
            None => {
                return plain(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no app on port {} answers host `{}`",
                        front.port,
                        host.unwrap_or("")
                    ),
                );
            }
        }
    };
    let (app, counter) = app;
    // Counted under the host name that took it (no work for an app alone on its port).
    let Some(k) = counter else {
        return handle(app, req, peer, https).await;
    };
    let metrics = app.clone();
    let resp = handle(app, req, peer, https).await;
    metrics.metrics.count_host(k, resp.status().as_u16());
    resp
}

/// 308 to the same URL over https on `port`.
fn to_https(host: Option<&str>, req: &Request<Incoming>, port: u16) -> Response<PBody> {
    let Some(name) = host.map(front::strip_port).filter(|n| !n.is_empty()) else {
        return plain(StatusCode::BAD_REQUEST, "no host to redirect to over https");
    };
    let target = match port {
        443 => format!("https://{name}"),
        p => format!("https://{name}:{p}"),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = plain(
        StatusCode::PERMANENT_REDIRECT,
        "this site is served over https",
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{target}{pq}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// 10 ms, doubling up to 1 s.
fn next_backoff(b: Duration) -> Duration {
    (b * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Answers a connection over `max_connections` with a 503 and closes it, reading what the
/// client sends meanwhile (a second at most) so that the close does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream, _fd: fds::Fd, answer: Bytes) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 1024];
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

fn plain(status: StatusCode, text: &str) -> Response<PBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// The split bucket (0..100) of a request: from its cookie, or newly assigned.
fn bucket(shared: &Shared, req: &Request<Incoming>) -> (u8, bool) {
    for v in req.headers().get_all(header::COOKIE) {
        if let Ok(s) = v.to_str() {
            for part in s.split(';') {
                if let Some(b) = part
                    .trim()
                    .strip_prefix(SPLIT_COOKIE)
                    .and_then(|r| r.strip_prefix('='))
                    && let Ok(n) = b.parse::<u8>()
                    && n < 100
                {
                    return (n, false);
                }
            }
        }
    }
    // A permutation of 0..100 over successive new clients: exact shares, no randomness needed.
    let n = shared.split_counter.fetch_add(1, Ordering::Relaxed);
    (((n * 37) % 100) as u8, true)
}

impl Shared {
    /// An app's side of its proxy; with `hosts` (those it claims), counting its responses by
    /// host name.
    fn new(
        app: &str,
        settings: Settings,
        routes: Routes,
        fds: Arc<fds::Budget>,
        hosts: &[String],
    ) -> Shared {
        Shared {
            app: app.to_string(),
            routes: RwLock::new(Arc::new(routes)),
            paused: AtomicBool::new(false),
            resume: tokio::sync::Notify::new(),
            queued: AtomicUsize::new(0),
            rr: AtomicUsize::new(0),
            split_counter: AtomicU64::new(0),
            metrics: metrics::Registry::with_hosts(hosts),
            settings,
            fds,
        }
    }

    /// Frees descriptors: idle backend connections.
    fn drop_idle(&self) {
        let r = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for b in r.stable.iter().chain(r.canary.iter()) {
            b.pool.drop_idle();
        }
    }

    /// Is this backend (the very same one, not just its address) in the route table?
    fn routed(&self, b: &Arc<Backend>) -> bool {
        let r = self.routes.read().unwrap_or_else(|e| e.into_inner());
        r.stable
            .iter()
            .chain(r.canary.iter())
            .any(|x| Arc::ptr_eq(x, b))
    }
}

/// Least in-flight requests, round robin among equals.
fn pick(shared: &Shared, set: &[Arc<Backend>], skip: &[SocketAddr]) -> Option<Arc<Backend>> {
    let n = set.len();
    if n == 0 {
        return None;
    }
    let start = shared.rr.fetch_add(1, Ordering::Relaxed);
    let mut best: Option<&Arc<Backend>> = None;
    for k in 0..n {
        let b = &set[(start + k) % n];
        if skip.contains(&b.addr) {
            continue;
        }
        if best.is_none_or(|x| b.inflight() < x.inflight()) {
            best = Some(b);
        }
    }
    best.cloned()
}

async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    https: bool,
) -> Response<PBody> {
    let started = Instant::now();
    if let Some(answer) = refuse_malformed(&req) {
        return answer;
    }
    // HTTP/1 connections are closed after a request whose body could not be read whole.
    let http1 = req.version() < http::Version::HTTP_2;
    if shared.paused.load(Ordering::SeqCst) {
        if shared.queued.fetch_add(1, Ordering::SeqCst) >= shared.settings.max_queued {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "paused: too many queued requests",
            );
        }
        let waited = tokio::time::timeout(shared.settings.request_timeout, async {
            while shared.paused.load(Ordering::SeqCst) {
                let notified = shared.resume.notified();
                if !shared.paused.load(Ordering::SeqCst) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
        .await;
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        if waited.is_err() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "paused");
        }
    }

    let (bucket, new_client) = bucket(&shared, &req);
    let nothing_routed = {
        let r = shared.routes.read().unwrap_or_else(|e| e.into_inner());
        r.stable.is_empty() && r.canary.is_empty()
    };
    if nothing_routed {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance");
    }

    // Bodies up to 1 MiB are read first (the size limit applies to chunked ones too).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > shared.settings.max_body) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = if upgrade {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    let mut streamed_body: Option<Incoming> = None;
    let buffered: Option<Bytes> = if !upgrade && body.is_end_stream() {
        // No body at all (most GETs): nothing to read.
        Some(Bytes::new())
    } else if !upgrade && declared.is_none_or(|l| l <= 1 << 20) {
        let limited = http_body_util::Limited::new(body, shared.settings.max_body as usize);
        match tokio::time::timeout(shared.settings.body_timeout, limited.collect())
            .await
            .unwrap_or_else(|_| Err(BodyTimedOut.into()))
        {
            Ok(c) => Some(c.to_bytes()),
            Err(e) if e.is::<BodyTimedOut>() => return body_timed_out(&shared, http1),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
                }
                return plain(StatusCode::BAD_REQUEST, "cannot read the request body");
            }
        }
    } else {
        streamed_body = Some(body);
        None
    };

    // Absolute-form (and HTTP/2's :authority): the target's authority is the host, whatever
    // a Host header said (RFC 9112, 3.2.2). The backend gets origin-form and this Host.
    if let Some(a) = parts.uri.authority()
        && parts
            .headers
            .get(header::HOST)
            .is_none_or(|h| h.as_bytes() != a.as_str().as_bytes())
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    let origin: http::Uri = match parts.uri.path_and_query() {
        Some(pq) => http::Uri::from(pq.clone()),
        None => http::Uri::from_static("/"),
    };
    parts.uri = origin;

    // Forwarding headers.
    let host = parts.headers.get(header::HOST).cloned();
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts.headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Some(h) = host {
        parts.headers.insert("x-forwarded-host", h);
    }
    if !upgrade {
        for h in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            parts.headers.remove(h);
        }
    }
    // The request to the backend, built once; a failed attempt that never sent it hands it
    // back for the next one (no copies of the head per attempt).
    // A streamed body has until its deadline to arrive; then it ends the request in an error.
    let mut body_expired: Option<Arc<AtomicBool>> = None;
    let body: ReqBody = match (buffered, streamed_body.take()) {
        (Some(b), _) => Full::new(b).map_err(|n| match n {}).boxed(),
        (None, Some(incoming)) if upgrade => incoming.map_err(BoxError::from).boxed(),
        (None, Some(incoming)) => {
            let expired = Arc::new(AtomicBool::new(false));
            body_expired = Some(expired.clone());
            Deadline {
                inner: incoming,
                sleep: Box::pin(tokio::time::sleep(shared.settings.body_timeout)),
                expired,
            }
            .boxed()
        }
        (None, None) => Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
    };
    let body_late = || {
        body_expired
            .as_ref()
            .is_some_and(|e| e.load(Ordering::Acquire))
    };
    parts.version = http::Version::HTTP_11;
    let mut pending = Some(Request::from_parts(parts, body));
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Route with the table as it is now: a switch may have happened since the last try.
        let routes = shared
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let use_canary = !routes.canary.is_empty() && bucket < routes.canary_weight;
        let set = if use_canary {
            &routes.canary
        } else {
            &routes.stable
        };
        let Some(backend) = pick(&shared, set, &tried).or_else(|| pick(&shared, set, &[])) else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no healthy instance");
        };
        backend.inflight.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard(backend.clone());
        // Counted after a switch took this backend out? It may already be past its drain:
        // route again with the new table.
        if attempts < 8 && !shared.routed(&backend) {
            drop(guard);
            continue;
        }
        let Some(out) = pending.take() else {
            return plain(
                StatusCode::BAD_GATEWAY,
                "the upstream failed after the request was sent",
            );
        };
        let m = backend
            .metrics
            .get_or_init(|| shared.metrics.release(&backend.release))
            .clone();
        m.open.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(
            shared.settings.request_timeout,
            backend.pool.send(out, &shared.fds),
        )
        .await;
        match result {
            Ok(Ok(mut resp)) => {
                let upgrading =
                    resp.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_some();
                // A small body with a known length is read whole first, so the head and the
                // body leave in one write (no flush of the head alone, one wake-up less).
                let buffer = !upgrading
                    && resp
                        .body()
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n <= BUFFER_RESPONSE);
                if !buffer {
                    m.record(resp.status().as_u16(), started.elapsed());
                }
                if new_client
                    && !routes.canary.is_empty()
                    && let Ok(v) =
                        HeaderValue::from_str(&format!("{SPLIT_COOKIE}={bucket}; Path=/; HttpOnly"))
                {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_up) = client_upgrade
                {
                    let server_up = hyper::upgrade::on(&mut resp);
                    let m2 = m.clone();
                    tokio::spawn(async move {
                        if let (Ok(c), Ok(s)) = (client_up.await, server_up.await) {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(c),
                                &mut TokioIo::new(s),
                            )
                            .await;
                        }
                        drop(guard);
                        m2.open.fetch_sub(1, Ordering::Relaxed);
                    });
                    let (p, b) = resp.into_parts();
                    return Response::from_parts(p, b.boxed());
                }
                if buffer {
                    let (p, b) = resp.into_parts();
                    let left = shared
                        .settings
                        .request_timeout
                        .saturating_sub(started.elapsed());
                    let body = tokio::time::timeout(left, b.collect()).await;
                    m.open.fetch_sub(1, Ordering::Relaxed);
                    drop(guard);
                    let response = match body {
                        Ok(Ok(c)) => Response::from_parts(
                            p,
                            Full::new(c.to_bytes()).map_err(|n| match n {}).boxed(),
                        ),
                        Ok(Err(_)) => plain(
                            StatusCode::BAD_GATEWAY,
                            "the upstream failed while sending the response body",
                        ),
                        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
                    };
                    // What the client gets is what is counted.
                    m.record(response.status().as_u16(), started.elapsed());
                    return response;
                }
                let (p, b) = resp.into_parts();
                let tracked = Tracked {
                    inner: b,
                    _guard: guard,
                    metrics: m,
                };
                return Response::from_parts(p, tracked.boxed());
            }
            Ok(Err(_)) | Err(_) if body_late() => {
                m.open.fetch_sub(1, Ordering::Relaxed);
                m.record(408, started.elapsed());
                return body_timed_out(&shared, http1);
            }
            Ok(Err((pool::SendError::NoFd, _))) => {
                m.open.fetch_sub(1, Ordering::Relaxed);
                m.record(503, started.elapsed());
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many open connections: no file descriptor left for the upstream",
                );
            }
            Ok(Err((e, unsent))) => {
                m.open.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
                tried.push(backend.addr);
                // A request that never left can go to another instance.
                if let Some(req) = unsent
                    && attempts < 8
                {
                    pending = Some(req);
                    continue;
                }
                m.record(502, started.elapsed());
                return plain(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream {} failed: {e}", backend.addr),
                );
            }
            Err(_) => {
                m.open.fetch_sub(1, Ordering::Relaxed);
                m.record(504, started.elapsed());
                return plain(StatusCode::GATEWAY_TIMEOUT, "upstream timed out");
            }
        }
    }
}

/// The proxy's own answer to a request it must not forward: CONNECT (RFC 9110, 9.3.6: a
/// reverse proxy is no tunnel), more than one Host header or an invalid one, and HTTP/1.1
/// without Host (RFC 9112, 3.2). A few comparisons, no allocation, for a request that passes.
fn refuse_malformed(req: &Request<Incoming>) -> Option<Response<PBody>> {
    if req.method() == http::Method::CONNECT {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: this is a reverse proxy, not a tunnel",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        return Some(r);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let problem = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => "more than one Host header",
        (None, _) if req.version() == http::Version::HTTP_11 => {
            "an HTTP/1.1 request needs a Host header"
        }
        (Some(h), None) if !valid_host(h.as_bytes()) => "invalid Host header",
        _ => return None,
    };
    Some(plain(StatusCode::BAD_REQUEST, problem))
}

/// `host [ ":" port ]` of RFC 3986: a reg-name, IPv4 or bracketed IPv6 literal (or empty).
fn valid_host(h: &[u8]) -> bool {
    h.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// A request body that did not arrive within `body_timeout`.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

fn body_timed_out(shared: &Shared, close: bool) -> Response<PBody> {
    let mut r = plain(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "the request body did not arrive within {:?} (`[proxy] body_timeout`)",
            shared.settings.body_timeout
        ),
    );
    if close {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// A streamed request body with a deadline: past it, the body ends in `BodyTimedOut` (and
/// `expired` tells the request why its upstream failed).
struct Deadline {
    inner: Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a client connection open on its worker until it ends.
struct OpenGuard(Arc<Workers>, usize);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

struct InflightGuard(Arc<Backend>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its backend counted as busy until it is done or dropped.
struct Tracked {
    inner: Incoming,
    _guard: InflightGuard,
    metrics: Arc<ReleaseMetrics>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Per-app proxies the agent keeps, by app name.
pub type Proxies = HashMap<String, ProxyHandle>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An app with no routes, for tests of what picks it.
    pub(crate) fn shared(name: &str) -> Arc<Shared> {
        Arc::new(Shared::new(
            name,
            Settings::default(),
            Routes::default(),
            Arc::new(fds::Budget::new(1024)),
            &[],
        ))
    }

    fn proxy_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "drover-proxy")
            })
            .count()
    }

    /// A backend that records the head of every request it gets and answers 200.
    fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut head = String::new();
                        let mut len = 0;
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        log.lock().unwrap().push(head);
                        let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Sends raw bytes, returns everything the proxy answers until it closes.
    fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn connect_and_bad_host_headers_are_answered_by_the_proxy_and_never_forwarded() {
        let _one = ONE_RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = proxy_threads();
        let (backend, seen) = recording_backend();
        let rt = Runtime::new().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Routes {
            stable: vec![Backend::new(backend, "r1")],
            ..Routes::default()
        };
        let _handle = rt
            .serve("app", listener, Settings::default(), routes)
            .unwrap();

        let connect = raw(
            addr,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        );
        assert!(connect.starts_with("HTTP/1.1 405 "), "{connect:?}");
        assert!(
            connect
                .to_ascii_lowercase()
                .contains(&format!("\r\nallow: {}\r\n", ALLOWED.to_ascii_lowercase())),
            "{connect:?}"
        );
        let two = raw(
            addr,
            b"GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        );
        assert!(two.starts_with("HTTP/1.1 400 "), "{two:?}");
        assert!(two.contains("more than one Host header"), "{two:?}");
        let none = raw(addr, b"GET /none HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(none.starts_with("HTTP/1.1 400 "), "{none:?}");
        assert!(none.contains("needs a Host header"), "{none:?}");
        let invalid = raw(
            addr,
            b"GET /invalid HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n",
        );
        assert!(invalid.starts_with("HTTP/1.1 400 "), "{invalid:?}");

        // HTTP/1.0 may leave Host out; an absolute-form target names the host.
        let old = raw(addr, b"GET /old HTTP/1.0\r\n\r\n");
        assert!(
            old.starts_with("HTTP/1.0 200 ") || old.starts_with("HTTP/1.1 200 "),
            "{old:?}"
        );
        let absolute = raw(
            addr,
            b"GET http://right.example/abs HTTP/1.1\r\nHost: wrong.example\r\nConnection: close\r\n\r\n",
        );
        assert!(absolute.starts_with("HTTP/1.1 200 "), "{absolute:?}");
        let good = raw(
            addr,
            b"GET /good HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        );
        assert!(good.starts_with("HTTP/1.1 200 "), "{good:?}");

        // The backend got the three good requests, in order, and nothing else.
        let seen = seen.lock().unwrap().clone();
        let lines: Vec<&str> = seen.iter().map(|h| h.lines().next().unwrap()).collect();
        assert_eq!(
            lines,
            [
                "GET /old HTTP/1.1",
                "GET /abs HTTP/1.1",
                "GET /good HTTP/1.1"
            ],
            "{seen:#?}"
        );
        let abs = seen[1].to_ascii_lowercase();
        assert!(abs.contains("host: right.example\r\n"), "{abs}");
        assert!(!abs.contains("wrong.example"), "{abs}");
        drop(rt);
        threads_end(before);
    }

    /// Tests that start a runtime run one at a time: one of them counts the proxy's threads.
    static ONE_RUNTIME: Mutex<()> = Mutex::new(());

    /// Waits (5 s at most) for the proxy's threads to be down to `n` again.
    fn threads_end(n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy_threads() > n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_dropped_runtime_stops_serving_and_its_threads_end() {
        let _one = ONE_RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = proxy_threads();
        let rt = Runtime::new().unwrap();
        let workers = rt.workers.handles.len();
        assert!(workers >= 1);
        assert_eq!(proxy_threads(), before + workers);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _handle = rt
            .serve("app", listener, Settings::default(), Routes::default())
            .unwrap();
        // Served: with no instance routed, a request gets a 503 from the proxy itself.
        let ask = || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        };
        assert!(ask().unwrap().starts_with("HTTP/1.1 503"));

        drop(rt);
        threads_end(before);
        assert_eq!(
            proxy_threads(),
            before,
            "worker threads outlived their runtime"
        );
        // The listener went with the tasks: nothing answers any more.
        assert!(ask().map(|r| r.is_empty()).unwrap_or(true));
    }
}
