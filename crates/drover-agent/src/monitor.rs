//! The monitor thread: restarts supervised instances that die (with a backoff), retires warm
//! instances whose time is up, probes each live instance once per `[health] interval` and
//! rotates logs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Agent, Phase, backend_for, proc};

const LOG_ROTATE_BYTES: u64 = 16 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// An instance that ran longer than this before it died is restarted after `FIRST_BACKOFF`
/// again.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// The first probe of an instance out of traffic (restarted, or after three failed probes)
/// comes this soon; each failure doubles the wait, up to `[health] interval`.
pub(crate) const FIRST_PROBE: Duration = Duration::from_millis(500);
/// Three failed probes in a row take an instance out of traffic.
const FAILURES_OUT: u32 = 3;

impl Agent {
    pub(crate) fn monitor(&self) {
        let mut last_rotate = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let mut respawn: Vec<(String, usize)> = Vec::new();
            let mut changed: Vec<String> = Vec::new();
            let mut expired: Vec<(String, u32)> = Vec::new();
            {
                let mut apps = self.lock();
                for (app, rt) in apps.iter_mut() {
                    let before = rt.instances.len();
                    let mut died = false;
                    rt.instances.retain_mut(|i| {
                        let dead = match i.child.as_mut() {
                            Some(c) => !matches!(c.try_wait(), Ok(None)),
                            None => !proc::alive(i.pid, i.started),
                        };
                        if i.phase == Phase::Stopping {
                            return !dead;
                        }
                        if let Some(until) = i.warm_until {
                            if dead {
                                return false;
                            }
                            if Instant::now() >= until && !i.supervised {
                                expired.push((app.clone(), i.pid));
                            }
                            return true;
                        }
                        if !i.supervised {
                            return true;
                        }
                        match i.phase {
                            Phase::Running if dead => {
                                died = true;
                                i.healthy = false;
                                let (delay, next) =
                                    restart_backoff(i.backoff, i.last_start.elapsed());
                                eprintln!(
                                    "drover agent: {app} {}.{} exited; restarting in {:?}",
                                    i.process, i.index, delay
                                );
                                i.phase = Phase::Backoff(Instant::now() + delay);
                                i.backoff = next;
                            }
                            _ => {}
                        }
                        true
                    });
                    if died || before != rt.instances.len() {
                        changed.push(app.clone());
                    }
                    for (k, i) in rt.instances.iter().enumerate() {
                        if let Phase::Backoff(at) = i.phase
                            && Instant::now() >= at
                        {
                            respawn.push((app.clone(), k));
                        }
                    }
                }
                for (app, k) in respawn.iter().rev() {
                    let Some(rt) = apps.get_mut(app) else {
                        continue;
                    };
                    let i = &mut rt.instances[*k];
                    let mut env = i.spec.env.clone();
                    if i.spec.http
                        && let Ok(p) = proc::free_port()
                    {
                        env.insert("PORT".into(), p.to_string());
                        i.port = Some(p);
                    }
                    match self.launch(&i.spec, env) {
                        Ok(child) => {
                            i.pid = child.id();
                            i.started = proc::start_time(i.pid).unwrap_or(0);
                            i.child = Some(child);
                            i.restarts += 1;
                            i.phase = Phase::Running;
                            i.last_start = Instant::now();
                            i.probe_failures = 0;
                            i.probe_in(FIRST_PROBE);
                            i.backend = i.port.map(|p| backend_for(&i.spec, p));
                            changed.push(app.clone());
                        }
                        Err(e) => {
                            eprintln!("drover agent: cannot restart {}: {e}", i.spec.app);
                            i.phase = Phase::Backoff(Instant::now() + i.backoff);
                        }
                    }
                }
            }
            for (app, pid) in expired {
                self.retire(&app, &[pid], Duration::from_secs(5));
            }
            changed.sort();
            changed.dedup();
            for app in changed {
                self.refresh_routes(&app);
            }
            self.probe_due();
            if last_rotate.elapsed() >= Duration::from_millis(500) {
                last_rotate = Instant::now();
                self.rotate_logs();
                crate::logs::reap();
            }
        }
    }

    /// Copy-truncates instance logs grown past the limit (every 500 ms, not at the
    /// monitor's 100 ms tick: a stat per log is not free).
    fn rotate_logs(&self) {
        let logs: Vec<PathBuf> = self
            .lock()
            .values()
            .flat_map(|rt| rt.instances.iter().map(|i| i.spec.log.clone()))
            .collect();
        for log in logs {
            if fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
                rotate(&log);
            }
        }
    }

    /// Probes the live instances whose probe is due, refreshing `healthy`; each one's next
    /// probe is `probe_delay` away. An app that logs its requests logs one line per interval.
    fn probe_due(&self) {
        let now = Instant::now();
        let targets: Vec<(String, u32, Option<u16>, Option<String>)> = {
            let apps = self.lock();
            apps.iter()
                .flat_map(|(app, rt)| {
                    rt.instances
                        .iter()
                        .filter(|i| {
                            i.supervised && i.phase == Phase::Running && i.next_probe <= now
                        })
                        .map(|i| (app.clone(), i.pid, i.port, i.spec.health_path.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (app, pid, port, path) in targets {
            let healthy = match (port, path) {
                (Some(port), Some(p)) => {
                    proc::probe_http(port, &p, Duration::from_millis(300)).is_ok()
                }
                (Some(port), None) => proc::probe_tcp(port, Duration::from_millis(300)).is_ok(),
                (None, _) => true,
            };
            let flipped = {
                let mut apps = self.lock();
                match apps
                    .get_mut(&app)
                    .and_then(|rt| rt.instances.iter_mut().find(|i| i.pid == pid))
                {
                    Some(i) => {
                        i.probe_failures = if healthy { 0 } else { i.probe_failures + 1 };
                        let now = healthy || (i.healthy && i.probe_failures < FAILURES_OUT);
                        let flipped = now != i.healthy;
                        i.healthy = now;
                        i.probe_in(probe_delay(
                            i.spec.health_interval,
                            i.healthy,
                            i.probe_failures,
                        ));
                        flipped
                    }
                    None => false,
                }
            };
            if flipped {
                self.refresh_routes(&app);
            }
        }
    }
}

/// The wait before an instance's next probe, after one that left it `healthy` (in
/// traffic) or not, with `failures` failed probes in a row: `interval` while it is in
/// traffic; out of it, `FIRST_PROBE` doubled by each failure, up to `interval`, so a
/// recovered instance is back soon and a broken one is probed as sparsely as a good one.
fn probe_delay(interval: Duration, healthy: bool, failures: u32) -> Duration {
    if healthy {
        return interval;
    }
    FIRST_PROBE
        .saturating_mul(1u32 << failures.min(16))
        .min(interval)
}

/// The restart of a supervised instance that died after running for `ran_for`, when the
/// delay due before its next restart is `due`: returns the delay before this restart and the
/// one due before the next. A run longer than `STABLE_RUN` starts again from
/// `FIRST_BACKOFF`; each restart doubles the delay, up to `MAX_BACKOFF`.
fn restart_backoff(due: Duration, ran_for: Duration) -> (Duration, Duration) {
    let delay = if ran_for > STABLE_RUN {
        FIRST_BACKOFF
    } else {
        due
    };
    (delay, (delay * 2).min(MAX_BACKOFF))
}

/// Copy-truncate: the process keeps writing (O_APPEND) into the emptied file.
fn rotate(log: &Path) {
    let old = log.with_extension("log.1");
    if fs::copy(log, &old).is_ok()
        && let Ok(f) = fs::OpenOptions::new().write(true).open(log)
    {
        let _ = f.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_doubling_up_to_the_cap() {
        let mut next = FIRST_BACKOFF;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let (delay, after) = restart_backoff(next, Duration::from_secs(1));
            delays.push(delay.as_millis());
            next = after;
        }
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(next, MAX_BACKOFF);
    }

    #[test]
    fn a_healthy_instance_is_probed_once_per_interval_and_one_out_of_traffic_sooner() {
        let interval = Duration::from_secs(10);
        // In traffic, even after one or two failures: the interval.
        for failures in [0, 1, 2] {
            assert_eq!(probe_delay(interval, true, failures), interval);
        }
        // Out of traffic: from FIRST_PROBE, doubling, never beyond the interval.
        let delays: Vec<u128> = (0..8)
            .map(|f| probe_delay(interval, false, f).as_millis())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        assert_eq!(probe_delay(interval, false, u32::MAX), interval);
        // An interval shorter than FIRST_PROBE holds for every instance.
        let short = Duration::from_millis(200);
        assert_eq!(probe_delay(short, false, 0), short);
        assert_eq!(probe_delay(short, true, 0), short);
    }

    #[test]
    fn a_long_run_starts_the_backoff_again() {
        let (delay, after) = restart_backoff(MAX_BACKOFF, Duration::from_secs(31));
        assert_eq!((delay, after), (FIRST_BACKOFF, FIRST_BACKOFF * 2));
        // Thirty seconds exactly is still a short run.
        let (delay, after) = restart_backoff(MAX_BACKOFF, STABLE_RUN);
        assert_eq!((delay, after), (MAX_BACKOFF, MAX_BACKOFF));
        let (delay, _) = restart_backoff(Duration::from_millis(800), Duration::ZERO);
        assert_eq!(delay, Duration::from_millis(800));
    }
}
