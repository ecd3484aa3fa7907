//! The command line: global flags and one `XxxArgs` per command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Rollback(crate::commands::deploy::RollbackArgs),
    /// Show apps, their live generation and instances.
    Status(crate::commands::status::StatusArgs),
    /// Show an app's generations, newest first.
    History(crate::commands::status::HistoryArgs),
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
    Host(crate::commands::secrets::HostArgs),
    /// Show the files and config keys changed between two generations of an app.
    Diff(crate::commands::diff::DiffArgs),
    /// An environment's deploy lock on its hosts: `status`, or `release` a dead holder's.
    Lock(crate::commands::fleet::LockArgs),
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
