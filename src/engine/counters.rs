//! Counters: per port, for the parent, and drops by reason.
//!
//! One worker thread writes them, any thread reads them. Each counter is an `AtomicU64` written
//! with a plain load + store (single writer, so no locked read-modify-write on the hot path) and
//! read with `Relaxed`. Counters only grow; reading never resets them.
//!
//! With several workers per parent every port and parent has one copy per worker
//! ([`Sharded`]); readers add the copies up ([`Sharded::total`]).

use std::sync::Arc;
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

/// A value that goes up and down, with a single writer. Added up across workers like a counter
/// (so a per-worker 0/1 flag totals to "how many workers").
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Only the owning worker thread may call this.
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl Absorb for Gauge {
    fn absorb(&self, other: &Gauge) {
        self.set(self.get() + other.get());
    }
}

/// Counters that can be added up across workers' copies.
pub trait Absorb: Default {
    /// Adds `other`'s current values to `self` (a reader's private total).
    fn absorb(&self, other: &Self);
}

impl Absorb for Counter {
    fn absorb(&self, other: &Counter) {
        self.add(other.get());
    }
}

impl Absorb for Flow {
    fn absorb(&self, other: &Flow) {
        self.packets.absorb(&other.packets);
        self.bytes.absorb(&other.bytes);
    }
}

impl Absorb for Drops {
    fn absorb(&self, other: &Drops) {
        for (a, b) in self.0.iter().zip(&other.0) {
            a.absorb(b);
        }
    }
}

/// One copy of a set of counters per worker, each written by its worker alone.
#[derive(Debug)]
pub struct Sharded<T>(Box<[Arc<T>]>);

impl<T: Absorb> Sharded<T> {
    /// `n` zeroed copies (at least one).
    pub fn new(n: usize) -> Sharded<T> {
        Sharded((0..n.max(1)).map(|_| Arc::default()).collect())
    }

    /// Worker `i`'s copy.
    pub fn shard(&self, i: usize) -> &Arc<T> {
        &self.0[i]
    }

    /// Every worker's copy, in worker order.
    pub fn shards(&self) -> &[Arc<T>] {
        &self.0
    }

    /// The sum of every worker's copy, as of now.
    pub fn total(&self) -> T {
        let t = T::default();
        for s in self.0.iter() {
            t.absorb(s);
        }
        t
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
        self.drops.get(DropReason::TapQueueFull)
            + self.drops.get(DropReason::TapWriteFailed)
            + self.drops.get(DropReason::NoPeer)
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
    /// written (`tap_queue_full`, `tap_write_failed`, `no_peer`).
    pub drops: Drops,
}

impl Absorb for PortCounters {
    fn absorb(&self, o: &PortCounters) {
        self.rx.absorb(&o.rx);
        self.rx_multicast.absorb(&o.rx_multicast);
        self.tx.absorb(&o.tx);
        self.tx_forwarded.absorb(&o.tx_forwarded);
        self.tx_dropped_frames.absorb(&o.tx_dropped_frames);
        self.drops.absorb(&o.drops);
    }
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
    /// `--ring auto`: switches between the V2 and the V3 ring, both ways.
    pub ring_mode_switches: Counter,
    /// `--ring auto`: steers that failed (the worker stayed in its mode).
    pub ring_steer_failures: Counter,
    /// 1 while the worker reads its V2 ring (`--ring v2`, or `auto` in per-frame mode).
    pub ring_v2: Gauge,
    /// Bumped by the worker on every loop iteration (at least every 100 ms): the watchdog's
    /// sign of progress.
    pub heartbeat: Counter,
}

impl Absorb for ParentCounters {
    fn absorb(&self, o: &ParentCounters) {
        self.rx.absorb(&o.rx);
        self.rx_forwarded.absorb(&o.rx_forwarded);
        self.rx_dropped_frames.absorb(&o.rx_dropped_frames);
        self.tx.absorb(&o.tx);
        self.drops.absorb(&o.drops);
        self.ring_packets.absorb(&o.ring_packets);
        self.ring_drops.absorb(&o.ring_drops);
        self.ring_freezes.absorb(&o.ring_freezes);
        self.ring_mode_switches.absorb(&o.ring_mode_switches);
        self.ring_steer_failures.absorb(&o.ring_steer_failures);
        self.ring_v2.absorb(&o.ring_v2);
    }
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

    #[test]
    fn shards_add_up_field_by_field() {
        let ports: Sharded<PortCounters> = Sharded::new(3);
        ports.shard(0).rx.count(10);
        ports.shard(2).rx.count(5);
        ports.shard(1).tx.count(7);
        ports.shard(1).tx_forwarded.add(1);
        ports.shard(2).drops.count(DropReason::Mtu);
        ports.shard(0).drops.count(DropReason::Mtu);
        ports.shard(0).rx_multicast.add(4);
        ports.shard(2).tx_dropped_frames.add(2);
        let t = ports.total();
        assert_eq!((t.rx.packets.get(), t.rx.bytes.get()), (2, 15));
        assert_eq!((t.tx.packets.get(), t.tx.bytes.get()), (1, 7));
        assert_eq!(t.tx_forwarded.get(), 1);
        assert_eq!(t.tx_dropped_frames.get(), 2);
        assert_eq!(t.rx_multicast.get(), 4);
        assert_eq!(t.drops.nonzero(), vec![(DropReason::Mtu, 2)]);

        let parents: Sharded<ParentCounters> = Sharded::new(2);
        parents.shard(0).ring_packets.add(3);
        parents.shard(1).ring_packets.add(4);
        parents.shard(1).ring_drops.add(1);
        parents.shard(0).ring_freezes.add(2);
        parents.shard(1).rx_forwarded.add(6);
        parents.shard(0).rx_dropped_frames.add(1);
        parents.shard(0).rx.count(1);
        parents.shard(1).tx.count(9);
        parents.shard(1).drops.count(DropReason::Runt);
        let t = parents.total();
        assert_eq!(t.ring_packets.get(), 7);
        assert_eq!(t.ring_drops.get(), 1);
        assert_eq!(t.ring_freezes.get(), 2);
        assert_eq!(t.rx_forwarded.get(), 6);
        assert_eq!(t.rx_dropped_frames.get(), 1);
        assert_eq!((t.rx.packets.get(), t.tx.bytes.get()), (1, 9));
        assert_eq!(t.drops.get(DropReason::Runt), 1);
        // A sum is a snapshot: later counts do not change it.
        parents.shard(0).ring_packets.add(1);
        assert_eq!(t.ring_packets.get(), 7);
        assert!(
            Sharded::<Counter>::new(0).total().get() == 0,
            "at least one shard"
        );
    }
}
