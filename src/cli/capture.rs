//! `umacvlan trace --follow` and `umacvlan capture`: real frames from the running engine, as
//! text/JSON lines or as pcapng.
//!
//! What a capture contains, per observed frame (see
//! docs/guide.md#where-did-my-frame-go-follow-and-capture):
//! * one packet at the interface where the frame entered (the parent for frames from the wire,
//!   else the sending port), direction **inbound**, with a comment saying where it went (or, for
//!   a drop, `dropped: REASON — meaning`) and the rule;
//! * one packet per receiving port at that port's interface, direction **outbound** (the engine
//!   delivered it there);
//! * for a port's frame that went to the wire, one packet at the parent, **outbound**;
//! * for a copy a port's TAP refused, one packet at that port, outbound, with the comment
//!   `dropped: tap_queue_full|tap_write_failed — meaning`.
//!
//! Frames are as they entered (a VLAN tag the ring reported out of band is put back inline).
//! Every interface has its own IDB (`if_name`, `if_description`, `if_MACaddr`, `if_tsresol` 9:
//! nanoseconds); ports added while the capture runs get theirs when they first appear.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::io::{self, IsTerminal, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hashbrown::HashMap;
use nix::sys::signal::{SigSet, Signal};
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::pcapng::blocks::opt_common::CommonOption;

use super::{ControlArg, Failure, daemon_failure};
use crate::control::client;
use crate::control::proto::{
    FollowInterface, FollowRequest, MAX_SNAPLEN, ObservedFrame, Reply, Request,
};
use crate::engine::record::FrameRecord;
use crate::forward::DropReason;

/// EPB flags, direction bits (pcapng §4.3.1): the frame entered at this interface.
pub const INBOUND: u32 = 0b01;
/// The frame left through this interface (delivered to a port, sent on the parent).
pub const OUTBOUND: u32 = 0b10;

/// Write live frames of the running engine as pcapng.
///
/// TARGET is `parent` (every frame of every parent), a parent's name, a port's name (frames it
/// sent or received) or `drops` (frames that reached no port and not the wire, and copies a
/// port's TAP refused). Each frame appears at the interface it entered (inbound) and at every
/// port that received it (outbound); a port's frame for the wire also at the parent (outbound).
/// Drops carry their reason as a packet comment. One interface block per parent and port.
///
/// Ctrl-C (or SIGTERM) ends it cleanly: the engine ends the stream, and the capture says how many
/// frames it wrote and how many it lost.
///
/// A capture yields to forwarding: it runs at the lowest CPU priority (nice 19, SCHED_IDLE, as
/// does the engine's side of it), and when it falls behind it loses frames, which it counts and
/// reports at the end, instead of making the engine wait. What it still costs the engine is a
/// copy of each frame's bytes up to SNAPLEN: `-s 128` (the headers) when that is all you need.
///
/// Example: watch port c1 with tcpdump
///
///   umacvlan capture c1 -w - | tcpdump -n -r -
///
/// Example: the next 100 drops into a file, for Wireshark
///
///   umacvlan capture drops -c 100 -w drops.pcapng
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CaptureArgs {
    /// parent, a parent's name, a port's name, or drops.
    #[arg(value_name = "TARGET")]
    target: String,
    /// Where to write: a file, or `-` for stdout (flushed as soon as everything received is
    /// written, for `| tcpdump -r -` and `| wireshark -k -i -`). Default: stdout unless it is a
    /// terminal.
    #[arg(short = 'w', value_name = "FILE|-")]
    write: Option<String>,
    /// Stop after this many frames (each may give several packets).
    #[arg(short = 'c', value_name = "N")]
    count: Option<u64>,
    /// Bytes kept per frame (0: the maximum, 262144).
    #[arg(short = 's', value_name = "SNAPLEN", default_value_t = MAX_SNAPLEN)]
    snaplen: u32,
    /// Keep this shell's CPU priority instead of nice 19 and SCHED_IDLE: on a busy machine the
    /// capture then loses fewer frames, and takes CPU time forwarding could have had.
    #[arg(long)]
    keep_priority: bool,
    #[command(flatten)]
    control: ControlArg,
}

/// A pcapng stream of observed frames; see the module documentation for what it contains.
pub struct PcapngSink<W: Write> {
    w: PcapNgWriter<W>,
    ifs: HashMap<String, u32>,
    snaplen: u32,
    /// The ingress comment, rebuilt for every frame.
    comment: String,
    pub packets: u64,
}

impl<W: Write> std::fmt::Debug for PcapngSink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapngSink")
            .field("interfaces", &self.ifs)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

fn pcap_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("writing pcapng: {e}"))
}

impl<W: Write> PcapngSink<W> {
    /// Writes the section header and one IDB per interface.
    pub fn new(w: W, interfaces: &[FollowInterface], snaplen: u32) -> io::Result<PcapngSink<W>> {
        let w = PcapNgWriter::new(w).map_err(pcap_err)?;
        let mut s = PcapngSink {
            w,
            ifs: HashMap::new(),
            snaplen,
            comment: String::new(),
            packets: 0,
        };
        for i in interfaces {
            let desc = match i.kind.as_str() {
                "parent" => format!("umacvlan parent {}", i.name),
                mode => format!("umacvlan port {} ({mode}) of {}", i.name, i.parent),
            };
            s.interface(&i.name, || desc, Some(i.mac.0))?;
        }
        s.w.get_mut().flush()?;
        Ok(s)
    }

    /// The IDB index of `name`, written now (described by `desc()`) if it has none yet.
    fn interface(
        &mut self,
        name: &str,
        desc: impl FnOnce() -> String,
        mac: Option<[u8; 6]>,
    ) -> io::Result<u32> {
        if let Some(i) = self.ifs.get(name) {
            return Ok(*i);
        }
        let desc = desc();
        let mut idb = InterfaceDescriptionBlock::new(DataLink::ETHERNET, self.snaplen);
        idb.options
            .push(InterfaceDescriptionOption::IfName(Cow::Owned(
                name.to_string(),
            )));
        idb.options
            .push(InterfaceDescriptionOption::IfDescription(Cow::Owned(desc)));
        if let Some(m) = mac {
            idb.options
                .push(InterfaceDescriptionOption::IfMacAddr(Cow::Owned(
                    m.to_vec(),
                )));
        }
        idb.options.push(InterfaceDescriptionOption::IfTsResol(
            InterfaceTsResolution::NANO,
        ));
        self.w.write_pcapng_block(idb).map_err(pcap_err)?;
        let i = u32::try_from(self.ifs.len()).map_err(pcap_err)?;
        self.ifs.insert(name.to_string(), i);
        Ok(i)
    }

    fn packet(
        &mut self,
        at: &str,
        f: &FrameRecord<'_>,
        dir: u32,
        comment: Option<&str>,
    ) -> io::Result<()> {
        let id = self.interface(at, || format!("umacvlan {at}"), None)?;
        let mut options = Vec::with_capacity(2);
        options.push(EnhancedPacketOption::Flags(dir));
        if let Some(c) = comment {
            options.push(EnhancedPacketOption::Common(CommonOption::Comment(
                Cow::Borrowed(c),
            )));
        }
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(f.head.time_ns),
            original_len: f.head.wire_len,
            data: Cow::Borrowed(f.bytes),
            options,
        };
        self.w.write_pcapng_block(epb).map_err(pcap_err)?;
        self.packets += 1;
        Ok(())
    }

    /// Writes one observed frame's packets; flushes unless `more` frames are already waiting
    /// (so a reader of the stream never waits for packets that were received).
    pub fn frame(&mut self, f: &FrameRecord<'_>, more: bool) -> io::Result<()> {
        let h = &f.head;
        let ingress = h.from.unwrap_or(h.parent);
        let mut comment = std::mem::take(&mut self.comment);
        ingress_comment(&mut comment, f);
        let written = self.packet(ingress, f, INBOUND, Some(&comment));
        self.comment = comment;
        written?;
        for r in f.receivers() {
            self.packet(r, f, OUTBOUND, None)?;
        }
        if h.to_wire {
            self.packet(h.parent, f, OUTBOUND, None)?;
        }
        for (port, reason) in f.failed() {
            self.packet(port, f, OUTBOUND, Some(&drop_text(reason)))?;
        }
        if more {
            return Ok(());
        }
        self.w.get_mut().flush()
    }
}

/// `dropped: REASON — meaning`.
fn drop_text(reason: &str) -> String {
    match DropReason::ALL.into_iter().find(|r| r.name() == reason) {
        Some(r) => format!("dropped: {reason} — {}", r.meaning()),
        None => format!("dropped: {reason}"),
    }
}

/// The ingress packet's comment, into `c`: where the frame went (or why nowhere) and the rule.
fn ingress_comment(c: &mut String, f: &FrameRecord<'_>) {
    c.clear();
    let rule = f.head.rule.unwrap_or("none (refused before any decision)");
    match f.head.reason {
        Some(r) => c.push_str(&drop_text(r)),
        None => {
            c.push_str("to ");
            let wire = f.head.to_wire.then_some("wire");
            for (i, to) in f.receivers().chain(wire).enumerate() {
                if i > 0 {
                    c.push_str(", ");
                }
                c.push_str(to);
            }
        }
    }
    c.push_str("; rule ");
    c.push_str(rule);
}

/// One line per frame: time (UTC), where it entered, MACs, length, VLAN, receivers, wire,
/// drop reason, rule.
pub fn follow_line(f: &ObservedFrame) -> String {
    let secs = f.time_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let mac = |m: Option<crate::wire::mac::MacAddr>| m.map_or("-".to_string(), |m| m.to_string());
    let from = if f.from == "parent" {
        format!("parent({})", f.parent)
    } else {
        f.from.clone()
    };
    let to = if f.receivers.is_empty() {
        "-".to_string()
    } else {
        f.receivers.join(",")
    };
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{:06} {from} {} > {} len {}{} to {to} wire {}",
        (f.time_ns % 1_000_000_000) / 1000,
        mac(f.src),
        mac(f.dst),
        f.len,
        f.vlan.map(|v| format!(" vlan {v}")).unwrap_or_default(),
        if f.to_wire { "yes" } else { "no" },
    );
    for c in &f.failed {
        line.push_str(&format!(" failed {}:{}", c.port, c.reason));
    }
    if let Some(r) = &f.reason {
        line.push_str(&format!(" dropped {r}"));
    }
    line.push_str(&format!(" rule {}", f.rule.as_deref().unwrap_or("-")));
    line
}

/// An error writing the output, met inside a stream's callback: the stream stops, and the error
/// is reported once it has (a closed pipe quietly).
#[derive(Default)]
struct OutputError(Cell<Option<io::Error>>);

impl OutputError {
    /// `Ok(true)` to go on; keeps an error and stops the stream.
    fn check(&self, r: io::Result<()>) -> io::Result<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) => {
                self.0.set(Some(e));
                Ok(false)
            }
        }
    }

    /// After the stream: (frames, lost) as its end says, or the output's error.
    fn finish(self, frames: u64, end: Option<Reply>) -> Result<(u64, u64), Failure> {
        match self.0.into_inner() {
            Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok((frames, 0)),
            Some(e) => Err(anyhow::Error::from(e).context("writing the output").into()),
            None => match end {
                Some(Reply::FollowEnd { lost, .. }) => Ok((frames, lost)),
                _ => Ok((frames, 0)),
            },
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM ends a follower cleanly: the first one half-closes the connection
/// to the engine (`Shutdown::Write`), which ends the stream as its count would, with
/// `follow-end` and what was lost; a second one, or [`END_GRACE`] without the end, closes it.
struct Interrupt {
    signals: SigSet,
    hit: Arc<AtomicBool>,
}

/// How long an interrupted follower waits for the engine's end of the stream.
const END_GRACE: Duration = Duration::from_secs(3);

impl Interrupt {
    /// Blocks SIGINT and SIGTERM in this thread and the threads it starts later (call it before
    /// any): from then on only [`Interrupt::watch`] takes them.
    fn arm() -> Result<Interrupt, Failure> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGINT);
        signals.add(Signal::SIGTERM);
        signals
            .thread_block()
            .context("blocking SIGINT and SIGTERM")
            .map_err(Failure::usage)?;
        Ok(Interrupt {
            signals,
            hit: Arc::default(),
        })
    }

    /// Ends `stream` early on a signal (see [`Interrupt`]).
    fn watch(&self, stream: &UnixStream) {
        let Ok(stream) = stream.try_clone() else {
            return;
        };
        let (signals, hit) = (self.signals, Arc::clone(&self.hit));
        let _ = std::thread::Builder::new()
            .name("umacvlan-interrupt".into())
            .spawn(move || {
                if signals.wait().is_err() {
                    return;
                }
                hit.store(true, Ordering::SeqCst);
                let _ = stream.shutdown(Shutdown::Write);
                if let Ok(s) = stream.try_clone() {
                    std::thread::spawn(move || {
                        std::thread::sleep(END_GRACE);
                        let _ = s.shutdown(Shutdown::Both);
                    });
                }
                let _ = signals.wait();
                let _ = stream.shutdown(Shutdown::Both);
            });
    }

    /// Whether a signal ended the stream.
    fn hit(&self) -> bool {
        self.hit.load(Ordering::SeqCst)
    }
}

/// Streams `req` as JSON lines and hands every observed frame to `each`; returns (frames,
/// lost). A write error of `each` (a closed pipe) ends the stream quietly.
fn follow_stream(
    control: &ControlArg,
    req: FollowRequest,
    mut each: impl FnMut(&ObservedFrame) -> io::Result<()>,
) -> Result<(u64, u64), Failure> {
    let interrupt = Interrupt::arm()?;
    let out = OutputError::default();
    let mut frames = 0u64;
    let end = client::stream(
        &control.path,
        Request::Follow(req),
        |s| interrupt.watch(s),
        |reply| match reply {
            Reply::Observation { frame } => {
                frames += 1;
                out.check(each(frame))
            }
            _ => Ok(true),
        },
    )
    .map_err(daemon_failure)?;
    out.finish(frames, end)
}

fn report_lost(frames: u64, lost: u64) {
    if lost > 0 {
        eprintln!(
            "umacvlan: {frames} frames shown, {lost} lost: this reader was too slow (the engine never waits for it)"
        );
    }
}

/// `umacvlan trace --follow TARGET [-c N] [-j]`.
pub fn follow(
    target: &str,
    count: Option<u64>,
    json: bool,
    control: &ControlArg,
) -> Result<ExitCode, Failure> {
    let req = FollowRequest {
        target: target.to_string(),
        count,
        snaplen: None,
        with_bytes: false,
        binary: false,
    };
    let stdout = io::stdout();
    let (frames, lost) = follow_stream(control, req, |f| {
        let mut out = stdout.lock();
        if json {
            let line = serde_json::to_string(f).map_err(io::Error::other)?;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", follow_line(f))?;
        }
        out.flush()
    })?;
    report_lost(frames, lost);
    Ok(ExitCode::SUCCESS)
}

/// Where `capture` writes.
type Out = io::BufWriter<Box<dyn Write>>;

/// `umacvlan capture`.
pub fn run(a: CaptureArgs) -> Result<ExitCode, Failure> {
    if !a.keep_priority
        && let Err(e) = crate::sys::yield_cpu_to_forwarding()
    {
        eprintln!("umacvlan: could not lower this capture's CPU priority: {e}");
    }
    let out: Box<dyn Write> = match a.write.as_deref() {
        Some("-") => Box::new(io::stdout()),
        Some(path) => Box::new(
            std::fs::File::create(PathBuf::from(path))
                .with_context(|| format!("creating {path}"))
                .map_err(Failure::usage)?,
        ),
        None if io::stdout().is_terminal() => {
            return Err(Failure::usage(anyhow::anyhow!(
                "refusing to write pcapng to a terminal: use -w FILE, or -w - into a pipe"
            )));
        }
        None => Box::new(io::stdout()),
    };
    let snaplen = if a.snaplen == 0 {
        MAX_SNAPLEN
    } else {
        a.snaplen.min(MAX_SNAPLEN)
    };
    let req = FollowRequest {
        target: a.target.clone(),
        count: a.count,
        snaplen: Some(snaplen),
        with_bytes: true,
        binary: true,
    };
    let interrupt = Interrupt::arm()?;
    let errors = OutputError::default();
    let sink: RefCell<Option<PcapngSink<Out>>> = RefCell::new(None);
    let mut frames = 0u64;
    let end = client::follow_frames(
        &a.control.path,
        Request::Follow(req),
        |s| interrupt.watch(s),
        |first| {
            let started = match first {
                Reply::Following { interfaces } => {
                    PcapngSink::new(io::BufWriter::new(out), interfaces, snaplen)
                        .map(|s| *sink.borrow_mut() = Some(s))
                }
                other => Err(io::Error::other(format!("{other:?} instead of following"))),
            };
            errors.check(started)
        },
        |f, more| {
            frames += 1;
            let written = match sink.borrow_mut().as_mut() {
                Some(s) => s.frame(f, more),
                None => Err(io::Error::other("a frame before the interface list")),
            };
            errors.check(written)
        },
    )
    .map_err(daemon_failure)?;
    let (frames, lost) = errors.finish(frames, end)?;
    let packets = sink.borrow().as_ref().map_or(0, |s| s.packets);
    if a.write.as_deref() != Some("-") {
        let how = if interrupt.hit() { ", interrupted" } else { "" };
        eprintln!("umacvlan: {frames} frames captured ({packets} packets{how})");
    }
    report_lost(frames, lost);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::{Head, encode};
    use pcap_file::pcapng::{Block, PcapNgReader};

    /// One record (its length first): a 60-byte frame from `from` (`None`: the wire) of p0.
    fn frame(
        from: Option<&str>,
        receivers: &[&str],
        failed: &[(&str, &str)],
        to_wire: bool,
        reason: Option<&str>,
    ) -> Vec<u8> {
        let mut bytes = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 9, 0x88, 0xb5];
        bytes.resize(60, 0);
        let head = Head {
            time_ns: 1_700_000_000_123_456_789,
            wire_len: 60,
            vlan: None,
            src: Some("02:00:00:00:00:09".parse().unwrap()),
            dst: Some("02:00:00:00:00:01".parse().unwrap()),
            to_wire,
            parent: "p0",
            from,
            reason,
            rule: Some("rx_unicast_to_port"),
        };
        let mut out = Vec::new();
        encode(&mut out, &head, receivers, failed, &[&bytes], 1000);
        out
    }

    fn record(b: &[u8]) -> FrameRecord<'_> {
        FrameRecord::decode(&b[4..]).unwrap()
    }

    #[test]
    fn pcapng_has_interfaces_directions_and_drop_comments() {
        let ifs: Vec<FollowInterface> = ["p0", "c0", "c1"]
            .iter()
            .map(|n| FollowInterface {
                name: n.to_string(),
                parent: "p0".into(),
                kind: if *n == "p0" { "parent" } else { "bridge" }.into(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
            })
            .collect();
        let mut s = PcapngSink::new(Vec::new(), &ifs, 100).unwrap();
        s.frame(&record(&frame(None, &["c0"], &[], false, None)), true)
            .unwrap();
        let drop = frame(None, &[], &[], false, Some("unknown_destination"));
        s.frame(&record(&drop), true).unwrap();
        let f = frame(Some("c1"), &["c0"], &[("c9", "tap_queue_full")], true, None);
        s.frame(&record(&f), false).unwrap();
        assert_eq!(s.packets, 2 + 1 + 4);
        let bytes = s.w.into_inner();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut got = Vec::new();
        let mut names = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap().0 {
                Block::InterfaceDescription(i) => {
                    assert!(i.options.contains(&InterfaceDescriptionOption::IfTsResol(
                        InterfaceTsResolution::NANO
                    )));
                    names.push(
                        i.options
                            .iter()
                            .find_map(|o| match o {
                                InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                                _ => None,
                            })
                            .unwrap(),
                    );
                }
                Block::EnhancedPacket(e) => {
                    let dir = e.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(*f),
                        _ => None,
                    });
                    let comment = e.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Common(CommonOption::Comment(c)) => {
                            Some(c.to_string())
                        }
                        _ => None,
                    });
                    assert_eq!(e.timestamp.as_nanos(), 1_700_000_000_123_456_789);
                    assert_eq!(e.data.len(), 60);
                    got.push((e.interface_id, dir.unwrap(), comment));
                }
                _ => {}
            }
        }
        assert_eq!(names, ["p0", "c0", "c1", "c9"]);
        let to_c0 = Some("to c0; rule rx_unicast_to_port".to_string());
        assert_eq!(got[0], (0, INBOUND, to_c0));
        assert_eq!(got[1], (1, OUTBOUND, None));
        assert_eq!(got[2].0, 0);
        assert!(
            got[2]
                .2
                .as_deref()
                .unwrap()
                .starts_with("dropped: unknown_destination — unicast to a MAC"),
            "{got:?}"
        );
        assert_eq!(
            got[3],
            (
                2,
                INBOUND,
                Some("to c0, wire; rule rx_unicast_to_port".into())
            )
        );
        assert_eq!(got[4], (1, OUTBOUND, None));
        assert_eq!(got[5], (0, OUTBOUND, None), "to the wire: at the parent");
        assert_eq!(got[6].0, 3);
        assert!(
            got[6]
                .2
                .as_deref()
                .unwrap()
                .starts_with("dropped: tap_queue_full")
        );
    }

    #[test]
    fn follow_lines() {
        let f = |b: Vec<u8>| record(&b).to_observed(false);
        let l = follow_line(&f(frame(None, &["c0"], &[], false, None)));
        assert_eq!(
            l,
            "22:13:20.123456 parent(p0) 02:00:00:00:00:09 > 02:00:00:00:00:01 len 60 to c0 wire no rule rx_unicast_to_port"
        );
        let l = follow_line(&f(frame(
            None,
            &[],
            &[],
            false,
            Some("unknown_destination"),
        )));
        assert!(
            l.ends_with("to - wire no dropped unknown_destination rule rx_unicast_to_port"),
            "{l}"
        );
    }
}
