//! App processes at the OS level: spawn in their own process group, find them again in
//! `/proc` after an agent restart, signal whole groups, and probe health.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::confine::Confine;

/// Environment variables that tag every instance so a restarted agent can find it.
pub const ENV_ROOT: &str = "DROVER_AGENT_ROOT";
pub const ENV_INSTANCE: &str = "DROVER_INSTANCE";

/// Spawns `sh -c command` in `dir` as the leader of a new process group, with exactly
/// `env` (plus HOME/LANG/TZ from the agent; PATH from `env`, else the system's) and output
/// appended to `log` (each line `stamped` with its time, or as it is), confined as `how`
/// says (`confine::spawn`).
pub fn spawn(
    command: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
    log: &Path,
    how: &Confine,
    stamped: bool,
) -> std::io::Result<Child> {
    let mut sink = crate::logs::Sink::open(log, stamped)?;
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(exec_simple(command))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(std::mem::replace(&mut sink.out, Stdio::null()))
        .stderr(std::mem::replace(&mut sink.err, Stdio::null()))
        .process_group(0);
    for key in ["HOME", "LANG", "TZ"] {
        if let Some(v) = std::env::var_os(key) {
            c.env(key, v);
        }
    }
    // Never the agent's own PATH: `env` has the release's (its dependencies' first).
    c.env("PATH", drover_store::SYSTEM_PATH);
    c.envs(env);
    let child = crate::confine::spawn(&mut c, dir, how);
    // The pipe's write end now belongs to the child alone: the writer ends when it does.
    drop(c);
    match child {
        Ok(child) => {
            sink.started(child.id());
            Ok(child)
        }
        Err(e) => {
            sink.abandon();
            Err(e)
        }
    }
}

/// A simple command (no shell syntax) is run with `exec`, so the app itself is the process
/// drover supervises, without a shell waiting in between.
fn exec_simple(command: &str) -> String {
    let simple = !command.trim().is_empty()
        && !command.contains(|c: char| ";&|<>()$`{}\\\n*?[]#~=!\"'".contains(c))
        && !command.trim_start().starts_with("exec ");
    if simple {
        format!("exec {command}")
    } else {
        command.to_string()
    }
}

/// A free TCP port on loopback for an instance (bound and released; the app binds it right
/// after). Ports come from below the kernel's ephemeral range, which outgoing connections
/// draw from, and none is handed out twice within a minute: between the check and the app's
/// own bind, neither an outgoing connection nor another instance can take it.
pub fn free_port() -> std::io::Result<u16> {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    static RECENT: Mutex<VecDeque<(u16, Instant)>> = Mutex::new(VecDeque::new());
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    while recent
        .front()
        .is_some_and(|(_, t)| t.elapsed() > Duration::from_secs(60))
    {
        recent.pop_front();
    }
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(1));
    let mut x = (std::process::id() as u64) << 32
        | std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(1)
        | 1;
    let mut pick = |lo: u16, hi: u16| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lo + (x % u64::from(hi - lo + 1)) as u16
    };
    for _ in 0..256 {
        let port = if hi > lo + 1000 {
            pick(lo, hi)
        } else {
            TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port()
        };
        if recent.iter().any(|(p, _)| *p == port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            recent.push_back((port, Instant::now()));
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port for an instance",
    ))
}

/// The kernel's start time of a process (clock ticks since boot): with the pid, it names one
/// process for ever, whatever pid reuse happens.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3 overall, starttime field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A process's `start_time` (clock ticks after boot) as Unix seconds.
pub fn started_at(start_ticks: u64) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(boot + start_ticks / hz)
}

fn pgid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(2)?.parse().ok()
}

/// Is `pid` still the process that started at `started` (and not a zombie)?
pub fn alive(pid: u32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// Sends a signal to a whole process group.
pub fn signal_group(pgid: u32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Is any process of the group still running?
pub fn group_alive(pgid: u32) -> bool {
    match Pid::from_raw(pgid as i32) {
        Some(pid) => rustix::process::test_kill_process_group(pid).is_ok() && any_live_member(pgid),
        None => false,
    }
}

fn any_live_member(pgid: u32) -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return true;
    };
    rd.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| pgid_of(pid) == Some(pgid) && start_time(pid).is_some())
    })
}

/// A process group left by an earlier agent, found through its environment tag.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    pub started: u64,
    pub instance: String,
    pub port: Option<u16>,
}

/// Every live process-group leader tagged with this agent's root.
pub fn scan(root: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pgid_of(pid) != Some(pid) {
            continue;
        }
        let Some(started) = start_time(pid) else {
            continue;
        };
        let Ok(mut f) = File::open(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            continue;
        }
        let mut tagged_root = None;
        let mut instance = None;
        let mut port = None;
        for kv in buf.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some((k, v)) = kv.split_once('=') {
                match k {
                    ENV_ROOT => tagged_root = Some(v.to_string()),
                    ENV_INSTANCE => instance = Some(v.to_string()),
                    "PORT" => port = v.parse().ok(),
                    _ => {}
                }
            }
        }
        if tagged_root.as_deref() == Some(root)
            && let Some(instance) = instance
        {
            out.push(Found {
                pid,
                started,
                instance,
                port,
            });
        }
    }
    out
}

/// A failed health probe: what it got in full (`Display`) and in a word or two (`kind`, e.g.
/// "connection refused", "HTTP 503"), by which a failed health check groups its probes.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeFailure {
    pub kind: String,
    pub detail: String,
}

impl ProbeFailure {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> ProbeFailure {
        ProbeFailure {
            kind: kind.into(),
            detail: detail.into(),
        }
    }

    /// An I/O error at `step` (connect, send, read): its kind in words, as the kernel
    /// reports it ("connection refused", "timed out").
    fn io(step: &str, e: std::io::Error) -> ProbeFailure {
        use std::io::ErrorKind;
        let kind = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => "timed out".to_string(),
            other => other.to_string(),
        };
        ProbeFailure::new(kind, format!("{step}: {e}"))
    }
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The outcome of one HTTP health probe.
pub fn probe_http(port: u16, path: &str, timeout: Duration) -> Result<u16, ProbeFailure> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| ProbeFailure::io("connect", e))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: drover-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| ProbeFailure::io("send", e))?;
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.contains(&b'\n') && got.len() < 512 {
        let n = s.read(&mut buf).map_err(|e| ProbeFailure::io("read", e))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    let line = line.lines().next().unwrap_or("").to_string();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            ProbeFailure::new(
                "not an HTTP answer",
                format!("not an HTTP answer: {line:?}"),
            )
        })?;
    if (200..300).contains(&code) {
        Ok(code)
    } else {
        Err(ProbeFailure::new(
            format!("HTTP {code}"),
            format!("GET {path} answered {line}"),
        ))
    }
}

/// Can something connect to the port?
pub fn probe_tcp(port: u16, timeout: Duration) -> Result<(), ProbeFailure> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, timeout)
        .map(|_| ())
        .map_err(|e| ProbeFailure::io(&format!("connect to port {port}"), e))
}

/// The TCP addresses `pid` and its descendants listen on (Linux: their sockets' inodes,
/// from `/proc/PID/fd`, found among the LISTEN entries of `/proc/PID/net/tcp` and `tcp6`).
/// Empty when nothing listens, or when `/proc` cannot be read.
pub fn listening(pid: u32) -> Vec<std::net::SocketAddr> {
    let mut inodes = std::collections::HashSet::new();
    for p in descendants(pid) {
        let Ok(rd) = fs::read_dir(format!("/proc/{p}/fd")) else {
            continue;
        };
        for e in rd.flatten() {
            if let Some(inode) = fs::read_link(e.path())
                .ok()
                .and_then(|l| socket_inode(&l.to_string_lossy()))
            {
                inodes.insert(inode);
            }
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            out.extend(listeners(&text, &inodes));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `pid` and every process below it (by parent pid, from `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.get(stat.rfind(')')? + 2..)?;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if let Some(ppid) = ppid {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut k = 0;
    while k < out.len() {
        let parent = out[k];
        for (p, pp) in &parent_of {
            if *pp == parent && !out.contains(p) {
                out.push(*p);
            }
        }
        k += 1;
    }
    out
}

/// The inode of a descriptor's link `socket:[INODE]`.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The local addresses of the LISTEN (state 0A) entries of a `/proc/net/tcp` or `tcp6`
/// table whose inode is one of `inodes`.
fn listeners(table: &str, inodes: &std::collections::HashSet<u64>) -> Vec<std::net::SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = f.get(9)?.parse().ok()?;
            if *f.get(3)? != "0A" || !inodes.contains(&inode) {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            Some(std::net::SocketAddr::new(
                kernel_ip(ip)?,
                u16::from_str_radix(port, 16).ok()?,
            ))
        })
        .collect()
}

/// An address as the kernel prints it in `/proc/net/tcp*`: 32-bit words in hex, each in
/// the host's byte order.
fn kernel_ip(hex: &str) -> Option<std::net::IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|k| u32::from_str_radix(hex.get(8 * k..8 * k + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match (hex.len(), bytes.len()) {
        (8, 4) => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        (32, 16) => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            Some(v6.to_ipv4_mapped().map_or(v6.into(), Into::into))
        }
        _ => None,
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    use std::io::Seek;
    if f.seek(std::io::SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    #[test]
    fn listening_addresses_are_read_from_the_kernels_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F41 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 100 0 0 10 0
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0BB9 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5152 1 0000000000000000 100 0 0 10 0
";
        // Ours: 4242 (listening), 4243 (connected, not listening), 5151 and 5152; not 99.
        let ours = [4242, 4243, 5151, 5152].into_iter().collect();
        if cfg!(target_endian = "little") {
            let got: Vec<SocketAddr> = super::listeners(tcp, &ours);
            assert_eq!(got, ["127.0.0.1:8000".parse().unwrap()]);
            let got: Vec<SocketAddr> = super::listeners(tcp6, &ours);
            assert_eq!(
                got,
                ["[::]:3000".parse().unwrap(), "[::1]:3001".parse().unwrap()]
            );
        }
        assert_eq!(super::socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(super::socket_inode("pipe:[4242]"), None);
    }

    #[test]
    fn a_process_is_found_listening_where_it_listens() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = l.local_addr().unwrap();
        assert!(super::listening(std::process::id()).contains(&at));
        drop(l);
        assert!(!super::listening(std::process::id()).contains(&at));
    }

    #[test]
    fn instance_ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let p = super::free_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
            if low > 11_000 {
                assert!((10_000..low).contains(&p), "{p}");
            }
            std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
