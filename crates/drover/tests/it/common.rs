//! `TestContext`: a temp dir with its own drover root, and helpers to run the binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct TestContext {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
}

pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn success(self) -> Run {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failure(self) -> Run {
        assert!(
            !self.status.success(),
            "expected failure\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn drover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_drover"))
}

impl TestContext {
    pub fn new() -> TestContext {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        TestContext { dir, root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(drover_bin());
        c.env("DROVER_ROOT", &self.root)
            .env("NO_COLOR", "1")
            .env_remove("RUST_BACKTRACE")
            .current_dir(self.dir.path());
        c
    }

    pub fn drover(&self, args: &[&str]) -> Run {
        let out = self.command().args(args).output().expect("run drover");
        to_run(out)
    }

    /// Writes an app directory with a drover.toml and the given files.
    pub fn app(&self, name: &str, toml: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("drover.toml"), toml).unwrap();
        for (p, content) in files {
            let path = dir.join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
        }
        dir
    }

    /// `drover build DIR --json`, successful.
    pub fn build(&self, dir: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["build", dir.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        self.drover(&args).success().json()
    }

    /// Every file under the root with its size: to show that a failed command changed nothing.
    pub fn snapshot_root(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        let meta = fs::symlink_metadata(&p).unwrap();
        // The lock file is touched by every command that opens the store.
        if rel.ends_with("store/lock") {
            continue;
        }
        if meta.is_dir() {
            walk(base, &p, out);
        } else {
            out.push((rel, meta.len()));
        }
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
#[track_caller]
/// `user = "root"` for an `[app]` table when the tests run as root (an app's hook that
/// writes into a test's own 0700 directory must run as its owner), else nothing.
pub fn as_test_user() -> &'static str {
    if rustix::process::geteuid().is_root() {
        "user = \"root\"\n"
    } else {
        ""
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MB.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The unprivileged user the test runs drover as, when the tests run as root.
pub const NOBODY: u32 = 65534;

/// drover run as an unprivileged user: uid and gid 65534 through `setpriv` when the tests
/// run as root, else as the user running them.
pub fn unprivileged(cx: &TestContext) -> Command {
    let mut c = if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(drover_bin());
        c
    } else {
        Command::new(drover_bin())
    };
    c.env("DROVER_ROOT", &cx.root)
        .env("HOME", cx.dir.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .current_dir(cx.dir.path());
    c
}

/// Runs `edit` on a read-only directory, made writable for it.
pub fn in_writable(dir: &Path, edit: impl FnOnce()) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    edit();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
}

pub fn make_writable(path: &Path) {
    let mut p = fs::metadata(path).unwrap().permissions();
    p.set_mode(p.mode() | 0o200);
    fs::set_permissions(path, p).unwrap();
}

/// The example app's binary (a std-only HTTP server), built once per test run.
pub fn hello_bin() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hello");
    let bin = target.join("release/hello");
    fs::create_dir_all(&target).unwrap();
    let lock = fs::File::create(target.join(".lock")).unwrap();
    lock.lock().unwrap();
    {
        let manifest =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo build of the example app");
        assert!(status.success(), "building the example app failed");
    }
    bin
}

/// A running `drover agent` for a test's root; on drop it and every app process go away.
pub struct AgentHandle {
    pub child: std::process::Child,
    root: PathBuf,
}

impl TestContext {
    pub fn start_agent(&self) -> AgentHandle {
        self.start_agent_with(&[])
    }

    pub fn start_agent_with(&self, args: &[&str]) -> AgentHandle {
        self.start_agent_env(args, &[])
    }

    /// `start_agent_with`, the agent alone getting the environment variables `env`.
    pub fn start_agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> AgentHandle {
        fs::create_dir_all(&self.root).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = self
            .command()
            .arg("agent")
            .args(args)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start agent");
        wait_for("the agent to answer", Duration::from_secs(20), || {
            self.command()
                .args(["status", "--json"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        AgentHandle {
            child,
            root: self.root.clone(),
        }
    }

    /// An app directory running the example server, at `version`, with extra toml.
    pub fn hello_app(&self, dir: &str, version: &str, extra: &str) -> PathBuf {
        let d = self.path(dir);
        fs::create_dir_all(&d).unwrap();
        let bin = d.join("hello");
        if !bin.exists() {
            fs::copy(hello_bin(), &bin).unwrap();
        }
        let health = if extra.contains("[health]") {
            ""
        } else {
            "[health]\npath = \"/up\"\ntimeout = \"10s\"\n"
        };
        fs::write(
            d.join("drover.toml"),
            format!(
                "[app]\nname = \"hello\"\nversion = \"{version}\"\n\n[process.web]\ncommand = \"./hello\"\nhttp = true\n\n{health}{extra}"
            ),
        )
        .unwrap();
        d
    }

    /// `hello_app`, its app named `name` instead of `hello`.
    pub fn named_app(&self, dir: &str, name: &str, version: &str, extra: &str) -> PathBuf {
        let d = self.hello_app(dir, version, extra);
        let toml = fs::read_to_string(d.join("drover.toml")).unwrap().replacen(
            "name = \"hello\"",
            &format!("name = \"{name}\""),
            1,
        );
        fs::write(d.join("drover.toml"), toml).unwrap();
        d
    }

    pub fn status(&self) -> serde_json::Value {
        self.drover(&["status", "--json"]).success().json()
    }

    pub fn app_status(&self, app: &str) -> serde_json::Value {
        let all = self.status();
        all.as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .cloned()
            .unwrap_or_else(|| panic!("no {app} in {all}"))
    }

    /// Pids of all the app's instances, in status order.
    pub fn pids(&self, app: &str) -> Vec<u64> {
        self.app_status(app)["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["pid"].as_u64().unwrap())
            .collect()
    }

    /// Ports of the live generation's running http instances.
    pub fn live_ports(&self, app: &str) -> Vec<u16> {
        live_ports_of(&self.app_status(app))
    }
}

/// Ports of the live generation's running http instances in one app's `status --json`.
pub fn live_ports_of(a: &serde_json::Value) -> Vec<u16> {
    a["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["generation"] == a["generation"] && i["state"] == "running")
        .filter_map(|i| i["port"].as_u64().map(|p| p as u16))
        .collect()
}

impl AgentHandle {
    /// kill -9 of the agent alone (its apps keep running).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.kill9();
        kill_tagged(&self.root);
    }
}

/// Every live process tagged with this root: (pid, instance tag).
pub fn tagged_processes(root: &Path) -> Vec<(u32, String)> {
    let root = fs::canonicalize(root).unwrap_or(root.to_path_buf());
    let want = format!("DROVER_AGENT_ROOT={}", root.display());
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if state == "Z" {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if vars.contains(&want) {
            let tag = vars
                .iter()
                .find_map(|v| v.strip_prefix("DROVER_INSTANCE="))
                .unwrap_or("")
                .to_string();
            out.push((pid, tag));
        }
    }
    out
}

pub fn kill_tagged(root: &Path) {
    for (pid, _) in tagged_processes(root) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

/// GET a path on a loopback port; (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    // The example server keeps the connection open: read until the body is complete.
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if let Some((head, body)) = buf.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|l| body.len() >= l) {
                break;
            }
        }
    }
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A new pids cgroup (v1 or v2) for a test, removed on drop; None where there is none.
pub struct PidsCgroup(pub std::path::PathBuf);

impl PidsCgroup {
    pub fn new(name: &str) -> Option<PidsCgroup> {
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let base = if v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            std::path::PathBuf::from("/sys/fs/cgroup")
        };
        let dir = base.join(name);
        fs::create_dir(&dir).ok()?;
        let cg = PidsCgroup(dir);
        cg.0.join("pids.max").exists().then_some(cg)
    }

    pub fn current(&self) -> u64 {
        fs::read_to_string(self.0.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn set_max(&self, max: &str) {
        fs::write(self.0.join("pids.max"), max).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("pids.max"), "max");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A port nothing listens on (it was free a moment ago).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `release` ids of a JSON array of releases (`releases --json`, gc's `releases_removed`).
pub fn release_ids(list: &serde_json::Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["release"].as_str().unwrap())
        .collect()
}

/// After a crash (`what`): the store verifies and holds no release or just `id`, whole.
/// Returns whether it holds `id`.
pub fn whole_or_none(cx: &TestContext, id: &str, what: &str) -> bool {
    let verify = cx.drover(&["verify"]);
    assert!(verify.status.success(), "{what}: {}", verify.stderr);
    let listed = cx.drover(&["releases", "--json"]).success().json();
    let listed = release_ids(&listed);
    assert!(listed.is_empty() || listed == [id], "{what}: {listed:?}");
    !listed.is_empty()
}
