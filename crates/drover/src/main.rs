//! The `drover` binary: parse, run, map the result to an exit code — in one place.

mod cli;
mod client;
mod commands;
mod fleet;
mod output;
mod settings;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::report_error(&err);
            ExitCode::from(output::exit_code(&err))
        }
    }
}
