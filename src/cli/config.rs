//! `umacvlan config check FILE`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::Failure;
use crate::control::config::Config;

/// Work with configuration files.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    Check(CheckArgs),
}

/// Check a configuration file without changing anything (like `nginx -t`).
///
/// Checks the TOML syntax, every key (unknown keys are errors), modes, MACs, MTUs, duplicate
/// names and MACs, passthru's exclusivity, and, reading the machine without touching it, that
/// every parent can take ports and every namespace exists. Errors name FILE:LINE:COL and the key.
/// Exit status 0 when the file is good, 2 when it is not.
///
/// A file:
///
///   control = "/run/umacvlan/umacvlan.sock"   # optional
///
///   [parents.eth0]                             # optional
///   bclim = 1
///
///   [[ports]]
///   name = "c1"
///   parent = "eth0"
///   mode = "bridge"                            # default bridge
///   netns = "web1"                             # default: the engine's namespace
///   mac = "02:00:00:00:00:01"                  # default: stable, derived
///   mtu = 1500
///   flags = ["nodst"]                          # nopromisc, nodst
///   bcqueuelen = 1000
///   macaddr = ["02:00:00:00:00:99"]            # source mode
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct CheckArgs {
    file: PathBuf,
}

pub fn run(a: ConfigArgs) -> Result<ExitCode, Failure> {
    let ConfigCommand::Check(c) = a.command;
    let file = c.file.display().to_string();
    let text = std::fs::read_to_string(&c.file)
        .map_err(|e| Failure::usage(anyhow::anyhow!("{file}: cannot read it: {e}")))?;
    let config = Config::parse(&file, &text).map_err(Failure::usage)?;
    config.check_machine(&file, &text).map_err(Failure::usage)?;
    let parents: std::collections::BTreeSet<_> = config
        .ports
        .iter()
        .filter_map(|p| p.spec.parent.clone())
        .collect();
    writeln!(
        std::io::stdout(),
        "{file}: ok: {} ports on {} parents",
        config.ports.len(),
        parents.len()
    )
    .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
