//! `drover run APP -e ENV -- CMD`: a one-off command in the live generation of an app on
//! some of an environment's hosts, over the same ssh connections as every fleet action.

use std::io::{BufRead, BufReader};
use std::process::{ExitStatus, Stdio};

use crate::error::hinted;
use crate::{HostError, Session, Target};

/// Which of the environment's hosts a command runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum On {
    /// The environment's first host.
    First,
    /// This host (as `hosts` names it).
    Host(String),
    /// Every host of this role.
    Role(String),
    /// Every host.
    All,
}

/// The hosts `on` picks, in the environment's order; an unknown host or role, or a role
/// with no hosts, is an error naming what the environment has.
pub fn hosts(target: &Target, on: &On) -> anyhow::Result<Vec<String>> {
    let env = &target.env;
    let known = || env.hosts.join(", ");
    Ok(match on {
        On::First => env.hosts.iter().take(1).cloned().collect(),
        On::All => env.hosts.clone(),
        On::Host(h) => {
            if !env.hosts.contains(h) {
                return Err(hinted(
                    format!("--host {h}: environment `{}` has no such host", target.name),
                    format!("its hosts: {}", known()),
                ));
            }
            vec![h.clone()]
        }
        On::Role(r) => {
            let Some(role) = env.roles.get(r) else {
                let roles: Vec<&str> = env.roles.keys().map(String::as_str).collect();
                return Err(hinted(
                    format!("--role {r}: environment `{}` has no such role", target.name),
                    if roles.is_empty() {
                        "it has no roles: use --host or --all".to_string()
                    } else {
                        format!("its roles: {}", roles.join(", "))
                    },
                ));
            };
            let picked: Vec<String> = env
                .hosts
                .iter()
                .filter(|h| role.hosts.contains(h))
                .cloned()
                .collect();
            if picked.is_empty() {
                return Err(hinted(
                    format!(
                        "--role {r}: none of environment `{}`'s hosts plays it",
                        target.name
                    ),
                    format!(
                        "add hosts to [environments.{}.roles.{r}] hosts",
                        target.name
                    ),
                ));
            }
            picked
        }
    })
}

/// The shell text that runs `command` for `app` in the host's drover root.
fn remote_text(s: &Session, app: &str, command: &[String]) -> String {
    let mut args = vec!["run", app, "--"];
    args.extend(command.iter().map(String::as_str));
    s.drover(&args)
}

/// Runs `command` on one host with this process's stdin, stdout and stderr (and with
/// `tty`, a terminal on the host): its exit status.
pub fn attached(
    target: &Target,
    host: &str,
    app: &str,
    command: &[String],
    tty: bool,
) -> anyhow::Result<ExitStatus> {
    let one = target.only(&[host.to_string()]);
    let mut results = one.each(Some(1), |s| {
        let mut cmd = s.command_with_terminal(&remote_text(s, app, command), tty);
        cmd.stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        cmd.status()
            .map_err(|e| HostError::new(format!("{}: cannot run ssh: {e}", s.name)))
    })?;
    match results.pop() {
        Some((_, r)) => Ok(r?),
        None => Err(anyhow::anyhow!("no host to run on")),
    }
}

/// Where a line of a host's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Runs `command` on each of `hosts` at once (at most `[ssh] parallel`), with no input:
/// each line of output to `on_line` with its host, then each host's exit status.
pub fn each(
    target: &Target,
    hosts: &[String],
    app: &str,
    command: &[String],
    on_line: impl Fn(&str, Stream, &str) + Sync,
) -> anyhow::Result<Vec<(String, Result<ExitStatus, HostError>)>> {
    let some = target.only(hosts);
    some.each(None, |s| {
        let mut child = s
            .command_with_terminal(&remote_text(s, app, command), false)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HostError::new(format!("{}: cannot run ssh: {e}", s.name)))?;
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let lines = |r: Box<dyn std::io::Read + Send>, stream: Stream| {
            for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                on_line(&s.name, stream, String::from_utf8_lossy(&line).trim_end());
            }
        };
        std::thread::scope(|scope| {
            scope.spawn(|| lines(Box::new(err), Stream::Stderr));
            lines(Box::new(out), Stream::Stdout);
        });
        child
            .wait()
            .map_err(|e| HostError::new(format!("{}: {e}", s.name)))
    })
}
