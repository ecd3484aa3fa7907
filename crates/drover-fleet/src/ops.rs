//! The fleet operations other than a deploy, each over every host of an environment:
//! rollback (under the environment's lock, audited), status, history (the hosts' audit
//! logs merged), logs, the lock's state and its release, and host setup. Each returns what
//! every host answered, by host; the commands print it.

use std::path::Path;

use drover_wire::{AppStatus, AuditEntry, LockHolder, Request};
use serde::Serialize;

use crate::{Connected, HostError, HostLink, Locks, SshSettings, Target, agent_call, par, who};

/// One host's part of a fleet operation: its answer or why there is none.
#[derive(Debug, Serialize)]
pub struct HostResult<T> {
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error itself, with its hint.
    #[serde(skip)]
    pub cause: Option<HostError>,
}

impl<T> HostResult<T> {
    pub fn of(host: &str, r: Result<T, HostError>) -> HostResult<T> {
        let (result, cause) = match r {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        HostResult {
            host: host.to_string(),
            result,
            error: cause.as_ref().map(|e| e.message.clone()),
            cause,
        }
    }
}

/// Ok when no host failed; else one error naming each host that did, with the first hint.
pub fn failed<T>(results: &[HostResult<T>]) -> anyhow::Result<()> {
    let errors: Vec<&HostError> = results.iter().filter_map(|r| r.cause.as_ref()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::host_errors(&errors))
    }
}

/// Ok when every host's part went well; else one error naming each host that failed.
pub fn all_ok<T>(results: Vec<(String, Result<T, HostError>)>) -> anyhow::Result<Vec<T>> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (_, r) in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(ok);
    }
    Err(crate::host_errors(&errors.iter().collect::<Vec<_>>()))
}

/// Rolls `app` back on every host (to generation `to`, or each host's previous one), under
/// the environment's lock; each host's audit log gets the entry.
pub fn rollback(
    target: &Target,
    app: &str,
    to: Option<u64>,
) -> anyhow::Result<Vec<HostResult<AppStatus>>> {
    let conn = target.connect()?;
    let result = rollback_on(target, &conn, app, to);
    conn.close();
    result
}

fn rollback_on<L: HostLink>(
    target: &Target,
    conn: &Connected<L>,
    app: &str,
    to: Option<u64>,
) -> anyhow::Result<Vec<HostResult<AppStatus>>> {
    let sessions = conn.all()?;
    let mut locks = Locks::acquire(&target.name, &sessions, &format!("rollback of {app}"))?;
    let results = par(&sessions, target.config.ssh.parallel, |_, s| {
        let before = crate::current_generation(*s, app).ok().flatten();
        let r = agent_call::<AppStatus>(
            *s,
            &Request::Rollback {
                app: app.to_string(),
                to,
                who: who(),
            },
            None,
            |_| {},
        );
        let entry = AuditEntry::new(
            drover_agent::now(),
            &who(),
            Some(&target.name),
            app,
            "rollback",
        )
        .moved(
            r.as_ref().ok().and_then(|st| st.version.clone()),
            before,
            r.as_ref().ok().and_then(|st| st.generation),
        )
        .ended(
            if r.is_ok() { "ok" } else { "failed" },
            r.as_ref().err().map(|e| e.message.clone()),
        );
        (r, (s.name().to_string(), entry))
    });
    let (results, audit): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    locks.finish(&audit);
    Ok(sessions
        .iter()
        .zip(results)
        .map(|(s, r)| HostResult::of(s.name(), r))
        .collect())
}

/// Every host's apps (or only `app`).
pub fn status(
    target: &Target,
    app: Option<&str>,
) -> anyhow::Result<Vec<HostResult<Vec<AppStatus>>>> {
    let req = Request::Status {
        app: app.map(str::to_string),
    };
    Ok(target
        .each(None, |s| agent_call(s, &req, None, |_| {}))?
        .into_iter()
        .map(|(h, r)| HostResult::of(&h, r))
        .collect())
}

/// The environment's audit entries from every host (each with its host), newest first;
/// and the hosts whose log could not be read.
pub fn history(
    target: &Target,
    app: Option<&str>,
) -> anyhow::Result<(Vec<AuditEntry>, Vec<HostError>)> {
    let results = target.each(None, |s| {
        s.run(&["audit-read", "--env", &target.name], b"")
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<AuditEntry>(l).ok())
                    .collect::<Vec<_>>()
            })
    })?;
    // Each entry with its place in its host's log: entries of one second keep their order.
    let mut merged = Vec::new();
    let mut errors = Vec::new();
    for (host, r) in results {
        match r {
            Ok(entries) => merged.extend(entries.into_iter().enumerate().map(|(i, mut e)| {
                e.host = Some(host.clone());
                (i, e)
            })),
            Err(e) => errors.push(e),
        }
    }
    merged.retain(|(_, e)| app.is_none_or(|a| e.app == a));
    merged.sort_by(|(i, a), (j, b)| (b.at, &b.host, j).cmp(&(a.at, &a.host, i)));
    Ok((merged.into_iter().map(|(_, e)| e).collect(), errors))
}

/// A `Request::Logs` on every host at once, each line to `on_line` with its host; with
/// `follow`, until interrupted.
pub fn logs(
    target: &Target,
    req: &Request,
    on_line: impl Fn(&str, &str) + Sync,
) -> anyhow::Result<()> {
    // Every host at once: with --follow, none of them ends.
    let results = target.each(Some(target.env.hosts.len()), |s| {
        agent_call::<serde::de::IgnoredAny>(s, req, None, |line| on_line(&s.name, line)).map(|_| ())
    })?;
    all_ok(results).map(|_| ())
}

/// `drover gc --keep KEEP [--dry-run]` on every host: what each said it removed (or would).
pub fn gc(target: &Target, keep: usize, dry_run: bool) -> anyhow::Result<Vec<HostResult<String>>> {
    let keep = keep.to_string();
    let mut args = vec!["gc", "--keep", keep.as_str()];
    if dry_run {
        args.push("--dry-run");
    }
    Ok(target
        .each(None, |s| {
            let out = s.run(&args, b"")?;
            // What gc says goes to stderr (the list of a dry run to stdout): both, as said.
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok(text.lines().collect::<Vec<_>>().join("; "))
        })?
        .into_iter()
        .map(|(h, r)| HostResult::of(&h, r))
        .collect())
}

/// Who holds the environment's lock on each host (`None`: free).
pub fn lock_status(target: &Target) -> anyhow::Result<Vec<HostResult<Option<LockHolder>>>> {
    Ok(target
        .each(None, |s| {
            let o = s.run(&["lock", "show", &target.name], b"")?;
            serde_json::from_slice(&o.stdout)
                .map_err(|e| HostError::new(format!("{}: {e}", s.name)))
        })?
        .into_iter()
        .map(|(h, r)| HostResult::of(&h, r))
        .collect())
}

/// Takes the environment's lock on every host and keeps it (deploys are held off, told
/// `message`) until `lock release`.
pub fn lock_acquire(target: &Target, message: &str) -> anyhow::Result<()> {
    let conn = target.connect()?;
    let result = (|| {
        let sessions = conn.all()?;
        let ask = crate::LockAsk {
            message: Some(message.to_string()),
            wait: None,
        };
        Locks::acquire_with(&target.name, &sessions, "drover lock acquire", &ask, |_| {})?.keep();
        Ok(())
    })();
    conn.close();
    result
}

/// Breaks the environment's lock on every host.
pub fn lock_release(target: &Target) -> anyhow::Result<()> {
    let results = target.each(None, |s| {
        s.run(&["lock", "release", &target.name, "--force"], b"")
            .map(|_| ())
    })?;
    all_ok(results).map(|_| ())
}

/// What setting up one host did.
#[derive(Debug, Serialize)]
pub struct SetupReport {
    pub installed: bool,
    /// The drover it ran before, when it was replaced.
    pub previous: Option<String>,
    /// The host's age public key (for `drover secrets --recipient`).
    pub host_key: String,
}

/// The binary `host setup` copies: its bytes, its build id and what it needs of a host.
pub struct SetupBinary {
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
    pub build: String,
    pub needs: crate::elf::Needs,
}

impl SetupBinary {
    /// The binary at `path` (default: this one); a missing file or one that is not a Linux
    /// ELF executable is an error naming it.
    pub fn load(path: Option<&Path>) -> anyhow::Result<SetupBinary> {
        let (path, ours) = match path {
            Some(p) => (p.to_path_buf(), false),
            None => (std::env::current_exe()?, true),
        };
        // Bad input: exits as a bad flag does.
        let input = |e| crate::error::kinded(crate::error::Exit::Input, e);
        let bytes = std::fs::read(&path).map_err(|e| {
            input(anyhow::anyhow!(
                "cannot read the binary {}: {e}",
                path.display()
            ))
        })?;
        let needs = crate::elf::needs(&bytes).map_err(|e| {
            input(crate::hinted(
                format!("{} is {e}", path.display()),
                "--binary takes a drover executable built for Linux",
            ))
        })?;
        let build = if ours {
            crate::build_id()
        } else {
            crate::build_id_of(&bytes)
        };
        Ok(SetupBinary {
            path,
            bytes,
            build,
            needs,
        })
    }
}

/// Installs `binary` on `hosts` (unless the same build runs there, or with `force`) once the
/// host's machine and C library are known to run it, starts their agents (replacing one
/// under a new binary) and makes them trust the signing key `key` under `key_name`.
pub fn setup(
    hosts: &[String],
    settings: &SshSettings,
    parallel: usize,
    key: &str,
    key_name: &str,
    force: bool,
    binary: &SetupBinary,
) -> anyhow::Result<Vec<HostResult<SetupReport>>> {
    let ours = &binary.build;
    let conn = Connected::open(hosts, settings, parallel)?;
    let outcomes = par(&conn.sessions, parallel, |_, s| {
        (|| {
            let s = s.as_ref().map_err(Clone::clone)?;
            let before = crate::hello(s).ok();
            let same = before
                .as_ref()
                .is_some_and(|h| &h.build == ours && h.version == crate::VERSION);
            if !same || force {
                let out = s.run_raw(crate::platform::PROBE, b"")?;
                if !out.status.success() {
                    return Err(s.failed(&out));
                }
                let platform = crate::platform::parse_probe(&String::from_utf8_lossy(&out.stdout));
                crate::platform::check(
                    &s.name,
                    &platform,
                    &binary.path.display().to_string(),
                    &binary.needs,
                )
                .map_err(|m| HostError::new(m.message).with_hint(m.hint))?;
                let out = s.run_raw(&s.install_command(), &binary.bytes)?;
                if !out.status.success() {
                    return Err(s.failed(&out));
                }
            }
            s.run(&["trust", key_name], key.as_bytes())?;
            // A new binary under a running agent: the agent is replaced too (sockets handed
            // over, apps untouched).
            let replace = !same && before.as_ref().is_some_and(|h| h.agent);
            s.run(
                if replace {
                    &["start-agent", "--replace"][..]
                } else {
                    &["start-agent"][..]
                },
                b"",
            )?;
            let after = crate::hello(s)?;
            crate::check_build(&s.name, &after, ours)?;
            let out = s.run(&["host-key"], b"")?;
            Ok(SetupReport {
                installed: !same || force,
                previous: before.map(|h| format!("{} (build {})", h.version, h.build)),
                host_key: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            })
        })()
    });
    conn.close();
    Ok(hosts
        .iter()
        .zip(outcomes)
        .map(|(h, r)| HostResult::of(h, r))
        .collect())
}

/// The ssh settings and parallelism for hosts named on the command line: from the
/// drover.toml in `dir` when there is one.
pub fn settings_for(hosts: &[String], dir: &Path) -> anyhow::Result<(SshSettings, usize)> {
    let cfg = drover_config::Config::load_dir(dir)
        .map(|c| c.ssh)
        .unwrap_or_default();
    for h in hosts {
        drover_config::fleet::HostSpec::parse(h).map_err(anyhow::Error::msg)?;
    }
    Ok((SshSettings::from_config(&cfg, dir), cfg.parallel))
}
