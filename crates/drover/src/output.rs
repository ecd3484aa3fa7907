//! How results and errors reach the user: data on stdout, messages on stderr,
//! `error:` and `hint:` lines, and the one mapping from errors to exit codes.

use std::io::IsTerminal;

/// An error that has already explained itself (e.g. `verify` listed every bad object).
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

/// A hint attached at the binary edge.
#[derive(Debug)]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted {
        message: message.into(),
        hint: hint.into(),
    }
    .into()
}

fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// `text` in bold red when stderr is a terminal and NO_COLOR is unset.
pub fn red(text: &str) -> String {
    if color() {
        format!("\x1b[1;31m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// An error answered by the agent, with its hint and detail lines.
#[derive(Debug)]
pub struct AgentError(pub drover_wire::WireError);

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for AgentError {}

/// Exit with this code, having said nothing more (e.g. `drover run`'s command failed).
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for ExitWith {}

pub fn report_error(err: &anyhow::Error) {
    if err.downcast_ref::<ExitWith>().is_some() {
        return;
    }
    eprintln!("{} {err:#}", red("error:"));
    if let Some(AgentError(e)) = err.downcast_ref::<AgentError>() {
        for d in &e.details {
            eprintln!("{d}");
        }
        if let Some(h) = &e.hint {
            eprintln!("hint: {h}");
        }
        return;
    }
    if let Some(h) = hint_of(err) {
        eprintln!("hint: {h}");
    }
}

/// The first hint along an error's chain of causes.
pub fn hint_of(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<drover_store::Error>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<drover_config::secrets::SecretsError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<drover_config::ConfigError>() {
            e.hint()
        } else if let Some(k) = cause.downcast_ref::<Kinded>() {
            k.hint.clone()
        } else {
            cause.downcast_ref::<Hinted>().map(|h| h.hint.clone())
        }
    })
}

/// What kind of failure an error is: its exit code (listed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything else that failed.
    Failed = 1,
    /// Bad usage or input: flags, `drover.toml`, an archive or manifest, a release name.
    Input = 2,
    /// A deploy failed and every host is back on (or never left) its previous generation.
    RolledBack = 3,
    /// A deploy failed and left hosts on the new release (`--keep-partial`) or in a state
    /// drover could not learn (a host lost, a revert that failed).
    Partial = 4,
    /// Another holder has the environment's lock.
    Locked = 5,
}

/// An error of a kind other than a plain failure: its message (with its causes) and hint
/// as they were, and its exit code.
#[derive(Debug)]
pub struct Kinded {
    pub exit: Exit,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for Kinded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Kinded {}

/// `err`, exiting with `exit`'s code.
pub fn kinded(exit: Exit, err: anyhow::Error) -> anyhow::Error {
    Kinded {
        exit,
        message: format!("{err:#}"),
        hint: hint_of(&err),
    }
    .into()
}

/// The one mapping from errors to exit codes.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(ExitWith(code)) = err.downcast_ref::<ExitWith>() {
        return *code;
    }
    let kind = err.chain().find_map(|cause| {
        if let Some(k) = cause.downcast_ref::<Kinded>() {
            Some(k.exit)
        } else if cause.is::<drover_config::ConfigError>() || cause.is::<clap::Error>() {
            Some(Exit::Input)
        } else {
            match cause.downcast_ref::<drover_store::Error>() {
                Some(
                    drover_store::Error::Invalid { .. }
                    | drover_store::Error::TooLarge { .. }
                    | drover_store::Error::NotFound(_)
                    | drover_store::Error::Ambiguous { .. },
                ) => Some(Exit::Input),
                _ => None,
            }
        }
    });
    kind.unwrap_or(Exit::Failed) as u8
}

/// Writes data on stdout (what `println!` and `print!` do in this crate). A reader that has
/// gone (EPIPE: `drover releases | head -0`) ends drover quietly with success, as it would
/// a pipeline's writer; any other failure to write is an error and exit 1. Never a panic.
pub fn data(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        message(format_args!(
            "{} cannot write to stdout: {e}\n",
            red("error:")
        ));
        std::process::exit(1);
    }
}

/// Writes a message on stderr (what `eprintln!` does in this crate); one that cannot be
/// written is dropped.
pub fn message(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Prints one JSON value on stdout.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Human-readable byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_by_kind() {
        let plain = anyhow::anyhow!("it failed");
        assert_eq!(exit_code(&plain), 1);
        let config = drover_config::Config::parse("[app\n", std::path::Path::new("drover.toml"))
            .unwrap_err();
        assert_eq!(exit_code(&anyhow::Error::from(config).context("deploy")), 2);
        let unknown = drover_store::Error::NotFound("nope".into());
        assert_eq!(exit_code(&unknown.into()), 2);
        let back = kinded(
            Exit::RolledBack,
            hinted("batch 1 of 2 failed", "look at h2"),
        );
        assert_eq!(exit_code(&back), 3);
        // The kind keeps the message and the hint.
        assert_eq!(back.to_string(), "batch 1 of 2 failed");
        assert_eq!(hint_of(&back).as_deref(), Some("look at h2"));
        assert_eq!(exit_code(&kinded(Exit::Partial, plain)), 4);
        let locked = kinded(Exit::Locked, anyhow::anyhow!("locked")).context("deploy of x");
        assert_eq!(exit_code(&locked), 5);
        assert_eq!(exit_code(&ExitWith(7).into()), 7);
    }
}
