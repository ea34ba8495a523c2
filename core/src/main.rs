//! `chaos`: the command-line front end of the chaos toolkit.
//!
//! Subcommands live in [`cli`]; this file only sets up logging, runs the chosen command and turns
//! an error into one line on stderr and an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    match cli::run(args.command).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
