//! `umacvlan completions SHELL` and `umacvlan man DIR`: shell completions and man pages,
//! generated from the same clap definitions as `--help`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};

use super::{Cli, Failure};

/// Print a shell completion script.
///
///   umacvlan completions bash > /etc/bash_completion.d/umacvlan
///   umacvlan completions zsh  > /usr/local/share/zsh/site-functions/_umacvlan
///   umacvlan completions fish > ~/.config/fish/completions/umacvlan.fish
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}

/// Write man pages (umacvlan.1 and one per subcommand) into DIR.
///
///   umacvlan man /usr/local/share/man/man1 && mandb -q
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ManArgs {
    dir: PathBuf,
}

pub fn completions(a: CompletionsArgs) -> Result<ExitCode, Failure> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "umacvlan", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: ManArgs) -> Result<ExitCode, Failure> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &a.dir)
        .with_context(|| format!("writing man pages into {}", a.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
