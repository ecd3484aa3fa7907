//! Talking to the host agent over `ROOT/agent.sock`, and starting one when needed.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_wire::{Answer, Line, Request};

use crate::output::{AgentError, hinted};

pub use drover_fleet::host::agent_socket as socket;

fn connect(root: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket(root)).map_err(|e| connect_error(root, e))
}

/// Why the agent's socket cannot be used: there is none (or nobody listens), or it is
/// another user's.
fn connect_error(root: &Path, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        hinted(
            format!(
                "{} exists, but this user (uid {}) may not connect to it ({e})",
                socket(root).display(),
                rustix::process::geteuid().as_raw()
            ),
            "run drover as the user the agent runs as (e.g. with sudo), or use a root of your own with `--root DIR`",
        )
    } else {
        hinted(
            format!("no drover agent is running for {} ({e})", root.display()),
            "start one with `drover agent` (or `drover up`, which starts it for you)",
        )
    }
}

/// The most a request may take on the wire (its JSON line, newline included).
pub const MAX_REQUEST: usize = drover_wire::MAX_LINE;

/// The bytes `req` takes on the wire.
pub fn request_len(req: &Request) -> usize {
    serde_json::to_vec(req).map_or(0, |v| v.len()) + 1
}

/// A request over the agent's limit; `what` names the part of it that is large.
pub fn too_large(req: &Request, what: Option<&str>) -> anyhow::Error {
    let size = format!(
        "the request would be {}, more than the agent takes ({})",
        crate::output::bytes(request_len(req) as u64),
        crate::output::bytes(MAX_REQUEST as u64)
    );
    hinted(
        match what {
            Some(what) => format!("{what}: {size}"),
            None => size,
        },
        "keep large data in the app's files, not in config values",
    )
}

/// Sends a request; `on_line` sees every progress event and log line; returns the reply,
/// read as `T` (`serde::de::IgnoredAny` when it does not matter).
pub fn call<T: serde::de::DeserializeOwned>(
    root: &Path,
    req: &Request,
    on_line: impl FnMut(&Line),
) -> anyhow::Result<T> {
    let (items, reply) = exchange::<T, serde::de::IgnoredAny>(root, req, on_line)?;
    if !items.is_empty() {
        anyhow::bail!("unexpected answer from the agent: a list sent item by item");
    }
    Ok(reply)
}

/// `call` for a list reply, which the agent may send item by item (a long history).
pub fn call_list<X: serde::de::DeserializeOwned>(
    root: &Path,
    req: &Request,
    on_line: impl FnMut(&Line),
) -> anyhow::Result<Vec<X>> {
    let (mut items, rest) = exchange::<Vec<X>, X>(root, req, on_line)?;
    items.extend(rest);
    Ok(items)
}

/// One request and its whole answer: the items sent ahead of the reply, and the reply.
fn exchange<T, I>(
    root: &Path,
    req: &Request,
    mut on_line: impl FnMut(&Line),
) -> anyhow::Result<(Vec<I>, T)>
where
    T: serde::de::DeserializeOwned,
    I: serde::de::DeserializeOwned,
{
    if request_len(req) > MAX_REQUEST {
        return Err(too_large(req, None));
    }
    let mut stream = connect(root)?;
    // An agent that refuses the connection (too many open, no thread to serve it) says why
    // and closes before reading the request: its reply is read all the same.
    let sent = drover_wire::write_line(&mut stream, req);
    let mut reader = BufReader::new(stream);
    let mut items = Vec::new();
    loop {
        let Some(line) = drover_wire::read_line(&mut reader)? else {
            sent?;
            anyhow::bail!(
                "the agent closed the connection without an answer (did it crash? see {})",
                root.join("agent.log").display()
            );
        };
        match drover_wire::read_answer::<T, I>(&line)
            .map_err(|e| anyhow::anyhow!("bad line from the agent: {e}: {line}"))?
        {
            Answer::Ok(v) => return Ok((items, v)),
            Answer::Item(item) => items.push(item),
            Answer::Error(e) => return Err(AgentError(e).into()),
            Answer::Event(e) => on_line(&Line::Event(e)),
            Answer::Log(log) => on_line(&Line::Log { log }),
        }
    }
}

/// Prints progress events on stderr.
pub fn print_events(line: &Line) {
    match line {
        Line::Event(e) => eprintln!("  {}", e.event),
        Line::Log { log } => println!("{log}"),
        Line::Item { .. } | Line::Reply(_) => {}
    }
}

pub use drover_fleet::host::agent_answers as is_running;

/// Starts `drover agent` in the background (its own session, output to ROOT/agent.log)
/// unless one answers already; waits until it does.
pub fn ensure_agent(root: &Path) -> anyhow::Result<()> {
    if let Err(e) = UnixStream::connect(socket(root))
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        // Another user's agent: starting one here would not help.
        return Err(connect_error(root, e));
    }
    if is_running(root) {
        return Ok(());
    }
    start_agent(root, false)
}

/// The running agent's pid, if one answers.
fn agent_pid(root: &Path) -> Option<u64> {
    call::<drover_wire::Pong>(root, &Request::Ping, |_| {})
        .ok()
        .map(|p| u64::from(p.pid))
}

/// Starts `drover agent` in the background; with `replace`, as the successor of the running
/// one (which hands its sockets over and exits; the apps keep running). Waits until the new
/// agent answers.
pub fn start_agent(root: &Path, replace: bool) -> anyhow::Result<()> {
    let old = agent_pid(root);
    std::fs::create_dir_all(root)?;
    let log_path = root.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--root")
        .arg(root)
        .arg("agent")
        .args(replace.then_some("--replace"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    eprintln!(
        "started the drover agent (pid {}, log {})",
        child.id(),
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if agent_pid(root).is_some_and(|p| Some(p) != old) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = tail.lines().rev().take(5).collect();
            anyhow::bail!(
                "the agent exited at start ({status}); last lines of {}:\n{}",
                log_path.display(),
                last.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!(
        "the agent did not answer within 15s; see {}",
        log_path.display()
    )
}

/// Who is acting: `user@host`.
pub use drover_fleet::who;
