//! 802.1Q parents emulated in userspace (root): `umacvlan run --parent p0.100` on a kernel with
//! no `8021q` module, against the kernel's own equivalent, side by side.
//!
//! The kernel's reference without `8021q` (and without a VLAN-filtering bridge, which needs it):
//! the kernel's own tag handling (`skb_vlan_pop`/`skb_vlan_push`, from tc programs:
//! `common::tagger`) between the wire-side device and one veth pair per VLAN: 100, 200 and the
//! untagged (lower) one. The kernel's macvlans on the veths' peers are the reference. The engine
//! runs on the other arm's `p0` with three parents at once: `p0.100` and `p0.200` (emulated
//! sub-interfaces) and `p0` itself. Both arms get the same frames from their wire and from their
//! children; the receivers, the tags they saw and the tags on the wire must be the same, for
//! bridge, vepa, private and passthru. Then ping and TCP (GSO super-frames both ways) through
//! both arms; the counters, stats and metrics of each parent; carrier, MTU and the lower device
//! deleted and back; follow and capture; and the refusals.

#[allow(unused_imports, unused_macros)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::engine::{Engine, Topo, counters_of, ping, topo};
use common::{EXT_MAC, PacketSocket, UNKNOWN_MAC, disable_ipv6, netns, tagger, test_frame};
use umacvlan::net::testutil::{NetnsGuard, ip, ip_json, wait_until};
use umacvlan::sys::PacketPort;
use umacvlan::wire::mac::MacAddr;
use umacvlan::wire::vnet::VNET_HDR_LEN;

/// The parents' MAC, in both arms (the kernel's access-port peers get it too, so passthru
/// children have the same MAC in both).
const P_MAC: &str = "02:00:00:00:10:00";
/// The VLANs: two emulated sub-interfaces and the untagged parent.
const VLANS: [Option<u16>; 3] = [Some(100), Some(200), None];

fn suffix(v: Option<u16>) -> String {
    v.map_or("u".to_string(), |v| v.to_string())
}

/// The engine's parent for a VLAN.
fn engine_parent(v: Option<u16>) -> String {
    v.map_or("p0".to_string(), |v| format!("p0.{v}"))
}

/// One child: its name (the same in both arms), VLAN and MAC.
#[derive(Clone, Debug)]
struct Kid {
    name: String,
    vlan: Option<u16>,
    mac: MacAddr,
}

fn kids(mode: &str) -> Vec<Kid> {
    let per = if mode == "passthru" { 1 } else { 2 };
    let mut out = Vec::new();
    for (i, v) in VLANS.iter().enumerate() {
        for j in 0..per {
            let mac = if mode == "passthru" {
                P_MAC.parse().unwrap()
            } else {
                MacAddr([2, 0, 0, 0x10, u8::try_from(i + 1).unwrap(), j + 1])
            };
            out.push(Kid {
                name: format!("c{}{}", suffix(*v), ["a", "b"][usize::from(j)]),
                vlan: *v,
                mac,
            });
        }
    }
    out
}

/// One arm: a wire namespace with `wire0`, and a namespace with the children.
struct Arm {
    /// `engine` or `kernel`.
    what: &'static str,
    wire: String,
    kids_ns: String,
    kids: Vec<Kid>,
    /// The engine arm's topology and engine, or the kernel arm's namespaces.
    engine: Option<(Topo, Engine)>,
    _guards: Vec<NetnsGuard>,
}

/// The engine arm: `run --parent p0.100` with its ports, then `link add` for `p0.200` and `p0`.
fn engine_arm(tag: &str, mode: &str) -> Arm {
    let t = topo(tag, 1);
    for ns in [t.wire.name(), t.host.name(), t.kid(0)] {
        disable_ipv6(ns);
    }
    ip(&["-n", t.host.name(), "link", "set", "p0", "address", P_MAC]);
    let kids = kids(mode);
    let spec = |k: &Kid| {
        let mac = match mode {
            "passthru" => String::new(),
            _ => format!(",mac={}", k.mac),
        };
        format!("name={},mode={mode},netns={}{mac}", k.name, t.kid(0))
    };
    let first: Vec<String> = kids
        .iter()
        .filter(|k| k.vlan == VLANS[0])
        .flat_map(|k| ["--port".to_string(), spec(k)])
        .collect();
    let mut args = vec!["--parent".to_string(), engine_parent(VLANS[0])];
    args.extend(first);
    let here: Vec<(usize, &str)> = kids
        .iter()
        .filter(|k| k.vlan == VLANS[0])
        .map(|k| (0, k.name.as_str()))
        .collect();
    let e = t.start(&args, &here);
    for k in kids.iter().filter(|k| k.vlan != VLANS[0]) {
        let add = format!("{},parent={}", spec(k), engine_parent(k.vlan));
        t.ctl(&["link", "add", &add])
            .unwrap_or_else(|err| panic!("link add {add}: {err}\n{}", e.log_text()));
    }
    for k in &kids {
        ip(&["-n", t.kid(0), "link", "set", &k.name, "up"]);
    }
    Arm {
        what: "engine",
        wire: t.wire.name().to_string(),
        kids_ns: t.kid(0).to_string(),
        kids,
        engine: Some((t, e)),
        _guards: Vec::new(),
    }
}

/// The kernel arm: the VLAN-filtering bridge and a kernel macvlan per child.
fn kernel_arm(tag: &str, mode: &str) -> Arm {
    let wire = netns(&format!("{tag}kw"));
    let host = netns(&format!("{tag}kh"));
    let kns = netns(&format!("{tag}kc"));
    let (w, h, c) = (wire.name(), host.name(), kns.name());
    for ns in [w, h, c] {
        disable_ipv6(ns);
    }
    ip(&[
        "-n", h, "link", "add", "k0", "type", "veth", "peer", "name", "wire0", "netns", w,
    ]);
    ip(&["-n", w, "link", "set", "wire0", "up"]);
    ip(&["-n", h, "link", "set", "k0", "up"]);
    for v in VLANS {
        let (a, p) = (format!("a{}", suffix(v)), format!("p{}", suffix(v)));
        ip(&[
            "-n", h, "link", "add", &a, "type", "veth", "peer", "name", &p,
        ]);
        ip(&["-n", h, "link", "set", &a, "up"]);
        ip(&["-n", h, "link", "set", &p, "address", P_MAC, "up"]);
    }
    tagger::install(h, "k0", [(100, "a100"), (200, "a200")], "au");
    let kids = kids(mode);
    for k in &kids {
        let parent = format!("p{}", suffix(k.vlan));
        let mut args = vec!["link", "add", &k.name, "link", &parent];
        let mac = k.mac.to_string();
        if mode != "passthru" {
            args.extend(["address", &mac]);
        }
        args.extend(["type", "macvlan", "mode", mode]);
        ip(&[&["-n", h][..], &args].concat());
        ip(&["-n", h, "link", "set", &k.name, "netns", c]);
        ip(&["-n", c, "link", "set", &k.name, "up"]);
    }
    Arm {
        what: "kernel",
        wire: w.to_string(),
        kids_ns: c.to_string(),
        kids,
        engine: None,
        _guards: vec![kns, host, wire],
    }
}

/// A receiver that sees a frame's outer tag inline (`PACKET_AUXDATA`).
fn tap_on(ns: &str, dev: &str) -> PacketPort {
    common::in_netns(ns, || {
        let index = nix::net::if_::if_nametoindex(dev).unwrap();
        PacketPort::open(dev, index).unwrap()
    })
}

/// The nonces read from `port` and the outer tag each had (`None`: untagged), as TPID and TCI.
fn drain(port: &PacketPort) -> Vec<(u64, Option<(u16, u16)>)> {
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    while let Ok(n) = port.read(&mut buf) {
        let f = &buf[VNET_HDR_LEN..n.min(buf.len())];
        let tpid = u16::from_be_bytes([f[12], f[13]]);
        let tag =
            matches!(tpid, 0x8100 | 0x88a8).then(|| (tpid, u16::from_be_bytes([f[14], f[15]])));
        if let Some(nonce) = common::nonce_of(f) {
            out.push((nonce, tag));
        }
    }
    out
}

/// How a probe is tagged on the wire.
#[derive(Clone, Copy, Debug)]
enum Tag {
    None,
    Q(u16),
    Ad(u16),
}

fn tagged(mut f: Vec<u8>, tag: Tag) -> Vec<u8> {
    let (tpid, vid) = match tag {
        Tag::None => return f,
        Tag::Q(v) => (0x8100u16, v),
        Tag::Ad(v) => (0x88a8, v),
    };
    let mut t = tpid.to_be_bytes().to_vec();
    t.extend_from_slice(&vid.to_be_bytes());
    f.splice(12..12, t);
    f
}

/// What an arm did with a list of probes: per probe, who got it, with the tag they saw.
type Outcome = BTreeMap<String, BTreeSet<String>>;

/// Sends `probes` (a description, the sender: `None` for the wire or a child's name, the frame)
/// and records where each one arrived: `wire` with its tag, or a child's name with the tag it
/// saw (children of a sub-interface must see none).
fn run_probes(arm: &Arm, probes: &[(String, Option<String>, Vec<u8>)]) -> Outcome {
    let wire_rx = tap_on(&arm.wire, "wire0");
    let kid_rx: Vec<(String, PacketPort)> = arm
        .kids
        .iter()
        .map(|k| (k.name.clone(), tap_on(&arm.kids_ns, &k.name)))
        .collect();
    let wire_tx = PacketSocket::open(&arm.wire, "wire0", 0);
    let kid_tx: BTreeMap<String, PacketSocket> = arm
        .kids
        .iter()
        .map(|k| (k.name.clone(), PacketSocket::open(&arm.kids_ns, &k.name, 0)))
        .collect();
    // Let the children's own start-up traffic pass.
    std::thread::sleep(Duration::from_millis(300));
    drain(&wire_rx);
    kid_rx.iter().for_each(|(_, p)| drop(drain(p)));
    for (_, from, frame) in probes {
        let s = from.as_ref().map_or(&wire_tx, |k| &kid_tx[k]);
        s.send(frame).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(600));
    let mut got: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let show =
        |t: Option<(u16, u16)>| t.map_or(String::new(), |(p, c)| format!(" {p:04x}:{c:04x}"));
    for (nonce, tag) in drain(&wire_rx) {
        got.entry(nonce)
            .or_default()
            .insert(format!("wire{}", show(tag)));
    }
    for (name, p) in &kid_rx {
        for (nonce, tag) in drain(p) {
            got.entry(nonce)
                .or_default()
                .insert(format!("{name}{}", show(tag)));
        }
    }
    probes
        .iter()
        .enumerate()
        .map(|(i, (what, ..))| {
            let n = u64::try_from(i).unwrap() + 1;
            (what.clone(), got.remove(&n).unwrap_or_default())
        })
        .collect()
}

/// The probes both arms get: from the wire, tagged 100, 200, untagged, priority-tagged (VID 0),
/// tagged with a VID no sub-interface has (300) and 802.1ad-tagged with VID 100, to every child, broadcast and an unknown MAC; from every child, to every other child,
/// broadcast and the wire.
fn probes(kids: &[Kid]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dsts: Vec<(String, MacAddr)> = kids.iter().map(|k| (k.name.clone(), k.mac)).collect();
    dsts.push(("bcast".into(), MacAddr::BROADCAST));
    dsts.push(("unknown".into(), UNKNOWN_MAC));
    let mut push = |what: String, from: Option<String>, dst: MacAddr, src: MacAddr, tag: Tag| {
        let nonce = u64::try_from(out.len()).unwrap() + 1;
        let f = tagged(test_frame(dst, src, None, nonce, 64), tag);
        out.push((what, from, f));
    };
    for tag in [
        Tag::Q(100),
        Tag::Q(200),
        Tag::None,
        Tag::Q(0),
        Tag::Q(300),
        Tag::Ad(100),
    ] {
        for (name, mac) in &dsts {
            push(format!("wire {tag:?} -> {name}"), None, *mac, EXT_MAC, tag);
        }
    }
    for k in kids {
        for (name, mac) in dsts.iter().filter(|(n, _)| *n != k.name) {
            let dst = if name == "unknown" { EXT_MAC } else { *mac };
            let (what, from) = (format!("{} -> {name}", k.name), Some(k.name.clone()));
            push(what, from, dst, k.mac, Tag::None);
        }
    }
    out
}

fn differential(mode: &str) {
    let tag = &format!("vl{}", &mode[..2]);
    let engine = engine_arm(tag, mode);
    let kernel = kernel_arm(tag, mode);
    let probes = probes(&engine.kids);
    let e = run_probes(&engine, &probes);
    let k = run_probes(&kernel, &probes);
    let diff: Vec<String> = probes
        .iter()
        .filter(|(what, ..)| e[what] != k[what])
        .map(|(what, ..)| format!("{what}: engine {:?}, kernel {:?}", e[what], k[what]))
        .collect();
    let log = engine
        .engine
        .as_ref()
        .map(|(_, e)| e.log_text())
        .unwrap_or_default();
    assert!(
        diff.is_empty(),
        "{mode}: {} of {} probes differ from the kernel's:\n{}\n{log}",
        diff.len(),
        probes.len(),
        diff.join("\n")
    );
    // Not both wrong the same way: the sub-interfaces' frames reached their children untagged,
    // and left tagged.
    let a = "c100a";
    assert!(e[&format!("wire Q(100) -> {a}")].contains(a), "{e:?}");
    assert!(!e[&format!("wire Q(200) -> {a}")].contains(a), "{e:?}");
    assert!(!e[&format!("wire None -> {a}")].contains(a), "{e:?}");
    assert!(
        e[&format!("{a} -> bcast")].contains("wire 8100:0064"),
        "{e:?}"
    );
    assert!(e["c200a -> bcast"].contains("wire 8100:00c8"), "{e:?}");
    assert!(e["cua -> bcast"].contains("wire"), "{e:?}");
    drop(kernel);
    if let Some((t, e)) = engine.engine {
        check_stats(&t, &e, &probes);
        let (status, report) = e.stop();
        assert!(status.success(), "{report}");
    }
}

/// Each parent counted exactly its own frames from the wire: those tagged with its VID, or
/// (the untagged parent) the untagged and priority-tagged ones, other VIDs' and 802.1ad ones;
/// another VLAN's frames are neither received nor dropped by it, and a sub-interface's ring
/// never even holds them.
fn check_stats(t: &Topo, e: &Engine, probes: &[(String, Option<String>, Vec<u8>)]) {
    let text = t.ctl(&["stats"]).unwrap();
    for want in ["p0.100 (VID 100 on p0)", "p0.200 (VID 200 on p0)"] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    let s = t.stats();
    let parents = s["parents"].as_array().unwrap_or_else(|| panic!("{s}"));
    let count = |p: &str| {
        let n = probes.iter().filter(|(w, ..)| w.starts_with(p)).count();
        u64::try_from(n).unwrap()
    };
    for (v, sent) in [
        (VLANS[0], count("wire Q(100)")),
        (VLANS[1], count("wire Q(200)")),
        (
            VLANS[2],
            count("wire None") + count("wire Q(0)") + count("wire Q(300)") + count("wire Ad(100)"),
        ),
    ] {
        let name = engine_parent(v);
        let p = parents
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no parent {name} in stats: {s}\n{}", e.log_text()));
        assert_eq!(p["rx_packets"].as_u64(), Some(sent), "{name}: {p}");
        match v {
            Some(vid) => {
                assert_eq!(p["vlan"], serde_json::json!({"lower": "p0", "vid": vid}));
                // Filtered in the kernel: the other VLANs' frames never reached its ring.
                assert_eq!(p["ring_packets"].as_u64(), Some(sent), "{name}: {p}");
            }
            None => assert!(p.get("vlan").is_none(), "{p}"),
        }
    }
}

#[test]
fn bridge_mode_matches_the_kernel_on_two_vids_and_untagged() {
    differential("bridge");
}

#[test]
fn vepa_mode_matches_the_kernel_on_two_vids_and_untagged() {
    differential("vepa");
}

#[test]
fn private_mode_matches_the_kernel_on_two_vids_and_untagged() {
    differential("private");
}

#[test]
fn passthru_mode_matches_the_kernel_on_two_vids_and_untagged() {
    differential("passthru");
}

/// The subnet of a VLAN's hosts: the wire's end is `.1`, the child `..a` is `.2`.
fn subnet(v: Option<u16>) -> String {
    format!("10.{}.0", v.unwrap_or(0) / 100)
}

/// Gives the arm's wire namespace one host per VLAN, behind the same kernel tag handling as the
/// kernel arm's parents, and the first child of each VLAN an address.
fn add_hosts(arm: &Arm) {
    let w = &arm.wire;
    for v in VLANS {
        let (x, y) = (format!("x{}", suffix(v)), format!("y{}", suffix(v)));
        ip(&[
            "-n", w, "link", "add", &x, "type", "veth", "peer", "name", &y,
        ]);
        ip(&["-n", w, "link", "set", &x, "up"]);
        ip(&["-n", w, "link", "set", &y, "up"]);
        ip(&[
            "-n",
            w,
            "addr",
            "add",
            &format!("{}.1/24", subnet(v)),
            "dev",
            &y,
        ]);
    }
    ip(&["-n", w, "addr", "flush", "dev", "wire0"]);
    tagger::install(w, "wire0", [(100, "x100"), (200, "x200")], "xu");
    for k in arm.kids.iter().filter(|k| k.name.ends_with('a')) {
        let addr = format!("{}.2/24", subnet(k.vlan));
        ip(&["-n", &arm.kids_ns, "addr", "add", &addr, "dev", &k.name]);
    }
}

/// One iperf3 run from `client` to `server` at `addr` for 2 s (`reverse`: the server sends);
/// returns the bytes received and the rate in Gbit/s.
fn iperf(server: &str, client: &str, addr: &str, reverse: bool) -> (u64, f64) {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", server, "iperf3", "-s", "-1", "-B", addr, "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec![
        "netns", "exec", client, "iperf3", "-c", addr, "-p", "5201", "-t", "2", "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    let _ = srv.kill();
    let _ = srv.wait();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 to {addr}: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let sum = &j["end"]["sum_received"];
    let bytes = sum["bytes"].as_u64().unwrap_or(0);
    (bytes, sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9)
}

/// Ping and TCP (both ways, with GSO super-frames) between each VLAN's child and its host on the
/// wire, through the engine's three parents at once and through the kernel's reference.
#[test]
fn ping_and_tcp_with_super_frames_through_two_vids_and_untagged() {
    let engine = engine_arm("vlip", "bridge");
    let kernel = kernel_arm("vlip", "bridge");
    for arm in [&engine, &kernel] {
        add_hosts(arm);
    }
    let log = || {
        engine
            .engine
            .as_ref()
            .map(|(_, e)| e.log_text())
            .unwrap_or_default()
    };
    for arm in [&engine, &kernel] {
        for v in VLANS {
            let to = format!("{}.1", subnet(v));
            ping(&arm.kids_ns, &to, 5).unwrap_or_else(|out| {
                panic!("{}: ping {to} lost frames:\n{out}\n{}", arm.what, log())
            });
        }
        for reverse in [false, true] {
            let (bytes, gbps) = iperf(&arm.wire, &arm.kids_ns, "10.1.0.1", reverse);
            let dir = if reverse {
                "wire -> child"
            } else {
                "child -> wire"
            };
            eprintln!("{}: TCP on VID 100, {dir}: {gbps:.2} Gbit/s", arm.what);
            assert!(
                bytes > 10_000_000,
                "{}: TCP {dir} on VID 100 moved only {bytes} bytes\n{}",
                arm.what,
                log()
            );
        }
    }
    let (_t, e) = engine.engine.unwrap();
    let (status, report) = e.stop();
    assert!(status.success(), "{report}");
    assert!(!report.contains("truncated"), "{report}");
    let (rx_packets, rx_bytes, tx_packets, tx_bytes, _) = counters_of(&report, "c100a");
    // GSO super-frames crossed the sub-interface whole, both ways: the average frame is above
    // the MTU.
    assert!(
        rx_bytes / rx_packets.max(1) > 1514,
        "no super-frames to c100a:\n{report}"
    );
    assert!(
        tx_bytes / tx_packets.max(1) > 1514,
        "no super-frames from c100a:\n{report}"
    );
}

/// A reserved VID, a VLAN parent with no lower device and stacked tags are refused, with what to
/// do, by `run` (exit status 2, nothing created) and by `link add` on a running engine.
#[test]
fn bad_vlan_parents_are_refused_and_nothing_is_created() {
    let t = topo("vlbad", 1);
    let cases = [
        ("p0.4095", "VID 4095 is out of range"),
        ("nope.100", "no \"nope\" to emulate it on"),
        ("nope.7.100", "stacked VLAN tags"),
    ];
    for (parent, says) in cases {
        let args = [
            "--parent".to_string(),
            parent.to_string(),
            "--port".to_string(),
            format!("name=c0,netns={}", t.kid(0)),
        ];
        let o = t.run_fails(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{parent}: {err}");
        assert!(err.contains(says), "{parent}: {err}");
        assert!(
            common::try_ip(t.kid(0), &["link", "show", "c0"]).is_err(),
            "{parent}: a port was created"
        );
    }
    let args = ["--parent".to_string(), "p0.100".to_string()];
    let e = t.start(&args, &[]);
    wait_until("the engine's control socket", || {
        t.ctl(&["link", "show"]).is_ok()
    });
    for (parent, says) in cases {
        let add = format!("name=c0,netns={},parent={parent}", t.kid(0));
        let err = t.ctl(&["link", "add", &add]).unwrap_err();
        assert!(err.contains(says), "{parent}: {err}\n{}", e.log_text());
    }
    let (status, _) = e.stop();
    assert!(status.success());
}

/// An emulated parent follows its lower device as a VLAN device does: carrier (its ports lose
/// and regain it with the lower's), and MTU (lowered with the lower's, as NETDEV_CHANGEMTU
/// lowers a VLAN device and then its macvlans).
#[test]
fn an_emulated_parent_follows_its_lower_carrier_and_mtu() {
    let arm = engine_arm("vlcar", "bridge");
    add_hosts(&arm);
    let (t, e) = arm.engine.as_ref().unwrap();
    let kids = &arm.kids_ns;
    let has = |flag: &str| common::engine::has_flag(kids, "c100a", flag);
    wait_until("carrier on c100a", || has("LOWER_UP"));
    ping(kids, "10.1.0.1", 3).unwrap_or_else(|o| panic!("before: {o}\n{}", e.log_text()));
    ip(&["-n", &arm.wire, "link", "set", "wire0", "down"]);
    wait_until("c100a to lose its carrier with p0's", || !has("LOWER_UP"));
    ip(&["-n", &arm.wire, "link", "set", "wire0", "up"]);
    wait_until("c100a's carrier back", || has("LOWER_UP"));
    std::thread::sleep(Duration::from_millis(300));
    ping(kids, "10.1.0.1", 3).unwrap_or_else(|o| panic!("after: {o}\n{}", e.log_text()));
    ip(&["-n", t.host.name(), "link", "set", "p0", "mtu", "1400"]);
    let mtu = || ip_json(&["-n", kids, "link", "show", "c100a"])[0]["mtu"].as_u64();
    wait_until("c100a's MTU lowered to p0's", || mtu() == Some(1400));
}

/// `trace --follow` and `capture` on an emulated parent see its frames as its ports do: its own
/// VID's only, untagged, under its name.
#[test]
fn follow_and_capture_show_a_sub_interfaces_frames_untagged() {
    let arm = engine_arm("vlobs", "bridge");
    let (t, e) = arm.engine.as_ref().unwrap();
    let follow = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", t.host.name(), common::engine::BIN])
            .args(args)
            .env("UMACVLAN_CONTROL", t.socket())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let trace = follow(&["trace", "--follow", "p0.100", "-c", "2", "-j"]);
    let capture = follow(&["capture", "p0.100", "-c", "2", "-w", "-"]);
    // Frames sent before both followers are attached would never reach them (`-c 2` would
    // wait for ever): wait for the engine's two relays.
    wait_until("the engine's two followers", || {
        common::threads_named(e.pid(), "umacvlan-follow") == 2
    });
    let wire = PacketSocket::open(&arm.wire, "wire0", 0);
    let mac = |n: &str| arm.kids.iter().find(|k| k.name == n).unwrap().mac;
    let frames: Vec<Vec<u8>> = [
        ("c200a", Tag::Q(200), 1),
        ("cua", Tag::None, 2),
        ("c100a", Tag::Q(100), 3),
        ("c100b", Tag::Q(100), 4),
    ]
    .into_iter()
    .map(|(to, tag, nonce)| tagged(test_frame(mac(to), EXT_MAC, None, nonce, 64), tag))
    .collect();
    // The four frames again every 100 ms until both followers have their two: a follower's
    // thread exists a moment before the engine hands it frames, and `-c 2` would wait for ever
    // for frames sent in that moment (seen once in CI).
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, captured) = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                for f in &frames {
                    wire.send(f).unwrap();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = trace.wait_with_output().unwrap();
        let captured = capture.wait_with_output().unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, captured)
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", e.log_text());
    let seen: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 2, "{text}");
    for (v, to) in seen.iter().zip(["c100a", "c100b"]) {
        assert_eq!(v["parent"], "p0.100", "{v}");
        assert_eq!(v["vlan"], serde_json::Value::Null, "{v}");
        assert_eq!(v["len"], 64, "68 bytes on the wire, the tag gone: {v}");
        assert_eq!(v["receivers"], serde_json::json!([to]), "{v}");
    }
    let out = captured;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tcpdump = Command::new("tcpdump")
        .args(["-n", "-e", "-r", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    std::io::Write::write_all(&mut tcpdump.stdin.take().unwrap(), &out.stdout).unwrap();
    let dump = String::from_utf8(tcpdump.wait_with_output().unwrap().stdout).unwrap();
    assert!(dump.contains(&mac("c100a").to_string()), "{dump}");
    assert!(dump.contains("ethertype Unknown (0x88b5)"), "{dump}");
    assert!(!dump.contains("vlan") && !dump.contains("802.1Q"), "{dump}");
}

/// The lower device deleted and made again: the emulated parent's ports lose carrier and wait,
/// as any parent's do, and forward its VID's frames again once it is back.
#[test]
fn an_emulated_parent_waits_for_its_lower_device_to_come_back() {
    let t = topo("vlgone", 1);
    let kid = t.kid(0).to_string();
    let port = format!("name=c0,mode=bridge,netns={kid},mac=02:00:00:00:10:c0");
    let args = ["--parent".into(), "p0.100".into(), "--port".into(), port];
    let e = t.start(&args, &[(0, "c0")]);
    ip(&["-n", &kid, "link", "set", "c0", "up"]);
    let has = |flag: &str| common::engine::has_flag(&kid, "c0", flag);
    wait_until("carrier on c0", || has("LOWER_UP"));
    ip(&["-n", t.host.name(), "link", "del", "p0"]);
    wait_until("c0 to lose its carrier with p0", || !has("LOWER_UP"));
    common::engine::recreate_wire(&t);
    wait_until("c0's carrier back with p0", || has("LOWER_UP"));
    std::thread::sleep(Duration::from_millis(300));
    let rx = tap_on(&kid, "c0");
    let wire = PacketSocket::open(t.wire.name(), "wire0", 0);
    let c0: MacAddr = "02:00:00:00:10:c0".parse().unwrap();
    for (tag, nonce) in [(Tag::Q(200), 1), (Tag::None, 2), (Tag::Q(100), 3)] {
        wire.send(&tagged(test_frame(c0, EXT_MAC, None, nonce, 64), tag))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(drain(&rx), [(3, None)], "{}", e.log_text());
    let (status, _) = e.stop();
    assert!(status.success());
}
