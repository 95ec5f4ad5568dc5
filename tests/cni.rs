//! The CNI plugin with real components (root): Debian's containernetworking-plugins gives the
//! real `macvlan` plugin and host-local IPAM (`/usr/lib/cni`). The same configuration goes
//! through `macvlan` and through `umacvlan-cni` (only `type` differs) for every spec version the
//! real plugin supports, and the results, the containers' addresses and routes, and reachability
//! are compared. STATUS and GC (1.1.0) are tested on umacvlan alone. Every cycle must leave no
//! lease, device or engine port behind.

// The kernel's tag handling on the wire (common::tagger) only.
#[allow(unused_imports, unused_macros)]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use umacvlan::net::testutil::{Topology, ip, ip_json, netns, topology, wait_until};

const ENGINE: &str = env!("CARGO_BIN_EXE_umacvlan");
const PLUGIN: &str = env!("CARGO_BIN_EXE_umacvlan-cni");
/// Where Debian's containernetworking-plugins installs the plugins.
const CNI_DIR: &str = "/usr/lib/cni";
/// The versions the real macvlan plugin (1.1.1) and umacvlan both speak.
const SHARED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

fn require_plugins() {
    for p in ["macvlan", "host-local"] {
        let path = Path::new(CNI_DIR).join(p);
        assert!(
            path.is_file(),
            "{} is missing: apt-get install containernetworking-plugins (tools/test does)",
            path.display()
        );
    }
}

/// A directory of its own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("umv-{}-cni-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `umacvlan run --control SOCKET` in the lab's host namespace, killed on drop.
struct Engine {
    child: Child,
    socket: PathBuf,
    host: String,
}

impl Engine {
    fn start(topo: &Topology) -> Engine {
        let socket = topo.socket();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                topo.host.name(),
                ENGINE,
                "run",
                "--control",
            ])
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the control socket", || socket.exists());
        Engine {
            child,
            socket,
            host: topo.host.name().to_string(),
        }
    }

    /// `umacvlan link show -j`: the engine's ports.
    fn ports(&self) -> Vec<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host, ENGINE, "link", "show", "-j"])
            .arg("--control")
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What one plugin run printed and whether it succeeded.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    out: Value,
}

/// One attachment: a container ID, the namespace path and the interface name.
#[derive(Clone, Copy)]
struct Att<'a> {
    container: &'a str,
    netns: &'a str,
    ifname: &'a str,
}

/// Runs `plugin` in namespace `host` with CNI_COMMAND `command`, the attachment's variables
/// and `extra` environment, `conf` on stdin.
fn cni(
    plugin: &str,
    host: &str,
    command: &str,
    conf: &Value,
    att: Option<Att<'_>>,
    extra: &[(&str, &str)],
) -> Outcome {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host, plugin])
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = att {
        cmd.env("CNI_CONTAINERID", a.container)
            .env("CNI_NETNS", a.netns)
            .env("CNI_IFNAME", a.ifname);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let out = match text.trim() {
        "" => Value::Null,
        t => serde_json::from_str(t)
            .unwrap_or_else(|e| panic!("{plugin} {command}: stdout is not JSON ({e}): {t}")),
    };
    if !o.status.success() {
        // A failure always prints a CNI error object.
        assert!(
            out["code"].as_u64().is_some() && out["msg"].is_string(),
            "{plugin} {command} failed without a CNI error: {text} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Outcome {
        ok: o.status.success(),
        out,
    }
}

fn succeed(plugin: &str, host: &str, command: &str, conf: &Value, att: Option<Att<'_>>) -> Value {
    let o = cni(plugin, host, command, conf, att, &[]);
    assert!(o.ok, "{plugin} {command} failed: {}", o.out);
    o.out
}

fn code_of(o: &Outcome) -> u64 {
    assert!(!o.ok, "expected a failure, got {}", o.out);
    o.out["code"].as_u64().unwrap()
}

/// The network configuration every test starts from.
fn base_conf(version: &str, kind: &str, name: &str, data: &Path, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": kind,
        "master": "p0",
        "mode": "bridge",
        "socket": socket,
        "dns": {"nameservers": ["192.0.2.53"], "search": ["example.test"]},
        "ipam": {
            "type": "host-local",
            "dataDir": data,
            "ranges": [[{
                "subnet": "192.0.2.0/24",
                "rangeStart": "192.0.2.10",
                "rangeEnd": "192.0.2.50",
                "gateway": "192.0.2.254"
            }]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "198.51.100.0/24", "gw": "192.0.2.1"}]
        }
    })
}

/// host-local's leases for `network` (files named by address).
fn leases(data: &Path, network: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(data.join(network)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    out.sort();
    out
}

/// The devices in namespace `ns` other than `lo`.
fn devices(ns: &str) -> Vec<String> {
    ip_json(&["-n", ns, "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n != "lo")
        .collect()
}

/// The container's global addresses and its routes (both families), in a form that does not
/// depend on ifindex, plus its MTU and sysctls.
fn container_view(ns: &str, ifname: &str) -> Value {
    let addrs: Vec<Value> = ip_json(&["-n", ns, "addr", "show", "dev", ifname])[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| json!([a["local"], a["prefixlen"], a["broadcast"]]))
        .collect();
    let mut routes: Vec<String> = ["-4", "-6"]
        .iter()
        .flat_map(|family| {
            ip_json(&["-n", ns, family, "route", "show"])
                .as_array()
                .unwrap()
                .clone()
        })
        .filter(|r| r["dst"] != "fe80::/64")
        .map(|r| {
            format!(
                "{} via {} dev {} proto {} scope {} src {} metric {}",
                r["dst"],
                r["gateway"],
                r["dev"],
                r["protocol"],
                r["scope"],
                r["prefsrc"],
                r["metric"]
            )
        })
        .collect();
    routes.sort();
    let link = &ip_json(&["-n", ns, "link", "show", ifname])[0];
    // Not ndisc_notify and keep_addr_on_down: Debian's macvlan (1.1.1) predates them;
    // umacvlan sets them as upstream does today (checked apart).
    let sysctls: Vec<String> = [
        format!("net.ipv4.conf.{ifname}.arp_notify"),
        format!("net.ipv6.conf.{ifname}.disable_ipv6"),
    ]
    .iter()
    .map(|k| sysctl(ns, k))
    .collect();
    json!({"addrs": addrs, "routes": routes, "mtu": link["mtu"], "sysctls": sysctls})
}

/// A sysctl's value inside `ns`.
fn sysctl(ns: &str, key: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-n", key])
        .output()
        .unwrap();
    assert!(out.status.success(), "sysctl {key}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pings(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", to,
        ])
        .output()
        .expect("ping (apt-get install iputils-ping)")
        .status
        .success()
}

/// A result without what differs naturally between two plugins (the interface's MAC); the MAC
/// must be the device's.
fn normalised(result: &Value, ns: &str, ifname: &str) -> Value {
    let mut r = result.clone();
    let mac = r["interfaces"][0]["mac"].take();
    let dev = &ip_json(&["-n", ns, "link", "show", ifname])[0];
    assert_eq!(mac, dev["address"], "the result's MAC is the device's");
    r
}

/// What one arm (a plugin) produced for one version.
#[derive(Debug, PartialEq)]
struct ArmRun {
    results: Vec<Value>,
    containers: Vec<Value>,
    reach: Vec<bool>,
    check: Option<(bool, bool)>,
}

#[test]
fn the_same_configuration_through_macvlan_and_umacvlan() {
    require_plugins();
    let topo = topology("cnid", 2);
    let engine = Engine::start(&topo);
    let host = topo.host.name();
    let paths: Vec<String> = (0..2)
        .map(|i| format!("/run/netns/{}", topo.kid(i)))
        .collect();
    let atts: Vec<Att<'_>> = (0..2)
        .map(|i| Att {
            container: ["ctr0", "ctr1"][i],
            netns: &paths[i],
            ifname: "eth0",
        })
        .collect();
    for version in SHARED_VERSIONS {
        let mut arms = Vec::new();
        for (plugin, kind) in [
            (format!("{CNI_DIR}/macvlan"), "macvlan"),
            (PLUGIN.into(), "umacvlan"),
        ] {
            let data = TempDir::new(&format!("d-{kind}-{version}"));
            let network = format!("umvcni-{}-{version}", std::process::id());
            let ipv6 = *version == "1.0.0";
            let mut conf = base_conf(version, kind, &network, &data.0, &engine.socket);
            if ipv6 {
                // IPv6 too: a second range set and a route.
                let ipam = &mut conf["ipam"];
                ipam["ranges"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!([{"subnet": "2001:db8:1::/64"}]));
                ipam["routes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"dst": "2001:db8:2::/64"}));
            }
            let mut run = ArmRun {
                results: Vec::new(),
                containers: Vec::new(),
                reach: Vec::new(),
                check: None,
            };
            for (i, a) in atts.iter().enumerate() {
                let r = succeed(&plugin, host, "ADD", &conf, Some(*a));
                assert_eq!(r["cniVersion"], *version, "{kind}: {r}");
                run.results.push(normalised(&r, topo.kid(i), "eth0"));
                run.containers.push(container_view(topo.kid(i), "eth0"));
                let arp = sysctl(topo.kid(i), "net.ipv4.conf.eth0.arp_notify");
                assert_eq!(arp, "1", "{kind} {version}");
                if kind == "umacvlan" {
                    let ndisc = sysctl(topo.kid(i), "net.ipv6.conf.eth0.ndisc_notify");
                    assert_eq!(ndisc, "1", "{version}");
                    let keep = sysctl(topo.kid(i), "net.ipv6.conf.eth0.keep_addr_on_down");
                    assert_eq!(keep, if ipv6 { "1" } else { "0" }, "{version}");
                }
            }
            let ip1 = run.results[1]["ips"][0]["address"].as_str().unwrap();
            let ip1 = ip1.split('/').next().unwrap().to_string();
            run.reach = vec![pings(topo.kid(0), "192.0.2.254"), pings(topo.kid(0), &ip1)];
            if *version != "0.3.0" && *version != "0.3.1" {
                // CHECK with the ADD result; then with a route removed in the container.
                let mut with_prev = conf.clone();
                with_prev["prevResult"] = succeed_prev(&run, 0, &atts[0]);
                let good = cni(&plugin, host, "CHECK", &with_prev, Some(atts[0]), &[]).ok;
                ip(&["-n", topo.kid(0), "route", "del", "198.51.100.0/24"]);
                let bad = cni(&plugin, host, "CHECK", &with_prev, Some(atts[0]), &[]).ok;
                run.check = Some((good, bad));
            }
            for a in &atts {
                succeed(&plugin, host, "DEL", &conf, Some(*a));
                // DEL twice is success.
                succeed(&plugin, host, "DEL", &conf, Some(*a));
            }
            for i in 0..2 {
                assert!(
                    devices(topo.kid(i)).is_empty(),
                    "{kind} {version}: left {:?}",
                    devices(topo.kid(i))
                );
            }
            assert!(
                leases(&data.0, &network).is_empty(),
                "{kind} {version}: leases left"
            );
            assert!(
                engine.ports().is_empty(),
                "{kind} {version}: ports left {:?}",
                engine.ports()
            );
            arms.push(run);
        }
        let [kernel, ours] = &mut arms[..] else {
            unreachable!("two arms")
        };
        assert_eq!(
            kernel.reach,
            vec![true, true],
            "macvlan {version}: reachability"
        );
        if *version == "1.0.0" {
            // Debian's macvlan (1.1.1) fails CHECK of its own IPv6 result: it looks for the
            // route 2001:db8:2::/64 without a gateway, but set it via the IPv6 gateway.
            // umacvlan checks a route without `gw` by its destination.
            kernel.check = ours.check;
        }
        assert_eq!(*ours, *kernel, "{version}: umacvlan differs from macvlan");
        if let Some(c) = ours.check {
            assert_eq!(
                c,
                (true, false),
                "{version}: CHECK passes, then fails without a route"
            );
        }
    }
}

/// The ADD result of attachment `i`, with its MAC put back (for prevResult).
fn succeed_prev(run: &ArmRun, i: usize, a: &Att<'_>) -> Value {
    let mut r = run.results[i].clone();
    let ns = a.netns.rsplit('/').next().unwrap();
    let dev = &ip_json(&["-n", ns, "link", "show", a.ifname])[0];
    r["interfaces"][0]["mac"] = dev["address"].clone();
    r
}

#[test]
fn status_and_gc_with_1_1_0() {
    require_plugins();
    let topo = topology("cnis", 2);
    let engine = Engine::start(&topo);
    let host = topo.host.name();
    let data = TempDir::new("gc");
    let network = format!("umvcni-{}-gc", std::process::id());
    let conf = base_conf("1.1.0", "umacvlan", &network, &data.0, &engine.socket);
    let status = cni(PLUGIN, host, "STATUS", &conf, None, &[]);
    assert!(status.ok && status.out.is_null(), "{status:?}");

    let paths: Vec<String> = (0..2)
        .map(|i| format!("/run/netns/{}", topo.kid(i)))
        .collect();
    let a0 = Att {
        container: "ctr0",
        netns: &paths[0],
        ifname: "eth0",
    };
    let a1 = Att {
        container: "ctr1",
        netns: &paths[1],
        ifname: "eth0",
    };
    let a1b = Att {
        container: "ctr1",
        netns: &paths[1],
        ifname: "net1",
    };
    for a in [a0, a1, a1b] {
        // host-local 1.1.1 stops at 1.0.0: the plugin asks it in 1.0.0.
        let r = succeed(PLUGIN, host, "ADD", &conf, Some(a));
        assert_eq!(r["cniVersion"], "1.1.0");
        assert!(r["ips"][0].get("version").is_none(), "{r}");
        let mut check = conf.clone();
        check["prevResult"] = r;
        succeed(PLUGIN, host, "CHECK", &check, Some(a));
    }
    // A port of another network in the same container: GC of this network leaves it alone.
    let other_data = TempDir::new("gc-other");
    let other = base_conf(
        "1.1.0",
        "umacvlan",
        &format!("{network}-b"),
        &other_data.0,
        &engine.socket,
    );
    let a0b = Att {
        container: "ctr0",
        netns: &paths[0],
        ifname: "net2",
    };
    succeed(PLUGIN, host, "ADD", &other, Some(a0b));
    assert_eq!(engine.ports().len(), 4);
    assert_eq!(leases(&data.0, &network).len(), 3);

    // GC without the list of valid attachments is refused (it would remove everything).
    assert_eq!(code_of(&cni(PLUGIN, host, "GC", &conf, None, &[])), 7);
    assert_eq!(engine.ports().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr0", "ifname": "eth0"}]);
    succeed(PLUGIN, host, "GC", &gc, None);
    let owners: Vec<String> = engine
        .ports()
        .iter()
        .map(|p| p["umacvlan"]["owner"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        owners,
        [
            format!("cni:{network}/ctr0/eth0"),
            format!("cni:{network}-b/ctr0/net2")
        ]
    );
    assert_eq!(
        devices(topo.kid(1)),
        Vec::<String>::new(),
        "GC removed ctr1's devices"
    );
    assert_eq!(
        leases(&data.0, &network).len(),
        1,
        "GC released ctr1's leases"
    );
    assert!(
        pings(topo.kid(0), "192.0.2.254"),
        "the valid attachment still works"
    );

    // STATUS: 50 without the parent or without the engine; 1 for a version before 1.1.0.
    let mut no_parent = conf.clone();
    no_parent["master"] = json!("nosuch0");
    assert_eq!(
        code_of(&cni(PLUGIN, host, "STATUS", &no_parent, None, &[])),
        50
    );
    let mut no_engine = conf.clone();
    no_engine["socket"] = json!(data.0.join("none.sock"));
    assert_eq!(
        code_of(&cni(PLUGIN, host, "STATUS", &no_engine, None, &[])),
        50
    );
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(code_of(&cni(PLUGIN, host, "STATUS", &old, None, &[])), 1);
    assert_eq!(code_of(&cni(PLUGIN, host, "GC", &old, None, &[])), 1);

    succeed(PLUGIN, host, "DEL", &conf, Some(a0));
    succeed(PLUGIN, host, "DEL", &other, Some(a0b));
    assert!(engine.ports().is_empty());
    assert!(
        leases(&data.0, &network).is_empty()
            && leases(&other_data.0, &format!("{network}-b")).is_empty()
    );
}

#[test]
fn del_is_idempotent_and_failures_roll_back() {
    require_plugins();
    let topo = topology("cnir", 1);
    let host = topo.host.name();
    let data = TempDir::new("rb");
    let network = format!("umvcni-{}-rb", std::process::id());
    let socket = topo.socket();
    let conf = base_conf("1.0.0", "umacvlan", &network, &data.0, &socket);
    let path = format!("/run/netns/{}", topo.kid(0));
    let a = Att {
        container: "ctr0",
        netns: &path,
        ifname: "eth0",
    };

    // No engine: ADD says "try again later" (11); DEL succeeds (no engine, no ports).
    assert_eq!(code_of(&cni(PLUGIN, host, "ADD", &conf, Some(a), &[])), 11);
    assert!(leases(&data.0, &network).is_empty());
    succeed(PLUGIN, host, "DEL", &conf, Some(a));

    let engine = Engine::start(&topo);
    // An IPAM plugin that does not exist: the port is rolled back.
    let mut no_ipam = conf.clone();
    no_ipam["ipam"]["type"] = json!("no-such-ipam");
    assert_eq!(
        code_of(&cni(PLUGIN, host, "ADD", &no_ipam, Some(a), &[])),
        103
    );
    assert!(engine.ports().is_empty() && devices(topo.kid(0)).is_empty());
    // A route the container cannot add (its gateway is off-link): the lease and the port are
    // rolled back.
    let mut bad_route = conf.clone();
    bad_route["ipam"]["routes"] = json!([{"dst": "203.0.113.0/24", "gw": "198.51.100.1"}]);
    assert_eq!(
        code_of(&cni(PLUGIN, host, "ADD", &bad_route, Some(a), &[])),
        101
    );
    assert!(engine.ports().is_empty() && devices(topo.kid(0)).is_empty());
    assert!(
        leases(&data.0, &network).is_empty(),
        "the lease was released"
    );

    // MAC precedence: runtimeConfig.mac > CNI_ARGS MAC= > mac.
    let mut with_mac = conf.clone();
    with_mac["mac"] = json!("02:00:00:00:0c:01");
    let args = [(
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=02:00:00:00:0c:02",
    )];
    let r = cni(PLUGIN, host, "ADD", &with_mac, Some(a), &args);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.out["interfaces"][0]["mac"], "02:00:00:00:0c:02");
    succeed(PLUGIN, host, "DEL", &with_mac, Some(a));
    with_mac["runtimeConfig"] = json!({"mac": "02:00:00:00:0c:03"});
    let r = cni(PLUGIN, host, "ADD", &with_mac, Some(a), &args);
    assert_eq!(r.out["interfaces"][0]["mac"], "02:00:00:00:0c:03");
    succeed(PLUGIN, host, "DEL", &with_mac, Some(a));

    // DEL after the container's namespace is gone: success, and the port and lease go too.
    let gone = netns("cnigone");
    let gone_path = format!("/run/netns/{}", gone.name());
    let g = Att {
        container: "ctrgone",
        netns: &gone_path,
        ifname: "eth0",
    };
    succeed(PLUGIN, host, "ADD", &conf, Some(g));
    drop(gone);
    assert!(!Path::new(&gone_path).exists());
    succeed(PLUGIN, host, "DEL", &conf, Some(g));
    succeed(PLUGIN, host, "DEL", &conf, Some(g));
    assert!(engine.ports().is_empty());
    assert!(leases(&data.0, &network).is_empty());

    // A /proc/PID/ns/net path works like a bind-mounted name.
    let mut holder = Command::new("ip")
        .args(["netns", "exec", topo.kid(0), "sleep", "30"])
        .spawn()
        .unwrap();
    let proc_path = format!("/proc/{}/ns/net", holder.id());
    wait_until("the holder to enter its namespace", || {
        std::fs::read_link(&proc_path).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    let p = Att {
        container: "ctrproc",
        netns: &proc_path,
        ifname: "eth0",
    };
    let r = succeed(PLUGIN, host, "ADD", &conf, Some(p));
    assert_eq!(r["interfaces"][0]["sandbox"], proc_path);
    assert_eq!(devices(topo.kid(0)), ["eth0"]);
    succeed(PLUGIN, host, "DEL", &conf, Some(p));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(engine.ports().is_empty() && leases(&data.0, &network).is_empty());
}

#[test]
fn bad_input_gets_cni_errors() {
    // No root needed: everything here fails before the engine or a namespace is touched.
    let run = |command: &str, stdin: &str, env: &[(&str, &str)]| {
        let mut child = Command::new(PLUGIN)
            .env_clear()
            .env("CNI_COMMAND", command)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.success(), v)
    };
    let (ok, v) = run("VERSION", r#"{"cniVersion":"1.1.0"}"#, &[]);
    assert!(ok);
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let full = [
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", CNI_DIR),
    ];
    type Env<'a> = &'a [(&'a str, &'a str)];
    // (command, stdin, environment, expected code, a word of the message)
    let cases: &[(&str, &str, Env<'_>, u64, &str)] = &[
        ("ADD", "{", &full, 6, "cannot decode"),
        (
            "ADD",
            r#"{"cniVersion":"0.2.0","name":"n"}"#,
            &full,
            1,
            "incompatible",
        ),
        (
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"n","mode":"bridged"}"#,
            &full,
            7,
            "mode",
        ),
        (
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"n","mac":"02:00"}"#,
            &full,
            7,
            "mac",
        ),
        (
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"n","master":"p0"}"#,
            &[],
            4,
            "CNI_CONTAINERID",
        ),
        (
            "CHECK",
            r#"{"cniVersion":"0.3.1","name":"n","master":"p0"}"#,
            &full,
            1,
            "CHECK",
        ),
        (
            "FROB",
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            &full,
            4,
            "FROB",
        ),
    ];
    for (command, stdin, env, code, word) in cases {
        let (ok, v) = run(command, stdin, env);
        assert!(!ok, "{command} {stdin}: {v}");
        assert_eq!(v["code"], *code, "{command} {stdin}: {v}");
        let text = format!("{} {}", v["msg"], v["details"]);
        assert!(text.contains(word), "{command} {stdin}: {v}");
        assert!(v["cniVersion"].is_string(), "{v}");
    }
}

#[test]
fn engine_ports_named_apart_from_their_devices() {
    // What the plugin relies on, through `umacvlan run --port`: a namespace given by path,
    // and a device name (`ifname=`) that is not the port's.
    let topo = topology("cnin", 2);
    let socket = topo.socket();
    let run = |ports: &[String]| {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            topo.host.name(),
            ENGINE,
            "run",
            "--parent",
            "p0",
        ])
        .arg("--control")
        .arg(&socket);
        for p in ports {
            cmd.args(["--port", p]);
        }
        cmd
    };
    let (k0, k1) = (topo.kid(0), topo.kid(1));
    let same = [
        format!("name=a,netns={k0},ifname=eth0"),
        format!("name=b,netns=/run/netns/{k0},ifname=eth0"),
    ];
    let o = run(&same).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ports a and b both want the device name eth0"),
        "{err}"
    );

    let ports = [
        format!("name=web-a,netns=/run/netns/{k0},ifname=eth0,mode=bridge"),
        format!("name=web-b,netns={k1},ifname=eth0"),
    ];
    let child = run(&ports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let engine = Engine {
        child,
        socket: socket.clone(),
        host: topo.host.name().to_string(),
    };
    wait_until("both devices", || {
        devices(k0) == ["eth0"] && devices(k1) == ["eth0"]
    });
    let shown = engine.ports();
    let names: Vec<(&str, &str, &str)> = shown
        .iter()
        .map(|p| {
            let u = &p["umacvlan"];
            (
                p["ifname"].as_str().unwrap(),
                u["ifname"].as_str().unwrap(),
                u["netns"].as_str().unwrap(),
            )
        })
        .collect();
    let p0 = format!("/run/netns/{k0}");
    assert_eq!(
        names,
        [("web-a", "eth0", p0.as_str()), ("web-b", "eth0", k1)]
    );
    for (ns, addr) in [(k0, "192.0.2.1/24"), (k1, "192.0.2.2/24")] {
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
    }
    assert!(pings(k0, "192.0.2.2") && pings(k1, "192.0.2.254"));
}

/// `"master": "p0.100"` with no such device: the port hangs off the engine's emulated 802.1Q
/// sub-interface of p0. STATUS says it is available, the container reaches a host behind VID 100
/// on the wire (the kernel's own tag handling there), and a master with no lower device is not
/// available.
#[test]
fn a_vlan_master_is_an_emulated_sub_interface() {
    require_plugins();
    let topo = topology("cnivl", 1);
    let engine = Engine::start(&topo);
    let (host, wire) = (topo.host.name(), topo.wire.name());
    ip(&["-n", wire, "addr", "flush", "dev", "wire0"]);
    for x in ["100", "200", "u"] {
        let (a, b) = (format!("x{x}"), format!("y{x}"));
        ip(&[
            "-n", wire, "link", "add", &a, "type", "veth", "peer", "name", &b,
        ]);
        ip(&["-n", wire, "link", "set", &a, "up"]);
        ip(&["-n", wire, "link", "set", &b, "up"]);
    }
    ip(&["-n", wire, "addr", "add", "192.0.2.254/24", "dev", "y100"]);
    common::tagger::install(wire, "wire0", [(100, "x100"), (200, "x200")], "xu");
    let data = TempDir::new("vlan");
    let network = format!("umvcni-{}-vlan", std::process::id());
    let mut conf = base_conf("1.1.0", "umacvlan", &network, &data.0, &engine.socket);
    conf["master"] = json!("p0.100");
    let status = cni(PLUGIN, host, "STATUS", &conf, None, &[]);
    assert!(status.ok, "{status:?}");
    let path = format!("/run/netns/{}", topo.kid(0));
    let a = Att {
        container: "ctrv",
        netns: &path,
        ifname: "eth0",
    };
    succeed(PLUGIN, host, "ADD", &conf, Some(a));
    let ports = engine.ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["link"], "p0.100", "{}", ports[0]);
    assert!(pings(topo.kid(0), "192.0.2.254"), "no ping through VID 100");
    succeed(PLUGIN, host, "DEL", &conf, Some(a));
    assert!(engine.ports().is_empty());
    conf["master"] = json!("nope.100");
    let o = cni(PLUGIN, host, "STATUS", &conf, None, &[]);
    assert_eq!(code_of(&o), 50, "{o:?}");
    assert!(
        o.out["msg"].as_str().unwrap().contains("no \"nope\""),
        "{o:?}"
    );
}
