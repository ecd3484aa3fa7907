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
    /// Print a shell's completion script: `source <(drover completions bash)`.
    Completions(crate::commands::completions::CompletionsArgs),
    /// Write drover's man pages (drover.1 and one per command) into a directory, or print
    /// drover.1.
    Man(crate::commands::completions::ManArgs),
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

/// Examples for each command, shown under its `--help` and in its man page.
const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "init",
        &[
            "drover init myapp",
            "drover init          # in the current directory",
        ],
    ),
    (
        "build",
        &[
            "drover build myapp",
            "drover build . --version 1.4.2 --json",
        ],
    ),
    (
        "releases",
        &["drover releases", "drover releases web --json"],
    ),
    (
        "import",
        &[
            "drover import node-v24.11.0-linux-x64.tar.xz --name node --version 24.11.0",
            "drover import /opt/python3.12 --name python --version 3.12.8 --provides-env PYTHONHOME={tree}",
        ],
    ),
    (
        "verify",
        &[
            "drover verify",
            "drover verify web@1.4.2 --repair",
            "drover verify web@1.4.2 --repair web-1.4.2.drover   # objects from an archive first",
        ],
    ),
    (
        "checkout",
        &[
            "drover checkout web@1.4.2 /tmp/web   # a copy of its files",
            "drover checkout web@1.4.2            # its tree in the store",
        ],
    ),
    ("pack", &["drover pack web@1.4.2 -o web-1.4.2.drover"]),
    (
        "unpack",
        &[
            "drover unpack web-1.4.2.drover",
            "ssh build1 drover pack web -o - | drover unpack - --max-size 2G",
        ],
    ),
    ("gc", &["drover gc", "drover gc --keep 2"]),
    ("keys show", &["drover keys show"]),
    ("keys list", &["drover keys list --json"]),
    ("keys trust", &["drover keys trust ed25519:3f1c… --name ci"]),
    (
        "keys export",
        &["drover keys export > signing.key   # keep it secret"],
    ),
    ("keys import", &["drover keys import signing.key"]),
    (
        "agent",
        &[
            "drover agent",
            "drover agent --metrics 127.0.0.1:9464",
            "drover agent --replace   # after installing a new drover",
        ],
    ),
    ("up", &["drover up", "drover up examples/hello"]),
    (
        "deploy",
        &[
            "drover deploy                        # the app in the current directory",
            "drover deploy web@1.4.2 --canary 10",
            "drover deploy . -e prod --json       # to the environment's hosts",
            "drover deploy . -e prod --lock-wait 10m",
        ],
    ),
    (
        "rollback",
        &[
            "drover rollback web",
            "drover rollback web --to 12",
            "drover rollback -e prod",
        ],
    ),
    (
        "status",
        &[
            "drover status",
            "drover status web --json",
            "drover status -e prod",
        ],
    ),
    (
        "history",
        &["drover history web", "drover history -e prod --json"],
    ),
    (
        "logs",
        &["drover logs web -f", "drover logs web -n 200 -e prod"],
    ),
    ("stop", &["drover stop web"]),
    ("start", &["drover start web"]),
    (
        "promote",
        &["drover deploy --canary 10 && drover promote web"],
    ),
    ("abort", &["drover abort web"]),
    (
        "pause",
        &["drover pause web && ./migrate && drover resume web"],
    ),
    ("resume", &["drover resume web"]),
    (
        "run",
        &[
            "drover run web -- ./manage.py migrate",
            "drover run web -- env",
            "drover run web -e prod -t -- bin/console      # a terminal on the first host",
            "drover run web -e prod --all -- uptime         # every host, lines prefixed",
            "drover run web -e prod --role db -- ./manage.py dbshell",
        ],
    ),
    (
        "config set",
        &["drover config set web LOG_LEVEL=debug WORKERS=4"],
    ),
    ("config unset", &["drover config unset web LOG_LEVEL"]),
    ("config list", &["drover config list web --json"]),
    (
        "secrets set",
        &[
            "drover secrets set DATABASE_URL",
            "printf %s \"$TOKEN\" | drover secrets -e prod set API_TOKEN",
        ],
    ),
    (
        "secrets list",
        &["drover secrets list", "drover secrets -e prod list"],
    ),
    ("secrets edit", &["drover secrets edit DATABASE_URL"]),
    ("secrets rm", &["drover secrets rm OLD_TOKEN"]),
    (
        "secrets rekey",
        &["drover secrets rekey --recipient age1…   # after `drover host setup` printed it"],
    ),
    ("host key", &["drover host key"]),
    (
        "host unit",
        &["drover host unit > /etc/systemd/system/drover-agent.service"],
    ),
    (
        "host setup",
        &[
            "drover host setup web1 web2 deploy@db1:2222",
            "drover host setup -e prod --force",
            "drover host setup arm1 --binary target/aarch64-unknown-linux-gnu/release/drover",
        ],
    ),
    (
        "diff",
        &["drover diff web 11 12", "drover diff 11 12 --json"],
    ),
    ("lock status", &["drover lock status -e prod"]),
    (
        "lock acquire",
        &["drover lock acquire -e prod -m \"release freeze until Monday\""],
    ),
    (
        "lock release",
        &["drover lock release -e prod   # its holder died"],
    ),
    (
        "completions",
        &[
            "source <(drover completions bash)",
            "drover completions zsh > \"${fpath[1]}/_drover\"",
            "drover completions fish > ~/.config/fish/completions/drover.fish",
        ],
    ),
    (
        "man",
        &[
            "drover man | man -l -",
            "drover man --dir /usr/local/share/man/man1",
        ],
    ),
];

/// The command line with each command's examples: what parses, completes and documents.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    fn with(cmd: clap::Command, path: &[&str], lines: &[&str]) -> clap::Command {
        match path.split_first() {
            None => cmd.after_help(format!("Examples:\n  {}", lines.join("\n  "))),
            Some((first, rest)) => cmd.mut_subcommand(*first, |c| with(c, rest, lines)),
        }
    }
    EXAMPLES.iter().fold(Cli::command(), |cmd, (path, lines)| {
        with(cmd, &path.split(' ').collect::<Vec<_>>(), lines)
    })
}

/// Parses the process's arguments (exiting with clap's message and code 2 when they are bad).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let mut matches = command().get_matches();
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    /// Every command's arguments and subcommands, with the command's path.
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.to_string(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_is_described_and_every_command_has_an_example() {
        let mut all = Vec::new();
        walk(&super::command(), "drover", &mut all);
        let mut missing = Vec::new();
        for (path, cmd) in &all {
            if cmd.get_about().is_none() && path != "drover" {
                missing.push(format!("{path}: no description"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" || arg.is_hide_set() {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: argument `{id}` has no description"));
                }
            }
            let leaf = cmd.get_subcommands().next().is_none();
            let example = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Example"));
            if leaf && !example {
                missing.push(format!("{path}: no example"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
