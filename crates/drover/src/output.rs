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

pub use drover_fleet::bytes;
pub use drover_fleet::error::{Exit, Kinded, hint_of, hinted};

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

#[cfg(test)]
mod tests {
    use super::*;
    use drover_fleet::error::kinded;

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
