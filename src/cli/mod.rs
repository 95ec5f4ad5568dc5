//! The command line: clap definitions and one module per subcommand.

mod capture;
mod config;
mod docs;
mod doctor;
mod lab;
pub mod link;
mod run;
pub(crate) mod stats;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::control::ClientError;
use crate::control::proto::{self, ErrorKind};

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
    Lab(lab::LabArgs),
    Run(run::RunArgs),
    Link(link::LinkArgs),
    Trace(trace::TraceArgs),
    Capture(capture::CaptureArgs),
    Config(config::ConfigArgs),
    Reload(link::ReloadArgs),
    Stats(stats::StatsArgs),
    Doctor(doctor::DoctorArgs),
    Completions(docs::CompletionsArgs),
    Man(docs::ManArgs),
}

/// `--control PATH`: where the running engine listens. Flatten it into every command that talks
/// to (or is) the engine.
#[derive(Clone, Debug, Args)]
pub struct ControlArg {
    /// The engine's control socket.
    #[arg(
        long = "control",
        value_name = "PATH",
        env = "UMACVLAN_CONTROL",
        default_value = proto::DEFAULT_SOCKET,
        global = true
    )]
    pub path: PathBuf,
}

/// The exit status for an error from the engine: 2 when the request itself was refused (nothing
/// changed), 1 for everything else.
pub fn exit_status(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadRequest
        | ErrorKind::NoSuchLink
        | ErrorKind::Exists
        | ErrorKind::AddressInUse
        | ErrorKind::AddressNotAvailable
        | ErrorKind::InvalidArgument
        | ErrorKind::Busy
        | ErrorKind::NoSuchNetns
        | ErrorKind::BadConfig => EXIT_USAGE,
        ErrorKind::UnsupportedVersion | ErrorKind::PermissionDenied | ErrorKind::Internal => {
            EXIT_FAILURE
        }
    }
}

/// A failed request as the command's failure.
pub fn daemon_failure(e: ClientError) -> Failure {
    let status = match &e {
        ClientError::Daemon(c) => exit_status(c.kind),
        _ => EXIT_FAILURE,
    };
    Failure {
        status,
        error: e.into(),
    }
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
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Config(args) => config::run(args),
        Command::Run(args) => run::run(args),
        Command::Trace(args) => trace::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Link(args) => link::run(args),
        Command::Reload(args) => link::reload(args),
        Command::Stats(args) => stats::run(args),
        Command::Doctor(args) => doctor::run(args),
    }
}
