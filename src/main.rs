use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use umacvlan::cli;

/// Exit status: 0 success, 1 failure while running, 2 bad input (nothing was changed).
fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(f) => {
            // A closed pipe (`umacvlan trace ... | head`) is not an error.
            if let Some(e) = f.error.downcast_ref::<std::io::Error>()
                && e.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(
                std::io::stderr(),
                "umacvlan: error: {}",
                umacvlan::errors::chain(&f.error)
            );
            ExitCode::from(f.status)
        }
    }
}
