//! pebble (Let's Encrypt's test ACME server) and pebble-challtestsrv (its DNS, answering
//! every name with 127.0.0.1), started by a test with a certificate the test makes, and
//! killed on drop. Shared by drover-acme's tests and drover's end-to-end tests.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_acme::AcmeConfig;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `ready` holds, or panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    openssl_stdin(dir, args, "")
}

/// Runs `openssl ARGS` in `dir` with `input` on its stdin: its stdout.
pub fn openssl_stdin(dir: &Path, args: &[&str], input: &str) -> String {
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
pub struct Pebble {
    pub dir: tempfile::TempDir,
    children: Vec<Child>,
    /// The directory URL.
    pub url: String,
    /// The CA certificate of pebble's own HTTPS certificate, for `[proxy.acme] ca`.
    pub ca: PathBuf,
    listen: u16,
    pub management: u16,
    /// challtestsrv's DNS address, for pebble's `-dnsserver`.
    dns: String,
    /// Where pebble sends HTTP-01 validations.
    pub http_port: u16,
}

impl Pebble {
    pub fn start() -> Pebble {
        Pebble::start_with(free_port(), None)
    }

    /// pebble validating HTTP-01 on `http_port`, issuing certificates valid `validity`
    /// seconds (pebble's default: 5 years).
    pub fn start_with(http_port: u16, validity: Option<u64>) -> Pebble {
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

        let (listen, management, tls_port, dns, dns_management) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let mut config = serde_json::json!({
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
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
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
    pub fn spawn(&mut self) {
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
    pub fn restart(&mut self) {
        let mut old = self.children.pop().unwrap();
        old.kill().unwrap();
        old.wait().unwrap();
        self.spawn();
    }

    pub fn config(&self) -> AcmeConfig {
        AcmeConfig {
            directory: self.url.clone(),
            email: Some("ops@app.test".into()),
            ca: Some(self.ca.clone()),
        }
    }

    pub fn log(&self) -> String {
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
