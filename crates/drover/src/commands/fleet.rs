//! The fleet side of the commands: `deploy -e`, `rollback -e`, `status -e`, `history -e`,
//! `logs -e`, `lock`, and `host setup`, over ssh (see `drover_fleet`): their arguments and
//! what they print.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use drover_wire::{AppStatus, AuditEntry, Request};
use serde::Serialize;

use crate::cli::JsonFlag;
use crate::client;
use crate::output::{self, hinted};
use drover_fleet::{Connected, HostError, Locks, Target, agent_call, par};

/// `-e ENV` (an environment with hosts, from the app directory's drover.toml) and `--dir`.
#[derive(Debug, Args, Clone)]
pub struct EnvArgs {
    /// Act on this environment's hosts (`[environments.ENV] hosts`) over ssh.
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    /// The app directory whose drover.toml names the environment.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

impl EnvArgs {
    /// The fleet target, when `-e` names an environment with hosts.
    pub fn target(&self) -> anyhow::Result<Option<Target>> {
        match &self.environment {
            None => Ok(None),
            Some(e) => {
                if !self.dir.join(drover_config::FILE_NAME).is_file() {
                    return Err(hinted(
                        format!(
                            "-e {e}: {} has no {}",
                            self.dir.display(),
                            drover_config::FILE_NAME
                        ),
                        "run it in the app directory, or pass --dir DIR",
                    ));
                }
                Target::load(&self.dir, e)
            }
        }
    }

    pub fn require(&self) -> anyhow::Result<Target> {
        let Some(e) = &self.environment else {
            return Err(hinted(
                "this needs -e ENV",
                "name an environment with hosts",
            ));
        };
        match self.target()? {
            Some(t) => Ok(t),
            None => Target::require(&self.dir, e),
        }
    }
}

pub fn deploy(root: &Path, target: Target, args: super::deploy::DeployArgs) -> anyhow::Result<()> {
    if args.canary.is_some() {
        return Err(hinted(
            "--canary splits one host's traffic; a fleet deploy does not take it",
            format!(
                "for a fleet canary set `strategy = {{ kind = \"canary\", hosts = 1 }}` in [environments.{}]",
                target.name
            ),
        ));
    }
    if args.role.is_some() {
        return Err(hinted(
            "--role is for deploys to this machine",
            format!(
                "a fleet's roles come from [environments.{}.roles.ROLE] hosts",
                target.name
            ),
        ));
    }
    let started = std::time::Instant::now();
    let layers = super::deploy::layers_for(&args.target, Some(&target.name), None)?;
    // The ssh connections open while the release builds.
    let (conn, release) = std::thread::scope(|s| {
        let conn = s.spawn(|| {
            let conn = Connected::open(
                &target.env.hosts,
                &target.settings,
                target.config.ssh.parallel,
            )?;
            conn.start_serving();
            anyhow::Ok(conn)
        });
        let release = super::deploy::release_for(root, &args.target, args.version.as_deref());
        (
            conn.join().expect("the connecting thread does not panic"),
            release,
        )
    });
    let conn = conn?;
    let built = (|| {
        let release = release?;
        let store = super::open_store(root)?;
        let id: drover_store::Hash = release.parse().map_err(anyhow::Error::msg)?;
        let manifest = store.manifest(&id)?;
        anyhow::Ok((store, id, manifest))
    })();
    let (store, id, manifest) = match built {
        Ok(b) => b,
        Err(e) => {
            conn.close();
            return Err(e);
        }
    };
    let plan = drover_fleet::DeployPlan {
        release: id,
        app: manifest.app.clone(),
        version: manifest.version.clone(),
        secrets: layers.secrets,
        keep_partial: args.keep_partial,
    };
    let json = args.json.json;
    let progress = crate::progress::Progress::new(&target.env.hosts, json);
    if !json {
        eprintln!(
            "deploying {}@{} ({}) to {} hosts of `{}` ({})",
            plan.app,
            plan.version,
            plan.release.short(),
            target.env.hosts.len(),
            target.name,
            target.env.strategy
        );
    }
    let done = drover_fleet::deploy(&store, &target, &plan, conn, &progress, started)?;
    if done.failure.is_some() && plan.keep_partial {
        eprintln!(
            "{} --keep-partial: the hosts already switched STAY on the new release; the fleet runs mixed versions",
            output::red("warning:")
        );
    }
    if json {
        output::json(&done.report)?;
    } else {
        print_summary(&done.report);
    }
    if !done.stuck.is_empty() {
        eprintln!(
            "{} the lock of `{}` is still held on {} (unreachable); `drover lock release -e {}` once it is back",
            output::red("warning:"),
            target.name,
            done.stuck.join(", "),
            target.name
        );
    }
    match done.failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

fn print_summary(r: &drover_fleet::DeployReport) {
    let width = r.hosts.iter().map(|h| h.host.len()).max().unwrap_or(4);
    println!();
    for h in &r.hosts {
        let what = match h.state.as_str() {
            "live" => format!(
                "live on {}@{} (generation {})",
                r.app,
                r.version,
                h.generation.map_or("?".into(), |g| g.to_string())
            ),
            "reverted" => format!(
                "reverted to generation {}",
                h.previous
                    .map_or("none (stopped)".into(), |g| g.to_string())
            ),
            "kept" => format!(
                "LEFT on {}@{} (generation {}): --keep-partial",
                r.app,
                r.version,
                h.generation.map_or("?".into(), |g| g.to_string())
            ),
            "unchanged" => "unchanged (still on its previous generation)".into(),
            other => other.to_string(),
        };
        let err = h
            .error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!("  {:width$}  {what}{err}", h.host);
    }
    if r.ok {
        println!(
            "{}@{} is live on all {} hosts of `{}`",
            r.app,
            r.version,
            r.hosts.len(),
            r.environment
        );
    }
}

#[derive(Serialize)]
struct HostResult<T> {
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn split<T>(host: &str, r: Result<T, HostError>) -> HostResult<T> {
    match r {
        Ok(v) => HostResult {
            host: host.to_string(),
            result: Some(v),
            error: None,
        },
        Err(e) => HostResult {
            host: host.to_string(),
            result: None,
            error: Some(e.message),
        },
    }
}

pub fn rollback(
    target: Target,
    app: Option<String>,
    to: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let app = match app {
        Some(a) => a,
        None => target.config.app.name.clone(),
    };
    let conn = Connected::open(
        &target.env.hosts,
        &target.settings,
        target.config.ssh.parallel,
    )?;
    conn.start_serving();
    let sessions = conn.all()?;
    let mut locks = Locks::acquire(&target.name, &sessions, &format!("rollback of {app}"))?;
    let results = par(&sessions, target.config.ssh.parallel, |_, s| {
        let before = drover_fleet::current_generation(*s, &app).ok().flatten();
        let r = drover_fleet::agent_call::<AppStatus>(
            *s,
            &Request::Rollback {
                app: app.clone(),
                to,
                who: client::who(),
            },
            None,
            |_| {},
        );
        let entry = AuditEntry::new(
            drover_agent::now(),
            &client::who(),
            Some(&target.name),
            &app,
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
        (r, (s.name.clone(), entry))
    });
    let (results, audit): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    locks.finish(&audit);
    let report: Vec<HostResult<AppStatus>> = sessions
        .iter()
        .zip(results)
        .map(|(s, r)| split(&s.name, r))
        .collect();
    conn.close();
    let failed = report.iter().filter(|r| r.error.is_some()).count();
    if json {
        output::json(&report)?;
    } else {
        for r in &report {
            match (&r.result, &r.error) {
                (Some(st), _) => println!(
                    "  {}  back on generation {} ({})",
                    r.host,
                    st.generation.map_or("-".into(), |g| g.to_string()),
                    st.version.as_deref().unwrap_or("-")
                ),
                (_, Some(e)) => println!("  {}  FAILED: {e}", r.host),
                _ => {}
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("rollback failed on {failed} of {} hosts", report.len());
    }
    Ok(())
}

pub fn status(target: Target, app: Option<String>, json: bool) -> anyhow::Result<()> {
    let results: Vec<HostResult<Vec<AppStatus>>> = target
        .each(None, |s| {
            drover_fleet::agent_call(s, &Request::Status { app: app.clone() }, None, |_| {})
        })?
        .into_iter()
        .map(|(h, r)| split(&h, r))
        .collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    if json {
        output::json(&results)?;
    } else {
        for r in &results {
            println!("== {}", r.host);
            if let Some(e) = &r.error {
                println!("  {}: {e}", output::red("unreachable"));
            }
            for a in r.result.iter().flatten() {
                super::status::print_status(a);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} hosts did not answer", results.len());
    }
    Ok(())
}

pub fn history(target: Target, app: Option<String>, json: bool) -> anyhow::Result<()> {
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
    merged.retain(|(_, e)| app.as_ref().is_none_or(|a| &e.app == a));
    merged.sort_by(|(i, a), (j, b)| (b.at, &b.host, j).cmp(&(a.at, &a.host, i)));
    let merged: Vec<AuditEntry> = merged.into_iter().map(|(_, e)| e).collect();
    if json {
        output::json(&merged)?;
    } else {
        for e in &merged {
            println!(
                "{}  {}  {} {} {}  {} -> {}  {}  by {}{}",
                fmt_utc(e.at),
                e.host.as_deref().unwrap_or("-"),
                e.action,
                e.app,
                e.version.as_deref().unwrap_or("-"),
                e.from.map_or("-".into(), |g| g.to_string()),
                e.to.map_or("-".into(), |g| g.to_string()),
                e.outcome,
                e.who,
                e.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
    }
    if !errors.is_empty() {
        let refs: Vec<&HostError> = errors.iter().collect();
        return Err(
            drover_fleet::host_errors(&refs).context("some hosts' audit logs are missing above")
        );
    }
    Ok(())
}

/// `2026-11-22 10:04:05Z`.
pub fn fmt_utc(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn logs(target: Target, app: String, lines: usize, follow: bool) -> anyhow::Result<()> {
    let width = target.env.hosts.iter().map(String::len).max().unwrap_or(0);
    let stdout = std::sync::Mutex::new(std::io::stdout());
    // Every host at once: with --follow, none of them ends.
    let results = target.each(Some(target.env.hosts.len()), |s| {
        agent_call::<serde::de::IgnoredAny>(
            s,
            &Request::Logs {
                app: app.clone(),
                lines,
                follow,
            },
            None,
            |line| {
                let mut out = stdout.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(out, "{:width$} | {line}", s.name);
            },
        )
        .map(|_| ())
    })?;
    all_ok(results)
}

/// Ok when every host's part went well; else one error naming each host that failed.
fn all_ok(results: Vec<(String, Result<(), HostError>)>) -> anyhow::Result<()> {
    let errors: Vec<HostError> = results.into_iter().filter_map(|(_, r)| r.err()).collect();
    if errors.is_empty() {
        return Ok(());
    }
    let refs: Vec<&HostError> = errors.iter().collect();
    Err(drover_fleet::host_errors(&refs))
}

#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(subcommand)]
    pub command: LockCommand,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the environment's lock on each host, and since when.
    Status {
        #[command(flatten)]
        env: EnvArgs,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Break the environment's lock on every host (when its holder died).
    Release {
        #[command(flatten)]
        env: EnvArgs,
    },
}

pub fn run_lock(args: LockArgs) -> anyhow::Result<()> {
    match args.command {
        LockCommand::Status { env, json } => {
            let target = env.require()?;
            let results: Vec<HostResult<Option<drover_wire::LockHolder>>> = target
                .each(None, |s| {
                    let o = s.run(&["lock", "show", &target.name], b"")?;
                    serde_json::from_slice(&o.stdout)
                        .map_err(|e| HostError::new(format!("{}: {e}", s.name)))
                })?
                .into_iter()
                .map(|(h, r)| split(&h, r))
                .collect();
            if json.json {
                return output::json(&results);
            }
            for r in &results {
                match (&r.result, &r.error) {
                    (Some(Some(h)), _) => println!(
                        "  {}  locked by {} since {} ({})",
                        r.host,
                        h.holder,
                        fmt_utc(h.since),
                        drover_fleet::fmt_time(h.since)
                    ),
                    (Some(None), _) => println!("  {}  free", r.host),
                    (_, Some(e)) => println!("  {}  unknown: {e}", r.host),
                    _ => {}
                }
            }
            Ok(())
        }
        LockCommand::Release { env } => {
            let target = env.require()?;
            let results = target.each(None, |s| {
                s.run(&["lock", "release", &target.name, "--force"], b"")
                    .map(|_| ())
            })?;
            all_ok(results)?;
            eprintln!("released the lock of `{}` on every host", target.name);
            Ok(())
        }
    }
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Hosts (`[user@]host[:port]`); or every host of `-e ENV`.
    pub hosts: Vec<String>,
    #[command(flatten)]
    pub env: EnvArgs,
    /// Reinstall drover even where the same build runs.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Serialize)]
struct SetupReport {
    installed: bool,
    previous: Option<String>,
    host_key: String,
}

/// Installs this drover on hosts, starts their agents and makes them trust this machine's
/// signing key. Prints each host's age key (for `drover secrets --recipient`).
pub fn setup(root: &Path, args: SetupArgs) -> anyhow::Result<()> {
    let (hosts, settings, parallel) = match args.env.target()? {
        Some(t) if args.hosts.is_empty() => (
            t.env.hosts.clone(),
            t.settings.clone(),
            t.config.ssh.parallel,
        ),
        _ if args.hosts.is_empty() => {
            return Err(hinted(
                "name the hosts to set up",
                "`drover host setup web1 web2`, or `-e ENV` in an app directory",
            ));
        }
        _ => {
            // Hosts on the command line; ssh settings from drover.toml when there is one.
            let cfg = drover_config::Config::load_dir(&args.env.dir)
                .map(|c| c.ssh)
                .unwrap_or_default();
            for h in &args.hosts {
                drover_config::fleet::HostSpec::parse(h).map_err(anyhow::Error::msg)?;
            }
            (
                args.hosts.clone(),
                drover_fleet::SshSettings::from_config(&cfg, &args.env.dir),
                cfg.parallel,
            )
        }
    };
    let store = super::open_store(root)?;
    let key = store.keys().public_key()?.to_string();
    let key_name = format!(
        "deployer-{}",
        client::who()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    );
    let exe = std::fs::read(std::env::current_exe()?)?;
    let ours = drover_fleet::build_id();
    let conn = Connected::open(&hosts, &settings, parallel)?;
    let outcomes: Vec<Result<SetupReport, HostError>> = par(&conn.sessions, parallel, |_, s| {
        (|| {
            let s = s.as_ref().map_err(Clone::clone)?;
            let before = drover_fleet::hello(s).ok();
            let same = before
                .as_ref()
                .is_some_and(|h| h.build == ours && h.version == drover_fleet::VERSION);
            if !same || args.force {
                let out = s.run_raw(&s.install_command(), &exe)?;
                if !out.status.success() {
                    return Err(s.failed(&out));
                }
            }
            s.run(&["trust", &key_name], key.as_bytes())?;
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
            let after = drover_fleet::hello(s)?;
            drover_fleet::check_version(&s.name, &after)?;
            let out = s.run(&["host-key"], b"")?;
            Ok(SetupReport {
                installed: !same || args.force,
                previous: before.map(|h| format!("{} (build {})", h.version, h.build)),
                host_key: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            })
        })()
    });
    conn.close();
    let errors: Vec<HostError> = outcomes
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    let results: Vec<HostResult<SetupReport>> = conn_hosts(&hosts)
        .zip(outcomes)
        .map(|(h, r)| split(h, r))
        .collect();
    if args.json.json {
        output::json(&results)?;
    } else {
        for r in &results {
            match (&r.result, &r.error) {
                (Some(rep), _) => {
                    let what = match (&rep.previous, rep.installed) {
                        (_, false) => "already up to date".to_string(),
                        (None, true) => "installed drover".to_string(),
                        (Some(p), true) => format!("replaced drover {p}"),
                    };
                    println!(
                        "  {}  {what}; agent running; host key {}",
                        r.host, rep.host_key
                    );
                }
                (_, Some(e)) => println!("  {}  FAILED: {e}", r.host),
                _ => {}
            }
        }
    }
    if !errors.is_empty() {
        let refs: Vec<&HostError> = errors.iter().collect();
        return Err(drover_fleet::host_errors(&refs));
    }
    Ok(())
}

fn conn_hosts(hosts: &[String]) -> impl Iterator<Item = &str> {
    hosts.iter().map(String::as_str)
}
