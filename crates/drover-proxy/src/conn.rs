//! Client connections of one proxy: what each is doing (counted by its I/O and its requests,
//! a few relaxed atomics, no clock read per request), and the registry that closes idle and
//! stalled ones and makes room for a new one when the proxy is at `max_connections`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::fds::{Fd, Held, OnRead};

/// One client connection, as its I/O, its requests and the registry see it.
#[derive(Debug, Default)]
pub struct Conn {
    /// Reads that returned data.
    reads: AtomicU64,
    /// Requests whose head has been read.
    requests: AtomicU64,
    /// Requests whose response has not been sent whole.
    active: AtomicUsize,
    /// Began with the HTTP/2 preface (or chose `h2` by ALPN): its reads without a request
    /// are frames, not a head.
    pub(crate) h2: AtomicBool,
    /// Told when the registry closes this connection.
    pub close: tokio::sync::Notify,
}

/// The client's socket: its reads counted for the registry, its descriptor in the budget.
pub type ClientIo = Held<TcpStream, Reads>;

pub fn client_io(stream: TcpStream, conn: Arc<Conn>, fd: Fd) -> ClientIo {
    Held::watched(stream, fd, Reads { conn, first: true })
}

/// Counts a client connection's reads, and tells HTTP/2 by its first bytes.
pub struct Reads {
    conn: Arc<Conn>,
    first: bool,
}

impl OnRead for Reads {
    fn on_read(&mut self, data: &[u8]) {
        if self.first {
            self.first = false;
            if data.starts_with(b"PRI ") {
                self.conn.h2.store(true, Ordering::Relaxed);
            }
        }
        // Only this connection's task writes it: no read-modify-write needed.
        let n = self.conn.reads.load(Ordering::Relaxed);
        self.conn.reads.store(n + 1, Ordering::Relaxed);
    }
}

/// A request in flight on its connection, from its head until its response is sent.
pub struct Active(Arc<Conn>);

impl Active {
    pub fn start(conn: Arc<Conn>) -> Active {
        conn.requests.fetch_add(1, Ordering::Relaxed);
        conn.active.fetch_add(1, Ordering::Relaxed);
        Active(conn)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it has been sent (or dropped).
pub struct Finished<B> {
    pub body: B,
    pub _active: Active,
}

impl<B: Body + Unpin> Body for Finished<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the registry last saw of a connection.
#[derive(Debug)]
struct Watch {
    conn: Arc<Conn>,
    reads: u64,
    requests: u64,
    /// Since when no request has been in flight (accepted, or the last one seen).
    quiet_since: Instant,
    /// Since when the client has been sending bytes that are not yet a request head.
    head_since: Option<Instant>,
    /// Had a request in flight when last seen.
    busy: bool,
    closing: bool,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Busy,
    Quiet(Instant),
    Head(Instant),
}

impl Watch {
    fn observe(&mut self, now: Instant) -> Seen {
        let active = self.conn.active.load(Ordering::Relaxed);
        let requests = self.conn.requests.load(Ordering::Relaxed);
        let reads = self.conn.reads.load(Ordering::Relaxed);
        // Quiet from the first look after the last request, never from before it ended.
        if active > 0 || requests != self.requests || self.busy {
            self.requests = requests;
            self.reads = reads;
            self.quiet_since = now;
            self.head_since = None;
            self.busy = active > 0;
            return if active > 0 {
                Seen::Busy
            } else {
                Seen::Quiet(now)
            };
        }
        if reads != self.reads {
            self.reads = reads;
            // HTTP/2 frames between requests (pings, settings) are not a request head.
            if !self.conn.h2.load(Ordering::Relaxed) {
                self.head_since.get_or_insert(now);
            }
        }
        match self.head_since {
            Some(t) => Seen::Head(t),
            None => Seen::Quiet(self.quiet_since),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    watched: HashMap<u64, Watch>,
    next_id: u64,
    /// Watched connections told to close that have not ended yet.
    closing: usize,
}

impl Inner {
    fn close(&mut self, id: u64) {
        if let Some(w) = self.watched.get_mut(&id)
            && !w.closing
        {
            w.closing = true;
            w.conn.close.notify_one();
            self.closing += 1;
        }
    }

    /// The open connection longest without a request in flight.
    fn longest_idle(&mut self, now: Instant) -> Option<u64> {
        let mut best: Option<(Instant, u64)> = None;
        for (id, w) in self.watched.iter_mut() {
            if w.closing {
                continue;
            }
            let since = match w.observe(now) {
                Seen::Busy => continue,
                Seen::Quiet(_) | Seen::Head(_) => w.quiet_since,
            };
            if best.is_none_or(|(b, _)| since < b) {
                best = Some((since, *id));
            }
        }
        best.map(|(_, id)| id)
    }
}

/// The open client connections of one proxy.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection when fewer than `max` are open, closing the one longest
    /// idle to make room if need be; `None` when every open connection has a request in
    /// flight.
    pub fn admit(
        self: &Arc<Self>,
        conn: Arc<Conn>,
        max: usize,
        now: Instant,
    ) -> Option<Registration> {
        let mut inner = self.lock();
        if inner.watched.len() - inner.closing >= max {
            let id = inner.longest_idle(now)?;
            inner.close(id);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.watched.insert(
            id,
            Watch {
                conn,
                reads: 0,
                requests: 0,
                quiet_since: now,
                head_since: None,
                busy: false,
                closing: false,
            },
        );
        Some(Registration(self.clone(), id))
    }

    /// Closes the connection longest idle, if there is one: to free its descriptor.
    pub fn close_longest_idle(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.longest_idle(now) {
            Some(id) => {
                inner.close(id);
                true
            }
            None => false,
        }
    }

    /// Closes connections idle for `idle` and those that began a request head more than
    /// `header` ago without finishing it. Returns how many it closed.
    pub fn sweep(&self, now: Instant, idle: Duration, header: Duration) -> usize {
        let mut inner = self.lock();
        let mut expired = Vec::new();
        for (id, w) in inner.watched.iter_mut() {
            if w.closing {
                continue;
            }
            let over = match w.observe(now) {
                Seen::Busy => false,
                Seen::Quiet(t) => now.saturating_duration_since(t) >= idle,
                Seen::Head(t) => now.saturating_duration_since(t) >= header,
            };
            if over {
                expired.push(*id);
            }
        }
        for id in &expired {
            inner.close(*id);
        }
        expired.len()
    }

    /// Open connections (those told to close included, until they have).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().watched.len()
    }
}

/// A connection's place in the registry, given up when its task ends.
pub struct Registration(Arc<Registry>, u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        if let Some(w) = inner.watched.remove(&self.1)
            && w.closing
        {
            inner.closing -= 1;
        }
    }
}

/// How often the registry looks at its connections: a quarter of the shortest timeout,
/// between 10 ms and 1 s (a connection is closed at most that much after its time).
pub fn sweep_interval(idle: Duration, header: Duration) -> Duration {
    (idle.min(header) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEADER: Duration = Duration::from_secs(10);

    fn read(c: &Conn) {
        c.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn closing(c: &Conn) -> bool {
        use std::future::Future;
        let n = std::pin::pin!(c.close.notified());
        let waker = std::task::Waker::noop();
        n.poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout_and_busy_ones_never() {
        let r = Arc::new(Registry::default());
        let t0 = Instant::now();
        let silent = Arc::new(Conn::default());
        let busy = Arc::new(Conn::default());
        let kept_alive = Arc::new(Conn::default());
        let _a = r.admit(silent.clone(), 10, t0).unwrap();
        let _b = r.admit(busy.clone(), 10, t0).unwrap();
        let _c = r.admit(kept_alive.clone(), 10, t0).unwrap();
        read(&busy);
        let in_flight = Active::start(busy.clone());
        // A request that came and went: the connection is idle from then on.
        read(&kept_alive);
        drop(Active::start(kept_alive.clone()));
        assert_eq!(r.sweep(t0 + IDLE / 2, IDLE, HEADER), 0);
        assert_eq!(r.sweep(t0 + IDLE, IDLE, HEADER), 1);
        assert!(closing(&silent));
        assert_eq!(r.sweep(t0 + IDLE / 2 + IDLE, IDLE, HEADER), 1);
        assert!(closing(&kept_alive));
        assert_eq!(r.sweep(t0 + IDLE * 100, IDLE, HEADER), 0);
        assert!(!closing(&busy));
        drop(in_flight);
        assert_eq!(r.sweep(t0 + IDLE * 101, IDLE, HEADER), 0);
        assert_eq!(r.sweep(t0 + IDLE * 102, IDLE, HEADER), 1);
    }

    #[test]
    fn a_head_that_stalls_closes_after_the_header_timeout_but_http2_frames_do_not() {
        let r = Arc::new(Registry::default());
        let t0 = Instant::now();
        let slow = Arc::new(Conn::default());
        let h2 = Arc::new(Conn::default());
        h2.h2.store(true, Ordering::Relaxed);
        let _a = r.admit(slow.clone(), 10, t0).unwrap();
        let _b = r.admit(h2.clone(), 10, t0).unwrap();
        read(&slow);
        read(&h2);
        assert_eq!(r.sweep(t0 + Duration::from_secs(1), IDLE, HEADER), 0);
        // Still trickling: the header timeout counts from the first byte.
        read(&slow);
        assert_eq!(r.sweep(t0 + Duration::from_secs(5), IDLE, HEADER), 0);
        assert_eq!(r.sweep(t0 + Duration::from_secs(11), IDLE, HEADER), 1);
        assert!(closing(&slow));
        assert!(!closing(&h2));
        assert_eq!(r.sweep(t0 + IDLE, IDLE, HEADER), 1);
        assert!(closing(&h2));
    }

    #[test]
    fn at_the_limit_the_longest_idle_makes_room_and_busy_ones_are_kept() {
        let r = Arc::new(Registry::default());
        let t0 = Instant::now();
        let old = Arc::new(Conn::default());
        let young = Arc::new(Conn::default());
        let a = r.admit(old.clone(), 2, t0).unwrap();
        let _b = r
            .admit(young.clone(), 2, t0 + Duration::from_secs(1))
            .unwrap();
        let third = Arc::new(Conn::default());
        let _c = r
            .admit(third.clone(), 2, t0 + Duration::from_secs(2))
            .unwrap();
        assert!(closing(&old));
        assert!(!closing(&young));
        // The closed one still counts until its task ends, but not against the limit.
        assert_eq!(r.len(), 3);
        drop(a);
        assert_eq!(r.len(), 2);
        let _busy = (Active::start(young.clone()), Active::start(third.clone()));
        assert!(
            r.admit(Arc::new(Conn::default()), 2, t0 + Duration::from_secs(3))
                .is_none()
        );
        assert!(!r.close_longest_idle(t0 + Duration::from_secs(3)));
    }
}
