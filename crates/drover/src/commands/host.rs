//! `drover host`: this host's age key, and `host setup`: install drover on hosts over ssh,
//! start their agents, and make them trust this machine's signing key.

use std::path::Path;

use clap::{Args, Subcommand};

use crate::cli::{EnvArgs, JsonFlag};
use crate::client;
use crate::output::{self, hinted};

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Print this host's age public key: secrets must be encrypted to it to run here.
    Key,
    /// Install this drover on hosts over ssh, start their agents, and make them trust this
    /// machine's release-signing key. Reports hosts that ran another drover version.
    Setup(SetupArgs),
    /// Print the systemd unit that runs this root's agent (`host setup` installs it on
    /// hosts where systemd runs).
    Unit {
        /// The drover binary the unit runs (default: this one).
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
}

pub fn run(root: &Path, args: HostArgs) -> anyhow::Result<()> {
    match args.command {
        HostCommand::Key => println!("{}", super::secrets::host(root)?.public()),
        HostCommand::Setup(a) => return setup(root, a),
        HostCommand::Unit { binary } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()?,
            };
            print!("{}", crate::service::unit(root, &binary));
        }
    }
    Ok(())
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
    /// The drover binary to install (default: this one), e.g. a build for the hosts'
    /// architecture. Checked against each host's machine and C library before it is copied.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
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
            let (settings, parallel) = drover_fleet::ops::settings_for(&args.hosts, &args.env.dir)?;
            (args.hosts.clone(), settings, parallel)
        }
    };
    let binary = drover_fleet::ops::SetupBinary::load(args.binary.as_deref())?;
    let store = super::open_store(root)?;
    let key = store.keys().public_key()?.to_string();
    let key_name = format!(
        "deployer-{}",
        client::who()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>()
    );
    let results = drover_fleet::ops::setup(
        &hosts, &settings, parallel, &key, &key_name, args.force, &binary,
    )?;
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
    if binary.build != drover_fleet::build_id() && results.iter().any(|r| r.result.is_some()) {
        eprintln!(
            "note: the hosts run {} (build {}), not this drover (build {}): a deploy refuses \
             hosts that run another build than its own",
            binary.path.display(),
            binary.build,
            drover_fleet::build_id()
        );
    }
    drover_fleet::ops::failed(&results)
}
