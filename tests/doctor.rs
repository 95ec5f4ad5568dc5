//! `umacvlan doctor` on a veth parent (root): every finding in its JSON, with and without an
//! engine running on the parent, a parent that is down (exit status 1), and an unknown parent
//! (a clear error, exit status 2).

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use umacvlan::net::testutil::{Topology, ip, topology, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

fn doctor(t: &Topology, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "doctor"])
        .args(args)
        .env("UMACVLAN_CONTROL", t.socket())
        .output()
        .unwrap()
}

/// check -> (level, message) from `doctor -j`, and the exit status.
fn findings(t: &Topology) -> (BTreeMap<String, (String, String)>, Option<i32>) {
    let out = doctor(t, &["--parent", "p0", "-j"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["parent"], "p0");
    let map = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("check"), (s("level"), s("message")))
        })
        .collect();
    (map, out.status.code())
}

fn level(f: &BTreeMap<String, (String, String)>, check: &str) -> String {
    f.get(check)
        .unwrap_or_else(|| panic!("no {check} in {f:?}"))
        .0
        .clone()
}

#[test]
fn doctor_on_a_veth_parent() {
    let t = topology("dr", 2);
    let (f, status) = findings(&t);
    assert_eq!(status, Some(0), "{f:?}");
    let want = [
        ("parent", "ok"),
        ("parent_up", "ok"),
        ("carrier", "ok"),
        ("wireless", "ok"),
        ("driver", "ok"),
        ("promiscuous", "ok"),
        ("mac_count", "ok"),
        ("host_to_child", "warn"),
        ("tun", "ok"),
        ("af_packet", "ok"),
        ("tpacket_v3", "ok"),
    ];
    assert_eq!(f.len(), want.len(), "{f:?}");
    for (check, lvl) in want {
        assert_eq!(level(&f, check), lvl, "{check}: {f:?}");
    }
    assert!(f["driver"].1.contains("virtual device (veth)"), "{f:?}");
    assert!(f["promiscuous"].1.contains("not promiscuous now"), "{f:?}");
    assert!(f["mac_count"].1.contains("no engine answered"), "{f:?}");
    assert!(
        f["host_to_child"]
            .1
            .contains("cannot reach its own macvlan children")
    );

    // With an engine on p0: its ports are counted, and p0 is promiscuous once a port is up (a
    // veth has no unicast filter), not before.
    let mut engine = Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "run", "--parent", "p0"])
        .args(["--port", &format!("name=c0,netns={}", t.kid(0))])
        .args(["--port", &format!("name=c1,netns={}", t.kid(1))])
        .env("UMACVLAN_CONTROL", t.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The ports exist once the parent's ring is open (the socket is served before that).
    wait_until("the engine's ports", || {
        try_ip(&["-n", t.kid(1), "link", "show", "c1"]).is_ok()
    });
    let (f, _) = findings(&t);
    assert!(f["promiscuous"].1.contains("not promiscuous now"), "{f:?}");
    ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    wait_until("p0 promiscuous for the up port", || {
        findings(&t).0["promiscuous"]
            .1
            .contains("p0 is promiscuous")
    });
    let (f, status) = findings(&t);
    let _ = engine.kill();
    let _ = engine.wait();
    assert_eq!(status, Some(0), "{f:?}");
    assert!(f["mac_count"].1.contains("2 port(s) on p0"), "{f:?}");
    assert!(f["promiscuous"].1.contains("p0 is promiscuous"), "{f:?}");

    // Down: an error finding, exit status 1; text output names it.
    ip(&["-n", t.host.name(), "link", "set", "p0", "down"]);
    let (f, status) = findings(&t);
    assert_eq!(status, Some(1));
    assert_eq!(level(&f, "parent_up"), "error");
    assert_eq!(level(&f, "carrier"), "warn");
    let text = doctor(&t, &["--parent", "p0"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("error  parent_up      p0 is down"), "{text}");
    assert!(text.contains("fix: ip link set p0 up"), "{text}");

    // Unknown: nothing to check.
    assert!(try_ip(&["-n", t.host.name(), "link", "show", "nope0"]).is_err());
    let out = doctor(&t, &["--parent", "nope0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown parent \"nope0\""), "{err}");
}

/// `p0.100` with no such device: the engine's emulated 802.1Q sub-interface, explained, and the
/// rest of the checks are p0's; a reserved VID or a missing lower device is bad input.
#[test]
fn doctor_explains_an_emulated_vlan_parent() {
    let t = topology("drv", 0);
    let out = doctor(&t, &["--parent", "p0.100", "-j"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["parent"], "p0.100");
    let f = v["findings"].as_array().unwrap();
    let vlan = f
        .iter()
        .find(|f| f["check"] == "vlan")
        .expect("a vlan finding");
    assert_eq!(vlan["level"], "ok");
    let msg = vlan["message"].as_str().unwrap();
    assert!(
        msg.contains("802.1Q sub-interface of p0 with VID 100"),
        "{msg}"
    );
    assert!(vlan["fix"].as_str().unwrap().contains("VID 100 tagged"));
    let parent = f.iter().find(|f| f["check"] == "parent").unwrap();
    assert!(parent["message"].as_str().unwrap().starts_with("p0 exists"));
    for (bad, says) in [
        ("p0.4095", "out of range"),
        ("nope.100", "no \"nope\" to emulate it on"),
        ("nope.5.100", "stacked VLAN tags"),
    ] {
        let out = doctor(&t, &["--parent", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}
