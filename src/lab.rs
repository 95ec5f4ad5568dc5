//! `umacvlan lab`: a self-contained macvlan lab in network namespaces, driven by the engine
//! in-process, with traffic the lab generates itself and the result checked against `decide()`.
//!
//! What gets built (every name starts with the prefix `umvlab-<pid>-`):
//!
//! ```text
//!  <prefix>wire            <prefix>host                  <prefix>c1 / c2 / c3
//!  wire0 192.0.2.254 ====== eth0 (the parent) --engine--  c1 192.0.2.1, c2 .2, c3 .3 (TAPs)
//!  (or br0 with wire0 as a hairpin port, --hairpin)
//! ```
//!
//! `wire0`/`eth0` are a veth pair: `wire0` is the outside world (the switch and a host on it),
//! `eth0` the parent NIC. The engine runs on a thread inside the host namespace, so its ring, its
//! send socket and its TAPs live there; the TAPs are then moved into the children's namespaces.
//! IPv6 is disabled in every lab namespace, so the only traffic is the lab's own.
//!
//! The probe: for every ordered pair of nodes one UDP datagram (ARP resolves underneath, from an
//! empty neighbour entry every time), and from every node one UDP broadcast to 192.0.2.255.
//! Each cell is compared with what the forwarding rules say ([`expect`]): a unicast works iff the
//! ARP request (broadcast) gets from sender to receiver, the ARP reply back, and the datagram
//! through.
//!
//! Everything the lab creates is removed when it ends, also on errors and on SIGINT/SIGTERM (RAII
//! guards); after a crash (SIGKILL), [`sweep_stale`] at the next start removes what was left.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::sched::CloneFlags;

use crate::control::daemon::Daemon;
use crate::control::plan::{ParentOptions, plan};
use crate::control::spec::PortSpec;
use crate::forward::{Ingress, Mode, ParentConfig, PortConfig, PortId, PortTable, decide};
use crate::net::{Netlink, Netns, OperState, in_netns};
use crate::wire::frame::FrameMeta;
use crate::wire::mac::MacAddr;

/// Every lab namespace is named `umvlab-<pid>-<role>`.
pub const NAME_PREFIX: &str = "umvlab-";
/// The parent, in the host namespace.
pub const PARENT: &str = "eth0";
/// The wire's end of the veth, in the wire namespace.
pub const WIRE_DEV: &str = "wire0";
/// The switch in the wire namespace with `--hairpin`.
pub const BRIDGE_DEV: &str = "br0";
/// TEST-NET-1 (RFC 5737): documentation addresses, used only inside the lab's namespaces.
pub const SUBNET_PREFIX: u8 = 24;
pub const WIRE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const BROADCAST_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 255);
/// The UDP port every node listens on.
pub const UDP_PORT: u16 = 47_001;
/// The modes when `--modes` is not given.
pub const DEFAULT_MODES: [Mode; 3] = [Mode::Bridge, Mode::Bridge, Mode::Vepa];
/// How long a receiver waits for one datagram (ARP resolution included).
pub const PROBE_WAIT: Duration = Duration::from_millis(300);
/// A cell that disagrees with the rules is tried once more, with this much patience, before it
/// is reported (a loaded machine can be slow; a wrong forwarding decision stays wrong).
pub const RETRY_WAIT: Duration = Duration::from_millis(1000);
/// How long the engine may take to see all three ports up.
const PORTS_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the engine thread publishes its table and checks for stop.
const ENGINE_TICK: Duration = Duration::from_millis(20);

/// The address of child `i` (1-based).
pub fn child_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, child_byte(i))
}

/// A child's number as an address byte (the lab has a handful of children).
fn child_byte(i: usize) -> u8 {
    u8::try_from(i).expect("a lab child's number fits in a byte")
}

/// The MAC of child `i` (1-based): `02:00:5e:00:00:0i`, locally administered.
pub fn child_mac(i: usize) -> MacAddr {
    MacAddr([0x02, 0x00, 0x5e, 0x00, 0x00, child_byte(i)])
}

/// The lab's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabOptions {
    /// The modes of c1, c2, c3.
    pub modes: [Mode; 3],
    /// A Linux bridge with hairpin on as the wire's switch.
    pub hairpin: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            modes: DEFAULT_MODES,
            hairpin: false,
        }
    }
}

/// Parses `--modes`: exactly three modes, comma-separated, passthru refused.
pub fn parse_modes(s: &str) -> Result<[Mode; 3], String> {
    let modes = s
        .split(',')
        .map(|m| m.trim().parse::<Mode>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let modes: [Mode; 3] = modes.try_into().map_err(|v: Vec<Mode>| {
        format!(
            "the lab has exactly three children: give three modes (e.g. bridge,vepa,private), not {}",
            v.len()
        )
    })?;
    if modes.contains(&Mode::Passthru) {
        return Err(
            "passthru cannot be used in the lab: a passthru port must be the only port on \
                    its parent, and the lab has three"
                .into(),
        );
    }
    Ok(modes)
}

// ---- the expectation ---------------------------------------------------------------------------

/// A node of the lab as the forwarding rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The far end of the parent's wire (frames from it enter at the parent).
    Wire,
    /// A port (frames from it enter at the port).
    Port(PortId),
}

/// Which step of a unicast exchange the rules say fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The sender's ARP request (a broadcast) never reaches the receiver.
    ArpRequest,
    /// The receiver's ARP reply (unicast) never reaches the sender.
    ArpReply,
    /// The datagram (unicast) never reaches the receiver.
    Datagram,
}

impl Leg {
    pub fn short(self) -> &'static str {
        match self {
            Leg::ArpRequest => "arp",
            Leg::ArpReply => "reply",
            Leg::Datagram => "data",
        }
    }

    fn explain(self, from: &str, to: &str) -> String {
        match self {
            Leg::ArpRequest => format!("{from}'s ARP request (broadcast) never reaches {to}"),
            Leg::ArpReply => format!("{to}'s ARP reply never gets back to {from}"),
            Leg::Datagram => format!("the datagram from {from} never reaches {to}"),
        }
    }
}

/// What the rules predict, indexed by node (`nodes` order given to [`expect`]); the diagonal is
/// meaningless.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// `unicast[s][d]`: `Ok` if a datagram from s reaches d, else the first failing leg.
    pub unicast: Vec<Vec<Result<(), Leg>>>,
    /// `broadcast[s][d]`: a broadcast from s reaches d.
    pub broadcast: Vec<Vec<bool>>,
}

/// A minimal frame: `dst`, `src`, `ethertype`, zero payload, 60 bytes.
fn frame_bytes(dst: MacAddr, src: MacAddr, ethertype: u16) -> [u8; 60] {
    let mut b = [0u8; 60];
    b[..6].copy_from_slice(&dst.0);
    b[6..12].copy_from_slice(&src.0);
    b[12..14].copy_from_slice(&ethertype.to_be_bytes());
    b
}

/// Whether a frame `src_mac > dst_mac` sent by `from` reaches `to`, by `decide()`. With
/// `hairpin`, a frame that goes to the wire comes back on the parent (the switch reflects it) and
/// is decided again as received there.
pub fn reaches(
    table: &PortTable,
    hairpin: bool,
    from: Endpoint,
    to: Endpoint,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    ethertype: u16,
) -> bool {
    let bytes = frame_bytes(dst_mac, src_mac, ethertype);
    let Ok(f) = FrameMeta::parse(&bytes, None, table.parent().max_frame) else {
        return false;
    };
    let received_on_parent = |q: PortId| {
        decide(table, Ingress::Parent, &f)
            .receivers(table)
            .contains(&q)
    };
    match (from, to) {
        (Endpoint::Wire, Endpoint::Wire) => false,
        (Endpoint::Wire, Endpoint::Port(q)) => received_on_parent(q),
        (Endpoint::Port(p), to) => {
            let v = decide(table, Ingress::Port(p), &f);
            match to {
                Endpoint::Wire => v.to_wire,
                Endpoint::Port(q) => {
                    v.receivers(table).contains(&q)
                        || (hairpin && v.to_wire && received_on_parent(q))
                }
            }
        }
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

/// The rules' prediction for every cell. `nodes` are the endpoints with their MACs.
pub fn expect(table: &PortTable, nodes: &[(Endpoint, MacAddr)], hairpin: bool) -> Expectation {
    let n = nodes.len();
    let mut unicast = vec![vec![Ok(()); n]; n];
    let mut broadcast = vec![vec![false; n]; n];
    for (s, &(from, smac)) in nodes.iter().enumerate() {
        for (d, &(to, dmac)) in nodes.iter().enumerate() {
            if s == d {
                continue;
            }
            let bcast = reaches(
                table,
                hairpin,
                from,
                to,
                smac,
                MacAddr::BROADCAST,
                ETH_P_ARP,
            );
            broadcast[s][d] = bcast;
            unicast[s][d] = if !bcast {
                Err(Leg::ArpRequest)
            } else if !reaches(table, hairpin, to, from, dmac, smac, ETH_P_ARP) {
                Err(Leg::ArpReply)
            } else if !reaches(table, hairpin, from, to, smac, dmac, ETH_P_IP) {
                Err(Leg::Datagram)
            } else {
                Ok(())
            };
        }
    }
    Expectation { unicast, broadcast }
}

/// The table the lab's engine should have once c1..c3 are up: built from the configuration
/// alone, independently of the engine.
pub fn replica_table(parent_mac: MacAddr, modes: &[Mode; 3]) -> anyhow::Result<PortTable> {
    let ports = modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut c = PortConfig::new(format!("c{}", i + 1), *m, child_mac(i + 1));
            c.up = true;
            c
        })
        .collect();
    Ok(PortTable::build(
        ParentConfig::new(PARENT, parent_mac, 1500),
        ports,
    )?)
}

// ---- the observed matrix -----------------------------------------------------------------------

/// One cell: what was seen and what the rules say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub seen: bool,
    /// `Ok` if the rules say it gets through, else why not.
    pub expected: Result<(), Leg>,
    /// The first attempt disagreed with the rules and this is the second one.
    pub retried: bool,
}

impl Cell {
    pub fn matches(&self) -> bool {
        self.seen == self.expected.is_ok()
    }

    fn text(&self, broadcast: bool) -> String {
        let word = |ok: bool, why: Option<Leg>| match (ok, why) {
            (true, _) => "yes".to_string(),
            (false, Some(l)) if !broadcast => format!("no ({})", l.short()),
            (false, _) => "no".to_string(),
        };
        let exp = word(self.expected.is_ok(), self.expected.err());
        if self.matches() {
            exp
        } else {
            format!("!! {} exp {exp}", if self.seen { "YES" } else { "NO" })
        }
    }
}

/// Who reached whom: rows send, columns receive; `None` on the diagonal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub names: Vec<String>,
    pub unicast: Vec<Vec<Option<Cell>>>,
    pub broadcast: Vec<Vec<Option<Cell>>>,
}

impl Matrix {
    /// Both tables, a legend, and a verdict line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Unicast UDP to port {UDP_PORT} (row = sender, column = receiver; ARP resolves first):"
        );
        self.render_one(&mut s, &self.unicast, false);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Broadcast UDP to {BROADCAST_ADDR}:{UDP_PORT} (row = sender, column = receiver):"
        );
        self.render_one(&mut s, &self.broadcast, true);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Each cell is what was received; it is also what decide() predicts, unless marked \
             \"!! SEEN exp PREDICTED\".\n\"no (arp)\": the sender's ARP request (a broadcast) does \
             not reach the receiver; \"(reply)\": the ARP reply does not come back; \"(data)\": \
             the datagram itself does not get through."
        );
        for (kind, cells) in [("unicast", &self.unicast), ("broadcast", &self.broadcast)] {
            for (r, row) in cells.iter().enumerate() {
                for (c, cell) in row.iter().enumerate() {
                    if let Some(cell) = cell.filter(|c| c.retried && c.matches()) {
                        let _ = writeln!(
                            s,
                            "note: {kind} {} -> {} matched only on the second attempt ({})",
                            self.names[r],
                            self.names[c],
                            if cell.seen { "slow" } else { "late stray" }
                        );
                    }
                }
            }
        }
        let bad = self.mismatches();
        if bad.is_empty() {
            let _ = writeln!(
                s,
                "All {} cells match the forwarding rules.",
                self.cells().count()
            );
        } else {
            let _ = writeln!(
                s,
                "MISMATCH: {} of {} cells differ from the forwarding rules:",
                bad.len(),
                self.cells().count()
            );
            for b in &bad {
                let _ = writeln!(s, "  {b}");
            }
        }
        s
    }

    fn render_one(&self, s: &mut String, cells: &[Vec<Option<Cell>>], broadcast: bool) {
        let texts: Vec<Vec<String>> = cells
            .iter()
            .map(|row| {
                row.iter()
                    .map(|c| c.map_or_else(|| "-".to_string(), |c| c.text(broadcast)))
                    .collect()
            })
            .collect();
        let width = texts
            .iter()
            .flatten()
            .map(String::len)
            .chain(self.names.iter().map(String::len))
            .max()
            .unwrap_or(4)
            + 2;
        let mut header = format!("  {:<9}", "from\\to");
        for n in &self.names {
            let _ = write!(header, "{n:<width$}");
        }
        let _ = writeln!(s, "{}", header.trim_end());
        for (r, row) in texts.iter().enumerate() {
            let mut line = format!("  {:<9}", self.names[r]);
            for t in row {
                let _ = write!(line, "{t:<width$}");
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
    }

    fn cells(&self) -> impl Iterator<Item = (&'static str, usize, usize, Cell)> + '_ {
        let one = |kind: &'static str, m: &'_ Vec<Vec<Option<Cell>>>| {
            m.iter()
                .enumerate()
                .flat_map(move |(r, row)| {
                    row.iter()
                        .enumerate()
                        .filter_map(move |(c, cell)| cell.map(|cell| (kind, r, c, cell)))
                })
                .collect::<Vec<_>>()
        };
        one("unicast", &self.unicast)
            .into_iter()
            .chain(one("broadcast", &self.broadcast))
    }

    /// One sentence per cell that differs from the rules.
    pub fn mismatches(&self) -> Vec<String> {
        self.cells()
            .filter(|(_, _, _, c)| !c.matches())
            .map(|(kind, r, c, cell)| {
                let (from, to) = (&self.names[r], &self.names[c]);
                match cell.expected {
                    Err(leg) => format!(
                        "{kind} {from} -> {to}: received, but the rules say no: {}",
                        if kind == "broadcast" {
                            format!("{from}'s broadcast never reaches {to}")
                        } else {
                            leg.explain(from, to)
                        }
                    ),
                    Ok(()) => format!(
                        "{kind} {from} -> {to}: NOT received, but the rules say it gets through"
                    ),
                }
            })
            .collect()
    }

    pub fn all_match(&self) -> bool {
        self.mismatches().is_empty()
    }
}

// ---- namespaces --------------------------------------------------------------------------------

/// Removes `umvlab-<pid>-*` namespaces whose process is gone (a lab that crashed or was killed).
/// Never touches anything else. Returns the names removed.
pub fn sweep_stale() -> Vec<String> {
    crate::net::netns::sweep_orphans(NAME_PREFIX)
}

/// The names this lab created; removes them (newest first) when dropped.
#[derive(Debug, Default)]
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn add(&mut self, name: String) -> anyhow::Result<Netns> {
        let ns = Netns::add(&name).with_context(|| format!("creating namespace {name}"))?;
        self.names.push(name);
        crate::net::disable_ipv6(&ns).context("disabling IPv6")?;
        Ok(ns)
    }

    fn remove_all(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some(n) = self.names.pop() {
            if let Err(e) = Netns::delete(&n) {
                errors.push(format!("removing namespace {n}: {e}"));
            }
        }
        errors
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for e in self.remove_all() {
            eprintln!("umacvlan lab: {e}");
        }
    }
}

// ---- the engine, on its own thread in the host namespace ---------------------------------------

/// The engine running on a thread that entered the host namespace. Dropping it stops it.
#[derive(Debug)]
struct EngineThread {
    stop: Option<Sender<()>>,
    table: Arc<Mutex<Arc<PortTable>>>,
    /// The engine's counters as text, refreshed every tick, and final after it stops.
    counters: Arc<Mutex<String>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl EngineThread {
    fn spawn(host: &Netns, specs: Vec<(String, PortSpec)>) -> anyhow::Result<EngineThread> {
        let host = host.try_clone()?;
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("umvlab-engine".into())
            .spawn(move || -> anyhow::Result<()> {
                let started = (|| -> anyhow::Result<Daemon> {
                    nix::sched::setns(&host, CloneFlags::CLONE_NEWNET)
                        .context("entering the lab's host namespace")?;
                    let plan = plan(PARENT, ParentOptions::default(), &specs)?;
                    Daemon::start(plan, crate::control::daemon::EngineOptions::default())
                })();
                let mut engine = match started {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                let current = |e: &Daemon| e.table().expect("the lab's engine has its parent");
                let table = Arc::new(Mutex::new(current(&engine)));
                let counters = Arc::new(Mutex::new(engine.counters_text()));
                let _ = ready_tx.send(Ok((Arc::clone(&table), Arc::clone(&counters))));
                let result = loop {
                    if let Err(e) = engine.run_until(&crossbeam_channel::after(ENGINE_TICK), None) {
                        break Err(e);
                    }
                    *table.lock().unwrap_or_else(|p| p.into_inner()) = current(&engine);
                    *counters.lock().unwrap_or_else(|p| p.into_inner()) = engine.counters_text();
                    if stop_rx.try_recv() != Err(TryRecvError::Empty) {
                        break Ok(());
                    }
                };
                let stopped = engine.shutdown();
                if let Ok(text) = &stopped {
                    text.clone_into(&mut counters.lock().unwrap_or_else(|p| p.into_inner()));
                }
                result.and(stopped.map(drop))
            })
            .context("spawning the engine thread")?;
        match ready_rx.recv() {
            Ok(Ok((table, counters))) => Ok(EngineThread {
                stop: Some(stop_tx),
                table,
                counters,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e.context("starting the engine"))
            }
            Err(_) => Err(match handle.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => anyhow::anyhow!("the engine thread ended before starting"),
                Err(_) => anyhow::anyhow!("the engine thread panicked while starting"),
            }),
        }
    }

    fn table(&self) -> Arc<PortTable> {
        Arc::clone(&self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn counters_text(&self) -> String {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the engine and waits for it.
    fn join(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("umacvlan lab: engine: {}", crate::errors::chain(&e));
        }
    }
}

// ---- the lab -----------------------------------------------------------------------------------

/// One node: the wire or a child, with its UDP socket and a netlink socket in its namespace.
#[derive(Debug)]
struct Node {
    name: String,
    ns_name: String,
    endpoint: Endpoint,
    /// The device that carries the address (wire0, br0 or `c<i>`).
    dev: String,
    ifindex: u32,
    addr: Ipv4Addr,
    mode: Option<Mode>,
    nl: Netlink,
    sock: UdpSocket,
}

/// A running lab. Dropping it stops the engine and removes every namespace it created.
#[derive(Debug)]
pub struct Lab {
    // Drop order is declaration order: the engine first, then sockets, then the namespaces.
    engine: Option<EngineThread>,
    nodes: Vec<Node>,
    opts: LabOptions,
    prefix: String,
    parent_mac: MacAddr,
    namespaces: Namespaces,
}

/// Fails with "interrupted" if a stop signal arrived.
fn check_stop<T>(stop: &Receiver<T>) -> anyhow::Result<()> {
    match stop.try_recv() {
        Err(TryRecvError::Empty) => Ok(()),
        _ => bail!("interrupted: stopping and removing the lab"),
    }
}

fn udp_socket(ns: &Netns) -> anyhow::Result<UdpSocket> {
    let sock = in_netns(ns, || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_PORT))
    })?
    .context("binding the lab's UDP socket")?;
    sock.set_broadcast(true)?;
    Ok(sock)
}

impl Lab {
    /// Builds the lab and starts the engine; returns when the engine has all three ports up.
    /// On any error (or a stop signal) everything created so far is removed again.
    pub fn build<T>(opts: &LabOptions, stop: &Receiver<T>) -> anyhow::Result<Lab> {
        let prefix = format!("{NAME_PREFIX}{}-", std::process::id());
        let mut namespaces = Namespaces::default();
        let wire_ns = namespaces.add(format!("{prefix}wire"))?;
        let host_ns = namespaces.add(format!("{prefix}host"))?;
        let mut child_ns = Vec::new();
        for i in 1..=3 {
            child_ns.push(namespaces.add(format!("{prefix}c{i}"))?);
        }
        check_stop(stop)?;

        // The wire: eth0 (host) <-> wire0 (wire), both up; with --hairpin, wire0 is a hairpin
        // port of br0 and br0 carries the wire's address.
        let mut host_nl = Netlink::open_in(&host_ns)?;
        host_nl
            .add_veth(PARENT, WIRE_DEV, Some(&wire_ns))
            .context("creating the wire")?;
        let parent = host_nl
            .link_by_name(PARENT)?
            .context("the parent vanished")?;
        host_nl.set_up(parent.index, true)?;
        let parent_mac = parent.mac.context("the parent has no MAC")?;
        let mut wire_nl = Netlink::open_in(&wire_ns)?;
        let lo = wire_nl.link_by_name("lo")?.context("no lo")?;
        wire_nl.set_up(lo.index, true)?;
        let wire0 = wire_nl
            .link_by_name(WIRE_DEV)?
            .context("the wire's veth end vanished")?;
        let wire_dev = if opts.hairpin {
            wire_nl.add_bridge(BRIDGE_DEV)?;
            let br = wire_nl
                .link_by_name(BRIDGE_DEV)?
                .context("the bridge vanished")?;
            wire_nl.set_master(wire0.index, br.index)?;
            wire_nl.set_bridge_port_hairpin(wire0.index, true)?;
            wire_nl.set_up(br.index, true)?;
            br
        } else {
            wire0.clone()
        };
        wire_nl.add_address(wire_dev.index, WIRE_ADDR, SUBNET_PREFIX)?;
        wire_nl.set_up(wire0.index, true)?;
        let wire_sock = udp_socket(&wire_ns)?;
        check_stop(stop)?;

        // The engine, in-process, on a thread in the host namespace.
        let specs = opts
            .modes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let i = i + 1;
                let text = format!("name=c{i},mode={m},netns={prefix}c{i},mac={}", child_mac(i));
                let spec: PortSpec = text.parse().with_context(|| format!("port {text}"))?;
                Ok((text, spec))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let engine = EngineThread::spawn(&host_ns, specs)?;

        let mut nodes = vec![Node {
            name: "wire".into(),
            ns_name: format!("{prefix}wire"),
            endpoint: Endpoint::Wire,
            dev: wire_dev.name.clone(),
            ifindex: wire_dev.index,
            addr: WIRE_ADDR,
            mode: None,
            nl: wire_nl,
            sock: wire_sock,
        }];
        // The children bring their ports up and address them, inside their namespaces.
        for (i, ns) in child_ns.iter().enumerate() {
            let name = format!("c{}", i + 1);
            let mut nl = Netlink::open_in(ns)?;
            let lo = nl.link_by_name("lo")?.context("no lo")?;
            nl.set_up(lo.index, true)?;
            let port = nl
                .link_by_name(&name)?
                .with_context(|| format!("port {name} is not in its namespace"))?;
            nl.add_address(port.index, child_addr(i + 1), SUBNET_PREFIX)?;
            nl.set_up(port.index, true)?;
            nodes.push(Node {
                sock: udp_socket(ns)?,
                ns_name: format!("{prefix}{name}"),
                endpoint: Endpoint::Port(PortId::nth(i)),
                dev: name.clone(),
                ifindex: port.index,
                addr: child_addr(i + 1),
                mode: Some(opts.modes[i]),
                nl,
                name,
            });
        }
        let mut lab = Lab {
            engine: Some(engine),
            nodes,
            opts: opts.clone(),
            prefix,
            parent_mac,
            namespaces,
        };
        lab.wait_ports_up(stop)?;
        Ok(lab)
    }

    fn engine(&self) -> &EngineThread {
        self.engine
            .as_ref()
            .expect("the engine runs until shutdown")
    }

    /// Waits until the engine has every port up in its table and every lab device that carries
    /// traffic is operationally up. The latter matters: the kernel activates a device's queue
    /// only when linkwatch has run after carrier-on (up to a second later for a bridge), and
    /// until then it silently drops what the device sends.
    fn wait_ports_up<T>(&mut self, stop: &Receiver<T>) -> anyhow::Result<()> {
        let start = Instant::now();
        let deadline = start + PORTS_UP_TIMEOUT;
        loop {
            let table = self.engine().table();
            let mut down: Vec<String> = table
                .ports()
                .iter()
                .filter(|p| !p.is_up())
                .map(|p| format!("port {} (engine)", p.name()))
                .collect();
            for n in &mut self.nodes {
                let mut devs = vec![n.dev.clone()];
                if n.endpoint == Endpoint::Wire && n.dev != WIRE_DEV {
                    devs.push(WIRE_DEV.to_string());
                }
                // A TAP never reports an RFC 2863 state (UNKNOWN): there, carrier is the signal.
                let ok = |l: &crate::net::LinkInfo| {
                    l.flags.up
                        && l.flags.lower_up
                        && (l.operstate == OperState::Up
                            || (n.endpoint != Endpoint::Wire && l.operstate == OperState::Unknown))
                };
                for dev in devs {
                    let link = n.nl.link_by_name(&dev)?;
                    let state = link.as_ref().map(|l| l.operstate);
                    if !link.as_ref().is_some_and(ok) {
                        down.push(format!(
                            "{dev} in {} ({})",
                            n.ns_name,
                            state.map_or("missing".into(), |s| s.to_string())
                        ));
                    }
                }
            }
            if down.is_empty() {
                tracing::debug!("lab ready after {:?}", start.elapsed());
                return Ok(());
            }
            tracing::debug!("lab not ready yet: {}", down.join(", "));
            check_stop(stop)?;
            if Instant::now() > deadline {
                bail!("not up after {PORTS_UP_TIMEOUT:?}: {}", down.join(", "));
            }
            std::thread::sleep(ENGINE_TICK);
        }
    }

    /// What was built, as a small table.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let p = &self.prefix;
        let _ = writeln!(
            s,
            "umacvlan lab: namespaces {p}{{wire,host,c1,c2,c3}}, engine in-process on {PARENT} \
             ({}) in {p}host",
            self.parent_mac
        );
        let wire_how = if self.opts.hairpin {
            format!(
                "bridge {BRIDGE_DEV}, port {WIRE_DEV} with hairpin on (reflects frames back to the parent)"
            )
        } else {
            format!("{WIRE_DEV}, the veth peer of {PARENT} (no switch: nothing comes back)")
        };
        let _ = writeln!(
            s,
            "  {:<5} {:<15} {:<8} {:<18} {:<20} device",
            "node", "address", "mode", "MAC", "namespace"
        );
        for n in &self.nodes {
            let mac = self.node_mac(n).map_or("?".into(), |m| m.to_string());
            let mode = n.mode.map_or("-", Mode::name);
            let dev = match n.endpoint {
                Endpoint::Wire => wire_how.clone(),
                Endpoint::Port(_) => format!("{}, a TAP the engine owns", n.dev),
            };
            let _ = writeln!(
                s,
                "  {:<5} {:<15} {:<8} {:<18} {:<20} {dev}",
                n.name,
                format!("{}/{SUBNET_PREFIX}", n.addr),
                mode,
                mac,
                n.ns_name,
            );
        }
        s
    }

    fn node_mac(&self, n: &Node) -> Option<MacAddr> {
        match n.endpoint {
            Endpoint::Port(PortId(i)) => Some(child_mac(i as usize + 1)),
            Endpoint::Wire => None,
        }
        .or_else(|| {
            let mut nl = Netlink::open_in(&Netns::open(&n.ns_name).ok()?).ok()?;
            nl.link_by_index(n.ifindex).ok()??.mac
        })
    }

    /// The rules' prediction for this lab, from a replica table (not the engine's).
    pub fn expectation(&self) -> anyhow::Result<Expectation> {
        let table = replica_table(self.parent_mac, &self.opts.modes)?;
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let mac = self
                    .node_mac(n)
                    .with_context(|| format!("reading the MAC of {}", n.name))?;
                Ok((n.endpoint, mac))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(expect(&table, &nodes, self.opts.hairpin))
    }

    /// Sends the probes and compares every cell with the rules.
    pub fn probe<T>(&mut self, stop: &Receiver<T>) -> anyhow::Result<Matrix> {
        let exp = self.expectation()?;
        let n = self.nodes.len();
        let mut unicast = vec![vec![None; n]; n];
        let mut broadcast = vec![vec![None; n]; n];
        let mut nonce = u64::from(std::process::id()) << 32;
        for (s, row) in unicast.iter_mut().enumerate() {
            for d in (0..n).filter(|d| *d != s) {
                check_stop(stop)?;
                let expected = exp.unicast[s][d];
                let mut cell = Cell {
                    seen: false,
                    expected,
                    retried: false,
                };
                for (attempt, wait) in [PROBE_WAIT, RETRY_WAIT].into_iter().enumerate() {
                    nonce += 1;
                    cell.seen = self.unicast(s, d, nonce, wait)?;
                    cell.retried = attempt > 0;
                    if cell.matches() {
                        break;
                    }
                }
                row[d] = Some(cell);
            }
        }
        for (s, row) in broadcast.iter_mut().enumerate() {
            check_stop(stop)?;
            for (attempt, wait) in [PROBE_WAIT, RETRY_WAIT].into_iter().enumerate() {
                nonce += 1;
                let seen = self.broadcast(s, nonce, wait)?;
                let all_match = (0..n)
                    .filter(|d| *d != s)
                    .all(|d| seen[d] == exp.broadcast[s][d]);
                for d in (0..n).filter(|d| *d != s) {
                    row[d] = Some(Cell {
                        seen: seen[d],
                        expected: if exp.broadcast[s][d] {
                            Ok(())
                        } else {
                            Err(Leg::ArpRequest)
                        },
                        retried: attempt > 0,
                    });
                }
                if all_match {
                    break;
                }
            }
        }
        Ok(Matrix {
            names: self.nodes.iter().map(|n| n.name.clone()).collect(),
            unicast,
            broadcast,
        })
    }

    /// One datagram s -> d, after forgetting both sides' ARP entries for each other.
    fn unicast(&mut self, s: usize, d: usize, nonce: u64, wait: Duration) -> anyhow::Result<bool> {
        let (sa, da) = (self.nodes[s].addr, self.nodes[d].addr);
        let (si, di) = (self.nodes[s].ifindex, self.nodes[d].ifindex);
        self.nodes[s].nl.del_neighbour(si, da)?;
        self.nodes[d].nl.del_neighbour(di, sa)?;
        let msg = payload(nonce);
        self.nodes[s]
            .sock
            .send_to(&msg, SocketAddrV4::new(da, UDP_PORT))
            .with_context(|| format!("sending from {} to {da}", self.nodes[s].name))?;
        wait_for(&self.nodes[d].sock, &msg, Instant::now() + wait)
    }

    /// One broadcast from s; who got it.
    fn broadcast(&mut self, s: usize, nonce: u64, wait: Duration) -> anyhow::Result<Vec<bool>> {
        let msg = payload(nonce);
        self.nodes[s]
            .sock
            .send_to(&msg, SocketAddrV4::new(BROADCAST_ADDR, UDP_PORT))
            .with_context(|| format!("broadcasting from {}", self.nodes[s].name))?;
        std::thread::sleep(wait);
        let now = Instant::now();
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i == s {
                    Ok(false)
                } else {
                    wait_for(&n.sock, &msg, now)
                }
            })
            .collect()
    }

    /// The engine's counters so far, as text.
    pub fn counters(&self) -> String {
        self.engine().counters_text()
    }

    /// Commands to paste into another shell while the lab stays up (`--keep`).
    pub fn explore_commands(&self) -> String {
        let p = &self.prefix;
        let wire = if self.opts.hairpin {
            BRIDGE_DEV
        } else {
            WIRE_DEV
        };
        let lines = [
            (
                format!("ip netns exec {p}c1 ping -c 3 {}", child_addr(2)),
                "c1 -> c2",
            ),
            (
                format!("ip netns exec {p}c1 ping -c 3 {WIRE_ADDR}"),
                "c1 -> the wire",
            ),
            (
                format!("ip netns exec {p}wire tcpdump -eni {WIRE_DEV}"),
                "what crosses the wire",
            ),
            (
                format!("ip netns exec {p}c2 tcpdump -eni c2"),
                "what the engine gives c2",
            ),
            (format!("ip -n {p}c1 -d link show c1"), "a port: a TAP"),
            (
                format!("ip -n {p}host link show {PARENT}"),
                "the parent (PROMISC: the engine's ring)",
            ),
            (format!("ip -n {p}c1 neigh"), "what c1 resolved with ARP"),
            (
                format!("ip -n {p}wire addr show {wire}"),
                "the wire's address",
            ),
            (
                format!(
                    "ip netns exec {p}c2 iperf3 -s -1 & ip netns exec {p}c1 iperf3 -c {}",
                    child_addr(2)
                ),
                "throughput c1 -> c2",
            ),
        ];
        let width = lines.iter().map(|(c, _)| c.len()).max().unwrap_or(0) + 2;
        let mut s = String::from("The lab stays up; explore it from another shell (as root):\n");
        for (cmd, what) in lines {
            let _ = writeln!(s, "  {cmd:<width$}# {what}");
        }
        let _ = writeln!(
            s,
            "Press Ctrl-C (or send SIGTERM) to stop the engine and remove the lab."
        );
        s
    }

    /// Stops the engine, removes every namespace, and returns the engine's final counters as
    /// text.
    pub fn shutdown(mut self) -> anyhow::Result<String> {
        let mut engine = self.engine.take().expect("the engine runs until shutdown");
        let stopped = engine.join();
        let counters = engine.counters_text();
        drop(engine);
        self.nodes.clear();
        let errors = self.namespaces.remove_all();
        stopped.context("the engine failed")?;
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(counters)
    }
}

fn payload(nonce: u64) -> Vec<u8> {
    format!("umacvlan lab probe {nonce:016x}").into_bytes()
}

/// Reads `sock` until `msg` arrives (true) or `deadline` passes (false); other datagrams (late
/// answers to earlier probes) are dropped. With a deadline in the past it only drains what is
/// already queued.
fn wait_for(sock: &UdpSocket, msg: &[u8], deadline: Instant) -> anyhow::Result<bool> {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == msg => return Ok(true),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0xfe]);
    const PARENT_MAC: MacAddr = MacAddr([0x02, 0xaa, 0, 0, 0, 0x01]);

    fn exp(modes: [Mode; 3], hairpin: bool) -> Expectation {
        let t = replica_table(PARENT_MAC, &modes).unwrap();
        let mut nodes = vec![(Endpoint::Wire, WIRE_MAC)];
        nodes.extend((0..3).map(|i| (Endpoint::Port(PortId::nth(i)), child_mac(i + 1))));
        expect(&t, &nodes, hairpin)
    }

    /// A sender-by-receiver matrix as short cells, "-" on the diagonal.
    fn grid<T>(rows: &[Vec<T>], cell: impl Fn(&T) -> &'static str) -> Vec<Vec<&'static str>> {
        rows.iter()
            .enumerate()
            .map(|(s, row)| {
                row.iter()
                    .enumerate()
                    .map(|(d, c)| if s == d { "-" } else { cell(c) })
                    .collect()
            })
            .collect()
    }

    /// Rows and columns: wire, c1, c2, c3. "y" = reaches; else the failing leg's short name.
    fn unicast_grid(e: &Expectation) -> Vec<Vec<&'static str>> {
        grid(&e.unicast, |c| match c {
            Ok(()) => "y",
            Err(l) => l.short(),
        })
    }

    fn bcast_grid(e: &Expectation) -> Vec<Vec<&'static str>> {
        grid(&e.broadcast, |b| if *b { "y" } else { "n" })
    }

    #[test]
    fn default_lab_bridge_siblings_talk_vepa_only_to_the_wire() {
        let e = exp(DEFAULT_MODES, false);
        assert_eq!(
            unicast_grid(&e),
            [
                ["-", "y", "y", "y"],
                ["y", "-", "y", "arp"],
                ["y", "y", "-", "arp"],
                ["y", "arp", "arp", "-"],
            ]
        );
        assert_eq!(
            bcast_grid(&e),
            [
                ["-", "y", "y", "y"],
                ["y", "-", "y", "n"],
                ["y", "y", "-", "n"],
                ["y", "n", "n", "-"],
            ]
        );
    }

    #[test]
    fn bridge_vepa_private_without_a_switch_only_reach_the_wire() {
        let e = exp([Mode::Bridge, Mode::Vepa, Mode::Private], false);
        for s in 1..4 {
            for d in 1..4 {
                if s != d {
                    assert_eq!(e.unicast[s][d], Err(Leg::ArpRequest), "{s}->{d}");
                }
            }
            assert_eq!(e.unicast[0][s], Ok(()));
            assert_eq!(e.unicast[s][0], Ok(()));
        }
    }

    #[test]
    fn hairpin_joins_vepa_siblings_but_private_broadcasts_come_back_only_to_the_sender() {
        let e = exp([Mode::Vepa, Mode::Vepa, Mode::Private], true);
        assert_eq!(
            unicast_grid(&e),
            [
                ["-", "y", "y", "y"],
                ["y", "-", "y", "arp"],
                ["y", "y", "-", "arp"],
                ["y", "arp", "arp", "-"],
            ]
        );
        // Unicast itself is not isolated behind a hairpin switch (docs/design.md#who-gets-what):
        // only ARP fails.
        let t = replica_table(PARENT_MAC, &[Mode::Vepa, Mode::Vepa, Mode::Private]).unwrap();
        let (c1, c3) = (Endpoint::Port(PortId(0)), Endpoint::Port(PortId(2)));
        assert!(reaches(
            &t,
            true,
            c3,
            c1,
            child_mac(3),
            child_mac(1),
            ETH_P_IP
        ));
        assert!(!reaches(
            &t,
            false,
            c3,
            c1,
            child_mac(3),
            child_mac(1),
            ETH_P_IP
        ));
    }

    #[test]
    fn hairpin_reflects_a_bridge_ports_broadcast_to_vepa_siblings() {
        let e = exp(DEFAULT_MODES, true);
        assert!(e.broadcast[1][3], "c1 (bridge) -> c3 (vepa) via the switch");
        assert!(e.broadcast[3][1], "c3 (vepa) -> c1 (bridge) via the switch");
        assert_eq!(e.unicast[1][3], Ok(()));
        assert_eq!(e.unicast[3][1], Ok(()));
    }

    #[test]
    fn modes_are_three_and_never_passthru() {
        assert_eq!(parse_modes("bridge,bridge,vepa").unwrap(), DEFAULT_MODES);
        assert_eq!(
            parse_modes("private, source ,vepa").unwrap(),
            [Mode::Private, Mode::Source, Mode::Vepa]
        );
        assert!(parse_modes("bridge,vepa").unwrap_err().contains("three"));
        assert!(
            parse_modes("bridge,vepa,private,bridge")
                .unwrap_err()
                .contains("not 4")
        );
        assert!(
            parse_modes("passthru,vepa,vepa")
                .unwrap_err()
                .contains("only port")
        );
        assert!(
            parse_modes("bridge,vepa,nope")
                .unwrap_err()
                .contains("nope")
        );
    }

    fn lab_pid_of(name: &str) -> Option<u32> {
        crate::net::netns::owner_pid(name, NAME_PREFIX)
    }

    #[test]
    fn lab_names_carry_a_pid() {
        assert_eq!(lab_pid_of("umvlab-1234-wire"), Some(1234));
        assert_eq!(lab_pid_of("umvlab-1234-c1"), Some(1234));
        assert_eq!(lab_pid_of("umvlab-x-c1"), None);
        assert_eq!(lab_pid_of("umvlab-1234-"), None);
        assert_eq!(lab_pid_of("umv-1234-net-0"), None);
        assert_eq!(lab_pid_of("other"), None);
    }

    #[test]
    fn matrix_marks_mismatches() {
        let cell = |seen, expected| {
            Some(Cell {
                seen,
                expected,
                retried: false,
            })
        };
        let m = Matrix {
            names: vec!["wire".into(), "c1".into()],
            unicast: vec![
                vec![None, cell(true, Ok(()))],
                vec![cell(true, Err(Leg::ArpRequest)), None],
            ],
            broadcast: vec![
                vec![None, cell(true, Ok(()))],
                vec![cell(false, Ok(())), None],
            ],
        };
        let text = m.render();
        assert!(text.contains("!! YES exp no (arp)"), "{text}");
        assert!(text.contains("MISMATCH: 2 of 4 cells"), "{text}");
        let bad = m.mismatches();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].starts_with("unicast c1 -> wire: received"),
            "{bad:?}"
        );
        assert!(
            bad[1].starts_with("broadcast c1 -> wire: NOT received"),
            "{bad:?}"
        );
        assert!(!m.all_match());
    }
}
