//! `trace`: decide one described frame against a port table and explain it, as JSON and as text.
//!
//! One shape serves both ends: the offline `umacvlan trace` builds a table from its arguments and
//! calls [`trace_json`]; a running engine answers `Request::Trace` by calling [`trace_json`] on
//! its current table; either way the command prints the value with [`trace_text`] (or as JSON).
//!
//! The JSON object has the keys `from`, `src`, `dst`, `vlan`, `len`, `rule` (`name`, `section`,
//! `text`), `receivers`, `source_copies`, `skipped` (`[{port, reason}]`), `to_wire`, `to_host`,
//! `reason`, and `outcomes` (every port the decision looked at, in order: `{port, mode, outcome:
//! receives|source_copy|skipped, reason}`). A frame refused before any decision (shorter than an
//! Ethernet header, longer than the engine accepts) gives `{from, dropped, error}` instead.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::control::proto::{ControlError, ErrorKind, TraceRequest};
use crate::forward::{DEFAULT_MAX_FRAME, DropReason, Ingress, Outcome, PortTable, Verdict, decide};
use crate::wire::frame::{FrameMeta, VlanTag};
use crate::wire::mac::MacAddr;

/// The frame `trace` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceFrame {
    pub src: MacAddr,
    pub dst: MacAddr,
    /// An 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// Length on the wire in bytes (headers included, no FCS).
    pub len: usize,
    /// A GSO super-frame (MTU checks let it through, as in the kernel).
    pub gso: bool,
}

/// The default frame length: the minimum Ethernet frame (64 bytes).
pub const DEFAULT_LEN: usize = 64;

impl From<&TraceRequest> for TraceFrame {
    fn from(r: &TraceRequest) -> TraceFrame {
        TraceFrame {
            src: r.src,
            dst: r.dst,
            vlan: r.vlan,
            len: r.len.unwrap_or(DEFAULT_LEN),
            gso: r.gso,
        }
    }
}

impl TraceFrame {
    /// The described frame's bytes: MACs, an optional tag, a private ethertype, zero padding.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.len.max(18));
        b.extend_from_slice(&self.dst.0);
        b.extend_from_slice(&self.src.0);
        if let Some(vid) = self.vlan {
            b.extend_from_slice(&VlanTag::dot1q(vid).to_bytes());
        }
        b.extend_from_slice(&0x88b5u16.to_be_bytes());
        b.resize(self.len, 0);
        b
    }
}

/// `from` names no port of the table (and is not `parent`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no such port {0:?} (use `parent` or a port's name)")]
pub struct NoSuchPort(pub String);

impl From<NoSuchPort> for ControlError {
    fn from(e: NoSuchPort) -> ControlError {
        ControlError::new(ErrorKind::NoSuchLink, e.to_string())
    }
}

/// Decides `frame` entering at `from` (`"parent"`, or a port's name) against `table` and returns
/// the trace as JSON (the shape in the module documentation).
pub fn trace_json(table: &PortTable, from: &str, frame: &TraceFrame) -> Result<Value, NoSuchPort> {
    let ingress = match from {
        "parent" => Ingress::Parent,
        name => Ingress::Port(
            table
                .by_name(name)
                .ok_or_else(|| NoSuchPort(name.to_string()))?,
        ),
    };
    let bytes = frame.bytes();
    Ok(match FrameMeta::parse(&bytes, None, DEFAULT_MAX_FRAME) {
        Ok(f) => {
            let v = decide(table, ingress, &f.with_gso(frame.gso));
            verdict_json(table, from, frame, &v)
        }
        Err(e) => {
            let reason = DropReason::from(e);
            json!({"from": from, "dropped": reason.name(), "error": e.to_string()})
        }
    })
}

fn verdict_json(t: &PortTable, from: &str, frame: &TraceFrame, v: &Verdict<'_>) -> Value {
    let name = |id| t.port(id).name().to_string();
    let receivers: Vec<_> = v.receivers(t).into_iter().map(name).collect();
    let outcomes = v.outcomes(t);
    let skipped: Vec<_> = outcomes
        .iter()
        .filter_map(|(id, o)| match o {
            Outcome::Skipped(r) => Some(json!({"port": name(*id), "reason": r.name()})),
            _ => None,
        })
        .collect();
    let every: Vec<_> = outcomes
        .iter()
        .map(|(id, o)| {
            let (what, reason) = match o {
                Outcome::SourceCopy => ("source_copy", None),
                Outcome::Delivered => ("receives", None),
                Outcome::Skipped(r) => ("skipped", Some(r.name())),
            };
            json!({
                "port": name(*id),
                "mode": t.port(*id).mode().name(),
                "outcome": what,
                "reason": reason,
            })
        })
        .collect();
    let copies: Vec<_> = v.copies.iter().map(|id| name(*id)).collect();
    json!({
        "from": from,
        "src": frame.src,
        "dst": frame.dst,
        "vlan": frame.vlan,
        "len": frame.len,
        "rule": {"name": v.rule.name(), "section": v.rule.section(), "text": v.rule.text()},
        "receivers": receivers,
        "source_copies": copies,
        "skipped": skipped,
        "outcomes": every,
        "to_wire": v.to_wire,
        "to_host": v.to_host,
        "reason": v.reason.map(|r| r.name()),
    })
}

fn meaning(name: &str) -> Option<&'static str> {
    DropReason::ALL
        .into_iter()
        .find(|r| r.name() == name)
        .map(DropReason::meaning)
}

fn with_meaning(name: &str) -> String {
    match meaning(name) {
        Some(m) => format!("{name} — {m}"),
        None => name.to_string(),
    }
}

/// The trace as text, from the JSON of [`trace_json`] (computed here or by a running engine).
/// Keys it does not know are ignored; keys missing print as `-`.
pub fn trace_text(v: &Value) -> String {
    let s_of = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    if let Some(d) = v["dropped"].as_str() {
        return format!(
            "dropped before any decision: {d} ({})",
            v["error"].as_str().unwrap_or("-")
        );
    }
    let mut s = String::new();
    let vlan = v["vlan"]
        .as_u64()
        .map(|v| format!(" vlan {v}"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "frame  {} > {}{vlan} len {} from {}",
        s_of("src"),
        s_of("dst"),
        s_of("len"),
        s_of("from")
    );
    let _ = writeln!(
        s,
        "rule   {} {}",
        v["rule"]["section"].as_str().unwrap_or("-"),
        v["rule"]["text"].as_str().unwrap_or("-")
    );
    let empty = Vec::new();
    let outcomes = v["outcomes"].as_array().unwrap_or(&empty);
    for o in outcomes {
        let what = match o["outcome"].as_str().unwrap_or("-") {
            "source_copy" => "receives (source-mode copy, §7)".to_string(),
            "receives" => "receives".to_string(),
            "skipped" => format!(
                "skipped: {}",
                with_meaning(o["reason"].as_str().unwrap_or("-"))
            ),
            other => other.to_string(),
        };
        let _ = writeln!(
            s,
            "  {:<15} {:<8} {what}",
            o["port"].as_str().unwrap_or("-"),
            o["mode"].as_str().unwrap_or("-")
        );
    }
    if v["receivers"].as_array().is_none_or(|r| r.is_empty()) {
        let _ = writeln!(s, "  (no port receives it)");
    }
    if let Some(r) = v["reason"].as_str() {
        let _ = writeln!(s, "reason {}", with_meaning(r));
    }
    let yes = |k: &str| v[k].as_bool().unwrap_or(false);
    let _ = writeln!(s, "wire   {}", if yes("to_wire") { "yes" } else { "no" });
    let host = if yes("to_host") {
        "yes (the parent's own stack gets it)"
    } else {
        "no"
    };
    let _ = write!(s, "host   {host}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{Mode, ParentConfig, PortConfig};

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn table() -> PortTable {
        let parent = ParentConfig::new("eth0", mac("02:00:00:00:01:00"), 1500);
        let ports = vec![
            PortConfig::new("c1", Mode::Bridge, mac("02:00:00:00:00:01")),
            PortConfig::new("c2", Mode::Vepa, mac("02:00:00:00:00:02")),
        ];
        PortTable::build(parent, ports).unwrap()
    }

    #[test]
    fn json_and_text_agree() {
        let f = TraceFrame {
            src: mac("02:00:00:00:00:01"),
            dst: mac("ff:ff:ff:ff:ff:ff"),
            vlan: None,
            len: 64,
            gso: false,
        };
        let v = trace_json(&table(), "parent", &f).unwrap();
        for k in [
            "from",
            "src",
            "dst",
            "vlan",
            "len",
            "rule",
            "receivers",
            "source_copies",
            "skipped",
            "to_wire",
            "to_host",
            "reason",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        let t = trace_text(&v);
        assert!(t.starts_with("frame  02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff len 64 from parent"));
        assert!(t.contains("own_source"), "{t}");
        assert!(t.contains("c2              vepa     receives"), "{t}");
        let e = trace_json(&table(), "c9", &f).unwrap_err();
        assert_eq!(ControlError::from(e).kind, ErrorKind::NoSuchLink);
        let runt = trace_json(&table(), "parent", &TraceFrame { len: 10, ..f }).unwrap();
        assert_eq!(runt["dropped"], "runt");
        assert!(trace_text(&runt).starts_with("dropped before any decision: runt"));
    }
}
