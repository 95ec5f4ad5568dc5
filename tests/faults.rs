//! Parent faults (root), each with traffic before and after: the parent taken admin-down and up
//! again, and the parent's MTU lowered (ports clamped as the kernel clamps macvlan children) and
//! raised (ports stay). Carrier loss and a deleted parent are in `dataplane.rs`.

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::process::Command;
use std::time::Duration;

use common::engine::{Engine, cpu_ticks, ctl_ok, has_flag, ping, topo};
use umacvlan::net::testutil::{ip, ip_json, wait_until};

fn engine_pid(e: &Engine) -> u32 {
    e.child.as_ref().unwrap().id()
}

#[test]
fn parent_admin_down_and_up() {
    let t = topo("adm", 2);
    let args = [t.port(0, "bridge"), t.port(1, "bridge")].concat();
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    t.up(1, "192.0.2.2/24");
    let kid = t.kid(0).to_string();
    wait_until("carrier on c0", || has_flag(&kid, "c0", "LOWER_UP"));
    std::thread::sleep(Duration::from_millis(300));
    for (from, to) in [(t.wire.name(), "192.0.2.1"), (t.kid(0), "192.0.2.2")] {
        ping(from, to, 3).unwrap_or_else(|o| panic!("before: {o}\n{}", e.log_text()));
    }
    ip(&["-n", t.host.name(), "link", "set", "p0", "down"]);
    wait_until("c0 to lose its carrier", || {
        !has_flag(&kid, "c0", "LOWER_UP")
    });
    assert!(has_flag(&kid, "c0", "UP"), "the port stays admin-up");
    // While the parent is down its ring reports an error (ENETDOWN): the worker must neither
    // die nor spin on it.
    let before = cpu_ticks(engine_pid(&e));
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(engine_pid(&e)) - before;
    assert!(
        used < 30,
        "the engine used {used} ticks of CPU in 1 s with its parent down (busy loop?)\n{}",
        e.log_text()
    );
    assert!(
        ping(t.wire.name(), "192.0.2.1", 2).is_err(),
        "frames crossed a parent that is down"
    );
    ip(&["-n", t.host.name(), "link", "set", "p0", "up"]);
    wait_until("c0's carrier back", || has_flag(&kid, "c0", "LOWER_UP"));
    std::thread::sleep(Duration::from_millis(300));
    for (from, to) in [(t.wire.name(), "192.0.2.1"), (t.kid(0), "192.0.2.2")] {
        ping(from, to, 3).unwrap_or_else(|o| panic!("after: {o}\n{}", e.log_text()));
    }
    let (status, _) = e.stop();
    assert!(status.success());
}

fn mtu_of(ns: &str, dev: &str) -> u64 {
    ip_json(&["-n", ns, "link", "show", dev])[0]["mtu"]
        .as_u64()
        .unwrap()
}

/// `ping -M do -s SIZE`: a datagram that must not be fragmented.
fn ping_size(ns: &str, to: &str, size: u32) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.05", "-W", "1",
        ])
        .args(["-M", "do", "-s", &size.to_string(), to])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.contains(" 0% packet loss") {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn a_lower_parent_mtu_clamps_the_ports_and_a_higher_one_leaves_them() {
    let t = topo("mtu", 2);
    let args = [
        t.port(0, "bridge").to_vec(),
        vec![
            "--port".into(),
            format!("name=c1,mode=bridge,netns={},mtu=1400", t.kid(1)),
        ],
    ]
    .concat();
    let e = t.start(&args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    t.up(1, "192.0.2.2/24");
    std::thread::sleep(Duration::from_millis(300));
    let (k0, k1, w, h) = (t.kid(0), t.kid(1), t.wire.name(), t.host.name());
    assert_eq!((mtu_of(k0, "c0"), mtu_of(k1, "c1")), (1500, 1400));
    ping_size(w, "192.0.2.1", 1472).unwrap_or_else(|o| panic!("before: {o}\n{}", e.log_text()));
    ping_size(k0, "192.0.2.2", 1372).unwrap_or_else(|o| panic!("before: {o}\n{}", e.log_text()));

    // Lowered below both ports: both are clamped to it.
    ip(&["-n", w, "link", "set", "wire0", "mtu", "1300"]);
    ip(&["-n", h, "link", "set", "p0", "mtu", "1300"]);
    wait_until("the ports clamped to 1300", || {
        (mtu_of(k0, "c0"), mtu_of(k1, "c1")) == (1300, 1300)
    });
    std::thread::sleep(Duration::from_millis(300));
    ping_size(w, "192.0.2.1", 1272).unwrap_or_else(|o| panic!("after: {o}\n{}", e.log_text()));
    ping_size(k0, "192.0.2.2", 1272).unwrap_or_else(|o| panic!("after: {o}\n{}", e.log_text()));
    assert!(
        e.log_text().contains("port MTU lowered to the parent's"),
        "{}",
        e.log_text()
    );

    // Raised again: the ports stay where they are
    // (docs/design.md#the-parent-and-the-control-plane), and may now be raised up to the new MTU.
    ip(&["-n", h, "link", "set", "p0", "mtu", "1500"]);
    ip(&["-n", w, "link", "set", "wire0", "mtu", "1500"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((mtu_of(k0, "c0"), mtu_of(k1, "c1")), (1300, 1300));
    ctl_ok(
        h,
        &t.socket(),
        &["link", "set", "c0", "mtu", "1500"],
        "link set mtu 1500 after the parent rose",
    );
    wait_until("c0 at 1500", || mtu_of(k0, "c0") == 1500);
    std::thread::sleep(Duration::from_millis(300));
    ping_size(w, "192.0.2.1", 1472)
        .unwrap_or_else(|o| panic!("after raising: {o}\n{}", e.log_text()));
    let (status, _) = e.stop();
    assert!(status.success());
}
