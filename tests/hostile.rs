//! Hostile frames through the running engine (root), from the wire and from a TAP port: each is
//! either refused by the kernel before the engine could see it (asserted: that is why the engine
//! cannot meet it there) or a counted drop with its reason, never delivered; and the engine
//! forwards normally afterwards.
//!
//! | frame | from the wire | from a port (its namespace's AF_PACKET socket) |
//! |---|---|---|
//! | runt (13 bytes) | the kernel refuses the send (EINVAL) | the same |
//! | oversize | a veth drops frames over its MTU + 18: the send fails (EMSGSIZE) | `oversize` (the TAP's MTU raised past the parent's) |
//! | larger than a ring block | `truncated` | - (no ring on that side) |
//! | VLAN tag cut short | the kernel drops it before any packet tap (`skb_vlan_untag`) | `bad_vlan` |
//! | VID 4095 | `bad_vlan` | `bad_vlan` |
//! | bad virtio-net header | - (the kernel writes it) | the kernel refuses the send (EINVAL) |

// The raw-socket and engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::time::Duration;

use common::engine::{Engine, counters_of, topo};
use common::{ETH_P_ALL, PacketSocket, disable_ipv6, nonce_of, test_frame};
use umacvlan::mac::MacAddr;
use umacvlan::net::testutil::{ip, wait_until};

const C0: MacAddr = MacAddr([2, 0, 0, 0, 0x0c, 0]);
const C1: MacAddr = MacAddr([2, 0, 0, 0, 0x0c, 1]);
const EXT: MacAddr = MacAddr([2, 0, 0, 0, 0x0e, 1]);
/// Nonces of frames that must never be delivered start here; good frames are below.
const HOSTILE: u64 = 1 << 32;

/// `name=N` pairs of a counters line's drops column, by name.
fn drops(report: &str, port: &str) -> Vec<(String, u64)> {
    let (.., d) = counters_of(report, port);
    d.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

fn os_error(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A tagged frame whose tag is `tci`, `len` bytes in all.
fn tagged(dst: MacAddr, src: MacAddr, tci: u16, nonce: u64, len: usize) -> Vec<u8> {
    let mut f = test_frame(dst, src, None, nonce, len - 4);
    f.splice(12..12, [0x81, 0x00, (tci >> 8) as u8, tci as u8]);
    f
}

/// A frame that ends in the middle of its 802.1Q tag (TPID and TCI, no ethertype): 16 bytes.
fn cut_tag(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    f
}

/// Adds the nonces of the frames `sock` received (not sent) to `got`.
fn received(sock: &PacketSocket, got: &mut Vec<u64>) {
    sock.drain(|r| {
        if r.pkttype != libc::PACKET_OUTGOING {
            got.push(nonce_of(&r.bytes).unwrap_or(u64::MAX));
        }
    });
}

#[test]
fn hostile_frames_are_counted_drops_and_never_delivered() {
    let t = topo("hos", 2);
    let (h, w) = (t.host.name(), t.wire.name());
    for ns in [h, w, t.kid(0), t.kid(1)] {
        disable_ipv6(ns);
    }
    // Jumbo MTU on the wire so that a frame can be larger than a 4 KiB ring block.
    ip(&["-n", w, "link", "set", "wire0", "mtu", "9000"]);
    ip(&["-n", h, "link", "set", "p0", "mtu", "9000"]);
    let port = |i: usize, mac: MacAddr| {
        [
            "--port".to_string(),
            format!("name=c{i},netns={},mac={mac}", t.kid(i)),
        ]
    };
    let args = [
        port(0, C0).to_vec(),
        port(1, C1).to_vec(),
        ["--ring-block-size", "4096", "--ring-blocks", "8"]
            .map(String::from)
            .to_vec(),
    ]
    .concat();
    let e: Engine = t.start(&args, &[(0, "c0"), (1, "c1")]);
    for i in 0..2 {
        ip(&["-n", t.kid(i), "link", "set", &format!("c{i}"), "up"]);
    }
    // The TAP's MTU can be raised past the parent's in its namespace (a macvlan's cannot).
    ip(&["-n", t.kid(0), "link", "set", "c0", "mtu", "12000"]);
    let wire = PacketSocket::open(w, "wire0", ETH_P_ALL);
    let s0 = PacketSocket::open(t.kid(0), "c0", ETH_P_ALL);
    let s1 = PacketSocket::open(t.kid(1), "c1", ETH_P_ALL);
    std::thread::sleep(Duration::from_millis(300));
    let einval = Some(libc::EINVAL);

    // From the wire.
    assert_eq!(os_error(wire.send(&[0u8; 13])), einval, "runt");
    let big = test_frame(C0, EXT, None, HOSTILE, 9019);
    assert_eq!(
        os_error(wire.send(&big)),
        Some(libc::EMSGSIZE),
        "over MTU + 18"
    );
    wire.send(&test_frame(C0, EXT, None, HOSTILE + 1, 6000))
        .unwrap();
    wire.send(&cut_tag(C0, EXT)).unwrap();
    wire.send(&tagged(C0, EXT, 0x0fff, HOSTILE + 2, 64))
        .unwrap();
    wire.send(&tagged(C0, EXT, 0x2fff, HOSTILE + 3, 64))
        .unwrap();

    // From port c0.
    assert_eq!(os_error(s0.send(&[0u8; 13])), einval, "runt");
    s0.send(&test_frame(C1, C0, None, HOSTILE + 4, 10_000))
        .unwrap();
    s0.send(&cut_tag(C1, C0)).unwrap();
    s0.send(&tagged(C1, C0, 0x0fff, HOSTILE + 5, 64)).unwrap();
    // Bad virtio-net headers: the kernel refuses them at the send, so a port cannot produce one
    // (and the engine's own check, `bad_vnet_header`, is covered by unit tests).
    let vnet = PacketSocket::open(t.kid(0), "c0", ETH_P_ALL);
    vnet.set_vnet_hdr().unwrap();
    let frame = test_frame(C1, C0, None, HOSTILE + 6, 100);
    for (what, hdr) in [
        ("unknown GSO type", [0u8, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("checksum past the frame", [1, 0, 0, 0, 0, 0, 200, 0, 0, 0]),
    ] {
        let sent = vnet.send(&[&hdr[..], &frame].concat());
        assert_eq!(os_error(sent), einval, "{what}");
    }

    // And the engine still forwards.
    wire.send(&test_frame(C0, EXT, None, 1, 60)).unwrap();
    s0.send(&test_frame(C1, C0, None, 2, 60)).unwrap();
    let (mut got0, mut got1) = (Vec::new(), Vec::new());
    wait_until("the good frames", || {
        received(&s0, &mut got0);
        received(&s1, &mut got1);
        got0.contains(&1) && got1.contains(&2)
    });
    std::thread::sleep(Duration::from_millis(200));
    received(&s0, &mut got0);
    received(&s1, &mut got1);
    assert_eq!(got0, [1], "c0 received something else than the good frame");
    assert_eq!(got1, [2], "c1 received something else than the good frame");

    let (status, report) = e.stop();
    assert!(status.success(), "{report}");
    // Exactly these, and nothing else: the frame with the cut-short tag never reached the ring.
    let want = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    };
    assert_eq!(
        drops(&report, "p0"),
        want(&[("bad_vlan", 2), ("truncated", 1)]),
        "{report}"
    );
    assert_eq!(
        drops(&report, "c0"),
        want(&[("bad_vlan", 2), ("oversize", 1)]),
        "{report}"
    );
    assert_eq!(drops(&report, "c1"), want(&[]), "{report}");
}
