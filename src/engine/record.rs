//! The frame record: how one observed frame travels from a worker to a follower, inside the
//! engine and on the wire of a binary follow stream (`"binary": true`, used by `capture`).
//!
//! A worker [`encode`]s each frame a follower wants straight into that follower's current
//! buffer (no allocation once the buffers have grown: they are recycled through a
//! [`Recycler`]), and hands the buffer over as one [`Chunk`] per batch. The daemon's relay turns
//! the records into JSON `observation` lines for old-style followers, or writes the chunks as
//! they are for binary ones. A binary stream after the JSON `following` line is:
//!
//! ```text
//! record*  end  the follow-end JSON line
//! record   = u32 LEN (LE, > 0) then LEN bytes:
//!            u64 time_ns | u32 wire_len | u16 vlan (0xffff: none) | u8 flags | u8 0
//!            | [6] src | [6] dst | u16 receivers | u16 failed
//!            | str parent | str from ("": the wire) | str reason ("": none) | str rule ("": none)
//!            | receivers x str | failed x (str port, str reason) | the frame's bytes (the rest)
//! str      = u16 LEN (LE) then LEN bytes of UTF-8
//! flags    = 1 to_wire, 2 src present, 4 dst present
//! end      = u32 0
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use crate::wire::mac::MacAddr;

/// Ends the records of a binary stream; the follow-end JSON line comes next.
pub const END: [u8; 4] = [0; 4];
/// The longest record a reader accepts (the largest snaplen plus many names).
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

const FIXED: usize = 8 + 4 + 2 + 1 + 1 + 6 + 6 + 2 + 2;
const NO_VLAN: u16 = 0xffff;
const TO_WIRE: u8 = 1;
const HAS_SRC: u8 = 2;
const HAS_DST: u8 = 4;

/// One port whose copy of a frame could not be written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedCopy {
    pub port: String,
    pub reason: String,
}

/// One real frame as the engine carried it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedFrame {
    /// Nanoseconds since the Unix epoch: when the kernel put it in the parent's ring (a frame
    /// from the wire), or when the worker read it (a frame from a port).
    pub time_ns: u64,
    /// The parent whose worker handled it.
    pub parent: String,
    /// `parent` (from the wire) or the sending port's name.
    pub from: String,
    pub src: Option<MacAddr>,
    pub dst: Option<MacAddr>,
    pub vlan: Option<u16>,
    /// Length on the wire.
    pub len: usize,
    /// Ports that got a copy, in delivery order.
    pub receivers: Vec<String>,
    /// Ports whose copy could not be written.
    #[serde(default)]
    pub failed: Vec<FailedCopy>,
    /// Sent to the wire (queued: a failed send is counted, not observed).
    pub to_wire: bool,
    /// Drop reason when it reached no port and not the wire.
    pub reason: Option<String>,
    /// The rule's name, `None` for a frame refused before any decision.
    pub rule: Option<String>,
    /// The frame as it entered (an out-of-band VLAN tag put back inline), hex, at most
    /// `snaplen` bytes; only with `with_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

/// What a record says besides its lists and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// Nanoseconds since the Unix epoch when the worker handled the frame.
    pub time_ns: u64,
    /// The frame's full length.
    pub wire_len: u32,
    pub vlan: Option<u16>,
    pub src: Option<MacAddr>,
    pub dst: Option<MacAddr>,
    /// Also sent (queued) on the parent.
    pub to_wire: bool,
    /// The parent whose worker handled it.
    pub parent: &'a str,
    /// The sending port; `None`: from the wire.
    pub from: Option<&'a str>,
    /// Why it reached no port and not the wire.
    pub reason: Option<&'a str>,
    /// The rule that decided it; `None` when refused before any decision.
    pub rule: Option<&'a str>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are far shorter (a control request line is at most 64 KiB).
    let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    let len = u16::try_from(s.len()).expect("cut to u16::MAX above");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s);
}

fn count(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_le_bytes()
}

/// Appends one record to `out`: `head`, the ports that got a copy, the failed copies (port,
/// reason), and the frame from `pieces`, cut to `snaplen` bytes.
pub fn encode(
    out: &mut Vec<u8>,
    head: &Head<'_>,
    receivers: &[&str],
    failed: &[(&str, &str)],
    pieces: &[&[u8]],
    snaplen: usize,
) {
    let receivers = &receivers[..receivers.len().min(usize::from(u16::MAX))];
    let failed = &failed[..failed.len().min(usize::from(u16::MAX))];
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&head.time_ns.to_le_bytes());
    out.extend_from_slice(&head.wire_len.to_le_bytes());
    out.extend_from_slice(&head.vlan.unwrap_or(NO_VLAN).to_le_bytes());
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(head.to_wire, TO_WIRE)
        | flag(head.src.is_some(), HAS_SRC)
        | flag(head.dst.is_some(), HAS_DST);
    out.extend_from_slice(&[flags, 0]);
    out.extend_from_slice(&head.src.unwrap_or(MacAddr([0; 6])).0);
    out.extend_from_slice(&head.dst.unwrap_or(MacAddr([0; 6])).0);
    out.extend_from_slice(&count(receivers.len()));
    out.extend_from_slice(&count(failed.len()));
    for s in [
        head.parent,
        head.from.unwrap_or(""),
        head.reason.unwrap_or(""),
        head.rule.unwrap_or(""),
    ] {
        put_str(out, s);
    }
    for r in receivers {
        put_str(out, r);
    }
    for (port, reason) in failed {
        put_str(out, port);
        put_str(out, reason);
    }
    let mut room = snaplen;
    for p in pieces {
        let p = &p[..p.len().min(room)];
        out.extend_from_slice(p);
        room -= p.len();
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// One decoded record, borrowing the chunk it came in.
#[derive(Clone, Debug)]
pub struct FrameRecord<'a> {
    pub head: Head<'a>,
    receivers: SmallVec<[&'a str; 8]>,
    failed: SmallVec<[(&'a str, &'a str); 2]>,
    /// The frame as it entered, at most the follower's snaplen.
    pub bytes: &'a [u8],
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = b.get(*at..at.checked_add(n)?)?;
    *at += n;
    Some(s)
}

fn take_str<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a str> {
    let n = u16::from_le_bytes(take(b, at, 2)?.try_into().ok()?);
    std::str::from_utf8(take(b, at, usize::from(n))?).ok()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad frame record: {what}"),
    )
}

impl<'a> FrameRecord<'a> {
    /// Decodes one record's body (without its length).
    pub fn decode(b: &'a [u8]) -> io::Result<FrameRecord<'a>> {
        let f = b.get(..FIXED).ok_or_else(|| bad("too short"))?;
        let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
        let mac_at = |i: usize, bit: u8| {
            (f[14] & bit != 0).then(|| MacAddr(f[i..i + 6].try_into().unwrap_or_default()))
        };
        let mut at = FIXED;
        let mut strs = [""; 4];
        for s in &mut strs {
            *s = take_str(b, &mut at).ok_or_else(|| bad("a cut-short name"))?;
        }
        let name = |at: &mut usize| take_str(b, at).ok_or_else(|| bad("a cut-short list"));
        let receivers = (0..u16_at(28))
            .map(|_| name(&mut at))
            .collect::<io::Result<_>>()?;
        let failed = (0..u16_at(30))
            .map(|_| Ok((name(&mut at)?, name(&mut at)?)))
            .collect::<io::Result<_>>()?;
        let some = |s: &'a str| (!s.is_empty()).then_some(s);
        Ok(FrameRecord {
            head: Head {
                time_ns: u64::from_le_bytes(f[..8].try_into().unwrap_or_default()),
                wire_len: u32::from_le_bytes(f[8..12].try_into().unwrap_or_default()),
                vlan: Some(u16_at(12)).filter(|v| *v != NO_VLAN),
                src: mac_at(16, HAS_SRC),
                dst: mac_at(22, HAS_DST),
                to_wire: f[14] & TO_WIRE != 0,
                parent: strs[0],
                from: some(strs[1]),
                reason: some(strs[2]),
                rule: some(strs[3]),
            },
            receivers,
            failed,
            bytes: &b[at..],
        })
    }

    /// The ports that got a copy, in delivery order.
    pub fn receivers(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.receivers.iter().copied()
    }

    /// The ports whose copy could not be written, and why.
    pub fn failed(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.failed.iter().copied()
    }

    /// The record as a JSON `observation` carries it (`bytes` in hex when `with_bytes`).
    pub fn to_observed(&self, with_bytes: bool) -> ObservedFrame {
        use std::fmt::Write as _;
        let h = &self.head;
        let bytes = with_bytes.then(|| {
            let mut s = String::with_capacity(2 * self.bytes.len());
            for b in self.bytes {
                let _ = write!(s, "{b:02x}");
            }
            s
        });
        ObservedFrame {
            time_ns: h.time_ns,
            parent: h.parent.to_string(),
            from: h.from.unwrap_or("parent").to_string(),
            src: h.src,
            dst: h.dst,
            vlan: h.vlan,
            len: h.wire_len as usize,
            receivers: self.receivers().map(str::to_string).collect(),
            failed: self
                .failed()
                .map(|(port, reason)| FailedCopy {
                    port: port.into(),
                    reason: reason.into(),
                })
                .collect(),
            to_wire: h.to_wire,
            reason: h.reason.map(str::to_string),
            rule: h.rule.map(str::to_string),
            bytes,
        }
    }
}

/// The records of a chunk's buffer, each as its body; stops at the first malformed length.
pub fn records(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let body = b.get(4..4 + n)?;
        b = &b[4 + n..];
        Some(body)
    })
}

/// Recycles a follower's chunk buffers and bounds the bytes it has in flight (handed over by
/// workers, not yet written to the client).
#[derive(Debug)]
pub struct Recycler {
    spare_tx: Sender<Vec<u8>>,
    spare_rx: Receiver<Vec<u8>>,
    in_flight: AtomicUsize,
    limit: usize,
}

impl Recycler {
    /// At most `limit` bytes in flight, and `spares` buffers kept for reuse.
    pub fn new(limit: usize, spares: usize) -> Arc<Recycler> {
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(spares);
        Arc::new(Recycler {
            spare_tx,
            spare_rx,
            in_flight: AtomicUsize::new(0),
            limit,
        })
    }

    /// An empty buffer: a returned one (its capacity kept), or a new one.
    pub fn buffer(&self) -> Vec<u8> {
        self.spare_rx.try_recv().unwrap_or_default()
    }

    /// Makes `buf` (holding `frames` records) a chunk charged to this follower's budget, or
    /// gives it back when the budget is spent.
    pub fn chunk(self: &Arc<Self>, buf: Vec<u8>, frames: u64) -> Result<Chunk, Vec<u8>> {
        let len = buf.len();
        if self.in_flight.fetch_add(len, Ordering::Relaxed) + len > self.limit {
            self.in_flight.fetch_sub(len, Ordering::Relaxed);
            return Err(buf);
        }
        Ok(Chunk {
            buf,
            frames,
            home: Some((Arc::clone(self), len)),
        })
    }

    /// Bytes handed over and not yet dropped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Bytes for a binary stream: records from a worker (their buffer goes back to its
/// [`Recycler`] when dropped), or the stream's end.
#[derive(Debug)]
pub struct Chunk {
    buf: Vec<u8>,
    frames: u64,
    /// Where the buffer returns, and the bytes it was charged.
    home: Option<(Arc<Recycler>, usize)>,
}

impl Chunk {
    /// The end of a binary stream: [`END`], then `last` (the control plane's last response) as
    /// a JSON line.
    pub fn end(last: &impl Serialize) -> io::Result<Chunk> {
        let mut buf = END.to_vec();
        serde_json::to_writer(&mut buf, last).map_err(io::Error::other)?;
        buf.push(b'\n');
        Ok(Chunk {
            buf,
            frames: 0,
            home: None,
        })
    }

    /// The records it holds.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Keeps only the first `n` records.
    pub fn keep(&mut self, n: u64) {
        if n >= self.frames {
            return;
        }
        let len: usize = records(&self.buf)
            .take(usize::try_from(n).unwrap_or(usize::MAX))
            .map(|r| 4 + r.len())
            .sum();
        self.buf.truncate(len);
        self.frames = n;
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some((home, charged)) = self.home.take() {
            home.in_flight.fetch_sub(charged, Ordering::Relaxed);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let _ = home.spare_tx.try_send(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(from: Option<&'a str>) -> Head<'a> {
        Head {
            time_ns: 1_700_000_000_123_456_789,
            wire_len: 60,
            vlan: Some(7),
            src: Some(MacAddr([2, 0, 0, 0, 0, 9])),
            dst: None,
            to_wire: true,
            parent: "p0",
            from,
            reason: None,
            rule: Some("tx_bridge_group"),
        }
    }

    #[test]
    fn records_round_trip_and_snaplen_cuts_across_pieces() {
        let mut buf = Vec::new();
        let frame = [7u8; 60];
        let pieces: [&[u8]; 3] = [&frame[..12], &[0x81, 0, 0, 7], &frame[12..]];
        encode(
            &mut buf,
            &head(Some("c1")),
            &["c0", "c2"],
            &[("c9", "tap_queue_full")],
            &pieces,
            14,
        );
        encode(&mut buf, &head(None), &[], &[], &pieces, 0);
        let recs: Vec<_> = records(&buf)
            .map(|r| FrameRecord::decode(r).unwrap())
            .collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].head, head(Some("c1")));
        assert_eq!(recs[0].receivers().collect::<Vec<_>>(), ["c0", "c2"]);
        assert_eq!(
            recs[0].failed().collect::<Vec<_>>(),
            [("c9", "tap_queue_full")]
        );
        assert_eq!(recs[0].bytes, [&frame[..12], &[0x81, 0][..]].concat());
        assert_eq!(recs[1].head.from, None);
        assert!(recs[1].bytes.is_empty());
        let o = recs[0].to_observed(true);
        assert_eq!(o.from, "c1");
        assert_eq!(o.bytes.as_deref(), Some("0707070707070707070707078100"));
        assert_eq!(recs[1].to_observed(false).from, "parent");
    }

    #[test]
    fn malformed_records_are_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, &head(None), &["c0"], &[], &[], 0);
        let body = &buf[4..];
        for cut in [0, FIXED - 1, FIXED + 3, body.len() - 1] {
            assert!(FrameRecord::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(FrameRecord::decode(body).is_ok());
    }

    #[test]
    fn the_budget_bounds_bytes_in_flight_and_buffers_come_back() {
        let r = Recycler::new(100, 2);
        let a = r.chunk(vec![1; 60], 1).unwrap();
        let b = r.chunk(vec![1; 60], 1).unwrap_err();
        assert_eq!(r.in_flight(), 60);
        drop(a);
        assert_eq!(r.in_flight(), 0);
        let back = r.buffer();
        assert!(back.is_empty() && back.capacity() >= 60, "recycled");
        assert!(r.chunk(b, 1).is_ok());
    }

    #[test]
    fn keep_cuts_whole_records() {
        let r = Recycler::new(1 << 20, 1);
        let mut buf = Vec::new();
        for _ in 0..3 {
            encode(&mut buf, &head(None), &["c0"], &[], &[&[1, 2, 3]], 64);
        }
        let mut c = r.chunk(buf, 3).unwrap();
        c.keep(2);
        assert_eq!(c.frames(), 2);
        assert_eq!(records(c.bytes()).count(), 2);
        assert_eq!(
            records(c.bytes()).map(|b| 4 + b.len()).sum::<usize>(),
            c.bytes().len()
        );
    }
}
