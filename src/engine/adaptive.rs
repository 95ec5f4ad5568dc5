//! `--ring auto`: a worker that reads a TPACKET_V2 ring while traffic is sparse (a wake-up per
//! frame: low latency) and a TPACKET_V3 ring while it is loaded (block batching), both in one
//! `PACKET_FANOUT_CBPF` group whose program ([`RxRing::steer`]) sends every frame to one of them.
//!
//! [`Policy`] decides from what the worker sees; [`Auto`] carries a switch out so that no flow
//! is reordered:
//!
//! * **to V3**: steer to V3 (the kernel waits for an RCU grace period, so every frame already
//!   steered to V2 is in a V2 slot when it returns), read V2 empty, then read V3;
//! * **to V2**: steer to V2, then keep reading V3, without reading V2, until V3's open block is
//!   empty ([`RxRing::open_block_is_empty`]: its last frames are handed over by the block's
//!   retire timer, within two timeouts); frames meanwhile wait in the V2 ring.

use std::time::{Duration, Instant};

use crate::sys::ring::{RxRing, Steering};

/// How often the policy looks at what it counted.
pub const WINDOW: Duration = Duration::from_millis(10);
/// After a switch, the worker stays in the new mode at least this long (bounds flapping).
pub const DWELL: Duration = Duration::from_millis(50);
/// V3 → V2 when a window saw fewer frames per second than this: sparse enough that a wake-up
/// per frame costs little.
pub const SPARSE_PPS: u64 = 20_000;
/// V2 → V3 when the frames found per wake-up averaged at least this over a window (of at least
/// [`LOADED_MIN_FRAMES`] frames): frames queue up anyway, so batching costs no latency.
pub const LOADED_BATCH: u64 = 4;
pub const LOADED_MIN_FRAMES: u64 = 64;
/// V2 → V3 at once when one wake-up found this many frames (a quarter of the default V2 ring),
/// or when the V2 ring dropped frames: it is filling faster than the worker reads it.
pub const BURST: u64 = 64;
/// A switch to V2 stops waiting for V3's open block after this long (the kernel's retire timer
/// hands it over within two timeouts of 1 ms; this only guards against a timer that never fires).
pub const SETTLE_LIMIT: Duration = Duration::from_millis(20);

/// The mode policy: counts what the worker reads and says when to switch.
#[derive(Debug)]
pub struct Policy {
    mode: Steering,
    window_start: Instant,
    /// Frames and non-empty reads in the current window; the largest single read.
    frames: u64,
    reads: u64,
    burst: u64,
    last_switch: Instant,
}

impl Policy {
    pub fn new(mode: Steering, now: Instant) -> Policy {
        Policy {
            mode,
            window_start: now,
            frames: 0,
            reads: 0,
            burst: 0,
            last_switch: now,
        }
    }

    /// One look at the ring in use (a wake-up, draining all it has handed over) found `frames`
    /// frames.
    pub fn saw(&mut self, frames: u64) {
        if frames > 0 {
            self.frames += frames;
            self.reads += 1;
            self.burst = self.burst.max(frames);
        }
    }

    /// The V2 ring dropped `drops` frames since the last look (it was full): as loaded as a
    /// [`BURST`], whatever the ring's size.
    pub fn overran(&mut self, drops: u64) {
        if drops > 0 {
            self.burst = self.burst.max(BURST);
        }
    }

    /// The mode to switch to, if any, as of `now`; the caller then switches and calls
    /// [`Policy::switched`].
    pub fn decide(&mut self, now: Instant) -> Option<Steering> {
        let elapsed = now.saturating_duration_since(self.window_start);
        let dwelt = now.saturating_duration_since(self.last_switch) >= DWELL;
        let want = match self.mode {
            Steering::V2 if dwelt && self.burst >= BURST => Some(Steering::V3),
            _ if elapsed < WINDOW => return None,
            Steering::V2 => (dwelt
                && self.frames >= LOADED_MIN_FRAMES
                && self.frames >= LOADED_BATCH * self.reads)
                .then_some(Steering::V3),
            Steering::V3 => {
                let pps = self.frames * 1_000_000 / elapsed.as_micros().max(1) as u64;
                (dwelt && pps < SPARSE_PPS).then_some(Steering::V2)
            }
        };
        (self.frames, self.reads, self.burst, self.window_start) = (0, 0, 0, now);
        want
    }

    /// The worker now reads `mode`'s ring.
    pub fn switched(&mut self, mode: Steering, now: Instant) {
        *self = Policy::new(mode, now);
    }

    pub fn mode(&self) -> Steering {
        self.mode
    }
}

/// Where a worker of `--ring auto` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Steered to this ring and reading it.
    Steady(Steering),
    /// Steered to V2 since this instant; still reading V3 until its open block is empty. V2 is
    /// not read meanwhile (its fd is out of the worker's epoll).
    ToV2(Instant),
}

/// The V2 half of a steered pair (the V3 half is the worker's ring), and the mode.
#[derive(Debug)]
pub struct Auto {
    pub v2: RxRing,
    pub state: State,
    pub policy: Policy,
}

impl Auto {
    /// A pair just opened by [`RxRing::open_steered`]: steered to V2, but frames that arrived
    /// before the program was set are in V3, so it starts as a switch to V2.
    pub fn new(v2: RxRing, now: Instant) -> Auto {
        Auto {
            v2,
            state: State::ToV2(now),
            policy: Policy::new(Steering::V3, now),
        }
    }

    /// True while V2 must not be read.
    pub fn settling(&self) -> bool {
        matches!(self.state, State::ToV2(_))
    }

    /// A switch to V2 may complete: V3 (read empty by the caller) has nothing left in its open
    /// block, or the wait is over.
    pub fn settled(&self, v3: &RxRing, now: Instant) -> bool {
        match self.state {
            State::ToV2(since) => {
                let empty = v3.open_block_is_empty();
                if !empty && now.saturating_duration_since(since) >= SETTLE_LIMIT {
                    tracing::warn!(
                        "the V3 ring's open block was not handed over within {SETTLE_LIMIT:?}: \
                         reading the V2 ring anyway"
                    );
                    return true;
                }
                empty
            }
            State::Steady(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn sparse_v3_traffic_moves_to_v2_after_the_dwell() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        p.saw(5);
        assert_eq!(p.decide(at(t0, 5)), None, "the window is not over");
        assert_eq!(p.decide(at(t0, 10)), None, "sparse, but within the dwell");
        p.saw(3);
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V2));
    }

    #[test]
    fn busy_v3_traffic_stays() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        for w in 1..=20 {
            // 300 frames per 10 ms = 30 kpps.
            p.saw(300);
            assert_eq!(p.decide(at(t0, 10 * w)), None, "window {w}");
        }
    }

    #[test]
    fn one_frame_per_wakeup_stays_on_v2_however_fast() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        for w in 1..=20 {
            for _ in 0..1000 {
                p.saw(1);
            }
            assert_eq!(p.decide(at(t0, 10 * w)), None, "window {w}");
        }
    }

    #[test]
    fn batches_on_v2_move_to_v3() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        for _ in 0..20 {
            p.saw(5);
        }
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V3));
        // Too few frames for a verdict, whatever their batching.
        p.switched(Steering::V2, at(t0, 60));
        p.saw(8);
        p.saw(8);
        assert_eq!(p.decide(at(t0, 120)), None);
    }

    #[test]
    fn a_burst_moves_to_v3_at_once_but_not_within_the_dwell() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        p.saw(BURST);
        assert_eq!(p.decide(at(t0, 1)), None, "within the dwell");
        p.saw(BURST);
        assert_eq!(p.decide(at(t0, 51)), Some(Steering::V3), "mid-window");
        p.switched(Steering::V3, at(t0, 51));
        assert_eq!(p.mode(), Steering::V3);
    }

    #[test]
    fn an_overrun_v2_ring_moves_to_v3() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        p.saw(2);
        p.overran(0);
        assert_eq!(p.decide(at(t0, 60)), None, "no drop, no batch");
        p.saw(2);
        p.overran(3);
        assert_eq!(p.decide(at(t0, 61)), Some(Steering::V3));
    }
}
