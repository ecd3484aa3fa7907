//! Health probes end to end: the gate's probes fast, the steady ones once per `[health]
//! interval` (an app that logs each request is not filled with them), and a failed gate
//! that says what it saw: the probes, the process, its last lines, where it listens.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{TestContext, free_port, http_get, wait_for};

/// A Python app that logs every request it serves (as `http.server` does) and answers 200,
/// except `/up` once someone has asked for `/fail`: then 503. It listens on `$PORT`, or on
/// the port given as its argument.
const APP_PY: &str = r#"import http.server, os, sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["PORT"])
failing = False


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global failing
        if self.path == "/fail":
            failing = True
        code = 503 if failing and self.path == "/up" else 200
        self.send_response(code)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")


print(f"serving on 127.0.0.1:{port}", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The app `probed` at `version`: `command` runs it, `health` is added to its `[health]`.
fn probed_app(cx: &TestContext, version: &str, command: &str, health: &str) -> PathBuf {
    cx.app(
        &format!("probed-{version}"),
        &format!(
            "[app]\nname = \"probed\"\nversion = \"{version}\"\n\n\
             [process.web]\ncommand = \"{command}\"\nhttp = true\n\n\
             [health]\npath = \"/up\"\n{health}"
        ),
        &[("app.py", APP_PY)],
    )
}

/// The probe lines in the live generation's log.
fn probe_lines(cx: &TestContext) -> usize {
    cx.drover(&["logs", "probed", "-n", "100000"])
        .success()
        .stdout
        .matches("\"GET /up HTTP/1.1\"")
        .count()
}

fn healthy(cx: &TestContext) -> bool {
    cx.app_status("probed")["instances"][0]["healthy"] == true
}

#[test]
fn live_instances_are_probed_once_per_interval_and_still_taken_out_when_they_fail() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probed_app(&cx, "1", "python3 -u app.py", "interval = \"1h\"\n");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let port = cx.live_ports("probed")[0];
    let gate = probe_lines(&cx);
    assert!(gate >= 1, "the gate's probes are logged");
    // A window four times the monitor's old cadence (a probe every 500 ms): no probe comes.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            probe_lines(&cx),
            gate,
            "a probe came within the hour's interval"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The log is live: a request of ours shows in it, and still no probe.
    assert_eq!(http_get(port, "/seen").unwrap().0, 200);
    wait_for("our request in the log", Duration::from_secs(10), || {
        cx.drover(&["logs", "probed", "-n", "100000"])
            .success()
            .stdout
            .contains("GET /seen")
    });
    assert_eq!(probe_lines(&cx), gate);
    assert!(healthy(&cx));

    // With a short interval, an instance that starts failing its health path is seen to
    // (three failed probes in a row) and taken out of traffic.
    let v2 = probed_app(&cx, "2", "python3 -u app.py", "interval = \"200ms\"\n");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    let port = cx.live_ports("probed")[0];
    assert!(healthy(&cx));
    assert_eq!(http_get(port, "/fail").unwrap().0, 200);
    wait_for(
        "the failing instance to be unhealthy",
        Duration::from_secs(20),
        || !healthy(&cx),
    );
    let logs = cx
        .drover(&["logs", "probed", "-n", "100000"])
        .success()
        .stdout;
    assert!(logs.contains("\"GET /up HTTP/1.1\" 503"), "{logs}");
}

#[test]
fn an_app_that_listens_elsewhere_than_port_fails_its_deploy_naming_where_it_listens() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let v1 = probed_app(&cx, "1", "python3 -u app.py", "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let live = cx.live_ports("probed");

    let fixed = free_port();
    let v2 = probed_app(
        &cx,
        "2",
        &format!("python3 -u app.py {fixed}"),
        "timeout = \"2s\"\n",
    );
    let run = cx.drover(&["deploy", v2.to_str().unwrap()]).failure();
    let err = &run.stderr;
    assert!(err.contains("health check did not pass within 2s"), "{err}");
    assert!(
        err.contains(&format!(
            "\nhint: web.0 listens on 127.0.0.1:{fixed}, not on $PORT ("
        )) && err.contains("): make the app bind the port drover passes in $PORT"),
        "{err}"
    );
    // The probes in short: many refused connections over the two seconds.
    let history = err
        .lines()
        .find(|l| l.contains("web.0: ") && l.contains(" probes over "))
        .unwrap_or_else(|| panic!("no probe history in {err}"));
    assert!(history.ends_with("× connection refused"), "{history}");
    assert!(
        err.contains("web.0 (pid ") && err.contains(") is still running"),
        "{err}"
    );
    assert!(
        err.contains(&format!("web.0 | serving on 127.0.0.1:{fixed}")),
        "{err}"
    );
    // The previous generation serves on.
    assert_eq!(cx.live_ports("probed"), live);
    assert_eq!(http_get(live[0], "/").unwrap().0, 200);
    let gens = cx.drover(&["history", "probed", "--json"]).success().json();
    assert_eq!(gens[1]["outcome"], "failed", "{gens}");

    // One that listens on no port at all is told so.
    let v3 = probed_app(&cx, "3", "exec sleep 600", "timeout = \"1s\"\n");
    let run = cx.drover(&["deploy", v3.to_str().unwrap()]).failure();
    assert!(
        run.stderr
            .contains("\nhint: web.0 listens on no TCP port, not on $PORT ("),
        "{}",
        run.stderr
    );
    assert_eq!(http_get(live[0], "/").unwrap().0, 200);
}

#[test]
fn a_bad_health_interval_names_the_file_and_key_and_builds_nothing() {
    let cx = TestContext::new();
    for (interval, words) in [
        (
            "0s",
            &[
                "key `health.interval` is 0",
                "hint: use a duration such as \"10s\"",
            ][..],
        ),
        (
            "often",
            &[
                "interval = \"often\"",
                "`often` is not a duration",
                "hint: write a duration",
            ][..],
        ),
    ] {
        let dir = probed_app(
            &cx,
            "1",
            "python3 -u app.py",
            &format!("interval = \"{interval}\"\n"),
        );
        let before = cx.snapshot_root();
        let run = cx.drover(&["build", dir.to_str().unwrap()]).failure();
        assert!(run.status.code().is_some_and(|c| c != 0));
        assert!(
            run.stderr.contains("probed-1/drover.toml"),
            "{}",
            run.stderr
        );
        for w in words {
            assert!(run.stderr.contains(w), "no `{w}` in {}", run.stderr);
        }
        assert_eq!(cx.snapshot_root(), before);
    }
}
