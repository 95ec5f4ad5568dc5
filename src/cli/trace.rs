//! `umacvlan trace`: decide a described frame against a described port table and explain it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::Failure;
use crate::forward::{
    DEFAULT_MAX_FRAME, DropReason, Ingress, Outcome, ParentConfig, PortTable, Verdict, decide,
};
use crate::frame::{FrameError, FrameMeta, VlanTag};
use crate::mac::MacAddr;
use crate::spec::PortSpec;

/// Explain what the kernel's macvlan would do with one frame, and why.
///
/// Describe the parent and its ports (same --port syntax as `run`, plus the live-state keys
/// down, promisc, allmulti and join=GROUP+GROUP), then the frame. The answer lists every port
/// that receives it, whether it goes to the wire and to the parent's own stack, why each other
/// port was passed over, and the rule (section of macvlan-semantics.md) that decided it.
///
/// Example: a broadcast from a bridge port
///
///   umacvlan trace --parent-mac 02:00:00:00:01:00 \
///     --port name=c1,mode=bridge,mac=02:00:00:00:00:01 \
///     --port name=c2,mode=vepa,mac=02:00:00:00:00:02 \
///     --from c1 --src 02:00:00:00:00:01 --dst ff:ff:ff:ff:ff:ff
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TraceArgs {
    /// The parent's name (used for ports' derived MACs).
    #[arg(long, default_value = "eth0")]
    parent: String,
    /// The parent's MAC.
    #[arg(long, value_name = "MAC")]
    parent_mac: MacAddr,
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
    #[arg(long, value_name = "MAC")]
    src: MacAddr,
    /// Destination MAC of the frame.
    #[arg(long, value_name = "MAC")]
    dst: MacAddr,
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
}

pub fn run(a: TraceArgs) -> Result<ExitCode, Failure> {
    let mut parent = ParentConfig::new(a.parent.clone(), a.parent_mac, a.parent_mtu);
    parent.bc_cutoff = a.bclim;
    parent.unicast_filter = a.unicast_filter;
    let ports = a.ports.iter().map(|p| p.to_config(&a.parent)).collect();
    let table = PortTable::build(parent, ports).map_err(Failure::usage)?;
    let ingress = match a.from.as_str() {
        "parent" => Ingress::Parent,
        name => Ingress::Port(table.by_name(name).ok_or_else(|| {
            Failure::usage(anyhow::anyhow!(
                "--from {name}: no such port (use `parent` or one of the --port names)"
            ))
        })?),
    };
    let bytes = frame_bytes(&a);
    let out = match FrameMeta::parse(&bytes, None, DEFAULT_MAX_FRAME) {
        Ok(f) => {
            let f = f.with_gso(a.gso);
            let v = decide(&table, ingress, &f);
            if a.json {
                json_verdict(&a, &table, &v)
            } else {
                text_verdict(&a, &table, &v)
            }
        }
        Err(e) => {
            let reason = match e {
                FrameError::Runt(_) => DropReason::Runt,
                FrameError::Oversize { .. } => DropReason::Oversize,
            };
            if a.json {
                json!({"from": a.from, "dropped": reason.name(), "error": e.to_string()})
                    .to_string()
            } else {
                format!("dropped before any decision: {} ({e})", reason.name())
            }
        }
    };
    writeln!(std::io::stdout(), "{out}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The described frame's bytes: MACs, an optional tag, a private ethertype, zero padding.
fn frame_bytes(a: &TraceArgs) -> Vec<u8> {
    let mut b = Vec::with_capacity(a.len.max(18));
    b.extend_from_slice(&a.dst.0);
    b.extend_from_slice(&a.src.0);
    if let Some(vid) = a.vlan {
        b.extend_from_slice(&VlanTag::dot1q(vid).to_bytes());
    }
    b.extend_from_slice(&0x88b5u16.to_be_bytes());
    b.resize(a.len, 0);
    b
}

fn text_verdict(a: &TraceArgs, t: &PortTable, v: &Verdict<'_>) -> String {
    let mut s = String::new();
    let vlan = a.vlan.map(|v| format!(" vlan {v}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "frame  {} > {}{vlan} len {} from {}",
        a.src, a.dst, a.len, a.from
    );
    let _ = writeln!(s, "rule   {} {}", v.rule.section(), v.rule.text());
    for (id, o) in v.outcomes(t) {
        let p = t.port(id);
        let what = match o {
            Outcome::SourceCopy => "receives (source-mode copy, §7)".to_string(),
            Outcome::Delivered => "receives".to_string(),
            Outcome::Skipped(r) => format!("skipped: {} — {}", r.name(), r.meaning()),
        };
        let _ = writeln!(s, "  {:<15} {:<8} {what}", p.name(), p.mode().name());
    }
    if v.receivers(t).is_empty() {
        let _ = writeln!(s, "  (no port receives it)");
    }
    if let Some(r) = v.reason {
        let _ = writeln!(s, "reason {} — {}", r.name(), r.meaning());
    }
    let _ = writeln!(s, "wire   {}", if v.to_wire { "yes" } else { "no" });
    let host = if v.to_host {
        "yes (the parent's own stack gets it)"
    } else {
        "no"
    };
    let _ = write!(s, "host   {host}");
    s
}

fn json_verdict(a: &TraceArgs, t: &PortTable, v: &Verdict<'_>) -> String {
    let name = |id| t.port(id).name().to_string();
    let receivers: Vec<_> = v.receivers(t).into_iter().map(name).collect();
    let skipped: Vec<_> = v
        .outcomes(t)
        .into_iter()
        .filter_map(|(id, o)| match o {
            Outcome::Skipped(r) => Some(json!({"port": name(id), "reason": r.name()})),
            _ => None,
        })
        .collect();
    let copies: Vec<_> = v.copies.iter().map(|id| name(*id)).collect();
    json!({
        "from": a.from,
        "src": a.src,
        "dst": a.dst,
        "vlan": a.vlan,
        "len": a.len,
        "rule": {"name": v.rule.name(), "section": v.rule.section(), "text": v.rule.text()},
        "receivers": receivers,
        "source_copies": copies,
        "skipped": skipped,
        "to_wire": v.to_wire,
        "to_host": v.to_host,
        "reason": v.reason.map(|r| r.name()),
    })
    .to_string()
}
