//! The paced generator of the fixed-rate trials (cost, the zero-loss search). trafgen's own
//! pacing (`-b`) is no use here: measured on this VM it sends a second's worth of frames flat out
//! and then idles for the rest of the second. This one runs in a thread of the benchmark pinned
//! to the generator's CPU and sends through umacvlan's own TX socket (`sendmmsg`) whatever is
//! due at the asked rate, then sleeps (about 0.1 ms, the timer's slack): bursts of a few dozen
//! frames, never a spin, so its CPU time is the cost of sending and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use umacvlan::net::{Netns, in_netns};
use umacvlan::sys::tx::{MmsgScratch, TxSocket};
use umacvlan::wire::mac::MacAddr;

use crate::traffic::{BATCH, bench_frame};

/// A running paced sender.
pub struct Paced {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

impl Paced {
    /// Sends 60-byte frames `src` → `dst` on `ifindex` in `ns` at `rate` frames/s from a thread
    /// pinned to `cpu`.
    pub fn start(
        ns: &Netns,
        ifindex: u32,
        src: MacAddr,
        dst: MacAddr,
        cpu: usize,
        rate: f64,
    ) -> Result<Paced> {
        let tx = in_netns(ns, || TxSocket::open(ifindex))??;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let tid = Arc::new(AtomicI32::new(0));
        let mut set = CpuSet::new();
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
        let (s, n, t) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&tid));
        let thread = std::thread::Builder::new()
            .name("bench-paced".into())
            .spawn(move || {
                let _ = sched_setaffinity(Pid::from_raw(0), &set);
                t.store(nix::unistd::gettid().as_raw(), Ordering::SeqCst);
                let frame = bench_frame(src, dst);
                let mut scratch = MmsgScratch::default();
                let start = Instant::now();
                let mut done = 0u64;
                while !s.load(Ordering::Relaxed) {
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "a non-negative frame count far below 2^53"
                    )]
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    if due <= done {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    let k = usize::try_from(due - done).unwrap_or(BATCH).min(BATCH);
                    match tx.send_batch(std::iter::repeat_n(&frame[..], k), &mut scratch) {
                        Ok(m) => done += m as u64,
                        Err(_) => std::thread::yield_now(),
                    }
                    n.store(done, Ordering::Relaxed);
                }
            })?;
        let p = Paced {
            stop,
            sent,
            tid,
            thread: Some(thread),
        };
        while p.tid.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(p)
    }

    /// CPU time (s) of the sending thread so far (the kernel's work in its softirqs included).
    pub fn cpu(&self) -> f64 {
        let tid = self.tid.load(Ordering::SeqCst);
        crate::trafgen::cpu_of_task(std::process::id(), tid)
    }

    /// Stops it; returns the frames it sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Paced {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
