//! `zdtm`: see the `zdtm_runner` library and docs/test-protocol.md.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use zdtm_runner::cli::{Cli, Cmd};
use zdtm_runner::error::EXIT_SETUP;
use zdtm_runner::{events, session};

fn main() -> ExitCode {
    let command = Cli::command();
    let matches = command.clone().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // What a failed run's replay command repeats of this command line.
    if let (Cmd::Run(args), Some(("run", sub)), Some(run)) = (
        &mut cli.command,
        matches.subcommand(),
        command.find_subcommand("run"),
    ) {
        args.replay_switches = Some(events::replay_switches(run, sub));
    }
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
