//! The TCP connection under a host's ssh master, opened by drover and relayed to ssh (its
//! ProxyCommand): `drover remote relay HOST PORT`.
//!
//! Why: until its first session runs, ssh's socket has Nagle's algorithm on at both ends, so
//! a small message sent while an earlier one is unacknowledged waits for the peer's delayed
//! acknowledgement (~40 ms on Linux). That happens twice on every new connection: the
//! service request after NEWKEYS, and the reply to the first session's channel open, held
//! behind the host-keys notice sshd sends after login. The relay's socket sends at once
//! (`TCP_NODELAY`) and acknowledges every read at once (`TCP_QUICKACK`, re-armed after each
//! read), so neither wait happens: a new connection and its first session take ~80 ms less.
//!
//! The user's ssh config still decides how a host is reached: a host whose effective config
//! (`ssh -G`) sets ProxyCommand, ProxyJump, BindAddress or BindInterface, canonicalizes its
//! name (ssh does that only when it connects by itself), or names it by a scoped IPv6
//! address, is connected by ssh itself, as is every host with `[ssh] relay = false`.
//!
//! A relay lives as long as its master connection (`[ssh] persist` after the last command),
//! so the drover binary it runs stays in use that long: replace it by renaming a new file
//! over it (as package managers, `install` and `cargo install` do), not by writing into it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The ProxyCommand that runs the relay for this ssh command line (which must end before the
/// destination), or `None` when the user's config already says how to connect. The relay
/// writes why it could not connect to `log`, the master's log: ssh sends a ProxyCommand's
/// stderr to /dev/null once ControlPersist is on. ssh runs the command with `$SHELL -c`: the
/// master must run with `SHELL=/bin/sh` (a deploy user's shell may be nologin, or not POSIX).
pub fn proxy_command(base: &mut Command, host: &str, log: &Path) -> Option<String> {
    let out = base
        .arg("-G")
        .arg(host)
        // As the master will run (`Match exec` uses it too).
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        // A broken config: ssh itself, run next, names the problem.
        return None;
    }
    let config = String::from_utf8_lossy(&out.stdout);
    let plan = Plan::from_config(&config)?;
    let exe = std::env::current_exe().ok()?;
    // ssh expands `%` tokens in the command, then hands it to the shell.
    let arg = |s: &str| super::ssh::quote(s).replace('%', "%%");
    Some(format!(
        "{} remote relay '%h' '%p' --family {} --timeout {} --log {}",
        arg(exe.to_str()?),
        plan.family,
        plan.timeout_secs,
        arg(log.to_str()?)
    ))
}

/// What `ssh -G` says matters to the relay.
#[derive(Debug, PartialEq)]
struct Plan {
    family: &'static str,
    timeout_secs: u64,
}

impl Plan {
    /// `None` when the config reaches the host some other way than a plain TCP connection.
    fn from_config(config: &str) -> Option<Plan> {
        let mut plan = Plan {
            family: "any",
            timeout_secs: 10,
        };
        for line in config.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let (key, value) = (key.to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "proxycommand" | "proxyjump" | "bindaddress" | "bindinterface"
                    if value != "none" =>
                {
                    return None;
                }
                // A scoped IPv6 address (`fe80::1%eth0`): ssh resolves those itself.
                "hostname" if value.contains('%') => return None,
                // ssh canonicalizes a name only when it connects by itself (unless "always"),
                // and the config may depend on the canonical name.
                "canonicalizehostname" if value == "true" || value == "yes" => return None,
                // CNAMEs are followed only when ssh connects by itself, too.
                "canonicalizepermittedcnames" if value != "none" => return None,
                "addressfamily" => {
                    plan.family = match value {
                        "inet" => "inet",
                        "inet6" => "inet6",
                        _ => "any",
                    }
                }
                "connecttimeout" => {
                    if let Ok(secs) = value.parse::<u64>() {
                        plan.timeout_secs = secs.max(1);
                    }
                }
                _ => {}
            }
        }
        Some(plan)
    }
}

/// Connects to `host:port` and relays between the connection and stdin/stdout until either
/// side ends. A failure is worded as ssh words it, since the connection's errors are told
/// apart by those words, and appended to `log` (else printed).
pub fn run(
    host: &str,
    port: u16,
    family: &str,
    timeout: Duration,
    log: Option<&Path>,
) -> Result<(), String> {
    // Out of drover's process group: a Ctrl-C of the command that started a persistent
    // master must not cut the connection it leaves for the next command.
    let ssh = rustix::process::getppid();
    let _ = rustix::process::setsid();
    let fail = |e: String| {
        let message = format!("ssh: {e}");
        // Not once ssh is gone: a newer master for the host may have the log by now.
        let logged = log.is_some_and(|log| {
            rustix::process::getppid() == ssh
                && std::fs::OpenOptions::new()
                    .append(true)
                    .open(log)
                    .and_then(|mut f| writeln!(f, "{message}"))
                    .is_ok()
        });
        if !logged {
            let _ = writeln!(std::io::stderr(), "{message}");
        }
        message
    };
    let stream = connect(host, port, family, timeout).map_err(fail)?;
    let _ = stream.set_nodelay(true);
    let mut upstream = stream.try_clone().map_err(|e| fail(os_words(&e)))?;
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if upstream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // ssh is done with the connection (or gone): end it both ways, which also ends
        // the reading side below, even when the host has fallen silent.
        let _ = upstream.shutdown(Shutdown::Both);
    });
    let mut stream = stream;
    let mut output = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Not sticky: the kernel may fall back to delayed acknowledgements after any read.
        let _ = rustix::net::sockopt::set_tcp_quickack(&stream, true);
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if output
                    .write_all(&buf[..n])
                    .and_then(|_| output.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn connect(host: &str, port: u16, family: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("Could not resolve hostname {host}: {}", os_words(&e)))?
        .filter(|a| match family {
            "inet" => a.is_ipv4(),
            "inet6" => a.is_ipv6(),
            _ => true,
        })
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("connect to host {host} port {port}: {}", os_words(&e)),
        None => format!("Could not resolve hostname {host}: no address of the wanted family"),
    })
}

/// An io error's words without Rust's " (os error N)", as ssh prints them.
fn os_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    let words = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = words.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_reached_another_way_is_left_to_ssh() {
        let plain = "user root\nhostname 10.0.0.2\nport 22\naddressfamily inet\nconnecttimeout 5\nproxyusefdpass no\n";
        assert_eq!(
            Plan::from_config(plain),
            Some(Plan {
                family: "inet",
                timeout_secs: 5
            })
        );
        for other in [
            "proxyjump bastion",
            "proxycommand nc %h %p",
            "bindaddress 10.0.0.1",
            "bindinterface eth1",
            "hostname fe80::1%eth0",
            "canonicalizehostname true",
            "canonicalizePermittedcnames *.a.example:*.b.example",
        ] {
            assert_eq!(
                Plan::from_config(&format!("{plain}{other}\n")),
                None,
                "{other}"
            );
        }
        assert_eq!(
            Plan::from_config("proxycommand none\nconnecttimeout none\n"),
            Some(Plan {
                family: "any",
                timeout_secs: 10
            })
        );
    }

    #[test]
    fn connection_errors_are_worded_as_ssh_words_them() {
        // Nothing listens on a port just closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = connect("127.0.0.1", port, "any", Duration::from_secs(2)).unwrap_err();
        assert_eq!(
            err,
            format!("connect to host 127.0.0.1 port {port}: Connection refused")
        );
        let err = connect("127.0.0.1", port, "inet6", Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("no address of the wanted family"), "{err}");
    }
}
