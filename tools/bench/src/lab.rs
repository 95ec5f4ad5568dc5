//! One lab per arm: fresh namespaces `umvb-<pid>-<arm>-{wire,host,c1,c2}`, a veth `wire0`
//! (wire) <-> `eth0` (host, the parent), and two children `c1`, `c2` in bridge mode, each in its
//! own namespace. Only 192.0.2.0/24 (TEST-NET-1) exists inside; IPv6 is off.
//!
//! Everything a lab creates is owned by [`Lab`] and removed when it is dropped; processes it
//! starts get `PR_SET_PDEATHSIG` so they die with the benchmark even after a SIGKILL, and the next
//! run sweeps `umvb-<deadpid>-*` names ([`sweep_stale`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use umacvlan::net::{MacvlanSpec, Netlink, Netns, disable_ipv6};
use umacvlan::wire::mac::MacAddr;

pub const PREFIX: &str = "umvb-";
pub const WIRE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const C1_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const C2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const C1_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
pub const C2_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x02]);
const MACVLAN_MODE_BRIDGE: u32 = 4;
/// The generator's sink in the wire namespace: a veth pair, both ends up, nothing receives the
/// frames at `SINK_PEER` (foreign MAC, unknown ethertype: dropped on arrival).
pub const SINK: &str = "sink0";
pub const SINK_PEER: &str = "sink1";
/// The observing processes of the observed arms, as [`Proc::what`] names them.
const CAPTURE: &str = "umacvlan capture";
const TCPDUMP: &str = "tcpdump";

/// What forwards between the parent and the children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The kernel's macvlan (bridge mode).
    Kernel,
    /// The same, with `tcpdump -i c1 -w /dev/null` (full length) running in c1 throughout: what
    /// a capture costs the kernel's macvlan, beside what one costs umacvlan.
    KernelObserved,
    /// `umacvlan run` (bridge mode), with the engine's default receive ring (or UMACVLAN_RING).
    Umacvlan,
    /// `umacvlan run --ring v2`, `v3`, `auto`: the ring kinds side by side.
    UmacvlanV2,
    UmacvlanV3,
    UmacvlanAuto,
    /// The same engine as `Umacvlan`, observed for the whole measurement: `--metrics-listen`
    /// scraped every second by the benchmark, and `umacvlan capture parent -w /dev/null`
    /// recording every frame.
    UmacvlanObserved,
    /// `umacvlan run --worker-priority fifo` (falls back to nice when refused; the lab records
    /// what applied): the contended case with the opt-in priority.
    UmacvlanFifo,
    /// The minimal ring→TAP relay (`crate::relay`), c1 only: the RTT floor.
    Relay,
    /// Open vSwitch, userspace (netdev) datapath, NORMAL switching; children on veth pairs.
    Ovs,
    /// `vde_switch`: children and the wire on its TAPs (no veth parent: see [`Lab::vde`]).
    Vde,
}

impl Arm {
    /// What `--all` runs.
    pub const ALL: [Arm; 8] = [
        Arm::Kernel,
        Arm::KernelObserved,
        Arm::Umacvlan,
        Arm::UmacvlanObserved,
        Arm::UmacvlanFifo,
        Arm::Relay,
        Arm::Ovs,
        Arm::Vde,
    ];
    /// Every arm `--arms` takes, in table order.
    pub const KNOWN: [Arm; 11] = [
        Arm::Kernel,
        Arm::KernelObserved,
        Arm::Umacvlan,
        Arm::UmacvlanObserved,
        Arm::UmacvlanFifo,
        Arm::Relay,
        Arm::UmacvlanV2,
        Arm::UmacvlanV3,
        Arm::UmacvlanAuto,
        Arm::Ovs,
        Arm::Vde,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arm::Kernel => "kernel",
            Arm::KernelObserved => "kernel-observed",
            Arm::Umacvlan => "umacvlan",
            Arm::UmacvlanV2 => "umacvlan-v2",
            Arm::UmacvlanV3 => "umacvlan-v3",
            Arm::UmacvlanAuto => "umacvlan-auto",
            Arm::UmacvlanObserved => "umacvlan-observed",
            Arm::UmacvlanFifo => "umacvlan-fifo",
            Arm::Relay => "relay",
            Arm::Ovs => "ovs",
            Arm::Vde => "vde",
        }
    }

    pub fn parse(s: &str) -> Result<Arm> {
        Arm::KNOWN
            .into_iter()
            .find(|a| a.name() == s)
            .with_context(|| {
                let names: Vec<&str> = Arm::KNOWN.iter().map(|a| a.name()).collect();
                format!("unknown arm {s:?} ({})", names.join(", "))
            })
    }

    /// Whether this arm runs the engine.
    pub fn is_umacvlan(self) -> bool {
        self.ring().is_some()
    }

    /// Whether this arm is the kernel's macvlan (observed or not).
    pub fn is_kernel(self) -> bool {
        matches!(self, Arm::Kernel | Arm::KernelObserved)
    }

    /// The engine arms' `--ring` (`""`: the engine's default).
    fn ring(self) -> Option<&'static str> {
        match self {
            Arm::Umacvlan | Arm::UmacvlanObserved | Arm::UmacvlanFifo => Some(""),
            Arm::UmacvlanV2 => Some("v2"),
            Arm::UmacvlanV3 => Some("v3"),
            Arm::UmacvlanAuto => Some("auto"),
            Arm::Kernel | Arm::KernelObserved | Arm::Relay | Arm::Ovs | Arm::Vde => None,
        }
    }

    /// `None` when the arm can run here, else why not.
    pub fn missing(self, umacvlan: &Path) -> Option<String> {
        match self {
            Arm::Kernel | Arm::Relay => None,
            Arm::KernelObserved => which("tcpdump")
                .is_none()
                .then(|| "not installed (apt-get install tcpdump)".to_string()),
            Arm::Umacvlan
            | Arm::UmacvlanObserved
            | Arm::UmacvlanFifo
            | Arm::UmacvlanV2
            | Arm::UmacvlanV3
            | Arm::UmacvlanAuto => (!umacvlan.exists()).then(|| {
                format!(
                    "no umacvlan binary at {} (build it: cargo build --release --bin umacvlan, \
                     or pass --umacvlan PATH)",
                    umacvlan.display()
                )
            }),
            Arm::Ovs => ["ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool"]
                .into_iter()
                .find(|b| which(b).is_none())
                .map(|b| {
                    format!("not installed ({b} missing; apt-get install openvswitch-switch)")
                }),
            Arm::Vde => ["vde_switch"]
                .into_iter()
                .find(|b| which(b).is_none())
                .map(|b| format!("not installed ({b} missing; apt-get install vde2)")),
        }
    }
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/sbin".into(),
            "/usr/lib/openvswitch-switch".into(),
        ])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Remove `umvb-<pid>-*` namespaces whose process is gone. Returns the names removed.
pub fn sweep_stale() -> Vec<String> {
    umacvlan::net::netns::sweep_orphans(PREFIX)
}

/// Every `umvb-*` namespace that exists now (for the smoke test and the final check).
pub fn existing(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// A process the lab started: SIGTERM, then SIGKILL after 2 s, on drop.
#[derive(Debug)]
struct Proc {
    what: String,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let pid = nix::unistd::Pid::from_raw(
            i32::try_from(self.child.id()).expect("a pid fits in pid_t"),
        );
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if let Some(l) = &self.log {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// A command that runs inside namespace `ns` (`ip netns exec`) and dies with us.
pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    // SAFETY: `child_setup` runs between fork and exec and calls only async-signal-safe
    // functions (prctl, sigemptyset, sigprocmask) on its own stack memory.
    unsafe {
        c.pre_exec(child_setup);
    }
    c
}

/// In the child, before exec: die with the benchmark (even when it is SIGKILLed), and unblock
/// the signals the benchmark blocks (a thread of ours waits for them) so that Ctrl-C reaches the
/// child too.
fn child_setup() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sigset_t is plain data; all-zero is a valid (then emptied) set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is a valid, initialised set; the old mask is not requested.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    Ok(())
}

/// One arm's namespaces, devices and processes.
#[derive(Debug)]
pub struct Lab {
    pub arm: Arm,
    pub prefix: String,
    /// Processes (engine, switch daemons), stopped first, in reverse order.
    procs: Vec<Proc>,
    /// The namespaces (wire, host, c1, c2 and any extra), by name.
    names: Vec<String>,
    pub wire: Netns,
    pub host: Netns,
    pub c1: Netns,
    pub c2: Netns,
    pub wire_mac: MacAddr,
    /// A directory for the arm's runtime files (OVS database, vde sockets), removed on drop.
    rundir: Option<PathBuf>,
    /// The engine's stdout (counters) captured at stop, for umacvlan.
    pub engine_report: Option<String>,
    /// umacvlan-observed, kernel-observed: what the capture (tcpdump) said when it was stopped.
    pub capture_report: Option<String>,
    /// The observed arms' `-s` (None: their default, everything).
    capture_snaplen: Option<u32>,
    /// Children beyond c1 and c2 (kernel and umacvlan arms): `x3`, `x4`, ... in bridge mode, up,
    /// in the host namespace; they carry no traffic, they only fill the port table.
    pub extra_ports: usize,
    /// umacvlan: from spawning the engine until every port existed.
    pub startup: Option<Duration>,
    /// umacvlan-observed: the scraper (the capture is one of `procs`).
    observer: Option<Observer>,
    /// The relay arm's relay thread.
    relay: Option<crate::relay::Relay>,
}

/// An engine's memory, from /proc: resident total, anonymous, and the part that is ring memory
/// (the mappings of its packet sockets), in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub ring_kib: u64,
}

fn add_ns(names: &mut Vec<String>, name: String) -> Result<Netns> {
    let ns = Netns::add(&name).with_context(|| format!("creating namespace {name}"))?;
    names.push(name);
    disable_ipv6(&ns).context("disabling IPv6")?;
    let mut nl = nl_in(&ns)?;
    nl.set_up(1, true).context("bringing lo up")?;
    Ok(ns)
}

fn nl_in(ns: &Netns) -> Result<Netlink> {
    Ok(Netlink::open_in(ns)?)
}

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32> {
    Ok(nl
        .link_by_name(name)?
        .with_context(|| format!("no device {name}"))?
        .index)
}

/// Bring `dev` up in `ns` with `addr`/24.
fn configure(ns: &Netns, dev: &str, addr: Ipv4Addr) -> Result<()> {
    let mut nl = nl_in(ns)?;
    let i = index_of(&mut nl, dev)?;
    nl.set_up(i, true)?;
    nl.add_address(i, addr, 24)?;
    Ok(())
}

/// Wait until `dev` exists in `ns`, or fail with `why()` once `deadline` passes.
fn wait_for_link(
    ns: &Netns,
    dev: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut nl = nl_in(ns)?;
    loop {
        if nl.link_by_name(dev)?.is_some() {
            return Ok(());
        }
        alive()?;
        if Instant::now() > deadline {
            bail!("{dev} did not appear within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The full path of an installed program (`ip netns exec` searches only PATH).
fn bin(name: &str) -> Result<String> {
    Ok(which(name)
        .with_context(|| format!("{name} not found"))?
        .to_string_lossy()
        .into_owned())
}

fn run_ok(mut c: Command) -> Result<String> {
    let out = c
        .output()
        .with_context(|| format!("run {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The observers of the `umacvlan-observed` arm's engine: a 1 s scrape of /metrics (a thread of
/// the benchmark, in the host namespace) and a capture of every frame (a process, in the lab's
/// `procs`).
#[derive(Debug)]
struct Observer {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicU64>,
    scraper: Option<std::thread::JoinHandle<()>>,
}

/// Where the observed engine serves /metrics, inside its own host namespace.
const METRICS_ADDR: &str = "127.0.0.1:9578";

/// One GET of /metrics; Ok when the answer is a 200 with a body.
fn scrape() -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(METRICS_ADDR)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") || !answer.contains("umacvlan_port_receive_packets") {
        bail!("unexpected answer: {}", answer.lines().next().unwrap_or(""));
    }
    Ok(())
}

impl Observer {
    /// Scrapes every second from a thread inside `host` until dropped.
    fn start(host: &Netns) -> Result<Observer> {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let ns = host.try_clone()?;
        let (s, n) = (Arc::clone(&stop), Arc::clone(&scrapes));
        let scraper = std::thread::Builder::new()
            .name("bench-scrape".into())
            .spawn(move || {
                if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    eprintln!("umacvlan-bench: the scraper cannot enter the host namespace: {e}");
                    return;
                }
                while !s.load(Ordering::SeqCst) {
                    match scrape() {
                        Ok(()) => n.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            eprintln!("umacvlan-bench: scraping /metrics: {e:#}");
                            0
                        }
                    };
                    // A second, in slices so that teardown does not wait for it.
                    for _ in 0..20 {
                        if s.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })?;
        Ok(Observer {
            stop,
            scrapes,
            scraper: Some(scraper),
        })
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.scraper.take() {
            let _ = h.join();
        }
    }
}

impl Lab {
    /// Build the lab for `arm`. On error, whatever was created is removed (the partial `Lab`
    /// is dropped).
    pub fn build(
        arm: Arm,
        umacvlan: &Path,
        extra_ports: usize,
        capture_snaplen: Option<u32>,
    ) -> Result<Lab> {
        let prefix = format!("{PREFIX}{}-{}", std::process::id(), arm.name());
        // Namespaces first, each recorded in `guard` before anything can fail, so that a failed
        // build removes them.
        let mut guard = Names(Vec::new());
        let mk = |g: &mut Names, role: &str| add_ns(&mut g.0, format!("{prefix}-{role}"));
        let wire = mk(&mut guard, "wire")?;
        let host = mk(&mut guard, "host")?;
        let c1 = mk(&mut guard, "c1")?;
        let c2 = mk(&mut guard, "c2")?;
        let names = std::mem::take(&mut guard.0);
        let mut lab = Lab {
            arm,
            prefix,
            procs: Vec::new(),
            names,
            wire,
            host,
            c1,
            c2,
            wire_mac: MacAddr([0; 6]),
            rundir: None,
            engine_report: None,
            capture_report: None,
            extra_ports,
            capture_snaplen,
            startup: None,
            observer: None,
            relay: None,
        };
        if arm != Arm::Vde {
            lab.wire_up()?;
        }
        match arm {
            Arm::Kernel | Arm::KernelObserved => lab.kernel()?,
            Arm::Umacvlan
            | Arm::UmacvlanObserved
            | Arm::UmacvlanFifo
            | Arm::UmacvlanV2
            | Arm::UmacvlanV3
            | Arm::UmacvlanAuto => lab.umacvlan(umacvlan)?,
            Arm::Relay => lab.relay()?,
            Arm::Ovs => lab.ovs()?,
            Arm::Vde => lab.vde()?,
        }
        configure(&lab.c1, "c1", C1_ADDR)?;
        // The relay serves c1 only.
        if arm != Arm::Relay {
            configure(&lab.c2, "c2", C2_ADDR)?;
        }
        if arm == Arm::KernelObserved {
            lab.tcpdump()?;
        }
        Ok(lab)
    }

    pub fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// veth eth0 (host, up, no address) <-> wire0 (wire, 192.0.2.254/24).
    fn wire_up(&mut self) -> Result<()> {
        let mut nl = nl_in(&self.host)?;
        nl.add_veth("eth0", "wire0", Some(&self.wire))?;
        let eth0 = index_of(&mut nl, "eth0")?;
        nl.set_up(eth0, true)?;
        configure(&self.wire, "wire0", WIRE_ADDR)?;
        let mut nlw = nl_in(&self.wire)?;
        self.wire_mac = nlw
            .link_by_name("wire0")?
            .and_then(|l| l.mac)
            .context("wire0 has no MAC")?;
        nlw.add_veth(SINK, SINK_PEER, None)?;
        for dev in [SINK, SINK_PEER] {
            let i = index_of(&mut nlw, dev)?;
            nlw.set_up(i, true)?;
        }
        Ok(())
    }

    /// The index of `dev` in the wire namespace.
    pub fn wire_ifindex(&self, dev: &str) -> Result<u32> {
        index_of(&mut nl_in(&self.wire)?, dev)
    }

    /// The engine's pid (umacvlan arms): `ip netns exec` execs it, so it is the child's.
    pub fn engine_pid(&self) -> Option<i32> {
        self.procs
            .iter()
            .find(|p| p.what == "umacvlan run")
            .and_then(|p| i32::try_from(p.child.id()).ok())
    }

    /// The engine's control socket.
    fn control_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.sock", self.prefix))
    }

    /// What scheduling the engine's workers run with, as `umacvlan stats -j` says
    /// (`worker_priority`, e.g. `nice:-10 (fifo:1 refused: EPERM)`).
    pub fn engine_priority(&self, bin: &Path) -> Result<String> {
        let mut c = ns_command(&self.ns_name("host"), &bin.to_string_lossy());
        c.args(["stats", "-j", "--control"])
            .arg(self.control_path());
        let v: serde_json::Value = serde_json::from_str(&run_ok(c)?)?;
        fn find(v: &serde_json::Value) -> Option<String> {
            match v {
                serde_json::Value::Object(m) => m
                    .get("worker_priority")
                    .and_then(|p| p.as_str().map(String::from))
                    .or_else(|| m.values().find_map(find)),
                serde_json::Value::Array(a) => a.iter().find_map(find),
                _ => None,
            }
        }
        find(&v).context("stats -j has no worker_priority")
    }

    /// The relay arm: a TAP `c1` made here (in the host namespace, where the relay's fd stays),
    /// moved into c1's namespace with c1's MAC, and the relay thread on eth0.
    fn relay(&mut self) -> Result<()> {
        let tap = umacvlan::net::in_netns(&self.host, || umacvlan::sys::Tap::create("c1"))??;
        let mut nl = nl_in(&self.host)?;
        let i = index_of(&mut nl, "c1")?;
        nl.set_mac(i, C1_MAC)?;
        nl.set_netns(i, &self.c1)?;
        let eth0 = index_of(&mut nl, "eth0")?;
        self.relay = Some(crate::relay::Relay::start(&self.host, eth0, tap, C1_MAC)?);
        Ok(())
    }

    fn kernel(&mut self) -> Result<()> {
        let mut nl = nl_in(&self.host)?;
        let eth0 = index_of(&mut nl, "eth0")?;
        for (name, mac, ns) in [("c1", C1_MAC, &self.c1), ("c2", C2_MAC, &self.c2)] {
            let mut spec = MacvlanSpec::new(name, eth0, MACVLAN_MODE_BRIDGE);
            spec.mac = Some(mac);
            spec.netns = Some(ns);
            nl.add_macvlan(&spec)?;
        }
        for name in self.extra_names() {
            nl.add_macvlan(&MacvlanSpec::new(&name, eth0, MACVLAN_MODE_BRIDGE))?;
        }
        self.extras_up()
    }

    /// The extra children's names: x3, x4, ...
    fn extra_names(&self) -> Vec<String> {
        (0..self.extra_ports)
            .map(|i| format!("x{}", i + 3))
            .collect()
    }

    /// Brings every extra child up (both arms create them down).
    fn extras_up(&self) -> Result<()> {
        let mut nl = nl_in(&self.host)?;
        for name in self.extra_names() {
            let i = index_of(&mut nl, &name)?;
            nl.set_up(i, true)?;
        }
        Ok(())
    }

    /// The engine's memory now (umacvlan arm).
    pub fn engine_memory(&self) -> Result<Memory> {
        let p = self
            .procs
            .iter()
            .find(|p| p.what == "umacvlan run")
            .context("no engine in this lab")?;
        let dir = format!("/proc/{}", p.child.id());
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let field = |k: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        // Each mapping's header line names its file; the packet rings' are "socket:[inode]".
        let smaps = std::fs::read_to_string(format!("{dir}/smaps"))?;
        let mut ring_kib = 0;
        let mut in_ring = false;
        for line in smaps.lines() {
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["Rss:", kib, "kB"] if in_ring => ring_kib += kib.parse::<u64>().unwrap_or(0),
                [range, ..] if range.contains('-') && !range.ends_with(':') => {
                    in_ring = line.contains("socket:");
                }
                _ => {}
            }
        }
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            ring_kib,
        })
    }

    fn umacvlan(&mut self, bin: &Path) -> Result<()> {
        if let Some(why) = Arm::Umacvlan.missing(bin) {
            bail!("{why}");
        }
        let log = std::env::temp_dir().join(format!("{}-engine.log", self.prefix));
        let host = self.ns_name("host");
        let control = self.control_path();
        let mut c = ns_command(&host, &bin.to_string_lossy());
        c.args(["run", "--parent", "eth0"])
            .arg("--control")
            .arg(&control);
        if let Some(ring) = self.arm.ring().filter(|r| !r.is_empty()) {
            c.args(["--ring", ring]);
        }
        if self.arm == Arm::UmacvlanFifo {
            c.args(["--worker-priority", "fifo"]);
        }
        let observed = self.arm == Arm::UmacvlanObserved;
        if observed {
            c.args(["--metrics-listen", METRICS_ADDR]);
        }
        for (name, mac) in [("c1", C1_MAC), ("c2", C2_MAC)] {
            c.args([
                "--port".to_string(),
                format!(
                    "name={name},mode=bridge,netns={},mac={mac}",
                    self.ns_name(name)
                ),
            ]);
        }
        for name in self.extra_names() {
            c.args(["--port".to_string(), format!("name={name},mode=bridge")]);
        }
        let started = Instant::now();
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        self.procs.push(Proc {
            what: "umacvlan run".into(),
            child,
            log: Some(log),
        });
        let extras = self.extra_names();
        let mut waits: Vec<(&str, &Netns)> = vec![("c1", &self.c1), ("c2", &self.c2)];
        // The engine creates ports in order: the last one existing means all do.
        waits.extend(extras.last().map(|l| (l.as_str(), &self.host)));
        for (name, ns) in waits {
            let p = self.procs.last_mut().expect("just pushed");
            wait_for_link(ns, name, Duration::from_secs(60), || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    bail!("umacvlan run exited ({st}): {}", p.log_text().trim());
                }
                Ok(())
            })?;
        }
        self.startup = Some(started.elapsed());
        self.extras_up()?;
        if observed {
            self.observe(bin, &control)?;
        }
        Ok(())
    }

    /// The observed arms' `-s` argument, if one was asked for.
    fn snaplen_args(&self) -> Vec<String> {
        self.capture_snaplen
            .map(|n| vec!["-s".to_string(), n.to_string()])
            .unwrap_or_default()
    }

    /// kernel-observed: tcpdump on c1 (every test's traffic passes c1), as a user runs it: normal
    /// priority, full length (or `--capture-snaplen`), to /dev/null. Waits until it says it is
    /// listening.
    fn tcpdump(&mut self) -> Result<()> {
        let mut c = ns_command(&self.ns_name("c1"), "tcpdump");
        c.args(["-i", "c1", "-n", "-w", "/dev/null"])
            .args(self.snaplen_args());
        let log = std::env::temp_dir().join(format!("{}-tcpdump.log", self.prefix));
        self.spawn_proc(TCPDUMP, c, &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.check_alive()?;
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("tcpdump did not start listening within 10 s: {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the observers of the umacvlan-observed arm and waits until the capture is
    /// following and the first scrape has answered.
    fn observe(&mut self, bin: &Path, control: &Path) -> Result<()> {
        let mut c = ns_command(&self.ns_name("host"), &bin.to_string_lossy());
        c.args(["capture", "parent", "-w", "/dev/null", "--control"])
            .arg(control)
            .args(self.snaplen_args());
        let log = std::env::temp_dir().join(format!("{}-capture.log", self.prefix));
        self.spawn_proc(CAPTURE, c, &log)?;
        let mut probe = ns_command(&self.ns_name("host"), &bin.to_string_lossy());
        probe
            .args(["stats", "-j", "--control"])
            .arg(control)
            .stdout(Stdio::null());
        run_ok(probe).context("the observed engine's control socket")?;
        self.observer = Some(Observer::start(&self.host)?);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .observer
            .as_ref()
            .is_some_and(|o| o.scrapes.load(Ordering::SeqCst) == 0)
        {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("no successful scrape of http://{METRICS_ADDR}/metrics within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Scrapes of /metrics that succeeded so far (umacvlan-observed only).
    pub fn scrapes(&self) -> Option<u64> {
        self.observer
            .as_ref()
            .map(|o| o.scrapes.load(Ordering::SeqCst))
    }

    /// ovsdb-server + ovs-vswitchd inside the host namespace, a `datapath_type=netdev` bridge
    /// with eth0 and one veth per child (the child end moved into the child's namespace).
    fn ovs(&mut self) -> Result<()> {
        if let Some(why) = Arm::Ovs.missing(Path::new("")) {
            bail!("{why}");
        }
        let dir = std::env::temp_dir().join(format!("{}-ovs", self.prefix));
        std::fs::create_dir_all(&dir)?;
        self.rundir = Some(dir.clone());
        let db = dir.join("conf.db");
        let sock = dir.join("db.sock");
        let schema = ["/usr/share/openvswitch/vswitch.ovsschema"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("vswitch.ovsschema not found")?;
        let mut c = Command::new(which("ovsdb-tool").context("ovsdb-tool")?);
        c.args(["create", &db.to_string_lossy(), schema]);
        run_ok(c)?;
        let host = self.ns_name("host");
        let env = |c: &mut Command| {
            c.env("OVS_RUNDIR", &dir)
                .env("OVS_LOGDIR", &dir)
                .env("OVS_DBDIR", &dir)
                .env("OVS_SYSCONFDIR", &dir);
        };
        let mut c = ns_command(&host, &bin("ovsdb-server")?);
        env(&mut c);
        c.arg(&db).args([
            &format!("--remote=punix:{}", sock.display()),
            &format!("--pidfile={}", dir.join("ovsdb-server.pid").display()),
            "--no-chdir",
            &format!("--unixctl={}", dir.join("ovsdb-server.ctl").display()),
            "-vconsole:off",
            &format!("--log-file={}", dir.join("ovsdb-server.log").display()),
        ]);
        self.spawn_proc("ovsdb-server", c, &dir.join("ovsdb-server.out"))?;
        self.wait_file(&sock, "ovsdb-server socket")?;
        let vsctl = |args: &[&str]| -> Result<String> {
            let mut c = ns_command(&host, &bin("ovs-vsctl")?);
            env(&mut c);
            c.arg(format!("--db=unix:{}", sock.display()))
                .arg("--timeout=10");
            c.args(args);
            run_ok(c)
        };
        vsctl(&["--no-wait", "init"])?;
        // Read once at start: with it, netdev-linux puts PACKET_VNET_HDR on its AF_PACKET
        // sockets, so partial checksums (veth) are completed and TSO frames carried; without
        // it, UDP and TCP from the veths arrive with unfinished checksums and are dropped.
        vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:userspace-tso-enable=true",
        ])?;
        let mut c = ns_command(&host, &bin("ovs-vswitchd")?);
        env(&mut c);
        c.args([
            format!("unix:{}", sock.display()),
            format!("--pidfile={}", dir.join("ovs-vswitchd.pid").display()),
            "--no-chdir".into(),
            format!("--unixctl={}", dir.join("ovs-vswitchd.ctl").display()),
            "-vconsole:off".into(),
            format!("--log-file={}", dir.join("ovs-vswitchd.log").display()),
        ]);
        self.spawn_proc("ovs-vswitchd", c, &dir.join("ovs-vswitchd.out"))?;
        // The child ends: veth pairs vc1/vc2 in host <-> c1/c2 in the children.
        let mut nl = nl_in(&self.host)?;
        for (name, mac, ns) in [("c1", C1_MAC, &self.c1), ("c2", C2_MAC, &self.c2)] {
            let port = format!("v{name}");
            nl.add_veth(&port, name, Some(ns))?;
            let i = index_of(&mut nl, &port)?;
            nl.set_up(i, true)?;
            let mut nlc = nl_in(ns)?;
            let ci = index_of(&mut nlc, name)?;
            nlc.set_mac(ci, mac)?;
        }
        vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ])?;
        for p in ["eth0", "vc1", "vc2"] {
            vsctl(&["add-port", "br0", p])?;
        }
        Ok(())
    }

    /// vde_switch in the host namespace with three TAPs: c1 and c2 moved into the children's
    /// namespaces, and wire0 moved into the wire namespace. vde has no way to attach an existing
    /// device properly (`vde_pcapplug` also captures what it injects, so the switch learns every
    /// child's MAC on the pcap port and unicast replies never reach the children), so in this arm
    /// the wire is a vde TAP instead of the veth <-> eth0 pair.
    fn vde(&mut self) -> Result<()> {
        if let Some(why) = Arm::Vde.missing(Path::new("")) {
            bail!("{why}");
        }
        let dir = std::env::temp_dir().join(format!("{}-vde", self.prefix));
        std::fs::create_dir_all(&dir)?;
        self.rundir = Some(dir.clone());
        let sock = dir.join("switch");
        let host = self.ns_name("host");
        let mut c = ns_command(&host, &bin("vde_switch")?);
        c.args([
            "-s",
            &sock.to_string_lossy(),
            "-t",
            "wire0",
            "-t",
            "c1",
            "-t",
            "c2",
        ]);
        c.stdin(Stdio::piped()); // vde_switch reads commands on stdin; keep it open
        self.spawn_proc("vde_switch", c, &dir.join("vde_switch.out"))?;
        let mut nl = nl_in(&self.host)?;
        {
            let p = self.procs.last_mut().expect("just pushed");
            wait_for_link(&self.host, "c2", Duration::from_secs(10), || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    bail!("vde_switch exited ({st}): {}", p.log_text().trim());
                }
                Ok(())
            })?;
        }
        for (name, mac, ns) in [("c1", C1_MAC, &self.c1), ("c2", C2_MAC, &self.c2)] {
            let i = index_of(&mut nl, name)?;
            nl.set_mac(i, mac)?;
            nl.set_netns(i, ns)?;
        }
        let i = index_of(&mut nl, "wire0")?;
        nl.set_netns(i, &self.wire)?;
        configure(&self.wire, "wire0", WIRE_ADDR)?;
        let mut nlw = nl_in(&self.wire)?;
        self.wire_mac = nlw
            .link_by_name("wire0")?
            .and_then(|l| l.mac)
            .context("wire0 has no MAC")?;
        Ok(())
    }

    fn spawn_proc(&mut self, what: &str, mut c: Command, log: &Path) -> Result<()> {
        let out = File::create(log)?;
        let child = c
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {what}"))?;
        self.procs.push(Proc {
            what: what.into(),
            child,
            log: Some(log.to_path_buf()),
        });
        Ok(())
    }

    fn wait_file(&mut self, path: &Path, what: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            if let Some(p) = self.procs.last_mut()
                && let Ok(Some(st)) = p.child.try_wait()
            {
                bail!("{} exited ({st}): {}", p.what, p.log_text().trim());
            }
            if Instant::now() > deadline {
                bail!("{what} did not appear at {}", path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the arm's processes are all still running (else which one died, and its log).
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.procs {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("{} exited ({st}): {}", p.what, p.log_text().trim());
            }
        }
        Ok(())
    }

    /// Stop the processes, keep the umacvlan engine's counters, remove the namespaces. Returns
    /// the errors met while removing.
    pub fn teardown(&mut self) -> Vec<String> {
        self.observer = None;
        self.relay = None;
        while let Some(mut p) = self.procs.pop() {
            p.stop();
            if p.what == CAPTURE || p.what == TCPDUMP {
                // Ended by SIGTERM, each reports what it wrote and lost (its last lines).
                self.capture_report = Some(p.log_text().trim().to_string());
            }
            if p.what == "umacvlan run"
                && let Some(out) = p.child.stdout.take()
            {
                let text: Vec<String> = BufReader::new(out).lines().map_while(|l| l.ok()).collect();
                self.engine_report = Some(text.join("\n"));
            }
        }
        let mut errors = Vec::new();
        while let Some(n) = self.names.pop() {
            if let Err(e) = Netns::delete(&n) {
                errors.push(format!("removing namespace {n}: {e}"));
            }
        }
        if let Some(d) = self.rundir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("umacvlan-bench: {e}");
        }
    }
}

/// Namespace names removed on drop (a failed build); emptied once a `Lab` owns them.
struct Names(Vec<String>);

impl Drop for Names {
    fn drop(&mut self) {
        for n in self.0.drain(..).rev() {
            let _ = Netns::delete(&n);
        }
    }
}
