//! Shared helpers for the root integration tests: network namespaces with RAII cleanup, `ip` and
//! `bridge` wrappers, raw AF_PACKET endpoints, and the differential-test topology of
//! docs/design.md#differential-tests-against-the-kernel: a wire namespace W (optionally a hairpin
//! bridge), a host namespace H holding the parent veth end `p0`, and one namespace per child.
//!
//! Children come from a [`ChildrenProvider`]: the kernel's macvlan, or the umacvlan engine run
//! through its stable CLI contract (docs/reference.md#the---port-grammar). Both give the same
//! [`Topology`], so one scenario list drives both arms (`kernel_parity.rs`, `engine_parity.rs`).
//!
//! Every test built on this must call [`require_root`] first: without root it fails loudly,
//! never passes silently (STYLE.md §9).
#![allow(dead_code)] // Each test file uses a different subset.

pub mod engine;
pub mod parity;
pub mod tagger;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child as Process, Command, Stdio};
use std::time::{Duration, Instant};

use umacvlan::forward::{Mode, ParentConfig, PortConfig, PortFlags, PortTable};
use umacvlan::wire::mac::MacAddr;

/// The private ethertype every test frame carries (IEEE "local experimental 1").
pub const ETHERTYPE: u16 = 0x88b5;
/// Marks a test frame's payload; the nonce follows it.
pub const MAGIC: [u8; 4] = *b"UMVP";

/// The parent veth end `p0` in H.
pub const PARENT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x01, 0x00]);
/// The external sender: `we` itself without hairpin, `xs` behind the bridge with it.
pub const EXT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0e, 0x01]);
/// `we` (the far end of the parent veth) when it is a bridge port.
pub const WIRE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0f, 0x01]);
/// `xb`, the bridge-side end of the external sender's veth.
pub const XB_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0f, 0x02]);
/// The hairpin bridge `br0` itself.
pub const BR_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0f, 0x03]);
/// A unicast MAC that nothing owns and nothing ever sends from (so the bridge never learns it).
pub const UNKNOWN_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xee, 0xee]);
/// The MTU of `p0` and `we`.
pub const PARENT_MTU: u32 = 1500;

/// Panics unless the test runs as root (one rule for every suite).
pub use umacvlan::net::testutil::require_root;

// ---------------------------------------------------------------------------------------------
// Running `ip` and `bridge`
// ---------------------------------------------------------------------------------------------

/// The /proc directories of process `pid`'s threads named `name`.
pub fn threads_named_dirs(pid: u32, name: &str) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| t.path())
                .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == name))
                .collect()
        })
        .unwrap_or_default()
}

/// Threads of process `pid` named `name`.
pub fn threads_named(pid: u32, name: &str) -> usize {
    threads_named_dirs(pid, name).len()
}

/// Runs `prog args`, returning stdout, or a message with the command line and its stderr.
pub fn try_run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn with_ns<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-n", ns];
    v.extend_from_slice(args);
    v
}

/// `ip -n NS args`; panics with ip's stderr on failure (the library's `testutil::ip` in NS).
pub fn ip(ns: &str, args: &[&str]) -> String {
    umacvlan::net::testutil::ip(&with_ns(ns, args))
}

/// `ip -n NS args`, returning the error instead of panicking.
pub fn try_ip(ns: &str, args: &[&str]) -> Result<String, String> {
    umacvlan::net::testutil::try_ip(&with_ns(ns, args))
}

/// `bridge -n NS args`; panics with bridge's stderr on failure.
pub fn bridge(ns: &str, args: &[&str]) -> String {
    try_run("bridge", &with_ns(ns, args)).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

/// The tests' namespace guard and its constructor are the library's (`net::testutil`): one
/// naming scheme (`umv-<pid>-<tag>-<n>`), one cleanup, one sweeper.
pub use umacvlan::net::testutil::{NetnsGuard, netns};

/// Runs `f` on a fresh thread that has entered the network namespace named `ns` (setns affects
/// only the calling thread, so the test's own threads never change namespace). Sockets created
/// in `f` stay bound to `ns` for their whole life.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = umacvlan::net::Netns::open(ns).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    umacvlan::net::in_netns(&handle, f).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"))
}

/// Turns IPv6 off in `ns` (all existing and future interfaces), so no DAD, RS or MLD frames
/// and no 33:33:* groups appear on the ports.
pub fn disable_ipv6(ns: &str) {
    in_netns(ns, umacvlan::net::netns::disable_ipv6_here)
        .unwrap_or_else(|e| panic!("disabling IPv6 in {ns}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Raw AF_PACKET endpoints
// ---------------------------------------------------------------------------------------------

/// Protocol value that makes an AF_PACKET socket a tap: it sees every frame, both ways, before
/// any rx_handler runs.
pub const ETH_P_ALL: u16 = 0x0003;

/// One frame as an AF_PACKET socket received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub bytes: Vec<u8>,
    /// PACKET_HOST, _BROADCAST, _MULTICAST, _OTHERHOST or _OUTGOING.
    pub pkttype: u8,
    pub ifindex: i32,
}

/// A non-blocking raw AF_PACKET socket bound to one interface of one namespace.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ifname: String,
    netns: String,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

impl PacketSocket {
    /// Opens a SOCK_RAW socket on `ifname` in namespace `ns`, bound to `protocol`
    /// ([`ETH_P_ALL`] for a tap; a specific ethertype to see only what the device's own stack
    /// is handed after the rx_handler, see [`Topology::host`]). Panics on failure.
    pub fn open(ns: &str, ifname: &str, protocol: u16) -> PacketSocket {
        in_netns(ns, || Self::open_here(ifname, protocol))
            .unwrap_or_else(|e| panic!("packet socket on {ifname} in {ns}: {e}"))
            .with_netns(ns)
    }

    fn with_netns(mut self, ns: &str) -> Self {
        ns.clone_into(&mut self.netns);
        self
    }

    fn open_here(ifname: &str, protocol: u16) -> io::Result<PacketSocket> {
        let cname = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("if_nametoindex: {e}")));
        }
        let ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
        // Protocol 0 at creation: the socket receives nothing until it is bound below, so no
        // frame of another interface slips in.
        // SAFETY: plain socket(2); it returns a new descriptor or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` is a descriptor we just created and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let rcvbuf: libc::c_int = 4 << 20;
        // SAFETY: `rcvbuf` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap(),
            )
        };
        check(rc, "SO_RCVBUFFORCE")?;
        let addr = libc::sockaddr_ll {
            sll_family: u16::try_from(libc::AF_PACKET).unwrap(),
            sll_protocol: protocol.to_be(),
            sll_ifindex: ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `addr` is a fully initialised sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        check(rc, "bind")?;
        Ok(PacketSocket {
            fd,
            ifindex,
            ifname: ifname.to_string(),
            netns: String::new(),
        })
    }

    /// Frames the kernel dropped for this socket since it was opened (its receive buffer was
    /// full): `PACKET_STATISTICS`' `tp_drops`, which reading clears, so call it once, at the end.
    pub fn kernel_drops(&self) -> u32 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len =
            libc::socklen_t::try_from(std::mem::size_of::<libc::tpacket_stats>()).unwrap();
        // SAFETY: `st` and `len` are live locals and `len` is the size of `st`; the kernel writes
        // at most that many bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut st).cast(),
                &mut len,
            )
        };
        check(rc, "PACKET_STATISTICS").expect("PACKET_STATISTICS");
        st.tp_drops
    }

    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Turns on `PACKET_VNET_HDR`: from now on every frame sent starts with a 10-byte
    /// `struct virtio_net_hdr`, which the kernel checks and turns into the skb's GSO and
    /// checksum state (`virtio_net_hdr_to_skb`).
    pub fn set_vnet_hdr(&self) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int and the length passed is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&raw const on).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap(),
            )
        };
        check(rc, "PACKET_VNET_HDR")
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Sends one whole frame (from the destination MAC on) out of the bound interface. Retries
    /// briefly if the socket's send buffer is momentarily full.
    ///
    /// What a veth does with odd sizes (measured on 6.18.44, see `kernel_parity.rs`
    /// `af_packet_send_limits_on_veth`): fewer than 14 bytes fail with EINVAL
    /// (`dev_validate_header`: below the device's min_header_len), so a runt can never be put on
    /// the wire this way; more than MTU + 14 bytes fail with EMSGSIZE unless the frame carries
    /// an inline 802.1Q tag, which buys 4 more bytes (`packet_extra_vlan_len_allowed`).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tries = 0;
        loop {
            // SAFETY: `frame` is valid for reads of `frame.len()` bytes during the call.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return if usize::try_from(n).ok() == Some(frame.len()) {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "short send: {n} of {}",
                        frame.len()
                    )))
                };
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => return Err(e),
            }
        }
    }

    /// Reads every frame queued on the socket, without blocking.
    pub fn drain(&self, mut f: impl FnMut(Received)) {
        let mut buf = vec![0u8; 65_536 + 64];
        loop {
            let mut addr = libc::sockaddr_ll {
                sll_family: 0,
                sll_protocol: 0,
                sll_ifindex: 0,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 0,
                sll_addr: [0; 8],
            };
            let mut alen = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).unwrap();
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes, `addr` for `alen` bytes,
            // and `alen` is a live socklen_t; all outlive the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut addr).cast(),
                    &raw mut alen,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => panic!("recvfrom on {} in {}: {e}", self.ifname, self.netns),
                }
            }
            f(Received {
                bytes: buf[..usize::try_from(n).unwrap()].to_vec(),
                pkttype: addr.sll_pkttype,
                ifindex: addr.sll_ifindex,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test frames
// ---------------------------------------------------------------------------------------------

/// The smallest frame the tests send (an Ethernet minimum, without FCS).
pub const MIN_FRAME: usize = 60;

/// A test frame of `len` bytes in total (tag included): `dst`, `src`, an optional inline 802.1Q
/// tag with VID `vlan`, ethertype [`ETHERTYPE`], then [`MAGIC`], the big-endian `nonce`, zeros.
pub fn test_frame(
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    nonce: u64,
    len: usize,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(MIN_FRAME));
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&nonce.to_be_bytes());
    assert!(
        f.len() <= len,
        "frame length {len} is too short for the header and nonce"
    );
    f.resize(len, 0);
    f
}

/// The nonce of a test frame, whether its 802.1Q tag is inline or was stripped into the
/// socket's auxiliary data (as AF_PACKET receivers see it).
pub fn nonce_of(frame: &[u8]) -> Option<u64> {
    [12usize, 16].into_iter().find_map(|off| {
        let body = frame.get(off..off + 14)?;
        if body[..2] != ETHERTYPE.to_be_bytes() || body[2..6] != MAGIC {
            return None;
        }
        Some(u64::from_be_bytes(body[6..14].try_into().ok()?))
    })
}

// ---------------------------------------------------------------------------------------------
// The topology
// ---------------------------------------------------------------------------------------------

/// One child port as a scenario wants it.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// Interface name inside the child's namespace (and port name in the model).
    pub name: String,
    pub mode: Mode,
    pub flags: PortFlags,
    /// For passthru, the parent's MAC (the kernel ignores any other).
    pub mac: MacAddr,
    /// The MAC given at creation (`address` / `mac=`) when it is not `mac`: passthru ignores it,
    /// so the port must still end up with `mac`.
    pub given_mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    /// Groups joined with `ip maddr add` after the port is up.
    pub groups: Vec<MacAddr>,
    /// Source mode: the remote source MACs (`macaddr add`).
    pub sources: Vec<MacAddr>,
    pub bcqueuelen: Option<u32>,
    /// `ip link set … promisc on` / `allmulti on` on the child after it is up.
    pub promisc: bool,
    pub allmulti: bool,
}

impl ChildSpec {
    pub fn new(name: &str, mode: Mode, mac: MacAddr) -> ChildSpec {
        let mac = if mode == Mode::Passthru {
            PARENT_MAC
        } else {
            mac
        };
        ChildSpec {
            name: name.to_string(),
            mode,
            flags: PortFlags::default(),
            mac,
            given_mac: None,
            mtu: None,
            groups: Vec::new(),
            sources: Vec::new(),
            bcqueuelen: None,
            promisc: false,
            allmulti: false,
        }
    }

    /// The MTU the port ends up with.
    pub fn effective_mtu(&self) -> u32 {
        self.mtu.unwrap_or(PARENT_MTU)
    }
}

/// A whole topology: the children and whether W hairpins.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    /// Short tag used in namespace names and reports (keep it under ~12 characters).
    pub tag: String,
    pub hairpin: bool,
    pub children: Vec<ChildSpec>,
}

/// Who makes the children.
#[derive(Clone, Debug)]
pub enum ChildrenProvider {
    /// The kernel's macvlan driver (`ip link add … type macvlan`).
    Kernel,
    /// The umacvlan engine, through its stable CLI contract:
    /// `ip netns exec H <bin> run --parent p0 --port name=N,mode=M,netns=NS,mac=MAC[,mtu=N] …`.
    ///
    /// Scenarios that need port flags, source lists or bcqueuelen use the contract's extension
    /// keys: `flag=nodst` / `flag=nopromisc`, `source=MAC+MAC..`, `bcqueuelen=N`.
    Umacvlan { bin: PathBuf },
}

/// A child as built: its namespace and its AF_PACKET endpoint.
#[derive(Debug)]
pub struct ChildPort {
    pub spec: ChildSpec,
    /// The MAC the interface really has (read back after setup).
    pub mac: MacAddr,
    /// Link-layer groups on the interface (read back with `ip maddr`), including the ones the
    /// IPv4 stack joins by itself (01:00:5e:00:00:01).
    pub groups: BTreeSet<MacAddr>,
    /// Tap (ETH_P_ALL) on the child interface; also the child's sender.
    pub sock: PacketSocket,
    /// Declared after `sock` so the socket closes before the namespace is deleted.
    pub ns: NetnsGuard,
}

/// The running engine of the [`ChildrenProvider::Umacvlan`] arm; SIGTERM'd and reaped on drop.
#[derive(Debug)]
pub struct EngineProcess {
    child: Process,
    log: PathBuf,
    cmdline: String,
}

impl EngineProcess {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Panics with the engine's output if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the umacvlan engine exited early ({status}): {}\nits output:\n{}",
                self.cmdline,
                self.log_text()
            );
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = libc::pid_t::try_from(self.child.id()).unwrap();
            // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped, so
            // the pid cannot have been reused.
            let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
            if rc != 0 {
                eprintln!("SIGTERM to engine {pid}: {}", io::Error::last_os_error());
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!("engine {pid} ignored SIGTERM for 5 s; killing it");
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The Appendix topology, built and ready. Fields drop in order: the engine first (its TAPs
/// vanish with it), then the sockets, then the namespaces.
#[derive(Debug)]
pub struct Topology {
    pub engine: Option<EngineProcess>,
    /// Tap on `we` in W: counts frames *arriving* from the parent (ignore PACKET_OUTGOING).
    pub wire: PacketSocket,
    /// The external sender with hairpin (`xs` behind the bridge); `None` without hairpin, where
    /// the external sender is `we` itself ([`Topology::wire`]).
    pub ext: Option<PacketSocket>,
    /// Socket on `p0` bound to [`ETHERTYPE`] (not ETH_P_ALL): protocol handlers run *after* the
    /// rx_handler, so it sees exactly the frames the kernel hands to the host's own stack
    /// (PASS), not those macvlan consumed. Also the host's sender.
    pub host: PacketSocket,
    pub children: Vec<ChildPort>,
    pub spec: TopologySpec,
    pub host_ns: NetnsGuard,
    pub wire_ns: NetnsGuard,
}

/// How long setup may wait for links to come up (and for the engine's TAPs to appear).
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the engine arm waits after `ip maddr add` before probing.
const ENGINE_GROUP_SETTLE: Duration = Duration::from_millis(200);

fn macvlan_flag_word(flags: PortFlags) -> Option<&'static str> {
    match (flags.nopromisc, flags.nodst) {
        (false, false) => None,
        (true, false) => Some("nopromisc"),
        (false, true) => Some("nodst"),
        (true, true) => panic!("iproute2 sends the flag word whole: one flag at a time"),
    }
}

/// The JSON object `ip -j link show dev IF` prints.
fn link_json(ns: &str, ifname: &str) -> Result<serde_json::Value, String> {
    let out = try_ip(ns, &["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v.get(0)
        .cloned()
        .ok_or_else(|| format!("no link {ifname} in {ns}"))
}

/// Waits until every `(ns, ifname)` is operationally UP, which also means linkwatch has
/// activated its qdisc (before that, frames sent on it are dropped).
fn wait_oper_up(links: &[(&str, &str)]) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for (ns, ifname) in links {
        loop {
            let state = link_json(ns, ifname).ok().and_then(|v| {
                v.get("operstate")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            });
            if state.as_deref() == Some("UP") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ifname} in {ns} is not UP after {SETUP_TIMEOUT:?} (operstate {state:?}): {}",
                try_ip(ns, &["-d", "link", "show", "dev", ifname]).unwrap_or_else(|e| e)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The link-layer multicast addresses on `ifname` (`ip maddr show`).
fn read_groups(ns: &str, ifname: &str) -> BTreeSet<MacAddr> {
    ip(ns, &["maddr", "show", "dev", ifname])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("link"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn read_mac(ns: &str, ifname: &str) -> MacAddr {
    let v = link_json(ns, ifname).unwrap_or_else(|e| panic!("{e}"));
    v.get("address")
        .and_then(|a| a.as_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no MAC for {ifname} in {ns}: {v}"))
}

impl Topology {
    /// Builds the topology of `spec`, with children from `provider`, and waits until every
    /// link is up. Panics (cleaning up what exists) on any failure.
    pub fn build(spec: &TopologySpec, provider: &ChildrenProvider) -> Topology {
        let t = &spec.tag;
        let wire_ns = netns(&format!("{t}-w"));
        let host_ns = netns(&format!("{t}-h"));
        let child_ns: Vec<NetnsGuard> = (0..spec.children.len())
            .map(|i| netns(&format!("{t}-c{i}")))
            .collect();
        let (w, h) = (wire_ns.name(), host_ns.name());
        for ns in [w, h]
            .into_iter()
            .chain(child_ns.iter().map(NetnsGuard::name))
        {
            disable_ipv6(ns);
        }

        // The wire: p0 in H, its peer `we` in W.
        let we_mac = if spec.hairpin { WIRE_MAC } else { EXT_MAC };
        let (pm, wm) = (PARENT_MAC.to_string(), we_mac.to_string());
        ip(
            h,
            &[
                "link", "add", "name", "p0", "address", &pm, "type", "veth", "peer", "name", "we",
            ],
        );
        ip(h, &["link", "set", "we", "address", &wm, "netns", w]);
        if spec.hairpin {
            let (bm, xm, em) = (BR_MAC.to_string(), XB_MAC.to_string(), EXT_MAC.to_string());
            ip(
                w,
                &[
                    "link", "add", "name", "br0", "address", &bm, "type", "bridge",
                ],
            );
            ip(
                w,
                &[
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "forward_delay",
                    "0",
                    "mcast_snooping",
                    "0",
                ],
            );
            ip(
                w,
                &[
                    "link", "add", "name", "xs", "address", &em, "type", "veth", "peer", "name",
                    "xb",
                ],
            );
            ip(w, &["link", "set", "xb", "address", &xm]);
            ip(w, &["link", "set", "we", "master", "br0"]);
            ip(w, &["link", "set", "xb", "master", "br0"]);
            bridge(w, &["link", "set", "dev", "we", "hairpin", "on"]);
            for dev in ["br0", "xb", "xs"] {
                ip(w, &["link", "set", dev, "up"]);
            }
        }
        ip(w, &["link", "set", "we", "up"]);
        ip(h, &["link", "set", "p0", "up"]);

        let engine = match provider {
            ChildrenProvider::Kernel => {
                for (c, ns) in spec.children.iter().zip(&child_ns) {
                    Self::add_kernel_child(h, c, ns.name());
                }
                None
            }
            ChildrenProvider::Umacvlan { bin } => Some(Self::start_engine(spec, h, &child_ns, bin)),
        };
        for (c, ns) in spec.children.iter().zip(&child_ns) {
            ip(ns.name(), &["link", "set", &c.name, "up"]);
            if c.promisc {
                ip(ns.name(), &["link", "set", &c.name, "promisc", "on"]);
            }
            if c.allmulti {
                ip(ns.name(), &["link", "set", &c.name, "allmulticast", "on"]);
            }
            for g in &c.groups {
                ip(ns.name(), &["maddr", "add", &g.to_string(), "dev", &c.name]);
            }
        }

        let mut up: Vec<(&str, &str)> = vec![(h, "p0"), (w, "we")];
        if spec.hairpin {
            up.extend([(w, "br0"), (w, "xb"), (w, "xs")]);
        }
        up.extend(
            spec.children
                .iter()
                .zip(&child_ns)
                .map(|(c, ns)| (ns.name(), c.name.as_str())),
        );
        wait_oper_up(&up);
        if spec.hairpin {
            Self::wait_forwarding(w, &["we", "xb"]);
        }
        // linkwatch marks a link UP just before it activates the qdisc.
        std::thread::sleep(Duration::from_millis(20));

        let mut engine = engine;
        if let Some(e) = engine.as_mut() {
            // The engine learns the groups joined above from the child namespaces asynchronously
            // (docs/design.md#differences-from-the-kernel); give it a moment before the first
            // probe.
            std::thread::sleep(ENGINE_GROUP_SETTLE);
            e.assert_running();
        }
        let children = spec
            .children
            .iter()
            .cloned()
            .zip(child_ns)
            .map(|(c, ns)| {
                let mac = read_mac(ns.name(), &c.name);
                assert_eq!(
                    mac, c.mac,
                    "{} has MAC {mac}, the scenario wants {}",
                    c.name, c.mac
                );
                ChildPort {
                    groups: read_groups(ns.name(), &c.name),
                    sock: PacketSocket::open(ns.name(), &c.name, ETH_P_ALL),
                    mac,
                    spec: c,
                    ns,
                }
            })
            .collect();
        Topology {
            engine,
            wire: PacketSocket::open(w, "we", ETH_P_ALL),
            ext: spec.hairpin.then(|| PacketSocket::open(w, "xs", ETH_P_ALL)),
            host: PacketSocket::open(h, "p0", ETHERTYPE),
            children,
            spec: spec.clone(),
            host_ns,
            wire_ns,
        }
    }

    fn add_kernel_child(h: &str, c: &ChildSpec, child_ns: &str) {
        let mac = c.given_mac.unwrap_or(c.mac).to_string();
        let mtu = c.mtu.map(|m| m.to_string());
        let bcq = c.bcqueuelen.map(|n| n.to_string());
        let mut args = vec![
            "link", "add", "name", &c.name, "link", "p0", "address", &mac,
        ];
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "macvlan", "mode", c.mode.name()]);
        if let Some(f) = macvlan_flag_word(c.flags) {
            args.extend(["flag", f]);
        }
        if let Some(n) = &bcq {
            args.extend(["bcqueuelen", n]);
        }
        ip(h, &args);
        for s in &c.sources {
            ip(
                h,
                &[
                    "link",
                    "set",
                    &c.name,
                    "type",
                    "macvlan",
                    "macaddr",
                    "add",
                    &s.to_string(),
                ],
            );
        }
        ip(h, &["link", "set", &c.name, "netns", child_ns]);
    }

    /// The `--port` value of the engine's CLI contract for `c` (plus the extension keys the
    /// contract lacks, see [`ChildrenProvider::Umacvlan`]).
    pub fn engine_port_arg(c: &ChildSpec, child_ns: &str) -> String {
        let mut s = format!(
            "name={},mode={},netns={child_ns},mac={}",
            c.name,
            c.mode,
            c.given_mac.unwrap_or(c.mac)
        );
        if let Some(m) = c.mtu {
            s += &format!(",mtu={m}");
        }
        if let Some(f) = macvlan_flag_word(c.flags) {
            s += &format!(",flag={f}");
        }
        if !c.sources.is_empty() {
            let list: Vec<String> = c.sources.iter().map(|m| m.to_string()).collect();
            s += &format!(",source={}", list.join("+"));
        }
        if let Some(n) = c.bcqueuelen {
            s += &format!(",bcqueuelen={n}");
        }
        s
    }

    fn start_engine(
        spec: &TopologySpec,
        h: &str,
        child_ns: &[NetnsGuard],
        bin: &std::path::Path,
    ) -> EngineProcess {
        let log = std::env::temp_dir().join(format!("{h}-engine.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log fd: {e}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", h])
            .arg(bin)
            .args(["run", "--parent", "p0"])
            // Engines run in parallel: each serves its own control socket.
            .env(
                "UMACVLAN_CONTROL",
                std::env::temp_dir().join(format!("{h}.sock")),
            );
        for (c, ns) in spec.children.iter().zip(child_ns) {
            cmd.arg("--port").arg(Self::engine_port_arg(c, ns.name()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let cmdline = format!("{cmd:?}");
        let mut engine = EngineProcess {
            child,
            log,
            cmdline,
        };
        // Wait for every TAP in its namespace.
        let deadline = Instant::now() + SETUP_TIMEOUT;
        for (c, ns) in spec.children.iter().zip(child_ns) {
            while try_ip(ns.name(), &["link", "show", "dev", &c.name]).is_err() {
                engine.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "the engine made no TAP {} in {} within {SETUP_TIMEOUT:?} ({cmd:?}); its \
                     output:\n{}",
                    c.name,
                    ns.name(),
                    engine.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        engine
    }

    fn wait_forwarding(w: &str, ports: &[&str]) {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        for p in ports {
            loop {
                let out = bridge(w, &["-j", "link", "show", "dev", p]);
                if out.contains("\"state\":\"forwarding\"") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "bridge port {p} not forwarding: {out}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// The external sender's socket.
    pub fn ext_sender(&self) -> &PacketSocket {
        self.ext.as_ref().unwrap_or(&self.wire)
    }

    /// The port table `decide()` should read for this topology: a veth parent (no unicast
    /// filter, the default), every port up, with the groups each child really has.
    pub fn model_table(&self) -> PortTable {
        let parent = ParentConfig::new("p0", PARENT_MAC, PARENT_MTU);
        let ports = self
            .children
            .iter()
            .map(|c| {
                let mut p = PortConfig::new(c.spec.name.clone(), c.spec.mode, c.spec.mac);
                p.flags = c.spec.flags;
                p.mtu = c.spec.mtu;
                p.groups = c.groups.clone();
                p.sources = c.spec.sources.iter().copied().collect();
                p.promisc = c.spec.promisc;
                p.allmulti = c.spec.allmulti;
                if let Some(n) = c.spec.bcqueuelen {
                    p.bcqueuelen = n;
                }
                p
            })
            .collect();
        PortTable::build(parent, ports).unwrap_or_else(|e| panic!("model table: {e}"))
    }
}
