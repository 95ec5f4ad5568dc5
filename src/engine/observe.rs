//! Watching real frames as the engine forwards them: `trace --follow` and `capture`.
//!
//! [`Observers`] is shared by the daemon and every worker. The daemon [`register`]s a
//! [`Sink`] (a bounded channel and a [`Filter`]) for each client that follows; workers call
//! [`Observers::snapshot`] once per batch (a ring block, a TAP's read budget) and, only when it
//! returns sinks, build an [`Observation`] per frame and hand it to every sink whose filter
//! matches with `try_send`.
//!
//! Cost when nobody observes: one relaxed atomic load per batch, then `None` flows through the
//! forwarding path (a predictable branch per frame); no allocation, no copy, no lock.
//!
//! The worker never blocks here: the sink list is copied under a `try_lock` only when its version
//! changed (if the lock is busy, the previous list is used for one more batch), and a full
//! channel counts the observation as lost in [`Sink::lost`]; the client is told at the end.
//!
//! [`register`]: Observers::register

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::forward::{DropReason, Rule};
use crate::mac::MacAddr;

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

/// One frame as a worker carried it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// When the worker handled it (wall clock).
    pub time: Duration,
    /// The parent whose worker handled it.
    pub parent: Arc<str>,
    /// Where it entered: `None` from the wire (the parent), else the sending port's name.
    pub from: Option<String>,
    pub src: Option<MacAddr>,
    pub dst: Option<MacAddr>,
    /// The outermost VLAN id (inline or reported out of band by the ring).
    pub vlan: Option<u16>,
    /// The frame's full length.
    pub wire_len: usize,
    /// The frame as it entered (an out-of-band tag put back inline), truncated to the largest
    /// snaplen any matching sink asked for; empty when none asked for bytes.
    pub bytes: Vec<u8>,
    /// Ports that got a copy, in delivery order.
    pub receivers: Vec<String>,
    /// Ports whose copy could not be written, and why (`tap_queue_full`, `tap_write_failed`).
    pub failed: Vec<(String, DropReason)>,
    /// Also sent (or queued to be sent) on the parent.
    pub to_wire: bool,
    /// Why the frame reached no port and not the wire, when it did not.
    pub reason: Option<DropReason>,
    /// The rule that decided it; `None` for frames refused before any decision (runt, ...).
    pub rule: Option<Rule>,
}

impl Observation {
    /// Whether `f` wants this observation.
    pub fn matches(&self, f: &Filter) -> bool {
        match f {
            Filter::All => true,
            Filter::Parent(p) => *self.parent == **p,
            Filter::Port(p) => {
                self.from.as_deref() == Some(p.as_str())
                    || self.receivers.iter().any(|r| r == p)
                    || self.failed.iter().any(|(r, _)| r == p)
            }
            Filter::Drops => self.reason.is_some() || !self.failed.is_empty(),
        }
    }
}

/// One follower: what it wants and where its observations go.
#[derive(Debug)]
pub struct Sink {
    pub id: u64,
    pub filter: Filter,
    /// Bytes wanted per frame (0: none).
    pub snaplen: usize,
    tx: Sender<Arc<Observation>>,
    /// Observations that matched but found the channel full.
    pub lost: AtomicU64,
}

impl Sink {
    /// Hands `o` over without blocking; a full channel counts a loss.
    fn offer(&self, o: &Arc<Observation>) {
        match self.tx.try_send(Arc::clone(o)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            // The follower is gone; the daemon unregisters it.
            Err(TrySendError::Disconnected(_)) => {}
        }
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

/// A worker's copy of the sink list, refreshed between batches.
#[derive(Debug, Default)]
pub struct ObserverCache {
    version: u64,
    sinks: Option<Arc<[Arc<Sink>]>>,
}

impl Observers {
    /// Adds a follower whose channel holds at most `capacity` observations.
    pub fn register(
        &self,
        filter: Filter,
        snaplen: usize,
        capacity: usize,
    ) -> (Arc<Sink>, Receiver<Arc<Observation>>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let sink = Arc::new(Sink {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            filter,
            snaplen,
            tx,
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

    /// The sinks to feed for the next batch, `None` when nobody listens: one relaxed load in
    /// that case. Never blocks.
    pub fn snapshot<'c>(&self, cache: &'c mut ObserverCache) -> Option<&'c [Arc<Sink>]> {
        if self.listening.load(Ordering::Relaxed) == 0 {
            cache.sinks = None;
            return None;
        }
        let version = self.version.load(Ordering::Acquire);
        if (cache.sinks.is_none() || cache.version != version)
            && let Ok(g) = self.sinks.try_lock()
        {
            cache.sinks = Some(Arc::clone(&g));
            cache.version = version;
        }
        cache.sinks.as_deref().filter(|s| !s.is_empty())
    }
}

/// What the forwarding path knows about one frame, turned into an [`Observation`] only when some
/// sink wants it.
#[derive(Debug)]
pub struct Seen<'a> {
    pub parent: &'a str,
    pub from: Option<&'a str>,
    /// The frame's bytes as they entered, in pieces (an out-of-band tag goes between them).
    pub pieces: [&'a [u8]; 3],
    pub vlan: Option<u16>,
    pub wire_len: usize,
    pub receivers: Vec<String>,
    pub failed: Vec<(String, DropReason)>,
    pub to_wire: bool,
    pub reason: Option<DropReason>,
    pub rule: Option<Rule>,
}

fn mac_at(b: &[u8], at: usize) -> Option<MacAddr> {
    b.get(at..at + 6)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .map(MacAddr)
}

/// Builds the observation for `seen` (once) and offers it to every sink that wants it.
pub fn emit(sinks: &[Arc<Sink>], seen: Seen<'_>) {
    let Seen {
        parent,
        from,
        pieces,
        vlan,
        wire_len,
        receivers,
        failed,
        to_wire,
        reason,
        rule,
    } = seen;
    let mut o = Observation {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
        parent: Arc::from(parent),
        from: from.map(str::to_string),
        src: mac_at(pieces[0], 6),
        dst: mac_at(pieces[0], 0),
        vlan,
        wire_len,
        bytes: Vec::new(),
        receivers,
        failed,
        to_wire,
        reason,
        rule,
    };
    let wanted: Vec<&Arc<Sink>> = sinks.iter().filter(|s| o.matches(&s.filter)).collect();
    if wanted.is_empty() {
        return;
    }
    let snaplen = wanted.iter().map(|s| s.snaplen).max().unwrap_or(0);
    if snaplen > 0 {
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        o.bytes.reserve(total.min(snaplen));
        for p in pieces {
            let room = snaplen - o.bytes.len();
            o.bytes.extend_from_slice(&p[..p.len().min(room)]);
        }
    }
    let o = Arc::new(o);
    for s in wanted {
        s.offer(&o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(from: Option<&'a str>, bytes: &'a [u8], receivers: &[&str]) -> Seen<'a> {
        Seen {
            parent: "p0",
            from,
            pieces: [bytes, &[], &[]],
            vlan: None,
            wire_len: bytes.len(),
            receivers: receivers.iter().map(|s| s.to_string()).collect(),
            failed: Vec::new(),
            to_wire: false,
            reason: receivers
                .is_empty()
                .then_some(DropReason::UnknownDestination),
            rule: Some(Rule::RxUnicastToPort),
        }
    }

    #[test]
    fn nobody_listening_means_no_snapshot() {
        let o = Observers::default();
        let mut c = ObserverCache::default();
        assert!(o.snapshot(&mut c).is_none());
        let (s, _rx) = o.register(Filter::All, 0, 4);
        assert_eq!(o.snapshot(&mut c).map(<[_]>::len), Some(1));
        o.unregister(s.id);
        assert!(o.snapshot(&mut c).is_none());
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
        let sinks = o.snapshot(&mut c).unwrap().to_vec();
        let frame = [7u8; 60];
        emit(&sinks, seen(None, &frame, &["c1"]));
        emit(&sinks, seen(None, &frame, &[]));
        emit(&sinks, seen(Some("c1"), &frame, &["c0"]));
        let all: Vec<_> = all.try_iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].bytes.len(), 20, "the largest snaplen asked for");
        assert_eq!(all[0].wire_len, 60);
        assert_eq!(port.try_iter().count(), 2, "received by c1, sent by c1");
        let d: Vec<_> = drops.try_iter().collect();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].reason, Some(DropReason::UnknownDestination));
        assert_eq!(other.try_iter().count(), 0);
    }

    #[test]
    fn a_full_channel_counts_losses() {
        let o = Observers::default();
        let (s, rx) = o.register(Filter::All, 0, 2);
        let mut c = ObserverCache::default();
        let sinks = o.snapshot(&mut c).unwrap().to_vec();
        let frame = [0u8; 60];
        for _ in 0..5 {
            emit(&sinks, seen(None, &frame, &["c0"]));
        }
        assert_eq!(rx.try_iter().count(), 2);
        assert_eq!(s.lost.load(Ordering::Relaxed), 3);
    }
}
