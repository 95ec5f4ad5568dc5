//! Passthru and source mode against the kernel's macvlan, in the same test (root): what each
//! arm's child receives, what the parent's promiscuity becomes, and whether IP works.
//!
//! * a passthru port takes the parent's MAC whatever `mac=` says, answers ping (2/2) and takes a
//!   TCP transfer from the wire, and sees unicast to the parent's MAC and to a foreign MAC as
//!   PACKET_HOST (docs/design.md#passthru), and follows the parent's MAC when it changes;
//! * the parent's promiscuity (`ip -d -j link show`) with a passthru+nopromisc port up, a
//!   passthru port up and down, and a bridge port up and down on the veth parent (§6, §8);
//! * a source-mode port's copy of a frame addressed to the parent's MAC is PACKET_HOST in the
//!   port, as the lower classified it (§7, `macvlan_forward_source_one`).
//!
//! Every test builds its own namespaces (`umv-<pid>-...`), removed by guards even on panic.

// The topology and the engine helpers (the parity harness's macro is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::engine::ping;
use common::{
    ChildSpec, ChildrenProvider, ETH_P_ALL, EXT_MAC, PARENT_MAC, PacketSocket, Topology,
    TopologySpec, UNKNOWN_MAC, in_netns, ip, nonce_of, require_root, test_frame,
};
use umacvlan::forward::Mode;
use umacvlan::wire::mac::MacAddr;

const PACKET_HOST: u8 = 0;
const PACKET_OTHERHOST: u8 = 3;
/// The parent's MAC after `ip link set p0 address`.
const NEW_PARENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x77]);

/// A MAC given to a passthru port, which must be ignored.
const GIVEN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0a, 0x01]);

/// Both arms: the kernel's macvlan (the reference) first, then the engine this build made.
fn arms() -> [(&'static str, ChildrenProvider); 2] {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_umacvlan"));
    [
        ("kernel", ChildrenProvider::Kernel),
        ("umacvlan", ChildrenProvider::Umacvlan { bin }),
    ]
}

fn build(tag: &str, children: Vec<ChildSpec>, provider: &ChildrenProvider) -> Topology {
    let spec = TopologySpec {
        tag: tag.to_string(),
        hairpin: false,
        children,
    };
    Topology::build(&spec, provider)
}

/// Sends one test frame per destination from the wire and returns, per destination, the
/// pkt_types child 0's tap saw it with.
fn pkttypes_at_child(t: &Topology, dsts: &[(&'static str, MacAddr)]) -> BTreeMap<String, Vec<u8>> {
    let sock = &t.children[0].sock;
    sock.drain(|_| {});
    for (i, (_, dst)) in dsts.iter().enumerate() {
        let f = test_frame(*dst, EXT_MAC, None, 0x7000 + i as u64, 60);
        t.wire
            .send(&f)
            .unwrap_or_else(|e| panic!("send to {dst}: {e}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut seen: BTreeMap<String, Vec<u8>> =
        dsts.iter().map(|(n, _)| (n.to_string(), vec![])).collect();
    sock.drain(|r| {
        let Some(n) = nonce_of(&r.bytes).and_then(|n| n.checked_sub(0x7000)) else {
            return;
        };
        if let Some((name, _)) = dsts.get(usize::try_from(n).unwrap()) {
            seen.get_mut(*name).expect("listed").push(r.pkttype);
        }
    });
    seen
}

/// `promiscuity` of `p0` in H (`ip -d -j link show`).
fn promiscuity(t: &Topology) -> u64 {
    let out = ip(t.host_ns.name(), &["-d", "-j", "link", "show", "dev", "p0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["promiscuity"]
        .as_u64()
        .unwrap_or_else(|| panic!("no promiscuity in {out}"))
}

/// The parent's promiscuity once it equals `want` (the kernel's in the same state), or what it
/// still is after 3 s: the engine learns a port's up/down state through rtnetlink, a moment
/// after it changes. `None` (the kernel's arm, which changes it synchronously): at once.
fn promiscuity_settled(t: &Topology, want: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = promiscuity(t);
        if want.is_none_or(|w| w == now) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes a TCP client in the wire namespace sent to a server at `addr` in child 0's namespace,
/// as the server counted them.
fn tcp_transfer(t: &Topology, addr: &str, bytes: usize) -> usize {
    let sa: std::net::SocketAddr = format!("{addr}:5201").parse().unwrap();
    let listener = in_netns(t.children[0].ns.name(), || TcpListener::bind(sa))
        .unwrap_or_else(|e| panic!("listen on {sa}: {e}"));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n,
                Err(e) => panic!("server read after {total} bytes: {e}"),
            }
        }
    });
    let mut c = in_netns(t.wire_ns.name(), || {
        TcpStream::connect_timeout(&sa, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("connect to {sa} from the wire: {e}"));
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        c.write_all(&chunk[..n])
            .unwrap_or_else(|e| panic!("send after {sent} bytes: {e}"));
        sent += n;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    server.join().expect("server thread")
}

#[test]
fn passthru_port_takes_the_parents_mac_and_carries_ping_and_tcp_like_the_kernel() {
    require_root();
    let mut results = Vec::new();
    for (arm, provider) in arms() {
        let mut pt = ChildSpec::new("c0", Mode::Passthru, PARENT_MAC);
        pt.given_mac = Some(GIVEN_MAC);
        // Topology::build checks that c0 has the parent's MAC, not the one given.
        let t = build(&format!("ptip{}", &arm[..1]), vec![pt], &provider);
        let types = pkttypes_at_child(
            &t,
            &[
                ("to the parent's MAC", PARENT_MAC),
                ("foreign", UNKNOWN_MAC),
            ],
        );
        ip(
            t.wire_ns.name(),
            &["addr", "add", "10.7.0.1/24", "dev", "we"],
        );
        let child = t.children[0].ns.name();
        ip(child, &["addr", "add", "10.7.0.2/24", "dev", "c0"]);
        let pinged = ping(t.wire_ns.name(), "10.7.0.2", 2);
        let moved = pinged
            .is_ok()
            .then(|| tcp_transfer(&t, "10.7.0.2", 8 << 20));
        // The parent's MAC changes (NETDEV_CHANGEADDR): does the port follow, and still answer?
        ip(
            t.host_ns.name(),
            &["link", "set", "p0", "address", &NEW_PARENT_MAC.to_string()],
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        let followed = loop {
            let out = ip(child, &["-j", "link", "show", "dev", "c0"]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let mac = v[0]["address"].as_str().unwrap_or_default().to_string();
            if mac == NEW_PARENT_MAC.to_string() || Instant::now() > deadline {
                break mac;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        ip(t.wire_ns.name(), &["neigh", "flush", "dev", "we"]);
        let after = ping(t.wire_ns.name(), "10.7.0.2", 2).is_ok();
        results.push((arm, types, pinged, moved, (followed, after)));
    }
    let (_, kernel_types, kernel_ping, kernel_tcp, kernel_follow) = &results[0];
    let (_, types, pinged, moved, follow) = &results[1];
    assert_eq!(
        kernel_follow,
        &(NEW_PARENT_MAC.to_string(), true),
        "the kernel's passthru child follows its lower's MAC (the reference)"
    );
    assert_eq!(
        follow, kernel_follow,
        "after the parent's MAC changed: (the port's MAC, ping), umacvlan vs kernel"
    );
    // The reference first: the kernel forces HOST for every unicast (§6).
    for (dst, seen) in kernel_types {
        assert_eq!(
            seen,
            &[PACKET_HOST],
            "kernel, unicast {dst}: {kernel_types:?}"
        );
    }
    assert!(kernel_ping.is_ok(), "kernel: ping 2/2: {kernel_ping:?}");
    assert_eq!(*kernel_tcp, Some(8 << 20), "kernel: the whole TCP transfer");
    assert_eq!(
        types, kernel_types,
        "what the child sees, umacvlan vs kernel"
    );
    assert!(
        pinged.is_ok(),
        "umacvlan: ping 2/2 as the kernel: {pinged:?}"
    );
    assert_eq!(*moved, Some(8 << 20), "umacvlan: the whole TCP transfer");
}

#[test]
fn parent_promiscuity_follows_the_kernels_rule() {
    require_root();
    let mut nopromisc = ChildSpec::new("c0", Mode::Passthru, PARENT_MAC);
    nopromisc.flags.nopromisc = true;
    let cases: [(&str, ChildSpec); 3] = [
        ("passthru nopromisc", nopromisc),
        ("passthru", ChildSpec::new("c0", Mode::Passthru, PARENT_MAC)),
        (
            "bridge",
            ChildSpec::new("c0", Mode::Bridge, MacAddr([2, 0, 0, 0, 0, 0x0c])),
        ),
    ];
    // (arm, state) -> promiscuity, kernel first so the engine is compared with it.
    let mut seen: Vec<BTreeMap<String, u64>> = Vec::new();
    for (arm, provider) in arms() {
        let mut states = BTreeMap::new();
        for (i, (what, spec)) in cases.iter().enumerate() {
            let want = |state: &str| seen.first().map(|k: &BTreeMap<String, u64>| k[state]);
            let t = build(
                &format!("prm{}{i}", &arm[..1]),
                vec![spec.clone()],
                &provider,
            );
            let up = format!("{what} up");
            states.insert(up.clone(), promiscuity_settled(&t, want(&up)));
            ip(t.children[0].ns.name(), &["link", "set", "c0", "down"]);
            let down = format!("{what} down");
            states.insert(down.clone(), promiscuity_settled(&t, want(&down)));
        }
        seen.push(states);
    }
    let expected: BTreeMap<String, u64> = [
        ("passthru nopromisc up", 0),
        ("passthru nopromisc down", 0),
        ("passthru up", 1),
        ("passthru down", 0),
        ("bridge up", 1),
        ("bridge down", 0),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    assert_eq!(
        seen[0], expected,
        "the kernel's promiscuity (the reference)"
    );
    assert_eq!(
        seen[1], seen[0],
        "the parent's promiscuity, umacvlan vs kernel"
    );
}

#[test]
fn source_copy_to_the_parents_mac_is_host_like_the_kernel() {
    require_root();
    let own = MacAddr([2, 0, 0, 0, 0, 0x5c]);
    let mut src = ChildSpec::new("c0", Mode::Source, own);
    src.sources = vec![EXT_MAC];
    let dsts = [
        ("to the parent's MAC", PARENT_MAC),
        ("to its own MAC", own),
        ("foreign", UNKNOWN_MAC),
    ];
    let mut seen = Vec::new();
    for (arm, provider) in arms() {
        let t = build(&format!("src{}", &arm[..1]), vec![src.clone()], &provider);
        seen.push(pkttypes_at_child(&t, &dsts));
    }
    let want: BTreeMap<String, Vec<u8>> = [
        ("to the parent's MAC", vec![PACKET_HOST]),
        ("to its own MAC", vec![PACKET_HOST]),
        ("foreign", vec![PACKET_OTHERHOST]),
    ]
    .into_iter()
    .map(|(s, v)| (s.to_string(), v))
    .collect();
    assert_eq!(seen[0], want, "the kernel's source copies (the reference)");
    assert_eq!(
        seen[1], seen[0],
        "source copies' pkt_type, umacvlan vs kernel"
    );
}

/// The passthru port's packet socket sees a foreign destination rewritten to its (the parent's)
/// MAC: the one visible trace of the rewrite (docs/design.md#differences-from-the-kernel).
#[test]
fn passthru_foreign_unicast_arrives_with_the_ports_mac_as_destination() {
    require_root();
    let [_, (_, provider)] = arms();
    let t = build(
        "ptrw",
        vec![ChildSpec::new("c0", Mode::Passthru, PARENT_MAC)],
        &provider,
    );
    let sock = PacketSocket::open(t.children[0].ns.name(), "c0", ETH_P_ALL);
    t.wire
        .send(&test_frame(UNKNOWN_MAC, EXT_MAC, None, 0x7100, 60))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    sock.drain(|r| {
        if nonce_of(&r.bytes) == Some(0x7100) {
            got.push((r.bytes[..6].to_vec(), r.pkttype));
        }
    });
    assert_eq!(got, vec![(PARENT_MAC.0.to_vec(), PACKET_HOST)]);
}
