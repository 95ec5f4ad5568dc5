//! `umacvlan trace`: decide a described frame against a described port table (or, live, the
//! running engine's table) and explain it.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::{ControlArg, Failure, daemon_failure};
use crate::control::client;
use crate::control::proto::{Reply, Request, TraceRequest};
use crate::control::spec::PortSpec;
use crate::control::trace::{TraceFrame, trace_json, trace_text};
use crate::forward::{ParentConfig, PortTable};
use crate::wire::mac::MacAddr;

/// Explain what the kernel's macvlan would do with one frame, and why.
///
/// Describe the parent and its ports (same --port syntax as `run`, plus the live-state keys
/// down, promisc, allmulti and join=GROUP+GROUP), then the frame. The answer lists every port
/// that receives it, whether it goes to the wire and to the parent's own stack, why each other
/// port was passed over, and the rule that decided it (each explained in docs/design.md).
///
/// Without --parent-mac and --port, the running engine (see --control) decides the frame against
/// its current ports and live state; --parent then picks the parent when it has several.
///
/// Example: a broadcast from a bridge port
///
///   umacvlan trace --parent-mac 02:00:00:00:01:00 \
///     --port name=c1,mode=bridge,mac=02:00:00:00:00:01 \
///     --port name=c2,mode=vepa,mac=02:00:00:00:00:02 \
///     --from c1 --src 02:00:00:00:00:01 --dst ff:ff:ff:ff:ff:ff
///
/// Example: the same question to the running engine
///
///   umacvlan trace --from c1 --src 02:00:00:00:00:01 --dst ff:ff:ff:ff:ff:ff
///
/// Example: the next 10 real frames port c1 sends or receives, as they happen
///
///   umacvlan trace --follow c1 -c 10
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TraceArgs {
    /// The parent's name (used for ports' derived MACs; default eth0). Live: which parent.
    #[arg(long, value_name = "P")]
    parent: Option<String>,
    /// The parent's MAC (describes a table; without it and --port, ask the running engine).
    #[arg(long, value_name = "MAC")]
    parent_mac: Option<MacAddr>,
    /// The parent's MTU.
    #[arg(long, value_name = "N", default_value_t = 1500)]
    parent_mtu: u32,
    /// bclim (bc_cutoff): groups joined by more ports than this are queued; negative queues nothing.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    bclim: i32,
    /// The parent filters unicast in hardware (a real NIC). Default: like veth/bridge, which do
    /// not, so the kernel turns them promiscuous once a port is up.
    #[arg(long)]
    unicast_filter: bool,
    /// A port: name=N[,mode=M][,mac=MAC][,mtu=N][,flag=nopromisc|nodst][,bcqueuelen=N]
    /// [,source=MAC+MAC][,down][,promisc][,allmulti][,join=GROUP+GROUP]
    #[arg(long = "port", value_name = "SPEC")]
    ports: Vec<PortSpec>,
    /// Where the frame enters: `parent` (from the wire) or a port's name (sent by that port).
    #[arg(long, value_name = "parent|PORT", default_value = "parent")]
    from: String,
    /// Source MAC of the frame.
    #[arg(long, value_name = "MAC", required_unless_present = "follow")]
    src: Option<MacAddr>,
    /// Destination MAC of the frame.
    #[arg(long, value_name = "MAC", required_unless_present = "follow")]
    dst: Option<MacAddr>,
    /// Live: print the decisions for real frames as the running engine makes them, one line
    /// each (time UTC, where it entered, src > dst, length, VLAN, receivers, wire, drop
    /// reason, rule). TARGET: parent (every parent), a parent's name, a port's name, or drops.
    #[arg(long, value_name = "TARGET", conflicts_with_all = ["src", "dst", "ports", "parent_mac"])]
    follow: Option<String>,
    /// With --follow: stop after N frames.
    #[arg(short = 'c', long = "count", value_name = "N", requires = "follow")]
    count: Option<u64>,
    /// An 802.1Q tag with this VLAN id.
    #[arg(long, value_name = "VID", value_parser = clap::value_parser!(u16).range(0..4096))]
    vlan: Option<u16>,
    /// Frame length on the wire in bytes (headers included, no FCS).
    #[arg(long, value_name = "N", default_value_t = 64)]
    len: usize,
    /// The frame is a GSO super-frame (MTU checks let it through, as in the kernel).
    #[arg(long)]
    gso: bool,
    /// Print JSON.
    #[arg(short = 'j', long = "json")]
    json: bool,
    #[command(flatten)]
    control: ControlArg,
}

pub fn run(a: TraceArgs) -> Result<ExitCode, Failure> {
    if let Some(target) = &a.follow {
        return super::capture::follow(target, a.count, a.json, &a.control);
    }
    let (Some(src), Some(dst)) = (a.src, a.dst) else {
        return Err(Failure::usage(anyhow::anyhow!(
            "--src and --dst are required"
        )));
    };
    let frame = TraceFrame {
        src,
        dst,
        vlan: a.vlan,
        len: a.len,
        gso: a.gso,
    };
    let v = match a.parent_mac {
        None if a.ports.is_empty() => live(&a, &frame)?,
        None => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--port describes a table and needs --parent-mac (or give neither to ask the running engine)"
            )));
        }
        Some(parent_mac) => {
            let parent_name = a.parent.as_deref().unwrap_or("eth0");
            let mut parent = ParentConfig::new(parent_name.to_string(), parent_mac, a.parent_mtu);
            parent.bc_cutoff = a.bclim;
            parent.unicast_filter = a.unicast_filter;
            let ports = a.ports.iter().map(|p| p.to_config(parent_name)).collect();
            let table = PortTable::build(parent, ports).map_err(Failure::usage)?;
            trace_json(&table, &a.from, &frame).map_err(|e| {
                Failure::usage(anyhow::anyhow!(
                    "--from {}: no such port (use `parent` or one of the --port names)",
                    e.0
                ))
            })?
        }
    };
    let out = if a.json {
        v.to_string()
    } else {
        trace_text(&v)
    };
    writeln!(std::io::stdout(), "{out}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Asks the running engine.
fn live(a: &TraceArgs, frame: &TraceFrame) -> Result<serde_json::Value, Failure> {
    let req = Request::Trace(TraceRequest {
        from: a.from.clone(),
        parent: a.parent.clone(),
        src: frame.src,
        dst: frame.dst,
        vlan: a.vlan,
        len: Some(a.len),
        gso: a.gso,
    });
    match client::request(&a.control.path, req).map_err(daemon_failure)? {
        Reply::Trace { trace } => Ok(trace),
        other => Err(anyhow::anyhow!("the engine answered a trace with {other:?}").into()),
    }
}
