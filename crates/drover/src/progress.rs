//! A fleet deploy's progress: one line per host (phase, bytes, time), redrawn in place on a
//! terminal; plain lines on each change off a terminal; JSON events with `--json`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Terminal,
    Plain,
    Json,
}

struct Row {
    host: String,
    phase: String,
    bytes: Option<(u64, u64)>,
    since: Instant,
}

pub struct Progress {
    mode: Mode,
    rows: Mutex<(Vec<Row>, usize, Instant)>,
    start: Instant,
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    host: &'a str,
    phase: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    elapsed_ms: u128,
}

impl Progress {
    pub fn new(hosts: &[String], json: bool) -> Progress {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        let now = Instant::now();
        Progress {
            mode,
            rows: Mutex::new((
                hosts
                    .iter()
                    .map(|h| Row {
                        host: h.clone(),
                        phase: "waiting".into(),
                        bytes: None,
                        since: now,
                    })
                    .collect(),
                0,
                now,
            )),
            start: now,
        }
    }

    fn draw(&self, g: &mut (Vec<Row>, usize, Instant)) {
        let mut err = std::io::stderr().lock();
        if g.1 > 0 {
            let _ = write!(err, "\x1b[{}A", g.1);
        }
        let width = g.0.iter().map(|r| r.host.len()).max().unwrap_or(0);
        for r in &g.0 {
            let bytes = r
                .bytes
                .map(|(s, t)| format!("  {} / {}", output::bytes(s), output::bytes(t)))
                .unwrap_or_default();
            let _ = writeln!(
                err,
                "\x1b[2K  {:width$}  {}{bytes}  {:.1}s",
                r.host,
                r.phase,
                r.since.elapsed().as_secs_f64()
            );
        }
        g.1 = g.0.len();
        g.2 = Instant::now();
    }
}

impl drover_fleet::Progress for Progress {
    /// Host `i` enters `phase`.
    fn phase(&self, i: usize, phase: &str) {
        let mut g = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        // Errors name their host; on the host's own line that is said already.
        let phase = phase.replacen(&format!("{}: ", g.0[i].host), "", 1);
        g.0[i].phase = phase.clone();
        g.0[i].bytes = None;
        g.0[i].since = Instant::now();
        match self.mode {
            Mode::Terminal => self.draw(&mut g),
            Mode::Plain => eprintln!(
                "{:>7.1}s  {}: {phase}",
                self.start.elapsed().as_secs_f64(),
                g.0[i].host
            ),
            Mode::Json => {
                let e = JsonEvent {
                    host: &g.0[i].host,
                    phase: &phase,
                    bytes: None,
                    elapsed_ms: self.start.elapsed().as_millis(),
                };
                println!("{}", serde_json::to_string(&e).expect("serialises"));
            }
        }
    }

    /// Host `i` has sent `sent` of `total` bytes.
    fn bytes(&self, i: usize, sent: u64, total: u64) {
        let mut g = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        g.0[i].bytes = Some((sent, total));
        if self.mode == Mode::Terminal
            && (g.2.elapsed() > Duration::from_millis(100) || sent == total)
        {
            self.draw(&mut g);
        }
    }

    /// Redraws a last time (a terminal); nothing otherwise.
    fn finish(&self) {
        if self.mode == Mode::Terminal {
            let mut g = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            self.draw(&mut g);
        }
    }
}
