//! The `drover` binary: parse, run, map the result to an exit code — in one place.

// Data reaches stdout, and messages stderr, through these, in every module (they shadow
// std's): where std's panic when the reader has gone (`drover releases | head -0`), drover
// ends quietly (stdout) or drops the message (stderr).
macro_rules! println {
    () => {
        $crate::output::data(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::data(format_args!("{}\n", format_args!($($arg)*)))
    };
}
macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::output::message(format_args!("{}\n", format_args!($($arg)*)))
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::data(format_args!($($arg)*))
    };
}

mod cli;
mod client;
mod commands;
mod output;
mod progress;
mod service;
mod settings;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A log writer the agent started (`drover_agent::logs`), before any parsing.
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(drover_agent::logs::WRITER_ARG.as_ref()) {
        let Some(log) = args.next() else {
            return ExitCode::from(2);
        };
        return match drover_agent::logs::write_stamped(log.as_ref(), std::io::stdin().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let cli = cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::report_error(&err);
            ExitCode::from(output::exit_code(&err))
        }
    }
}
