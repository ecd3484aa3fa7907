//! The proxy as the host's front door over TLS: apps on one TLS port by host name (SNI),
//! HTTP/2 by ALPN, upgrades, the plain-HTTP port's redirect, certificate files replaced under
//! load, and bad certificates refused. Certificates come from a CA the test makes with the
//! `openssl` command (test.sh installs it); clients are `curl` and `openssl s_client`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestContext, free_port, wait_for};
use crate::proxy::Load;

#[path = "../../../drover-proxy/src/tls/testca.rs"]
#[allow(dead_code)]
pub(crate) mod testca;

use testca::{Ca, KeyKind};

/// App `name` behind TLS `port` (plain HTTP on `http_port`) for `hosts`, with `tls` (the
/// value of `[proxy] tls`) and `extra` toml after `[proxy]`, greeting with its name.
fn front_app(
    cx: &TestContext,
    (name, version): (&str, &str),
    (port, http_port): (u16, u16),
    hosts: &[&str],
    tls: &str,
    extra: &str,
) -> PathBuf {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    cx.named_app(
        &format!("{name}-{version}"),
        name,
        version,
        &format!(
            "[proxy]\nport = {port}\nhttp_port = {http_port}\ndrain_timeout = \"5s\"\n\
             hosts = [{}]\ntls = {tls}\n\n{extra}[env]\nGREETING = \"hi from {name}\"\n",
            hosts.join(", "),
        ),
    )
}

/// App `name` behind TLS `port` for `hosts`, with this certificate and key.
fn tls_app(
    cx: &TestContext,
    name: &str,
    version: &str,
    ports: (u16, u16),
    hosts: &[&str],
    (cert, key): (&Path, &Path),
) -> PathBuf {
    let tls = format!(
        "{{ cert = {:?}, key = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    front_app(cx, (name, version), ports, hosts, &tls, "")
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

/// Until `stop`: batches of 20 GETs for `host` on one kept-alive TLS connection each (a
/// new connection, and handshake, per batch), each answer checked for `expect`.
fn tls_load(
    ca: PathBuf,
    host: &'static str,
    port: u16,
    expect: &'static str,
    http1: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Load>,
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
            // A batch that ended in an error counts as failed even when every answer came.
            tally.fail(out.chars().take(600).collect());
        }
    }
}

#[test]
fn apps_on_one_tls_port_by_sni_with_h2_upgrades_redirects_and_replaced_certificates_fail_no_request()
 {
    let cx = TestContext::new();
    let mut agent = cx.start_agent();
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
    let tally = Arc::new(Load::default());
    let mut workers = Vec::new();
    for (host, expect) in [("shop.test", "hi from shop"), ("blog.test", "hi from blog")] {
        for http1 in [false, true] {
            let (ca, stop, tally) = (ca.cert.clone(), stop.clone(), tally.clone());
            workers.push(std::thread::spawn(move || {
                tls_load(ca, host, port, expect, http1, stop, tally)
            }));
        }
    }
    tally.more("load to flow", 100, Duration::from_secs(30));
    for (app, dir) in [("shop", &shop2), ("blog", &blog2)] {
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
        cx.drover(&["rollback", app]).success();
    }
    // A replacing agent takes the TLS port and its plain one over, and serves the same
    // certificates.
    let mut replaced = crate::proxy::replace_agent(&cx, &mut agent);
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
    tally.more("traffic after the switches", 100, Duration::from_secs(20));
    tally.finish(&stop, workers);
    // A host the app no longer claims loses its certificate too: no handshake for it.
    let shop3 = tls_app(
        &cx,
        "shop",
        "3",
        ports,
        &["shop.test"],
        (&shop_cert, &shop_key),
    );
    cx.drover(&["deploy", shop3.to_str().unwrap()]).success();
    let (ok, out) = curl(&ca.cert, "www.shop.test", port, "/", &[]);
    assert!(!ok, "{out}");
    let (ok, out) = curl(&ca.cert, "shop.test", port, "/", &[]);
    assert!(ok && out.contains("version 3"), "{out}");
    let _ = replaced.kill();
    let _ = replaced.wait();
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
    ports: (u16, u16),
    hosts: &[&str],
    directory: &str,
    ca: &Path,
) -> PathBuf {
    let acme = format!(
        "[proxy.acme]\ndirectory = {directory:?}\nemail = \"ops@shop.test\"\nca = {:?}\n\n",
        ca.display().to_string()
    );
    front_app(cx, (name, "1"), ports, hosts, "\"acme\"", &acme)
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
    // A URL that answers, but not as an ACME directory, is named as such.
    let roots = format!("https://127.0.0.1:{}/roots/0", p.management);
    let wiki = acme_app(
        &cx,
        "wiki",
        (port, http_port),
        &["wiki.test"],
        &roots,
        &p.ca,
    );
    cx.drover(&["deploy", wiki.to_str().unwrap()]).success();
    wait_for(
        "the invalid directory in status",
        Duration::from_secs(30),
        || {
            let st = cx.drover(&["status", "wiki"]).stdout;
            st.contains("is not an ACME directory") && st.contains("/roots/0")
        },
    );
    assert!(
        curl(&root, "shop.test", port, "/", &[])
            .1
            .contains("hi from shop")
    );
}

#[test]
fn a_canary_and_a_pause_behind_a_shared_tls_port_fail_no_request() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    let ca_dir = cx.path("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca = Ca::new(&ca_dir);
    let (cert, key) = ca.issue("shop", &["shop.test"], KeyKind::Pkcs8);
    let ports = (free_port(), free_port());
    let v1 = tls_app(&cx, "shop", "1", ports, &["shop.test"], (&cert, &key));
    let v2 = tls_app(&cx, "shop", "2", ports, &["shop.test"], (&cert, &key));
    cx.drover(&["deploy", v1.to_str().unwrap()]).success();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Load::default());
    let workers: Vec<_> = [false, true]
        .into_iter()
        .map(|http1| {
            let (ca, stop, tally) = (ca.cert.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                tls_load(ca, "shop.test", ports.0, "hi from shop", http1, stop, tally)
            })
        })
        .collect();
    wait_for("load to flow", Duration::from_secs(20), || {
        tally.ok.load(Ordering::Relaxed) > 100
    });
    // A canary takes its share of new clients through the TLS port, then is promoted.
    cx.drover(&["deploy", "--canary", "50", v2.to_str().unwrap()])
        .success();
    wait_for("the canary to answer", Duration::from_secs(20), || {
        (0..10).any(|_| {
            curl(&ca.cert, "shop.test", ports.0, "/", &[])
                .1
                .contains("version 2")
        })
    });
    cx.drover(&["promote", "shop"]).success();
    // A pause holds a request until resume, on the same port.
    cx.drover(&["pause", "shop"]).success();
    let held = {
        let ca = ca.cert.clone();
        std::thread::spawn(move || curl(&ca, "shop.test", ports.0, "/", &[]))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!held.is_finished(), "a request went through while paused");
    cx.drover(&["resume", "shop"]).success();
    let (ok, out) = held.join().unwrap();
    assert!(ok && out.contains("version 2"), "{out}");
    tally.more("traffic after", 100, Duration::from_secs(20));
    tally.finish(&stop, workers);
}
