//! The worker thread: epoll over the parent's ring, every port's TAP and a wake-up eventfd.
//!
//! It owns the I/O objects (ring, TX socket, TAPs) and the current table. The control plane talks
//! to it only through [`Command`]s on a channel, followed by a write to the eventfd, so the
//! forwarding path never takes a lock: a new table is picked up between batches.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::counters::Counters;
use super::forward::{self, ParentFrame, PortIo};
use crate::forward::{PortId, PortTable};
use crate::sys::ring::RxRing;
use crate::sys::tap::Tap;
use crate::sys::tx::TxSocket;

/// What the control plane can ask of the worker.
#[derive(Debug)]
pub enum Command {
    /// Forward with this table from the next frame on.
    SetTable(Arc<PortTable>),
    /// Mirror the parent's carrier onto every TAP (`TUNSETCARRIER`).
    SetCarrier(bool),
    Stop,
}

/// Frames read from one TAP before the worker looks at the others (fairness).
const TAP_BUDGET: usize = 64;
/// How often the kernel's ring statistics are folded into the counters.
const STATS_EVERY: Duration = Duration::from_millis(500);
/// A TAP read holds a 64 KiB GSO frame, its virtio-net header and an inline VLAN tag.
const READ_BUF: usize = 65_536 + 10 + 4 + 64;
/// Frames sent to the wire with one `sendmmsg`.
const WIRE_BATCH: usize = 32;

const TOKEN_RING: u64 = 0;
const TOKEN_WAKE: u64 = 1;
const TOKEN_TAP0: u64 = 2;

impl PortIo for Tap {
    fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(iov)
    }
}

/// Frames waiting for the wire, still in the buffers they were read into from their TAPs.
/// Sent with one `sendmmsg` when full and at the end of every loop iteration.
#[derive(Debug)]
struct WireBatch {
    slots: Vec<Vec<u8>>,
    /// (sender, length) of the frames in `slots[..queued.len()]`.
    queued: Vec<(PortId, usize)>,
}

impl WireBatch {
    fn new(slots: usize) -> WireBatch {
        WireBatch {
            slots: (0..slots).map(|_| vec![0u8; READ_BUF]).collect(),
            queued: Vec::with_capacity(slots),
        }
    }

    /// Sends every queued frame and counts each outcome; a failed frame is skipped, the rest
    /// are still sent.
    fn flush(&mut self, wire: &TxSocket, counters: &Counters) {
        let frames: Vec<&[u8]> = self
            .queued
            .iter()
            .zip(&self.slots)
            .map(|((_, n), s)| &s[..*n])
            .collect();
        let mut start = 0;
        while start < frames.len() {
            match wire.send_batch(&frames[start..]) {
                Ok(k) if k > 0 => {
                    for (id, n) in &self.queued[start..start + k] {
                        forward::wire_sent(counters, *id, *n, true);
                    }
                    start += k;
                }
                result => {
                    let (id, n) = self.queued[start];
                    if let Err(e) = result {
                        tracing::debug!("sending on the parent failed: {e}");
                    }
                    forward::wire_sent(counters, id, n, false);
                    start += 1;
                }
            }
        }
        self.queued.clear();
    }
}

/// The control plane's end of a running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    thread: JoinHandle<io::Result<()>>,
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
    pub ring: RxRing,
    pub wire: TxSocket,
    /// Indexed by `PortId`, aligned with the table's ports.
    pub taps: Vec<Tap>,
    pub table: Arc<PortTable>,
    pub counters: Arc<Counters>,
}

impl Worker {
    /// Starts the worker on its own thread.
    pub fn spawn(self) -> io::Result<WorkerHandle> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let w = Arc::clone(&wake);
        let thread = std::thread::Builder::new()
            .name("umacvlan-worker".into())
            .spawn(move || self.run(&rx, &w))?;
        Ok(WorkerHandle {
            commands: tx,
            wake,
            thread,
        })
    }

    fn run(mut self, commands: &Receiver<Command>, wake: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            self.ring.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_RING),
        )?;
        epoll.add(
            wake.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE),
        )?;
        for (i, tap) in self.taps.iter().enumerate() {
            epoll.add(
                tap.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TAP0 + i as u64),
            )?;
        }
        let mut events = vec![EpollEvent::empty(); 64];
        let mut batch = WireBatch::new(WIRE_BATCH);
        let mut last_stats = Instant::now();
        loop {
            let n = match epoll.wait(&mut events, EpollTimeout::from(100u16)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_RING => self.drain_ring(),
                    TOKEN_WAKE => {
                        let _ = wake.read();
                        if !self.apply_commands(commands) {
                            self.fold_ring_stats();
                            return Ok(());
                        }
                    }
                    t => self.drain_tap(PortId((t - TOKEN_TAP0) as u16), &mut batch),
                }
            }
            if !batch.queued.is_empty() {
                batch.flush(&self.wire, &self.counters);
            }
            if last_stats.elapsed() >= STATS_EVERY {
                self.fold_ring_stats();
                last_stats = Instant::now();
            }
        }
    }

    /// Applies pending commands; false means stop.
    fn apply_commands(&mut self, commands: &Receiver<Command>) -> bool {
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::SetTable(t) => self.table = t,
                Command::SetCarrier(on) => {
                    for tap in &self.taps {
                        if let Err(e) = tap.set_carrier(on) {
                            tracing::warn!(port = tap.name(), "setting carrier failed: {e}");
                        }
                    }
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn drain_ring(&mut self) {
        let Worker {
            ring,
            taps,
            table,
            counters,
            ..
        } = self;
        while let Some(block) = ring.next_block() {
            for f in block.frames() {
                let pf = ParentFrame {
                    with_vnet: f.with_vnet(),
                    wire_len: f.wire_len(),
                    vlan: f.vlan(),
                };
                forward::from_parent(table, counters, taps, &pf);
            }
        }
    }

    fn drain_tap(&mut self, id: PortId, batch: &mut WireBatch) {
        let tap = &self.taps[id.index()];
        for _ in 0..TAP_BUDGET {
            let slot = &mut batch.slots[batch.queued.len()];
            let n = match tap.read(slot) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(port = tap.name(), "TAP read failed: {e}");
                    return;
                }
            };
            if forward::from_port(&self.table, &self.counters, &self.taps, id, &slot[..n]) {
                batch.queued.push((id, n));
                if batch.queued.len() == batch.slots.len() {
                    batch.flush(&self.wire, &self.counters);
                }
            }
        }
    }

    /// PACKET_STATISTICS clears on read: add it to our counters.
    fn fold_ring_stats(&mut self) {
        match self.ring.stats() {
            Ok(s) => {
                let p = &self.counters.parent;
                p.ring_packets.add(u64::from(s.packets));
                p.ring_drops.add(u64::from(s.drops));
                p.ring_freezes.add(u64::from(s.freeze_q_cnt));
            }
            Err(e) => tracing::warn!("reading ring statistics failed: {e}"),
        }
    }
}
