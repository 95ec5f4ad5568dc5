//! `--ring auto`: a worker that reads a TPACKET_V2 ring while traffic is sparse (a wake-up per
//! frame: low latency) and a TPACKET_V3 ring while it is loaded (block batching), both in one
//! `PACKET_FANOUT_CBPF` group whose program ([`RxRing::steer`]) sends every frame to one of them.
//!
//! [`Policy`] decides from what the worker sees; [`Auto`] carries a switch out so that no flow
//! is reordered. A steer waits for an RCU grace period in the kernel (5 to 16 ms), so the
//! [`Steerer`] thread makes it while the worker keeps forwarding with the old reading rules, and
//! tells the worker through an eventfd in its epoll when it has returned; by then every frame the
//! old program steered is in its ring:
//!
//! * **to V3**: while the steer runs, read V2 and not V3 (V3 leaves the epoll); once it has
//!   returned, read V2 empty, then read V3;
//! * **to V2**: while the steer runs, read V3 and not V2 (V2 is out of the epoll); once it has
//!   returned, keep reading V3 until its open block is empty
//!   ([`RxRing::open_block_is_empty`]: its last frames are handed over by the block's retire
//!   timer, within two timeouts), then read V2.
//!
//! A steer that fails leaves the program as it was: the worker goes back to the old mode's rules.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sys::ring::{RxRing, SteerHandle, Steering};
use crate::wire::ring_format::RingFrame;

/// How often the policy looks at what it counted.
pub const WINDOW: Duration = Duration::from_millis(10);
/// After a switch, the worker stays in the new mode at least this long (bounds flapping).
pub const DWELL: Duration = Duration::from_millis(50);
/// V3 → V2 when a window saw fewer small frames ([`small`]) per second than this: few enough
/// that a wake-up per frame costs little. A bulk TCP stream's ACKs come at about 23 000 per
/// second at 14 Gbit/s here, and on V3 each waits for its block's retire timer (docs/performance.md,
/// "Super-frames stay on V2"), so this sits well above them.
pub const SPARSE_PPS: u64 = 40_000;
/// V2 → V3 (by batching) needs a window this many times over [`SPARSE_PPS`]: between the two,
/// the worker stays in whichever mode it is (hysteresis).
pub const LOADED_FACTOR: u64 = 2;
/// V2 → V3 when the small frames of a loaded window queued up: found at least this many per
/// wake-up on average (over at least [`LOADED_MIN_FRAMES`] frames), or [`BURST`] in one
/// wake-up; frames queue up anyway, so batching costs no latency. (At once, loaded or not, when
/// the V2 ring dropped frames: it fills faster than the worker reads it.)
pub const LOADED_BATCH: u64 = 4;
pub const LOADED_MIN_FRAMES: u64 = 64;
/// Frames found in one wake-up that count as queued up (the V2 ring holds 8192).
pub const BURST: u64 = 64;
/// A switch to V2 stops waiting for V3's open block after this long (the kernel's retire timer
/// hands it over within two timeouts of 1 ms; this only guards against a timer that never fires).
pub const SETTLE_LIMIT: Duration = Duration::from_millis(20);

/// Whether the policy weighs frame `f`: one that fits a V2 slot ([`crate::sys::ring::V2_SLOT`]).
/// Larger frames (GSO super-frames, jumbo frames) do not count either way. A V3 block gains them
/// nothing (the copy per byte dominates, and a 256 KiB block holds three super-frames) and costs
/// each one the wait for its block; on V2 such a frame waits whole in the socket's queue and is
/// read at once. Measured: one TCP stream through `--ring v3` 8.3 (wire → child) and 9.3
/// (child → wire) Gbit/s, through `--ring v2` 10.4–11.2 and 13.7–13.8.
pub fn small(f: &RingFrame<'_>) -> bool {
    f.wire_len() <= crate::sys::ring::V2_SLOT as usize
}

/// The mode policy: counts what the worker reads and says when to switch.
#[derive(Debug)]
pub struct Policy {
    mode: Steering,
    window_start: Instant,
    /// Small frames ([`small`]) and the reads that found any in the current window; the most
    /// in a single read.
    frames: u64,
    reads: u64,
    burst: u64,
    /// The V2 ring dropped frames since the last switch.
    overrun: bool,
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
            overrun: false,
            last_switch: now,
        }
    }

    /// One look at the ring in use (a wake-up, draining all it has handed over) found `frames`
    /// small frames ([`small`]).
    pub fn saw(&mut self, frames: u64) {
        if frames > 0 {
            self.frames += frames;
            self.reads += 1;
            self.burst = self.burst.max(frames);
        }
    }

    /// The V2 ring dropped `drops` frames since the last look (it was full).
    pub fn overran(&mut self, drops: u64) {
        self.overrun |= drops > 0;
    }

    /// The mode to switch to, if any, as of `now`; the caller then switches and calls
    /// [`Policy::switched`].
    pub fn decide(&mut self, now: Instant) -> Option<Steering> {
        let elapsed = now.saturating_duration_since(self.window_start);
        let dwelt = now.saturating_duration_since(self.last_switch) >= DWELL;
        let want = match self.mode {
            Steering::V2 if dwelt && self.overrun => Some(Steering::V3),
            _ if elapsed < WINDOW => return None,
            Steering::V2 => {
                let queued = self.burst >= BURST
                    || (self.frames >= LOADED_MIN_FRAMES
                        && self.frames >= LOADED_BATCH * self.reads);
                (dwelt && queued && self.over(elapsed, LOADED_FACTOR)).then_some(Steering::V3)
            }
            Steering::V3 => (dwelt && !self.over(elapsed, 1)).then_some(Steering::V2),
        };
        (self.frames, self.reads, self.burst) = (0, 0, 0);
        self.window_start = now;
        want
    }

    /// True when the window, `elapsed` long, reached `factor` times [`SPARSE_PPS`].
    fn over(&self, elapsed: Duration, factor: u64) -> bool {
        let micros = u64::try_from(elapsed.as_micros().max(1)).unwrap_or(u64::MAX);
        self.frames * 1_000_000 / micros >= factor * SPARSE_PPS
    }

    /// The worker now reads `mode`'s ring.
    pub fn switched(&mut self, mode: Steering, now: Instant) {
        *self = Policy::new(mode, now);
    }

    #[cfg(test)]
    pub fn mode(&self) -> Steering {
        self.mode
    }
}

/// Where a worker of `--ring auto` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Steered to this ring and reading it.
    Steady(Steering),
    /// The [`Steerer`] is steering to this ring and has not returned: the worker still reads as
    /// before (to V3: V2 and not V3, which is out of its epoll; to V2: V3 and not V2).
    Steering(Steering),
    /// Steered to V2 since this instant; still reading V3 until its open block is empty. V2 is
    /// not read meanwhile (its fd is out of the worker's epoll).
    ToV2(Instant),
}

/// The V2 half of a steered pair (the V3 half is the worker's ring), the mode, and the thread
/// that steers.
#[derive(Debug)]
pub struct Auto {
    pub v2: RxRing,
    pub state: State,
    pub policy: Policy,
    pub steerer: Steerer,
}

impl Auto {
    /// A pair just opened by [`RxRing::open_steered`]: steered to V2, but frames that arrived
    /// before the program was set are in V3, so it starts as a switch to V2. `name` names the
    /// steering thread.
    pub fn new(v2: RxRing, name: String, now: Instant) -> io::Result<Auto> {
        let steerer = Steerer::spawn(v2.steer_handle()?, name)?;
        Ok(Auto {
            v2,
            state: State::ToV2(now),
            policy: Policy::new(Steering::V3, now),
            steerer,
        })
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
            State::Steady(_) | State::Steering(_) => false,
        }
    }
}

/// What the steering thread reports: the ring it steered to, and how long that took.
pub type Steered = (Steering, io::Result<Duration>);

/// A thread that steers a pair's group on request ([`Steerer::request`]) and reports each steer
/// once it has returned ([`Steerer::finished`]), waking the worker through an eventfd
/// ([`AsFd`]) in its epoll. It holds a dup of the ring's socket and nothing else; it starts by
/// dropping to the engine's final capabilities (as every long-lived thread does), and a steer
/// made without them is reported as failed. Dropping it ends and joins the thread.
#[derive(Debug)]
pub struct Steerer {
    requests: Option<Sender<Steering>>,
    results: Receiver<Steered>,
    done: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Steerer {
    pub fn spawn(handle: SteerHandle, name: String) -> io::Result<Steerer> {
        // One steer at a time: the worker asks again only after the last one finished.
        let (requests, asked) = crossbeam_channel::bounded::<Steering>(1);
        let (report, results) = crossbeam_channel::bounded(1);
        let done = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let wake = Arc::clone(&done);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let settled = crate::sys::caps::settle();
            for to in asked {
                let started = Instant::now();
                let result = match &settled {
                    Ok(()) => handle.steer(to).map(|()| started.elapsed()),
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("the steering thread could not drop its capabilities: {e}"),
                    )),
                };
                if report.send((to, result)).is_err() {
                    return;
                }
                let _ = wake.write(1);
            }
        })?;
        Ok(Steerer {
            requests: Some(requests),
            results,
            done,
            thread: Some(thread),
        })
    }

    /// Asks for a steer to `to`; the thread is idle (the last steer was [`Steerer::finished`]).
    pub fn request(&self, to: Steering) {
        if let Some(r) = &self.requests {
            // Fails only if the thread is gone, which only dropping the steerer does.
            let _ = r.try_send(to);
        }
    }

    /// The steer asked for, once it has returned (when the eventfd is readable).
    pub fn finished(&self) -> Option<Steered> {
        let _ = self.done.read();
        self.results.try_recv().ok()
    }
}

impl AsFd for Steerer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }
}

impl Drop for Steerer {
    fn drop(&mut self) {
        // Closing the requests ends the thread's loop (after the steer it may be making).
        self.requests = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the ring steering thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// Whether [`small`] counts a frame of `len` bytes, read from a block laid out as the
    /// kernel lays one out.
    fn counts(len: usize) -> bool {
        use crate::wire::ring_format::{fake_v3_block, frames_in};
        let f = vec![0u8; crate::wire::vnet::VNET_HDR_LEN + len];
        let b = fake_v3_block(&[&f], 256 * 1024).expect("one frame fits");
        small(&frames_in(&b).next().expect("one frame"))
    }

    /// `n` wake-ups that found `frames` small frames each.
    fn see(p: &mut Policy, n: u64, frames: u64) {
        for _ in 0..n {
            p.saw(frames);
        }
    }

    #[test]
    fn sparse_v3_traffic_moves_to_v2_after_the_dwell() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        see(&mut p, 1, 5);
        assert_eq!(p.decide(at(t0, 5)), None, "the window is not over");
        assert_eq!(p.decide(at(t0, 10)), None, "sparse, but within the dwell");
        see(&mut p, 1, 3);
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V2));
    }

    #[test]
    fn busy_v3_traffic_stays() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        for w in 1..=20 {
            // 500 frames per 10 ms = 50 kpps.
            see(&mut p, 1, 500);
            assert_eq!(p.decide(at(t0, 10 * w)), None, "window {w}");
        }
    }

    #[test]
    fn a_tcp_acks_rate_leaves_v3() {
        // 23 kpps of ACKs (one TCP stream at 14 Gbit/s, the other way) must not stay on V3.
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        see(&mut p, 1, 230);
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V2));
    }

    #[test]
    fn super_frames_count_for_nothing() {
        // Bulk TCP: GSO super-frames, queued 4 per wake-up, counted by `small` as none: V3
        // leaves after the dwell, V2 never goes.
        assert!(!counts(65_226) && !counts(9000));
        assert!(counts(60) && counts(1514) && counts(2048));
        let sf = u64::from(counts(65_226));
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V3, t0);
        see(&mut p, 40, sf * 4);
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V2));
        let mut p = Policy::new(Steering::V2, t0);
        for w in 6..=20 {
            see(&mut p, 40, sf * 4);
            assert_eq!(p.decide(at(t0, 10 * w)), None, "window {w}");
        }
    }

    #[test]
    fn one_frame_per_wakeup_stays_on_v2_however_fast() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        for w in 1..=20 {
            see(&mut p, 2000, 1);
            assert_eq!(p.decide(at(t0, 10 * w)), None, "window {w}");
        }
    }

    #[test]
    fn loaded_batches_on_v2_move_to_v3() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        // 60 ms at 80 kpps (twice the sparse limit), 5 frames per wake-up.
        see(&mut p, 960, 5);
        assert_eq!(p.decide(at(t0, 60)), Some(Steering::V3));
        // Too few frames for a verdict, whatever their batching.
        p.switched(Steering::V2, at(t0, 60));
        see(&mut p, 2, 8);
        assert_eq!(p.decide(at(t0, 120)), None);
    }

    #[test]
    fn batches_between_the_limits_stay_where_they_are() {
        // 60 kpps, 5 frames per wake-up: loaded for V3 (it stays), not enough to leave V2.
        let t0 = Instant::now();
        for mode in [Steering::V2, Steering::V3] {
            let mut p = Policy::new(mode, t0);
            for w in 6..=20 {
                see(&mut p, if w == 6 { 720 } else { 120 }, 5);
                assert_eq!(p.decide(at(t0, 10 * w)), None, "{mode:?}, window {w}");
            }
        }
    }

    #[test]
    fn a_burst_counts_as_queueing_only_when_loaded() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        // A stalled worker finds 64 ACKs at once, in a sparse stream (8 kpps): stays.
        see(&mut p, 1, BURST);
        see(&mut p, 400, 1);
        assert_eq!(p.decide(at(t0, 60)), None, "sparse");
        // The same burst in a loaded window (86 kpps) otherwise one frame per wake-up: moves.
        see(&mut p, 1, BURST);
        see(&mut p, 800, 1);
        assert_eq!(p.decide(at(t0, 70)), Some(Steering::V3));
        p.switched(Steering::V3, at(t0, 70));
        assert_eq!(p.mode(), Steering::V3);
    }

    #[test]
    fn an_overrun_v2_ring_moves_to_v3() {
        let t0 = Instant::now();
        let mut p = Policy::new(Steering::V2, t0);
        see(&mut p, 1, 2);
        p.overran(0);
        assert_eq!(p.decide(at(t0, 60)), None, "no drop, no batch");
        p.overran(3);
        assert_eq!(p.decide(at(t0, 61)), Some(Steering::V3), "mid-window");
        p.switched(Steering::V2, at(t0, 61));
        p.overran(3);
        assert_eq!(p.decide(at(t0, 71)), None, "within the dwell");
    }

    /// Root: the steering thread steers a real pair and reports it through its eventfd; a
    /// socket in no fanout group cannot be steered, which it reports as a failure.
    #[test]
    fn the_steerer_reports_done_and_failed_steers() {
        use crate::sys::RingConfig;
        use crate::sys::testns::{NetNs, ifindex};
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

        let wait = |s: &Steerer| {
            let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
            assert_eq!(
                poll(&mut fds, PollTimeout::from(5000u16)),
                Ok(1),
                "no report"
            );
            s.finished().expect("a report after the eventfd")
        };
        let ns = NetNs::new();
        ns.veth("va", "vb");
        ns.run(|| {
            let (_v3, v2) =
                RxRing::open_steered(ifindex("va"), RingConfig::DEFAULT, RingConfig::V2)
                    .expect("steered pair");
            let s = Steerer::spawn(v2.steer_handle().unwrap(), "test-steer".into()).unwrap();
            assert!(s.finished().is_none(), "nothing asked yet");
            for to in [Steering::V3, Steering::V2] {
                s.request(to);
                let (done, result) = wait(&s);
                assert_eq!(done, to);
                assert!(result.is_ok(), "{result:?}");
            }
            let lone = RxRing::open(ifindex("vb"), RingConfig::DEFAULT).expect("ring on vb");
            let s = Steerer::spawn(lone.steer_handle().unwrap(), "test-steer".into()).unwrap();
            s.request(Steering::V3);
            let (_, result) = wait(&s);
            assert!(result.is_err(), "a ring in no group was steered");
        });
    }
}
