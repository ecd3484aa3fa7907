//! One module per command: `XxxArgs` + `run`.

pub mod agent;
pub mod build;
pub mod checkout;
pub mod completions;
pub mod config;
pub mod deploy;
pub mod diff;
pub mod gc;
pub mod history;
pub mod host;
pub mod import;
pub mod init;
pub mod keys;
pub mod lock;
pub mod logs;
pub mod pack;
pub mod releases;
pub mod remote;
pub mod rollback;
pub mod run;
pub mod secrets;
pub mod status;
pub mod up;
pub mod verify;

use crate::cli::{Cli, Command};
use crate::settings::{check_root, resolve_root};
use drover_wire::Request;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let root = resolve_root(cli.root);
    if uses_root(&cli.command) {
        check_root(&root)?;
    }
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Build(a) => build::run(&root, a),
        Command::Import(a) => import::run(&root, a),
        Command::Releases(a) => releases::run(&root, a),
        Command::Verify(a) => verify::run(&root, a),
        Command::Checkout(a) => checkout::run(&root, a),
        Command::Pack(a) => pack::run_pack(&root, a),
        Command::Unpack(a) => pack::run_unpack(&root, a),
        Command::Gc(a) => gc::run(&root, a),
        Command::Keys(a) => keys::run(&root, a),
        Command::Agent(a) => agent::run(&root, a),
        Command::Up(a) => up::run(&root, a),
        Command::Deploy(a) => deploy::run_deploy(&root, a),
        Command::Rollback(a) => rollback::run_rollback(&root, a),
        Command::Status(a) => status::run_status(&root, a),
        Command::History(a) => history::run_history(&root, a),
        Command::Logs(a) => logs::run(&root, a),
        Command::Stop(a) => deploy::run_app_op(&root, a, |app, who| Request::Stop { app, who }),
        Command::Start(a) => deploy::run_app_op(&root, a, |app, who| Request::Start { app, who }),
        Command::Promote(a) => {
            deploy::run_app_op(&root, a, |app, who| Request::Promote { app, who })
        }
        Command::Abort(a) => deploy::run_app_op(&root, a, |app, who| Request::Abort { app, who }),
        Command::Pause(a) => deploy::run_app_op(&root, a, |app, _| Request::Pause { app }),
        Command::Resume(a) => deploy::run_app_op(&root, a, |app, _| Request::Resume { app }),
        Command::Run(a) => run::run(&root, a),
        Command::Diff(a) => diff::run(&root, a),
        Command::Config(a) => config::run(&root, a),
        Command::Secrets(a) => secrets::run(&root, a),
        Command::Host(a) => host::run(&root, a),
        Command::Remote(a) => remote::run(&root, a),
        Command::Lock(a) => lock::run(a),
        Command::Completions(a) => completions::run_completions(a),
        Command::Man(a) => completions::run_man(a),
    }
}

/// Every command but these reads or writes the root (and must be refused one that is
/// unsafe before it touches anything).
fn uses_root(command: &Command) -> bool {
    !matches!(
        command,
        Command::Init(_)
            | Command::Lock(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Remote(remote::RemoteArgs {
                command: remote::RemoteCommand::Relay { .. },
            })
    )
}

/// Opens the store of a root, naming the root on failure.
pub fn open_store(root: &std::path::Path) -> anyhow::Result<drover_store::Store> {
    use anyhow::Context;
    drover_store::Store::open(root)
        .with_context(|| format!("cannot open the drover store under {}", root.display()))
}

/// A dependency as the CLI shows it: `node@24.1.0 (ab12cd34ef56)`, or its id and
/// `(missing)` when the store lacks it.
pub fn describe_release(store: &drover_store::Store, id: &drover_store::Hash) -> String {
    match store.meta(id) {
        Ok(m) => format!("{}@{} ({})", m.app, m.version, id.short()),
        Err(_) => format!("{} (missing)", id.short()),
    }
}

/// `node=node@24.1.0 (ab12cd34ef56)`, one per dependency, or `-`.
pub fn depends_line(
    store: &drover_store::Store,
    depends: &std::collections::BTreeMap<String, drover_store::Hash>,
) -> String {
    if depends.is_empty() {
        return "-".into();
    }
    depends
        .iter()
        .map(|(name, id)| format!("{name}={}", describe_release(store, id)))
        .collect::<Vec<_>>()
        .join(", ")
}
