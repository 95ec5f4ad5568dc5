//! Bursts after idle (root; issue #15 item 9): after at least a second without traffic, a burst
//! sent back to back from a raw socket on the wire side must reach the child whole, as the
//! kernel's macvlan delivers it, with the engine's default options (`--ring auto`).
//!
//! Three kinds of burst, each sent [`REPEAT`] times with [`IDLE`] before it (the first burst
//! after idle is what a sparse-traffic ring meets unprepared):
//!
//! * [`SMALL`] 64-byte frames;
//! * [`SUPER`] TCPv4 GSO super-frames of [`SUPER_LEN`] bytes (about 2.5 MB in all), sent with a
//!   virtio-net header, as a veth with TSO hands them over;
//! * a mix, super-frames and small frames alternating, whose order the child must see unchanged.
//!
//! The kernel's macvlan runs the same bursts first, on a topology of its own, as the reference:
//! it must deliver them all too. Then umacvlan: every frame reaches the child, in order, and the
//! engine counts no ring drop.

// The engine helpers and the raw sockets only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::engine::{Topo, topo};
use common::{ETH_P_ALL, MAGIC, PacketSocket, nonce_of, test_frame};
use umacvlan::net::testutil::{ip, wait_until};
use umacvlan::wire::mac::MacAddr;

const C0: MacAddr = MacAddr([2, 0, 0, 0, 0x0b, 0]);
const SRC: MacAddr = MacAddr([2, 0, 0, 0, 0x0e, 9]);
/// Quiet time before every burst.
const IDLE: Duration = Duration::from_millis(1200);
const REPEAT: u64 = 3;
/// Small frames per burst.
const SMALL: u64 = 5000;
/// Super-frames per burst, and their length on the wire: 40 × 64 000 bytes = 2.56 MB.
const SUPER: u64 = 40;
const SUPER_LEN: usize = 64_000;
/// Pairs (a super-frame, then a small frame) per mixed burst: 2 MB of super-frames (more
/// would overrun the receive buffer of the child's test socket, 8 MiB, before it is read).
const MIXED: u64 = 32;

/// One burst: what it sends, in order.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Small,
    Super,
    Mixed,
}

impl Kind {
    fn frames(self) -> u64 {
        match self {
            Kind::Small => SMALL,
            Kind::Super => SUPER,
            Kind::Mixed => 2 * MIXED,
        }
    }

    /// Frame `i` of the burst is a super-frame.
    fn is_super(self, i: u64) -> bool {
        match self {
            Kind::Small => false,
            Kind::Super => true,
            Kind::Mixed => i.is_multiple_of(2),
        }
    }
}

/// A TCPv4 frame of `len` bytes to `dst` whose payload starts with [`MAGIC`] and `nonce`,
/// preceded by a virtio-net header that makes it a GSO super-frame (MSS 1448, checksum partial).
fn gso_frame(dst: MacAddr, nonce: u64, len: usize) -> Vec<u8> {
    const ETH: usize = 14;
    const IP: usize = 20;
    const TCP: usize = 20;
    let mut f = Vec::with_capacity(10 + len);
    // struct virtio_net_hdr (little-endian): NEEDS_CSUM, GSO_TCPV4, hdr_len, gso_size,
    // csum_start (the TCP header), csum_offset (its checksum field).
    f.push(1);
    f.push(1);
    f.extend_from_slice(&u16::try_from(ETH + IP + TCP).unwrap().to_le_bytes());
    f.extend_from_slice(&1448u16.to_le_bytes());
    f.extend_from_slice(&u16::try_from(ETH + IP).unwrap().to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&SRC.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = [0u8; IP];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&u16::try_from(len - ETH).unwrap().to_be_bytes());
    iph[6] = 0x40; // DF
    iph[8] = 64;
    iph[9] = 6; // TCP
    iph[12..16].copy_from_slice(&[198, 51, 100, 1]);
    iph[16..20].copy_from_slice(&[198, 51, 100, 2]);
    let sum = iph
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let mut sum = sum;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !u16::try_from(sum).unwrap();
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut tcp = [0u8; TCP];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&nonce.to_be_bytes());
    f.resize(10 + len, 0);
    f
}

/// The nonce of a frame the child received: a small test frame's, or a super-frame's.
fn nonce(frame: &[u8]) -> Option<u64> {
    nonce_of(frame).or_else(|| {
        let p = frame.get(54..66)?;
        (frame[12..14] == [8, 0] && p[..4] == MAGIC)
            .then(|| u64::from_be_bytes(p[4..].try_into().unwrap()))
    })
}

/// What one burst delivered.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    sent: u64,
    delivered: u64,
    /// Super-frames delivered whole.
    whole: u64,
    in_order: bool,
}

/// The child's receiver: every (nonce, length) it sees, in arrival order, until stopped; then
/// its socket's own drops.
struct Receiver {
    seen: Arc<Mutex<Vec<(u64, usize)>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u32>,
}

impl Receiver {
    fn start(rx: PacketSocket) -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut got = Vec::new();
                    rx.drain(|r| {
                        if r.pkttype != libc::PACKET_OUTGOING
                            && let Some(n) = nonce(&r.bytes)
                        {
                            got.push((n, r.bytes.len()));
                        }
                    });
                    if got.is_empty() {
                        std::thread::sleep(Duration::from_micros(200));
                    } else {
                        seen.lock().unwrap().extend(got);
                    }
                }
                rx.kernel_drops()
            })
        };
        Receiver { seen, stop, thread }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Sends every burst (each after [`IDLE`]) from `wire0` to `dst` on the child `dev` in `kid`,
/// and reports what each delivered.
fn bursts(t: &Topo, kid: &str, dev: &str) -> (Vec<Outcome>, u32) {
    let rx = Receiver::start(PacketSocket::open(kid, dev, ETH_P_ALL));
    let small = PacketSocket::open(t.wire.name(), "wire0", 0);
    let big = PacketSocket::open(t.wire.name(), "wire0", 0);
    big.set_vnet_hdr().unwrap();
    let kinds = [Kind::Small, Kind::Super, Kind::Mixed];
    let mut outcomes = Vec::new();
    for round in 0..REPEAT {
        for (k, kind) in kinds.into_iter().enumerate() {
            let burst = (round * kinds.len() as u64 + k as u64) << 32;
            let frames: Vec<(bool, Vec<u8>)> = (0..kind.frames())
                .map(|i| {
                    let n = burst | i;
                    match kind.is_super(i) {
                        true => (true, gso_frame(C0, n, SUPER_LEN)),
                        false => (false, test_frame(C0, SRC, None, n, 64)),
                    }
                })
                .collect();
            let before = rx.count();
            std::thread::sleep(IDLE);
            for (is_super, f) in &frames {
                let sock = if *is_super { &big } else { &small };
                sock.send(f)
                    .unwrap_or_else(|e| panic!("{kind:?} burst: sending failed: {e}"));
            }
            // Delivered once nothing more arrives for 300 ms (or everything did).
            let (mut last, mut quiet) = (rx.count(), Instant::now());
            while rx.count() - before < frames.len() && quiet.elapsed() < Duration::from_millis(300)
            {
                std::thread::sleep(Duration::from_millis(10));
                if rx.count() != last {
                    (last, quiet) = (rx.count(), Instant::now());
                }
            }
            let seen = rx.seen.lock().unwrap();
            let got: Vec<(u64, usize)> = seen[before..]
                .iter()
                .filter(|(n, _)| n & !0xffff_ffff == burst)
                .copied()
                .collect();
            let o = Outcome {
                kind,
                sent: frames.len() as u64,
                delivered: got.len() as u64,
                whole: got.iter().filter(|(_, len)| *len == SUPER_LEN).count() as u64,
                in_order: got.windows(2).all(|w| w[0].0 < w[1].0),
            };
            eprintln!("{dev}: round {round}: {o:?}");
            outcomes.push(o);
        }
    }
    (outcomes, rx.stop())
}

/// Every burst arrived whole and in order.
fn assert_whole(arm: &str, outcomes: &[Outcome], sock_drops: u32) {
    let bad: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| {
            let supers = (0..o.sent).filter(|i| o.kind.is_super(*i)).count() as u64;
            o.delivered != o.sent || o.whole != supers || !o.in_order
        })
        .collect();
    assert!(
        bad.is_empty() && sock_drops == 0,
        "{arm}: bursts after idle not delivered whole and in order (the child's socket dropped \
         {sock_drops}): {bad:#?}"
    );
}

#[test]
fn bursts_after_idle_reach_the_child_whole_like_the_kernels_macvlan() {
    // The reference: the kernel's macvlan on the same kind of topology.
    let k = topo("rbk", 1);
    for ns in [k.host.name(), k.wire.name(), k.kid(0)] {
        common::disable_ipv6(ns);
    }
    let (h, kid) = (k.host.name(), k.kid(0));
    let mac = C0.to_string();
    ip(&[
        "-n", h, "link", "add", "m0", "link", "p0", "address", &mac, "type", "macvlan", "mode",
        "bridge",
    ]);
    ip(&["-n", h, "link", "set", "m0", "netns", kid]);
    ip(&["-n", kid, "link", "set", "m0", "up"]);
    let (outcomes, drops) = bursts(&k, kid, "m0");
    assert_whole("the kernel's macvlan", &outcomes, drops);
    drop(k);

    // umacvlan with its default options.
    let t = topo("rbu", 1);
    for ns in [t.host.name(), t.wire.name(), t.kid(0)] {
        common::disable_ipv6(ns);
    }
    let args = [
        "--port".to_string(),
        format!("name=c0,netns={},mac={C0}", t.kid(0)),
    ];
    let engine = t.start(&args, &[(0, "c0")]);
    ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    let parent = || t.stats()["parents"][0].clone();
    wait_until("the engine reads its V2 ring", || {
        parent()["ring_mode"] == "v2"
    });
    assert_eq!(parent()["ring"], "auto", "the default ring");
    let (outcomes, drops) = bursts(&t, t.kid(0), "c0");
    // The kernel's ring counters are folded in every 10 ms.
    std::thread::sleep(Duration::from_millis(100));
    let s = t.stats();
    let p = &s["parents"][0];
    eprintln!(
        "umacvlan: ring_drops {}, mode switches {}, port drops {}",
        p["ring_drops"], p["ring_mode_switches"], s["ports"][0]["stats"]["rx_dropped"]
    );
    assert_whole("umacvlan --ring auto", &outcomes, drops);
    assert_eq!(p["ring_drops"], 0, "the engine's ring dropped frames: {s}");
    let (status, report) = engine.stop();
    assert!(status.success(), "{report}");
}
