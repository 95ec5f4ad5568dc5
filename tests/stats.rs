//! `umacvlan stats` and `/metrics` against a real engine (root): known traffic from the wire,
//! exact counts in both.
//!
//! Why the counts can be exact: IPv6 is off in every namespace (no DAD, RS, MLD), no port has
//! an IPv4 address and nothing in the topology sends ARP, so after the baseline the only frames
//! on the wire are the ones this test sends. Each of them carries a private ethertype that no
//! stack answers. The deltas between the baseline and the end must therefore be exactly N for
//! c0 and exactly M unknown-destination drops for the parent, and the parent's ring must have
//! read exactly N + M frames. A c0-side packet socket independently counts the N frames by
//! nonce.

// The parity helpers in common are for the parity tests.
#[allow(unused_macros, unused_imports)]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ETHERTYPE, EXT_MAC, PacketSocket, UNKNOWN_MAC, disable_ipv6, in_netns, nonce_of};
use serde_json::Value;
use umacvlan::net::testutil::{Topology, topology, try_ip, wait_until};
use umacvlan::wire::mac::MacAddr;

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");
/// Frames to c0's MAC.
const N: u64 = 37;
/// Frames to a MAC nobody owns.
const M: u64 = 11;
const FRAME_LEN: usize = 100;

struct Engine {
    topo: Topology,
    socket: PathBuf,
    port: u16,
    child: Child,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Engine {
    fn stats(&self) -> Value {
        common::engine::stats_json(self.topo.host.name(), &self.socket)
    }

    /// One GET from inside the host namespace (where 127.0.0.1:port is): the head, the body.
    fn get(&self, path: &str) -> (String, String) {
        let port = self.port;
        let raw = in_netns(self.topo.host.name(), move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        });
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole answer");
        (head.to_string(), body.to_string())
    }

    /// The scrape's samples: `name{labels}` → value.
    fn scrape(&self) -> BTreeMap<String, u64> {
        let (head, body) = self.get("/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(
                "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
            ),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{l}")))
            })
            .collect()
    }
}

fn port<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {stats}"))
}

fn parent_drop(stats: &Value, reason: &str) -> u64 {
    stats["parents"][0]["drops"][reason].as_u64().unwrap_or(0)
}

fn start() -> Engine {
    let topo = topology("st", 2);
    for ns in [topo.wire.name(), topo.host.name(), topo.kid(0), topo.kid(1)] {
        disable_ipv6(ns);
    }
    // A free port in the host namespace (nothing else runs there).
    try_ip(&["-n", topo.host.name(), "link", "set", "lo", "up"]).unwrap();
    let port = in_netns(topo.host.name(), || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let socket = topo.socket();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.host.name(),
            BIN,
            "run",
            "--parent",
            "p0",
        ])
        .arg(format!("--port=name=c0,netns={}", topo.kid(0)))
        .arg(format!("--port=name=c1,netns={}", topo.kid(1)))
        .arg(format!("--metrics-listen=127.0.0.1:{port}"))
        .env("UMACVLAN_CONTROL", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let e = Engine {
        topo,
        socket,
        port,
        child,
    };
    wait_until("the control socket", || e.socket.exists());
    e
}

#[test]
fn known_traffic_gives_exact_counts_in_stats_and_metrics() {
    let e = start();
    let kid0 = e.topo.kid(0).to_string();
    wait_until("c0 in its namespace", || {
        try_ip(&["-n", &kid0, "link", "show", "c0"]).is_ok()
    });
    try_ip(&["-n", &kid0, "link", "set", "c0", "up"]).unwrap();
    wait_until("c0 forwarding", || {
        port(&e.stats(), "c0")["forwarding"] == true
    });
    let c0_mac: MacAddr = port(&e.stats(), "c0")["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let tap = PacketSocket::open(&kid0, "c0", common::ETH_P_ALL);
    // Let anything a fresh up link might emit pass before the baseline.
    std::thread::sleep(Duration::from_millis(300));
    tap.drain(|_| {});

    let before = e.stats();
    let m_before = e.scrape();
    let key_rx = r#"umacvlan_port_receive_packets_total{port="c0",parent="p0",mode="bridge"}"#;
    let key_rx_bytes = r#"umacvlan_port_receive_bytes_total{port="c0",parent="p0",mode="bridge"}"#;
    let key_unknown =
        r#"umacvlan_drops_total{port="p0",reason="unknown_destination",kind="parent"}"#;
    assert_eq!(
        m_before[key_rx],
        port(&before, "c0")["stats"]["rx_packets"].as_u64().unwrap(),
        "stats and metrics agree before the traffic"
    );

    let wire = PacketSocket::open(e.topo.wire.name(), "wire0", ETHERTYPE);
    for i in 0..N {
        wire.send(&common::test_frame(
            c0_mac,
            EXT_MAC,
            None,
            1000 + i,
            FRAME_LEN,
        ))
        .unwrap();
    }
    for i in 0..M {
        wire.send(&common::test_frame(
            UNKNOWN_MAC,
            EXT_MAC,
            None,
            2000 + i,
            FRAME_LEN,
        ))
        .unwrap();
    }
    let rx = |s: &Value| port(s, "c0")["stats"]["rx_packets"].as_u64().unwrap();
    let (rx0, unknown0) = (rx(&before), parent_drop(&before, "unknown_destination"));
    wait_until("every frame counted", || {
        let s = e.stats();
        rx(&s) >= rx0 + N && parent_drop(&s, "unknown_destination") >= unknown0 + M
    });
    // Anything extra would have arrived by now.
    std::thread::sleep(Duration::from_millis(300));

    let after = e.stats();
    let c0 = &port(&after, "c0")["stats"];
    let c0_before = &port(&before, "c0")["stats"];
    let delta = |a: &Value, b: &Value, k: &str| a[k].as_u64().unwrap() - b[k].as_u64().unwrap();
    assert_eq!(delta(c0, c0_before, "rx_packets"), N, "{after}");
    assert_eq!(
        delta(c0, c0_before, "rx_bytes"),
        N * FRAME_LEN as u64,
        "{after}"
    );
    assert_eq!(
        parent_drop(&after, "unknown_destination") - unknown0,
        M,
        "{after}"
    );
    let (pa, pb) = (&after["parents"][0], &before["parents"][0]);
    assert_eq!(delta(pa, pb, "rx_packets"), N + M, "{after}");
    assert_eq!(pa["name"], "p0");
    assert_eq!(pa["ports"], 2);
    assert_eq!(pa["broadcast_queue_depth"], 0);
    assert_eq!(pa["bcqueuelen_used"], 1000);
    assert_eq!(pa["ring_drops"], 0);
    assert!(
        pa["ring_packets"].as_u64().unwrap() >= N + M,
        "the kernel's ring saw them too: {after}"
    );
    // c1 is down and got nothing.
    assert_eq!(port(&after, "c1")["stats"]["rx_packets"], 0);
    assert_eq!(port(&after, "c1")["forwarding"], false);

    // What c0 itself saw: exactly our N frames, by nonce.
    let mut seen = Vec::new();
    tap.drain(|r| seen.extend(nonce_of(&r.bytes)));
    seen.sort_unstable();
    assert_eq!(seen, (1000..1000 + N).collect::<Vec<_>>());

    // The scrape says the same, from the same kind of snapshot.
    let m_after = e.scrape();
    assert_eq!(m_after[key_rx] - m_before[key_rx], N);
    assert_eq!(
        m_after[key_rx_bytes] - m_before[key_rx_bytes],
        N * FRAME_LEN as u64
    );
    assert_eq!(m_after[key_unknown] - m_before[key_unknown], M);
    assert_eq!(m_after[key_rx], c0["rx_packets"].as_u64().unwrap());
    assert_eq!(
        m_after[key_unknown],
        parent_drop(&after, "unknown_destination")
    );
    assert_eq!(
        m_after[r#"umacvlan_parent_receive_packets_total{parent="p0"}"#],
        pa["rx_packets"].as_u64().unwrap()
    );
    assert_eq!(m_after[r#"umacvlan_ports{parent="p0",mode="bridge"}"#], 2);
    assert_eq!(m_after[r#"umacvlan_broadcast_queue_depth{parent="p0"}"#], 0);
    assert_eq!(m_after[r#"umacvlan_ring_drops_total{parent="p0"}"#], 0);
    assert_eq!(
        m_after[r#"umacvlan_port_forwarding{port="c1",parent="p0",mode="bridge"}"#],
        0
    );
    assert_eq!(
        m_after[&format!(
            r#"umacvlan_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )],
        1
    );

    // Other paths and methods.
    assert!(e.get("/").0.starts_with("HTTP/1.1 404 "));
    let port = e.port;
    let head = in_netns(e.topo.host.name(), move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"DELETE /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");

    // The readable view names the port, its state and the parent's top drop.
    let o = Command::new("ip")
        .args(["netns", "exec", e.topo.host.name(), BIN, "stats"])
        .env("UMACVLAN_CONTROL", &e.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\nc0 "), "{text}");
    assert!(text.contains(" forwarding "), "{text}");
    assert!(
        text.contains(&format!(
            "unknown_destination={}",
            parent_drop(&after, "unknown_destination")
        )),
        "{text}"
    );
    assert!(text.contains("ring of p0 (kernel): packets "), "{text}");
}
