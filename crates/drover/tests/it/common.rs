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

pub fn make_writable(path: &Path) {
    let mut p = fs::metadata(path).unwrap().permissions();
    p.set_mode(p.mode() | 0o200);
    fs::set_permissions(path, p).unwrap();
}
