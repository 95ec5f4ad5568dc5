//! Counters as text, in the words of `ip -s link`.

use std::fmt::Write as _;

use crate::engine::counters::{Drops, ParentCounters, PortCounters};
use crate::forward::Mode;

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

fn row(s: &mut String, name: &str, mode: &str, rx: (u64, u64), tx: (u64, u64), drops: &Drops) {
    let _ = writeln!(
        s,
        "{name:<16} {mode:<8} {:>10} {:>12} {:>10} {:>12}  {}",
        rx.0,
        rx.1,
        tx.0,
        tx.1,
        drops_text(drops)
    );
}

/// One line per port and per parent: packets and bytes each way, and drops by reason; then the
/// kernel's own ring counters of each parent.
pub fn counters_text(
    ports: &[(&str, Mode, &PortCounters)],
    parents: &[(&str, &ParentCounters)],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<8} {:>10} {:>12} {:>10} {:>12}  drops",
        "port", "mode", "rx_packets", "rx_bytes", "tx_packets", "tx_bytes"
    );
    for (name, mode, c) in ports {
        let (rx, tx) = (&c.rx, &c.tx);
        row(
            &mut s,
            name,
            mode.name(),
            (rx.packets.get(), rx.bytes.get()),
            (tx.packets.get(), tx.bytes.get()),
            &c.drops,
        );
    }
    for (name, c) in parents {
        let (rx, tx) = (&c.rx, &c.tx);
        row(
            &mut s,
            name,
            "parent",
            (rx.packets.get(), rx.bytes.get()),
            (tx.packets.get(), tx.bytes.get()),
            &c.drops,
        );
    }
    for (name, c) in parents {
        let _ = writeln!(
            s,
            "accounting of {name}: rx {} = forwarded {} + dropped {}",
            c.rx.packets.get(),
            c.rx_forwarded.get(),
            c.rx_dropped_frames.get()
        );
    }
    for (name, _, c) in ports {
        let _ = writeln!(
            s,
            "accounting of {name}: tx {} = forwarded {} + dropped {}",
            c.tx.packets.get(),
            c.tx_forwarded.get(),
            c.tx_dropped_frames.get()
        );
    }
    for (name, c) in parents {
        let _ = writeln!(
            s,
            "ring of {name} (kernel): packets={} drops={} freezes={}",
            c.ring_packets.get(),
            c.ring_drops.get(),
            c.ring_freezes.get()
        );
        let switches = c.ring_mode_switches.get();
        if switches > 0 {
            let _ = writeln!(s, "ring mode switches of {name} (--ring auto): {switches}");
        }
        let failed = c.ring_steer_failures.get();
        if failed > 0 {
            let _ = writeln!(s, "failed ring mode switches of {name}: {failed}");
        }
    }
    s
}
