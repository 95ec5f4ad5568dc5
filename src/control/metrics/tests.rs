use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread::JoinHandle;

use super::*;
use crate::control::proto::{LinkStats, LinkView, ParentView};

fn drops(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
    v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

fn port(name: &str, mode: Mode, forwarding: bool, stats: LinkStats) -> LinkView {
    LinkView {
        name: name.into(),
        ifindex: Some(2),
        address: "02:00:00:00:00:01".parse().unwrap(),
        mtu: 1500,
        parent: "p0".into(),
        netns: Some("ns".into()),
        ifname: None,
        owner: None,
        up: forwarding,
        lower_up: true,
        forwarding,
        refused: None,
        promisc: false,
        allmulti: false,
        mode,
        nopromisc: false,
        nodst: false,
        bcqueuelen: 1000,
        usedbcqueuelen: 1000,
        bclim: 1,
        macaddr: Vec::new(),
        stats,
        kind: Default::default(),
        path: None,
        trust_guest_mac: false,
        persist: false,
    }
}

/// Two ports (one forwarding, one down) on one parent, with drops on both sides.
pub(crate) fn sample_stats() -> StatsView {
    StatsView {
        ports: vec![
            port(
                "c0",
                Mode::Bridge,
                true,
                LinkStats {
                    rx_packets: 10,
                    rx_bytes: 600,
                    rx_multicast: 1,
                    rx_dropped: 0,
                    tx_packets: 4,
                    tx_bytes: 256,
                    tx_dropped: 6,
                    drops: drops(&[("own_source", 1), ("mtu", 3), ("mode_isolation", 2)]),
                },
            ),
            port("c1", Mode::Vepa, false, LinkStats::default()),
        ],
        parents: vec![ParentView {
            name: "p0".into(),
            vlan: None,
            rx_packets: 17,
            rx_bytes: 1100,
            tx_packets: 4,
            tx_bytes: 256,
            drops: drops(&[
                ("unknown_destination", 5),
                ("multicast_not_joined", 2),
                ("runt", 1),
                ("no_receiver", 7),
            ]),
            ring_packets: 18,
            ring_drops: 1,
            ring_freezes: 0,
            ring: "auto".into(),
            ring_mode: "v2".into(),
            ring_mode_switches: 6,
            ring_steer_failures: 1,
            worker_priority: "fifo:1".into(),
            ports: 2,
            bcqueuelen_used: 1000,
            broadcast_queue_depth: 0,
        }],
    }
}

/// Every sample line of an exposition: `name{labels}` → value.
pub(crate) fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_encoder_turns_a_snapshot_into_openmetrics() {
    let text = encode(&sample_stats());
    assert!(text.ends_with("# EOF\n"), "{text}");
    let s = samples(&text);
    let want = [
        (
            r#"umacvlan_port_receive_bytes_total{port="c0",parent="p0",mode="bridge"}"#,
            "600",
        ),
        (
            r#"umacvlan_port_receive_packets_total{port="c0",parent="p0",mode="bridge"}"#,
            "10",
        ),
        (
            r#"umacvlan_port_transmit_bytes_total{port="c0",parent="p0",mode="bridge"}"#,
            "256",
        ),
        (
            r#"umacvlan_port_transmit_packets_total{port="c0",parent="p0",mode="bridge"}"#,
            "4",
        ),
        (
            r#"umacvlan_port_receive_packets_total{port="c1",parent="p0",mode="vepa"}"#,
            "0",
        ),
        (
            r#"umacvlan_port_forwarding{port="c0",parent="p0",mode="bridge"}"#,
            "1",
        ),
        (
            r#"umacvlan_port_forwarding{port="c1",parent="p0",mode="vepa"}"#,
            "0",
        ),
        (
            r#"umacvlan_parent_receive_bytes_total{parent="p0"}"#,
            "1100",
        ),
        (
            r#"umacvlan_parent_receive_packets_total{parent="p0"}"#,
            "17",
        ),
        (
            r#"umacvlan_parent_transmit_packets_total{parent="p0"}"#,
            "4",
        ),
        (r#"umacvlan_ring_packets_total{parent="p0"}"#, "18"),
        (r#"umacvlan_ring_drops_total{parent="p0"}"#, "1"),
        (r#"umacvlan_ring_freezes_total{parent="p0"}"#, "0"),
        (r#"umacvlan_ring_mode_switches_total{parent="p0"}"#, "6"),
        (r#"umacvlan_ring_steer_failures_total{parent="p0"}"#, "1"),
        (r#"umacvlan_ring_reading_v2{parent="p0"}"#, "1"),
        (
            r#"umacvlan_drops_total{port="c0",reason="mtu",kind="port"}"#,
            "3",
        ),
        (
            r#"umacvlan_drops_total{port="c0",reason="runt",kind="port"}"#,
            "0",
        ),
        (
            r#"umacvlan_drops_total{port="p0",reason="unknown_destination",kind="parent"}"#,
            "5",
        ),
        (
            r#"umacvlan_drops_total{port="p0",reason="no_receiver",kind="parent"}"#,
            "7",
        ),
        (r#"umacvlan_broadcast_queue_depth{parent="p0"}"#, "0"),
        (r#"umacvlan_broadcast_queue_length{parent="p0"}"#, "1000"),
        (r#"umacvlan_ports{parent="p0",mode="bridge"}"#, "1"),
        (r#"umacvlan_ports{parent="p0",mode="vepa"}"#, "1"),
        (r#"umacvlan_ports{parent="p0",mode="private"}"#, "0"),
        (
            &format!(
                r#"umacvlan_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            "1",
        ),
    ];
    for (k, v) in want {
        assert_eq!(s.get(k).map(String::as_str), Some(v), "{k} in\n{text}");
    }
    // Every reason for each of 2 ports and 1 parent; every mode for the parent.
    let count = |prefix: &str| s.keys().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(count("umacvlan_drops_total{"), 3 * DropReason::ALL.len());
    assert_eq!(count("umacvlan_ports{"), Mode::ALL.len());
    // Counters are declared without their suffix, bytes with their unit.
    for line in [
        "# TYPE umacvlan_port_receive_bytes counter",
        "# UNIT umacvlan_port_receive_bytes bytes",
        "# TYPE umacvlan_port_receive_packets counter",
        "# TYPE umacvlan_drops counter",
        "# TYPE umacvlan_ring_drops counter",
        "# TYPE umacvlan_broadcast_queue_depth gauge",
        "# TYPE umacvlan_ports gauge",
        "# TYPE umacvlan_build_info gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // Every sample line ends in an integer.
    assert!(s.values().all(|v| v.parse::<u64>().is_ok()), "{text}");
}

#[test]
fn an_emulated_vlan_parent_has_its_vid_and_a_real_one_none() {
    let mut stats = sample_stats();
    let mut vlan = stats.parents[0].clone();
    vlan.name = "p0.100".into();
    vlan.vlan = Some(crate::control::proto::VlanView {
        lower: "p0".into(),
        vid: 100,
    });
    stats.parents.push(vlan);
    let s = samples(&encode(&stats));
    assert_eq!(
        s.get(r#"umacvlan_parent_vlan{parent="p0.100",lower="p0"}"#)
            .map(String::as_str),
        Some("100")
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("umacvlan_parent_vlan"))
            .count(),
        1
    );
}

#[test]
fn an_empty_engine_still_says_who_it_is() {
    let text = encode(&StatsView::default());
    let s = samples(&text);
    assert_eq!(s.len(), 1, "{text}");
    assert!(s.keys().all(|k| k.starts_with("umacvlan_build_info{")));
}

#[test]
fn label_values_are_escaped() {
    let mut st = sample_stats();
    st.ports[0].name = "we\"ird\\".into();
    let text = encode(&st);
    assert!(
        text.contains(
            r#"umacvlan_port_receive_packets_total{port="we\"ird\\",parent="p0",mode="bridge"} 10"#
        ),
        "{text}"
    );
}

/// A fake daemon: answers every call with the sample snapshot; counts them.
fn fake_daemon() -> (Sender<Call>, JoinHandle<usize>) {
    let (tx, rx) = crossbeam_channel::bounded::<Call>(4);
    let h = std::thread::spawn(move || {
        let mut n = 0;
        for call in rx {
            assert_eq!(call.request, Request::Stats(Empty {}));
            n += 1;
            let _ = call.reply.send(Response::Ok {
                reply: Reply::Stats {
                    stats: sample_stats(),
                },
            });
        }
        n
    });
    (tx, h)
}

/// Sends `raw`, returns (status code, headers, body) of the whole answer.
fn http(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a whole answer");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

#[test]
fn the_server_serves_metrics_and_nothing_else() {
    let (calls, daemon) = fake_daemon();
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), calls).unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let (code, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert_eq!(body, encode(&sample_stats()));
    // A query string is fine.
    assert_eq!(http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").0, 200);

    assert_eq!(http(addr, b"GET /other HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    let (code, head, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    assert_eq!(http(addr, b"\x00\x01garbage\r\n\r\n").0, 400);
    // Too large: headers that never end.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(MAX_REQUEST + 100, b'a');
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&big);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    // Half a request, then the client hangs up: the server carries on.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /met").unwrap();
    s.shutdown(Shutdown::Both).unwrap();
    drop(s);
    // And still serves.
    assert_eq!(http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").0, 200);

    drop(server);
    let answered = daemon.join().unwrap();
    assert_eq!(answered, 3, "one snapshot per /metrics GET");
}

#[test]
fn a_silent_engine_gets_503_not_a_hang() {
    let (calls, rx) = crossbeam_channel::bounded::<Call>(1);
    drop(rx);
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), calls).unwrap();
    let (code, _, body) = http(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(code, 503, "{body}");
}
