//! `umacvlan run`: the engine in the foreground.

use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::Failure;
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
/// Logs go to stderr (RUST_LOG=debug for more); SIGINT or SIGTERM stops the engine cleanly and
/// prints every port's counters. Exit status: 0 stopped cleanly, 1 failed while running, 2 bad
/// input (nothing was created).
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
    #[arg(long, value_name = "P")]
    parent: String,
    /// A port: name=N[,mode=M][,netns=NS][,mac=MAC][,mtu=N][,flag=nopromisc|nodst]
    /// [,bcqueuelen=N][,source=MAC+MAC..]. Repeat for more ports.
    #[arg(long = "port", value_name = "SPEC", required = true)]
    ports: Vec<String>,
    /// bclim: a multicast group joined by more than N up ports (and broadcast) goes through the
    /// broadcast queue, whose length is the largest bcqueuelen of any port; a negative N queues
    /// nothing. Parent-wide, like the kernel's IFLA_MACVLAN_BC_CUTOFF.
    #[arg(long, value_name = "N", default_value_t = crate::forward::DEFAULT_BC_CUTOFF, allow_negative_numbers = true)]
    bclim: i32,
}

/// Blocks the stop signals in the calling thread (and so in every thread it spawns later) and
/// returns a channel that fires when one arrives.
pub fn stop_on_signals() -> anyhow::Result<crossbeam_channel::Receiver<()>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("umacvlan-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!("{sig}: stopping");
            }
            let _ = tx.send(());
        })?;
    Ok(rx)
}

pub fn run(a: RunArgs) -> Result<ExitCode, Failure> {
    let specs = a
        .ports
        .iter()
        .map(|s| s.parse::<PortSpec>().map(|p| (s.clone(), p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    let opts = ParentOptions { bc_cutoff: a.bclim };
    let plan = plan(&a.parent, opts, &specs).map_err(Failure::usage)?;
    let stop = stop_on_signals()?;
    let names: Vec<String> = plan.ports.iter().map(|p| p.spec.name.clone()).collect();
    let mut engine = Daemon::start(plan)?;
    tracing::info!(parent = %a.parent, ports = %names.join(","), "umacvlan: ready");
    let result = engine.run_until(&stop, None);
    print!("{}", engine.shutdown()?);
    result?;
    Ok(ExitCode::SUCCESS)
}
