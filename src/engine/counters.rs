//! Counters: per port, for the parent, and drops by reason.
//!
//! One worker thread writes them, any thread reads them. Each counter is an `AtomicU64` written
//! with a plain load + store (single writer, so no locked read-modify-write on the hot path) and
//! read with `Relaxed`. Counters only grow; reading never resets them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::forward::DropReason;

/// One monotonically growing counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker thread may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Packets and bytes in one direction.
#[derive(Debug, Default)]
pub struct Flow {
    pub packets: Counter,
    pub bytes: Counter,
}

impl Flow {
    #[inline]
    pub fn count(&self, bytes: usize) {
        self.packets.add(1);
        self.bytes.add(bytes as u64);
    }
}

/// Drops, one counter per [`DropReason`].
#[derive(Debug, Default)]
pub struct Drops([Counter; DropReason::ALL.len()]);

impl Drops {
    #[inline]
    pub fn count(&self, r: DropReason) {
        self.0[r.index()].add(1);
    }

    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r.index()].get()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }

    /// The reasons with a non-zero count, in `DropReason::ALL` order.
    pub fn nonzero(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl ParentCounters {
    /// A frame from the wire that reached no port.
    pub fn dropped(&self, r: DropReason) {
        self.rx_dropped_frames.add(1);
        self.drops.count(r);
    }
}

impl PortCounters {
    /// A frame this port sent that reached nothing.
    pub fn dropped(&self, r: DropReason) {
        self.tx_dropped_frames.add(1);
        self.drops.count(r);
    }

    /// Copies for this port that could not be written (its `rx` drops).
    pub fn rx_dropped(&self) -> u64 {
        self.drops.get(DropReason::TapQueueFull) + self.drops.get(DropReason::TapWriteFailed)
    }

    /// Frames this port sent that went nowhere (its `tx` drops).
    pub fn tx_dropped(&self) -> u64 {
        self.drops.total() - self.rx_dropped()
    }
}

/// A port's counters, named from the port's side as `ip -s link` shows them: `rx` is what the
/// engine delivered to the port, `tx` what the port sent.
///
/// Every frame the port sends ends in exactly one of `tx_forwarded` (it reached at least one
/// port or the wire) and `tx_dropped_frames` (it reached nothing; also counted in `drops` under
/// its reason): `tx.packets == tx_forwarded + tx_dropped_frames`.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx: Flow,
    pub rx_multicast: Counter,
    pub tx: Flow,
    pub tx_forwarded: Counter,
    pub tx_dropped_frames: Counter,
    /// By reason: frames the port sent that reached nothing, and copies for it that could not be
    /// written (`tap_queue_full`, `tap_write_failed`).
    pub drops: Drops,
}

/// The parent's counters: `rx` from the ring, `tx` to the wire.
///
/// Every frame from the ring ends in exactly one of `rx_forwarded` (it reached at least one port)
/// and `rx_dropped_frames` (it reached no port; also counted in `drops` under its reason):
/// `rx.packets == rx_forwarded + rx_dropped_frames`. The kernel's ring counts the frames it could
/// not give us: `ring_packets == rx.packets + ring_drops` once the ring is drained.
#[derive(Debug, Default)]
pub struct ParentCounters {
    pub rx: Flow,
    pub rx_forwarded: Counter,
    pub rx_dropped_frames: Counter,
    pub tx: Flow,
    /// By reason: frames from the wire that reached no port, and copies for the wire that could
    /// not be sent (`wire_send_failed`).
    pub drops: Drops,
    /// The kernel's own ring counters (PACKET_STATISTICS), accumulated.
    pub ring_packets: Counter,
    pub ring_drops: Counter,
    pub ring_freezes: Counter,
    /// Bumped by the worker on every loop iteration (at least every 100 ms): the watchdog's
    /// sign of progress.
    pub heartbeat: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_and_drops_are_by_reason() {
        let (port, parent) = (PortCounters::default(), ParentCounters::default());
        port.rx.count(100);
        port.rx.count(50);
        port.drops.count(DropReason::Mtu);
        parent.drops.count(DropReason::Runt);
        parent.drops.count(DropReason::Runt);
        assert_eq!(port.rx.packets.get(), 2);
        assert_eq!(port.rx.bytes.get(), 150);
        assert_eq!(port.tx.packets.get(), 0);
        assert_eq!(port.drops.nonzero(), vec![(DropReason::Mtu, 1)]);
        assert_eq!(parent.drops.get(DropReason::Runt), 2);
        assert_eq!(parent.drops.total(), 2);
    }
}
