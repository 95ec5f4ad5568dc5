//! Every frame accounted for, under load (root): a flood from the wire into an engine whose
//! receive ring is made tiny so that it overruns, then the exact invariants:
//!
//! * the kernel's ring saw `packets = ours + its drops` (nothing lost without a count);
//! * every frame we took is forwarded or dropped exactly once: `rx = forwarded + dropped`;
//! * the drops by reason add up to the dropped frames;
//! * the port received exactly the frames counted as forwarded (one receiver each);
//!
//! once with a V3 ring alone and once with `--ring auto` (both of its rings).

// Only the raw-socket helpers are used here.
#[allow(unused_imports, unused_macros)]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use umacvlan::net::testutil::{ip, topology, try_ip, wait_until};
use umacvlan::wire::mac::MacAddr;

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");
const FRAMES: u64 = 60_000;

/// The numbers on the line that starts with `prefix`, after the prefix.
fn numbers(report: &str, prefix: &str) -> Vec<u64> {
    let line = report
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{report}"));
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn every_frame_is_forwarded_or_dropped_exactly_once_even_when_the_ring_overruns() {
    overrun("acct", &["--ring", "v3"]);
}

/// The same with `--ring auto` (the default): both rings tiny, each overrunning in turn (the flood starts on
/// V2 and moves to V3), and the kernel's counters of both added up.
#[test]
fn the_same_with_both_rings_of_ring_auto() {
    overrun("accta", &["--ring", "auto", "--workers", "1"]);
}

fn overrun(tag: &str, ring_args: &[&str]) {
    let t = topology(tag, 1);
    for ns in [t.host.name(), t.wire.name(), t.kid(0)] {
        common::disable_ipv6(ns);
    }
    let c0: MacAddr = "02:00:00:00:00:c0".parse().unwrap();
    let engine = Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "run", "--parent", "p0"])
        .args(["--port", &format!("name=c0,netns={},mac={c0}", t.kid(0))])
        // Two 4 KiB blocks: a flood overruns it.
        .args(["--ring-block-size", "4096", "--ring-blocks", "2"])
        .args(ring_args)
        .env("UMACVLAN_CONTROL", t.socket())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("c0", || {
        try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok()
    });
    ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    std::thread::sleep(Duration::from_millis(300));

    let wire = common::PacketSocket::open(t.wire.name(), "wire0", 0);
    let unknown: MacAddr = "02:00:00:00:00:99".parse().unwrap();
    let src: MacAddr = "02:00:00:00:09:09".parse().unwrap();
    for i in 0..FRAMES {
        let dst = if i % 3 == 0 { unknown } else { c0 };
        wire.send(&common::test_frame(dst, src, None, i, 64))
            .unwrap();
    }
    // Let the last block retire (1 ms timer) and the engine drain it.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(engine.id()).unwrap()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let out = engine.wait_with_output().unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).into_owned();

    let [rx, forwarded, dropped] = numbers(&report, "accounting of p0:")[..] else {
        panic!("{report}")
    };
    let ring = numbers(&report, "ring of p0 (kernel):");
    let (ring_packets, ring_drops) = (ring[0], ring[1]);
    assert!(
        ring_drops > 0,
        "the tiny ring should have overrun:\n{report}"
    );
    assert!(ring_packets <= FRAMES, "{report}");
    assert_eq!(
        ring_packets,
        rx + ring_drops,
        "frames lost without a count:\n{report}"
    );
    assert_eq!(rx, forwarded + dropped, "{report}");
    let parent_row = report.lines().find(|l| l.starts_with("p0 ")).unwrap();
    let by_reason: u64 = parent_row
        .split_whitespace()
        .filter_map(|w| w.split_once('=').map(|(_, n)| n.parse::<u64>().unwrap()))
        .sum();
    assert_eq!(by_reason, dropped, "drops by reason must add up:\n{report}");
    assert!(parent_row.contains("unknown_destination="), "{report}");
    let c0_rx = numbers(&report, "c0 ")[0];
    assert_eq!(
        c0_rx, forwarded,
        "each forwarded frame reached c0 exactly once:\n{report}"
    );
    let [c0_tx, c0_fwd, c0_drop] = numbers(&report, "accounting of c0:")[..] else {
        panic!("{report}")
    };
    assert_eq!(c0_tx, c0_fwd + c0_drop, "{report}");
    if ring_args.contains(&"auto") {
        // The flood overran V2 and moved to V3 (and back once it was over).
        let switches = numbers(&report, "ring mode switches of p0 (--ring auto):");
        assert!(switches[0] >= 1, "{report}");
    }
}
