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
//!
//! And a port misbehaving in its own namespace (what anyone root in a container can do to its
//! TAP): taking the parent's MAC (up or down), MAC flaps at over 1 kHz, MTU flaps, up/down
//! storms, deleting the TAP. The engine's CPU and log stay bounded, it keeps answering its
//! control socket and forwarding for the other port, and the port recovers when it behaves.

// The raw-socket and engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::time::Duration;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::engine::{Engine, Topo, counters_of, ping, topo};
use common::{ETH_P_ALL, PacketSocket, disable_ipv6, nonce_of, test_frame};
use umacvlan::net::testutil::{ip, ip_json, wait_until};
use umacvlan::wire::mac::MacAddr;

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
    let [hi, lo] = tci.to_be_bytes();
    f.splice(12..12, [0x81, 0x00, hi, lo]);
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

/// The engine's CPU time so far (user + system, all threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap();
    let hz = u64::try_from(hz).unwrap();
    Duration::from_millis(ticks * 1000 / hz)
}

/// Runs `lines` as one `ip -n NS -batch -` (thousands of link changes a second) and returns
/// how long it took.
fn ip_batch(ns: &str, lines: &[String]) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["-n", ns, "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ip -batch");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(lines.join("\n").as_bytes()).unwrap();
    drop(stdin);
    child.wait().unwrap();
    start.elapsed()
}

/// `umacvlan ARGS -j` against the engine, which must answer within 5 s.
fn ctl_json(t: &Topo, args: &[&str]) -> serde_json::Value {
    let args = [args, &["-j"]].concat();
    let out = t
        .ctl(&args)
        .unwrap_or_else(|e| panic!("umacvlan {args:?}: {e}"));
    serde_json::from_str(&out).unwrap()
}

/// The engine answers its control socket and port `c1` still answers pings from the wire.
fn still_serving(t: &Topo, e: &Engine, when: &str) {
    let stats = ctl_json(t, &["stats"]);
    assert!(stats["ports"].is_array(), "{when}: stats answered {stats}");
    ping(t.wire.name(), "192.0.2.2", 3)
        .unwrap_or_else(|o| panic!("{when}: c1 stopped forwarding:\n{o}\n{}", e.log_text()));
}

fn link_view(t: &Topo, port: &str) -> serde_json::Value {
    ctl_json(t, &["link", "show", port])[0].clone()
}

#[test]
fn a_port_misbehaving_in_its_namespace_harms_neither_the_engine_nor_its_siblings() {
    let t = topo("hns", 2);
    for ns in [t.host.name(), t.wire.name(), t.kid(0), t.kid(1)] {
        disable_ipv6(ns);
    }
    let args = [t.port(0, "bridge").to_vec(), t.port(1, "bridge").to_vec()].concat();
    let e: Engine = t.start(&args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    t.up(1, "192.0.2.2/24");
    let (k0, w) = (t.kid(0), t.wire.name());
    let own_mac = ip_json(&["-n", k0, "link", "show", "c0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let parent_mac = ip_json(&["-n", t.host.name(), "link", "show", "p0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(300));
    ping(w, "192.0.2.1", 2).unwrap_or_else(|o| panic!("{o}\n{}", e.log_text()));
    let (cpu0, wall0) = (cpu_time(e.pid()), Instant::now());

    // 1. The parent's MAC, taken while up: c0 is out of forwarding, with one log line.
    ip(&["-n", k0, "link", "set", "c0", "address", &parent_mac]);
    wait_until("c0 refused", || {
        link_view(&t, "c0")["umacvlan"]["refused"].is_string()
    });
    let refused = link_view(&t, "c0")["umacvlan"]["refused"].clone();
    assert!(
        refused.as_str().unwrap().contains("EADDRINUSE"),
        "{refused}"
    );
    assert_eq!(link_view(&t, "c0")["umacvlan"]["forwarding"], false);
    still_serving(&t, &e, "c0 on the parent's MAC");
    let lines = e.log_text().matches("is the parent's (EADDRINUSE)").count();
    assert_eq!(lines, 1, "one log line for the refusal: {}", e.log_text());
    // ... and back: c0 forwards again.
    ip(&["-n", k0, "link", "set", "c0", "address", &own_mac]);
    ip(&["-n", w, "neigh", "flush", "dev", "wire0"]);
    wait_until("c0 forwarding again", || {
        link_view(&t, "c0")["umacvlan"]["forwarding"] == true
    });
    ping(w, "192.0.2.1", 2).unwrap_or_else(|o| panic!("c0 back: {o}\n{}", e.log_text()));

    // 2. Taken while down, then up: refused at the moment it comes up, as the kernel's open.
    ip(&["-n", k0, "link", "set", "c0", "down"]);
    ip(&["-n", k0, "link", "set", "c0", "address", &parent_mac]);
    ip(&["-n", k0, "link", "set", "c0", "up"]);
    wait_until("c0 refused when it comes up", || {
        link_view(&t, "c0")["umacvlan"]["refused"].is_string()
    });
    still_serving(&t, &e, "c0 up on the parent's MAC");

    // 3. MAC flaps between the parent's MAC and its own, 4000 changes as fast as ip goes.
    let flaps: Vec<String> = (0..4000)
        .map(|i| {
            let mac = if i % 2 == 0 { &own_mac } else { &parent_mac };
            format!("link set c0 address {mac}")
        })
        .collect();
    let took = ip_batch(k0, &flaps);
    assert!(
        took < Duration::from_secs(4),
        "4000 MAC changes took {took:?}: not a 1 kHz flap"
    );
    still_serving(&t, &e, "after the MAC flaps");
    // 4. MTU flaps, past the parent's MTU too (a TAP takes it; a macvlan would refuse).
    let mtus: Vec<String> = (0..2000)
        .map(|i| format!("link set c0 mtu {}", [1400, 9000, 68, 1500][i % 4]))
        .collect();
    ip_batch(k0, &mtus);
    still_serving(&t, &e, "after the MTU flaps");
    // 5. Up/down storm.
    let storm: Vec<String> = (0..4000)
        .map(|i| format!("link set c0 {}", ["down", "up"][i % 2]))
        .collect();
    ip_batch(k0, &storm);
    still_serving(&t, &e, "after the up/down storm");
    // c0 behaves again (last MAC set was the parent's: give it its own back).
    ip(&["-n", k0, "link", "set", "c0", "address", &own_mac]);
    ip(&["-n", w, "neigh", "flush", "dev", "wire0"]);
    wait_until("c0 forwarding after the storms", || {
        link_view(&t, "c0")["umacvlan"]["forwarding"] == true
    });
    ping(w, "192.0.2.1", 2).unwrap_or_else(|o| panic!("c0 after storms: {o}\n{}", e.log_text()));

    // 6. The TAP deleted from inside its namespace.
    ip(&["-n", k0, "link", "del", "c0"]);
    wait_until("c0 not forwarding once deleted", || {
        link_view(&t, "c0")["umacvlan"]["forwarding"] == false
    });
    still_serving(&t, &e, "after c0 was deleted");
    std::thread::sleep(Duration::from_millis(500));
    still_serving(&t, &e, "0.5 s after c0 was deleted");

    // Bounded: the engine used well under one CPU over the storms (it was not spinning), and
    // its log stayed small (rate-limited per port).
    let (cpu, wall) = (cpu_time(e.pid()) - cpu0, wall0.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(),
        "the engine used {cpu:?} of CPU in {wall:?}"
    );
    let log = std::fs::metadata(&e.log).unwrap().len();
    assert!(
        log < 32 * 1024,
        "the log grew to {log} bytes: {}",
        e.log_text()
    );
    eprintln!("engine CPU {cpu:?} over {wall:?}; log {log} bytes");

    // And it still stops cleanly on SIGTERM, promptly.
    let stopped = Instant::now();
    let (status, report) = e.stop();
    assert!(status.success(), "{report}");
    assert!(stopped.elapsed() < Duration::from_secs(5));
}
