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
    let cli = cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::report_error(&err);
            ExitCode::from(output::exit_code(&err))
        }
    }
}
