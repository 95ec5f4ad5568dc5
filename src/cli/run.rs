//! `umacvlan run`: the engine in the foreground.

use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::Failure;
use std::path::PathBuf;

use crate::config::Config;
use crate::engine::daemon::Daemon;
use crate::engine::plan::{ParentOptions, plan};
use crate::spec::PortSpec;

/// Run the engine: macvlan ports on PARENT, as TAPs in their namespaces.
///
/// Each --port becomes a TAP named N (non-persistent: it vanishes when the engine exits or
/// dies), in the namespace NS (a name from `ip netns add`) or in the engine's own namespace, with
/// the given MAC (default: stable, derived from the parent's and the port's names; passthru takes
/// the parent's), admin-down like a fresh `ip link add ... type macvlan`. Bring it up where it
/// lives (`ip -n NS link set N up`) and the engine starts forwarding to it.
///
/// The mode defaults to bridge, like Docker, CNI and netavark (`ip link add` defaults to vepa).
/// With --config FILE the ports come from a TOML file instead (see `umacvlan config check`);
/// SIGHUP re-reads it and applies only the difference. Logs go to stderr (RUST_LOG=debug for
/// more); SIGINT or SIGTERM stops the engine cleanly and prints every port's counters. Exit
/// status: 0 stopped cleanly, 1 failed while running, 2 bad input (nothing was created).
///
/// Example:
///
///   ip netns add ns1
///   umacvlan run --parent eth0 --port name=c1,mode=bridge,netns=ns1
///   ip -n ns1 link set c1 up      # in another shell
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The parent interface (an Ethernet device in the engine's namespace).
    #[arg(
        long,
        value_name = "P",
        required_unless_present = "config",
        requires = "ports"
    )]
    parent: Option<String>,
    /// A port: name=N[,mode=M][,netns=NS][,mac=MAC][,mtu=N][,flag=nopromisc|nodst]
    /// [,bcqueuelen=N][,source=MAC+MAC..]. Repeat for more ports.
    #[arg(long = "port", value_name = "SPEC", requires = "parent")]
    ports: Vec<String>,
    /// bclim: a multicast group joined by more than N up ports (and broadcast) goes through the
    /// broadcast queue, whose length is the largest bcqueuelen of any port; a negative N queues
    /// nothing. Parent-wide, like the kernel's IFLA_MACVLAN_BC_CUTOFF.
    #[arg(long, value_name = "N", default_value_t = crate::forward::DEFAULT_BC_CUTOFF, allow_negative_numbers = true)]
    bclim: i32,
    /// Take parents and ports from this TOML file (SIGHUP or `umacvlan reload` re-reads it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["parent", "ports"])]
    config: Option<PathBuf>,
}

/// What a signal asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signalled {
    Stop,
    Reload,
}

/// Blocks SIGINT and SIGTERM (and SIGHUP when `reload`) in the calling thread, and so in every
/// thread it spawns later, and returns a channel that says which arrived.
pub fn signals(reload: bool) -> anyhow::Result<crossbeam_channel::Receiver<Signalled>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if reload {
        set.add(Signal::SIGHUP);
    }
    set.thread_block()?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("umacvlan-signals".into())
        .spawn(move || {
            while let Ok(sig) = set.wait() {
                let what = if sig == Signal::SIGHUP {
                    Signalled::Reload
                } else {
                    Signalled::Stop
                };
                tracing::info!(
                    "{sig}: {}",
                    if what == Signalled::Stop {
                        "stopping"
                    } else {
                        "reloading"
                    }
                );
                if tx.send(what).is_err() || what == Signalled::Stop {
                    break;
                }
            }
        })?;
    Ok(rx)
}

pub fn run(a: RunArgs) -> Result<ExitCode, Failure> {
    let mut engine = match (&a.config, &a.parent) {
        (Some(path), _) => {
            let (file, text) = (path.display().to_string(), read(path)?);
            let config = Config::parse(&file, &text).map_err(Failure::usage)?;
            config.check_machine(&file, &text).map_err(Failure::usage)?;
            let signals = signals(true)?;
            (Daemon::from_config(path, config)?, signals)
        }
        (None, Some(parent)) => {
            let specs = a
                .ports
                .iter()
                .map(|s| s.parse::<PortSpec>().map(|p| (s.clone(), p)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::usage)?;
            let opts = ParentOptions { bc_cutoff: a.bclim };
            let plan = plan(parent, opts, &specs).map_err(Failure::usage)?;
            let signals = signals(false)?;
            (Daemon::start(plan)?, signals)
        }
        (None, None) => unreachable!("clap requires --parent or --config"),
    };
    tracing::info!("umacvlan: ready");
    let (daemon, signals) = &mut engine;
    let result = loop {
        match daemon.run_until(signals, None) {
            Ok(Some(Signalled::Reload)) => match daemon.reload() {
                Ok(r) => {
                    tracing::info!(added = ?r.added, removed = ?r.removed, changed = ?r.changed, "reloaded")
                }
                Err(e) => tracing::error!("reload refused, nothing changed: {e}"),
            },
            Ok(_) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    print!("{}", engine.0.shutdown()?);
    result?;
    Ok(ExitCode::SUCCESS)
}

fn read(path: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("{}: cannot read it: {e}", path.display())))
}
