//! `umacvlan-cni`, installed as `/opt/cni/bin/umacvlan`: the CNI plugin (see `umacvlan::cni`).
//!
//! Exit status: 0 success (the result, if any, on stdout), 1 failure (a CNI error object on
//! stdout). Logs go to stderr (`RUST_LOG=debug` for more).
use std::io::Read;
use std::process::ExitCode;

use umacvlan::cni;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut stdin = Vec::new();
    let env = cni::conf::Env::from_process();
    let (out, ok) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => cni::run(&env, &stdin),
        Err(e) => {
            let err = cni::CniError::new(cni::code::DECODE, format!("reading stdin: {e}"));
            cni::run_failed(&err)
        }
    };
    if !out.is_empty() {
        println!("{out}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
