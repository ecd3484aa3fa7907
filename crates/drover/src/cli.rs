//! The command line: global flags and one `XxxArgs` per command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use drover_fleet::Target;

use crate::output::hinted;

/// drover delivers apps to Linux servers as immutable, signed, content-addressed releases.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, long_about = None)]
pub struct Cli {
    /// Directory holding this host's drover state (store, keys).
    /// Default: /var/lib/drover as root, else $XDG_DATA_HOME/drover.
    #[arg(long, global = true, env = "DROVER_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented drover.toml into DIR (default: the current directory).
    Init(crate::commands::init::InitArgs),
    /// Build the app in DIR into a signed release in the local store.
    Build(crate::commands::build::BuildArgs),
    /// Make a release of an upstream build (a runtime's tarball or a directory), for
    /// releases to run with through `[depends]`.
    Import(crate::commands::import::ImportArgs),
    /// List stored releases.
    Releases(crate::commands::releases::ReleasesArgs),
    /// Re-hash every object (or one release's) and name any that is bad.
    Verify(crate::commands::verify::VerifyArgs),
    /// Write a release's files into a new directory.
    Checkout(crate::commands::checkout::CheckoutArgs),
    /// Export a release (manifest, signature, chunks) as one file.
    Pack(crate::commands::pack::PackArgs),
    /// Import a release from a file made by `drover pack`, verifying everything first.
    Unpack(crate::commands::pack::UnpackArgs),
    /// Remove releases, chunks and trees that nothing kept needs.
    Gc(crate::commands::gc::GcArgs),
    /// Show or manage signing keys (the local key and the trusted ones).
    Keys(crate::commands::keys::KeysArgs),
    /// Run the host agent in the foreground (it owns the apps' processes).
    Agent(crate::commands::agent::AgentArgs),
    /// Build DIR, start the local agent if needed, deploy, and print the URL.
    Up(crate::commands::up::UpArgs),
    /// Deploy an app directory or a stored release (with -e ENV: to the environment's hosts,
    /// over ssh); exits 0 only when it is live and healthy everywhere.
    Deploy(crate::commands::deploy::DeployArgs),
    /// Switch an app back to an earlier generation.
    Rollback(crate::commands::rollback::RollbackArgs),
    /// Show apps, their live generation and instances.
    Status(crate::commands::status::StatusArgs),
    /// Show an app's generations, newest first.
    History(crate::commands::history::HistoryArgs),
    /// Show an app's process output.
    Logs(crate::commands::logs::LogsArgs),
    /// Stop an app's processes (its generation stays; `drover start` brings it back).
    Stop(crate::commands::deploy::AppArg),
    /// Start a stopped app's live generation again.
    Start(crate::commands::deploy::AppArg),
    /// Move a canary to all traffic: it becomes the live generation.
    Promote(crate::commands::deploy::AppArg),
    /// End a canary: all traffic back on the stable generation, canary instances stopped.
    Abort(crate::commands::deploy::AppArg),
    /// Hold the app's incoming requests in its proxy (maintenance) until `drover resume`.
    Pause(crate::commands::deploy::AppArg),
    /// Release the requests held by `drover pause`.
    Resume(crate::commands::deploy::AppArg),
    /// Run a one-off command in the live generation's environment: `drover run APP -- CMD`.
    Run(crate::commands::run::RunArgs),
    /// Host-side config values (`set`, `unset`) and the merged config (`list`).
    Config(crate::commands::config::ConfigArgs),
    /// Age-encrypted secrets in the app directory (`set`, `list`, `edit`, `rm`, `rekey`).
    Secrets(crate::commands::secrets::SecretsArgs),
    /// This host's age key (`drover host key`); set up other hosts (`drover host setup`).
    Host(crate::commands::host::HostArgs),
    /// Show the files and config keys changed between two generations of an app.
    Diff(crate::commands::diff::DiffArgs),
    /// An environment's deploy lock on its hosts: `status`, or `release` a dead holder's.
    Lock(crate::commands::lock::LockArgs),
    /// What a fleet deploy runs on each host over ssh (machine formats, not for people).
    #[command(hide = true)]
    Remote(crate::commands::remote::RemoteArgs),
}

/// Shared by read commands.
#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

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
