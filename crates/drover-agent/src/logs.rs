//! The app's logs: written with a UTC stamp on each line by a writer process per process,
//! and read back (the last lines, since a time, matching a text, followed across deploys,
//! rollbacks and restarts).
//!
//! A process's stdout and stderr are a pipe into a writer: the drover binary started as
//! `drover __drover-log-writer FILE`, in a process group of its own. It outlives an agent
//! that crashes or is replaced (so the app keeps its output, and never meets a closed
//! pipe) and ends when the last holder of the pipe's other end (the app and its children)
//! has gone. Without a writer program (`set_writer` not called: the agent's own unit
//! tests) a process writes into its log file directly, with no stamps.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use drover_wire::Line;
use drover_wire::time::{now_ms, split_stamp, stamp};

/// The first argument that makes the drover binary a log writer.
pub const WRITER_ARG: &str = "__drover-log-writer";

/// The program run as a log writer (with `WRITER_ARG` and the log file).
static WRITER: OnceLock<PathBuf> = OnceLock::new();

/// Live writers, by the pid of the process whose output each one writes.
static WRITERS: Mutex<Vec<(u32, Child)>> = Mutex::new(Vec::new());

/// Processes started from now on write through `program WRITER_ARG FILE` (the binary that
/// embeds the agent, which hands that call to `write_stamped`).
pub fn set_writer(program: PathBuf) {
    let _ = WRITER.set(program);
}

/// The writer's whole job: each line read from `input` appended to `log` behind the time it
/// arrived, until `input` ends. A write that fails (a full disk) loses those lines, never
/// the app: the writer keeps reading.
pub fn write_stamped(log: &Path, mut input: impl Read) -> std::io::Result<()> {
    let mut out = OpenOptions::new().create(true).append(true).open(log)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut chunk = Vec::with_capacity(buf.len() + 1024);
    let mut line_start = true;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let at = stamp(now_ms());
        chunk.clear();
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            if line_start {
                chunk.extend_from_slice(at.as_bytes());
                chunk.push(b' ');
            }
            chunk.extend_from_slice(piece);
            line_start = piece.ends_with(b"\n");
        }
        let _ = out.write_all(&chunk);
    }
}

/// Where a process's stdout and stderr go: a pipe into a writer for `log`, or the file.
pub(crate) struct Sink {
    pub out: Stdio,
    pub err: Stdio,
    writer: Option<Child>,
}

impl Sink {
    /// With `stamped`, through a writer (when the embedding binary set one); without, into
    /// the file itself (a health command, run every few milliseconds during a health gate:
    /// no process per run for a stamp nobody reads).
    pub(crate) fn open(log: &Path, stamped: bool) -> std::io::Result<Sink> {
        let Some(program) = WRITER.get().filter(|_| stamped) else {
            let out = OpenOptions::new().create(true).append(true).open(log)?;
            let err = out.try_clone()?;
            return Ok(Sink {
                out: out.into(),
                err: err.into(),
                writer: None,
            });
        };
        // Both ends close on exec: only the writer's stdin and the process's stdout and
        // stderr hold them past a spawn.
        let (read, write) = std::io::pipe()?;
        let err = write.try_clone()?;
        let writer = Command::new(program)
            .arg(WRITER_ARG)
            .arg(log)
            .env_clear()
            .stdin(read)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Sink {
            out: write.into(),
            err: err.into(),
            writer: Some(writer),
        })
    }

    /// The process writing into this sink has started as `pid`.
    pub(crate) fn started(self, pid: u32) {
        if let Some(w) = self.writer {
            WRITERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((pid, w));
        }
    }

    /// The process could not start: its writer ends with the pipe.
    pub(crate) fn abandon(self) {
        drop(self.out);
        drop(self.err);
        if let Some(mut w) = self.writer {
            let _ = w.wait();
        }
    }
}

/// Waits (up to `limit`) until everything process `pid` wrote is in its log: its writer has
/// seen the pipe close and ended. For a process that has ended.
pub(crate) fn flushed(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        {
            let mut ws = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
            let Some(k) = ws.iter().position(|(p, _)| *p == pid) else {
                return;
            };
            if !matches!(ws[k].1.try_wait(), Ok(None)) {
                ws.swap_remove(k);
                return;
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Collects the writers that have ended (from the monitor's loop).
pub(crate) fn reap() {
    WRITERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain_mut(|(_, w)| matches!(w.try_wait(), Ok(None)));
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    /// Only lines stamped at or after this (ms since the epoch).
    pub since: Option<u64>,
    /// Only lines containing this.
    pub grep: Option<String>,
}

impl Filter {
    fn wants(&self, at: Option<u64>, text: &str) -> bool {
        self.since.is_none_or(|s| at.is_some_and(|a| a >= s))
            && self.grep.as_deref().is_none_or(|g| text.contains(g))
    }
}

/// A log line as read back: when it was written (a line written without a stamp takes its
/// predecessor's), whose it is, and the text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Read1 {
    pub at: Option<u64>,
    pub who: String,
    pub text: String,
}

impl Read1 {
    pub(crate) fn show(&self) -> String {
        match self.at {
            Some(at) => format!("{} {} | {}", stamp(at), self.who, self.text),
            None => format!("{} | {}", self.who, self.text),
        }
    }
}

/// Who writes the log file `name` of the logs directory: `g4 web.0` for
/// `4-web-0.log`, `g4 release` for `4-release.log`; `None` for a file that is not a log.
pub(crate) fn owner(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".log")?;
    let (generation, rest) = stem.split_once('-')?;
    generation.parse::<u64>().ok()?;
    if rest == "release" {
        return Some(format!("g{generation} release"));
    }
    let (process, index) = rest.rsplit_once('-')?;
    index.parse::<u32>().ok()?;
    Some(format!("g{generation} {process}.{index}"))
}

/// The lines of `text` (whole lines of one log file) that `filter` wants, in order.
fn lines_of(text: &str, who: &str, filter: &Filter, last_at: &mut Option<u64>) -> Vec<Read1> {
    let mut v = Vec::new();
    for line in text.lines() {
        let (at, rest) = split_stamp(line);
        if at.is_some() {
            *last_at = at;
        }
        if filter.wants(*last_at, rest) {
            v.push(Read1 {
                at: *last_at,
                who: who.to_string(),
                text: rest.to_string(),
            });
        }
    }
    v
}

/// The last `n` lines `filter` wants of each of `files`, merged in the order they were
/// written. Without a filter only a file's last 64 KiB are read; with one, all of it.
pub(crate) fn tail(files: &[(String, PathBuf)], n: usize, filter: &Filter) -> Vec<Read1> {
    let whole = filter.since.is_some() || filter.grep.is_some();
    let mut all = Vec::new();
    for (who, path) in files {
        let Ok(mut f) = File::open(path) else {
            continue;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let start = if whole {
            0
        } else {
            len.saturating_sub(64 * 1024)
        };
        let mut buf = Vec::new();
        if f.seek(std::io::SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        // A read from the middle of the file drops its first, partial line.
        let text = match start {
            0 => &text[..],
            _ => text.split_once('\n').map_or("", |(_, rest)| rest),
        };
        let mut lines = lines_of(text, who, filter, &mut None);
        all.extend(lines.drain(lines.len().saturating_sub(n)..));
    }
    all.sort_by_key(|l| l.at.unwrap_or(0));
    all
}

/// Every log file of the app in `dir`, with who writes it.
pub(crate) fn every_log(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let who = owner(name.to_str()?)?;
            Some((who, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Streams to `stream` whatever any process of the app writes into `dir` from now on
/// (instances of generations that start later too: a deploy, a rollback, a restart), until
/// the client closes its end.
pub(crate) fn follow(dir: &Path, filter: &Filter, stream: &mut UnixStream) {
    let mut files: HashMap<PathBuf, (String, u64, String, Option<u64>)> = every_log(dir)
        .into_iter()
        .map(|(who, p)| {
            let len = fs::metadata(&p).map_or(0, |m| m.len());
            (p, (who, len, String::new(), None))
        })
        .collect();
    stream.set_nonblocking(true).ok();
    loop {
        // The client closing its end is the only way out of a follow.
        let mut probe = [0u8; 1];
        match stream.read(&mut probe) {
            Ok(0) => return,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
        for (who, p) in every_log(dir) {
            files.entry(p).or_insert((who, 0, String::new(), None));
        }
        let mut fresh = Vec::new();
        for (path, (who, offset, partial, last_at)) in files.iter_mut() {
            let len = fs::metadata(path).map_or(0, |m| m.len());
            if len < *offset {
                *offset = 0; // rotated
            }
            if len == *offset {
                continue;
            }
            let Ok(mut f) = File::open(path) else {
                continue;
            };
            let mut buf = Vec::new();
            if f.seek(std::io::SeekFrom::Start(*offset)).is_err()
                || (&mut f).take(len - *offset).read_to_end(&mut buf).is_err()
            {
                continue;
            }
            *offset += buf.len() as u64;
            partial.push_str(&String::from_utf8_lossy(&buf));
            if let Some(end) = partial.rfind('\n') {
                let whole: String = partial.drain(..=end).collect();
                fresh.extend(lines_of(&whole, who, filter, last_at));
            }
        }
        fresh.sort_by_key(|l| l.at.unwrap_or(0));
        if !fresh.is_empty() {
            stream.set_nonblocking(false).ok();
            for l in &fresh {
                if drover_wire::write_line(stream, &Line::Log { log: l.show() }).is_err() {
                    return;
                }
            }
            stream.set_nonblocking(true).ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gets_the_stamp_of_when_it_arrived_and_a_split_line_one_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("1-web-0.log");
        struct Chunks(Vec<&'static [u8]>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let c = self.0.remove(0);
                buf[..c.len()].copy_from_slice(c);
                Ok(c.len())
            }
        }
        let before = now_ms() / 1000 * 1000;
        write_stamped(&log, Chunks(vec![b"one\ntw", b"o\nthree\n"])).unwrap();
        let text = fs::read_to_string(&log).unwrap();
        let lines: Vec<(Option<u64>, &str)> = text.lines().map(split_stamp).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines.iter().map(|l| l.1).collect::<Vec<_>>(),
            ["one", "two", "three"]
        );
        assert!(lines.iter().all(|l| l.0.is_some_and(|a| a >= before)));
    }

    #[test]
    fn log_files_are_named_for_who_writes_them() {
        assert_eq!(owner("4-web-0.log").as_deref(), Some("g4 web.0"));
        assert_eq!(
            owner("12-my-worker-3.log").as_deref(),
            Some("g12 my-worker.3")
        );
        assert_eq!(owner("4-release.log").as_deref(), Some("g4 release"));
        assert_eq!(owner("4-web-0.log.1"), None);
        assert_eq!(owner("notes.txt"), None);
    }

    #[test]
    fn tail_merges_files_by_time_and_filters_by_time_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("1-web-0.log");
        let b = dir.path().join("2-web-0.log");
        fs::write(
            &a,
            format!(
                "{} GET /a\n{} GET /health\ncontinued\n",
                stamp(1000),
                stamp(3000)
            ),
        )
        .unwrap();
        fs::write(
            &b,
            format!("{} started\n{} GET /b\n", stamp(2000), stamp(4000)),
        )
        .unwrap();
        let files = every_log(dir.path());
        let all = tail(&files, 50, &Filter::default());
        let texts: Vec<&str> = all.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            ["GET /a", "started", "GET /health", "continued", "GET /b"]
        );
        assert_eq!(
            all[3].at,
            Some(3000),
            "a line without a stamp takes its predecessor's"
        );
        let since = tail(
            &files,
            50,
            &Filter {
                since: Some(2500),
                grep: Some("GET".into()),
            },
        );
        let texts: Vec<&str> = since.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["GET /health", "GET /b"]);
        assert_eq!(
            since[1].show(),
            format!("{} g2 web.0 | GET /b", stamp(4000))
        );
        let last = tail(&files, 1, &Filter::default());
        assert_eq!(last.len(), 2, "one per file");
    }
}
