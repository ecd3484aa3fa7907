//! drover-acme against a real ACME server: Debian's `pebble` and `pebble-challtestsrv`
//! (its DNS, answering every name with 127.0.0.1), with the HTTP-01 answers served from a
//! `ChallengeMap` by a small responder on pebble's `httpPort`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use drover_acme::{AcmeConfig, AcmeError, ChallengeMap, Client, Store};

#[path = "support/pebble.rs"]
mod support;
use support::{Pebble, free_port, openssl, openssl_stdin};

/// How long one order may take against pebble.
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

/// Shows an error as drover prints it (seen with --nocapture or on failure).
fn show(err: &AcmeError) {
    eprintln!("error: {err}");
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
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
