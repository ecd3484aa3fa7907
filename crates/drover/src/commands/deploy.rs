//! `drover deploy` (to this machine's agent, or with -e to an environment's hosts) and the
//! app operations `stop`, `start`, `promote`, `abort`, `pause`, `resume`.

use std::path::{Path, PathBuf};

use clap::Args;
use drover_wire::{AppStatus, Request};

use crate::cli::JsonFlag;
use crate::client;
use crate::output;
use crate::output::hinted;
use drover_fleet::Target;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// An app directory (built first) or a stored release (id, prefix, app@version, app).
    #[arg(default_value = ".")]
    pub target: String,
    /// The release's version when building (see `drover build --version`).
    #[arg(long = "version", value_name = "V")]
    pub version: Option<String>,
    /// Send only PERCENT% of clients (sticky, by cookie) to the new generation until
    /// `drover promote APP` or `drover abort APP`. Needs `[proxy]`.
    #[arg(long, value_name = "PERCENT")]
    pub canary: Option<u8>,
    /// Apply this environment's config layer (`[environments.NAME.env]`) and its secrets
    /// file (`drover.secrets.NAME.toml`). When it lists `hosts`, deploy to them over ssh:
    /// the release goes to every host, then batches switch by its `strategy`, and on any
    /// failure every switched host returns to its previous generation.
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    /// Also apply this role's layer (`[environments.ENV.roles.ROLE.env]`).
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// Fleet deploys: when a batch fails, leave the hosts already switched on the new
    /// release instead of returning them to their previous generation.
    #[arg(long)]
    pub keep_partial: bool,
    /// Fleet deploys: when another holder has the environment's lock, wait up to this long
    /// (`30s`, `5m`) for it to let go instead of failing at once.
    #[arg(long, value_name = "DURATION", value_parser = drover_config::Seconds::parse)]
    pub lock_wait: Option<drover_config::Seconds>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Args)]
pub struct AppArg {
    /// The app.
    pub app: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Builds `target` when it is an app directory; returns the release to deploy.
pub fn release_for(root: &Path, target: &str, version: Option<&str>) -> anyhow::Result<String> {
    let dir = PathBuf::from(target);
    if dir.join(drover_config::FILE_NAME).is_file() {
        let store = super::open_store(root)?;
        let built = super::build::build_app(&store, &dir, version)?;
        eprintln!(
            "built {}@{} ({}, {} newly stored)",
            built.app,
            built.version,
            built.release.short(),
            output::bytes(built.stored_bytes)
        );
        return Ok(built.release.to_hex());
    }
    if dir.is_dir() {
        return Err(output::hinted(
            format!("{} has no {}", dir.display(), drover_config::FILE_NAME),
            format!("create one with `drover init {}`", dir.display()),
        ));
    }
    let store = super::open_store(root)?;
    match store.resolve(target) {
        // Written as a path (a release name has no `/` and does not start with `.`).
        Err(drover_store::Error::NotFound(_))
            if target.contains('/') || target.starts_with('.') =>
        {
            Err(drover_fleet::error::kinded(
                drover_fleet::error::Exit::Input,
                output::hinted(
                    format!("{target}: no such directory, and no release of that name"),
                    "give an app directory (with a drover.toml) or a stored release (`drover releases` lists them)",
                ),
            ))
        }
        r => Ok(r?.to_hex()),
    }
}

/// The config layer and secrets a deploy of an app directory brings.
#[derive(Default)]
pub struct Layers {
    pub environment: Option<String>,
    pub env_layer: std::collections::BTreeMap<String, String>,
    pub role: Option<String>,
    pub role_layer: std::collections::BTreeMap<String, String>,
    pub secrets: Option<String>,
}

/// Reads the environment's layer from drover.toml and the (encrypted) secrets file.
pub fn layers_for(
    target: &str,
    environment: Option<&str>,
    role: Option<&str>,
) -> anyhow::Result<Layers> {
    let dir = PathBuf::from(target);
    if !dir.join(drover_config::FILE_NAME).is_file() {
        if let Some(e) = environment {
            return Err(output::hinted(
                format!("-e {e} needs an app directory, to read its [environments.{e}]"),
                "deploy the directory rather than a stored release",
            ));
        }
        return Ok(Layers::default());
    }
    let config = drover_config::Config::load_dir(&dir)?;
    let mut layers = Layers::default();
    if let Some(e) = environment {
        let env = drover_fleet::environment(&config, &dir, e)?;
        layers.environment = Some(e.to_string());
        layers.env_layer = env.env.clone();
        if let Some(r) = role {
            let role_cfg = env.roles.get(r).ok_or_else(|| {
                output::hinted(
                    format!("environment `{e}` has no role `{r}`"),
                    format!("add [environments.{e}.roles.{r}] to drover.toml"),
                )
            })?;
            layers.role = Some(r.to_string());
            layers.role_layer = role_cfg.env.clone();
        }
    } else if role.is_some() {
        return Err(output::hinted(
            "--role needs -e ENV",
            "roles belong to an environment",
        ));
    }
    let path = drover_config::secrets::SecretsFile::path(&dir, environment);
    if path.is_file() {
        // Checked here for a clear error; sent as it is, encrypted.
        drover_config::secrets::SecretsFile::load(&path)?;
        layers.secrets = Some(std::fs::read_to_string(&path)?);
    }
    Ok(layers)
}

pub fn deploy(
    root: &Path,
    release: String,
    canary: Option<u8>,
    layers: Layers,
) -> anyhow::Result<AppStatus> {
    let v: AppStatus = client::call(
        root,
        &Request::Deploy {
            release,
            who: client::who(),
            canary,
            environment: layers.environment,
            env_layer: layers.env_layer,
            role: layers.role,
            role_layer: layers.role_layer,
            secrets: layers.secrets,
            confirm_within: None,
            processes: None,
            skip_release_hook: false,
        },
        client::print_events,
    )?;
    Ok(v)
}

pub fn run_deploy(root: &Path, args: DeployArgs) -> anyhow::Result<()> {
    if let Some(e) = &args.environment
        && Path::new(&args.target)
            .join(drover_config::FILE_NAME)
            .is_file()
        && let Some(target) = drover_fleet::Target::load(Path::new(&args.target), e)?
    {
        return deploy_fleet(root, target, args);
    }
    if args.keep_partial {
        return Err(output::hinted(
            "--keep-partial is for fleet deploys",
            "use it with -e ENV, an environment that lists hosts",
        ));
    }
    let layers = layers_for(
        &args.target,
        args.environment.as_deref(),
        args.role.as_deref(),
    )?;
    let release = release_for(root, &args.target, args.version.as_deref())?;
    let status = deploy(root, release, args.canary, layers)?;
    show(&status, args.json.json)
}

/// The app-only requests: stop, start, promote, abort, pause, resume.
pub fn run_app_op(
    root: &Path,
    args: AppArg,
    op: fn(String, String) -> Request,
) -> anyhow::Result<()> {
    let v: AppStatus = client::call(root, &op(args.app, client::who()), client::print_events)?;
    show(&v, args.json.json)
}

/// The app, when the host runs exactly one.
pub fn only_app(root: &Path) -> anyhow::Result<String> {
    let apps = drover_agent::apps(root);
    match apps.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(output::hinted(
            "no apps on this host yet",
            "deploy one with `drover deploy DIR`",
        )),
        many => Err(output::hinted(
            format!("this host runs {} apps: {}", many.len(), many.join(", ")),
            "name the app",
        )),
    }
}

pub fn show(status: &AppStatus, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(status);
    }
    super::status::print_status(status);
    Ok(())
}

/// `deploy -e ENV` to an environment with hosts: build, then the rollout over ssh.
fn deploy_fleet(root: &Path, target: Target, args: DeployArgs) -> anyhow::Result<()> {
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
    let layers = layers_for(&args.target, Some(&target.name), None)?;
    // The ssh connections open while the release builds.
    let (conn, release) = std::thread::scope(|s| {
        let conn = s.spawn(|| target.connect());
        let release = release_for(root, &args.target, args.version.as_deref());
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
        keep_partial: args.keep_partial,
        lock_wait: args.lock_wait.map(|s| s.0),
        ..drover_fleet::DeployPlan::of(id, &manifest, layers.secrets)
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
