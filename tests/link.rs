//! The control plane end to end (root): an engine started empty, driven through the real CLI —
//! `link add|set|del|show`, live `trace`, `reload` — with the JSON checked and forwarding checked
//! with real frames before and after each change.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use umacvlan::net::testutil::{Topology, ip, ip_json, topology, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

struct Lab {
    topo: Topology,
    socket: PathBuf,
    engine: Option<Child>,
}

impl std::ops::Deref for Lab {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut e) = self.engine.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

fn lab(kids: usize) -> Lab {
    let topo = topology("lk", kids);
    let socket = topo.socket();
    Lab {
        topo,
        socket,
        engine: None,
    }
}

impl Lab {
    /// `umacvlan ARGS` in the host namespace, talking to this lab's engine.
    fn umacvlan(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.host.name(), BIN])
            .args(args)
            .env("UMACVLAN_CONTROL", &self.socket)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.umacvlan(args);
        assert!(
            o.status.success(),
            "umacvlan {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The command fails with exit status 2 and a message containing `want`.
    fn refused(&self, args: &[&str], want: &str) {
        let o = self.umacvlan(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "umacvlan {args:?}: {err}");
        assert!(
            err.contains(want),
            "umacvlan {args:?}: want {want:?} in {err}"
        );
    }

    fn show(&self, args: &[&str]) -> Value {
        let mut all = vec!["link", "show", "-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    /// `umacvlan run ARGS` in the host namespace; returns once the control socket exists.
    fn start_with(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", self.host.name(), BIN, "run"])
            .args(args)
            .env("UMACVLAN_CONTROL", &self.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.engine = Some(child);
        wait_until("the control socket", || self.socket.exists());
    }

    fn up(&self, i: usize, name: &str, addr: &str) {
        wait_until(&format!("{name} to appear"), || {
            try_ip(&["-n", self.kid(i), "link", "show", name]).is_ok()
        });
        ip(&["-n", self.kid(i), "link", "set", name, "up"]);
        ip(&["-n", self.kid(i), "addr", "add", addr, "dev", name]);
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pings(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.1", "-W", "1", to,
        ])
        .output()
        .expect("ping (apt-get install iputils-ping)")
        .status
        .success()
}

#[test]
fn every_link_command_through_the_cli() {
    let mut l = lab(4);
    l.start();
    let (k0, k1, k2) = (
        l.kid(0).to_string(),
        l.kid(1).to_string(),
        l.kid(2).to_string(),
    );
    // A second engine on the same socket refuses to start.
    let second = l.umacvlan(&["run"]);
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another umacvlan engine"));

    // add, in ip's word order, and in key=value form.
    l.ok(&[
        "link", "add", "c0", "parent", "p0", "mode", "bridge", "netns", &k0,
    ]);
    l.ok(&[
        "link",
        "add",
        &format!("name=c1,link=p0,mode=vepa,netns={k1},mac=02:00:00:00:00:11"),
    ]);
    let shown = l.show(&["-d"]);
    let names: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ifname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c0", "c1"]);
    assert_eq!(shown[1]["link"], "p0");
    assert_eq!(shown[1]["address"], "02:00:00:00:00:11");
    assert_eq!(shown[1]["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(shown[1]["linkinfo"]["info_data"]["mode"], "vepa");
    assert_eq!(
        ip_json(&["-n", &k1, "link", "show", "c1"])[0]["address"],
        "02:00:00:00:00:11"
    );

    // Forwarding follows: wire reaches both; bridge c0 cannot reach vepa c1 without hairpin.
    l.up(0, "c0", "192.0.2.1/24");
    l.up(1, "c1", "192.0.2.2/24");
    let w = l.wire.name().to_string();
    assert!(pings(&w, "192.0.2.1") && pings(&w, "192.0.2.2"));
    assert!(!pings(&k0, "192.0.2.2"), "bridge -> vepa must not be local");
    // A mode change takes effect on the next frame.
    l.ok(&["link", "set", "c1", "mode", "bridge"]);
    assert!(
        pings(&k0, "192.0.2.2"),
        "bridge -> bridge after the mode change"
    );
    assert_eq!(
        l.show(&["-d", "c1"])[0]["linkinfo"]["info_data"]["mode"],
        "bridge"
    );

    // The kernel's changelink rules.
    let c0_mac = l.show(&["c0"])[0]["address"].as_str().unwrap().to_string();
    l.refused(&["link", "set", "c1", "address", &c0_mac], "EADDRINUSE");
    l.refused(
        &["link", "set", "c1", "address", "01:00:5e:00:00:01"],
        "EADDRNOTAVAIL",
    );
    l.refused(&["link", "set", "c0", "mode", "passthru"], "passthru");
    l.refused(&["link", "set", "c1", "mtu", "9000"], "MTU 9000");
    l.refused(
        &["link", "set", "c1", "macaddr", "add", "02:00:00:00:00:99"],
        "source mode",
    );
    l.ok(&["link", "set", "c1", "mtu", "1400"]);
    assert_eq!(ip_json(&["-n", &k1, "link", "show", "c1"])[0]["mtu"], 1400);
    l.ok(&["link", "set", "c1", "address", "02:00:00:00:00:12"]);
    ip(&["-n", &w, "neigh", "flush", "dev", "wire0"]);
    std::thread::sleep(Duration::from_millis(250));
    assert!(pings(&w, "192.0.2.2"), "c1 at its new MAC");

    // Source mode and its list.
    l.ok(&[
        "link", "add", "s0", "parent", "p0", "mode", "source", "netns", &k2,
    ]);
    l.ok(&[
        "link",
        "set",
        "s0",
        "macaddr",
        "add",
        "02:00:00:00:00:98",
        "02:00:00:00:00:99",
    ]);
    l.ok(&["link", "set", "s0", "macaddr", "del", "02:00:00:00:00:98"]);
    let s0 = l.show(&["-d", "s0"]);
    assert_eq!(s0[0]["linkinfo"]["info_data"]["macaddr_count"], 1);
    l.ok(&["link", "set", "s0", "mode", "vepa"]);
    assert!(
        l.show(&["-d", "s0"])[0]["linkinfo"]["info_data"]["macaddr_count"].is_null(),
        "leaving source mode flushes the list"
    );

    // Refusals that create nothing.
    l.refused(
        &["link", "add", "c0", "parent", "p0", "netns", &k0],
        "exists",
    );
    l.refused(&["link", "add", "x0", "parent", "lo"], "loopback");
    // Creation checks no busy MAC (the kernel checks when the port comes up): x0 may hold up
    // c0's MAC while down, and is refused as soon as it changes to another busy one.
    l.ok(&[
        "link", "add", "x0", "parent", "p0", "address", &c0_mac, "netns", &k2,
    ]);
    assert_eq!(l.show(&["x0"])[0]["address"], c0_mac.as_str());
    l.ok(&["link", "del", "x0"]);
    l.refused(
        &["link", "add", "x0", "parent", "p0", "mode", "passthru"],
        "passthru",
    );
    l.refused(
        &[
            "link",
            "add",
            "x0",
            "parent",
            "p0",
            "netns",
            "umv-no-such-ns",
        ],
        "no network namespace",
    );
    l.refused(&["link", "del", "nosuch"], "no port named nosuch");
    l.refused(&["reload"], "without --config");

    // Live trace answers from the running table.
    let t: Value = serde_json::from_str(&l.ok(&[
        "trace",
        "--from",
        "parent",
        "--src",
        "02:00:00:00:09:09",
        "--dst",
        "02:00:00:00:00:12",
        "-j",
    ]))
    .unwrap();
    assert_eq!(t["receivers"], serde_json::json!(["c1"]), "{t}");

    // Counters, from the port's side.
    let stats = l.show(&["-s", "c0"]);
    assert!(
        stats[0]["stats64"]["rx"]["packets"].as_u64().unwrap() > 0,
        "{stats}"
    );

    // del: the port is gone from its namespace, and the others keep forwarding.
    l.ok(&["link", "del", "c1"]);
    wait_until("c1 to vanish", || {
        try_ip(&["-n", &k1, "link", "show", "c1"]).is_err()
    });
    let names: Vec<String> = l
        .show(&[])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["c0", "s0"]);
    assert!(pings(&w, "192.0.2.1"));

    // No parent named: the interface of the default route.
    ip(&[
        "-n",
        l.host.name(),
        "addr",
        "add",
        "198.51.100.2/24",
        "dev",
        "p0",
    ]);
    ip(&[
        "-n",
        l.host.name(),
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
    ]);
    l.ok(&["link", "add", "d0", "netns", l.kid(3)]);
    assert_eq!(l.show(&["d0"])[0]["link"], "p0");
}

/// The host (the engine's namespace, with an address on the parent) cannot reach a bridge-mode
/// child, exactly as with the kernel's macvlan; a host port (`link add ... kind host`) with an
/// address and a route to the child makes it reachable, and deleting it takes that away again.
#[test]
fn a_host_port_lets_the_host_reach_its_children() {
    let mut l = lab(1);
    l.start();
    let h = l.host.name().to_string();
    ip(&["-n", &h, "addr", "add", "192.0.2.200/24", "dev", "p0"]);
    let kid = format!("netns={}", l.kid(0));
    l.ok(&["link", "add", "c0", "parent", "p0", "netns", l.kid(0)]);
    l.up(0, "c0", "192.0.2.1/24");
    assert!(pings(l.wire.name(), "192.0.2.1"), "the wire reaches c0");
    assert!(
        !pings(&h, "192.0.2.1"),
        "the host reached its own macvlan child without a host port"
    );
    l.refused(
        &[
            "link", "add", "shim0", "parent", "p0", "kind", "host", "mode", "vepa",
        ],
        "a host port is a bridge-mode port",
    );
    l.refused(
        &[
            "link",
            "add",
            &format!("name=shim0,parent=p0,kind=host,{kid}"),
        ],
        "a host port stays in the engine's namespace",
    );
    l.refused(
        &[
            "link",
            "add",
            "shim0",
            "parent",
            "p0",
            "ipaddr",
            "192.0.2.100/32",
        ],
        "addresses and routes are for host ports",
    );
    assert!(try_ip(&["-n", &h, "link", "show", "shim0"]).is_err());
    l.ok(&[
        "link",
        "add",
        "shim0",
        "parent",
        "p0",
        "kind",
        "host",
        "ipaddr",
        "192.0.2.100/32",
        "route",
        "192.0.2.1/32",
    ]);
    let addrs = ip_json(&["-n", &h, "addr", "show", "dev", "shim0"]);
    let shim = &addrs[0];
    let flags = shim["flags"].as_array().unwrap();
    assert!(flags.contains(&"UP".into()), "{shim}");
    let local: Vec<&Value> = shim["addr_info"].as_array().unwrap().iter().collect();
    assert!(
        local
            .iter()
            .any(|a| a["local"] == "192.0.2.100" && a["prefixlen"] == 32),
        "{shim}"
    );
    let routes = ip_json(&["-n", &h, "route", "show", "192.0.2.1/32"]);
    assert_eq!(routes[0]["dev"], "shim0", "{routes}");
    assert!(pings(&h, "192.0.2.1"), "the host reaches c0 through shim0");
    let shown = l.show(&["shim0"]);
    assert_eq!(shown[0]["umacvlan"]["forwarding"], true, "{shown}");
    assert_eq!(shown[0]["umacvlan"]["netns"], Value::Null, "{shown}");
    l.refused(&["link", "set", "shim0", "mode", "private"], "bridge-mode");
    l.ok(&["link", "del", "shim0"]);
    wait_until("shim0 to vanish", || {
        try_ip(&["-n", &h, "link", "show", "shim0"]).is_err()
    });
    assert!(!pings(&h, "192.0.2.1"), "no host port, no way to c0");
}

/// `run --port name=...,kind=host,address=...,route=...`: the host port is up with its
/// addresses and routes from the start, forwards to a sibling, and is gone with the engine.
#[test]
fn run_with_a_host_port_and_it_goes_with_the_engine() {
    let mut l = lab(1);
    let h = l.host.name().to_string();
    let c0 = format!("name=c0,netns={}", l.kid(0));
    l.start_with(&[
        "--parent",
        "p0",
        "--port",
        &c0,
        "--port",
        "name=shim0,kind=host,mode=bridge,address=192.0.2.100/32+198.51.100.1/24,route=192.0.2.0/28",
    ]);
    wait_until("shim0 to come up", || {
        try_ip(&["-n", &h, "-j", "link", "show", "dev", "shim0"])
            .is_ok_and(|j| j.contains("\"operstate\":\"UP\""))
    });
    let addrs = ip_json(&["-n", &h, "-4", "addr", "show", "dev", "shim0"]);
    let mut got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    got.sort();
    assert_eq!(got, ["192.0.2.100/32", "198.51.100.1/24"]);
    let routes = ip_json(&["-n", &h, "route", "show", "192.0.2.0/28"]);
    assert_eq!(routes[0]["dev"], "shim0", "{routes}");
    assert_eq!(routes[0]["scope"], "link", "{routes}");
    l.up(0, "c0", "192.0.2.1/24");
    assert!(pings(&h, "192.0.2.1"), "the host reaches c0 through shim0");
    let mut engine = l.engine.take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(engine.id()).unwrap()),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    assert!(engine.wait().unwrap().success());
    assert!(try_ip(&["-n", &h, "link", "show", "shim0"]).is_err());
    let left = ip(&["-n", &h, "route", "show", "192.0.2.0/28"]);
    assert!(
        left.trim().is_empty(),
        "a route outlived its host port: {left}"
    );
}
