//! `umacvlan run` end to end (root): bad input changes nothing, real ping and TCP (with TSO on
//! the wire's veth) cross the engine without loss or truncation, a SIGKILLed engine leaves no TAP
//! behind and restarts, and a port brought down stops receiving (its MAC goes to the host path).
//!
//! Every test builds its own namespaces (`umv-<pid>-...`), removed by guards even on panic.

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{counters_of, has_flag, ping, recreate_wire, topo, tun_devices};
use umacvlan::net::testutil::{ip, ip_json, wait_until};

#[test]
fn bad_input_exits_2_and_creates_nothing() {
    let t = topo("bad", 2);
    let (h, c0) = (t.host.name().to_string(), t.kid(0).to_string());
    ip(&["-n", &h, "tuntap", "add", "dev", "tun9", "mode", "tun"]);
    ip(&[
        "-n",
        t.kid(1),
        "link",
        "add",
        "c1",
        "type",
        "veth",
        "peer",
        "name",
        "c1peer",
    ]);
    let parent_mac = ip_json(&["-n", &h, "link", "show", "p0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let port = |s: &str| vec!["--port".to_string(), s.to_string()];
    let ok0 = format!("name=c0,netns={c0}");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--parent".into(), "nosuch".into()]
                .into_iter()
                .chain(port(&ok0))
                .collect(),
            "unknown parent \"nosuch\"".into(),
        ),
        (
            vec!["--parent".into(), "lo".into()]
                .into_iter()
                .chain(port(&ok0))
                .collect(),
            "loopback".into(),
        ),
        (
            vec!["--parent".into(), "tun9".into()]
                .into_iter()
                .chain(port(&ok0))
                .collect(),
            "is not Ethernet".into(),
        ),
        (
            port("name=c0,netns=umv-no-such-ns"),
            "no network namespace named \"umv-no-such-ns\"".into(),
        ),
        (
            port(&format!("{ok0},mac=02:00")),
            "not a MAC address".into(),
        ),
        (
            port(&format!("{ok0},mac=01:00:5e:00:00:01")),
            "group or zero".into(),
        ),
        (
            port(&format!("{ok0},mac={parent_mac}")),
            "which is the parent's".into(),
        ),
        (
            [
                port(&format!("{ok0},mac=02:00:00:00:00:05")),
                port("name=cx,mac=02:00:00:00:00:05"),
            ]
            .concat(),
            "cannot both be up with MAC 02:00:00:00:00:05".into(),
        ),
        (
            [port(&format!("{ok0},mode=passthru")), port("name=cx")].concat(),
            "must be the parent's only port".into(),
        ),
        (
            port(&format!("{ok0},mtu=9000")),
            "MTU 9000 is outside 68..=1500".into(),
        ),
        (port(&format!("{ok0},mtu=60")), "MTU 60 is outside".into()),
        (
            port(&format!("name=c1,netns={}", t.kid(1))),
            "an interface named c1 already exists".into(),
        ),
        (
            port(&format!("{ok0},mode=bridged")),
            "unknown mode \"bridged\"".into(),
        ),
        (
            port(&format!("{ok0},colour=red")),
            "unknown key \"colour\"".into(),
        ),
        (port(&format!("{ok0},down")), "for `trace` only".into()),
        (
            [
                port(&ok0),
                ["--ring", "auto", "--workers", "2"]
                    .map(String::from)
                    .to_vec(),
            ]
            .concat(),
            "--ring auto works with one worker per parent only".into(),
        ),
    ];
    for (args, want) in cases {
        let o = t.run_fails(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: want {want:?} in: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got: {err}"
        );
        for ns in [&h, &c0] {
            assert_eq!(
                tun_devices(ns),
                1 - usize::from(ns == &c0),
                "{args:?} left a TAP in {ns}"
            );
        }
    }
    // The TUN parent itself was the only tun device, and is still there.
    assert_eq!(tun_devices(&h), 1);
}

#[test]
fn ping_and_tcp_cross_the_engine_without_loss_or_truncation() {
    ping_and_tcp("tcp", None);
}

/// The same with two workers: the parent's two rings share its frames by flow, every TAP has a
/// queue per worker, and each worker is a thread of its own (pinned to its own CPU when the
/// machine has CPUs to spare).
#[test]
fn two_workers_carry_ping_and_tcp_too() {
    ping_and_tcp("wk2", Some(2));
}

/// The engine's worker threads for parent p0 and the CPUs each may run on.
fn worker_threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with("umv-p0-") {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            out.push((comm.trim().to_string(), cpus));
        }
    }
    out.sort();
    out
}

/// The promiscuity count of `p0` in `ns` (`ip -d -j link show`).
fn promiscuity(ns: &str) -> u64 {
    ip_json(&["-n", ns, "-d", "link", "show", "p0"])[0]["promiscuity"]
        .as_u64()
        .unwrap()
}

fn ping_and_tcp(tag: &str, workers: Option<usize>) {
    let t = topo(tag, 2);
    let mut args = [t.port(0, "bridge"), t.port(1, "bridge")].concat();
    if let Some(n) = workers {
        args.extend(["--workers".to_string(), n.to_string()]);
        // `--ring auto` takes one worker only (tools/test reruns this suite with it).
        if std::env::var("UMACVLAN_RING").as_deref() == Ok("auto") {
            args.extend(["--ring".to_string(), "v3".to_string()]);
        }
    }
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    if let Some(n) = workers {
        let threads = worker_threads(e.pid());
        let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<String> = (0..n).map(|i| format!("umv-p0-{i}")).collect();
        assert_eq!(names, want, "{threads:?}");
        // Pinned to one CPU each only with CPUs to spare; otherwise free to run anywhere.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut sets: Vec<&str> = threads.iter().map(|(_, c)| c.as_str()).collect();
        sets.dedup();
        if cpus > n {
            assert_eq!(
                sets.len(),
                n,
                "each worker pinned to its own CPU: {threads:?}"
            );
            assert!(
                threads.iter().all(|(_, c)| c.parse::<usize>().is_ok()),
                "{threads:?}"
            );
        } else {
            // As free as this test process.
            let own = std::fs::read_to_string("/proc/self/status").unwrap();
            let all = own
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim();
            assert!(
                threads.iter().all(|(_, c)| c == all),
                "not pinned: {threads:?}"
            );
        }
        for i in 0..2 {
            let detail = ip(&["-n", t.kid(i), "-d", "link", "show", &format!("c{i}")]);
            assert!(detail.contains("multi_queue"), "{detail}");
        }
    }
    // The kernel's rule on a veth parent (no unicast filter): promiscuous once a bridge port is
    // up, whatever the rings (V2, V3, a steered pair, a fanout group), and not before.
    assert_eq!(
        promiscuity(t.host.name()),
        0,
        "no port up: the rings leave the parent as it was"
    );
    t.up(0, "192.0.2.1/24");
    t.up(1, "192.0.2.2/24");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        promiscuity(t.host.name()),
        1,
        "two bridge ports up: promiscuous once, as the kernel's macvlan makes it"
    );
    for (from, to) in [
        (t.kid(0), "192.0.2.254"),
        (t.kid(0), "192.0.2.2"),
        (t.wire.name(), "192.0.2.1"),
    ] {
        ping(from, to, 20).unwrap_or_else(|out| {
            panic!("ping {from} -> {to} lost frames:\n{out}\n{}", e.log_text())
        });
    }
    // TCP child -> child (bridge, TAP to TAP) and wire -> child (ring to TAP), TSO on the veth.
    for (server, client, addr) in [
        (t.kid(1), t.kid(0), "192.0.2.2"),
        (t.kid(0), t.wire.name(), "192.0.2.1"),
    ] {
        let mut srv = Command::new("ip")
            .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run iperf3 (apt-get install iperf3)");
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new("ip")
            .args([
                "netns", "exec", client, "iperf3", "-c", addr, "-p", "5201", "-t", "2", "-J", "-P",
                "4",
            ])
            .output()
            .unwrap();
        let _ = srv.kill();
        let _ = srv.wait();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "iperf3 to {addr}: {err}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                e.log_text()
            )
        });
        let bytes = j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        assert!(
            bytes > 10_000_000,
            "TCP to {addr} moved only {bytes} bytes: {j}"
        );
    }
    let (status, report) = e.stop();
    assert!(status.success(), "{report}");
    assert!(!report.contains("truncated"), "{report}");
    let (rx_packets, rx_bytes, ..) = counters_of(&report, "c1");
    // GSO super-frames were carried whole: the average frame delivered is above the MTU.
    assert!(
        rx_bytes / rx_packets.max(1) > 1514,
        "no super-frames reached c1:\n{report}"
    );
    assert_eq!(
        promiscuity(t.host.name()),
        0,
        "the parent's promiscuity is restored"
    );
    assert_eq!(
        tun_devices(t.kid(0)) + tun_devices(t.kid(1)),
        0,
        "TAPs gone after SIGTERM"
    );
}

#[test]
fn sigkill_leaves_no_tap_and_a_restart_forwards_again() {
    let t = topo("kill", 2);
    let args = [t.port(0, "bridge"), t.port(1, "vepa")].concat();
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    e.kill9();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tun_devices(t.kid(0)) + tun_devices(t.kid(1)) > 0 {
        assert!(Instant::now() < deadline, "TAPs survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    std::thread::sleep(Duration::from_millis(300));
    ping(t.kid(0), "192.0.2.254", 5)
        .unwrap_or_else(|o| panic!("after restart:\n{o}\n{}", e.log_text()));
    let (status, _) = e.stop();
    assert!(status.success());
}

#[test]
fn a_port_brought_down_stops_receiving_and_its_mac_goes_to_the_host() {
    let t = topo("down", 1);
    let e = t.start(&t.port(0, "bridge"), &[(0, "c0")]);
    t.up(0, "192.0.2.1/24");
    std::thread::sleep(Duration::from_millis(300));
    ping(t.wire.name(), "192.0.2.1", 3).unwrap_or_else(|o| panic!("{o}\n{}", e.log_text()));
    ip(&["-n", t.kid(0), "link", "set", "c0", "down"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ping(t.wire.name(), "192.0.2.1", 3).is_err(),
        "a down port still answered"
    );
    let (status, report) = e.stop();
    assert!(status.success());
    let (.., parent_drops) = counters_of(&report, "p0");
    assert!(parent_drops.contains("unknown_destination="), "{report}");
    // What c0 sent as it went down (queued in the TAP before the engine saw it down) is counted
    // port_down; nothing else may be dropped at c0.
    let (_, _, _, _, c0_drops) = counters_of(&report, "c0");
    assert!(
        c0_drops.trim() == "-"
            || c0_drops
                .split_whitespace()
                .all(|d| d.starts_with("port_down=")),
        "{report}"
    );
}

#[test]
fn ports_follow_the_parents_carrier() {
    let t = topo("car", 1);
    let e = t.start(&t.port(0, "bridge"), &[(0, "c0")]);
    t.up(0, "192.0.2.1/24");
    let kid = t.kid(0).to_string();
    wait_until("carrier on c0", || has_flag(&kid, "c0", "LOWER_UP"));
    let state = || {
        ip_json(&["-n", &kid, "link", "show", "c0"])[0]["operstate"]
            .as_str()
            .unwrap()
            .to_string()
    };
    wait_until("c0 to look like a macvlan child (state UP)", || {
        state() == "UP"
    });
    ping(t.wire.name(), "192.0.2.1", 3)
        .unwrap_or_else(|o| panic!("before the carrier loss:\n{o}\n{}", e.log_text()));
    // The wire's end going down takes the parent's carrier away.
    ip(&["-n", t.wire.name(), "link", "set", "wire0", "down"]);
    wait_until("c0 to lose its carrier", || {
        !has_flag(&kid, "c0", "LOWER_UP")
    });
    assert!(
        has_flag(&kid, "c0", "UP"),
        "the port stays admin-up, as a macvlan child does"
    );
    ip(&["-n", t.wire.name(), "link", "set", "wire0", "up"]);
    wait_until("c0 to get its carrier back", || {
        has_flag(&kid, "c0", "LOWER_UP")
    });
    ping(t.wire.name(), "192.0.2.1", 3).unwrap_or_else(|o| panic!("{o}\n{}", e.log_text()));
}

#[test]
fn mac_changes_in_the_namespace_are_followed_with_the_kernels_rules() {
    let t = topo("mac", 2);
    let (a, b) = ("02:00:00:00:00:10", "02:00:00:00:00:11");
    let args: Vec<String> = vec![
        "--port".into(),
        format!("name=c0,netns={},mac={a}", t.kid(0)),
        "--port".into(),
        format!("name=c1,netns={},mac={b}", t.kid(1)),
    ];
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    t.up(1, "192.0.2.2/24");
    std::thread::sleep(Duration::from_millis(300));
    let w = t.wire.name();
    ping(w, "192.0.2.1", 3).unwrap_or_else(|o| panic!("{o}\n{}", e.log_text()));
    // A new MAC on an up port is followed: the wire reaches it at the new address.
    ip(&[
        "-n",
        t.kid(0),
        "link",
        "set",
        "c0",
        "address",
        "02:00:00:00:00:20",
    ]);
    ip(&["-n", w, "neigh", "flush", "dev", "wire0"]);
    std::thread::sleep(Duration::from_millis(300));
    ping(w, "192.0.2.1", 3)
        .unwrap_or_else(|o| panic!("after the MAC change:\n{o}\n{}", e.log_text()));
    // Taking an up port's MAC would fail with EADDRINUSE in the kernel: c1 is out of the table,
    // and c0 keeps its frames.
    ip(&[
        "-n",
        t.kid(1),
        "link",
        "set",
        "c1",
        "address",
        "02:00:00:00:00:20",
    ]);
    ip(&["-n", w, "neigh", "flush", "dev", "wire0"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        ping(w, "192.0.2.2", 3).is_err(),
        "c1 with a busy MAC still got frames"
    );
    ping(w, "192.0.2.1", 3)
        .unwrap_or_else(|o| panic!("c0 lost its frames:\n{o}\n{}", e.log_text()));
    assert!(
        e.log_text().contains("EADDRINUSE"),
        "the log says why c1 is out: {}",
        e.log_text()
    );
    // Given back a MAC of its own, c1 is in again.
    ip(&["-n", t.kid(1), "link", "set", "c1", "address", b]);
    ip(&["-n", w, "neigh", "flush", "dev", "wire0"]);
    std::thread::sleep(Duration::from_millis(300));
    ping(w, "192.0.2.2", 3)
        .unwrap_or_else(|o| panic!("c1 after its MAC is free:\n{o}\n{}", e.log_text()));
}

#[test]
fn a_parent_that_disappears_and_comes_back() {
    let t = topo("pgone", 1);
    let mut e = t.start(&t.port(0, "bridge"), &[(0, "c0")]);
    t.up(0, "192.0.2.1/24");
    std::thread::sleep(Duration::from_millis(300));
    ping(t.wire.name(), "192.0.2.1", 3).unwrap_or_else(|o| panic!("{o}\n{}", e.log_text()));
    // Deleting the parent (a veth) deletes the wire's end too.
    ip(&["-n", t.host.name(), "link", "del", "p0"]);
    let kid = t.kid(0).to_string();
    wait_until("c0 to lose its carrier", || {
        !has_flag(&kid, "c0", "LOWER_UP")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.running(),
        "the engine must outlive its parent:\n{}",
        e.log_text()
    );
    assert!(has_flag(&kid, "c0", "UP"), "the port stays, admin-up");
    recreate_wire(&t);
    wait_until("c0's carrier back", || has_flag(&kid, "c0", "LOWER_UP"));
    std::thread::sleep(Duration::from_millis(300));
    ping(t.wire.name(), "192.0.2.1", 3)
        .unwrap_or_else(|o| panic!("after the parent came back:\n{o}\n{}", e.log_text()));
    assert_eq!(
        promiscuity(t.host.name()),
        1,
        "the new parent is promiscuous for the up port, once"
    );
    ip(&["-n", &kid, "link", "set", "c0", "down"]);
    wait_until("the new parent's promiscuity to end with the port", || {
        promiscuity(t.host.name()) == 0
    });
    assert!(e.log_text().contains("parent disappeared") && e.log_text().contains("parent is back"));
    let (status, _) = e.stop();
    assert!(status.success());
}

#[test]
fn exit_on_parent_loss_stops_the_engine() {
    let t = topo("pexit", 1);
    let args = [
        t.port(0, "bridge").to_vec(),
        vec!["--exit-on-parent-loss".into()],
    ]
    .concat();
    let mut e = t.start(&args, &[(0, "c0")]);
    ip(&["-n", t.host.name(), "link", "del", "p0"]);
    wait_until("the engine to stop", || !e.running());
    let log = e.log_text();
    let status = e.child.take().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("parent p0 disappeared"), "{log}");
    wait_until("c0 to vanish", || tun_devices(t.kid(0)) == 0);
}
