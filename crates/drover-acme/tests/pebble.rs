//! drover-acme against a real ACME server: Debian's `pebble` and `pebble-challtestsrv`
//! (its DNS, answering every name with 127.0.0.1), with the HTTP-01 answers served from a
//! `ChallengeMap` by a small responder on pebble's `httpPort`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use drover_acme::{AcmeConfig, AcmeError, ChallengeMap, Client, Store};

/// How long one order may take against pebble.
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

/// Shows an error as drover prints it (seen with --nocapture or on failure).
fn show(err: &AcmeError) {
    eprintln!("error: {err}");
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `ready` holds, or panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    openssl_stdin(dir, args, "")
}

/// Runs `openssl ARGS` in `dir` with `input` on its stdin: its stdout.
fn openssl_stdin(dir: &Path, args: &[&str], input: &str) -> String {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// pebble and its DNS server, killed on drop.
struct Pebble {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    /// The directory URL.
    url: String,
    /// The CA certificate of pebble's own HTTPS certificate, for `[proxy.acme] ca`.
    ca: PathBuf,
    listen: u16,
    management: u16,
    /// challtestsrv's DNS address, for pebble's `-dnsserver`.
    dns: String,
    /// Where pebble sends HTTP-01 validations.
    http_port: u16,
}

impl Pebble {
    fn start() -> Pebble {
        for binary in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {binary}")])
                .output()
                .unwrap();
            assert!(
                found.status.success(),
                "{binary} is not installed: `apt-get install -y pebble`"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        // A CA, and a certificate for 127.0.0.1 it signs, for pebble's HTTPS.
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            d,
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=drover test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );

        let (listen, management, http_port, tls_port, dns, dns_management) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": d.join("server.pem"),
                "privateKey": d.join("server.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let mut pebble = Pebble {
            children: Vec::new(),
            url: format!("https://127.0.0.1:{listen}/dir"),
            ca: d.join("ca.pem"),
            listen,
            management,
            http_port,
            dns: format!("127.0.0.1:{dns}"),
            dir,
        };
        let dns_addr = pebble.dns.clone();
        pebble.children.push(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-dns01", &dns_addr])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        pebble.spawn();
        // challtestsrv's DNS listens on UDP: its management port opens after it.
        wait_for("challtestsrv listening", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", dns_management)).is_ok()
        });
        pebble
    }

    /// Starts pebble (the last of `children`) and waits until it listens.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pebble.log"))
            .unwrap();
        self.children.push(
            Command::new("pebble")
                .arg("-config")
                .arg(self.dir.path().join("pebble.json"))
                .args(["-dnsserver", &self.dns])
                .env("PEBBLE_VA_NOSLEEP", "1")
                // Every order validates anew.
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start pebble"),
        );
        for (what, port) in [
            ("pebble's directory", self.listen),
            ("pebble's management", self.management),
        ] {
            wait_for(
                &format!("{what} listening"),
                Duration::from_secs(20),
                || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            );
        }
    }

    /// Restarts pebble, which forgets every account and order.
    fn restart(&mut self) {
        let mut old = self.children.pop().unwrap();
        old.kill().unwrap();
        old.wait().unwrap();
        self.spawn();
    }

    fn config(&self) -> AcmeConfig {
        AcmeConfig {
            directory: self.url.clone(),
            email: Some("ops@app.test".into()),
            ca: Some(self.ca.clone()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The port-80 side of HTTP-01 on pebble's `httpPort`: answers from the map, or, when
/// `silent`, closes every connection without a word.
struct Responder {
    silent: Arc<AtomicBool>,
}

impl Responder {
    fn start(port: u16, map: ChallengeMap) -> Responder {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = silent.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if quiet.load(Ordering::SeqCst) {
                    continue;
                }
                let _ = answer(stream, &map);
            }
        });
        Responder { silent }
    }
}

fn answer(mut stream: TcpStream, map: &ChallengeMap) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split(' ').nth(1).unwrap_or("");
    let (status, body) = match map.answer(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", String::new()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The certificates of a PEM chain, each in PEM.
fn split_chain(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|c| c.contains("BEGIN CERTIFICATE"))
        .map(|c| format!("{c}\n"))
        .collect()
}

#[test]
fn orders_a_certificate_from_pebble_and_keeps_the_account() {
    let pebble = Pebble::start();
    let map = ChallengeMap::new();
    let _responder = Responder::start(pebble.http_port, map.clone());
    let state = tempfile::tempdir().unwrap();

    let client = Client::new(pebble.config(), state.path()).unwrap();
    let account = state.path().join("account.json");
    let written = std::fs::read(&account).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&account).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let domains = vec!["app.test".to_string(), "www.app.test".to_string()];
    let started = SystemTime::now();
    let issued = client
        .order(&domains, &map, ORDER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\npebble's log:\n{}", pebble.log()));
    assert!(map.is_empty(), "the answers are withdrawn after the order");
    assert!(issued.not_after > started + Duration::from_secs(24 * 3600));
    assert!(issued.not_before < issued.not_after);
    assert!(!issued.renew_due(SystemTime::now()));

    // The chain: a leaf for both names, signed by the next certificate ...
    let chain = split_chain(&issued.cert_pem);
    assert!(
        chain.len() >= 2,
        "leaf and intermediate: {}",
        issued.cert_pem
    );
    let d = state.path();
    std::fs::write(d.join("leaf.pem"), &chain[0]).unwrap();
    std::fs::write(d.join("issuers.pem"), chain[1..].concat()).unwrap();
    let text = openssl(d, &["x509", "-noout", "-text", "-in", "leaf.pem"]);
    assert!(text.contains("DNS:app.test"), "{text}");
    assert!(text.contains("DNS:www.app.test"), "{text}");
    // ... up to pebble's root, served at its management port.
    let root = Command::new("curl")
        .args(["-sSf", "--cacert"])
        .arg(&pebble.ca)
        .arg(format!("https://127.0.0.1:{}/roots/0", pebble.management))
        .output()
        .expect("run curl");
    assert!(
        root.status.success(),
        "{}",
        String::from_utf8_lossy(&root.stderr)
    );
    std::fs::write(d.join("root.pem"), &root.stdout).unwrap();
    let verify = [
        "verify",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "issuers.pem",
        "leaf.pem",
    ];
    openssl(d, &verify);
    // The key is the leaf's.
    let key_pub = openssl_stdin(d, &["pkey", "-pubout"], &issued.key_pem);
    let cert_pub = openssl(d, &["x509", "-noout", "-pubkey", "-in", "leaf.pem"]);
    assert_eq!(key_pub, cert_pub);

    // The store gives back what it was given, its files private.
    let store = Store::new(state.path());
    assert_eq!(store.load("app").unwrap(), None);
    store.save("app", &issued).unwrap();
    assert_eq!(store.load("app").unwrap().as_ref(), Some(&issued));
    let (crt, key) = store.paths("app").unwrap();
    for path in [crt, key] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }

    // A second client on the same directory reuses the account.
    let again = Client::new(pebble.config(), state.path()).unwrap();
    assert_eq!(again.account_id(), client.account_id());
    assert_eq!(std::fs::read(&account).unwrap(), written);
    let renewed = again
        .order(&domains[..1], &map, ORDER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\npebble's log:\n{}", pebble.log()));
    assert_ne!(renewed.key_pem, issued.key_pem);
}

#[test]
fn a_silent_responder_fails_the_challenge_naming_the_domain() {
    let pebble = Pebble::start();
    let map = ChallengeMap::new();
    let responder = Responder::start(pebble.http_port, map.clone());
    responder.silent.store(true, Ordering::SeqCst);
    let state = tempfile::tempdir().unwrap();
    let client = Client::new(pebble.config(), state.path()).unwrap();

    let domains = vec!["silent.app.test".to_string()];
    let err = client.order(&domains, &map, ORDER_TIMEOUT).unwrap_err();
    show(&err);
    let AcmeError::ChallengeFailed { domain, detail } = &err else {
        panic!("not a failed challenge: {err}");
    };
    assert_eq!(domain, "silent.app.test");
    assert!(!detail.is_empty());
    assert!(err.to_string().contains("silent.app.test"), "{err}");
    assert!(err.hint().unwrap().contains("port 80"), "{:?}", err.hint());
    assert!(map.is_empty(), "the answers are withdrawn after a failure");

    // An order given no time at all stops at once, saying where it was.
    let err = client.order(&domains, &map, Duration::ZERO).unwrap_err();
    show(&err);
    assert!(matches!(err, AcmeError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("silent.app.test"), "{err}");
    assert!(map.is_empty());
}

#[test]
fn directories_that_are_not_trusted_or_not_acme_are_named() {
    let pebble = Pebble::start();
    let state = tempfile::tempdir().unwrap();

    // pebble's certificate, without its CA: a trust failure, with the `ca` hint.
    let untrusted = AcmeConfig {
        ca: None,
        ..pebble.config()
    };
    let err = Client::new(untrusted, state.path())
        .err()
        .expect("an error");
    show(&err);
    assert!(
        matches!(err, AcmeError::Unreachable { trust: true, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&pebble.url), "{err}");
    assert!(
        err.hint().unwrap().contains("[proxy.acme] ca"),
        "{:?}",
        err.hint()
    );

    // A URL that answers, but not with a directory: pebble's root certificate.
    let roots = format!("https://127.0.0.1:{}/roots/0", pebble.management);
    let not_acme = AcmeConfig {
        directory: roots.clone(),
        ..pebble.config()
    };
    let err = Client::new(not_acme, state.path()).err().expect("an error");
    show(&err);
    assert!(matches!(err, AcmeError::InvalidDirectory { .. }), "{err}");
    assert!(err.to_string().contains(&roots), "{err}");
    assert!(err.hint().is_some());
    assert!(!state.path().join("account.json").exists());
}

#[test]
fn a_closed_port_is_an_unreachable_directory() {
    let state = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}/dir", free_port());
    let config = AcmeConfig {
        directory: url.clone(),
        email: None,
        ca: None,
    };
    let err = Client::new(config, state.path()).err().expect("an error");
    show(&err);
    assert!(
        matches!(err, AcmeError::Unreachable { trust: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(err.hint().unwrap().contains("[proxy.acme] directory"));
    assert!(!state.path().join("account.json").exists());
}

#[test]
fn an_account_the_server_forgot_is_made_anew() {
    let mut pebble = Pebble::start();
    let map = ChallengeMap::new();
    let _responder = Responder::start(pebble.http_port, map.clone());
    let state = tempfile::tempdir().unwrap();
    let client = Client::new(pebble.config(), state.path()).unwrap();
    let account = state.path().join("account.json");
    let before = std::fs::read(&account).unwrap();
    let id = client.account_id();

    pebble.restart();
    let domains = vec!["again.app.test".to_string()];
    client
        .order(&domains, &map, ORDER_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\npebble's log:\n{}", pebble.log()));
    assert_ne!(client.account_id(), id);
    assert_ne!(std::fs::read(&account).unwrap(), before);
    // The new account is the one kept.
    let again = Client::new(pebble.config(), state.path()).unwrap();
    assert_eq!(again.account_id(), client.account_id());
}
