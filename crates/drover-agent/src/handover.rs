//! Passing listening sockets from a running agent to its replacement (SCM_RIGHTS over the
//! agent socket), so an upgrade never refuses a connection on an app's public port.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use drover_proxy::ProxyHandle;
use drover_wire::{Handover, Request};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const MAX_FDS: usize = 64;

/// The old agent's side: one message, the port list as JSON, the sockets as rights.
pub fn send(stream: &mut UnixStream, proxies: &[ProxyHandle]) -> std::io::Result<()> {
    // Every port of every app (a TLS one and its plain-HTTP one), a shared one once.
    let mut seen = std::collections::HashSet::new();
    let listeners: Vec<(u16, &TcpListener)> = proxies
        .iter()
        .flat_map(|p| p.listeners())
        .filter(|(port, _)| seen.insert(*port))
        .collect();
    let listeners = &listeners[..listeners.len().min(MAX_FDS)];
    let msg = Handover {
        ports: listeners.iter().map(|(port, _)| *port).collect(),
    };
    let mut line = serde_json::to_vec(&msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<_> = listeners.iter().map(|(_, l)| l.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets to hand over"));
    }
    let sent = rustix::net::sendmsg(
        &*stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent < line.len() {
        stream.write_all(&line[sent..])?;
    }
    Ok(())
}

/// The new agent's side: asks the running agent for its sockets. No agent running means
/// nothing to take over.
pub fn receive(sock: &Path) -> std::io::Result<HashMap<u16, TcpListener>> {
    let mut stream = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(_) => return Ok(HashMap::new()),
    };
    drover_wire::write_line(&mut stream, &Request::Handover)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    let text = &buf[..got.bytes];
    let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let msg: Handover = serde_json::from_slice(line).map_err(|e| {
        std::io::Error::other(format!("bad handover message from the running agent: {e}"))
    })?;
    if msg.ports.len() != fds.len() {
        return Err(std::io::Error::other(
            "the running agent sent a different number of sockets than ports",
        ));
    }
    Ok(msg
        .ports
        .into_iter()
        .zip(fds)
        .map(|(p, fd)| (p, TcpListener::from(fd)))
        .collect())
}
