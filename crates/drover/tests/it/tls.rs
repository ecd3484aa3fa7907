//! The proxy as the host's front door over TLS: apps on one TLS port by host name (SNI),
//! HTTP/2 by ALPN, upgrades, the plain-HTTP port's redirect, certificate files replaced under
//! load, and bad certificates refused. Certificates come from a CA the test makes with the
//! `openssl` command (test.sh installs it); clients are `curl` and `openssl s_client`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestContext, free_port, wait_for};

#[path = "../../../drover-proxy/src/tls/testca.rs"]
#[allow(dead_code)]
mod testca;

use testca::{Ca, KeyKind};

/// App `name` behind TLS `port` (plain HTTP on `http_port`) for `hosts`, with this pair.
fn tls_app(
    cx: &TestContext,
    name: &str,
    version: &str,
    (port, http_port): (u16, u16),
    hosts: &[&str],
    (cert, key): (&Path, &Path),
) -> PathBuf {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let d = cx.hello_app(
        &format!("{name}-{version}"),
        version,
        &format!(
            "[proxy]\nport = {port}\nhttp_port = {http_port}\ndrain_timeout = \"5s\"\n\
             hosts = [{}]\ntls = {{ cert = {:?}, key = {:?} }}\n\n[env]\nGREETING = \"hi from {name}\"\n",
            hosts.join(", "),
            cert.display().to_string(),
            key.display().to_string(),
        ),
    );
    let toml = std::fs::read_to_string(d.join("drover.toml"))
        .unwrap()
        .replace("name = \"hello\"", &format!("name = \"{name}\""));
    std::fs::write(d.join("drover.toml"), toml).unwrap();
    d
}

/// `curl` to `https://HOST:PORT/PATH` (resolved to 127.0.0.1, trusting `ca`) with `args`:
/// (exit status success, stdout).
fn curl(ca: &Path, host: &str, port: u16, path: &str, args: &[&str]) -> (bool, String) {
    curl_n(ca, host, port, path, args, 1)
}

/// `curl` with the URL `times` times: one connection, kept alive, for all.
fn curl_n(
    ca: &Path,
    host: &str,
    port: u16,
    path: &str,
    args: &[&str],
    times: usize,
) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(args)
        .args(std::iter::repeat_n(
            format!("https://{host}:{port}{path}"),
            times,
        ))
        .output()
        .expect("curl (test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The serial number of the certificate the port answers `host` with.
fn served_serial(port: u16, host: &str) -> String {
    let mut c = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            host,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(c.stdin.take());
    let mut pem = String::new();
    c.stdout.take().unwrap().read_to_string(&mut pem).unwrap();
    let _ = c.wait();
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    x.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = x.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Until `stop`: batches of 20 GETs for `host` on one kept-alive TLS connection each (a
/// new connection, and handshake, per batch), each answer checked for `expect`.
fn tls_load(
    ca: PathBuf,
    host: &'static str,
    port: u16,
    expect: &'static str,
    http1: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut args = vec!["-w", "\n%{http_code}\n"];
        if http1 {
            args.push("--http1.1");
        }
        let (ok, out) = curl_n(&ca, host, port, "/", &args, 20);
        let answers = out.matches(expect).count() as u64;
        let codes = out.lines().filter(|l| *l == "200").count() as u64;
        if ok && answers == 20 && codes == 20 {
            tally.ok.fetch_add(20, Ordering::Relaxed);
        } else {
            tally
                .failed
                .fetch_add(20 - answers.min(20), Ordering::Relaxed);
            let mut e = tally.errors.lock().unwrap();
            if e.len() < 10 {
                e.push(out.chars().take(600).collect());
            }
        }
    }
}

#[test]
fn apps_on_one_tls_port_by_sni_with_h2_upgrades_redirects_and_replaced_certificates_fail_no_request()
 {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let ca_dir = cx.path("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca = Ca::new(&ca_dir);
    let (shop_cert, shop_key) = ca.issue("shop", &["shop.test", "www.shop.test"], KeyKind::Pkcs8);
    let (blog_cert, blog_key) = ca.issue("blog", &["blog.test"], KeyKind::Pkcs1);
    let ports = (free_port(), free_port());
    let (port, http_port) = ports;
    let shop = |v: &str| {
        tls_app(
            &cx,
            "shop",
            v,
            ports,
            &["shop.test", "www.shop.test"],
            (&shop_cert, &shop_key),
        )
    };
    let blog = |v: &str| {
        tls_app(
            &cx,
            "blog",
            v,
            ports,
            &["blog.test"],
            (&blog_cert, &blog_key),
        )
    };
    let (shop1, shop2, blog1, blog2) = (shop("1"), shop("2"), blog("1"), blog("2"));
    cx.drover(&["deploy", shop1.to_str().unwrap()]).success();
    cx.drover(&["deploy", blog1.to_str().unwrap()]).success();

    // Each host gets its own certificate (curl checks it names the host), over HTTP/2.
    let (ok, out) = curl(
        &ca.cert,
        "shop.test",
        port,
        "/",
        &["-w", "\n%{http_version}"],
    );
    assert!(
        ok && out.contains("hi from shop") && out.trim_end().ends_with('2'),
        "{out}"
    );
    let (ok, out) = curl(
        &ca.cert,
        "blog.test",
        port,
        "/",
        &["-w", "\n%{http_version}", "--http1.1"],
    );
    assert!(
        ok && out.contains("hi from blog") && out.trim_end().ends_with("1.1"),
        "{out}"
    );
    let (ok, out) = curl(&ca.cert, "www.shop.test", port, "/", &[]);
    assert!(ok && out.contains("hi from shop"), "{out}");
    // A name no certificate covers: no handshake.
    let (ok, out) = curl(&ca.cert, "nobody.test", port, "/", &[]);
    assert!(!ok, "{out}");

    // Plain HTTP on http_port answers 308 to the same URL over https.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: shop.test",
        ])
        .arg(format!("http://127.0.0.1:{http_port}/cart?x=1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("308 https://shop.test:{port}/cart?x=1"));

    // An upgrade (as WebSocket does) through TLS: 101, then bytes both ways.
    let mut s = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "shop.test",
            "-alpn",
            "http/1.1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = s.stdin.take().unwrap();
    input
        .write_all(b"GET /echo HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.stdout.take().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 101"), "{line}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
    }
    input.write_all(b"ping over tls\n").unwrap();
    let mut back = String::new();
    r.read_line(&mut back).unwrap();
    assert_eq!(back, "ping over tls\n");
    drop(input);
    let _ = s.kill();
    let _ = s.wait();

    // Load on both hosts (HTTP/2 and HTTP/1.1, new TLS connections all the time) across
    // deploys and rollbacks of both apps and a replaced certificate.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for (host, expect) in [("shop.test", "hi from shop"), ("blog.test", "hi from blog")] {
        for http1 in [false, true] {
            let (ca, stop, tally) = (ca.cert.clone(), stop.clone(), tally.clone());
            workers.push(std::thread::spawn(move || {
                tls_load(ca, host, port, expect, http1, stop, tally)
            }));
        }
    }
    let flowing = Instant::now() + Duration::from_secs(30);
    while tally.ok.load(Ordering::Relaxed) <= 100 {
        assert!(
            Instant::now() < flowing,
            "no load flowing: {:?}",
            tally.errors.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (app, dir) in [("shop", &shop2), ("blog", &blog2)] {
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
        cx.drover(&["rollback", app]).success();
    }
    // The shop's certificate files are replaced (a renewal): the next handshakes get it.
    let before = served_serial(port, "shop.test");
    let renewed = ca.issue(
        "shop-renewed",
        &["shop.test", "www.shop.test"],
        KeyKind::Sec1,
    );
    std::fs::copy(&renewed.1, &shop_key).unwrap();
    std::fs::copy(&renewed.0, &shop_cert).unwrap();
    wait_for(
        "the renewed certificate to be served",
        Duration::from_secs(20),
        || served_serial(port, "shop.test") != before,
    );
    let after = tally.ok.load(Ordering::Relaxed);
    wait_for(
        "traffic after the switches",
        Duration::from_secs(20),
        || tally.ok.load(Ordering::Relaxed) > after + 100,
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {:?}",
        tally.errors.lock().unwrap()
    );
}

#[test]
fn bad_certificates_are_refused_naming_the_file_and_what_serves_is_untouched() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let ca_dir = cx.path("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca = Ca::new(&ca_dir);
    let (cert, key) = ca.issue("shop", &["shop.test"], KeyKind::Pkcs8);
    let (_, other_key) = ca.issue("other", &["other.test"], KeyKind::Pkcs8);
    let (old_cert, old_key) =
        ca.issue_dated("old", &["shop.test"], "20200101000000Z", "20200201000000Z");
    let ports = (free_port(), free_port());
    let good = tls_app(&cx, "shop", "1", ports, &["shop.test"], (&cert, &key));
    cx.drover(&["deploy", good.to_str().unwrap()]).success();
    let serves = || {
        curl(&ca.cert, "shop.test", ports.0, "/", &[])
            .1
            .contains("version 1")
    };
    assert!(serves());

    let missing = cx.path("ca/missing.pem");
    let cases: [(&str, (&Path, &Path), &str); 4] = [
        ("missing", (&missing, &key), "missing.pem"),
        ("mismatched", (&cert, &other_key), "other.key"),
        ("expired", (&old_cert, &old_key), "old.pem"),
        ("uncovered", (&cert, &key), "does not cover"),
    ];
    for (what, pair, says) in cases {
        let hosts: &[&str] = if what == "uncovered" {
            &["shop.test", "admin.test"]
        } else {
            &["shop.test"]
        };
        let bad = tls_app(&cx, "shop", &format!("2-{what}"), ports, hosts, pair);
        let run = cx.drover(&["deploy", bad.to_str().unwrap()]).failure();
        assert!(run.stderr.contains(says), "{what}: {}", run.stderr);
        assert!(serves(), "{what}: the live generation still serves");
    }
    let st = cx.app_status("shop");
    assert_eq!(st["generation"], 1, "{st}");
}

#[path = "../../../drover-acme/tests/support/pebble.rs"]
mod pebble;

/// pebble's root, which signs what it issues: what clients of the app must trust.
fn pebble_root(p: &pebble::Pebble, to: &Path) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&p.ca)
        .arg(format!("https://127.0.0.1:{}/roots/0", p.management))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(to, out.stdout).unwrap();
}

/// App `name` on TLS `port` for `hosts`, its certificates from the ACME `directory`.
fn acme_app(
    cx: &TestContext,
    name: &str,
    (port, http_port): (u16, u16),
    hosts: &[&str],
    directory: &str,
    ca: &Path,
) -> PathBuf {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let d = cx.hello_app(
        name,
        "1",
        &format!(
            "[proxy]\nport = {port}\nhttp_port = {http_port}\nhosts = [{}]\ntls = \"acme\"\n\n\
             [proxy.acme]\ndirectory = {directory:?}\nemail = \"ops@shop.test\"\nca = {:?}\n\n\
             [env]\nGREETING = \"hi from {name}\"\n",
            hosts.join(", "),
            ca.display().to_string(),
        ),
    );
    let toml = std::fs::read_to_string(d.join("drover.toml"))
        .unwrap()
        .replace("name = \"hello\"", &format!("name = \"{name}\""));
    std::fs::write(d.join("drover.toml"), toml).unwrap();
    d
}

#[test]
fn acme_certificates_are_ordered_from_pebble_served_renewed_and_a_bad_directory_is_reported() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let http_port = free_port();
    // pebble fetches the HTTP-01 answer from the app's plain-HTTP port, and issues
    // certificates valid 30 s: renewed 10 s before they end.
    let p = pebble::Pebble::start_with(http_port, Some(30));
    let root = cx.path("pebble-root.pem");
    pebble_root(&p, &root);
    let port = free_port();
    let shop = acme_app(
        &cx,
        "shop",
        (port, http_port),
        &["shop.test", "www.shop.test"],
        &p.url,
        &p.ca,
    );
    cx.drover(&["deploy", shop.to_str().unwrap()]).success();
    wait_for(
        "a certificate from pebble to be served",
        Duration::from_secs(60),
        || {
            curl(&root, "www.shop.test", port, "/", &[])
                .1
                .contains("hi from shop")
        },
    );
    let issued = served_serial(port, "shop.test");
    // Kept under the root, unreadable to others.
    let key = cx.root.join("acme/certs/shop.test.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "{key:?} is {mode:o}");
    let st = cx.drover(&["status", "shop"]).success().stdout;
    assert!(
        st.contains("tls: ACME: certificate valid until") && st.contains("https://shop.test:"),
        "{st}"
    );

    // Renewed ahead of its end, and served to the next handshakes.
    wait_for(
        "the renewed certificate to be served",
        Duration::from_secs(60),
        || {
            let now = served_serial(port, "shop.test");
            !now.is_empty() && now != issued
        },
    );
    assert!(
        curl(&root, "shop.test", port, "/", &[])
            .1
            .contains("hi from shop")
    );

    // A directory nobody answers: the app is deployed, its status says why it has no
    // certificate and that the order is tried again; the shop still serves.
    let blog = acme_app(
        &cx,
        "blog",
        (port, http_port),
        &["blog.test"],
        "https://127.0.0.1:9/dir",
        &p.ca,
    );
    cx.drover(&["deploy", blog.to_str().unwrap()]).success();
    wait_for(
        "the failed order in status",
        Duration::from_secs(30),
        || {
            let st = cx.drover(&["status", "blog"]).stdout;
            st.contains("ordering a certificate failed")
                && st.contains("127.0.0.1:9")
                && st.contains("trying again")
        },
    );
    assert!(
        curl(&root, "shop.test", port, "/", &[])
            .1
            .contains("hi from shop")
    );
}
