//! `run --ring auto` end to end (root): a sequence-numbered stream from the wire whose rate goes
//! up and down across the policy's thresholds makes the engine switch between its V2 and V3
//! rings, both ways, several times; the child must see the stream in order, and every frame it
//! does not see must be counted somewhere (the ring, the engine, its own socket). The switches and
//! the current mode show in `stats -j`.

// The engine helpers and the raw sockets only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::engine::{Topo, topo};
use common::{ETH_P_ALL, PacketSocket, nonce_of, test_frame};
use umacvlan::net::testutil::wait_until;
use umacvlan::wire::mac::MacAddr;

const C0: &str = "02:00:00:00:00:c0";
/// Rounds of a sparse phase (one frame every 100 µs, at most 10 kpps: under the V3 → V2
/// threshold, and frequent enough that while V3's open block waits for its retire timer (up to
/// 1 ms) newer frames reach V2: a worker that read V2 too early would reorder them) then a blast
/// (back to back: far beyond what V2 keeps up with).
const ROUNDS: u64 = 3;
const SPARSE: Duration = Duration::from_millis(200);
const BLAST: u64 = 20_000;

fn parent(t: &Topo) -> serde_json::Value {
    t.stats()["parents"][0].clone()
}

fn mode(t: &Topo) -> String {
    parent(t)["ring_mode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_flow_stays_in_order_and_complete_across_ring_mode_switches() {
    let t = topo("rauto", 1);
    for ns in [t.host.name(), t.wire.name(), t.kid(0)] {
        common::disable_ipv6(ns);
    }
    let args: Vec<String> = ["--ring", "auto", "--workers", "1", "--port"]
        .map(String::from)
        .into_iter()
        .chain([format!("name=c0,netns={},mac={C0}", t.kid(0))])
        .collect();
    let engine = t.start(&args, &[(0, "c0")]);
    umacvlan::net::testutil::ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    // Frames sent before the engine saw c0 up would be `unknown_destination` at the parent.
    wait_until("c0 forwarding", || {
        t.stats()["ports"][0]["forwarding"] == true
    });
    wait_until("the engine reads its V2 ring", || mode(&t) == "v2");
    let p = parent(&t);
    assert_eq!(p["ring"], "auto", "{p}");
    assert_eq!(
        p["ring_mode_switches"], 0,
        "starting on V2 is no switch: {p}"
    );

    // The child's receiver reads while the wire sends.
    let rx = PacketSocket::open(t.kid(0), "c0", ETH_P_ALL);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut quiet_since = Instant::now();
            while !stop.load(Ordering::Relaxed)
                || quiet_since.elapsed() < Duration::from_millis(300)
            {
                let before = seen.len();
                rx.drain(|r| seen.extend(nonce_of(&r.bytes)));
                if seen.len() == before {
                    std::thread::sleep(Duration::from_micros(200));
                } else {
                    quiet_since = Instant::now();
                }
            }
            (seen, rx.kernel_drops())
        })
    };

    let wire = PacketSocket::open(t.wire.name(), "wire0", 0);
    let c0: MacAddr = C0.parse().unwrap();
    let src: MacAddr = "02:00:00:00:09:09".parse().unwrap();
    let mut next = 0u64;
    let mut send = || {
        wire.send(&test_frame(c0, src, None, next, 64)).unwrap();
        next += 1;
    };
    let sparse = |send: &mut dyn FnMut()| {
        let end = Instant::now() + SPARSE;
        while Instant::now() < end {
            send();
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    for _ in 0..ROUNDS {
        sparse(&mut send);
        for _ in 0..BLAST {
            send();
        }
    }
    sparse(&mut send);
    let sent = next;
    stop.store(true, Ordering::Relaxed);
    let (seen, sock_drops) = reader.join().unwrap();

    // In order: strictly increasing sequence numbers (no reordering, no duplicate).
    if let Some(w) = seen.windows(2).find(|w| w[1] <= w[0]) {
        panic!(
            "the stream was reordered: {} came after {} ({} of {sent} frames seen)",
            w[1],
            w[0],
            seen.len()
        );
    }
    // Back on V2 once the traffic is sparse again, after switching both ways every round.
    wait_until("the engine reads its V2 ring again", || mode(&t) == "v2");
    let s = t.stats();
    let p = &s["parents"][0];
    let switches = p["ring_mode_switches"].as_u64().unwrap();
    assert!(
        switches >= 2 * ROUNDS,
        "{ROUNDS} blasts, each followed by sparse traffic, should switch at least {} times: {p}",
        2 * ROUNDS
    );
    // Complete: every frame sent reached the child or is counted where it was lost.
    let ring_drops = p["ring_drops"].as_u64().unwrap();
    let c0_drops = s["ports"][0]["stats"]["rx_dropped"].as_u64().unwrap();
    assert_eq!(
        seen.len() as u64 + u64::from(sock_drops) + ring_drops + c0_drops,
        sent,
        "seen {} + the child socket's drops {sock_drops} + ring drops {ring_drops} + the \
         engine's drops for c0 {c0_drops} must be every frame sent: {s}",
        seen.len()
    );
    let (status, report) = engine.stop();
    assert!(status.success(), "{report}");
}
