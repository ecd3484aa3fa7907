//! Keep-alive connections to one backend: HTTP/1.1 senders reused while idle, a new
//! connection when none is free. Lighter than a general-purpose client pool: one backend,
//! one address, no DNS, no per-request pool key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::ReqBody;
use crate::fds::{Budget, Held};

const MAX_IDLE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request did not get an answer.
#[derive(Debug)]
pub enum SendError {
    /// Never reached the backend: safe to try another instance.
    Connect(String),
    /// No descriptor left in the proxies' budget for a new connection.
    NoFd,
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::NoFd => write!(f, "no file descriptor left for a new connection"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    /// Idle connections, each with the proxy worker whose runtime drives it: a request
    /// takes only its own worker's, so it never wakes another thread.
    idle: Mutex<Vec<(usize, SendRequest<ReqBody>)>>,
}

impl Pool {
    pub fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that can take a request now, if any. Busy ones (a body still
    /// streaming) stay for later; closed ones go.
    fn take_idle(&self) -> Option<SendRequest<ReqBody>> {
        let me = crate::current_worker();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, s)| !s.is_closed());
        let i = idle.iter().rposition(|(w, s)| *w == me && s.is_ready())?;
        Some(idle.swap_remove(i).1)
    }

    /// Drops the idle connections (of every worker): their descriptors are wanted elsewhere.
    pub fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    async fn connect(&self, fds: &Arc<Budget>) -> Result<SendRequest<ReqBody>, SendError> {
        let Some(fd) = fds.take() else {
            self.drop_idle();
            return Err(SendError::NoFd);
        };
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                .await
                .map_err(|_| SendError::Connect("timed out".into()))?
                .map_err(|e| SendError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(Held::new(stream, fd)))
                .await
                .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends a request; on failure, hands the request back when it never left.
    pub async fn send(
        &self,
        req: Request<ReqBody>,
        fds: &Arc<Budget>,
    ) -> Result<Response<Incoming>, (SendError, Option<Request<ReqBody>>)> {
        let (mut sender, reused) = match self.take_idle() {
            Some(s) => (s, true),
            None => match self.connect(fds).await {
                Ok(s) => (s, false),
                Err(e) => return Err((e, Some(req))),
            },
        };
        let resp = match sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => {
                let unsent = e.take_message();
                let err = if reused && unsent.is_some() {
                    // The backend closed this idle connection before our request went out.
                    SendError::Connect(format!("stale keep-alive connection: {}", e.error()))
                } else {
                    SendError::Http(e.into_error())
                };
                return Err((err, unsent));
            }
        };
        // Back into the pool; it is reusable once this response's body has been read.
        let me = crate::current_worker();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The limit is per worker: one worker's idle connections never crowd out another's.
        if !sender.is_closed() && idle.iter().filter(|(w, _)| *w == me).count() < MAX_IDLE {
            idle.push((me, sender));
        }
        Ok(resp)
    }
}
