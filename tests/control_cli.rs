//! `umacvlan link`, `reload` and the live `trace` end to end: the built binary against a fake
//! daemon served in this process with `control::serve`. No root needed, except for the last test,
//! which compares `link show -d -s -j` with what iproute2 prints for a kernel macvlan.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use umacvlan::control::proto::*;
use umacvlan::control::trace::{TraceFrame, trace_json};
use umacvlan::control::{Call, ControlServer, serve};
use umacvlan::forward::{Mode, ParentConfig, PortConfig, PortTable};
use umacvlan::wire::mac::MacAddr;

fn umacvlan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umacvlan"))
        .args(args)
        .env_remove("UMACVLAN_CONTROL")
        .output()
        .expect("run umacvlan")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn table() -> PortTable {
    let parent = ParentConfig::new("eth0", mac("02:00:00:00:01:00"), 1500);
    let ports = vec![
        PortConfig::new("c1", Mode::Bridge, mac("02:00:00:00:00:01")),
        PortConfig::new("c2", Mode::Vepa, mac("02:00:00:00:00:02")),
    ];
    PortTable::build(parent, ports).unwrap()
}

fn view(name: &str, mode: Mode) -> LinkView {
    LinkView {
        name: name.into(),
        ifindex: Some(5),
        address: mac("02:00:00:00:00:01"),
        mtu: 1500,
        parent: "eth0".into(),
        netns: Some("ns1".into()),
        ifname: None,
        owner: None,
        up: true,
        lower_up: true,
        forwarding: true,
        refused: None,
        promisc: false,
        allmulti: false,
        mode,
        nopromisc: false,
        nodst: false,
        bcqueuelen: 1000,
        usedbcqueuelen: 1000,
        bclim: 1,
        macaddr: vec![],
        stats: LinkStats {
            rx_packets: 3,
            rx_bytes: 300,
            ..LinkStats::default()
        },
        kind: Default::default(),
        path: None,
        trust_guest_mac: false,
        persist: false,
    }
}

/// A daemon that answers like the real one would, for a few cases.
fn answer(r: &Request) -> Response {
    let ok = |reply| Response::Ok { reply };
    let err = |kind, m: &str| Response::Error {
        error: ControlError::new(kind, m),
    };
    match r {
        Request::LinkShow(f) => ok(Reply::Links {
            links: vec![view(f.name.as_deref().unwrap_or("c1"), Mode::Bridge)],
        }),
        Request::LinkAdd(s) if s.name == "c1" => err(ErrorKind::Exists, "c1 exists"),
        Request::LinkAdd(s) => ok(Reply::Links {
            links: vec![view(&s.name, s.mode.unwrap_or(Mode::Bridge))],
        }),
        Request::LinkDel(_) => err(ErrorKind::Internal, "the TAP would not go"),
        Request::LinkSet(c) => ok(Reply::Links {
            links: vec![view(&c.name, c.mode.unwrap_or(Mode::Bridge))],
        }),
        Request::Trace(t) => match trace_json(&table(), &t.from, &TraceFrame::from(t)) {
            Ok(trace) => ok(Reply::Trace { trace }),
            Err(e) => Response::Error { error: e.into() },
        },
        Request::Follow(_) => err(ErrorKind::NoSuchLink, "nothing to follow here"),
        Request::Stats(_) => {
            // Every snapshot 100 frames (64 000 bytes) later than the one before.
            static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let mut c1 = view("c1", Mode::Bridge);
            c1.stats.rx_packets = 100 * n;
            c1.stats.rx_bytes = 64_000 * n;
            c1.stats.drops = [("mtu".to_string(), 2)].into();
            ok(Reply::Stats {
                stats: StatsView {
                    ports: vec![c1],
                    parents: vec![ParentView {
                        name: "eth0".into(),
                        rx_packets: 105 * n,
                        drops: [("unknown_destination".to_string(), 5 * n)].into(),
                        ring_packets: 105 * n,
                        ports: 1,
                        bcqueuelen_used: 1000,
                        ..ParentView::default()
                    }],
                },
            })
        }
        Request::Reload(_) => ok(Reply::Reloaded {
            report: ReloadReport {
                added: vec!["c3".into()],
                removed: vec![],
                changed: vec!["c1".into()],
                unchanged: 1,
            },
        }),
    }
}

struct Fake {
    _server: ControlServer,
    path: PathBuf,
    dir: PathBuf,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fake(tag: &str) -> Fake {
    let dir = std::env::temp_dir().join(format!("umv-cli-{}-{tag}", std::process::id()));
    let path = dir.join("umacvlan.sock");
    let (server, calls) = serve(&path).unwrap();
    std::thread::spawn(move || {
        for Call { request, reply, .. } in calls {
            let _ = reply.send(answer(&request));
        }
    });
    Fake {
        _server: server,
        path,
        dir,
    }
}

fn with_control<'a>(path: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--control", path.to_str().unwrap()]);
    v
}

#[test]
fn link_show_json_and_text_through_the_socket() {
    let f = fake("show");
    let o = umacvlan(&with_control(
        &f.path,
        &["link", "-d", "-s", "-j", "show", "c7"],
    ));
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v[0]["ifname"], "c7");
    assert_eq!(v[0]["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(v[0]["stats64"]["rx"]["bytes"], 300);
    let o = umacvlan(&with_control(&f.path, &["link", "show", "-p"]));
    assert!(out(&o).starts_with("[\n"), "{}", out(&o));
    let o = umacvlan(&with_control(&f.path, &["link", "list", "c1", "-d"]));
    let text = out(&o);
    assert!(
        text.starts_with("5: c1@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\n"),
        "{text}"
    );
    assert!(
        text.contains("    macvlan mode bridge bcqueuelen 1000"),
        "{text}"
    );
    // UMACVLAN_CONTROL is the default for --control.
    let o = Command::new(env!("CARGO_BIN_EXE_umacvlan"))
        .args(["link", "show", "-j"])
        .env("UMACVLAN_CONTROL", &f.path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
}

#[test]
fn stats_once_as_json_and_watched_through_the_socket() {
    let f = fake("stats");
    let o = umacvlan(&with_control(&f.path, &["stats"]));
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(text.starts_with("port  parent  mode    state  "), "{text}");
    assert!(
        text.contains("\nc1    eth0    bridge  forwarding"),
        "{text}"
    );
    assert!(text.contains("  mtu=2\n"), "{text}");
    assert!(text.contains("unknown_destination="), "{text}");
    assert!(text.contains("ring of eth0 (kernel): packets "), "{text}");
    let o = umacvlan(&with_control(&f.path, &["stats", "-j"]));
    assert!(o.status.success(), "{}", err(&o));
    let v: StatsView = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!((v.ports.len(), v.parents.len()), (1, 1));
    // Piped --watch: a timestamp line, then a block; rates from the second sample on.
    let o = umacvlan(&with_control(
        &f.path,
        &["stats", "--watch", "0.2", "-c", "2"],
    ));
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    let blocks: Vec<&str> = text.split("--- ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), 2, "{text}");
    assert!(!blocks[0].contains("rx_pkt/s"), "{text}");
    assert!(blocks[1].contains("rx_pkt/s"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no terminal codes when piped: {text}"
    );
    // JSON lines: the first without rates, the second with them (100 frames in ~0.2 s).
    let o = umacvlan(&with_control(
        &f.path,
        &["stats", "-j", "-w", "0.2", "-c", "2"],
    ));
    assert!(o.status.success(), "{}", err(&o));
    let lines: Vec<Value> = out(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["rates"].is_null());
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    let pps = lines[1]["rates"]["ports"]["c1"]["rx_packets_per_sec"]
        .as_f64()
        .unwrap();
    assert!((100.0..=500.0).contains(&pps), "{pps}");
    let bps = lines[1]["rates"]["ports"]["c1"]["rx_bits_per_sec"]
        .as_f64()
        .unwrap();
    assert!(
        (bps / pps - 5120.0).abs() < 1e-6,
        "640-byte frames: {bps} / {pps}"
    );
    // No engine: exit 1.
    let o = umacvlan(&["stats", "--control", "/nonexistent/umacvlan.sock"]);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let o = umacvlan(&with_control(&f.path, &["stats", "--watch", "0"]));
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}

#[test]
fn link_add_set_del_and_exit_statuses() {
    let f = fake("add");
    let o = umacvlan(&with_control(
        &f.path,
        &["link", "add", "c2", "parent", "eth0", "mode", "vepa"],
    ));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "", "add is silent without -j, like ip");
    let o = umacvlan(&with_control(
        &f.path,
        &["link", "add", "-j", "name=c2,mode=private"],
    ));
    let v: Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v[0]["ifname"], "c2");
    // A refused request: exit 2, one line.
    let o = umacvlan(&with_control(&f.path, &["link", "add", "c1"]));
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err(&o), "umacvlan: error: c1 exists\n");
    // A daemon failure: exit 1.
    let o = umacvlan(&with_control(&f.path, &["link", "del", "c1"]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "umacvlan: error: the TAP would not go\n");
    let o = umacvlan(&with_control(
        &f.path,
        &["link", "set", "c1", "mode", "private"],
    ));
    assert!(o.status.success(), "{}", err(&o));
    // Bad words never reach the daemon: exit 2, naming the word.
    let o = umacvlan(&with_control(
        &f.path,
        &["link", "set", "c1", "mode", "bridged"],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("mode \"bridged\""), "{}", err(&o));
    let o = umacvlan(&with_control(&f.path, &["reload"]));
    assert_eq!(
        out(&o),
        "reloaded: added c3 removed - changed c1 unchanged 1\n"
    );
}

#[test]
fn no_engine_is_a_clear_failure() {
    let o = umacvlan(&["link", "show", "--control", "/nonexistent/umv.sock"]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("no umacvlan engine is listening on /nonexistent/umv.sock")
            && e.contains("umacvlan run"),
        "{e}"
    );
}

#[test]
fn live_trace_prints_like_the_offline_trace() {
    let f = fake("trace");
    let frame = [
        "--from",
        "c1",
        "--src",
        "02:00:00:00:00:01",
        "--dst",
        "ff:ff:ff:ff:ff:ff",
    ];
    let offline_table = [
        "trace",
        "--parent-mac",
        "02:00:00:00:01:00",
        "--port",
        "name=c1,mode=bridge,mac=02:00:00:00:00:01",
        "--port",
        "name=c2,mode=vepa,mac=02:00:00:00:00:02",
    ];
    for json in [false, true] {
        let mut offline: Vec<&str> = offline_table.to_vec();
        offline.extend(frame);
        let mut live = vec!["trace"];
        live.extend(frame);
        if json {
            offline.push("-j");
            live.push("-j");
        }
        let a = umacvlan(&offline);
        let b = umacvlan(&with_control(&f.path, &live));
        assert!(
            a.status.success() && b.status.success(),
            "{}{}",
            err(&a),
            err(&b)
        );
        assert_eq!(out(&a), out(&b));
    }
    let o = umacvlan(&with_control(
        &f.path,
        &[
            "trace",
            "--from",
            "c9",
            "--src",
            "02:00:00:00:00:01",
            "--dst",
            "ff:ff:ff:ff:ff:ff",
        ],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("no such port \"c9\""), "{}", err(&o));
    let o = umacvlan(&[
        "trace",
        "--port",
        "name=c1",
        "--src",
        "02:00:00:00:00:01",
        "--dst",
        "ff:ff:ff:ff:ff:ff",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("needs --parent-mac"), "{}", err(&o));
}

#[test]
fn link_help_teaches_with_examples() {
    for sub in ["add", "del", "set", "show"] {
        let o = umacvlan(&["link", sub, "--help"]);
        assert!(o.status.success());
        let h = out(&o);
        assert!(h.contains(&format!("umacvlan link {sub}")), "{sub}: {h}");
        assert!(h.contains("Example"), "{sub}: {h}");
    }
    let h = out(&umacvlan(&["link", "add", "--help"]));
    assert!(
        h.contains("[parent P]") && h.contains("name=N[,parent=P]"),
        "{h}"
    );
    let h = out(&umacvlan(&["reload", "--help"]));
    assert!(h.contains("umacvlan reload"), "{h}");
}

/// The keys `link show -d -s -j` prints for a port are iproute2's keys for a kernel macvlan of the
/// same mode (plus `umacvlan`), in `linkinfo.info_data` and `stats64` too.
#[test]
fn link_json_keys_match_iproute2() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test needs root (it creates a network namespace with a kernel macvlan); euid is \
         {euid}. It fails rather than being skipped so CI cannot mistake it for a pass."
    );
    let ns = format!("umv-{}-ctljson", std::process::id());
    let ip = |args: &[&str]| {
        let o = Command::new("ip").args(args).output().expect("ip");
        assert!(o.status.success(), "ip {args:?}: {}", err(&o));
        out(&o)
    };
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    ip(&["netns", "add", &ns]);
    let _guard = Netns(ns.clone());
    ip(&[
        "-n", &ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
    ]);
    ip(&[
        "-n", &ns, "link", "add", "mv0", "link", "p0", "type", "macvlan", "mode", "source", "nodst",
    ]);
    ip(&[
        "-n",
        &ns,
        "link",
        "set",
        "mv0",
        "type",
        "macvlan",
        "macaddr",
        "add",
        "02:00:00:00:00:09",
    ]);
    for stats in ["-s", "-s -s"] {
        let mut args = vec!["-n", ns.as_str(), "-d"];
        args.extend(stats.split(' '));
        args.extend(["-j", "link", "show", "mv0"]);
        let kernel: Value = serde_json::from_str(&ip(&args)).unwrap();
        let kernel = &kernel[0];
        let mut v = view("mv0", Mode::Source);
        v.nodst = true;
        v.macaddr = vec![mac("02:00:00:00:00:09")];
        let ours = umacvlan::cli::link::link_json(
            &v,
            &umacvlan::cli::link::ShowOptions {
                details: true,
                stats: u8::try_from(stats.split(' ').count()).unwrap(),
            },
        );
        let keys = |v: &Value| -> std::collections::BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let (k, o) = (keys(kernel), keys(&ours));
        let extra: Vec<_> = o.difference(&k).filter(|x| *x != "umacvlan").collect();
        assert!(extra.is_empty(), "keys iproute2 does not have: {extra:?}");
        for must in [
            "ifname",
            "ifindex",
            "address",
            "mtu",
            "operstate",
            "flags",
            "link",
            "linkinfo",
            "stats64",
        ] {
            assert!(o.contains(must) && k.contains(must), "{must}");
        }
        assert_eq!(
            keys(&kernel["linkinfo"]["info_data"])
                .difference(&keys(&ours["linkinfo"]["info_data"]))
                .collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "info_data keys we lack"
        );
        assert_eq!(
            kernel["linkinfo"]["info_data"]["macaddr_data"],
            ours["linkinfo"]["info_data"]["macaddr_data"]
        );
        assert_eq!(
            kernel["linkinfo"]["info_data"]["nodst"],
            ours["linkinfo"]["info_data"]["nodst"]
        );
        for dir in ["rx", "tx"] {
            assert_eq!(
                keys(&kernel["stats64"][dir]),
                keys(&ours["stats64"][dir]),
                "stats64.{dir} with {stats}"
            );
        }
    }
}
