//! `auditgate`: the one binary users run. Each subcommand parses its arguments here and
//! hands over to the crate that owns the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod rules_cmd;

/// Audit trails for HTTP APIs, captured without touching the API's code.
#[derive(Debug, Parser)]
#[command(name = "auditgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check rule files and try them against a request.
    Rules {
        #[command(subcommand)]
        command: rules_cmd::RulesCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Rules { command } => rules_cmd::run(command),
    }
}
