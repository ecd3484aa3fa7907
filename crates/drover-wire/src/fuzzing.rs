//! The body of the wire fuzz target (`fuzz/`): arbitrary bytes read as protocol lines, each
//! parsed as every message the agent, `drover remote serve` or the CLI reads from a line.
//! Shared by the libFuzzer target and the corpus replay test; a panic is the bug.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::*;

/// Reads `data` as `remote serve` does (lines of at most `MAX_LINE` + 64 KiB), then parses
/// every line as each message type. What parses serialises again, and a `Request` (what the
/// agent acts on) reads back the same.
pub fn lines(data: &[u8]) {
    let mut input = std::io::Cursor::new(data);
    while let Ok(Some(line)) = read_line_max(&mut input, MAX_LINE + (64 << 10)) {
        parse_line(&line);
    }
    // The agent's own limit, on the same bytes.
    let mut input = std::io::Cursor::new(data);
    while let Ok(Some(_)) = read_line(&mut input) {}
}

/// Every message type read from one line; returns how many accepted it.
pub fn parse_line(line: &str) -> usize {
    let mut n = 0;
    if let Ok(r) = serde_json::from_str::<Request>(line) {
        let again = serde_json::to_string(&r).expect("a request serialises");
        assert_eq!(
            serde_json::from_str::<Request>(&again).ok().as_ref(),
            Some(&r),
            "a request reads back as it was"
        );
        n += 1;
    }
    if let Ok(op) = serde_json::from_str::<ServeOp>(line) {
        if let ServeOp::Agent { request } = &op {
            // `remote serve` passes the request on to the agent, which reads it as a line:
            // the same request.
            let forwarded = serde_json::to_string(request).expect("a request serialises");
            assert_eq!(
                serde_json::from_str::<Request>(&forwarded).ok().as_ref(),
                Some(request),
                "a forwarded request reads back as it was"
            );
        }
        n += 1;
    }
    n += parses::<EndOp>(line);
    n += parses::<Confirm>(line);
    n += parses::<Event>(line);
    n += parses::<Line>(line);
    n += parses::<Reply>(line);
    n += parses::<Handover>(line);
    n += parses::<Vec<AppStatus>>(line);
    n += parses::<Vec<GenerationInfo>>(line);
    n += parses::<AuditEntry>(line);
    n += parses::<Vec<ConfigEntry>>(line);
    n += parses::<RunSpec>(line);
    n
}

fn parses<T: DeserializeOwned + Serialize>(line: &str) -> usize {
    match serde_json::from_str::<T>(line) {
        Ok(v) => {
            serde_json::to_string(&v).expect("a parsed message serialises");
            1
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn corpus(sub: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz")
            .join(sub)
            .join("wire")
    }

    #[test]
    fn the_wire_corpus_replays() {
        let mut n = 0;
        for dir in [corpus("corpus"), corpus("regressions")] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let r = std::panic::catch_unwind(|| lines(&data));
                assert!(r.is_ok(), "{} panics", e.path().display());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus in {}", corpus("corpus").display());
    }

    /// Real lines, one file per kind of message.
    fn seeds() -> Vec<(&'static str, String)> {
        fn j(v: &impl Serialize) -> String {
            serde_json::to_string(v).unwrap()
        }
        let deploy = Request::Deploy {
            release: "581cee4493ab61f17c56e099801cddce57e0d3aa8ffc8a8a8a4e56eac320a45c".into(),
            who: "ops@laptop".into(),
            canary: Some(10),
            environment: Some("production".into()),
            env_layer: BTreeMap::from([("RUST_LOG".into(), "info".into())]),
            role: Some("web".into()),
            role_layer: BTreeMap::from([("WORKERS".into(), "4".into())]),
            secrets: Some("recipients = []\n[secrets]\n".into()),
            confirm_within: Some(30),
            processes: Some(vec!["web".into()]),
            skip_release_hook: false,
        };
        let audit = AuditEntry {
            at: 1_780_000_000,
            who: "ops@laptop".into(),
            environment: Some("production".into()),
            app: "hello".into(),
            action: "deploy".into(),
            version: Some("1.0.0".into()),
            from: Some(3),
            to: Some(4),
            outcome: "ok".into(),
            reason: None,
            host: None,
        };
        let status = AppStatus {
            app: "hello".into(),
            generation: Some(4),
            from: Some(3),
            version: Some("1.0.0".into()),
            release: Some("581cee4493ab".into()),
            depends: Vec::new(),
            state: "running".into(),
            instances: vec![InstanceStatus {
                process: "web".into(),
                index: 0,
                generation: 4,
                pid: Some(4242),
                port: Some(40001),
                healthy: true,
                restarts: 0,
                state: "running".into(),
                serving: true,
                protection: "read-only store, user drover-app".into(),
                started: Some(1_764_670_000),
            }],
            proxy: Some(ProxyStatus {
                port: 8080,
                paused: false,
                hosts: vec!["app.example.com".into()],
                tls: Some("ACME: certificate valid until 2027-03-02 17:50:01Z".into()),
                releases: vec![ReleaseTraffic {
                    release: "581cee4493ab".into(),
                    requests: 1200,
                    responses_2xx: 1190,
                    responses_3xx: 0,
                    responses_4xx: 8,
                    responses_5xx: 2,
                    open: 3,
                    p50_ms: 1.25,
                    p90_ms: 4.5,
                    p99_ms: 12.0,
                }],
            }),
            canary: Some(CanaryStatus {
                generation: 4,
                version: "1.0.0".into(),
                weight: 10,
            }),
        };
        let generation = GenerationInfo {
            generation: 4,
            release: "581cee4493ab".into(),
            version: "1.0.0".into(),
            who: "ops@laptop".into(),
            created: 1_780_000_000,
            from: Some(3),
            kind: "deploy".into(),
            outcome: "live".into(),
            reason: None,
            env: BTreeMap::from([("PORT".into(), "40001".into())]),
            secrets: vec!["DATABASE_URL".into()],
        };
        let ok = |v: serde_json::Value| j(&Line::Reply(Reply::Ok(v)));
        vec![
            ("request-ping", j(&Request::Ping)),
            ("request-deploy", j(&deploy)),
            (
                "request-config-set",
                j(&Request::ConfigSet {
                    app: "hello".into(),
                    set: BTreeMap::from([("GREETING".into(), "hi".into())]),
                    unset: vec!["OLD".into()],
                    who: "ops".into(),
                }),
            ),
            (
                "request-rollback",
                j(&Request::Rollback {
                    app: "hello".into(),
                    to: Some(2),
                    who: "ops".into(),
                }),
            ),
            (
                "request-logs",
                j(&Request::Logs {
                    app: "hello".into(),
                    lines: 100,
                    follow: true,
                    since: Some(1_764_697_801_123),
                    grep: Some("GET /".into()),
                }),
            ),
            ("request-status", j(&Request::Status { app: None })),
            ("confirm", j(&Confirm { confirm: true })),
            (
                "event",
                j(&Line::Event(Event {
                    event: AWAITING_CONFIRM.into(),
                })),
            ),
            (
                "log",
                j(&Line::Log {
                    log: "web.0 | listening".into(),
                }),
            ),
            (
                "reply-error",
                j(&Line::Reply(Reply::Error(WireError {
                    message: "health check failed".into(),
                    hint: Some("see `drover logs hello`".into()),
                    details: vec!["GET /up -> 500".into()],
                }))),
            ),
            (
                "reply-status",
                ok(serde_json::to_value(vec![status]).unwrap()),
            ),
            (
                "reply-history",
                ok(serde_json::to_value(vec![generation]).unwrap()),
            ),
            (
                "reply-config",
                ok(serde_json::to_value(vec![ConfigEntry {
                    key: "DATABASE_URL".into(),
                    value: None,
                    source: "secrets".into(),
                    secret: true,
                }])
                .unwrap()),
            ),
            (
                "reply-run-spec",
                ok(serde_json::to_value(RunSpec {
                    dir: "/var/lib/drover/store/trees/581cee".into(),
                    env: BTreeMap::from([("PORT".into(), "40001".into())]),
                    generation: 4,
                    confine: Default::default(),
                    tmp: None,
                })
                .unwrap()),
            ),
            (
                "handover",
                j(&Handover {
                    ports: vec![8080, 8443],
                }),
            ),
            (
                "serve-hello",
                j(&ServeOp::Hello {
                    expect_build: Some("0123456789abcdef".into()),
                    lock: Some(LockRequest {
                        env: "production".into(),
                        holder: "ops@laptop".into(),
                        token: "t0k3n".into(),
                        message: Some("release freeze".into()),
                    }),
                }),
            ),
            ("serve-receive", j(&ServeOp::Receive)),
            (
                "serve-agent",
                j(&ServeOp::Agent {
                    request: deploy.clone(),
                }),
            ),
            (
                "serve-finish",
                j(&ServeOp::Finish {
                    env: "production".into(),
                    token: "t0k3n".into(),
                    audit: Some(audit.clone()),
                }),
            ),
            ("serve-end", j(&EndOp { end: true })),
            ("audit", j(&audit)),
        ]
    }

    /// Each committed seed is a real line some reader accepts. `DROVER_FUZZ_WRITE_SEEDS=1`
    /// writes them anew.
    #[test]
    fn the_seeds_are_real_lines() {
        for (name, line) in seeds() {
            let path = corpus("corpus").join(name);
            if std::env::var_os("DROVER_FUZZ_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("{line}\n")).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\nhint: write the seeds with `DROVER_FUZZ_WRITE_SEEDS=1 cargo test -p drover-wire fuzzing`",
                    path.display()
                )
            });
            assert!(
                parse_line(committed.trim_end()) > 0,
                "{} is no message",
                path.display()
            );
        }
    }
}
