//! The file descriptors the proxies may hold, all of them together: the process's limit less
//! the last `RESERVED`, which stay for the agent itself (its control socket, store, app logs).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Descriptors below the process's limit the proxies never use.
pub const RESERVED: usize = 64;

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// From the process's soft `RLIMIT_NOFILE`, read once.
    pub fn from_rlimit() -> Budget {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        Budget::new(soft)
    }

    /// The budget under a limit of `soft` descriptors.
    pub fn new(soft: usize) -> Budget {
        let limit = if soft >= 2 * RESERVED {
            soft - RESERVED
        } else {
            soft / 2
        };
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// How many descriptors the proxies may hold at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) < self.limit
    }

    /// One descriptor, counted until the `Fd` is dropped; `None` when the budget is spent.
    pub fn take(self: &Arc<Self>) -> Option<Fd> {
        if self.used.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Fd(self.clone()))
    }
}

/// Did this fail for want of descriptors or socket memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)?
pub fn out_of_fds(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e)
        .is_some_and(|n| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&n))
}

/// One descriptor of the budget, held for as long as its socket is open.
#[derive(Debug)]
pub struct Fd(Arc<Budget>);

impl Drop for Fd {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Told of each read that returned data.
pub trait OnRead {
    fn on_read(&mut self, data: &[u8]);
}

impl OnRead for () {
    fn on_read(&mut self, _: &[u8]) {}
}

/// A socket with its descriptor counted: the count goes down when the socket is closed.
#[derive(Debug)]
pub struct Held<S, R = ()> {
    io: S,
    on_read: R,
    _fd: Fd,
}

impl<S> Held<S> {
    pub fn new(io: S, fd: Fd) -> Held<S> {
        Held::watched(io, fd, ())
    }
}

impl<S, R> Held<S, R> {
    /// With `on_read` told of every read.
    pub fn watched(io: S, fd: Fd, on_read: R) -> Held<S, R> {
        Held {
            io,
            on_read,
            _fd: fd,
        }
    }
}

impl<S: AsyncRead + Unpin, R: OnRead + Unpin> AsyncRead for Held<S, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.on_read.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, R: Unpin> AsyncWrite for Held<S, R> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_reserve_and_returns_what_is_dropped() {
        let b = Arc::new(Budget::new(RESERVED + 3));
        // Under twice the reserve, half of the limit.
        assert_eq!(b.limit(), (RESERVED + 3) / 2);
        let b = Arc::new(Budget::new(256));
        assert_eq!(b.limit(), 256 - RESERVED);
        let held: Vec<Fd> = (0..b.limit()).map(|_| b.take().unwrap()).collect();
        assert!(!b.has_room());
        assert!(b.take().is_none());
        drop(held);
        assert!(b.has_room());
        assert!(b.take().is_some());
    }
}
