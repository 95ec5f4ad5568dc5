//! Counters as text, in the words of `ip -s link`.

use std::fmt::Write as _;

use crate::engine::counters::{Counters, Drops};
use crate::forward::PortTable;

fn drops_text(d: &Drops) -> String {
    let v: Vec<String> = d
        .nonzero()
        .iter()
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(" ")
    }
}

/// One line per port and one for the parent: packets and bytes each way, and drops by reason.
pub fn counters_text(table: &PortTable, c: &Counters) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<8} {:>10} {:>12} {:>10} {:>12}  drops",
        "port", "mode", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes"
    );
    for (p, pc) in table.ports().iter().zip(&c.ports) {
        let _ = writeln!(
            s,
            "{:<16} {:<8} {:>10} {:>12} {:>10} {:>12}  {}",
            p.name(),
            p.mode().name(),
            pc.rx.packets.get(),
            pc.rx.bytes.get(),
            pc.tx.packets.get(),
            pc.tx.bytes.get(),
            drops_text(&pc.drops)
        );
    }
    let pc = &c.parent;
    let _ = writeln!(
        s,
        "{:<16} {:<8} {:>10} {:>12} {:>10} {:>12}  {}",
        table.parent().name,
        "parent",
        pc.rx.packets.get(),
        pc.rx.bytes.get(),
        pc.tx.packets.get(),
        pc.tx.bytes.get(),
        drops_text(&pc.drops)
    );
    let _ = writeln!(
        s,
        "ring (kernel): packets={} drops={} freezes={}",
        pc.ring_packets.get(),
        pc.ring_drops.get(),
        pc.ring_freezes.get()
    );
    s
}
