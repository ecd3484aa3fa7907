//! Per-release counters: requests, responses by class, latency histogram, open requests;
//! rendered for `drover status` and as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds.
const BOUNDS_US: [u64; 16] = [
    250,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    u64::MAX,
];

#[derive(Debug, Default)]
pub struct ReleaseMetrics {
    pub requests: AtomicU64,
    pub c2xx: AtomicU64,
    pub c3xx: AtomicU64,
    pub c4xx: AtomicU64,
    pub c5xx: AtomicU64,
    pub open: AtomicU64,
    latency_sum_us: AtomicU64,
    buckets: [AtomicU64; 16],
}

impl ReleaseMetrics {
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = match status {
            200..=299 => &self.c2xx,
            300..=399 => &self.c3xx,
            400..=499 => &self.c4xx,
            _ => &self.c5xx,
        };
        class.fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let i = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                let b = BOUNDS_US[i.min(BOUNDS_US.len() - 2)];
                return b as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// One release's counters, as the agent reports them.
pub type Snapshot = drover_wire::ReleaseTraffic;

#[derive(Default)]
pub struct Registry {
    by_release: Mutex<BTreeMap<String, Arc<ReleaseMetrics>>>,
    /// Responses by class (2xx..5xx) for each host name the app claims (a shared port).
    by_host: Vec<(String, [AtomicU64; 4])>,
}

impl Registry {
    /// A registry that also counts the responses of each of `hosts`.
    pub fn with_hosts(hosts: &[String]) -> Registry {
        Registry {
            by_release: Mutex::default(),
            by_host: hosts
                .iter()
                .map(|h| (h.clone(), Default::default()))
                .collect(),
        }
    }

    /// Does it count responses by host name?
    #[cfg(test)]
    pub fn counts_hosts(&self) -> bool {
        !self.by_host.is_empty()
    }

    /// Counts a response to a request that the `k`th of its claimed names took (a
    /// wildcard's names count under the wildcard: the routing table knows which).
    pub fn count_host(&self, k: usize, status: u16) {
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        if let Some((_, c)) = self.by_host.get(k) {
            c[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn release(&self, release: &str) -> Arc<ReleaseMetrics> {
        let mut map = self.by_release.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(release.to_string()).or_default().clone()
    }

    pub fn snapshot(&self) -> Vec<Snapshot> {
        let map = self.by_release.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(release, m)| Snapshot {
                release: release.clone(),
                requests: m.requests.load(Ordering::Relaxed),
                responses_2xx: m.c2xx.load(Ordering::Relaxed),
                responses_3xx: m.c3xx.load(Ordering::Relaxed),
                responses_4xx: m.c4xx.load(Ordering::Relaxed),
                responses_5xx: m.c5xx.load(Ordering::Relaxed),
                open: m.open.load(Ordering::Relaxed),
                p50_ms: m.quantile_ms(0.5),
                p90_ms: m.quantile_ms(0.9),
                p99_ms: m.quantile_ms(0.99),
            })
            .collect()
    }

    fn each(&self) -> Vec<(String, Arc<ReleaseMetrics>)> {
        let map = self.by_release.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

type PerRelease = Vec<(String, Arc<ReleaseMetrics>)>;

/// Prometheus text exposition of every app's metrics.
pub fn prometheus<'a>(apps: impl Iterator<Item = (&'a str, &'a Registry)>) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP drover_proxy_requests_total Requests proxied, by app, release and status class.\n",
    );
    out.push_str("# TYPE drover_proxy_requests_total counter\n");
    let hosts: Vec<(&str, &Registry)> = apps.collect();
    let apps: Vec<(&str, PerRelease)> = hosts.iter().map(|(a, r)| (*a, r.each())).collect();
    for (app, releases) in &apps {
        for (rel, m) in releases {
            for (class, c) in [
                ("2xx", &m.c2xx),
                ("3xx", &m.c3xx),
                ("4xx", &m.c4xx),
                ("5xx", &m.c5xx),
            ] {
                let _ = writeln!(
                    out,
                    "drover_proxy_requests_total{{app=\"{app}\",release=\"{rel}\",class=\"{class}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
    }
    out.push_str(
        "# HELP drover_proxy_host_requests_total Responses by app, host name it claims and status class.\n# TYPE drover_proxy_host_requests_total counter\n",
    );
    for (app, registry) in &hosts {
        for (host, counts) in &registry.by_host {
            for (class, c) in ["2xx", "3xx", "4xx", "5xx"].iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "drover_proxy_host_requests_total{{app=\"{app}\",host=\"{host}\",class=\"{class}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
    }
    out.push_str("# HELP drover_proxy_open_requests Requests in flight.\n# TYPE drover_proxy_open_requests gauge\n");
    for (app, releases) in &apps {
        for (rel, m) in releases {
            let _ = writeln!(
                out,
                "drover_proxy_open_requests{{app=\"{app}\",release=\"{rel}\"}} {}",
                m.open.load(Ordering::Relaxed)
            );
        }
    }
    out.push_str("# HELP drover_proxy_request_seconds Time to the response head.\n# TYPE drover_proxy_request_seconds histogram\n");
    for (app, releases) in &apps {
        for (rel, m) in releases {
            let mut cumulative = 0;
            for (i, b) in BOUNDS_US.iter().enumerate() {
                cumulative += m.buckets[i].load(Ordering::Relaxed);
                let le = if *b == u64::MAX {
                    "+Inf".to_string()
                } else {
                    format!("{}", *b as f64 / 1e6)
                };
                let _ = writeln!(
                    out,
                    "drover_proxy_request_seconds_bucket{{app=\"{app}\",release=\"{rel}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "drover_proxy_request_seconds_sum{{app=\"{app}\",release=\"{rel}\"}} {}",
                m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "drover_proxy_request_seconds_count{{app=\"{app}\",release=\"{rel}\"}} {cumulative}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_the_host_names_claimed() {
        let r = Registry::with_hosts(&["shop.test".into(), "*.blog.test".into()]);
        r.count_host(0, 200);
        r.count_host(0, 404);
        r.count_host(1, 502);
        // A name it does not claim has no counter.
        r.count_host(2, 200);
        let text = prometheus([("shop", &r)].into_iter());
        for line in [
            "drover_proxy_host_requests_total{app=\"shop\",host=\"shop.test\",class=\"2xx\"} 1",
            "drover_proxy_host_requests_total{app=\"shop\",host=\"shop.test\",class=\"4xx\"} 1",
            "drover_proxy_host_requests_total{app=\"shop\",host=\"*.blog.test\",class=\"5xx\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("other.test"), "{text}");
        assert!(!Registry::default().counts_hosts());
    }

    #[test]
    fn quantiles_and_text() {
        let r = Registry::default();
        let m = r.release("abc");
        for i in 0..100 {
            m.record(
                if i < 90 { 200 } else { 503 },
                Duration::from_micros(if i < 50 { 100 } else { 3000 }),
            );
        }
        let s = &r.snapshot()[0];
        assert_eq!(s.requests, 100);
        assert_eq!(s.responses_5xx, 10);
        assert_eq!(s.p50_ms, 0.25);
        assert_eq!(s.p99_ms, 5.0);
        let text = prometheus([("hello", &r)].into_iter());
        assert!(text.contains(
            "drover_proxy_requests_total{app=\"hello\",release=\"abc\",class=\"5xx\"} 10"
        ));
        assert!(text.contains("le=\"+Inf\"} 100"));
    }
}
