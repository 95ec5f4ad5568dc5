//! `umacvlan capture` and `umacvlan trace --follow` end to end (root): an engine with two bridge
//! ports, four followers started through the real CLI, exactly K known raw frames sent from the
//! wire, and what each follower wrote checked frame by frame: the pcapng read back with
//! pcap-file (interfaces, directions, bytes, drop comments), the same stream through
//! `tcpdump -r -`, the JSON lines of `trace --follow`, and `capture drops`.

#[allow(unused_macros, unused_imports)] // parity.rs serves the parity tests only.
mod common;

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ETH_P_ALL, PacketSocket, disable_ipv6, test_frame, threads_named, threads_named_dirs,
};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::opt_common::CommonOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use serde_json::Value;
use umacvlan::engine::record::FrameRecord;
use umacvlan::net::testutil::{Topology, ip, topology, try_ip, wait_until};
use umacvlan::wire::mac::MacAddr;

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");
const C0: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x00]);
const C1: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x01]);
const UNKNOWN: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0x77]);
const EXT: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0b, 0xee]);

/// Children killed on drop (a failing test leaves no engine or follower behind).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn umacvlan(t: &Topology, socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", t.host.name(), BIN])
        .args(args)
        .env("UMACVLAN_CONTROL", socket);
    c
}

/// The nice value of the process or thread whose /proc directory is `dir` (field 19 of `stat`).
/// The nice value and scheduling policy (`/proc/…/stat` fields 19 and 41) of a process or thread.
fn priority_of(dir: &Path) -> (i32, i32) {
    let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
    let after_comm: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (
        after_comm[16].parse().unwrap(),
        after_comm[38].parse().unwrap(),
    )
}

/// What `yield_cpu_to_forwarding` sets: nice 19 and `SCHED_IDLE`.
const YIELDING: (i32, i32) = (19, libc::SCHED_IDLE);
/// A shell's default: nice 0, `SCHED_OTHER`.
const NORMAL: (i32, i32) = (0, libc::SCHED_OTHER);

/// Starts an engine on p0 with bridge ports c0 (and c1 when `ports` is 2) in the topology's
/// namespaces, waits until they are up, and returns it (killed on drop) with its pid.
fn start_engine(t: &Topology, socket: &Path, ports: usize) -> (Procs, u32) {
    let mut args = vec!["run".to_string(), "--parent".into(), "p0".into()];
    for (i, mac) in [C0, C1].iter().enumerate().take(ports) {
        args.push("--port".into());
        args.push(format!(
            "name=c{i},mode=bridge,netns={},mac={mac}",
            t.kid(i)
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let engine = umacvlan(t, socket, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = engine.id();
    let procs = Procs(vec![engine]);
    wait_until("the control socket", || socket.exists());
    for i in 0..ports {
        let name = format!("c{i}");
        wait_until(&format!("{name} to appear"), || {
            try_ip(&["-n", t.kid(i), "link", "show", &name]).is_ok()
        });
        ip(&["-n", t.kid(i), "link", "set", &name, "up"]);
    }
    // The engine follows up/down every 100 ms.
    std::thread::sleep(Duration::from_millis(400));
    (procs, pid)
}

/// A topology with one child and no IPv6 anywhere, and an engine with port c0 in it.
fn one_port_engine(tag: &str) -> (Topology, PathBuf, Procs, u32) {
    let t = topology(tag, 1);
    for ns in [t.wire.name(), t.host.name(), t.kid(0)] {
        disable_ipv6(ns);
    }
    let socket = t.socket();
    let (procs, pid) = start_engine(&t, &socket, 1);
    (t, socket, procs, pid)
}

/// `umacvlan ARGS` against the engine at `socket`, its output piped.
fn spawn_piped(t: &Topology, socket: &Path, args: &[&str]) -> Child {
    umacvlan(t, socket, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `c` to exit (panics after 20 s) and returns its stdout.
fn finish(c: &mut Child, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = c.try_wait().unwrap() {
            let mut out = Vec::new();
            if let Some(mut s) = c.stdout.take() {
                std::io::Read::read_to_end(&mut s, &mut out).unwrap();
            }
            let mut err = String::new();
            if let Some(mut s) = c.stderr.take() {
                std::io::Read::read_to_string(&mut s, &mut err).unwrap();
            }
            assert!(status.success(), "{what}: {status}: {err}");
            return out;
        }
        assert!(Instant::now() < deadline, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One EPB as read back: interface name, direction flags, comment, bytes.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    at: String,
    dir: u32,
    comment: Option<String>,
    data: Vec<u8>,
    original_len: u32,
}

/// The IDB names and the packets of a pcapng file.
fn read_pcapng(path: &Path) -> (Vec<String>, Vec<Packet>) {
    let bytes = std::fs::read(path).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let mut names = Vec::new();
    let mut packets = Vec::new();
    while let Some(b) = r.next_block() {
        match b.unwrap().0 {
            Block::InterfaceDescription(i) => {
                let name = i.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                });
                assert!(
                    i.options.iter().any(|o| matches!(
                        o,
                        InterfaceDescriptionOption::IfTsResol(r) if r.to_u8() == 9
                    )),
                    "if_tsresol 9: {i:?}"
                );
                names.push(name.expect("if_name"));
            }
            Block::EnhancedPacket(e) => {
                let dir = e.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Flags(f) => Some(*f),
                    _ => None,
                });
                let comment = e.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Common(CommonOption::Comment(c)) => {
                        Some(Cow::to_string(c))
                    }
                    _ => None,
                });
                packets.push(Packet {
                    at: names[e.interface_id as usize].clone(),
                    dir: dir.expect("flags"),
                    comment,
                    data: e.data.to_vec(),
                    original_len: e.original_len,
                });
            }
            _ => {}
        }
    }
    (names, packets)
}

const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

#[test]
fn capture_and_follow_show_exactly_the_frames_sent() {
    let t = topology("ob", 2);
    // No IPv6 anywhere: no DAD, RS or MLD frames besides the ones this test sends.
    for ns in [t.wire.name(), t.host.name(), t.kid(0), t.kid(1)] {
        disable_ipv6(ns);
    }
    let socket = t.socket();
    let dir = std::env::temp_dir().join(format!("{}-cap", t.host.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |n: &str| -> PathBuf { dir.join(n) };
    let (_procs, engine_pid) = start_engine(&t, &socket, 2);

    // K frames: known unicast to c0, unknown unicast, twice each.
    const K: usize = 4;
    let frames: Vec<Vec<u8>> = (0..K)
        .map(|i| {
            let dst = if i % 2 == 0 { C0 } else { UNKNOWN };
            test_frame(dst, EXT, None, 0x0b00 + i as u64, 60 + 2 * i)
        })
        .collect();
    let k = K.to_string();
    let all_pcap = file("all.pcapng");
    let drops_pcap = file("drops.pcapng");
    let spawn = |args: &[&str]| spawn_piped(&t, &socket, args);
    let mut cap = spawn(&[
        "capture",
        "parent",
        "-w",
        all_pcap.to_str().unwrap(),
        "-c",
        &k,
    ]);
    let mut follow = spawn(&["trace", "--follow", "parent", "-c", &k, "-j"]);
    let mut drops = spawn(&[
        "capture",
        "drops",
        "-w",
        drops_pcap.to_str().unwrap(),
        "-c",
        "2",
    ]);
    // `capture -w - | tcpdump -r -`.
    let mut piped = spawn(&["capture", "parent", "-w", "-", "-c", &k]);
    let mut tcpdump = Command::new("tcpdump")
        .args(["-n", "-e", "-r", "-"])
        .stdin(piped.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (apt-get install tcpdump)");
    // One more, at the caller's priority.
    let mut keep = spawn(&[
        "capture",
        "parent",
        "-w",
        "/dev/null",
        "-c",
        "1",
        "--keep-priority",
    ]);
    wait_until("five followers in the engine", || {
        threads_named(engine_pid, "umacvlan-follow") == 5
            && threads_named(engine_pid, "umacvlan-stream") == 5
    });
    // Following yields the CPU to forwarding: the engine's relays and stream writers, and the
    // capture processes (`ip netns exec` execs them), run at nice 19 under SCHED_IDLE;
    // --keep-priority keeps the shell's. A thread lowers its own priority as it starts, just
    // after it got its name: give it that moment.
    let names = ["umacvlan-follow", "umacvlan-stream"];
    wait_until("every follower and stream thread to yield", || {
        names.iter().all(|name| {
            threads_named_dirs(engine_pid, name)
                .iter()
                .all(|d| priority_of(d) == YIELDING)
        })
    });
    for name in names {
        for dir in threads_named_dirs(engine_pid, name) {
            assert_eq!(
                priority_of(&dir),
                YIELDING,
                "{name} thread {}",
                dir.display()
            );
        }
    }
    let engine_main = PathBuf::from(format!("/proc/{engine_pid}"));
    assert_eq!(priority_of(&engine_main), NORMAL, "the engine itself");
    let workers = threads_named_dirs(engine_pid, "umv-p0-0");
    assert_eq!(workers.len(), 1, "p0's worker");
    assert_eq!(
        priority_of(&workers[0]),
        NORMAL,
        "the worker forwards sparse traffic at normal priority (the default, loaded:-10)"
    );
    let proc_dir = |c: &Child| PathBuf::from(format!("/proc/{}", c.id()));
    for c in [&cap, &drops, &piped] {
        assert_eq!(priority_of(&proc_dir(c)), YIELDING, "a capture yields");
    }
    assert_eq!(priority_of(&proc_dir(&keep)), NORMAL, "--keep-priority");
    assert_eq!(
        priority_of(&proc_dir(&follow)),
        NORMAL,
        "trace --follow is not a capture"
    );
    let wire = PacketSocket::open(t.wire.name(), "wire0", ETH_P_ALL);
    for f in &frames {
        wire.send(f).unwrap();
    }
    let cap_err = finish(&mut cap, "capture parent");
    assert!(
        cap_err.is_empty(),
        "capture -w FILE writes nothing to stdout"
    );
    let follow_out = String::from_utf8(finish(&mut follow, "trace --follow")).unwrap();
    finish(&mut drops, "capture drops");
    finish(&mut piped, "capture -w -");
    finish(&mut keep, "capture --keep-priority");
    let tcpdump_out = String::from_utf8(finish(&mut tcpdump, "tcpdump -r -")).unwrap();

    // The pcapng: one IDB per interface, each frame at the parent (inbound), and at c0
    // (outbound) when c0 got it; drops carry their reason.
    let (names, packets) = read_pcapng(&all_pcap);
    assert_eq!(names, ["p0", "c0", "c1"]);
    let mut want = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i % 2 == 0 {
            want.push(Packet {
                at: "p0".into(),
                dir: INBOUND,
                comment: Some("to c0; rule rx_unicast_to_port".into()),
                data: f.clone(),
                original_len: u32::try_from(f.len()).unwrap(),
            });
            want.push(Packet {
                at: "c0".into(),
                dir: OUTBOUND,
                comment: None,
                data: f.clone(),
                original_len: u32::try_from(f.len()).unwrap(),
            });
        } else {
            want.push(Packet {
                at: "p0".into(),
                dir: INBOUND,
                comment: Some(
                    "dropped: unknown_destination — unicast to a MAC that no up port owns: \
                     only the parent's own stack gets it; rule rx_unicast_unknown"
                        .into(),
                ),
                data: f.clone(),
                original_len: u32::try_from(f.len()).unwrap(),
            });
        }
    }
    assert_eq!(packets, want);

    // capture drops: only the two unknown-destination frames.
    let (dnames, dpackets) = read_pcapng(&drops_pcap);
    assert_eq!(dnames, ["p0", "c0", "c1"]);
    assert_eq!(dpackets.len(), 2, "{dpackets:?}");
    for (p, f) in dpackets.iter().zip([&frames[1], &frames[3]]) {
        assert_eq!(&p.data, f);
        assert!(
            p.comment
                .as_deref()
                .is_some_and(|c| c.starts_with("dropped: unknown_destination")),
            "{p:?}"
        );
    }

    // The same stream through tcpdump: six packets, EXT > c0 and EXT > the unknown MAC.
    // (tcpdump follows each unknown-ethertype packet with indented hex lines.)
    let lines: Vec<&str> = tcpdump_out
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .collect();
    assert_eq!(lines.len(), 6, "{tcpdump_out}");
    assert!(lines[0].contains(&format!("{EXT} > {C0}")), "{tcpdump_out}");
    assert!(
        lines[2].contains(&format!("{EXT} > {UNKNOWN}")),
        "{tcpdump_out}"
    );

    // trace --follow -j: one JSON line per frame with receivers, reason and rule.
    let seen: Vec<Value> = follow_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), K, "{follow_out}");
    for (i, v) in seen.iter().enumerate() {
        assert_eq!(v["from"], "parent");
        assert_eq!(v["parent"], "p0");
        assert_eq!(v["src"], EXT.to_string());
        assert_eq!(v["len"], 60 + 2 * i);
        assert_eq!(v["to_wire"], false);
        if i % 2 == 0 {
            assert_eq!(v["dst"], C0.to_string());
            assert_eq!(v["receivers"], serde_json::json!(["c0"]));
            assert_eq!(v["reason"], Value::Null);
            assert_eq!(v["rule"], "rx_unicast_to_port");
        } else {
            assert_eq!(v["dst"], UNKNOWN.to_string());
            assert_eq!(v["receivers"], serde_json::json!([]));
            assert_eq!(v["reason"], "unknown_destination");
            assert_eq!(v["rule"], "rx_unicast_unknown");
        }
    }

    // Every follower is gone: the engine emits nothing any more.
    wait_until("the followers to end", || {
        threads_named(engine_pid, "umacvlan-follow") == 0
    });

    // tshark (installed by .ci/run) reads the same interfaces, directions and comments.
    match Command::new("tshark")
        .arg("-r")
        .arg(&all_pcap)
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .args(["-e", "frame.packet_flags_direction", "-e", "frame.comment"])
        .output()
    {
        Ok(o) => {
            assert!(
                o.status.success(),
                "tshark: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let got = String::from_utf8_lossy(&o.stdout);
            let got: Vec<Vec<&str>> = got.lines().map(|l| l.split('\t').collect()).collect();
            let want: Vec<Vec<String>> = packets
                .iter()
                .map(|p| {
                    vec![
                        p.at.clone(),
                        format!("0x{:08x}", p.dir),
                        p.comment.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            assert_eq!(got, want);
        }
        Err(e) => eprintln!(
            "SKIPPED the tshark check: tshark cannot run ({e}); the pcapng was checked with \
             pcap-file and tcpdump only (.ci/run installs tshark)"
        ),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn follow_text_lines_and_unknown_targets() {
    let (t, socket, _procs, pid) = one_port_engine("of");

    let o = umacvlan(&t, &socket, &["trace", "--follow", "nope", "-c", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing named nope to follow"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut follow = umacvlan(&t, &socket, &["trace", "--follow", "c0", "-c", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the follower", || {
        threads_named(pid, "umacvlan-follow") == 1
    });
    let wire = PacketSocket::open(t.wire.name(), "wire0", ETH_P_ALL);
    wire.send(&test_frame(C0, EXT, Some(5), 1, 64)).unwrap();
    let out = String::from_utf8(finish(&mut follow, "trace --follow c0")).unwrap();
    let line = out.trim_end();
    let tail =
        format!(" parent(p0) {EXT} > {C0} len 64 vlan 5 to c0 wire no rule rx_unicast_to_port");
    assert!(line.ends_with(&tail), "{line:?} should end with {tail:?}");
    assert_eq!(line.lines().count(), 1);
}

/// Reads one JSON line.
fn json_line(r: &mut impl BufRead) -> Value {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
}

/// Reads one binary record's body (`None`: the end marker).
fn record(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).unwrap();
    let n = u32::from_le_bytes(len) as usize;
    (n > 0).then(|| {
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).unwrap();
        body
    })
}

/// Both kinds of follow stream, straight on the control socket, side by side with a capture
/// through the CLI: a binary client (`"binary": true`) gets the `following` line, then exactly
/// the records of the frames sent (receivers, wire, drop reason, rule, bytes cut at the
/// snaplen), the end marker and `follow-end`, and its connection then serves requests again; an
/// old-style client gets the same frames as JSON `observation` lines with hex bytes; and
/// `capture c0 -s 20` writes each frame at the right interfaces, in the right direction, cut
/// at 20 bytes.
#[test]
fn binary_and_json_streams_and_a_cut_capture_agree() {
    const SNAP: usize = 20;
    let t = topology("obin", 2);
    for ns in [t.wire.name(), t.host.name(), t.kid(0), t.kid(1)] {
        disable_ipv6(ns);
    }
    let socket = t.socket();
    let (_procs, pid) = start_engine(&t, &socket, 2);
    let pcap = std::env::temp_dir().join(format!("{}-cut.pcapng", t.host.name()));
    let connect = |binary: bool| {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let extra = if binary { r#","binary":true"# } else { "" };
        let req = format!(
            r#"{{"version":1,"request":{{"cmd":"follow","target":"parent","count":3,"snaplen":{SNAP},"with_bytes":true{extra}}}}}"#
        );
        writeln!(s, "{req}").unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    };
    let (mut bin, mut bin_r) = connect(true);
    let (_json, mut json_r) = connect(false);
    let mut cap = umacvlan(
        &t,
        &socket,
        &[
            "capture",
            "c0",
            "-s",
            "20",
            "-c",
            "2",
            "-w",
            pcap.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    for r in [&mut bin_r, &mut json_r] {
        let v = json_line(r);
        assert_eq!(v["reply"]["kind"], "following", "{v}");
        let names: Vec<&str> = v["reply"]["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["p0", "c0", "c1"]);
    }
    wait_until("three followers in the engine", || {
        threads_named(pid, "umacvlan-follow") == 3
    });

    // From the wire: a unicast to c0, one to nobody; then from c0 a broadcast (to c1 and the
    // wire), sent once the first two were seen so that the order is known.
    let frames = [
        test_frame(C0, EXT, None, 0x0c01, 70),
        test_frame(UNKNOWN, EXT, None, 0x0c02, 64),
        test_frame(MacAddr::BROADCAST, C0, None, 0x0c03, 80),
    ];
    let wire = PacketSocket::open(t.wire.name(), "wire0", ETH_P_ALL);
    wire.send(&frames[0]).unwrap();
    wire.send(&frames[1]).unwrap();
    let mut bodies = vec![record(&mut bin_r).unwrap(), record(&mut bin_r).unwrap()];
    let c0 = PacketSocket::open(t.kid(0), "c0", ETH_P_ALL);
    c0.send(&frames[2]).unwrap();
    bodies.push(record(&mut bin_r).unwrap());
    assert_eq!(
        record(&mut bin_r),
        None,
        "the end marker after count frames"
    );
    let end = json_line(&mut bin_r);
    assert_eq!(
        end["reply"],
        serde_json::json!({"kind": "follow-end", "seen": 3, "lost": 0})
    );

    // (from, receivers, to_wire, reason, rule) per frame.
    type Fate<'a> = (
        Option<&'a str>,
        Vec<&'a str>,
        bool,
        Option<&'a str>,
        &'a str,
    );
    let fates: [Fate<'static>; 3] = [
        (None, vec!["c0"], false, None, "rx_unicast_to_port"),
        (
            None,
            vec![],
            false,
            Some("unknown_destination"),
            "rx_unicast_unknown",
        ),
        (Some("c0"), vec!["c1"], true, None, "tx_bridge_group"),
    ];
    for ((body, f), fate) in bodies.iter().zip(&frames).zip(&fates) {
        let r = FrameRecord::decode(body).unwrap();
        let h = r.head;
        let got: Fate<'_> = (
            h.from,
            r.receivers().collect(),
            h.to_wire,
            h.reason,
            h.rule.unwrap_or("-"),
        );
        assert_eq!(&got, fate);
        assert_eq!(h.parent, "p0");
        assert_eq!(h.wire_len as usize, f.len());
        assert_eq!(r.bytes, &f[..SNAP], "cut at the snaplen");
        assert_eq!(r.failed().count(), 0);
    }
    // The same connection serves a request again.
    writeln!(bin, r#"{{"version":1,"request":{{"cmd":"link-show"}}}}"#).unwrap();
    let links = json_line(&mut bin_r);
    assert_eq!(links["reply"]["kind"], "links", "{links}");

    // The old-style client: the same three frames as JSON lines, bytes in hex.
    for (f, fate) in frames.iter().zip(&fates) {
        let v = json_line(&mut json_r);
        assert_eq!(v["reply"]["kind"], "observation", "{v}");
        let o = &v["reply"]["frame"];
        assert_eq!(o["from"], fate.0.unwrap_or("parent"));
        assert_eq!(o["receivers"], serde_json::json!(fate.1));
        assert_eq!(o["to_wire"], fate.2);
        assert_eq!(o["rule"], fate.4);
        assert_eq!(o["len"], f.len());
        let hex: String = f[..SNAP].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(o["bytes"], hex);
    }
    let end = json_line(&mut json_r);
    assert_eq!(end["reply"]["kind"], "follow-end");
    assert_eq!(end["reply"]["seen"], 3);

    // capture c0 -s 20: the two frames c0 took part in, at every interface they touched.
    finish(&mut cap, "capture c0");
    let (names, packets) = read_pcapng(&pcap);
    let _ = std::fs::remove_file(&pcap);
    assert_eq!(names, ["p0", "c0", "c1"]);
    let packet = |at: &str, dir, comment: Option<&str>, f: &[u8]| Packet {
        at: at.into(),
        dir,
        comment: comment.map(str::to_string),
        data: f[..SNAP].to_vec(),
        original_len: u32::try_from(f.len()).unwrap(),
    };
    let want = vec![
        packet(
            "p0",
            INBOUND,
            Some("to c0; rule rx_unicast_to_port"),
            &frames[0],
        ),
        packet("c0", OUTBOUND, None, &frames[0]),
        packet(
            "c0",
            INBOUND,
            Some("to c1, wire; rule tx_bridge_group"),
            &frames[2],
        ),
        packet("c1", OUTBOUND, None, &frames[2]),
        packet("p0", OUTBOUND, None, &frames[2]),
    ];
    assert_eq!(packets, want);
}

#[test]
fn ctrl_c_ends_a_capture_and_a_follow_with_the_engines_count() {
    let (t, socket, _procs, engine_pid) = one_port_engine("oi");
    let pcap = std::env::temp_dir().join(format!("{}-int.pcapng", t.host.name()));
    let spawn = |args: &[&str]| spawn_piped(&t, &socket, args);
    // No count: only a signal ends them.
    let cap = spawn(&["capture", "parent", "-w", pcap.to_str().unwrap()]);
    let follow = spawn(&["trace", "--follow", "parent", "-j"]);
    let mut guard = Procs(vec![cap, follow]);
    wait_until("two followers in the engine", || {
        threads_named(engine_pid, "umacvlan-follow") == 2
    });
    const K: usize = 3;
    let wire = PacketSocket::open(t.wire.name(), "wire0", ETH_P_ALL);
    for i in 0..K {
        wire.send(&test_frame(UNKNOWN, EXT, None, 0x0c00 + i as u64, 60))
            .unwrap();
    }
    // Give the engine time to hand them over, then interrupt both.
    std::thread::sleep(Duration::from_millis(500));
    for c in &guard.0 {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    }
    let started = Instant::now();
    let mut outputs = Vec::new();
    for c in guard.0.drain(..) {
        let o = c.wait_with_output().unwrap();
        outputs.push(o);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a single SIGINT ends them at once, through the engine's end of the stream (took {:?})",
        started.elapsed()
    );
    let (cap, follow) = (&outputs[0], &outputs[1]);
    let cap_err = String::from_utf8_lossy(&cap.stderr);
    assert!(cap.status.success(), "capture: {}: {cap_err}", cap.status);
    assert!(
        cap_err.contains(&format!("{K} frames captured ({K} packets, interrupted)")),
        "capture reports what it got: {cap_err}"
    );
    let (_, packets) = read_pcapng(&pcap);
    assert_eq!(packets.len(), K, "every frame is in the file: {packets:?}");
    assert!(
        follow.status.success(),
        "trace --follow: {}: {}",
        follow.status,
        String::from_utf8_lossy(&follow.stderr)
    );
    let lines = String::from_utf8_lossy(&follow.stdout).lines().count();
    assert_eq!(lines, K, "trace --follow printed every frame");
    wait_until("the engine's followers to end", || {
        threads_named(engine_pid, "umacvlan-follow") == 0
    });
    let _ = std::fs::remove_file(&pcap);
}
