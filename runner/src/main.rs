//! `zdtm`: see the `zdtm_runner` library and docs/test-protocol.md.

use std::process::ExitCode;

use clap::Parser;

use zdtm_runner::cli::{Cli, Cmd};
use zdtm_runner::error::EXIT_SETUP;
use zdtm_runner::session;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::List(args) => session::list(args),
        Cmd::Run(args) => session::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("zdtm: error: {e}");
            ExitCode::from(EXIT_SETUP)
        }
    }
}
