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
        } else {
            cause.downcast_ref::<Hinted>().map(|h| h.hint.clone())
        }
    })
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<ExitWith>() {
        Some(ExitWith(code)) => *code,
        None => 1,
    }
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
