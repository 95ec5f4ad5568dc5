//! Watching real frames as the engine forwards them: `trace --follow` and `capture`.
//!
//! [`Observers`] is shared by the daemon and every worker. The daemon [`register`]s a
//! [`Sink`] (a bounded channel of [`Chunk`]s and a [`Filter`]) for each client that follows;
//! workers call [`Observers::batch`] once per batch (a ring block, a TAP's read budget) and,
//! only when it returns an [`Observe`], tell it about every frame ([`Observe::emit`]).
//!
//! Cost when nobody observes: one relaxed atomic load per batch, then `None` flows through the
//! forwarding path (a predictable branch per frame); no allocation, no copy, no lock.
//!
//! Cost when someone does: each frame a sink wants is encoded as one record
//! ([`record::encode`]: a fixed header, the names, the bytes up to the sink's snaplen) into that
//! sink's buffer; no allocation once the buffers have grown, since they come back through the
//! sink's [`Recycler`] when the follower's connection has written them. The buffer goes to the
//! sink as one chunk when it passes [`CHUNK_BYTES`], or at the end of the first batch after its
//! oldest record has waited [`HOLD`]; a worker with nothing to read hands it over when [`HOLD`]
//! is up ([`ObserverCache::flush_due`] tells it when to look). Under load that is one channel
//! operation, and at most one wake-up of the follower's thread (and, through it, of the client),
//! per [`HOLD`] or per [`CHUNK_BYTES`], not per batch: on a busy machine those wake-ups, not the
//! copies, were what following cost the forwarding (docs/performance.md#what-observing-costs).
//!
//! The worker never blocks here: the sink list is copied under a `try_lock` only when its version
//! changed (if the lock is busy, the previous list is used for one more batch), and a chunk that
//! finds the channel full, or the sink's bytes in flight over [`SINK_BYTES`], counts its frames
//! as lost in [`Sink::lost`]; the client is told at the end. A frame for a sink that is already
//! backed up that way is counted before it is copied, so a follower that falls behind costs the
//! worker a check per frame, not a copy.
//!
//! [`register`]: Observers::register

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::engine::record::{self, Chunk, Head, Recycler};
use crate::forward::{DropReason, Rule};
use crate::wire::mac::MacAddr;

/// A sink's buffer is handed over once it holds this much, even mid-batch.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// The longest a record waits in a worker before its sink gets it: what a follower's view lags
/// behind the forwarding at most (plus the relay's own hops).
pub const HOLD: Duration = Duration::from_millis(10);
/// Bytes a follower may have handed over and not yet written before new frames count as lost.
pub const SINK_BYTES: usize = 32 * 1024 * 1024;
/// Spare buffers a sink keeps for reuse.
const SPARES: usize = 16;

/// Which frames a sink wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every frame of every parent.
    All,
    /// Every frame of this parent's worker (from the wire and from its ports).
    Parent(String),
    /// Frames that entered at this port, or that it received (or failed to receive).
    Port(String),
    /// Frames that reached no port and not the wire, and frames a receiver's TAP refused.
    Drops,
}

/// One follower: what it wants and where its frames go.
#[derive(Debug)]
pub struct Sink {
    pub id: u64,
    pub filter: Filter,
    /// Bytes wanted per frame (0: none).
    pub snaplen: usize,
    tx: Sender<Chunk>,
    recycler: Arc<Recycler>,
    /// Frames that matched but found the channel full or the budget spent.
    pub lost: AtomicU64,
}

impl Sink {
    /// Whether a record added to `p` now could not be handed over: the channel is full, or the
    /// follower's bytes in flight and `p`'s already reach its budget. Such a frame is counted
    /// lost at once, without copying it: a follower that falls behind costs the worker a check
    /// per frame, not a copy.
    fn backed_up(&self, p: &Pending) -> bool {
        self.tx.is_full() || self.recycler.in_flight() + p.buf.len() >= SINK_BYTES
    }

    /// Hands `p`'s records over without blocking; what does not fit counts as lost.
    fn hand_over(&self, p: &mut Pending) {
        let frames = std::mem::take(&mut p.frames);
        if frames == 0 {
            return;
        }
        p.since = None;
        let lost = |n| self.lost.fetch_add(n, Ordering::Relaxed);
        match self.recycler.chunk(std::mem::take(&mut p.buf), frames) {
            Err(mut buf) => {
                lost(frames);
                buf.clear();
                p.buf = buf;
                return;
            }
            Ok(chunk) => match self.tx.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    lost(frames);
                }
                // The follower is gone; the daemon unregisters it.
                Err(TrySendError::Disconnected(_)) => {}
            },
        }
        p.buf = self.recycler.buffer();
    }
}

/// Every follower of the engine; see the module documentation.
#[derive(Debug, Default)]
pub struct Observers {
    /// Registered sinks; zero means the forwarding path does nothing.
    listening: AtomicUsize,
    /// Bumped on every change of `sinks`.
    version: AtomicU64,
    sinks: Mutex<Arc<[Arc<Sink>]>>,
    next_id: AtomicU64,
}

/// A sink's records not yet handed over.
#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    frames: u64,
    /// When the oldest of them was added.
    since: Option<Instant>,
}

/// Hands each sink the records pending for it that have waited [`HOLD`]; returns when the oldest
/// of the others will have, `None` when nothing is left pending (then without reading the clock).
fn hand_over_due(sinks: &[Arc<Sink>], pending: &mut [Pending]) -> Option<Instant> {
    if pending.iter().all(|p| p.frames == 0) {
        return None;
    }
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    for (sink, p) in sinks.iter().zip(pending) {
        match p.since.map(|t| t + HOLD) {
            Some(due) if due <= now => sink.hand_over(p),
            Some(due) => next = Some(next.map_or(due, |n| n.min(due))),
            None => {}
        }
    }
    next
}

/// A worker's copy of the sink list, refreshed between batches, with its buffer per sink.
#[derive(Debug, Default)]
pub struct ObserverCache {
    version: u64,
    sinks: Option<Arc<[Arc<Sink>]>>,
    /// One per sink, in the same order.
    pending: Vec<Pending>,
}

impl ObserverCache {
    /// Hands every sink what is pending for it, due or not.
    pub fn flush(&mut self) {
        if let Some(sinks) = &self.sinks {
            for (sink, p) in sinks.iter().zip(&mut self.pending) {
                sink.hand_over(p);
            }
        }
    }

    /// Hands over the records that have waited [`HOLD`]; returns how long until the oldest of
    /// the others has, `None` when nothing is pending. Costs nothing when nobody follows.
    pub fn flush_due(&mut self) -> Option<Duration> {
        let sinks = self.sinks.as_deref()?;
        hand_over_due(sinks, &mut self.pending)
            .map(|due| due.saturating_duration_since(Instant::now()))
    }
}

impl Observers {
    /// Adds a follower whose channel holds at most `capacity` chunks.
    pub fn register(
        &self,
        filter: Filter,
        snaplen: usize,
        capacity: usize,
    ) -> (Arc<Sink>, Receiver<Chunk>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let sink = Arc::new(Sink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            snaplen,
            tx,
            recycler: Recycler::new(SINK_BYTES, SPARES),
            lost: AtomicU64::new(0),
        });
        let mut g = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = g.iter().cloned().collect();
        v.push(Arc::clone(&sink));
        self.publish(&mut g, v);
        (sink, rx)
    }

    /// Removes a follower: workers stop emitting for it from their next batch on.
    pub fn unregister(&self, id: u64) {
        let mut g = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let v: Vec<_> = g.iter().filter(|s| s.id != id).cloned().collect();
        self.publish(&mut g, v);
    }

    fn publish(&self, g: &mut Arc<[Arc<Sink>]>, v: Vec<Arc<Sink>>) {
        self.listening.store(v.len(), Ordering::Relaxed);
        *g = v.into();
        self.version.fetch_add(1, Ordering::Release);
    }

    /// How many followers are registered.
    pub fn len(&self) -> usize {
        self.listening.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The followers to tell about the next batch of `parent`'s frames, `None` when nobody
    /// listens: one relaxed load in that case. Never blocks.
    pub fn batch<'c>(&self, cache: &'c mut ObserverCache, parent: &'c str) -> Option<Observe<'c>> {
        if self.listening.load(Ordering::Relaxed) == 0 {
            cache.flush();
            cache.sinks = None;
            return None;
        }
        let version = self.version.load(Ordering::Acquire);
        if (cache.sinks.is_none() || cache.version != version)
            && let Ok(g) = self.sinks.try_lock()
        {
            // What the old list's sinks were promised goes to them first.
            cache.flush();
            cache.pending = g.iter().map(|_| Pending::default()).collect();
            cache.sinks = Some(Arc::clone(&g));
            cache.version = version;
        }
        let sinks = cache.sinks.as_deref().filter(|s| !s.is_empty())?;
        Some(Observe {
            parent,
            sinks,
            pending: RefCell::new(&mut cache.pending),
        })
    }
}

/// The followers of one batch of frames; hands each sink its records when dropped.
#[derive(Debug)]
pub struct Observe<'a> {
    /// The parent's name, as records carry it.
    parent: &'a str,
    sinks: &'a [Arc<Sink>],
    pending: RefCell<&'a mut Vec<Pending>>,
}

/// What the forwarding path knows about one frame, encoded only for the sinks that want it.
#[derive(Debug)]
pub struct Seen<'a> {
    pub from: Option<&'a str>,
    /// When the kernel received the frame (the parent ring's timestamp, ns since the epoch);
    /// `None`: the time it is observed, read then (frames from ports).
    pub time_ns: Option<u64>,
    /// The frame's bytes as they entered, in pieces (an out-of-band tag goes between them).
    pub pieces: [&'a [u8]; 3],
    pub vlan: Option<u16>,
    pub wire_len: usize,
    /// Ports that got a copy, in delivery order.
    pub receivers: &'a [&'a str],
    /// Ports whose copy could not be written, and why (a [`DropReason`]'s name).
    pub failed: &'a [(&'a str, &'static str)],
    pub to_wire: bool,
    pub reason: Option<DropReason>,
    pub rule: Option<Rule>,
}

impl Seen<'_> {
    /// Whether `f` wants this frame of `parent`.
    fn matches(&self, f: &Filter, parent: &str) -> bool {
        match f {
            Filter::All => true,
            Filter::Parent(p) => parent == p,
            Filter::Port(p) => {
                self.from == Some(p.as_str())
                    || self.receivers.contains(&p.as_str())
                    || self.failed.iter().any(|(r, _)| r == p)
            }
            Filter::Drops => self.reason.is_some() || !self.failed.is_empty(),
        }
    }
}

fn mac_at(b: &[u8], at: usize) -> Option<MacAddr> {
    b.get(at..at + 6)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .map(MacAddr)
}

impl Observe<'_> {
    /// Encodes `seen` for every sink that wants it.
    pub fn emit(&self, seen: &Seen<'_>) {
        let mut pending = self.pending.borrow_mut();
        let mut head = None;
        for (sink, p) in self.sinks.iter().zip(pending.iter_mut()) {
            if !seen.matches(&sink.filter, self.parent) {
                continue;
            }
            if sink.backed_up(p) {
                sink.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let head = head.get_or_insert_with(|| Head {
                time_ns: seen.time_ns.unwrap_or_else(|| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                }),
                wire_len: u32::try_from(seen.wire_len).unwrap_or(u32::MAX),
                vlan: seen.vlan,
                src: mac_at(seen.pieces[0], 6),
                dst: mac_at(seen.pieces[0], 0),
                to_wire: seen.to_wire,
                parent: self.parent,
                from: seen.from,
                reason: seen.reason.map(DropReason::name),
                rule: seen.rule.map(Rule::name),
            });
            record::encode(
                &mut p.buf,
                head,
                seen.receivers,
                seen.failed,
                &seen.pieces,
                sink.snaplen,
            );
            if p.frames == 0 {
                p.since = Some(Instant::now());
            }
            p.frames += 1;
            if p.buf.len() >= CHUNK_BYTES {
                sink.hand_over(p);
            }
        }
    }
}

impl Drop for Observe<'_> {
    /// Hands over what has waited [`HOLD`]; the rest stays for a later batch or
    /// [`ObserverCache::flush_due`].
    fn drop(&mut self) {
        hand_over_due(self.sinks, self.pending.get_mut());
    }
}

/// Every frame the chunks waiting on `rx` hold, as JSON would carry it, with its bytes.
#[cfg(test)]
pub fn received(rx: &Receiver<Chunk>) -> Vec<(super::record::ObservedFrame, Vec<u8>)> {
    use crate::engine::record::{FrameRecord, records};
    let mut v = Vec::new();
    for c in rx.try_iter() {
        for r in records(c.bytes()) {
            let r = FrameRecord::decode(r).expect("a well-formed record");
            v.push((r.to_observed(false), r.bytes.to_vec()));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(from: Option<&'a str>, bytes: &'a [u8], receivers: &'a [&'a str]) -> Seen<'a> {
        Seen {
            from,
            time_ns: None,
            pieces: [bytes, &[], &[]],
            vlan: None,
            wire_len: bytes.len(),
            receivers,
            failed: &[],
            to_wire: false,
            reason: receivers
                .is_empty()
                .then_some(DropReason::UnknownDestination),
            rule: Some(Rule::RxUnicastToPort),
        }
    }

    fn drain(rx: &Receiver<Chunk>) -> Vec<(Option<String>, usize, usize, Option<String>)> {
        received(rx)
            .into_iter()
            .map(|(o, b)| {
                let from = Some(o.from).filter(|f| f != "parent");
                (from, o.len, b.len(), o.reason)
            })
            .collect()
    }

    #[test]
    fn nobody_listening_means_no_batch() {
        let o = Observers::default();
        let mut c = ObserverCache::default();
        assert!(o.batch(&mut c, "p0").is_none());
        let (s, _rx) = o.register(Filter::All, 0, 4);
        assert!(o.batch(&mut c, "p0").is_some());
        o.unregister(s.id);
        assert!(o.batch(&mut c, "p0").is_none());
        assert!(o.is_empty());
    }

    #[test]
    fn filters_pick_their_frames_and_snaplen_truncates() {
        let o = Observers::default();
        let (_a, all) = o.register(Filter::All, 20, 16);
        let (_p, port) = o.register(Filter::Port("c1".into()), 0, 16);
        let (_d, drops) = o.register(Filter::Drops, 0, 16);
        let (_q, other) = o.register(Filter::Parent("p9".into()), 0, 16);
        let mut c = ObserverCache::default();
        let frame = [7u8; 60];
        {
            let b = o.batch(&mut c, "p0").unwrap();
            b.emit(&seen(None, &frame, &["c1"]));
            b.emit(&seen(None, &frame, &[]));
            b.emit(&seen(Some("c1"), &frame, &["c0"]));
        }
        assert!(all.is_empty(), "held for HOLD after the batch ends");
        c.flush();
        assert_eq!(all.len(), 1, "one chunk for the batch");
        let all = drain(&all);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], (None, 60, 20, None), "the sink's own snaplen");
        assert_eq!(all[2].0.as_deref(), Some("c1"));
        let port = drain(&port);
        assert_eq!(port.len(), 2, "received by c1, sent by c1");
        assert_eq!(port[0].2, 0, "no bytes asked for");
        let d = drain(&drops);
        assert_eq!(d, [(None, 60, 0, Some("unknown_destination".into()))]);
        assert_eq!(other.try_iter().count(), 0);
    }

    #[test]
    fn a_full_channel_counts_losses_and_buffers_are_reused() {
        let o = Observers::default();
        let (s, rx) = o.register(Filter::All, 0, 2);
        let mut c = ObserverCache::default();
        let frame = [0u8; 60];
        for _ in 0..5 {
            let b = o.batch(&mut c, "p0").unwrap();
            b.emit(&seen(None, &frame, &["c0"]));
            b.emit(&seen(None, &frame, &["c0"]));
            drop(b);
            c.flush();
        }
        assert_eq!(drain(&rx).len(), 4, "two chunks of two");
        assert_eq!(s.lost.load(Ordering::Relaxed), 6);
        // The chunks were dropped: their buffers came back, capacity kept, for the next batches.
        assert_eq!(s.recycler.in_flight(), 0);
        assert!(s.recycler.buffer().capacity() > 0);
    }

    #[test]
    fn a_frame_for_a_full_channel_is_counted_without_a_copy() {
        let o = Observers::default();
        let (s, rx) = o.register(Filter::All, 0, 1);
        let mut c = ObserverCache::default();
        let frame = [0u8; 60];
        o.batch(&mut c, "p0")
            .unwrap()
            .emit(&seen(None, &frame, &["c0"]));
        c.flush();
        let b = o.batch(&mut c, "p0").unwrap();
        b.emit(&seen(None, &frame, &["c0"]));
        assert!(b.pending.borrow()[0].buf.is_empty(), "nothing copied");
        drop(b);
        c.flush();
        assert_eq!(s.lost.load(Ordering::Relaxed), 1);
        assert_eq!(drain(&rx).len(), 1, "the first frame only");
    }

    #[test]
    fn a_big_batch_is_handed_over_in_chunks() {
        let o = Observers::default();
        let (s, rx) = o.register(Filter::All, 1500, 64);
        let mut c = ObserverCache::default();
        let frame = [1u8; 1500];
        let n = 2 * CHUNK_BYTES / 1500 + 3;
        {
            let b = o.batch(&mut c, "p0").unwrap();
            for _ in 0..n {
                b.emit(&seen(None, &frame, &["c0"]));
            }
        }
        assert_eq!(rx.len(), 2, "full chunks go at once");
        c.flush();
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.bytes().len() <= CHUNK_BYTES + 1600));
        assert_eq!(chunks.iter().map(Chunk::frames).sum::<u64>(), n as u64);
        assert_eq!(s.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn records_wait_at_most_hold_then_go_as_one_chunk() {
        let o = Observers::default();
        let (_s, rx) = o.register(Filter::All, 0, 8);
        let mut c = ObserverCache::default();
        assert_eq!(c.flush_due(), None, "nothing pending");
        let frame = [0u8; 60];
        for _ in 0..3 {
            o.batch(&mut c, "p0")
                .unwrap()
                .emit(&seen(None, &frame, &["c0"]));
        }
        let wait = c.flush_due().expect("something pending");
        assert!(wait <= HOLD);
        assert!(rx.is_empty(), "not yet due");
        std::thread::sleep(wait);
        assert_eq!(c.flush_due(), None, "handed over once due");
        let chunks: Vec<Chunk> = rx.try_iter().collect();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].frames(), 3);
        // A batch that ends after HOLD hands over by itself.
        let b = o.batch(&mut c, "p0").unwrap();
        b.emit(&seen(None, &frame, &["c0"]));
        std::thread::sleep(HOLD);
        drop(b);
        assert_eq!(drain(&rx).len(), 1);
    }

    #[test]
    fn a_new_sink_list_first_hands_the_old_sinks_their_records() {
        let o = Observers::default();
        let (a, first) = o.register(Filter::All, 0, 8);
        let mut c = ObserverCache::default();
        let frame = [0u8; 60];
        o.batch(&mut c, "p0")
            .unwrap()
            .emit(&seen(None, &frame, &["c0"]));
        let (b, second) = o.register(Filter::All, 0, 8);
        o.batch(&mut c, "p0")
            .unwrap()
            .emit(&seen(None, &frame, &["c0"]));
        assert_eq!(drain(&first).len(), 1, "the record held for the old list");
        o.unregister(b.id);
        o.unregister(a.id);
        assert!(o.batch(&mut c, "p0").is_none());
        assert_eq!(
            drain(&first).len(),
            1,
            "flushed when the last follower left"
        );
        assert_eq!(drain(&second).len(), 1);
    }
}
