//! The worker thread: epoll over the parent's ring, every port's device (TAP, attached netdev,
//! stream socket) and a wake-up eventfd.
//!
//! It owns the I/O objects (ring, TX socket, TAPs) and the current table. The control plane talks
//! to it only through [`Command`]s on a channel, followed by a write to the eventfd, so the
//! forwarding path never takes a lock: a new table is picked up between batches.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use hashbrown::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::adaptive::{self, Auto, State};
use super::counters::{ParentCounters, PortCounters};
use super::deliver::{self, PortIo, ToWire};
use super::dev::{PortDev, Recv};
use super::observe::{ObserverCache, Observers};
use super::priority::{Boost, WorkerPriority};
use crate::forward::{PortId, PortTable};
use crate::sys::ring::{RingVersion, RxRing, Steering};
use crate::sys::tx::{MmsgScratch, TxSocket};
use crate::wire::vlan::{Claim, TAG_HEADROOM, VidSet, tag_in_place};

/// One port as the worker holds it. `key` is stable for the port's life; its `PortId` is its
/// position in the current table and may change when ports come and go.
#[derive(Debug)]
pub struct PortHandle {
    pub key: u64,
    pub dev: Arc<PortDev>,
    /// Whether this worker reads the device (its own TAP queue; a shared device is read by
    /// worker 0 only, and written by all).
    pub reads: bool,
    pub counters: Arc<PortCounters>,
}

impl PortIo for PortHandle {
    fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.dev.write_frame(iov)
    }

    fn counters(&self) -> &PortCounters {
        &self.counters
    }
}

/// A table and the ports it indexes, aligned: `ports[id]` is the port `PortId(id)`.
#[derive(Clone, Debug)]
pub struct PortSet {
    pub table: Arc<PortTable>,
    pub ports: Arc<[PortHandle]>,
}

/// What the control plane can ask of the worker.
#[derive(Debug)]
pub enum Command {
    /// Forward with this table and these ports from the next frame on. Ports that are no longer
    /// in the set are released (their TAP closes when the control plane lets go too).
    SetPorts(PortSet),
    /// Mirror the parent's carrier onto every TAP (`TUNSETCARRIER`).
    SetCarrier(bool),
    Stop,
}

/// Frames read from one TAP before the worker looks at the others (fairness).
const TAP_BUDGET: usize = 64;
/// Frames forwarded from a ring before the worker goes back to its loop (its ports, the ring-mode
/// policy, the ring's statistics, commands), checked between blocks. Without it a flood that
/// hands frames over as fast as the worker reads them kept the worker in one ring: measured
/// under trafgen on both vCPUs, a V2 ring read for seconds with no port read, no statistics and
/// no switch to V3 (1.45 million ring drops), until the flood stopped.
const RING_BUDGET: u64 = 1024;
/// More frames than a full ring holds (8192 V2 slots; 64 V3 blocks of at most about 2300
/// small frames): what the worker reads from a ring when it stops, so that a flood still
/// arriving cannot keep it from stopping.
const RING_HELD: u64 = 1 << 18;
/// How often the kernel's ring statistics are folded into the counters.
const STATS_EVERY: Duration = Duration::from_millis(100);
/// A TAP read holds a 64 KiB GSO frame, its virtio-net header and an inline VLAN tag.
const READ_BUF: usize = 65_536 + 10 + 4 + 64;
/// Frames sent to the wire with one `sendmmsg`.
const WIRE_BATCH: usize = 32;

const TOKEN_RING: u64 = 0;
const TOKEN_WAKE: u64 = 1;
/// `--ring auto`: the V2 half of the steered pair.
const TOKEN_V2: u64 = 2;
/// `--ring auto`: the steering thread finished a steer.
const TOKEN_STEERED: u64 = 3;
const TOKEN_TAP0: u64 = 4;

/// Frames waiting for the wire, still in the buffers they were read into from their TAPs.
/// Sent with one `sendmmsg` when full and at the end of every loop iteration.
#[derive(Debug)]
struct WireBatch {
    /// Each read lands at [`TAG_HEADROOM`], so that an emulated sub-interface's tag can be put in
    /// front of it in place.
    slots: Vec<Vec<u8>>,
    /// (sender, length as read, what the send decides) of the frames in `slots[..queued.len()]`.
    queued: Vec<(PortId, usize, ToWire)>,
    /// `sendmmsg`'s headers, reused: a flush allocates nothing.
    scratch: MmsgScratch,
    /// The VID every frame is tagged with on its way out (the parent is an emulated 802.1Q
    /// sub-interface).
    vid: Option<u16>,
}

impl WireBatch {
    fn new(slots: usize, vid: Option<u16>) -> WireBatch {
        WireBatch {
            slots: (0..slots)
                .map(|_| vec![0u8; TAG_HEADROOM + READ_BUF])
                .collect(),
            queued: Vec::with_capacity(slots),
            scratch: MmsgScratch::default(),
            vid,
        }
    }

    /// Where the next frame is read: the next free slot, behind its headroom.
    fn next_slot(&mut self) -> &mut [u8] {
        &mut self.slots[self.queued.len()][TAG_HEADROOM..]
    }

    /// Queues the frame of `n` bytes just read into [`WireBatch::next_slot`], tagged when the
    /// parent is a sub-interface.
    fn push(&mut self, id: PortId, n: usize, how: ToWire) {
        if let Some(vid) = self.vid {
            let slot = &mut self.slots[self.queued.len()];
            // A read shorter than a vnet header and two MACs was refused before (runt).
            let _ = tag_in_place(&mut slot[..TAG_HEADROOM + n], vid);
        }
        self.queued.push((id, n, how));
    }

    /// The bytes to send for a queued frame of `n` bytes in `slot`.
    fn frame(vid: Option<u16>, slot: &[u8], n: usize) -> &[u8] {
        match vid {
            Some(_) => &slot[..TAG_HEADROOM + n],
            None => &slot[TAG_HEADROOM..TAG_HEADROOM + n],
        }
    }

    /// Sends every queued frame and counts each outcome; a failed frame is skipped, the rest
    /// are still sent. `ports` must be the set the frames were queued under.
    fn flush(&mut self, wire: &TxSocket, parent: &ParentCounters, ports: &[PortHandle]) {
        let mut start = 0;
        let vid = self.vid;
        while start < self.queued.len() {
            let frames = self.queued[start..]
                .iter()
                .zip(&self.slots[start..])
                .map(|((_, n, _), s)| WireBatch::frame(vid, s, *n));
            match wire.send_batch(frames, &mut self.scratch) {
                Ok(k) if k > 0 => {
                    for (id, n, how) in &self.queued[start..start + k] {
                        deliver::wire_sent(parent, &ports[id.index()].counters, *n, *how, true);
                    }
                    start += k;
                }
                result => {
                    let (id, n, how) = self.queued[start];
                    if let Err(e) = result {
                        tracing::debug!("sending on the parent failed: {e}");
                    }
                    deliver::wire_sent(parent, &ports[id.index()].counters, n, how, false);
                    start += 1;
                }
            }
        }
        self.queued.clear();
    }
}

/// The control plane's end of a parent's workers: one per ring of its fanout group, each with its
/// own queue of every TAP and its own copy of the counters.
#[derive(Debug)]
pub struct WorkerGroup(Vec<WorkerHandle>);

impl WorkerGroup {
    pub fn new(workers: Vec<WorkerHandle>) -> WorkerGroup {
        WorkerGroup(workers)
    }

    /// Sends worker `i` the command `c(i)`.
    pub fn send_each(&self, mut c: impl FnMut(usize) -> Command) {
        for (i, w) in self.0.iter().enumerate() {
            w.send(c(i));
        }
    }

    /// Stops every worker; the first failure is returned, after all have stopped.
    pub fn stop(self) -> io::Result<()> {
        let mut result = Ok(());
        for w in self.0 {
            let r = w.stop();
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// The scheduling the workers applied to themselves: one text when they all agree, else
    /// each distinct one, separated by `; `.
    pub fn priority(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for w in &self.0 {
            if !seen.contains(&w.priority.as_str()) {
                seen.push(&w.priority);
            }
        }
        seen.join("; ")
    }

    /// True when any worker has stopped by itself (it failed).
    pub fn is_finished(&self) -> bool {
        self.0.iter().any(WorkerHandle::is_finished)
    }
}

/// The control plane's end of a running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    thread: JoinHandle<io::Result<()>>,
    /// The scheduling the worker applied to itself at start, e.g. `fifo:1`, or
    /// `nice:-10 (fifo:1 refused: EPERM)` ([`WorkerPriority::apply`]).
    priority: String,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, c: Command) {
        // The worker only stops receiving after a Stop or an I/O failure, which `stop` reports.
        let _ = self.commands.send(c);
        let _ = self.wake.write(1);
    }

    /// Stops the worker and returns its result.
    pub fn stop(self) -> io::Result<()> {
        self.send(Command::Stop);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the worker thread panicked")))
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Everything the worker owns.
#[derive(Debug)]
pub struct Worker {
    /// The parent's ring; with `--ring auto` the V3 half of the steered pair.
    pub ring: RxRing,
    /// `--ring auto`: the V2 half and the mode.
    pub auto: Option<Auto>,
    pub wire: TxSocket,
    pub set: PortSet,
    pub counters: Arc<ParentCounters>,
    /// The parent's carrier, mirrored onto every TAP (new ones included).
    pub carrier: bool,
    /// Followers (`trace --follow`, `capture`), shared with the daemon.
    pub observers: Arc<Observers>,
    /// This worker's copy of the followers' list.
    pub observer_cache: ObserverCache,
    /// The scheduling the worker asks for itself when it starts (`run --worker-priority`).
    pub priority: WorkerPriority,
    /// Set by the first worker of the engine to log that its priority was refused.
    pub priority_warned: Arc<AtomicBool>,
    /// The VIDs of the emulated 802.1Q sub-interfaces on this parent's device: when the parent
    /// is the device itself, their frames are theirs, not its.
    pub vids: Arc<VidSet>,
    /// `run --spin-us`: after a round that had something to do, poll (`epoll_wait` without a
    /// timeout) for up to this long before sleeping again. Zero: always sleep.
    pub spin: Duration,
}

/// How reading a port's device ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// Nothing more to read now.
    Empty,
    /// [`TAP_BUDGET`] frames read; the rest waits for the next round (epoll is level-triggered).
    Budget,
    /// The device is gone for good ([`is_detached`]).
    Dead,
}

/// The error of a TAP fd whose device is gone (deleted in its namespace: `tun_detach_all`):
/// every read fails with it, and epoll reports the fd ready for ever.
fn is_detached(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBADFD)
}

/// The worker's epoll, with each port's fd registered under its stable key.
struct Poller {
    epoll: Epoll,
    /// Port key → its position in the current set.
    ids: HashMap<u64, PortId>,
    /// Ports whose device can no longer be read (its TAP was deleted under it): out of the
    /// epoll, so that a dead fd, always ready, cannot make the worker spin.
    dead: Vec<u64>,
}

impl Poller {
    /// Registers the ports new in `set`, forgets those gone, and maps keys to positions.
    fn follow(&mut self, old: &[PortHandle], set: &[PortHandle]) -> io::Result<()> {
        for p in old
            .iter()
            .filter(|p| p.reads && !set.iter().any(|n| n.key == p.key))
        {
            if !self.dead.contains(&p.key) {
                self.epoll.delete(p.dev.as_fd())?;
            }
        }
        self.dead.retain(|k| set.iter().any(|n| n.key == *k));
        for p in set
            .iter()
            .filter(|p| p.reads && !self.ids.contains_key(&p.key))
        {
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TAP0 + p.key);
            self.epoll.add(p.dev.as_fd(), ev)?;
        }
        self.ids = set
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key, PortId::nth(i)))
            .collect();
        Ok(())
    }

    /// Stops reading a port whose device failed for good.
    fn bury(&mut self, p: &PortHandle) -> io::Result<()> {
        if !self.dead.contains(&p.key) {
            self.dead.push(p.key);
            self.epoll.delete(p.dev.as_fd())?;
        }
        Ok(())
    }
}

impl Worker {
    /// Starts the worker on its own thread, named after its parent and index, pinned to `core`
    /// when given.
    pub fn spawn(
        self,
        name: String,
        core: Option<core_affinity::CoreId>,
    ) -> io::Result<WorkerHandle> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let w = Arc::clone(&wake);
        let (applied_tx, applied_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(c) = core
                && !core_affinity::set_for_current(c)
            {
                tracing::warn!("pinning the worker to CPU {} failed", c.id);
            }
            // By the thread itself, so that it is this thread's only, and before `run` settles
            // its capabilities.
            let (applied, boost) = self.priority.apply(&self.priority_warned);
            let _ = applied_tx.send(applied);
            self.run(&rx, &w, boost)
        })?;
        // The thread sends first thing; a closed channel means it died before.
        let priority = applied_rx
            .recv()
            .unwrap_or_else(|_| "unknown (the worker ended at start)".to_string());
        Ok(WorkerHandle {
            commands: tx,
            wake,
            thread,
            priority,
        })
    }

    /// `boost`: `--worker-priority loaded`'s nice value, taken while the worker reads a V3 ring.
    fn run(
        mut self,
        commands: &Receiver<Command>,
        wake: &EventFd,
        mut boost: Option<Boost>,
    ) -> io::Result<()> {
        crate::sys::caps::settle()?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            self.ring.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_RING),
        )?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        let mut poller = Poller {
            epoll,
            ids: HashMap::new(),
            dead: Vec::new(),
        };
        poller.follow(&[], &self.set.ports)?;
        if let Some(a) = &self.auto {
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_STEERED);
            poller.epoll.add(a.steerer.as_fd(), ev)?;
        }
        if self.ring.config().version == RingVersion::V2 {
            self.counters.ring_v2.set(1);
        }
        let mut events = vec![EpollEvent::empty(); 64];
        let vid = self.set.table.parent().vlan.as_ref().map(|v| v.vid);
        let mut batch = WireBatch::new(WIRE_BATCH, vid);
        let mut last_stats = Instant::now();
        // The last round with events (`--spin-us`): until `spin` after it, the worker polls.
        let mut active = Instant::now();
        loop {
            self.counters.heartbeat.add(1);
            // While a switch to V2 waits for V3's open block, look again every millisecond.
            let mut timeout = match &self.auto {
                Some(a) if a.settling() => 1u16,
                _ => 100,
            };
            // Followers get what waited long enough; an idle worker wakes for the rest.
            if let Some(due) = self.observer_cache.flush_due() {
                let ms = due.as_micros().div_ceil(1000).max(1);
                timeout = timeout.min(u16::try_from(ms).unwrap_or(u16::MAX));
            }
            if !self.spin.is_zero() && active.elapsed() < self.spin {
                timeout = 0;
            }
            let n = match poller.epoll.wait(&mut events, EpollTimeout::from(timeout)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            if n > 0 && !self.spin.is_zero() {
                active = Instant::now();
            }
            let (mut woken, mut steered) = (false, false);
            for ev in &events[..n] {
                match ev.data() {
                    t @ (TOKEN_RING | TOKEN_V2) => {
                        let v2 = t == TOKEN_V2;
                        if ev.events().contains(EpollFlags::EPOLLERR) {
                            self.take_ring_error(v2);
                        }
                        let small = self.drain_ring(v2, RING_BUDGET);
                        if let Some(a) = &mut self.auto {
                            a.policy.saw(small);
                        }
                    }
                    TOKEN_WAKE => woken = true,
                    TOKEN_STEERED => steered = true,
                    t => {
                        if let Some(&id) = poller.ids.get(&(t - TOKEN_TAP0))
                            && self.drain_tap(id, &mut batch) == Drained::Dead
                        {
                            poller.bury(&self.set.ports[id.index()])?;
                        }
                    }
                }
            }
            if !batch.queued.is_empty() {
                batch.flush(&self.wire, &self.counters, &self.set.ports);
            }
            // After the frames read by the old rules: the steer's end changes them.
            if steered {
                self.steered(&poller.epoll)?;
            }
            self.adapt(&poller.epoll)?;
            if let Some(b) = &mut boost {
                // Loaded while reading V3 (a system call only when that changes).
                b.set(self.counters.ring_v2.get() == 0);
            }
            // Commands last: queued frames were counted against the set they were read under.
            if woken {
                let _ = wake.read();
                if !self.apply_commands(commands, &mut poller)? {
                    // What the rings already handed over is forwarded and counted, so that the
                    // kernel's count and ours agree.
                    self.drain_ring(false, RING_HELD);
                    self.drain_ring(true, RING_HELD);
                    self.observer_cache.flush();
                    self.fold_ring_stats();
                    return Ok(());
                }
            }
            // With `--ring auto`, every policy window: the V2 ring's drops are a sign of load.
            let stats_every = match self.auto {
                Some(_) => adaptive::WINDOW,
                None => STATS_EVERY,
            };
            if last_stats.elapsed() >= stats_every {
                self.fold_ring_stats();
                last_stats = Instant::now();
            }
        }
    }

    /// Applies pending commands; false means stop.
    fn apply_commands(
        &mut self,
        commands: &Receiver<Command>,
        poller: &mut Poller,
    ) -> io::Result<bool> {
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::SetPorts(set) => {
                    poller.follow(&self.set.ports, &set.ports)?;
                    for p in set
                        .ports
                        .iter()
                        .filter(|p| !self.set.ports.iter().any(|o| o.key == p.key))
                    {
                        self.set_carrier(&p.dev);
                    }
                    self.set = set;
                }
                Command::SetCarrier(on) => {
                    self.carrier = on;
                    for p in self.set.ports.iter() {
                        self.set_carrier(&p.dev);
                    }
                }
                Command::Stop => return Ok(false),
            }
        }
        Ok(true)
    }

    fn set_carrier(&self, dev: &PortDev) {
        if let Err(e) = dev.set_carrier(self.carrier) {
            tracing::warn!(port = dev.name(), "setting carrier failed: {e}");
        }
    }

    /// Forwards what the ring (`v2`: the V2 half of an auto pair, if there is one; else the
    /// worker's ring) has handed over, whole blocks until `limit` frames or more: everything when
    /// the ring gets no more frames (a switch's old ring), [`RING_HELD`] when the worker stops,
    /// else [`RING_BUDGET`]. Returns
    /// how many of those frames fit a V2 slot (what the ring-mode policy weighs,
    /// [`adaptive::small`]).
    fn drain_ring(&mut self, v2: bool, limit: u64) -> u64 {
        let Worker {
            ring,
            auto,
            set,
            counters,
            observers,
            observer_cache,
            vids,
            ..
        } = self;
        let claim = match &set.table.parent().vlan {
            Some(v) => Claim::Vid(v.vid),
            None => Claim::Lower(vids),
        };
        let ring = match auto {
            Some(a) if v2 => &mut a.v2,
            _ if v2 => return 0,
            _ => ring,
        };
        let (mut small, mut frames) = (0, 0);
        while frames < limit
            && let Some(block) = ring.next_block()
        {
            frames += u64::from(block.num_pkts());
            // One relaxed load per block when nobody follows.
            let obs = observers.batch(observer_cache, &set.table.parent().name);
            let frames = block
                .frames()
                .inspect(|f| small += u64::from(adaptive::small(f)));
            deliver::from_parent_block(
                &set.table,
                counters,
                &set.ports,
                frames,
                claim,
                obs.as_ref(),
            );
        }
        small
    }

    /// `--ring auto`: completes a switch to V2 once V3 is empty, or asks the policy and starts a
    /// switch (module `adaptive` says why in this order).
    fn adapt(&mut self, epoll: &Epoll) -> io::Result<()> {
        let Some(state) = self.auto.as_ref().map(|a| a.state) else {
            return Ok(());
        };
        let now = Instant::now();
        match state {
            State::ToV2(_) => {
                let small = self.drain_ring(false, u64::MAX);
                let auto = self.auto.as_mut().expect("checked above");
                auto.policy.saw(small);
                if auto.settled(&self.ring, now) {
                    epoll.add(
                        auto.v2.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_V2),
                    )?;
                    auto.state = State::Steady(Steering::V2);
                    auto.policy.switched(Steering::V2, now);
                    self.counters.ring_v2.set(1);
                    self.drain_ring(true, RING_BUDGET);
                }
            }
            State::Steering(_) => {}
            State::Steady(_) => {
                let auto = self.auto.as_mut().expect("checked above");
                let Some(to) = auto.policy.decide(now) else {
                    return Ok(());
                };
                if to == Steering::V3 {
                    // Frames the new program sends to V3 wait there until V2 is read empty.
                    epoll.delete(self.ring.as_fd())?;
                }
                auto.steerer.request(to);
                auto.state = State::Steering(to);
            }
        }
        Ok(())
    }

    /// `--ring auto`: the steering thread reports the steer `adapt` asked for. Done: every frame
    /// the old program steered is in its ring, so the switch goes on. Failed: the program is
    /// unchanged, and the worker reads as before the request (and stays at least the dwell).
    fn steered(&mut self, epoll: &Epoll) -> io::Result<()> {
        let Some((to, result)) = self.auto.as_ref().and_then(|a| a.steerer.finished()) else {
            return Ok(());
        };
        let now = Instant::now();
        let parent = &self.set.table.parent().name;
        let v3 = EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_RING);
        match result {
            Ok(took) => {
                tracing::debug!(%parent, "ring mode {to:?} (steering took {took:?})");
                self.counters.ring_mode_switches.add(1);
            }
            Err(e) => {
                tracing::warn!(%parent, "steering the frames to the {to:?} ring failed: {e}");
                self.counters.ring_steer_failures.add(1);
                let from = match to {
                    Steering::V2 => Steering::V3,
                    Steering::V3 => {
                        epoll.add(self.ring.as_fd(), v3)?;
                        Steering::V2
                    }
                };
                let auto = self.auto.as_mut().expect("a steer was reported");
                auto.state = State::Steady(from);
                auto.policy.switched(from, now);
                return Ok(());
            }
        }
        if to == Steering::V3 {
            // Every frame steered to V2 is in it now: forward them before any of V3's.
            self.drain_ring(true, u64::MAX);
            epoll.add(self.ring.as_fd(), v3)?;
            self.counters.ring_v2.set(0);
        }
        let auto = self.auto.as_mut().expect("a steer was reported");
        auto.state = match to {
            Steering::V2 => State::ToV2(now),
            Steering::V3 => {
                epoll.delete(auto.v2.as_fd())?;
                auto.policy.switched(Steering::V3, now);
                State::Steady(Steering::V3)
            }
        };
        Ok(())
    }

    fn drain_tap(&mut self, id: PortId, batch: &mut WireBatch) -> Drained {
        let ports = &self.set.ports;
        let dev = &ports[id.index()].dev;
        // One relaxed load per TAP batch when nobody follows.
        let obs = self
            .observers
            .batch(&mut self.observer_cache, &self.set.table.parent().name);
        for _ in 0..TAP_BUDGET {
            let slot = batch.next_slot();
            let n = match dev.recv(slot) {
                Ok(Recv::Frame(n)) => n,
                Ok(Recv::Empty) => return Drained::Empty,
                Ok(Recv::Refused { len, reason }) => {
                    let t = &self.set.table;
                    deliver::port_refused(t, ports, id, len, reason, obs.as_ref());
                    continue;
                }
                Err(e) if is_detached(&e) => {
                    tracing::warn!(
                        port = dev.name(),
                        "the port's device was deleted under the engine ({e}): no longer read"
                    );
                    return Drained::Dead;
                }
                Err(e) => {
                    tracing::warn!(port = dev.name(), "reading the port failed: {e}");
                    return Drained::Empty;
                }
            };
            let how =
                deliver::from_port_observed(&self.set.table, ports, id, &slot[..n], obs.as_ref());
            if how != ToWire::No {
                batch.push(id, n, how);
                if batch.queued.len() == batch.slots.len() {
                    batch.flush(&self.wire, &self.counters, ports);
                }
            }
        }
        Drained::Budget
    }

    /// The parent went down: the kernel unhooks the ring and sets its socket error
    /// (`packet_notifier`, NETDEV_DOWN → ENETDOWN), and re-hooks it by itself on NETDEV_UP.
    /// Reading `SO_ERROR` clears the error, or epoll would report it again at once (a busy loop
    /// for as long as the parent stays down).
    fn take_ring_error(&self, v2: bool) {
        use nix::sys::socket::{getsockopt, sockopt::SocketError};
        let ring = match &self.auto {
            Some(a) if v2 => &a.v2,
            _ => &self.ring,
        };
        match getsockopt(&ring.as_fd(), SocketError) {
            Ok(0) => {}
            Ok(e) => tracing::info!(
                parent = %self.set.table.parent().name,
                "the receive ring reports: {}",
                nix::errno::Errno::from_raw(e).desc()
            ),
            Err(e) => tracing::warn!("reading the ring's socket error failed: {e}"),
        }
    }

    /// PACKET_STATISTICS clears on read: add it to our counters (both rings of an auto pair; the
    /// V2 ring's drops also go to the mode policy).
    fn fold_ring_stats(&mut self) {
        let v2 = self.auto.as_mut().map(|a| (&a.v2, &mut a.policy));
        let rings = std::iter::once((&self.ring, None)).chain(v2.map(|(r, p)| (r, Some(p))));
        for (ring, policy) in rings {
            match ring.stats() {
                Ok(s) => {
                    let p = &self.counters;
                    p.ring_packets.add(u64::from(s.packets));
                    p.ring_drops.add(u64::from(s.drops));
                    p.ring_freezes.add(u64::from(s.freeze_q_cnt));
                    if let Some(policy) = policy {
                        policy.overran(u64::from(s.drops));
                    }
                }
                Err(e) => tracing::warn!("reading ring statistics failed: {e}"),
            }
        }
    }
}
