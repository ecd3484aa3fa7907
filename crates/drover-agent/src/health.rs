//! What a failed health check says: each new instance's probes in short (`History`), and
//! the hint when the app listens somewhere other than `$PORT` (`port_hint`). Pure, so the
//! words are unit-tested without processes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Runs of equal answers shown at most; the ones between are counted, not named.
const RUNS_SHOWN: usize = 4;

/// The probes of one instance by a health check: how many, since when, and their answers
/// grouped in runs of the same kind (e.g. 40 "connection refused", then 1 "HTTP 503").
pub(crate) struct History {
    start: Instant,
    last: Instant,
    probes: u32,
    runs: Vec<(String, u32)>,
}

impl History {
    pub(crate) fn new(start: Instant) -> History {
        History {
            start,
            last: start,
            probes: 0,
            runs: Vec::new(),
        }
    }

    /// One probe at `at`, answered `kind` ("connection refused", "HTTP 503", "ok").
    pub(crate) fn record(&mut self, kind: &str, at: Instant) {
        self.probes += 1;
        self.last = at;
        match self.runs.last_mut() {
            Some((k, n)) if k == kind => *n += 1,
            _ => self.runs.push((kind.to_string(), 1)),
        }
    }

    /// E.g. "41 probes over 5.0 s: 40× connection refused, then 1× HTTP 503"; None before
    /// the first probe.
    pub(crate) fn summary(&self) -> Option<String> {
        if self.probes == 0 {
            return None;
        }
        let run = |(kind, n): &(String, u32)| format!("{n}× {kind}");
        let mut parts: Vec<String> = Vec::new();
        if self.runs.len() > RUNS_SHOWN {
            let hidden = &self.runs[1..self.runs.len() - (RUNS_SHOWN - 1)];
            parts.push(run(&self.runs[0]));
            let n: u32 = hidden.iter().map(|r| r.1).sum();
            parts.push(format!("{n} more in {} runs", hidden.len()));
            parts.extend(
                self.runs[self.runs.len() - (RUNS_SHOWN - 1)..]
                    .iter()
                    .map(run),
            );
        } else {
            parts.extend(self.runs.iter().map(run));
        }
        let over = self.last.saturating_duration_since(self.start);
        Some(format!(
            "{} probe{} over {}: {}",
            self.probes,
            if self.probes == 1 { "" } else { "s" },
            seconds(over),
            parts.join(", then ")
        ))
    }
}

/// A duration in seconds with one decimal: "5.0 s".
fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The hint for an instance (`name`) that did not pass a port-based health check on `port`
/// while it listens on `listens` (its own and its descendants' TCP listeners): None when it
/// listens where the probe goes (127.0.0.1, or every address, on `port`).
pub(crate) fn port_hint(name: &str, port: u16, listens: &[SocketAddr]) -> Option<String> {
    let fix = "make the app bind the port drover passes in $PORT";
    let reachable = |a: &SocketAddr| {
        a.port() == port && (a.ip().is_unspecified() || a.ip() == std::net::Ipv4Addr::LOCALHOST)
    };
    if listens.iter().any(reachable) {
        return None;
    }
    if listens.is_empty() {
        return Some(format!(
            "{name} listens on no TCP port, not on $PORT ({port}): {fix}"
        ));
    }
    let list: Vec<String> = listens.iter().map(|a| a.to_string()).collect();
    if listens.iter().any(|a| a.port() == port) {
        return Some(format!(
            "{name} listens on {}, which the health check (to 127.0.0.1:{port}) cannot reach: make it bind 127.0.0.1 or 0.0.0.0",
            list.join(", ")
        ));
    }
    Some(format!(
        "{name} listens on {}, not on $PORT ({port}): {fix}",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(answers: &[(&str, u32)], over: Duration) -> History {
        let start = Instant::now();
        let mut h = History::new(start);
        for (kind, n) in answers {
            for _ in 0..*n {
                h.record(kind, start);
            }
        }
        h.last = start + over;
        h
    }

    #[test]
    fn probes_are_counted_over_their_time_and_grouped_by_answer() {
        let h = history(
            &[("connection refused", 40), ("HTTP 503", 1)],
            Duration::from_millis(5000),
        );
        assert_eq!(
            h.summary().unwrap(),
            "41 probes over 5.0 s: 40× connection refused, then 1× HTTP 503"
        );
        let h = history(&[("HTTP 404", 1)], Duration::ZERO);
        assert_eq!(h.summary().unwrap(), "1 probe over 0.0 s: 1× HTTP 404");
        assert_eq!(History::new(Instant::now()).summary(), None);
    }

    #[test]
    fn an_answer_that_keeps_changing_is_told_in_a_few_runs() {
        let flapping: Vec<(&str, u32)> = (0..10)
            .map(|k| (if k % 2 == 0 { "HTTP 503" } else { "timed out" }, 2))
            .collect();
        let h = history(&flapping, Duration::from_millis(2500));
        assert_eq!(
            h.summary().unwrap(),
            "20 probes over 2.5 s: 2× HTTP 503, then 12 more in 6 runs, then 2× timed out, then 2× HTTP 503, then 2× timed out"
        );
    }

    #[test]
    fn the_hint_names_where_the_app_listens_instead_of_its_port() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            port_hint("web.0", 41234, &[at("127.0.0.1:8000")]).unwrap(),
            "web.0 listens on 127.0.0.1:8000, not on $PORT (41234): make the app bind the port drover passes in $PORT"
        );
        assert_eq!(
            port_hint("web.0", 41234, &[]).unwrap(),
            "web.0 listens on no TCP port, not on $PORT (41234): make the app bind the port drover passes in $PORT"
        );
        assert!(
            port_hint("web.0", 41234, &[at("10.1.2.3:41234")])
                .unwrap()
                .contains(
                    "10.1.2.3:41234, which the health check (to 127.0.0.1:41234) cannot reach"
                )
        );
        // Where the probe reaches it, its answers are the story: no hint.
        for reached in ["127.0.0.1:41234", "0.0.0.0:41234", "[::]:41234"] {
            assert_eq!(port_hint("web.0", 41234, &[at(reached)]), None, "{reached}");
        }
    }
}
