//! Ports that move and ports that persist (root; issue #16's engine half). Docker's libnetwork
//! takes a driver's interface by name in the host namespace and, in `AddInterface`, moves it into
//! the container's namespace, sets it down, renames it `eth0`, sets its MAC, adds its address
//! and sets it up; `Remove` sets it down, renames it back and moves it back. These tests replay
//! those steps with `ip` on a port of a running engine, and on a kernel macvlan child for
//! comparison; then a namespace dies with the port's device in it; then a persistent port
//! survives a SIGKILLed engine and is adopted by the next one.

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::process::Command;

use common::engine::{Engine, Topo, ping, topo};
use umacvlan::net::testutil::{ip, try_ip, wait_until};

/// The MAC Docker 20.10 gives 192.0.2.10 (`02:42` + the address).
const DOCKER_MAC: &str = "02:42:c0:00:02:0a";

/// A namespace made with `ip netns add`, which the test may delete itself.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("umv-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The port `name` as `stats -j` shows it.
fn port(t: &Topo, name: &str) -> serde_json::Value {
    let stats = t.stats();
    stats["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no port {name} in {stats}"))
}

/// `ip -n NS ...` run for each step of libnetwork's AddInterface: `dev` (in `from`) moved into
/// `to`, down, renamed `eth0`, given `mac` and `addr`, up.
fn add_interface(from: &str, dev: &str, to: &str, mac: &str, addr: &str) {
    ip(&["-n", from, "link", "set", dev, "netns", to]);
    ip(&["-n", to, "link", "set", dev, "down"]);
    ip(&["-n", to, "link", "set", dev, "name", "eth0"]);
    ip(&["-n", to, "link", "set", "eth0", "address", mac]);
    ip(&["-n", to, "addr", "add", addr, "dev", "eth0"]);
    ip(&["-n", to, "link", "set", "eth0", "up"]);
}

/// libnetwork's Remove: `eth0` in `ns` down, renamed `dev`, moved back to `home`.
fn remove(ns: &str, dev: &str, home: &str) {
    ip(&["-n", ns, "link", "set", "eth0", "down"]);
    ip(&["-n", ns, "link", "set", "eth0", "name", dev]);
    ip(&["-n", ns, "link", "set", dev, "netns", home]);
}

/// Pings both ways between the wire and `addr` in `ns` (whose gateway side is 192.0.2.254).
fn pings(t: &Topo, ns: &str, addr: &str) -> Result<(), String> {
    ping(ns, "192.0.2.254", 3)?;
    ping(t.wire.name(), addr, 3).map(|_| ())
}

/// Waits until pings work both ways (a moved device's first frames may meet a stale neighbour).
fn wait_pings(t: &Topo, ns: &str, addr: &str, e: Option<&Engine>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match pings(t, ns, addr) {
            Ok(()) => return,
            Err(out) if std::time::Instant::now() > deadline => panic!(
                "no ping between the wire and {addr} in {ns}: {out}\n{}",
                e.map(Engine::log_text).unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// Whether process `pid` holds anything of the namespace `inode` (an fd, a thread in it), or
/// still has a TAP fd attached to a device (`iff:` in its fdinfo).
fn holds(pid: u32, inode: &str) -> (bool, Vec<String>) {
    let link = format!("net:[{inode}]");
    let mut ns = false;
    let mut taps = Vec::new();
    for dir in ["fd", "task"] {
        for e in std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = match dir {
                "fd" => e.path(),
                _ => e.path().join("ns/net"),
            };
            if std::fs::read_link(&path).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                ns = true;
            }
        }
    }
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        // A detached TAP fd shows an empty `iff:`.
        if let Some(dev) = info.lines().find_map(|l| l.strip_prefix("iff:"))
            && !dev.trim().is_empty()
        {
            taps.push(dev.trim().to_string());
        }
    }
    (ns, taps)
}

fn inode_of(ns: &str) -> String {
    let o = Command::new("stat")
        .args(["-L", "-c", "%i", &format!("/run/netns/{ns}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn rx_tx(p: &serde_json::Value) -> (u64, u64) {
    let n = |k: &str| p["stats"][k].as_u64().unwrap();
    (n("rx_packets"), n("tx_packets"))
}

/// AddInterface and Remove replayed on an engine's port and on a kernel macvlan child: the
/// same pings work for both; the engine shows the port under `eth0` in the container's
/// namespace, counts its traffic, and has it back home after Remove. Then the port's device
/// goes into a namespace that is deleted: the engine lets go of it, the kernel deletes the TAP.
#[test]
fn a_port_follows_its_device_through_docker_s_moves_like_a_macvlan() {
    let t = topo("fol", 2);
    let (host, ctr) = (t.host.name(), t.kid(0));
    let args = ["--port".to_string(), "name=umvd0".to_string()];
    let e = t.start(&args, &[]);
    wait_until("the port's TAP in the engine's namespace", || {
        try_ip(&["-n", host, "link", "show", "umvd0"]).is_ok()
    });
    // Kernel: a macvlan child of the same parent, moved the same way (to the other kid).
    let kctr = t.kid(1);
    ip(&[
        "-n", host, "link", "add", "umvk0", "link", "p0", "type", "macvlan", "mode", "bridge",
    ]);
    add_interface(host, "umvk0", kctr, "02:42:c0:00:02:14", "192.0.2.20/24");
    add_interface(host, "umvd0", ctr, DOCKER_MAC, "192.0.2.10/24");
    wait_pings(&t, kctr, "192.0.2.20", None);
    wait_pings(&t, ctr, "192.0.2.10", Some(&e));

    // The engine shows the port as it is now, and counts under it.
    let p = port(&t, "umvd0");
    assert_eq!(p["ifname"], "eth0", "{p}");
    assert_eq!(p["netns"], ctr, "{p}");
    assert_eq!(p["address"], DOCKER_MAC, "the MAC the mover set: {p}");
    assert_eq!(p["forwarding"], true, "{p}");
    let before = rx_tx(&p);
    pings(&t, ctr, "192.0.2.10").unwrap();
    let after = rx_tx(&port(&t, "umvd0"));
    assert!(
        after.0 >= before.0 + 6 && after.1 >= before.1 + 6,
        "counters did not grow: {before:?} -> {after:?}"
    );
    // A rename in place is followed too (the device is known by its ifindex).
    for (from, to) in [("eth0", "eth1"), ("eth1", "eth0")] {
        ip(&["-n", ctr, "link", "set", from, "down"]);
        ip(&["-n", ctr, "link", "set", from, "name", to]);
        ip(&["-n", ctr, "link", "set", to, "up"]);
        wait_until("the rename followed", || {
            let p = port(&t, "umvd0");
            p["ifname"] == to && p["forwarding"] == true
        });
        wait_pings(&t, ctr, "192.0.2.10", Some(&e));
    }
    let shown = t.ctl(&["link", "show", "umvd0"]).unwrap();
    assert!(
        shown.contains(&format!("netns {ctr}")) && shown.contains("ifname eth0"),
        "{shown}"
    );

    // Remove: both devices back home under their names, down; up again, they work.
    remove(kctr, "umvk0", host);
    remove(ctr, "umvd0", host);
    wait_until("the port back in the engine's namespace", || {
        let p = port(&t, "umvd0");
        p["netns"].is_null() && p["ifname"].is_null() && p["ifindex"].is_u64()
    });
    assert_eq!(port(&t, "umvd0")["forwarding"], false, "down after Remove");
    for dev in ["umvd0", "umvk0"] {
        ip(&["-n", host, "link", "set", dev, "up"]);
    }
    ip(&["-n", host, "addr", "add", "192.0.2.11/24", "dev", "umvd0"]);
    wait_until("the port forwarding again", || {
        port(&t, "umvd0")["forwarding"] == true
    });
    ping(host, "192.0.2.254", 3)
        .map_err(|o| format!("{o}\n{}", e.log_text()))
        .unwrap();
    ip(&["-n", host, "addr", "del", "192.0.2.11/24", "dev", "umvd0"]);

    // Into a namespace that is then deleted: the kernel deletes the macvlan with it, and the
    // engine lets go of it, so that the kernel deletes the TAP too.
    let (gone, kgone) = (Ns::new("folgone"), Ns::new("folkgone"));
    let inode = inode_of(&gone.0);
    add_interface(
        host,
        "umvk0",
        &kgone.0,
        "02:42:c0:00:02:15",
        "192.0.2.21/24",
    );
    add_interface(host, "umvd0", &gone.0, "02:42:c0:00:02:0b", "192.0.2.12/24");
    wait_until("the port followed into the doomed namespace", || {
        port(&t, "umvd0")["netns"] == gone.0.as_str()
    });
    assert!(holds(e.pid(), &inode).0, "the engine follows it there");
    drop((gone, kgone));
    wait_until("the engine to let go of the dead namespace", || {
        holds(e.pid(), &inode) == (false, vec![])
    });
    assert!(e.log_text().contains("letting go"), "{}", e.log_text());
    let p = port(&t, "umvd0");
    assert!(p["ifindex"].is_null() && p["forwarding"] == false, "{p}");
    assert!(
        try_ip(&["-n", host, "link", "show", "umvk0"]).is_err(),
        "the kernel's child went with its namespace"
    );
    // The port can be deleted as any other; the engine runs on.
    t.ctl(&["link", "del", "umvd0"]).unwrap();
    let (status, _) = e.stop();
    assert!(status.success());
}

/// A persistent port survives SIGKILL (still in its container's namespace, with its address),
/// is adopted by the next engine (`link add ... persist` with the container's namespace and
/// `eth0`; that engine has two workers, and takes a queue for each) and forwards again with
/// fresh counters; `link del` removes the device; SIGTERM also leaves persistent ports, and
/// `run` with the same `--port` adopts them. A device that is not a TAP is refused.
#[test]
fn a_persistent_port_survives_its_engine_and_is_adopted() {
    let t = topo("per", 1);
    let (host, ctr) = (t.host.name(), t.kid(0));
    let args = ["--port".to_string(), "name=umvp0,persist".to_string()];
    let e = t.start(&args, &[]);
    wait_until("the persistent port's TAP", || {
        try_ip(&["-n", host, "link", "show", "umvp0"]).is_ok()
    });
    assert_eq!(port(&t, "umvp0")["persist"], true);
    add_interface(host, "umvp0", ctr, DOCKER_MAC, "192.0.2.10/24");
    wait_pings(&t, ctr, "192.0.2.10", Some(&e));
    e.kill9();
    let left = ip(&["-n", ctr, "addr", "show", "eth0"]);
    assert!(
        left.contains("192.0.2.10/24") && left.contains(DOCKER_MAC),
        "the device outlived the engine with its address and MAC: {left}"
    );
    assert!(ping(ctr, "192.0.2.254", 1).is_err(), "no engine, no path");

    // The next engine adopts it where it is.
    // The next engine has two workers: the TAP (made multi-queue) takes a queue for each.
    let e = t.start(&["--workers".to_string(), "2".to_string()], &[]);
    wait_until("the new engine's control socket", || {
        t.ctl(&["link", "show"]).is_ok()
    });
    // Not a TAP: refused, nothing changed.
    ip(&[
        "-n", ctr, "link", "add", "umvv0", "type", "veth", "peer", "name", "umvv1",
    ]);
    let add = |dev: &str| format!("name=umvp0,parent=p0,netns={ctr},ifname={dev},persist");
    let err = t.ctl(&["link", "add", &add("umvv0")]).unwrap_err();
    assert!(err.contains("is a veth device"), "{err}");
    // Without persist, an existing name is refused as before.
    let plain = format!("name=umvp0,parent=p0,netns={ctr},ifname=eth0");
    let err = t.ctl(&["link", "add", &plain]).unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    t.ctl(&["link", "add", &add("eth0")]).unwrap();
    let p = port(&t, "umvp0");
    assert_eq!(
        p["address"], DOCKER_MAC,
        "adopt keeps the device's MAC: {p}"
    );
    assert_eq!(p["ifname"], "eth0");
    let detail = ip(&["-d", "-n", ctr, "link", "show", "eth0"]);
    assert!(
        detail.contains("multi_queue")
            && detail.contains("numqueues 2")
            && detail.contains("persist on"),
        "{detail}"
    );
    let fresh = rx_tx(&p);
    assert!(fresh.0 + fresh.1 <= 4, "counters start again: {fresh:?}");
    wait_pings(&t, ctr, "192.0.2.10", Some(&e));
    let (rx, tx) = rx_tx(&port(&t, "umvp0"));
    assert!(rx >= 6 && tx >= 6, "{rx} {tx}");
    assert!(
        ip(&["-n", ctr, "addr", "show", "eth0"]).contains("192.0.2.10/24"),
        "adopt keeps the address"
    );
    t.ctl(&["link", "del", "umvp0"]).unwrap();
    wait_until("link del to remove the persistent device", || {
        try_ip(&["-n", ctr, "link", "show", "eth0"]).is_err()
    });

    // SIGTERM leaves a persistent port too, and `run` with the same --port adopts it.
    t.ctl(&["link", "add", "name=umvq0,parent=p0,persist"])
        .unwrap();
    let index = |p: serde_json::Value| p["ifindex"].as_u64();
    wait_until("the new port seen", || index(port(&t, "umvq0")).is_some());
    let was = index(port(&t, "umvq0"));
    let (status, _) = e.stop();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        try_ip(&["-n", host, "link", "show", "umvq0"]).is_ok(),
        "a persistent port outlives a stopped engine"
    );
    let args = ["--port".to_string(), "name=umvq0,persist".to_string()];
    let e = t.start(&args, &[]);
    wait_until("the restarted engine's port", || {
        t.ctl(&["link", "show"]).is_ok() && index(port(&t, "umvq0")).is_some()
    });
    assert_eq!(index(port(&t, "umvq0")), was, "the same device, adopted");
    e.kill9();
    ip(&["-n", host, "link", "del", "umvq0"]);
}
