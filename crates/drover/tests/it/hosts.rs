//! `Fleet`: several SSH-reachable Linux hosts simulated on this machine, for end-to-end fleet
//! tests of drover.
//!
//! Each host is a network namespace joined to the root namespace by a veth pair, with its own
//! IPv4 /24 and its own `sshd` listening on port 22 of the namespace-side address. Every SSH
//! session gets `DROVER_ROOT` set (by `sshd`'s `SetEnv`) to a per-host directory, so drover
//! running "on" a host keeps its state apart from the other hosts even though all of them share
//! one filesystem. Processes started by those sessions live in the host's namespace, so a
//! host's network can be cut (`Fleet::cut`) and everything it runs can be killed as a unit.
//!
//! Requires root and iproute2. Names and subnets come from a slot allocated per fleet (a
//! counter and lease files under `/tmp`, protected by `flock`), so fleets created by concurrent
//! test processes never collide, and resources left behind by a crashed run are swept when
//! their slot is claimed again.
//!
//! Naming, with `S` the slot and `i` the 0-based host index:
//! - alias in `ssh_config`: `h{i+1}`; per-host files under `<fleet dir>/h{i+1}/`
//! - network namespace `drvt{S}h{i}`, root-side veth `dv{S}h{i}`, namespace-side veth `eth0`
//! - root side `10.{200+i}.{S}.1/24`, host address `10.{200+i}.{S}.2/24`
//! - `dz{S}`: an ifb device of the fleet, the packet sink used while a host is cut (see `cut`)

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Directory holding the slot counter, its lock and one lease file per slot in use.
const STATE_DIR: &str = "/tmp/drover-test-fleets";
/// Slots 0..=254: the slot is the third octet of every host address.
const SLOTS: u32 = 255;
/// Host `i` uses the second octet `200 + i`, so a fleet has at most 56 hosts.
const MAX_HOSTS: usize = 56;
/// Bound for every `ip` / `ssh-keygen` invocation.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for a `Fleet::ssh` call, remote command included.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each `sshd` gets to start accepting connections.
const SSHD_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Metric of the sink route: higher than the connected route of the veth, so it is used only
/// while the veth is down.
const SINK_METRIC: &str = "4000";

pub struct Fleet {
    /// Keys, ssh_config, known_hosts, per-host roots, sshd configs and logs.
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    /// For `ssh -F`: one `Host hN` block per host, then the shared options under `Host *`.
    pub ssh_config: PathBuf,
    /// The client's private key (ed25519, no passphrase).
    pub identity: PathBuf,
    /// `IP ssh-ed25519 KEY` for every host except those in `FleetOptions::unknown_key`.
    pub known_hosts: PathBuf,
    slot: u32,
}

pub struct Host {
    /// `h1`, `h2`, ...: the alias used in `ssh_config`.
    pub name: String,
    /// The host's address inside its namespace, reachable from the root namespace.
    pub ip: String,
    pub netns: String,
    /// Root-namespace end of the veth pair: what `Fleet::cut` takes down.
    pub veth: String,
    /// This host's drover root: `sshd` sets `DROVER_ROOT` to it for every session.
    pub root: PathBuf,
    sshd: Child,
    sshd_config: PathBuf,
    sshd_log: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct FleetOptions {
    pub hosts: usize,
    /// Indices (0-based) whose host key is NOT written to known_hosts.
    pub unknown_key: Vec<usize>,
    /// Indices (0-based) whose sshd does not accept the client key.
    pub refuse_login: Vec<usize>,
}

impl Host {
    /// What this host's `sshd` has logged so far (errors only).
    pub fn sshd_log(&self) -> String {
        fs::read_to_string(&self.sshd_log).unwrap_or_default()
    }
}

impl Fleet {
    pub fn new(n: usize) -> Fleet {
        Fleet::with(FleetOptions {
            hosts: n,
            ..Default::default()
        })
    }

    pub fn with(opts: FleetOptions) -> Fleet {
        assert!(
            (1..=MAX_HOSTS).contains(&opts.hosts),
            "a fleet has 1 to {MAX_HOSTS} hosts, not {}",
            opts.hosts
        );
        for &i in opts.unknown_key.iter().chain(&opts.refuse_login) {
            assert!(i < opts.hosts, "host index {i} out of range for {opts:?}");
        }

        let dir = tempfile::tempdir().expect("tempdir for the fleet");
        // Paths go unquoted into sshd_config and ssh_config.
        assert!(
            !dir.path().to_string_lossy().contains(char::is_whitespace),
            "fleet dir {} contains whitespace",
            dir.path().display()
        );
        let slot = claim_slot();
        let mut fleet = Fleet {
            ssh_config: dir.path().join("ssh_config"),
            identity: dir.path().join("id_ed25519"),
            known_hosts: dir.path().join("known_hosts"),
            dir,
            hosts: Vec::new(),
            slot,
        };
        // From here on, a panic drops `fleet`, which removes whatever was created so far.
        sweep_slot(slot);
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (sshd privilege separation)");
        keygen(&fleet.identity, "drover-test-client");
        let client_pub = public_key(&fleet.identity);

        // The sink: while a host's veth is down, its subnet is routed here and packets are
        // dropped silently. Without it they would follow the default route out of the machine.
        let sink = sink_name(slot);
        ip(&["link", "add", &sink, "type", "ifb"]);
        ip(&["link", "set", &sink, "up"]);

        for i in 0..opts.hosts {
            let host = start_host(
                fleet.dir.path(),
                slot,
                i,
                &sink,
                if opts.refuse_login.contains(&i) {
                    ""
                } else {
                    &client_pub
                },
            );
            fleet.hosts.push(host);
        }

        let mut known = String::new();
        let mut config = String::new();
        for (i, h) in fleet.hosts.iter().enumerate() {
            if !opts.unknown_key.contains(&i) {
                let key = public_key(&host_key_path(fleet.dir.path(), i));
                known.push_str(&format!("{} {key}\n", h.ip));
            }
            config.push_str(&format!(
                "Host {}\n    HostName {}\n    User root\n\n",
                h.name, h.ip
            ));
        }
        // ssh takes the first value it finds for an option, so the shared block comes last.
        config.push_str(&format!(
            "Host *\n    IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
             StrictHostKeyChecking yes\n    GlobalKnownHostsFile /dev/null\n    \
             UpdateHostKeys no\n    BatchMode yes\n    ConnectTimeout 5\n    LogLevel ERROR\n",
            fleet.identity.display(),
            fleet.known_hosts.display()
        ));
        fs::write(&fleet.known_hosts, known).expect("write known_hosts");
        fs::write(&fleet.ssh_config, config).expect("write ssh_config");

        fleet.wait_for_sshd();
        fleet
    }

    /// Waits until every host's port 22 accepts a TCP connection; panics with the sshd log
    /// if one exits or does not listen in time.
    fn wait_for_sshd(&mut self) {
        let deadline = Instant::now() + SSHD_START_TIMEOUT;
        for h in &mut self.hosts {
            let addr = SocketAddr::from((parse_ip(&h.ip), 22));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
                    break;
                }
                let exited = h.sshd.try_wait().ok().flatten();
                if exited.is_some() || Instant::now() >= deadline {
                    panic!(
                        "sshd of {} ({addr} in netns {}) {}\nconfig {}:\n{}\nlog:\n{}",
                        h.name,
                        h.netns,
                        match exited {
                            Some(status) => format!("exited with {status}"),
                            None => format!("not listening after {SSHD_START_TIMEOUT:?}"),
                        },
                        h.sshd_config.display(),
                        fs::read_to_string(&h.sshd_config).unwrap_or_default(),
                        h.sshd_log()
                    );
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Network down for host `i`: `ip link set <veth> down`. Packets to and from the host
    /// vanish (they go to the sink, or are dropped by the carrier-less peer); nothing is
    /// refused or reset, so established connections stall instead of failing.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].veth, "down"]);
    }

    /// Link up again after `cut`; stalled connections resume with their next retransmission.
    pub fn restore(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].veth, "up"]);
    }

    /// rx_bytes + tx_bytes of host `i`'s root-side veth: everything that crossed its wire.
    /// IPv6 is disabled on the pair, so between requests only the odd ARP packet adds to it.
    pub fn wire_bytes(&self, i: usize) -> u64 {
        let veth = &self.hosts[i].veth;
        ["rx_bytes", "tx_bytes"]
            .iter()
            .map(|f| {
                let p = format!("/sys/class/net/{veth}/statistics/{f}");
                let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {p}: {e}"));
                s.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|e| panic!("{p} holds {s:?}: {e}"))
            })
            .sum()
    }

    /// HTTP/1.1 GET from the root namespace to `ip:port` of host `i`, with `Connection: close`.
    /// (status code, body), or None on any error, or if the whole exchange takes longer than
    /// `timeout`.
    pub fn http_get(
        &self,
        i: usize,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        let ip = parse_ip(&self.hosts[i].ip);
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((ip, port)), remaining(deadline)?).ok()?;
        s.set_write_timeout(Some(remaining(deadline)?)).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(done) = parse_response(&buf, false) {
                return Some(done);
            }
            s.set_read_timeout(Some(remaining(deadline)?)).ok()?;
            match s.read(&mut chunk) {
                Ok(0) => return parse_response(&buf, true),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// `ssh -F ssh_config -o BatchMode=yes hN -- remote_cmd`, without stdin, output captured.
    /// Bounded by `SSH_TIMEOUT`: past it ssh is killed and the note is appended to stderr.
    pub fn ssh(&self, i: usize, remote_cmd: &str) -> Output {
        run_bounded(self.ssh_command(i, remote_cmd), SSH_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
    }

    /// The command lines (arguments joined by spaces) of every process in host `i`'s
    /// namespace: sshd, its sessions and whatever they started.
    pub fn processes(&self, i: usize) -> Vec<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "pids", &self.hosts[i].netns]);
        let out = run_bounded(c, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("cannot run ip: {e}"));
        assert!(out.status.success(), "ip netns pids: {}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            // A process that ended since is not there.
            .filter_map(|pid| fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|b| text(&b).trim_end_matches('\0').replace('\0', " "))
            .collect()
    }

    /// The `Command` behind `ssh`, for callers that need to spawn it themselves.
    pub fn ssh_command(&self, i: usize, remote_cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&self.ssh_config)
            .args(["-o", "BatchMode=yes", &self.hosts[i].name, "--", remote_cmd])
            .stdin(Stdio::null());
        c
    }
}

impl Drop for Fleet {
    /// Kills every process in each host's namespace (sshd, its sessions and whatever they
    /// started), deletes the namespaces, veths and sink, then frees the slot. Never panics.
    fn drop(&mut self) {
        for h in &mut self.hosts {
            let _ = h.sshd.kill();
        }
        sweep_slot(self.slot);
        for h in &mut self.hosts {
            reap(&mut h.sshd, Duration::from_secs(5));
        }
        let _ = fs::remove_file(lease_path(self.slot));
    }
}

/// Creates host `i` of fleet `slot`: namespace, veth pair, addresses, routes, host key,
/// sshd config; spawns its sshd. `authorized` is the authorized_keys content.
fn start_host(dir: &Path, slot: u32, i: usize, sink: &str, authorized: &str) -> Host {
    let name = format!("h{}", i + 1);
    let netns = format!("drvt{slot}h{i}");
    let veth = format!("dv{slot}h{i}");
    let net = format!("10.{}.{slot}", 200 + i);
    let (root_ip, host_ip) = (format!("{net}.1"), format!("{net}.2"));

    ip(&["netns", "add", &netns]);
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
    ]);
    // No IPv6 on the pair: no router solicitations or MLD reports on the wire.
    disable_ipv6(None, &veth);
    disable_ipv6(Some(&netns), "eth0");
    ip(&["addr", "add", &format!("{root_ip}/24"), "dev", &veth]);
    ip(&["link", "set", &veth, "up"]);
    ip(&["-n", &netns, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &netns,
        "addr",
        "add",
        &format!("{host_ip}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &netns, "link", "set", "eth0", "up"]);
    // Replies to a connection opened from another root-namespace address (one begun while the
    // link was down picks the source address of the default route) go back over the veth.
    ip(&["-n", &netns, "route", "add", "default", "via", &root_ip]);
    ip(&[
        "route",
        "add",
        &format!("{net}.0/24"),
        "dev",
        sink,
        "metric",
        SINK_METRIC,
    ]);

    let hdir = dir.join(&name);
    let root = hdir.join("root");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    let host_key = host_key_path(dir, i);
    keygen(&host_key, &format!("drover-test-{name}"));
    let authorized_keys = hdir.join("authorized_keys");
    fs::write(&authorized_keys, authorized).expect("write authorized_keys");
    let sshd_config = hdir.join("sshd_config");
    let sshd_log = hdir.join("sshd.log");
    let config = format!(
        "# sshd of drover test host {name} (netns {netns})\n\
         ListenAddress {host_ip}:22\n\
         AddressFamily inet\n\
         HostKey {}\n\
         PidFile {}\n\
         AuthorizedKeysFile {}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         SetEnv DROVER_ROOT={}\n\
         AcceptEnv DROVER_FAILPOINT\n\
         MaxSessions 64\n\
         MaxStartups 100\n\
         LogLevel ERROR\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         Subsystem sftp internal-sftp\n",
        host_key.display(),
        hdir.join("sshd.pid").display(),
        authorized_keys.display(),
        root.display()
    );
    fs::write(&sshd_config, config).expect("write sshd_config");

    let log = fs::File::create(&sshd_log).expect("create sshd.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &netns, "/usr/sbin/sshd", "-D", "-e", "-f"])
        .arg(&sshd_config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup sshd.log"))
        .stderr(log);
    let sshd = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));

    Host {
        name,
        ip: host_ip,
        netns,
        veth,
        root,
        sshd,
        sshd_config,
        sshd_log,
    }
}

fn host_key_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("h{}", i + 1)).join("ssh_host_ed25519_key")
}

fn sink_name(slot: u32) -> String {
    format!("dz{slot}")
}

fn parse_ip(s: &str) -> Ipv4Addr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad host address {s:?}: {e}"))
}

/// `ip ARGS`, which must succeed.
#[track_caller]
fn ip(args: &[&str]) {
    let mut c = Command::new("ip");
    c.args(args);
    check(c);
}

/// Runs `cmd` bounded by `TOOL_TIMEOUT`; panics with its stderr unless it succeeds.
#[track_caller]
fn check(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = run_bounded(cmd, TOOL_TIMEOUT).unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    assert!(
        out.status.success(),
        "{desc} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn disable_ipv6(netns: Option<&str>, dev: &str) {
    let knob = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    match netns {
        None => fs::write(&knob, "1").unwrap_or_else(|e| panic!("write {knob}: {e}")),
        // /proc/sys/net shows the namespace of the process that opens it, hence the shell.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {knob}")]);
            check(c);
        }
    }
}

fn keygen(path: &Path, comment: &str) {
    let mut c = Command::new("ssh-keygen");
    c.args(["-t", "ed25519", "-N", "", "-q", "-C", comment, "-f"])
        .arg(path);
    check(c);
}

/// `TYPE KEY` from the `.pub` file next to the private key `path` (comment dropped).
fn public_key(path: &Path) -> String {
    let p = path.with_extension("pub");
    let s = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let fields: Vec<&str> = s.split_whitespace().take(2).collect();
    assert_eq!(fields.len(), 2, "{} holds {s:?}", p.display());
    fields.join(" ")
}

/// Runs `cmd` with stdout and stderr captured and stdin closed. Past `timeout` the process
/// is killed, its status is the kill's, and a note is appended to stderr.
fn run_bounded(mut cmd: Command, timeout: Duration) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break child.wait()?;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A grandchild may still hold the pipes open; do not wait for it forever.
    let stdout = out.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let mut stderr = err.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    if killed {
        stderr.extend_from_slice(format!("\n[killed after {timeout:?}]\n").as_bytes());
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads `r` to the end on a thread; the bytes arrive on the returned channel.
fn drain(r: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut r) = r {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// Time left until `deadline`, or None once it has passed (a zero socket timeout is an error).
fn remaining(deadline: Instant) -> Option<Duration> {
    let r = deadline.saturating_duration_since(Instant::now());
    (!r.is_zero()).then_some(r)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (status, body) once `buf` holds a complete HTTP response; `eof`: no more bytes will come.
/// Handles Content-Length, chunked bodies and bodies delimited by the connection's end.
fn parse_response(buf: &[u8], eof: bool) -> Option<(u16, String)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body = &buf[head_end + 4..];
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next()?.split_whitespace();
    if !status_line.next()?.starts_with("HTTP/") {
        return None;
    }
    let code: u16 = status_line.next()?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(v.parse::<usize>().ok()?);
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if code == 204 || code == 304 || (100..200).contains(&code) {
        Some((code, String::new()))
    } else if chunked {
        dechunk(body).map(|b| (code, text(&b)))
    } else if let Some(len) = length {
        (body.len() >= len).then(|| (code, text(&body[..len])))
    } else {
        eof.then(|| (code, text(body)))
    }
}

/// The payload of a complete chunked body, None while it is incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(b, b"\r\n")?;
        let size_field = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

// ---- slots ---------------------------------------------------------------------------------

fn lease_path(slot: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("slot-{slot}"))
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat); None if the
/// process does not exist or is a zombie. Together with the pid it names a process uniquely.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return None;
    }
    rest.get(19)?.parse().ok()
}

/// A lease is live while the process that wrote it runs (same pid and start time).
fn lease_is_live(slot: u32) -> bool {
    let Ok(s) = fs::read_to_string(lease_path(slot)) else {
        return false;
    };
    let mut it = s.split_whitespace().map(|f| f.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(pid), Some(start)) => u32::try_from(pid).ok().and_then(start_time) == Some(start),
        _ => false,
    }
}

/// Claims the next slot whose lease is not live, starting after the last one handed out
/// (so a freed slot is not reused at once), and writes this process's lease for it.
fn claim_slot() -> u32 {
    fs::create_dir_all(STATE_DIR).unwrap_or_else(|e| panic!("mkdir {STATE_DIR}: {e}"));
    let lock_path = Path::new(STATE_DIR).join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
    // The lock is held for a few file operations at a time: ten seconds means a hung holder.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("flock {}: {e}", lock_path.display()),
        }
    }
    let counter = Path::new(STATE_DIR).join("next");
    let next = fs::read_to_string(&counter)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        % SLOTS;
    let me = std::process::id();
    let my_start = start_time(me).expect("start time of this process");
    for k in 0..SLOTS {
        let slot = (next + k) % SLOTS;
        if lease_is_live(slot) {
            continue;
        }
        fs::write(lease_path(slot), format!("{me} {my_start}\n")).expect("write slot lease");
        fs::write(&counter, format!("{}\n", (slot + 1) % SLOTS)).expect("write slot counter");
        return slot;
    }
    panic!("all {SLOTS} fleet slots in {STATE_DIR} are held by live processes");
}

/// Removes every namespace, veth and sink of `slot`, killing the processes in the
/// namespaces first. Used on a freshly claimed slot (leftovers of a crashed run) and on
/// drop. Never panics.
fn sweep_slot(slot: u32) {
    let ns_prefix = format!("drvt{slot}h");
    let veth_prefix = format!("dv{slot}h");
    let is_ours = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaces: Vec<String> = names("/run/netns")
        .into_iter()
        .filter(|n| is_ours(n, &ns_prefix))
        .collect();
    for ns in &namespaces {
        kill_netns_processes(ns);
    }
    // Deleting the root end of a veth pair deletes both ends, with their routes.
    for link in names("/sys/class/net") {
        if is_ours(&link, &veth_prefix) || link == sink_name(slot) {
            quiet(&["link", "del", &link]);
        }
    }
    for ns in &namespaces {
        quiet(&["netns", "del", ns]);
    }
}

/// SIGKILLs every process in namespace `ns`, repeating while new ones appear (a dying
/// sshd session may still fork), for at most five seconds.
fn kill_netns_processes(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut c = Command::new("ip");
        c.args(["netns", "pids", ns]);
        let Ok(out) = run_bounded(c, Duration::from_secs(5)) else {
            return;
        };
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `ip ARGS`, ignoring failure (for cleanup of things that may not exist).
fn quiet(args: &[&str]) {
    let mut c = Command::new("ip");
    c.args(args);
    let _ = run_bounded(c, Duration::from_secs(10));
}

/// Collects the exit status of a killed child, waiting at most `timeout`.
fn reap(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while let Ok(None) = child.try_wait() {
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---- self-tests ----------------------------------------------------------------------------

/// Polls `f` until it returns Some, for at most `timeout`.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ssh_ok(fleet: &Fleet, i: usize, cmd: &str) -> String {
    let out = fleet.ssh(i, cmd);
    assert!(
        out.status.success(),
        "ssh {} {cmd:?} failed with {}\nstderr:\n{}\nsshd log:\n{}",
        fleet.hosts[i].name,
        out.status,
        text(&out.stderr),
        fleet.hosts[i].sshd_log()
    );
    text(&out.stdout)
}

#[test]
fn fleet_hosts_are_separate_machines() {
    let fleet = Fleet::new(2);
    let (h1, h2) = (&fleet.hosts[0], &fleet.hosts[1]);
    assert_ne!(h1.root, h2.root);
    assert_ne!(h1.ip, h2.ip);
    for (i, h) in fleet.hosts.iter().enumerate() {
        assert_eq!(
            ssh_ok(&fleet, i, "echo $DROVER_ROOT").trim(),
            h.root.display().to_string()
        );
        assert!(h.root.is_dir());
        // The session runs in the host's network namespace: same nsfs inode as the name.
        let ns = ssh_ok(&fleet, i, "readlink /proc/self/ns/net");
        let ino = fs::metadata(Path::new("/run/netns").join(&h.netns))
            .unwrap()
            .ino();
        assert_eq!(ns.trim(), format!("net:[{ino}]"), "{}", h.name);
    }

    // A server in h1's namespace, started directly; the fleet's drop has to kill it.
    let www = fleet.dir.path().join("www");
    fs::create_dir_all(&www).unwrap();
    fs::write(www.join("hello.txt"), "hello from h1\n").unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h1.netns,
            "python3",
            "-m",
            "http.server",
            "8080",
        ])
        .args(["--bind", "0.0.0.0"])
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let short = Duration::from_secs(1);
    let got = poll(Duration::from_secs(10), || {
        fleet.http_get(0, 8080, "/hello.txt", short)
    });
    assert_eq!(got, Some((200, "hello from h1\n".to_string())));
    assert_eq!(fleet.http_get(1, 8080, "/hello.txt", short), None);
    // The directory listing of `www`: a generated body, longer than one line.
    let (code, listing) = fleet.http_get(0, 8080, "/", short).unwrap();
    assert_eq!(code, 200);
    assert!(listing.contains("hello.txt"), "{listing}");

    let before = fleet.wire_bytes(0);
    fleet.http_get(0, 8080, "/hello.txt", short).unwrap();
    let after = fleet.wire_bytes(0);
    assert!(after > before + 100, "wire bytes {before} -> {after}");

    // Cut: the GET is neither answered nor refused, it runs into its timeout.
    fleet.cut(0);
    let idle = fleet.wire_bytes(0);
    let t = Instant::now();
    let timeout = Duration::from_secs(2);
    assert_eq!(fleet.http_get(0, 8080, "/hello.txt", timeout), None);
    let took = t.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(50) && took < timeout + Duration::from_secs(1),
        "GET to a cut host ended after {took:?}"
    );
    assert_eq!(fleet.wire_bytes(0), idle, "bytes crossed a cut link");
    // The other host is unaffected.
    assert_eq!(ssh_ok(&fleet, 1, "echo up").trim(), "up");

    fleet.restore(0);
    let got = poll(Duration::from_secs(5), || {
        fleet.http_get(0, 8080, "/hello.txt", short)
    });
    assert_eq!(got, Some((200, "hello from h1\n".to_string())));

    // Drop: the server is killed, names and links are gone.
    let (netns, veth) = (h1.netns.clone(), h1.veth.clone());
    let slot = fleet.slot;
    drop(fleet);
    let exited = poll(Duration::from_secs(5), || server.try_wait().unwrap());
    assert!(
        exited.is_some(),
        "the server in h1's namespace survived the fleet"
    );
    assert!(!Path::new("/run/netns").join(&netns).exists());
    assert!(!Path::new("/sys/class/net").join(&veth).exists());
    assert!(!Path::new("/sys/class/net").join(sink_name(slot)).exists());
    assert!(!lease_path(slot).exists());
}

#[test]
fn cut_stalls_an_open_session_without_breaking_it() {
    let fleet = Fleet::new(1);
    let started = fleet.hosts[0].root.join("started");
    thread::scope(|s| {
        let session = s.spawn(|| {
            fleet.ssh(
                0,
                &format!("touch {}; sleep 2; echo survived", started.display()),
            )
        });
        assert!(
            poll(Duration::from_secs(10), || started.exists().then_some(())).is_some(),
            "the session did not start"
        );
        fleet.cut(0);
        // The remote side answers while the link is down; its packets must not be lost
        // for good nor turned into a reset.
        thread::sleep(Duration::from_secs(3));
        fleet.restore(0);
        let out = session.join().unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout).trim(), "survived");
    });
}

#[test]
fn unknown_host_keys_and_refused_logins_fail_like_real_hosts() {
    let fleet = Fleet::with(FleetOptions {
        hosts: 3,
        unknown_key: vec![1],
        refuse_login: vec![2],
    });
    assert_eq!(ssh_ok(&fleet, 0, "echo ok").trim(), "ok");

    let out = fleet.ssh(1, "true");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "{}",
        text(&out.stderr)
    );

    let out = fleet.ssh(2, "true");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );

    // identity and known_hosts also work without the ssh_config.
    let h1 = &fleet.hosts[0];
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(&fleet.identity)
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            fleet.known_hosts.display()
        ))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg(format!("root@{}", h1.ip))
        .arg("echo $DROVER_ROOT");
    let out = run_bounded(c, SSH_TIMEOUT).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), h1.root.display().to_string());
}

#[test]
fn fleets_in_one_process_do_not_collide() {
    let a = Fleet::new(1);
    let b = Fleet::new(1);
    assert_ne!(a.slot, b.slot);
    assert_ne!(a.hosts[0].netns, b.hosts[0].netns);
    assert_ne!(a.hosts[0].veth, b.hosts[0].veth);
    assert_ne!(a.hosts[0].ip, b.hosts[0].ip);
    assert_eq!(ssh_ok(&a, 0, "echo a").trim(), "a");
    assert_eq!(ssh_ok(&b, 0, "echo b").trim(), "b");
    // Cutting one leaves the other reachable.
    a.cut(0);
    assert_eq!(ssh_ok(&b, 0, "echo b").trim(), "b");
    a.restore(0);
    assert_eq!(ssh_ok(&a, 0, "echo a").trim(), "a");
}
