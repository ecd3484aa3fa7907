//! The transport: the system OpenSSH client, one multiplexed master connection per host
//! (`ControlMaster`), and sessions over it: one long `drover remote serve` that carries a
//! fleet action's requests, and short `ssh -S CTL` commands for the rest. The user's ssh
//! config, agent, ProxyJump and known_hosts apply as they do for `ssh` itself.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::link::{Ending, HostError, HostLink, OpError, Peer, Serve, Slot};

use drover_config::fleet::HostSpec;

/// Settings shared by every connection of one command.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub config: Option<PathBuf>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub options: Vec<String>,
    pub timeout: Duration,
    /// The drover root on hosts whose sshd does not set `DROVER_ROOT`.
    pub remote_root: String,
    /// How long a master connection stays open after the last command used it, for the next
    /// command to reuse (zero: closed with each command).
    pub persist: Duration,
    /// Whether drover may open the TCP connection for ssh (see `relay`).
    pub relay: bool,
}

impl SshSettings {
    /// From `[ssh]`; relative paths are taken from the app directory `dir`.
    pub fn from_config(ssh: &drover_config::fleet::Ssh, dir: &Path) -> SshSettings {
        SshSettings {
            config: ssh.config.as_ref().map(|c| dir.join(c)),
            user: ssh.user.clone(),
            port: ssh.port,
            identity: ssh.identity.as_ref().map(|c| dir.join(c)),
            options: ssh.options.clone(),
            timeout: ssh.timeout.0,
            remote_root: ssh.root.clone(),
            persist: ssh.persist.0,
            relay: ssh.relay,
        }
    }
}

/// Single-quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One host's master connection.
pub struct Session {
    /// The host as the user wrote it: used in every message.
    pub name: String,
    spec: HostSpec,
    settings: SshSettings,
    ctl: PathBuf,
    /// The master connection when this command owns it (`None`: a persistent one, shared).
    master: Option<Child>,
    master_log: PathBuf,
    /// The `drover remote serve` session, started on first use.
    serve: Slot,
}

/// Reads `r` to its end on a thread of its own; the bytes arrive on the channel.
fn drain(mut r: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        let _ = tx.send(b);
    });
    rx
}

/// Waits for `child` until `deadline`; `None` when it was still running then (it is killed
/// and reaped).
pub(crate) fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The private directory of persistent control sockets, if it can be made safely.
fn persist_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = rustix::process::getuid().as_raw();
    let dir = std::env::temp_dir().join(format!("drover-ssh-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let m = std::fs::symlink_metadata(&dir).ok()?;
    if !(m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0) {
        return None;
    }
    // The logs of masters long gone.
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old && p.extension().is_some_and(|x| x == "log") && !p.with_extension("").exists() {
            let _ = std::fs::remove_file(&p);
        }
    }
    Some(dir)
}

impl Session {
    /// Opens the master connection (authenticating once) and waits until it is ready.
    pub fn connect(
        name: &str,
        settings: &SshSettings,
        ctl_dir: &Path,
        index: usize,
    ) -> Result<Session, HostError> {
        let spec = HostSpec::parse(name).map_err(HostError::new)?;
        let shared = (!settings.persist.is_zero())
            .then(persist_dir)
            .flatten()
            .map(|dir| {
                // One socket per destination and the settings that reach it.
                let key = blake3::hash(format!("{spec}|{settings:?}").as_bytes()).to_hex();
                (
                    dir.join(&key[..20]),
                    dir.join(format!("{}.log", &key[..20])),
                )
            });
        if let Some((ctl, log)) = &shared {
            // A live master accepts on its socket; a dead one's socket refuses (cheaper than
            // running `ssh -O check`).
            let alive = std::os::unix::net::UnixStream::connect(ctl).is_ok();
            if alive {
                return Ok(Session {
                    name: name.to_string(),
                    spec,
                    settings: settings.clone(),
                    ctl: ctl.clone(),
                    master: None,
                    master_log: log.clone(),
                    serve: Slot::default(),
                });
            }
        }
        let (ctl, master_log) = shared.unwrap_or_else(|| {
            (
                ctl_dir.join(format!("c{index}")),
                ctl_dir.join(format!("c{index}.log")),
            )
        });
        let _ = std::fs::remove_file(&ctl);
        // Emptied, then written in append mode: the relay appends to it too.
        let log = std::fs::File::create(&master_log)
            .and_then(|_| std::fs::OpenOptions::new().append(true).open(&master_log))
            .map_err(|e| HostError::new(format!("{}: {e}", master_log.display())))?;
        let mut cmd = base_command(&spec, settings, &ctl);
        if settings.relay
            && let Some(proxy) = super::relay::proxy_command(
                &mut base_command(&spec, settings, &ctl),
                &spec.host,
                &master_log,
            )
        {
            cmd.arg("-o")
                .arg(format!("ProxyCommand={proxy}"))
                .env("SHELL", "/bin/sh");
        }
        cmd.args(["-M", "-N", "-o"])
            .arg(if settings.persist.is_zero() {
                "ControlPersist=no".to_string()
            } else {
                // Stays for the next command, and leaves once idle that long.
                format!("ControlPersist={}", settings.persist.as_secs().max(1))
            })
            .arg(&spec.host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut master = cmd.spawn().map_err(|e| {
            HostError::new(format!("cannot run ssh: {e}")).with_hint("install openssh-client")
        })?;
        let deadline = Instant::now() + settings.timeout * 2 + Duration::from_secs(5);
        loop {
            if ctl.exists() {
                break;
            }
            if let Ok(Some(status)) = master.try_wait() {
                // A persistent master detaches into the background once connected.
                if status.success() && ctl.exists() {
                    break;
                }
                let text = std::fs::read_to_string(&master_log).unwrap_or_default();
                return Err(classify(name, &text));
            }
            if Instant::now() > deadline {
                let _ = master.kill();
                let _ = master.wait();
                return Err(HostError::new(format!(
                    "{name}: no ssh connection within {}s",
                    deadline.elapsed().as_secs() + settings.timeout.as_secs() * 2 + 5
                ))
                .with_hint(
                    "check the host is up and reachable (`ssh HOST`), or raise [ssh] timeout",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Session {
            name: name.to_string(),
            spec,
            settings: settings.clone(),
            ctl,
            // A persistent master outlives this command: it is not ours to stop.
            master: settings.persist.is_zero().then_some(master),
            master_log,
            serve: Slot::default(),
        })
    }

    /// How long a short command may take before the connection counts as stalled.
    fn deadline(&self) -> Duration {
        self.settings.timeout * 3 + Duration::from_secs(30)
    }

    fn stalled(&self) -> HostError {
        HostError::lost(format!(
            "{}: no answer within {}s (the connection stalled)",
            self.name,
            self.deadline().as_secs()
        ))
    }

    fn serve_within<R>(
        &self,
        limit: Option<Duration>,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError> {
        let mut slot = self.serve.lock();
        if slot.is_none() {
            *slot = Some(self.start_serve()?);
        }
        let serve = slot.as_mut().expect("started");
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let watchdog = limit.map(|limit| {
            let pid = match &serve.peer {
                Peer::Ssh { child, .. } => child.id(),
                Peer::Thread(_) => unreachable!("an ssh session runs ssh"),
            };
            let stalled = stalled.clone();
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                    // Still our unreaped child: it is waited for only after this thread ends.
                    stalled.store(true, std::sync::atomic::Ordering::SeqCst);
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                }
            })
        });
        let result = op(serve);
        drop(done);
        if let Some(w) = watchdog {
            let _ = w.join();
        }
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            slot.take().expect("started").end(Duration::from_secs(2));
            return Err(self.stalled());
        }
        match result {
            Ok(r) => Ok(r),
            Err(OpError::Host(e)) => Err(e),
            Err(OpError::Ended(e)) => {
                slot.take().expect("started").end(Duration::from_secs(2));
                Err(e)
            }
            Err(OpError::Broken(what)) => {
                let Ending {
                    status,
                    said: stderr,
                } = slot.take().expect("started").end(Duration::from_secs(5));
                let text = String::from_utf8_lossy(&stderr);
                if text.contains("unrecognized subcommand")
                    || text.contains("unexpected argument '--timeout'")
                {
                    // A drover without `remote serve`: which build it runs, and the fix.
                    let other =
                        super::hello(self).and_then(|h| super::check_version(self.name(), &h));
                    return Err(other.err().unwrap_or_else(|| {
                        HostError::new(format!("{}: {}", self.name, text.trim()))
                    }));
                }
                match status {
                    // Ended by ssh (255), missing (127), or failing on the host with words.
                    Some(st) if st.code().is_some() && (!st.success() || !stderr.is_empty()) => {
                        Err(self.failed(&Output {
                            status: st,
                            stdout: Vec::new(),
                            stderr,
                        }))
                    }
                    _ => Err(HostError::new(format!("{}: {what}", self.name))),
                }
            }
        }
    }

    fn start_serve(&self) -> Result<Serve, HostError> {
        let timeout = self.settings.timeout.as_secs().max(1).to_string();
        let mut child = self
            .command(&self.drover(&["serve", "--timeout", &timeout]))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HostError::new(format!("{}: cannot run ssh: {e}", self.name)))?;
        let stderr = drain(child.stderr.take().expect("piped"));
        let to_host = child.stdin.take().expect("piped");
        let from_host = child.stdout.take().expect("piped");
        Ok(Serve::new(
            Box::new(to_host),
            Box::new(from_host),
            Peer::Ssh { child, stderr },
            (self.settings.timeout / 3).max(Duration::from_millis(100)),
        ))
    }

    /// An `ssh` command running `remote` over the master connection.
    pub fn command(&self, remote: &str) -> Command {
        self.command_with_terminal(remote, false)
    }

    /// Like `command`; with `tty`, the remote command gets a terminal (`ssh -t`).
    pub fn command_with_terminal(&self, remote: &str, tty: bool) -> Command {
        let mut cmd = base_command(&self.spec, &self.settings, &self.ctl);
        cmd.args(["-o", "ControlMaster=no", if tty { "-t" } else { "-T" }])
            .arg(&self.spec.host)
            .arg("--")
            .arg(remote);
        cmd
    }

    /// The shell command that runs `drover remote OP ARGS...` in the host's drover root.
    pub fn drover(&self, args: &[&str]) -> String {
        let mut s = format!(
            "R=\"${{DROVER_ROOT:-{}}}\"; exec \"$R/bin/drover\" --root \"$R\" remote",
            self.settings.remote_root
        );
        for a in args {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s
    }

    /// Shell text that installs the binary read from stdin as `$R/bin/drover`.
    pub fn install_command(&self) -> String {
        format!(
            "R=\"${{DROVER_ROOT:-{}}}\"; mkdir -p \"$R/bin\" && cat > \"$R/bin/.drover.new\" && chmod 755 \"$R/bin/.drover.new\" && mv -f \"$R/bin/.drover.new\" \"$R/bin/drover\"",
            self.settings.remote_root
        )
    }

    /// Runs a `drover remote` operation to its end, feeding `input`; fails on a non-zero
    /// exit, in words naming the host. Bounded by the connection's keepalive and a deadline.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Result<Output, HostError> {
        let out = self.run_raw(&self.drover(args), input)?;
        if out.status.success() {
            return Ok(out);
        }
        Err(self.failed(&out))
    }

    /// Runs shell text on the host; the output whatever the exit status.
    pub fn run_raw(&self, remote: &str, input: &[u8]) -> Result<Output, HostError> {
        let mut child = self
            .command(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HostError::new(format!("{}: cannot run ssh: {e}", self.name)))?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let stdout = drain(child.stdout.take().expect("piped"));
        let stderr = drain(child.stderr.take().expect("piped"));
        let status = match wait_until(&mut child, Instant::now() + self.deadline()) {
            Ok(Some(st)) => st,
            Ok(None) => return Err(self.stalled()),
            Err(e) => return Err(HostError::new(format!("{}: {e}", self.name))),
        };
        let _ = feeder.join();
        Ok(Output {
            status,
            stdout: stdout.recv().unwrap_or_default(),
            stderr: stderr.recv().unwrap_or_default(),
        })
    }

    /// Turns a failed session's exit and stderr into a message naming the host.
    pub fn failed(&self, out: &Output) -> HostError {
        let text = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(127) || text.contains("bin/drover: not found") {
            return HostError::new(format!("{}: drover is not installed there", self.name))
                .with_hint(format!("run `drover host setup {}`", self.name));
        }
        // ssh exits with 255 when the connection is lost, and also when the command on the
        // host was killed: then the connection still answers, and drover there said why.
        let killed_there = text
            .lines()
            .any(|l| l.starts_with("drover: ") || l.starts_with("error: "))
            && classify_known(&self.name, &text).is_none()
            && std::os::unix::net::UnixStream::connect(&self.ctl).is_ok();
        if out.status.code() == Some(255) && !killed_there {
            return self.lost(&text);
        }
        let body: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("hint: "))
            .collect();
        let hint = text
            .lines()
            .find_map(|l| l.strip_prefix("hint: "))
            .map(str::to_string);
        let message = body.join("; ").trim_start_matches("error: ").to_string();
        HostError::new(format!(
            "{}: {}",
            self.name,
            if message.is_empty() {
                format!("failed ({})", out.status)
            } else {
                message
            }
        ))
        .with_hint_opt(hint)
    }

    /// The connection is gone (or never was): what ssh said about it.
    pub fn lost(&self, stderr: &str) -> HostError {
        let mut text = stderr.to_string();
        if let Ok(m) = std::fs::read_to_string(&self.master_log) {
            text.push_str(&m);
        }
        let e = classify_known(&self.name, &text).unwrap_or_else(|| {
            HostError::new(format!(
                "{}: the ssh connection was lost (no answer within the [ssh] timeout of {}s)",
                self.name,
                self.settings.timeout.as_secs()
            ))
        });
        e.as_lost()
    }
}

impl HostLink for Session {
    fn name(&self) -> &str {
        &self.name
    }

    fn with_serve<R>(
        &self,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError> {
        self.serve_within(None, op)
    }

    /// Past the deadline of a short command (as `run`), the session is killed and the host
    /// named as stalled.
    fn with_serve_bounded<R>(
        &self,
        op: impl FnOnce(&mut Serve) -> Result<R, OpError>,
    ) -> Result<R, HostError> {
        self.serve_within(Some(self.deadline()), op)
    }

    fn start_serving(&self) {
        self.serve.start_serving(|| self.start_serve());
    }

    fn hang_up(&self) {
        self.serve.hang_up();
    }

    /// Ends the serve session, then the master connection unless it is a persistent one.
    fn close(self) {
        self.serve.end(Duration::from_secs(2));
        if let Some(mut m) = self.master {
            let _ = m.kill();
            let _ = m.wait();
            let _ = std::fs::remove_file(&self.ctl);
        }
    }
}

fn base_command(spec: &HostSpec, s: &SshSettings, ctl: &Path) -> Command {
    let mut cmd = Command::new("ssh");
    if let Some(c) = &s.config {
        cmd.arg("-F").arg(c);
    }
    let secs = s.timeout.as_secs().max(1);
    let alive = (secs / 3).max(1);
    cmd.args(["-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("ConnectTimeout={secs}"))
        .arg("-o")
        .arg(format!("ServerAliveInterval={alive}"))
        .args(["-o", "ServerAliveCountMax=3"])
        .arg("-S")
        .arg(ctl);
    if let Some(u) = spec.user.as_ref().or(s.user.as_ref()) {
        cmd.arg("-l").arg(u);
    }
    if let Some(p) = spec.port.or(s.port) {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(i) = &s.identity {
        cmd.arg("-i").arg(i);
    }
    for o in &s.options {
        cmd.arg("-o").arg(o);
    }
    cmd
}

/// What ssh's own words mean, as a message naming the host and the fix.
fn classify(name: &str, stderr: &str) -> HostError {
    classify_known(name, stderr).unwrap_or_else(|| {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        HostError::new(if last.is_empty() {
            format!("{name}: ssh failed")
        } else {
            format!("{name}: ssh failed ({last})")
        })
    })
}

fn classify_known(name: &str, stderr: &str) -> Option<HostError> {
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        return Some(HostError::new(format!("{name}: unknown or changed host key (ssh refused to trust it)"))
            .with_hint(format!(
                "check the host's key, then add it to known_hosts (e.g. `ssh-keyscan {} >> ~/.ssh/known_hosts`)",
                name.rsplit('@').next().unwrap_or(name).split(':').next().unwrap_or(name)
            )));
    }
    if stderr.contains("Permission denied") {
        return Some(HostError::new(format!("{name}: login refused ({last})")).with_hint(format!(
            "`ssh {name}` must log in without a password: check the user, the key ([ssh] identity) and the host's authorized_keys"
        )));
    }
    // The line that says so, not the last: through a ProxyCommand (drover's relay) ssh ends
    // with "Connection closed by UNKNOWN".
    let line_with = |words: &[&str]| {
        stderr
            .lines()
            .find(|l| words.iter().any(|w| l.contains(w)))
            .map(str::trim)
    };
    if let Some(line) = line_with(&["Could not resolve hostname"]) {
        return Some(
            HostError::new(format!("{name}: unknown host name ({line})"))
                .with_hint("check the name, or add a Host entry to your ssh config"),
        );
    }
    if let Some(line) = line_with(&[
        "Connection refused",
        "timed out",
        "No route to host",
        "Network is unreachable",
    ]) {
        return Some(
            HostError::new(format!("{name}: unreachable ({line})"))
                .with_hint("check the host is up and its sshd listening"),
        );
    }
    if stderr.contains("Timeout, server") || stderr.contains("Broken pipe") {
        return Some(HostError::new(format!(
            "{name}: the ssh connection was lost ({last})"
        )));
    }
    None
}
