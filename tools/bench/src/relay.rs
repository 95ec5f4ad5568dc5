//! The minimal relay: the floor a userspace forwarder on this machine can reach, for the RTT
//! goal (umacvlan's median within 3 µs of it). One thread of the benchmark, nothing else: a
//! TPACKET_V2 ring on the parent (a frame handed over as it arrives) whose frames for c1 (or
//! broadcast) are written straight into c1's TAP, and every frame read from the TAP sent on the
//! parent; `poll` on both between bursts. No table, no counters, no control: what is left is
//! the kernel's part (two wake-ups, a ring copy, two TAP hops). It uses umacvlan's own audited
//! ring, TAP and TX socket (`umacvlan::sys`), so the bench keeps no unsafe code of its own for it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::Result;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use umacvlan::net::{Netns, in_netns};
use umacvlan::sys::ring::RingConfig;
use umacvlan::sys::{RxRing, Tap, TxSocket};
use umacvlan::wire::mac::MacAddr;
use umacvlan::wire::vnet::VNET_HDR_LEN;

/// A running relay; stopped (thread joined, TAP gone) on drop.
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Opens the ring and TX socket on parent `ifindex` in `host` and relays between them and
    /// `tap` (already created) for frames to `child`.
    pub fn start(host: &Netns, ifindex: u32, tap: Tap, child: MacAddr) -> Result<Relay> {
        let mut ring = in_netns(host, || RxRing::open(ifindex, RingConfig::V2))??;
        let tx = in_netns(host, || TxSocket::open(ifindex))??;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bench-relay".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536 + VNET_HDR_LEN + 4];
                while !s.load(Ordering::Relaxed) {
                    let mut fds = [
                        PollFd::new(ring.as_fd(), PollFlags::POLLIN),
                        PollFd::new(tap.as_fd(), PollFlags::POLLIN),
                    ];
                    let _ = poll(&mut fds, PollTimeout::from(50u8));
                    while let Some(block) = ring.next_block() {
                        for f in block.frames() {
                            let b = f.with_vnet();
                            let dst = &b[VNET_HDR_LEN..VNET_HDR_LEN + 6];
                            if dst == child.0 || dst == [0xff; 6] {
                                let _ = tap.write(b);
                            }
                        }
                    }
                    while let Ok(n) = tap.read(&mut buf) {
                        let _ = tx.send(&buf[..n]);
                    }
                }
            })?;
        Ok(Relay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
