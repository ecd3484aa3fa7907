//! The built-in proxy end to end: real agent, real app processes, real HTTP load.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{AgentHandle, TestContext, free_port, http_get, wait_for};

/// An app with the proxy on `port`.
fn proxied(cx: &TestContext, dir: &str, version: &str, port: u16, extra: &str) -> PathBuf {
    cx.hello_app(
        dir,
        version,
        &format!("[proxy]\nport = {port}\nheader_timeout = \"1s\"\n{extra}"),
    )
}

fn instances(d: &std::path::Path, n: u32) {
    let p = d.join("drover.toml");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replace("http = true\n", &format!("http = true\ninstances = {n}\n"));
    std::fs::write(p, t).unwrap();
}

/// One HTTP/1.1 exchange on an open connection; (status, headers, body).
fn exchange(s: &mut BufReader<TcpStream>, req: &str) -> std::io::Result<(u16, String, String)> {
    let mut status = String::new();
    // Any failure before the first byte of the answer: the request was never answered.
    let no_answer = |e: std::io::Error| {
        std::io::Error::other(format!("connection closed before the answer ({e})"))
    };
    s.get_mut().write_all(req.as_bytes()).map_err(no_answer)?;
    if s.read_line(&mut status).map_err(no_answer)? == 0 {
        return Err(std::io::Error::other("connection closed before the answer"));
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))?;
    let mut headers = String::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        s.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        headers.push_str(&h);
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((code, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

#[derive(Default)]
pub(crate) struct Load {
    pub ok: AtomicU64,
    failed: AtomicU64,
    closed_idle: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Load {
    /// Waits (up to `within`) until `n` more requests than now have succeeded.
    pub(crate) fn more(&self, what: &str, n: u64, within: Duration) {
        let from = self.ok.load(Ordering::Relaxed);
        wait_for(what, within, || self.ok.load(Ordering::Relaxed) > from + n);
    }

    /// Stops the load, waits for its workers, and fails the test if any request failed.
    #[track_caller]
    pub(crate) fn finish(&self, stop: &AtomicBool, workers: Vec<std::thread::JoinHandle<()>>) {
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "failed requests: {:?}",
            self.errors.lock().unwrap()
        );
    }

    pub(crate) fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut v = self.errors.lock().unwrap();
        if v.len() < 20 {
            v.push(e);
        }
    }
}

/// Keep-alive and fresh connections, GET and POST with bodies, until `stop`.
fn load(port: u16, stop: Arc<AtomicBool>, stats: Arc<Load>, keep_alive: bool, post: bool) {
    load_host(port, "t", "version ", stop, stats, keep_alive, post)
}

/// `load` with requests for `host`, whose GETs must answer with `expect` in the body.
fn load_host(
    port: u16,
    host: &str,
    expect: &str,
    stop: Arc<AtomicBool>,
    stats: Arc<Load>,
    keep_alive: bool,
    post: bool,
) {
    let body = "x".repeat(3000);
    let req = if post {
        format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut used = false;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if conn.is_none() {
            used = false;
            match connect(port) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    stats.fail(format!("connect: {e}"));
                    continue;
                }
            }
        }
        let reused = used;
        used = true;
        let c = conn.as_mut().unwrap();
        match exchange(c, &req) {
            Ok((200, _, b))
                if b.contains("version ")
                    && if post {
                        b.contains("got 3000 bytes")
                    } else {
                        b.contains(expect)
                    } =>
            {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((code, _, b)) => stats.fail(format!("{code}: {b}")),
            Err(e) if reused && e.to_string().contains("closed before the answer") => {
                // An idle keep-alive connection the server closed as we sent: every HTTP
                // client retries this on a new connection (RFC 9112, 9.3.1). Counted apart.
                stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
            Err(e) => {
                stats.fail(format!("exchange: {e}"));
                conn = None;
            }
        }
        if !keep_alive {
            conn = None;
        }
    }
}

#[test]
fn zero_failed_requests_under_load_across_20_deploys_and_rollbacks() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "drain_timeout = \"5s\"\n");
    let v2 = proxied(&cx, "v2", "2", port, "drain_timeout = \"5s\"\n");
    instances(&v1, 2);
    instances(&v2, 2);
    let r1 = cx.build(&v1, &[])["release"].as_str().unwrap().to_string();
    let r2 = cx.build(&v2, &[])["release"].as_str().unwrap().to_string();
    cx.drover(&["deploy", &r1]).success();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Load::default());
    let mut workers = Vec::new();
    for (keep_alive, post) in [(true, false), (true, true), (false, false), (false, true)] {
        let (stop, stats) = (stop.clone(), stats.clone());
        workers.push(std::thread::spawn(move || {
            load(port, stop, stats, keep_alive, post)
        }));
    }
    wait_for("load to flow", Duration::from_secs(10), || {
        stats.ok.load(Ordering::Relaxed) > 50
    });
    for k in 0..20 {
        if k % 4 == 3 {
            cx.drover(&["rollback", "hello"]).success();
        } else {
            cx.drover(&["deploy", if k % 2 == 0 { &r2 } else { &r1 }])
                .success();
        }
    }
    // Some more traffic after the last switch, then stop.
    stats.more("traffic after the switches", 50, Duration::from_secs(10));
    stats.finish(&stop, workers);
    assert!(
        stats.ok.load(Ordering::Relaxed) > 500,
        "too little load: {}",
        stats.ok.load(Ordering::Relaxed)
    );
    let status = cx.app_status("hello");
    let served: u64 = status["proxy"]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["responses_5xx"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 0, "the proxy counted 5xx answers: {status}");
}

#[test]
fn a_generation_that_fails_its_health_check_never_gets_a_request() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Load::default());
    let w = {
        let (stop, stats) = (stop.clone(), stats.clone());
        std::thread::spawn(move || load(port, stop, stats, true, false))
    };
    let bad = cx.hello_app(
        "bad",
        "3",
        &format!("[proxy]\nport = {port}\n[health]\npath = \"/broken\"\ntimeout = \"2s\"\n"),
    );
    let bad_release = cx.build(&bad, &[])["release"].as_str().unwrap()[..12].to_string();
    cx.drover(&["deploy", &bad_release]).failure();
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        stats.errors.lock().unwrap()
    );
    let status = cx.app_status("hello");
    let releases: Vec<String> = status["proxy"]["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["release"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !releases.contains(&bad_release),
        "the failed release got traffic: {status}"
    );
    assert!(releases.iter().all(|r| r.len() == 12));
    assert!(stats.ok.load(Ordering::Relaxed) > 0);
}

#[test]
fn a_long_streaming_response_survives_a_switch() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    let v2 = proxied(&cx, "v2", "2", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let reader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"GET /stream?secs=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        all
    });
    std::thread::sleep(Duration::from_millis(500));
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    let (_, body) = http_get(port, "/").unwrap();
    assert!(body.contains("version 2"), "{body}");
    let streamed = reader.join().unwrap();
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(
        streamed.contains("tick 30 from version 1"),
        "the stream was cut: {streamed}"
    );
}

#[test]
fn canary_takes_its_share_sticky_per_client_then_promote_or_abort() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    let v2 = proxied(&cx, "v2", "2", port, "");
    let v3 = proxied(&cx, "v3", "3", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let out = cx
        .drover(&["deploy", v2.to_str().unwrap(), "--canary", "10", "--json"])
        .success()
        .json();
    assert_eq!(out["canary"]["weight"], 10);
    assert_eq!(out["generation"], 1);

    // 2,000 distinct clients (no cookie): 10% ± 3% reach the canary.
    let mut c = connect(port).unwrap();
    let mut canary = 0;
    let mut cookies = Vec::new();
    for _ in 0..2000 {
        let (code, headers, body) = exchange(&mut c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(code, 200);
        if body.contains("version 2") {
            canary += 1;
        }
        let cookie = headers
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        if cookies.len() < 100 {
            cookies.push((cookie, body.contains("version 2")));
        }
    }
    assert!((140..=260).contains(&canary), "canary share {canary}/2000");
    // A client keeps its side.
    for (cookie, on_canary) in &cookies {
        for _ in 0..3 {
            let (_, _, body) = exchange(
                &mut c,
                &format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\n\r\n"),
            )
            .unwrap();
            assert_eq!(
                body.contains("version 2"),
                *on_canary,
                "{cookie} switched sides"
            );
        }
    }
    let run = cx.drover(&["deploy", v3.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("canary") && run.stderr.contains("promote"),
        "{}",
        run.stderr
    );

    cx.drover(&["promote", "hello"]).success();
    for _ in 0..50 {
        let (_, _, body) = exchange(&mut c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(body.contains("version 2"), "{body}");
    }
    assert_eq!(cx.app_status("hello")["version"], "2");

    cx.drover(&["deploy", v3.to_str().unwrap(), "--canary", "50"])
        .success();
    cx.drover(&["abort", "hello"]).success();
    for _ in 0..50 {
        let (_, _, body) = exchange(&mut c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(body.contains("version 2"), "{body}");
    }
    let history = cx.drover(&["history", "hello", "--json"]).success().json();
    assert_eq!(
        history.as_array().unwrap().last().unwrap()["outcome"],
        "aborted"
    );
}

#[test]
fn bad_clients_get_proper_answers_and_others_are_still_served() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "max_body = 10000\n");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();

    // A slowloris client that never finishes its request head...
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    // ...does not stop anyone else.
    let (code, _) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);

    let raw = |bytes: &[u8]| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let garbage = raw(b"THIS IS NOT HTTP\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let answer = raw(huge_header.as_bytes());
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let big_body = raw(format!(
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n{}",
        "b".repeat(50_000)
    )
    .as_bytes());
    assert!(big_body.starts_with("HTTP/1.1 413"), "{big_body:?}");

    // The slowloris connection is cut after the header timeout.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slowloris connection kept open"
    );
    let (code, _) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn pause_holds_requests_until_resume() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    cx.drover(&["pause", "hello"]).success();
    assert_eq!(cx.app_status("hello")["proxy"]["paused"], true);
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let r = http_get(port, "/");
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !waiting.is_finished(),
        "a request went through while paused"
    );
    cx.drover(&["resume", "hello"]).success();
    let (r, waited) = waiting.join().unwrap();
    assert_eq!(r.unwrap().0, 200);
    assert!(waited >= Duration::from_millis(600));
}

#[test]
fn blue_green_rollback_is_an_instant_switch_to_warm_instances() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--metrics", "127.0.0.1:0"]);
    let port = free_port();
    let bg = "strategy = \"blue-green\"\nkeep_warm = \"60s\"\n";
    let v1 = proxied(&cx, "v1", "1", port, bg);
    let v2 = proxied(&cx, "v2", "2", port, bg);
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let blue: Vec<u64> = cx.pids("hello");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    assert!(http_get(port, "/").unwrap().1.contains("version 2"));
    // The old instances are still running, out of traffic.
    let status = cx.app_status("hello");
    for pid in &blue {
        let i = status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["pid"].as_u64() == Some(*pid))
            .expect("warm instance");
        assert_eq!(i["serving"], false);
    }
    let run = cx.drover(&["rollback", "hello"]).success();
    assert!(run.stderr.contains("still warm"), "{}", run.stderr);
    assert!(http_get(port, "/").unwrap().1.contains("version 1"));
    let serving: Vec<u64> = cx.app_status("hello")["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["serving"] == true)
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(serving, blue, "the rollback reused the warm instances");
}

#[test]
fn prometheus_metrics_per_release() {
    let cx = TestContext::new();
    let mport = free_port();
    let _agent = cx.start_agent_with(&["--metrics", &format!("127.0.0.1:{mport}")]);
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    for _ in 0..10 {
        assert_eq!(http_get(port, "/").unwrap().0, 200);
    }
    assert_eq!(http_get(port, "/nothing").unwrap().0, 404);
    let release = cx.app_status("hello")["release"].as_str().unwrap()[..12].to_string();
    wait_for("metrics to list the app", Duration::from_secs(5), || {
        http_get(mport, "/metrics").is_ok_and(|(_, b)| b.contains("app=\"hello\""))
    });
    let (_, text) = http_get(mport, "/metrics").unwrap();
    assert!(
        text.contains(&format!(
            "drover_proxy_requests_total{{app=\"hello\",release=\"{release}\",class=\"2xx\"}} 10"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "drover_proxy_requests_total{{app=\"hello\",release=\"{release}\",class=\"4xx\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("drover_proxy_request_seconds_bucket"),
        "{text}"
    );
    let human = cx.drover(&["status", "hello"]).success().stdout;
    assert!(
        human.contains("proxy: port") && human.contains("11 requests"),
        "{human}"
    );
}

/// `drover agent --replace`, once `old` has handed over and exited and the new one answers.
pub(crate) fn replace_agent(cx: &TestContext, old: &mut AgentHandle) -> std::process::Child {
    let log = std::fs::File::create(cx.path("agent2.log")).unwrap();
    let new = cx
        .command()
        .args(["agent", "--replace"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the old agent to exit", Duration::from_secs(30), || {
        matches!(old.child.try_wait(), Ok(Some(_)))
    });
    wait_for("the new agent to answer", Duration::from_secs(10), || {
        cx.drover(&["status", "--json"]).status.success()
    });
    new
}

#[test]
fn replacing_the_agent_under_load_refuses_no_connection() {
    let cx = TestContext::new();
    let mut old = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    instances(&v1, 2);
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    let pids: Vec<u64> = cx.pids("hello");

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Load::default());
    let mut workers = Vec::new();
    for (keep_alive, post) in [(true, false), (false, false), (false, true)] {
        let (stop, stats) = (stop.clone(), stats.clone());
        workers.push(std::thread::spawn(move || {
            load(port, stop, stats, keep_alive, post)
        }));
    }
    wait_for("load to flow", Duration::from_secs(10), || {
        stats.ok.load(Ordering::Relaxed) > 50
    });
    // The new agent takes the sockets over; the old one drains and exits by itself.
    let mut new = replace_agent(&cx, &mut old);
    stats.more(
        "traffic through the new agent",
        100,
        Duration::from_secs(10),
    );
    stats.finish(&stop, workers);
    let after: Vec<u64> = cx.pids("hello");
    assert_eq!(after, pids, "the apps kept running through the upgrade");
    // The new agent now serves deploys and owns the port.
    let v2 = proxied(&cx, "v2", "2", port, "");
    cx.drover(&["deploy", v2.to_str().unwrap()]).success();
    assert!(http_get(port, "/").unwrap().1.contains("version 2"));
    let _ = new.kill();
    let _ = new.wait();
}

#[test]
fn upgrades_and_http2_pass_through() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();

    // A protocol upgrade (as WebSocket does): 101, then raw bytes both ways.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
    }
    for msg in ["ping\n", "over the proxy\n"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = String::new();
        r.read_line(&mut back).unwrap();
        assert_eq!(back, msg);
    }

    // HTTP/2 with prior knowledge, through curl.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("curl (test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("version 1") && text.trim_end().ends_with('2'),
        "{text}"
    );
}

/// An agent serving the example app (version 1) through its proxy on a fresh port, with
/// exactly these `[proxy]` keys besides the port.
fn serving(keys: &str) -> (TestContext, AgentHandle, u16) {
    let cx = TestContext::new();
    let agent = cx.start_agent();
    let port = free_port();
    let v1 = cx.hello_app("v1", "1", &format!("[proxy]\nport = {port}\n{keys}"));
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();
    (cx, agent, port)
}

/// Has the proxy closed this connection? (Without waiting: what has arrived so far.)
fn closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let r = (&*s).read(&mut buf);
    s.set_nonblocking(false).unwrap();
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Everything the server sends on `s` until it closes the connection.
fn read_all(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A `/stream?secs=N` request in flight on its own connection, its head read.
fn streaming(port: u16, secs: u32) -> BufReader<TcpStream> {
    let mut s = connect(port).unwrap();
    s.get_mut()
        .write_all(format!("GET /stream?secs={secs} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    s
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout_and_busy_ones_are_not() {
    // The header timeout is long: it is the idle timeout that must close them.
    let (_cx, _agent, port) = serving("header_timeout = \"60s\"\nidle_timeout = \"1s\"\n");

    // Connections that never say anything...
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // ...one that made a request and keeps the connection...
    let mut kept = connect(port).unwrap();
    let (code, _, _) = exchange(&mut kept, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(code, 200);
    // ...and a response that streams for three times the idle timeout.
    let mut stream = streaming(port, 3);

    wait_for(
        "the idle connections to be closed",
        Duration::from_secs(20),
        || silent.iter().all(closed) && closed(kept.get_ref()),
    );
    // The streaming response was not cut: it ran to its last chunk.
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap_or_default();
    assert!(rest.contains("tick 30 from version 1"), "{rest:?}");
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
    let (code, _) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_trickled_request_body_is_cut_with_408() {
    let (_cx, _agent, port) = serving("body_timeout = \"2s\"\nrequest_timeout = \"60s\"\n");

    // Bodies read whole before they are sent on (up to 1 MiB), and bodies streamed on.
    for declared in [1000, 2_000_000] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\nx").as_bytes(),
        )
        .unwrap();
        // One byte every 100 ms, for far longer than the body timeout, until cut off.
        let mut w = s.try_clone().unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..600 {
                std::thread::sleep(Duration::from_millis(100));
                if w.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let answer = read_all(&mut s);
        assert!(
            answer.starts_with("HTTP/1.1 408 "),
            "{declared}: {answer:?}"
        );
        assert!(answer.contains("body_timeout"), "{answer:?}");
        // The connection is closed after the answer: the trickle's writes fail.
        trickle.join().unwrap();
    }
    // A body sent at once still goes through.
    let mut c = connect(port).unwrap();
    let body = "y".repeat(5000);
    let (code, _, text) = exchange(
        &mut c,
        &format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{body}"),
    )
    .unwrap();
    assert_eq!((code, text.trim()), (200, "version 1 got 5000 bytes"));
}

#[test]
fn over_max_connections_an_idle_one_makes_room_and_if_all_are_busy_the_new_one_gets_503() {
    let (_cx, _agent, port) = serving("max_connections = 4\n");

    // Four connections, each with a response in flight: the fifth is refused, clearly.
    let mut busy: Vec<_> = (0..4).map(|_| streaming(port, 60)).collect();
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let refused = read_all(&mut extra);
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused:?}");
    assert!(
        refused.contains("`[proxy] max_connections` is 4"),
        "{refused:?}"
    );

    // Two of them end: requests are served again.
    busy.truncate(2);
    wait_for("a request to be served", Duration::from_secs(10), || {
        http_get(port, "/").is_ok_and(|(code, _)| code == 200)
    });
    // Idle connections filling the rest never keep a request out: the longest idle makes room.
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for _ in 0..5 {
        let (code, body) = http_get(port, "/").unwrap();
        assert_eq!(code, 200, "{body}");
    }
    wait_for(
        "the longest idle connection to be closed",
        Duration::from_secs(10),
        || closed(&silent[0]),
    );
    drop(busy);
}

#[test]
fn many_idle_sockets_under_a_low_fd_limit_stop_neither_requests_nor_the_agent() {
    let cx = TestContext::new();
    let agent = cx.start_agent();
    // The agent's descriptors: 256 in all, before its proxy starts.
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &agent.child.id().to_string(), "--nofile=256:256"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let port = free_port();
    let v1 = proxied(&cx, "v1", "1", port, "");
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();

    // Far more idle connections than the agent has descriptors.
    let mut idle = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        ) {
            Ok(s) => idle.push(s),
            // The proxy stopped accepting: the requests below show what that costs.
            Err(_) => break,
        }
    }
    // Served, and promptly (a request left in the listen queue would time out here).
    for _ in 0..5 {
        let c = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(5),
        )
        .expect("connect to the proxy");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (code, _, body) =
            exchange(&mut BufReader::new(c), "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(code, 200, "{body}");
    }
    cx.drover(&["status", "--json"]).success();
    drop(idle);
}

#[test]
fn connect_and_bad_host_headers_are_answered_by_the_proxy_itself() {
    let (cx, _agent, port) = serving("");
    let (code, _) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
    let forwarded = || -> u64 {
        cx.app_status("hello")["proxy"]["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum()
    };
    let before = forwarded();

    let raw = |bytes: &str| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(bytes.as_bytes()).unwrap();
        read_all(&mut s)
    };
    let connect = raw(
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    );
    assert!(connect.starts_with("HTTP/1.1 405 "), "{connect:?}");
    assert!(
        connect.to_ascii_lowercase().contains("\r\nallow: get,"),
        "{connect:?}"
    );
    let two = raw("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n");
    assert!(two.starts_with("HTTP/1.1 400 "), "{two:?}");
    let none = raw("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(none.starts_with("HTTP/1.1 400 "), "{none:?}");
    // None of them reached the app: its release counted no request.
    assert_eq!(forwarded(), before);
}

/// App `name` with the proxy on `port`, claiming what `claim` says (toml lines of `[proxy]`),
/// greeting with its name.
fn claiming(cx: &TestContext, name: &str, version: &str, port: u16, claim: &str) -> PathBuf {
    cx.named_app(
        &format!("{name}-{version}"),
        name,
        version,
        &format!(
            "[proxy]\nport = {port}\nheader_timeout = \"1s\"\ndrain_timeout = \"5s\"\n{claim}\n\
             [env]\nGREETING = \"hi from {name}\"\n"
        ),
    )
}

/// GET `path` with `Host: host` on a new connection: (status, body).
fn get_host(port: u16, host: &str, path: &str) -> (u16, String) {
    let mut c = connect(port).unwrap();
    let (code, _, body) = exchange(
        &mut c,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    (code, body)
}

#[test]
fn apps_share_a_port_by_host_name_with_zero_failed_requests_across_deploys_rollbacks_and_an_agent_replace()
 {
    let cx = TestContext::new();
    let mport = free_port();
    let mut agent = cx.start_agent_with(&["--metrics", &format!("127.0.0.1:{mport}")]);
    let port = free_port();
    let shop = |v: &str| {
        claiming(
            &cx,
            "shop",
            v,
            port,
            "hosts = [\"shop.test\", \"www.shop.test\"]\ndefault = true",
        )
    };
    let blog = |v: &str| {
        claiming(
            &cx,
            "blog",
            v,
            port,
            "hosts = [\"blog.test\", \"*.blog.test\"]",
        )
    };
    let (shop1, shop2, blog1, blog2) = (shop("1"), shop("2"), blog("1"), blog("2"));
    cx.drover(&["deploy", shop1.to_str().unwrap()]).success();
    cx.drover(&["deploy", blog1.to_str().unwrap()]).success();

    // Each host its app, a wildcard's names too, and the default for the rest.
    assert!(get_host(port, "shop.test", "/").1.contains("hi from shop"));
    assert!(
        get_host(port, "WWW.shop.test:80", "/")
            .1
            .contains("hi from shop")
    );
    assert!(get_host(port, "blog.test", "/").1.contains("hi from blog"));
    assert!(
        get_host(port, "me.blog.test", "/")
            .1
            .contains("hi from blog")
    );
    assert!(get_host(port, "other.test", "/").1.contains("hi from shop"));
    // A path prefix of one host goes to the app that claims it.
    let api = claiming(
        &cx,
        "api",
        "1",
        port,
        "hosts = [\"blog.test\"]\npath_prefix = \"/api\"",
    );
    cx.drover(&["deploy", api.to_str().unwrap()]).success();
    assert!(
        get_host(port, "blog.test", "/api/posts")
            .1
            .contains("hi from api")
    );
    assert!(
        get_host(port, "blog.test", "/apiary")
            .1
            .contains("hi from blog")
    );

    // Claims that overlap, and an app wanting the port alone, are refused naming the holder;
    // what serves is untouched.
    let dup = claiming(&cx, "dup", "1", port, "hosts = [\"www.shop.test\"]");
    let run = cx.drover(&["deploy", dup.to_str().unwrap()]).failure();
    assert!(
        run.stderr
            .contains("www.shop.test is claimed by app `shop`")
            && run.stderr.contains("hint:"),
        "{}",
        run.stderr
    );
    let solo = claiming(&cx, "solo", "1", port, "");
    let run = cx.drover(&["deploy", solo.to_str().unwrap()]).failure();
    assert!(
        run.stderr.contains("share it by host name") && run.stderr.contains("shop"),
        "{}",
        run.stderr
    );
    assert!(
        get_host(port, "www.shop.test", "/")
            .1
            .contains("hi from shop")
    );
    // Metrics per app and host name it claims.
    let (_, text) = http_get(mport, "/metrics").unwrap();
    for line in [
        "{app=\"shop\",host=\"www.shop.test\",class=\"2xx\"} 2",
        "{app=\"blog\",host=\"*.blog.test\",class=\"2xx\"} 1",
        "{app=\"blog\",host=\"blog.test\",class=\"4xx\"} 1",
        "{app=\"api\",host=\"blog.test\",class=\"4xx\"} 1",
    ] {
        assert!(
            text.contains(&format!("drover_proxy_host_requests_total{line}")),
            "{line} in {text}"
        );
    }

    // Load on both hosts, kept-alive and new connections, across deploys and rollbacks of
    // both apps, and an agent replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Load::default());
    let mut workers = Vec::new();
    for (host, expect) in [
        ("shop.test", "hi from shop"),
        ("x.blog.test", "hi from blog"),
    ] {
        for (keep_alive, post) in [(true, false), (false, false), (true, true)] {
            let (stop, stats) = (stop.clone(), stats.clone());
            workers.push(std::thread::spawn(move || {
                load_host(port, host, expect, stop, stats, keep_alive, post)
            }));
        }
    }
    wait_for("load to flow", Duration::from_secs(10), || {
        stats.ok.load(Ordering::Relaxed) > 50
    });
    for k in 0..6 {
        let (app, to) = if k % 2 == 0 {
            ("shop", &shop2)
        } else {
            ("blog", &blog2)
        };
        cx.drover(&["deploy", to.to_str().unwrap()]).success();
        if k >= 4 {
            cx.drover(&["rollback", app]).success();
        }
    }
    let mut new = replace_agent(&cx, &mut agent);
    cx.drover(&["deploy", blog1.to_str().unwrap()]).success();
    stats.more("traffic after the switches", 100, Duration::from_secs(10));
    stats.finish(&stop, workers);
    // Every app still behind the port, as claimed.
    assert!(
        get_host(port, "blog.test", "/api/x")
            .1
            .contains("hi from api")
    );
    assert!(get_host(port, "blog.test", "/").1.contains("version 1"));
    // With no default left, a host nobody claims gets 404.
    let shop_plain = claiming(&cx, "shop", "3", port, "hosts = [\"shop.test\"]");
    cx.drover(&["deploy", shop_plain.to_str().unwrap()])
        .success();
    let (code, body) = get_host(port, "nobody.test", "/");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nobody.test"), "{body}");
    let _ = new.kill();
    let _ = new.wait();
}
