//! The command line: clap definitions and one module per subcommand.

mod config;
mod lab;
pub mod report;
mod run;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status for bad input (usage, configuration): nothing was changed.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failure while running.
pub const EXIT_FAILURE: u8 = 1;

/// umacvlan: Linux macvlan in userspace — every forwarding decision visible, counted, testable.
///
/// The engine applies the kernel's macvlan rules (bridge, vepa, private, passthru, source)
/// itself, between the parent's AF_PACKET ring and TAP devices it owns.
#[derive(Debug, Parser)]
#[command(
    name = "umacvlan",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Config(config::ConfigArgs),
    Lab(lab::LabArgs),
    Run(run::RunArgs),
    Trace(trace::TraceArgs),
}

/// An error that carries the exit status it should produce.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            status: EXIT_USAGE,
            error: error.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure {
            status: EXIT_FAILURE,
            error,
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Lab(args) => lab::run(args),
        Command::Config(args) => config::run(args),
        Command::Run(args) => run::run(args),
        Command::Trace(args) => trace::run(args),
    }
}
