//! VM ports end to end (root): `kind=attach` on a netdev the test owns (a veth standing in for
//! a hypervisor's TAP, its peer in a "guest" namespace), `kind=stream` with a framing peer
//! written here, and a real QEMU relaying between a stream port and a TAP of its own.
//!
//! Every test builds its own namespaces (`umv-<pid>-...`) and removes them, and its engine and
//! QEMU are killed on drop.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use serde_json::Value;
use umacvlan::net::testutil::{Topology, ip, topology, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");
const GUEST: &str = "02:00:00:00:0a:01";
const SPOOF: &str = "02:00:00:00:0a:99";
const WIRE_IP: [u8; 4] = [192, 0, 2, 254];

/// A child process killed and reaped on drop (the engine, QEMU).
struct Proc(Child);

impl Proc {
    /// SIGTERM, and waits (5 s at most) for a clean exit.
    fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit 5 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A topology and the engine running on it (declared first: it goes before the namespaces).
struct Vm {
    engine: Option<Proc>,
    topo: Topology,
}

fn vm(tag: &str, kids: usize) -> Vm {
    Vm {
        engine: None,
        topo: topology(tag, kids),
    }
}

impl Vm {
    fn log(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.log", self.topo.host.name()))
    }
}

impl Drop for Vm {
    /// The engine's log is shown when the test failed, and removed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            eprintln!("the engine's log:\n{log}");
        }
        let _ = std::fs::remove_file(self.log());
        // A killed engine leaves its control socket behind.
        drop(self.engine.take());
        let _ = std::fs::remove_file(self.topo.socket());
    }
}

impl Vm {
    /// `umacvlan ARGS` in the host namespace, with this lab's control socket (killed after
    /// 20 s: a `run` that should have refused its input must not hang the test).
    fn umacvlan(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["20", "ip", "netns", "exec", self.topo.host.name(), BIN])
            .args(args)
            .env("UMACVLAN_CONTROL", self.topo.socket())
            .output()
            .unwrap()
    }

    /// `umacvlan run --parent p0 PORTS...`; waits for its control socket.
    fn start(&mut self, ports: &[&str]) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.topo.host.name(), BIN, "run"]);
        c.args(["--parent", "p0"]);
        for p in ports {
            c.args(["--port", p]);
        }
        let child = c
            .env("UMACVLAN_CONTROL", self.topo.socket())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .unwrap();
        self.engine = Some(Proc(child));
        let sock = self.topo.socket();
        wait_until("the engine's control socket", || {
            UnixStream::connect(&sock).is_ok()
        });
        // The socket is bound before the ports are made; a request is answered only once they
        // are. A peer must not connect before: QEMU 7.2's stream client connects once, and a
        // refused connect is not retried (nor reported).
        self.ok(&["stats", "-j"]);
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

    /// The port's entry in `stats -j`.
    fn port(&self, name: &str) -> Value {
        let s: Value = serde_json::from_str(&self.ok(&["stats", "-j"])).unwrap();
        s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name} in {s}"))
            .clone()
    }

    fn drops(&self, name: &str, reason: &str) -> u64 {
        self.port(name)["stats"]["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    fn engine_running(&mut self) -> bool {
        let e = self.engine.as_mut().expect("started");
        e.0.try_wait().unwrap().is_none()
    }
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

/// The MAC the namespace `ns` has for `addr`, if any.
fn neighbour(ns: &str, addr: &str) -> Option<String> {
    let out = ip(&["-n", ns, "neigh", "show", addr]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "lladdr")
        .map(|i| words[i + 1].to_string())
}

/// A veth `vm1` in the host namespace (the hypervisor's netdev) whose peer `eth0` is the guest,
/// in namespace `guest`, with `mac` and 192.0.2.10/24.
fn guest_link(host: &str, guest: &str, mac: &str) {
    ip(&[
        "-n", host, "link", "add", "vm1", "type", "veth", "peer", "name", "eth0", "netns", guest,
    ]);
    ip(&["-n", guest, "link", "set", "eth0", "address", mac, "up"]);
    ip(&["-n", guest, "addr", "add", "192.0.2.10/24", "dev", "eth0"]);
}

#[test]
fn attach_reaches_the_wire_and_a_tap_sibling_and_pins_the_guest_mac() {
    let mut l = vm("va", 2);
    let (host, c0, guest, wire) = (
        l.topo.host.name().to_string(),
        l.topo.kid(0).to_string(),
        l.topo.kid(1).to_string(),
        l.topo.wire.name().to_string(),
    );
    // Unknown netdev at start: a clear error, nothing created.
    let o = l.umacvlan(&[
        "run",
        "--parent",
        "p0",
        "--port",
        &format!("name=c0,netns={c0}"),
        "--port",
        "name=vm1,kind=attach",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("needs an existing interface named vm1"),
        "{err}"
    );
    assert!(
        try_ip(&["-n", &c0, "link", "show", "c0"]).is_err(),
        "nothing created"
    );

    ip(&[
        "netns",
        "exec",
        &guest,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]);
    guest_link(&host, &guest, GUEST);
    l.start(&[
        &format!("name=c0,mode=bridge,netns={c0}"),
        &format!("name=vm1,kind=attach,mode=bridge,mac={GUEST}"),
    ]);
    wait_until("c0", || try_ip(&["-n", &c0, "link", "show", "c0"]).is_ok());
    ip(&["-n", &c0, "link", "set", "c0", "up"]);
    ip(&["-n", &c0, "addr", "add", "192.0.2.1/24", "dev", "c0"]);
    let v: Value = serde_json::from_str(&l.ok(&["link", "show", "vm1", "-j", "-d"])).unwrap();
    assert_eq!(v[0]["umacvlan"]["kind"], "attach", "{v}");
    assert_eq!(v[0]["umacvlan"]["trust_guest_mac"], false);
    assert_eq!(v[0]["address"], GUEST, "the guest's MAC, not the netdev's");
    wait_until("vm1 forwarding", || l.port("vm1")["forwarding"] == true);

    assert!(pings(&guest, "192.0.2.254"), "guest -> wire");
    assert!(pings(&guest, "192.0.2.1"), "guest -> c0 (bridge)");
    assert!(pings(&wire, "192.0.2.10"), "wire -> guest");
    assert!(l.port("vm1")["stats"]["rx_packets"].as_u64().unwrap() >= 4);

    // A VLAN-tagged frame from the guest keeps its tag: the kernel takes it out of the bytes
    // before the port's packet socket reads them, and the port puts it back.
    let follow = Command::new("ip")
        .args([
            "netns", "exec", &host, BIN, "trace", "--follow", "vm1", "-c", "10", "-j",
        ])
        .env("UMACVLAN_CONTROL", l.topo.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut follow = Proc(follow);
    let mut tagged = vec![0xff; 6];
    tagged.extend_from_slice(&mac_bytes(GUEST));
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x88, 0xb5]);
    tagged.resize(64, 0x5a);
    // Sent on the guest's end with a zero vnet header, as a guest's NIC would.
    let mut with_vnet = vec![0u8; umacvlan::wire::vnet::VNET_HDR_LEN];
    with_vnet.extend_from_slice(&tagged);
    let guest_ns = &l.topo.kids[1];
    let sock = umacvlan::net::in_netns(guest_ns, || {
        let index = nix::net::if_::if_nametoindex("eth0").unwrap();
        umacvlan::sys::TxSocket::open(index).unwrap()
    })
    .unwrap();
    wait_until("the follower to see the tagged frame", || {
        sock.send(&with_vnet).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        follow.0.try_wait().unwrap().is_some()
    });
    let mut out = String::new();
    follow
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let seen: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|f| f["from"] == "vm1" && f["dst"] == "ff:ff:ff:ff:ff:ff")
        .unwrap_or_else(|| panic!("the tagged frame is not among {out}"));
    assert_eq!(seen["vlan"], 100, "{seen}");
    assert_eq!(seen["len"], 64, "{seen}");
    assert_eq!(seen["to_wire"], true, "{seen}");

    // Another port's MAC is no better: with c0's, the guest reaches nobody either.
    let c0_mac = l.port("c0")["address"].as_str().unwrap().to_string();
    let before = l.drops("vm1", "mac_spoof");
    ip(&["-n", &guest, "neigh", "flush", "all"]);
    ip(&["-n", &guest, "link", "set", "eth0", "address", &c0_mac]);
    assert!(
        !pings(&guest, "192.0.2.1"),
        "a guest with c0's MAC reached c0"
    );
    assert!(l.drops("vm1", "mac_spoof") > before, "no mac_spoof counted");

    // The guest takes another MAC: its frames are mac_spoof drops and reach nobody (the wire
    // never learns the spoofed address from its ARP requests).
    ip(&["-n", &wire, "neigh", "flush", "all"]);
    ip(&["-n", &guest, "neigh", "flush", "all"]);
    ip(&["-n", &guest, "link", "set", "eth0", "address", SPOOF]);
    assert!(
        !pings(&guest, "192.0.2.254"),
        "a spoofed guest gets nowhere"
    );
    assert!(l.drops("vm1", "mac_spoof") >= 1);
    assert_eq!(
        neighbour(&wire, "192.0.2.10"),
        None,
        "nothing reached the wire"
    );

    // trust_guest_mac: the same frames go through (the wire learns the spoofed MAC from the ARP
    // request; replies to that MAC are not the port's, so they go to the host only).
    l.ok(&["link", "del", "vm1"]);
    l.ok(&[
        "link",
        "add",
        "vm1",
        "parent",
        "p0",
        "kind",
        "attach",
        "address",
        GUEST,
        "trust_guest_mac",
    ]);
    wait_until("vm1 forwarding again", || {
        l.port("vm1")["forwarding"] == true
    });
    pings(&guest, "192.0.2.254");
    assert_eq!(
        neighbour(&wire, "192.0.2.10").as_deref(),
        Some(SPOOF),
        "the trusted guest's frame reached the wire"
    );
    assert_eq!(l.drops("vm1", "mac_spoof"), 0, "a new port, no spoof drops");

    // The VM stops (its netdev vanishes): the engine keeps running; when a netdev of that name
    // comes back, the port is bound to it again.
    ip(&["-n", &guest, "link", "set", "eth0", "address", GUEST]);
    ip(&["-n", &host, "link", "del", "vm1"]);
    wait_until("vm1 out of the table", || {
        l.port("vm1")["forwarding"] == false
    });
    assert!(
        l.engine_running(),
        "a vanished netdev does not stop the engine"
    );
    guest_link(&host, &guest, GUEST);
    wait_until("vm1 forwarding after the restart", || {
        l.port("vm1")["forwarding"] == true
    });
    ip(&["-n", &guest, "neigh", "flush", "all"]);
    assert!(
        pings(&guest, "192.0.2.254"),
        "guest -> wire after re-attach"
    );
    // The netdev is not the engine's: it survives the engine.
    l.engine.take().unwrap().terminate();
    assert!(try_ip(&["-n", &host, "link", "show", "vm1"]).is_ok());
}

#[test]
fn attach_to_a_netdev_in_another_namespace() {
    let mut l = vm("vn", 2);
    let (hv, guest) = (l.topo.kid(0).to_string(), l.topo.kid(1).to_string());
    // The hypervisor's netdev lives in its own namespace; the engine attaches to it there.
    ip(&[
        "-n", &hv, "link", "add", "vmn", "type", "veth", "peer", "name", "eth0", "netns", &guest,
    ]);
    ip(&["-n", &guest, "link", "set", "eth0", "address", GUEST, "up"]);
    ip(&["-n", &guest, "addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    l.start(&[&format!("name=vmn,kind=attach,netns={hv},mac={GUEST}")]);
    wait_until("vmn forwarding", || l.port("vmn")["forwarding"] == true);
    assert!(
        pings(&guest, "192.0.2.254"),
        "guest -> wire through a netdev in {hv}"
    );
}

/// A stream peer speaking QEMU's framing, as a guest with [`GUEST`] and 192.0.2.20.
struct Peer(UnixStream);

impl Peer {
    fn connect(path: &Path) -> Peer {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Peer(s)
    }

    fn send(&mut self, frame: &[u8]) {
        let mut v = u32::try_from(frame.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        self.0.write_all(&v).unwrap();
    }

    /// The next frame, or `None` after `within` (or at EOF).
    fn recv(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut len = [0u8; 4];
        loop {
            match self.0.read_exact(&mut len) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(_) if Instant::now() < deadline => continue,
                Err(_) => return None,
            }
        }
        let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        self.0.read_exact(&mut f).unwrap();
        self.0
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Some(f)
    }

    /// Receives until `want` accepts a frame; false after 5 s.
    fn expect(&mut self, mut want: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(f) = self.recv(Duration::from_millis(500))
                && want(&f)
            {
                return true;
            }
        }
        false
    }

    /// Whether the engine closed the connection (EOF within 2 s).
    fn closed(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut b = [0u8; 1];
        while Instant::now() < deadline {
            if let Ok(0) = self.0.read(&mut b) {
                return true;
            }
        }
        false
    }
}

fn mac_bytes(m: &str) -> [u8; 6] {
    let v: Vec<u8> = m
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// An ARP request from the guest (192.0.2.20) for 192.0.2.254.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac_bytes(GUEST));
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac_bytes(GUEST));
    f.extend_from_slice(&[192, 0, 2, 20]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&WIRE_IP);
    f
}

fn is_arp_reply_from_the_wire(f: &[u8]) -> Option<[u8; 6]> {
    (f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == WIRE_IP)
        .then(|| f[22..28].try_into().unwrap())
}

fn echo_request(wire_mac: [u8; 6], seq: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac_bytes(GUEST), wire_mac)
        .ipv4([192, 0, 2, 20], WIRE_IP, 64)
        .icmpv4_echo_request(0x4242, seq)
        .write(&mut f, b"umacvlan stream test")
        .unwrap();
    f
}

fn is_echo_reply(f: &[u8], seq: u16) -> bool {
    let Ok(p) = SlicedPacket::from_ethernet(f) else {
        return false;
    };
    let from_wire = matches!(&p.net, Some(NetSlice::Ipv4(ip)) if ip.header().source() == WIRE_IP);
    let reply = matches!(&p.transport, Some(TransportSlice::Icmpv4(i))
        if matches!(i.icmp_type(), Icmpv4Type::EchoReply(e) if e.seq == seq));
    from_wire && reply
}

fn socket_path(topo: &Topology, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}.sock", topo.host.name()))
}

#[test]
fn stream_peer_exchanges_arp_and_icmp_reconnects_and_bad_lengths_are_counted() {
    let mut l = vm("vs", 0);
    let path = socket_path(&l.topo, "vm2");
    // A stale socket file (a killed engine's) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    l.start(&[&format!(
        "name=vm2,kind=stream,path={},mode=bridge,mac={GUEST}",
        path.display()
    )]);
    let wire = l.topo.wire.name().to_string();
    let v: Value = serde_json::from_str(&l.ok(&["link", "show", "vm2", "-j"])).unwrap();
    assert_eq!(v[0]["umacvlan"]["kind"], "stream", "{v}");
    assert_eq!(v[0]["umacvlan"]["path"], path.display().to_string());
    assert!(
        !v[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "LOWER_UP"),
        "no peer yet: no carrier"
    );

    // No peer: copies for the port are no_peer drops.
    assert!(!pings(&wire, "192.0.2.20"));
    assert!(l.drops("vm2", "no_peer") >= 1);

    let mut p = Peer::connect(&path);
    wait_until("the peer to be seen", || {
        l.ok(&["link", "show", "vm2"]).contains("LOWER_UP")
    });
    p.send(&arp_request());
    let mut wire_mac = None;
    assert!(
        p.expect(|f| {
            wire_mac = is_arp_reply_from_the_wire(f);
            wire_mac.is_some()
        }),
        "the wire answers the peer's ARP request"
    );
    let wire_mac = wire_mac.unwrap();
    p.send(&echo_request(wire_mac, 1));
    assert!(
        p.expect(|f| is_echo_reply(f, 1)),
        "echo reply from the wire"
    );

    // Reconnect: a new peer replaces the old one and is answered.
    drop(p);
    let mut p = Peer::connect(&path);
    p.send(&echo_request(wire_mac, 2));
    assert!(
        p.expect(|f| is_echo_reply(f, 2)),
        "echo reply after reconnecting"
    );

    // Bad requests are refused (exit 2) and leave the connected peer alone.
    let path_s = path.display().to_string();
    for (args, want) in [
        (
            vec![
                "link", "add", "vm3", "parent", "p0", "kind", "stream", "path", &path_s,
            ],
            "vm2 and vm3 cannot both listen on",
        ),
        (
            vec!["link", "add", "vm4", "parent", "p0", "kind", "attach"],
            "needs an existing interface named vm4",
        ),
        (
            vec!["link", "add", "vm5", "parent", "p0", "kind", "stream"],
            "needs path=SOCKET",
        ),
    ] {
        let o = l.umacvlan(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    p.send(&echo_request(wire_mac, 4));
    assert!(p.expect(|f| is_echo_reply(f, 4)), "the peer is undisturbed");

    // Malformed input: a runt is counted and the stream stays in step; a length beyond the
    // maximum is counted and the peer disconnected; a frame cut by the peer's close is counted.
    p.send(&[1, 2, 3, 4, 5]);
    p.send(&echo_request(wire_mac, 3));
    assert!(
        p.expect(|f| is_echo_reply(f, 3)),
        "still in step after a runt"
    );
    assert_eq!(l.drops("vm2", "runt"), 1);
    p.0.write_all(&0x00ff_ffffu32.to_be_bytes()).unwrap();
    assert!(p.closed(), "an impossible length ends the connection");
    wait_until("the oversize drop", || l.drops("vm2", "oversize") == 1);
    let mut p = Peer::connect(&path);
    p.0.write_all(&100u32.to_be_bytes()).unwrap();
    p.0.write_all(&[0u8; 20]).unwrap();
    drop(p);
    wait_until("the truncated drop", || l.drops("vm2", "truncated") == 1);
    assert!(l.engine_running());
    // The socket file goes with the engine.
    l.engine.take().unwrap().terminate();
    assert!(!path.exists(), "socket file removed on exit");
}

#[test]
fn a_real_qemu_relays_a_stream_port_to_its_tap_and_ping_crosses() {
    let mut l = vm("vq", 1);
    let path = socket_path(&l.topo, "q");
    l.start(&[&format!(
        "name=vmq,kind=stream,path={},mode=bridge,mac={GUEST}",
        path.display()
    )]);
    let ns = l.topo.kid(0).to_string();
    // QEMU with no guest: a hub joins its stream netdev (connected to the engine) and its tap
    // netdev (a TAP in the test namespace, whose kernel side stands in for the guest).
    let stream = format!(
        "stream,server=off,addr.type=unix,addr.path={}",
        path.display()
    );
    let tap = "tap,ifname=qt0,script=no,downscript=no";
    let _qemu = qemu_hub(&ns, &[&stream, tap]);
    wait_until("QEMU's tap", || {
        try_ip(&["-n", &ns, "link", "show", "qt0"]).is_ok()
    });
    wait_until("QEMU connected", || {
        l.ok(&["link", "show", "vmq"]).contains("LOWER_UP")
    });
    ip(&["-n", &ns, "link", "set", "qt0", "address", GUEST, "up"]);
    ip(&["-n", &ns, "addr", "add", "192.0.2.30/24", "dev", "qt0"]);
    assert!(
        pings(&ns, "192.0.2.254"),
        "through QEMU and the engine to the wire"
    );
    let wire = l.topo.wire.name().to_string();
    assert!(pings(&wire, "192.0.2.30"), "and back");
    // TCP from the wire: its veth hands the engine TSO super-frames with partial checksums,
    // which the stream port must segment and checksum in software for QEMU.
    let got = tcp_bytes(&ns, &wire, "192.0.2.30");
    assert!(got > 1_000_000, "TCP wire -> QEMU moved only {got} bytes");
    let s = l.port("vmq")["stats"].clone();
    assert!(s["rx_packets"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["tx_packets"].as_u64().unwrap() >= 4, "{s}");
    // A busy QEMU may leave its socket full (tap_queue_full, counted), but no frame failed to
    // be completed or written.
    assert_eq!(s["drops"].get("tap_write_failed"), None, "{s}");
    let (bytes, packets) = (
        s["rx_bytes"].as_u64().unwrap(),
        s["rx_packets"].as_u64().unwrap(),
    );
    assert!(
        bytes / packets > 1514,
        "super-frames reached the port (and were cut for QEMU): {s}"
    );
    l.engine.take().unwrap().terminate();
    assert!(!path.exists(), "socket file removed on exit");
}

#[test]
fn a_real_qemu_tap_attached_by_name_carries_ping() {
    let mut l = vm("vt", 1);
    let (host, guest) = (l.topo.host.name().to_string(), l.topo.kid(0).to_string());
    // QEMU (no guest) opens two TAPs in the engine's namespace and joins them with a hub: `vmt`
    // is the VM's netdev the engine attaches to, `gt0` (moved into the guest namespace) is
    // where the "guest" sits.
    let _qemu = qemu_hub(
        &host,
        &[
            "tap,ifname=vmt,script=no,downscript=no",
            "tap,ifname=gt0,script=no,downscript=no",
        ],
    );
    wait_until("QEMU's taps", || {
        try_ip(&["-n", &host, "link", "show", "gt0"]).is_ok()
    });
    ip(&["-n", &host, "link", "set", "gt0", "netns", &guest]);
    ip(&["-n", &guest, "link", "set", "gt0", "address", GUEST, "up"]);
    ip(&["-n", &guest, "addr", "add", "192.0.2.40/24", "dev", "gt0"]);
    l.start(&[&format!("name=vmt,kind=attach,mac={GUEST}")]);
    wait_until("vmt forwarding", || l.port("vmt")["forwarding"] == true);
    assert!(
        pings(&guest, "192.0.2.254"),
        "through QEMU's TAP and the engine"
    );
    let wire = l.topo.wire.name().to_string();
    assert!(pings(&wire, "192.0.2.40"), "and back");
}

/// QEMU without a guest (`-machine none`) in namespace `ns`: the `-netdev` values given (their
/// ids are added) joined by hub 0, so QEMU relays every frame between them.
fn qemu_hub(ns: &str, netdevs: &[&str]) -> Proc {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(["-machine", "none", "-nodefaults", "-nographic"])
        .args(["-monitor", "none", "-serial", "none"]);
    for (i, n) in netdevs.iter().enumerate() {
        c.arg("-netdev").arg(format!("{n},id=n{i}"));
        c.arg("-netdev")
            .arg(format!("hubport,id=h{i},hubid=0,netdev=n{i}"));
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
    Proc(child)
}

/// Bytes an iperf3 client in `client` sent to the server in `server` (at `addr`) in one second.
fn tcp_bytes(server: &str, client: &str, addr: &str) -> u64 {
    let srv = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    let _srv = Proc(srv);
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns", "exec", client, "iperf3", "-c", addr, "-t", "1", "-J",
        ])
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    j["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0)
}
