//! `umacvlan lab`: the self-contained lab (logic in `crate::lab`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::Failure;
use super::run::signals;
use crate::forward::Mode;
use crate::lab::{Lab, LabOptions, parse_modes, sweep_stale};

/// Build a macvlan lab in network namespaces, run the engine on it, and show who reaches whom.
///
/// What gets built (as root; nothing outside the lab's own namespaces is touched):
///
///   umvlab-PID-wire   wire0 192.0.2.254/24     the outside world: a host on the wire
///        |  (veth)                             (with --hairpin: bridge br0 holds the address,
///   umvlab-PID-host   eth0                      wire0 is its port with hairpin on)
///        |  the engine, in this process: a TPACKET_V3 ring on eth0, one TAP per child
///   umvlab-PID-c1     c1 192.0.2.1/24   02:00:5e:00:00:01   mode from --modes
///   umvlab-PID-c2     c2 192.0.2.2/24   02:00:5e:00:00:02
///   umvlab-PID-c3     c3 192.0.2.3/24   02:00:5e:00:00:03
///
/// 192.0.2.0/24 is TEST-NET-1, a documentation range; it exists only inside these namespaces.
/// IPv6 is off in all of them, so the only traffic is the lab's own.
///
/// The lab then sends, with UDP sockets inside the namespaces: one datagram for every ordered
/// pair of nodes (ARP resolves underneath, from scratch each time) and one broadcast to
/// 192.0.2.255 from every node. It prints two tables, rows = sender, columns = receiver:
/// "yes" = received; "no (arp)" = not received because the sender's ARP request (a broadcast)
/// never reaches the receiver; "(reply)" = the ARP reply never comes back; "(data)" = the
/// datagram itself is not delivered. Every cell is also computed from the forwarding rules
/// (decide(), the function the engine uses); a cell where what happened differs from the rules
/// is marked "!! SEEN exp PREDICTED". Then the engine's counters, per port and for the parent.
///
/// Try: the default (two bridge siblings talk directly, the vepa child only through the wire);
/// --modes bridge,vepa,private (no two children talk: there is no switch to reflect frames);
/// --modes vepa,vepa,private --hairpin (the switch reflects: vepa siblings talk; the private
/// child's broadcasts, ARP included, come back only to itself).
///
/// Everything is removed on exit, on Ctrl-C and on SIGTERM; a lab that was killed is removed
/// at the next start. Exit status: 0 every cell matches the rules, 1 a cell differs or the lab
/// failed, 2 bad options.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct LabArgs {
    /// The modes of c1, c2 and c3: exactly three of private, vepa, bridge, source
    /// (passthru needs to be alone on its parent, so the lab cannot use it).
    #[arg(long, value_name = "M,M,M", default_value = "bridge,bridge,vepa", value_parser = parse_modes)]
    modes: [Mode; 3],
    /// Put a Linux bridge with hairpin on in the wire namespace: the switch then sends frames
    /// back out of the port they came in, as a VEPA-capable switch does.
    #[arg(long)]
    hairpin: bool,
    /// After the tables, keep the lab up and print `ip netns exec` commands to explore it, until
    /// Ctrl-C.
    #[arg(long)]
    keep: bool,
}

pub fn run(a: LabArgs) -> Result<ExitCode, Failure> {
    // First, before any thread exists: every thread the lab starts inherits the blocked signals.
    let stop = signals(false)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::usage(anyhow::anyhow!(
            "the lab needs root (it creates network namespaces, a veth and TAP devices)"
        )));
    }
    for name in sweep_stale() {
        eprintln!("umacvlan lab: removed {name}, left behind by a lab that is no longer running");
    }
    let opts = LabOptions {
        modes: a.modes,
        hairpin: a.hairpin,
    };
    let mut lab = Lab::build(&opts, &stop)?;
    let mut out = std::io::stdout().lock();
    let io = |e: std::io::Error| Failure::from(anyhow::Error::from(e));
    writeln!(out, "{}", lab.describe()).map_err(io)?;
    let matrix = lab.probe(&stop)?;
    writeln!(out, "{}", matrix.render()).map_err(io)?;
    if a.keep {
        writeln!(out, "Engine counters so far:").map_err(io)?;
        write!(out, "{}", lab.counters()).map_err(io)?;
        writeln!(out).map_err(io)?;
        write!(out, "{}", lab.explore_commands()).map_err(io)?;
        out.flush().map_err(io)?;
        let _ = stop.recv();
        writeln!(out).map_err(io)?;
    }
    let counters = lab.shutdown()?;
    writeln!(out, "Engine counters:").map_err(io)?;
    write!(out, "{counters}").map_err(io)?;
    if matrix.all_match() {
        writeln!(out, "Lab removed. Every cell matched the forwarding rules.").map_err(io)?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "Lab removed. {} cell(s) differ from the forwarding rules (see MISMATCH above).",
            matrix.mismatches().len()
        )
        .map_err(io)?;
        Ok(ExitCode::from(super::EXIT_FAILURE))
    }
}
