//! `chaos`: the command-line front end of the chaos toolkit.
//!
//! Subcommands live in [`commands`]; this file only sets up logging, runs the chosen command and turns
//! an error into one line on stderr and an exit code.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = commands::Cli::parse();
    commands::init_logging(args.verbose);
    match commands::run(args.command).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}
