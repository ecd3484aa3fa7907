//! A link to one host: what the executor needs of a host, whatever carries it. A link runs
//! the host side of a `drover remote serve` session (`host::serve`) and speaks its JSON
//! lines over a pair of streams: over ssh (`ssh::Session`), or in this process
//! (`InProcess`), against a drover root of this machine and the real agent serving it.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A failure on one host, in words fit for the summary, with the likely fix.
#[derive(Debug, Clone)]
pub struct HostError {
    pub message: String,
    hint: Option<String>,
    /// The host could not be reached or the connection died: its state is unknown.
    pub unreachable: bool,
}

impl HostError {
    pub fn new(message: impl Into<String>) -> HostError {
        HostError {
            message: message.into(),
            hint: None,
            unreachable: false,
        }
    }

    /// The host is unreachable, or the connection to it died.
    pub fn lost(message: impl Into<String>) -> HostError {
        HostError {
            unreachable: true,
            ..HostError::new(message)
        }
    }

    /// This error, the host taken for unreachable.
    pub fn as_lost(mut self) -> HostError {
        self.unreachable = true;
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> HostError {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> HostError {
        self.hint = hint;
        self
    }

    /// A likely fix, shown as a `hint:` line under the error.
    pub fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HostError {}

/// Why an operation over the serve session failed.
pub enum OpError {
    /// The host answered with an error; the session goes on.
    Host(HostError),
    /// The host said why, and the session is over (a refused transfer).
    Ended(HostError),
    /// The stream broke (what went wrong, for when the transport itself says nothing).
    Broken(String),
}

impl From<std::io::Error> for OpError {
    fn from(e: std::io::Error) -> OpError {
        OpError::Broken(e.to_string())
    }
}

/// What the executor needs of a host: its name and its serve session.
pub trait HostLink: Sync {
    /// The host as the user wrote it: used in every message.
    fn name(&self) -> &str;

    /// Runs `op` over this host's serve session, starting the session on first use. One op
    /// at a time. When the session breaks it is ended, and what the transport or the host
    /// said about it becomes the error; the next op starts a new session.
    fn with_serve<R>(
        &self,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError>;

    /// `with_serve` for an op that must be answered soon (a lock, a hello): a session that
    /// does not answer in time is ended and the host named as stalled.
    fn with_serve_bounded<R>(
        &self,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError> {
        self.with_serve(op)
    }

    /// Starts the serve session now, unless it runs (a failure shows at the first op).
    fn start_serving(&self) {}

    /// Tells the serve session to end (closes its input) without waiting; `close` waits.
    fn hang_up(&self);

    /// Ends the serve session and whatever connection carries it.
    fn close(self)
    where
        Self: Sized;
}

type Writer = BufWriter<Box<dyn Write + Send>>;
/// The stream from the host, buffered.
pub type FromHost = BufReader<Box<dyn Read + Send>>;

/// A running serve session: requests go in, answers come out. While no op writes, a
/// keep-alive goes to the host every `every`: the host ends a session silent for longer
/// (`remote serve --timeout`).
pub struct Serve {
    /// `None` once hung up. Shared with the keep-alive thread, which writes only when it
    /// finds it free.
    to_host: Arc<Mutex<Option<Writer>>>,
    from_host: FromHost,
    /// Dropped to end the keep-alive thread.
    _keep_alive: std::sync::mpsc::Sender<()>,
    pub(crate) peer: Peer,
}

/// What runs the host side of a session.
pub(crate) enum Peer {
    /// `ssh HOST drover remote serve`, and what it prints on stderr once it closed.
    Ssh {
        child: std::process::Child,
        stderr: std::sync::mpsc::Receiver<Vec<u8>>,
    },
    /// `host::serve` on a thread of this process.
    Thread(std::thread::JoinHandle<anyhow::Result<()>>),
}

/// How a session ended: its exit status (a process's), and what it said on the way out.
pub(crate) struct Ending {
    pub status: Option<std::process::ExitStatus>,
    pub said: Vec<u8>,
}

/// The stream to the host, held: nothing else (no keep-alive) goes out while it is.
pub struct ToHost<'a>(MutexGuard<'a, Option<Writer>>);

impl ToHost<'_> {
    fn stream(&mut self) -> std::io::Result<&mut Writer> {
        self.0.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the session was closed")
        })
    }
}

impl Write for ToHost<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream()?.flush()
    }
}

/// Writes a keep-alive to `to_host` every `every` while it is free, until `stop` is dropped
/// or the stream is closed or broken.
fn keep_alive(
    to_host: Arc<Mutex<Option<Writer>>>,
    every: Duration,
    stop: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        // Held by an op (a transfer, a request being sent): that op speaks for us.
        let Ok(mut slot) = to_host.try_lock() else {
            continue;
        };
        let Some(w) = slot.as_mut() else { break };
        let sent = w.write_all(drover_wire::KEEPALIVE).and_then(|()| w.flush());
        if sent.is_err() {
            break;
        }
    }
}

impl Serve {
    /// A session over `to_host` and `from_host`, run by `peer`, kept alive every `every`.
    pub(crate) fn new(
        to_host: Box<dyn Write + Send>,
        from_host: Box<dyn Read + Send>,
        peer: Peer,
        every: Duration,
    ) -> Serve {
        let to_host = Arc::new(Mutex::new(Some(BufWriter::with_capacity(
            64 << 10,
            to_host,
        ))));
        let (stop, stopped) = std::sync::mpsc::channel();
        let shared = to_host.clone();
        std::thread::spawn(move || keep_alive(shared, every, stopped));
        Serve {
            to_host,
            from_host: BufReader::with_capacity(64 << 10, from_host),
            _keep_alive: stop,
            peer,
        }
    }

    /// Writes one JSON line and flushes it.
    pub fn send(&mut self, value: &impl serde::Serialize) -> Result<(), OpError> {
        Ok(drover_wire::write_line(&mut self.writer()?, value)?)
    }

    /// The stream to the host, held until dropped.
    pub fn writer(&mut self) -> Result<ToHost<'_>, OpError> {
        let slot = self.to_host.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return Err(OpError::Broken("the session was closed".into()));
        }
        Ok(ToHost(slot))
    }

    /// Both streams at once (a transfer reads one while it writes the other).
    pub fn streams(&mut self) -> Result<(&mut FromHost, ToHost<'_>), OpError> {
        let slot = self.to_host.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            return Err(OpError::Broken("the session was closed".into()));
        }
        Ok((&mut self.from_host, ToHost(slot)))
    }

    /// Closes the stream to the host (which then ends the session).
    pub(crate) fn hang_up(&self) {
        let taken = self
            .to_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut w) = taken {
            let _ = w.flush();
        }
    }

    /// The next line from the host; the end of the stream is an error.
    pub fn line(&mut self) -> Result<String, OpError> {
        drover_wire::read_line(&mut self.from_host)?
            .ok_or_else(|| OpError::Broken("the session ended before answering".into()))
    }

    /// Closes its input (the host side then ends) and waits for it, at most `grace` for a
    /// process (a thread ends once its input does).
    pub(crate) fn end(self, grace: Duration) -> Ending {
        self.hang_up();
        let Serve {
            from_host, peer, ..
        } = self;
        drop(from_host);
        match peer {
            Peer::Ssh { mut child, stderr } => {
                let deadline = std::time::Instant::now() + grace;
                let status = crate::ssh::wait_until(&mut child, deadline).ok().flatten();
                // The master connection may hold the session's stderr open a while longer.
                let said = stderr
                    .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or_default();
                Ending { status, said }
            }
            Peer::Thread(t) => {
                let said = match t.join() {
                    Ok(Ok(())) => Vec::new(),
                    Ok(Err(e)) => format!("error: {e:#}").into_bytes(),
                    Err(_) => b"error: the host side of the session panicked".to_vec(),
                };
                Ending { status: None, said }
            }
        }
    }
}

/// A link's serve session, once started: one op at a time holds it.
#[derive(Default)]
pub(crate) struct Slot(Mutex<Option<Serve>>);

impl Slot {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Serve>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the session with `start` unless it runs (a failure shows at the first op).
    pub(crate) fn start_serving(&self, start: impl FnOnce() -> Result<Serve, HostError>) {
        let mut slot = self.lock();
        if slot.is_none() {
            *slot = start().ok();
        }
    }

    /// Tells the session to end (closes its input) without waiting.
    pub(crate) fn hang_up(&self) {
        if let Some(sv) = self.lock().as_ref() {
            sv.hang_up();
        }
    }

    /// Ends the session, waiting at most `grace` for its process.
    pub(crate) fn end(self, grace: Duration) {
        if let Some(sv) = self.0.into_inner().unwrap_or_else(|e| e.into_inner()) {
            sv.end(grace);
        }
    }
}

/// A host that is a drover root of this machine: its serve sessions run on threads of this
/// process (the same code `drover remote serve` runs), against the real agent of that root.
/// Lock, transfer, switch, confirm and revert go through it as over ssh, without sshd.
pub struct InProcess {
    name: String,
    root: PathBuf,
    /// How long the host side waits for a byte before it takes the deployer for gone.
    timeout: Duration,
    serve: Slot,
}

impl InProcess {
    pub fn new(name: &str, root: &Path, timeout: Duration) -> InProcess {
        InProcess {
            name: name.to_string(),
            root: root.to_path_buf(),
            timeout,
            serve: Slot::default(),
        }
    }

    fn start(&self) -> Result<Serve, HostError> {
        let pipe = || std::io::pipe().map_err(|e| HostError::new(format!("{}: {e}", self.name)));
        let (host_in, to_host) = pipe()?;
        let (from_host, host_out) = pipe()?;
        let root = self.root.clone();
        let timeout = self.timeout;
        let thread = std::thread::Builder::new()
            .name(format!("serve {}", self.name))
            .spawn(move || crate::host::serve(&root, host_in, Box::new(host_out), Some(timeout)))
            .map_err(|e| HostError::new(format!("{}: cannot start a thread: {e}", self.name)))?;
        Ok(Serve::new(
            Box::new(to_host),
            Box::new(from_host),
            Peer::Thread(thread),
            (self.timeout / 3).max(Duration::from_millis(100)),
        ))
    }
}

impl HostLink for InProcess {
    fn name(&self) -> &str {
        &self.name
    }

    fn with_serve<R>(
        &self,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError> {
        let mut slot = self.serve.lock();
        if slot.is_none() {
            *slot = Some(self.start()?);
        }
        let result = op(slot.as_mut().expect("started"));
        match result {
            Ok(r) => Ok(r),
            Err(OpError::Host(e)) => Err(e),
            Err(OpError::Ended(e)) => {
                slot.take().expect("started").end(Duration::from_secs(2));
                Err(e)
            }
            Err(OpError::Broken(what)) => {
                let said = slot
                    .take()
                    .expect("started")
                    .end(Duration::from_secs(2))
                    .said;
                let said = String::from_utf8_lossy(&said);
                Err(HostError::lost(if said.is_empty() {
                    format!("{}: {what}", self.name)
                } else {
                    format!("{}: {what} ({})", self.name, said.trim())
                }))
            }
        }
    }

    fn start_serving(&self) {
        self.serve.start_serving(|| self.start());
    }

    fn hang_up(&self) {
        self.serve.hang_up();
    }

    fn close(self) {
        self.serve.end(Duration::from_secs(2));
    }
}
