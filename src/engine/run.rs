//! `umacvlan run`: check the whole request, create the ports, forward, follow every port's state
//! in its namespace, and tear everything down.
//!
//! Order matters, and is the contract: [`plan`] validates every input and creates nothing, so bad
//! input leaves the machine untouched. [`Engine::start`] then opens the parent's ring and creates
//! the TAPs (non-persistent: a TAP vanishes with its fd, so a crashed engine leaves none behind).
//! Each TAP is created under a temporary name, given its MAC and MTU, and moved and renamed into
//! its namespace, admin-down like a fresh `ip link add ... type macvlan`.
//!
//! Port state follows the TAP the way the kernel's hash follows a child: only a TAP that is
//! admin-up in its namespace is in the table. One watcher thread per namespace listens to
//! RTNLGRP_LINK there (up/down, MAC, MTU, promisc, allmulti) and reads the exact link-layer
//! multicast list from `/proc/thread-self/net/dev_mcast` every [`MCAST_POLL`] (joins made with
//! `ip maddr` produce no netlink event). Every change rebuilds the table and hands it to the worker.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, select};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;

use super::counters::Counters;
use super::worker::{Command, Worker, WorkerHandle};
use crate::forward::{Mode, ParentConfig, PortConfig, PortId, PortTable, TableError};
use crate::mac::MacAddr;
use crate::net::mcast::{DevMcastEntry, parse_dev_mcast};
use crate::net::{LinkEvent, LinkInfo, LinkMonitor, Netlink, Netns, OperState, is_wireless};
use crate::spec::PortSpec;
use crate::sys::ring::{RingConfig, RxRing};
use crate::sys::tap::Tap;
use crate::sys::tx::TxSocket;

/// How often each namespace's multicast lists are re-read.
pub const MCAST_POLL: Duration = Duration::from_millis(100);
/// TAP transmit queue (frames waiting for the engine to read them): the kernel's 1000 drops
/// under bursts (perf-facts.md §3).
pub const TAP_TXQLEN: u32 = 10_000;
const ARPHRD_ETHER: u16 = 1;

/// Bad input: nothing was created. The CLI exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown parent {0:?}: no such network interface in this namespace")]
    UnknownParent(String),
    #[error("parent {0} is a loopback device; macvlan needs an Ethernet parent")]
    ParentLoopback(String),
    #[error(
        "parent {name} is not Ethernet (link type {link_type}); macvlan needs an Ethernet parent"
    )]
    ParentNotEthernet { name: String, link_type: u16 },
    #[error(
        "parent {0} is wireless: access points drop frames from MACs that did not associate, so macvlan children get nothing; use ipvlan (L2 shares the parent's MAC) or a 4-address (WDS) link"
    )]
    ParentWireless(String),
    #[error("port {port}: {source}")]
    Netns {
        port: String,
        #[source]
        source: crate::net::Error,
    },
    #[error("port {port}: an interface named {port} already exists in {place}")]
    NameInUse { port: String, place: String },
    #[error("{0}")]
    Spec(#[from] crate::spec::SpecError),
    #[error("{0}")]
    Table(#[from] TableError),
    #[error("no --port given: an engine needs at least one port")]
    NoPorts,
    #[error("{0}")]
    Netlink(#[from] crate::net::Error),
}

/// One port, checked and ready to create.
#[derive(Debug)]
pub struct PlannedPort {
    pub spec: PortSpec,
    /// As the table sees it; `up` is false until the TAP is brought up.
    pub config: PortConfig,
    pub netns: Option<Netns>,
}

/// A validated request.
#[derive(Debug)]
pub struct Plan {
    pub parent: LinkInfo,
    pub parent_config: ParentConfig,
    pub ports: Vec<PlannedPort>,
}

/// Whether the kernel's macvlan would see this parent filter unicast in hardware
/// (IFF_UNICAST_FLT, not visible from userspace): physical NICs and VLAN, bond and team devices
/// do; veth and bridge do not, and go promiscuous as soon as a port is up (§5).
fn has_unicast_filter(kind: Option<&str>) -> bool {
    matches!(kind, None | Some("vlan" | "bond" | "team"))
}

/// Parent-wide settings of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentOptions {
    /// `bclim` (IFLA_MACVLAN_BC_CUTOFF), port-wide in the kernel.
    pub bc_cutoff: i32,
}

impl Default for ParentOptions {
    fn default() -> Self {
        ParentOptions {
            bc_cutoff: crate::forward::DEFAULT_BC_CUTOFF,
        }
    }
}

/// Checks everything and creates nothing. `specs` pairs each port's text (for messages) with
/// its parsed form.
pub fn plan(
    parent: &str,
    opts: ParentOptions,
    specs: &[(String, PortSpec)],
) -> Result<Plan, PlanError> {
    if specs.is_empty() {
        return Err(PlanError::NoPorts);
    }
    let mut nl = Netlink::open()?;
    let link = nl
        .link_by_name(parent)?
        .ok_or_else(|| PlanError::UnknownParent(parent.to_string()))?;
    if link.flags.loopback {
        return Err(PlanError::ParentLoopback(link.name));
    }
    let mac = link.mac.filter(|_| link.link_type == ARPHRD_ETHER);
    let Some(mac) = mac else {
        return Err(PlanError::ParentNotEthernet {
            name: link.name,
            link_type: link.link_type,
        });
    };
    if is_wireless(&link.name) {
        return Err(PlanError::ParentWireless(link.name));
    }
    let mut parent_config = ParentConfig::new(link.name.clone(), mac, link.mtu);
    parent_config.unicast_filter = has_unicast_filter(link.kind.as_deref());
    parent_config.bc_cutoff = opts.bc_cutoff;

    let mut ports = Vec::with_capacity(specs.len());
    for (text, spec) in specs {
        spec.config_only(text)?;
        let netns = spec
            .netns
            .as_deref()
            .map(Netns::open)
            .transpose()
            .map_err(|source| PlanError::Netns {
                port: spec.name.clone(),
                source,
            })?;
        let taken = match &netns {
            Some(ns) => Netlink::open_in(ns)?.link_by_name(&spec.name)?,
            None => nl.link_by_name(&spec.name)?,
        };
        if taken.is_some() {
            let place = netns
                .as_ref()
                .map_or("this namespace".to_string(), |ns| format!("namespace {ns}"));
            return Err(PlanError::NameInUse {
                port: spec.name.clone(),
                place,
            });
        }
        let config = spec.to_config(parent);
        ports.push(PlannedPort {
            spec: spec.clone(),
            config,
            netns,
        });
    }
    // At start every port must be able to come up: the kernel checks MACs at open, we refuse a
    // request that could never work as a whole.
    let all_up = ports
        .iter()
        .map(|p| PortConfig {
            up: true,
            ..p.config.clone()
        })
        .collect();
    PortTable::build(parent_config.clone(), all_up)?;
    for p in &mut ports {
        p.config.up = false;
    }
    Ok(Plan {
        parent: link,
        parent_config,
        ports,
    })
}

/// A port's state as its TAP shows it in its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveState {
    pub up: bool,
    pub mac: MacAddr,
    pub mtu: u32,
    pub promisc: bool,
    pub allmulti: bool,
    pub groups: BTreeSet<MacAddr>,
}

/// What the watchers report to the control loop.
#[derive(Debug)]
enum Event {
    /// `None`: the TAP is gone from its namespace (deleted, or the namespace went away).
    Port(PortId, Option<LiveState>),
    Carrier(bool),
    ParentGone,
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    worker: WorkerHandle,
    counters: Arc<Counters>,
    parent_config: ParentConfig,
    /// The configured ports, with the live state last seen applied.
    configs: Vec<PortConfig>,
    live: Vec<Option<LiveState>>,
    events: Receiver<Event>,
    stop_watchers: Arc<AtomicBool>,
    watchers: Vec<JoinHandle<()>>,
    table: Arc<PortTable>,
}

impl Engine {
    /// Opens the parent, creates every port and starts forwarding. On error everything created
    /// so far is gone again (TAPs are non-persistent; the ring's promiscuity ends with its fd).
    pub fn start(plan: Plan) -> anyhow::Result<Engine> {
        let parent = &plan.parent;
        let ring = RxRing::open(parent.index, RingConfig::default())
            .with_context(|| format!("opening the receive ring on {}", parent.name))?;
        let wire = TxSocket::open(parent.index)
            .with_context(|| format!("opening the send socket on {}", parent.name))?;
        let mut nl = Netlink::open()?;
        let mut taps = Vec::with_capacity(plan.ports.len());
        for (i, p) in plan.ports.iter().enumerate() {
            let tap = create_port(&mut nl, i, p, plan.parent_config.mtu)
                .with_context(|| format!("creating port {}", p.spec.name))?;
            taps.push(tap);
        }
        let configs: Vec<PortConfig> = plan.ports.iter().map(|p| p.config.clone()).collect();
        let table = Arc::new(PortTable::build(
            plan.parent_config.clone(),
            configs.clone(),
        )?);
        let counters = Arc::new(Counters::new(configs.len()));
        let worker = Worker {
            ring,
            wire,
            taps,
            table: Arc::clone(&table),
            counters: Arc::clone(&counters),
        }
        .spawn()?;
        let (tx, events) = crossbeam_channel::unbounded();
        let stop_watchers = Arc::new(AtomicBool::new(false));
        let watchers = spawn_watchers(&plan, &tx, &stop_watchers)?;
        worker.send(Command::SetCarrier(parent.flags.lower_up));
        Ok(Engine {
            worker,
            counters,
            parent_config: plan.parent_config,
            live: vec![None; configs.len()],
            configs,
            events,
            stop_watchers,
            watchers,
            table,
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn table(&self) -> &Arc<PortTable> {
        &self.table
    }

    /// Follows port state until `stop` fires (or is closed), the parent disappears or the worker
    /// fails. Any channel stops it: `crossbeam_channel::after(d)` makes it run for `d`.
    pub fn run_until<T>(&mut self, stop: &Receiver<T>) -> anyhow::Result<()> {
        loop {
            select! {
                recv(stop) -> _ => return Ok(()),
                recv(self.events) -> ev => match ev {
                    Ok(Event::Port(id, state)) => {
                        self.live[id.index()] = state;
                        self.rebuild();
                    }
                    Ok(Event::Carrier(on)) => {
                        tracing::info!(parent = %self.parent_config.name, carrier = on, "parent carrier changed");
                        self.worker.send(Command::SetCarrier(on));
                    }
                    Ok(Event::ParentGone) => {
                        anyhow::bail!("parent {} disappeared", self.parent_config.name)
                    }
                    Err(_) => anyhow::bail!("every port watcher stopped"),
                },
                default(Duration::from_millis(200)) => {
                    if self.worker.is_finished() {
                        anyhow::bail!("the forwarding worker stopped");
                    }
                }
            }
        }
    }

    /// A new table from the configuration and the live state of every TAP, following the
    /// kernel's rules where a TAP cannot refuse a change: a port whose MAC is busy (another up
    /// port's or the parent's) or invalid stays out of the table, as `ip link set up` would have
    /// failed with EADDRINUSE/EADDRNOTAVAIL; an MTU above the parent's is clamped.
    fn rebuild(&mut self) {
        let mut ports: Vec<PortConfig> = self
            .configs
            .iter()
            .zip(&self.live)
            .map(|(c, live)| apply_live(c, live.as_ref(), self.parent_config.mtu))
            .collect();
        let table = loop {
            match PortTable::build(self.parent_config.clone(), ports.clone()) {
                Ok(t) => break t,
                Err(e) => {
                    let culprit = match &e {
                        TableError::DuplicateMac { b, .. } => b.clone(),
                        TableError::ParentMac { port, .. }
                        | TableError::InvalidMac { port, .. } => port.clone(),
                        _ => {
                            tracing::error!("keeping the previous table: {e}");
                            return;
                        }
                    };
                    tracing::warn!("{e}: port {culprit} is treated as down until this changes");
                    if let Some(p) = ports.iter_mut().find(|p| p.name == culprit) {
                        p.up = false;
                    }
                }
            }
        };
        let table = Arc::new(table);
        for (i, p) in table.ports().iter().enumerate() {
            let was = self.table.ports().get(i).map(|o| o.is_up());
            if was != Some(p.is_up()) {
                tracing::info!(port = p.name(), up = p.is_up(), mac = %p.mac(), "port state changed");
            }
        }
        self.table = Arc::clone(&table);
        self.worker.send(Command::SetTable(table));
    }

    /// Stops everything; the TAPs vanish with their fds and the parent's promiscuity with the
    /// ring. Returns the final counters.
    pub fn shutdown(self) -> anyhow::Result<Arc<Counters>> {
        self.stop_watchers.store(true, Ordering::Relaxed);
        let worker = self.worker.stop();
        for w in self.watchers {
            let _ = w.join();
        }
        worker.context("the forwarding worker failed")?;
        Ok(self.counters)
    }
}

fn apply_live(c: &PortConfig, live: Option<&LiveState>, parent_mtu: u32) -> PortConfig {
    let mut p = c.clone();
    let Some(l) = live else {
        p.up = false;
        return p;
    };
    p.up = l.up;
    if p.mode != Mode::Passthru {
        p.mac = l.mac;
    }
    p.mtu = Some(l.mtu.clamp(crate::forward::MIN_MTU, parent_mtu));
    p.promisc = l.promisc;
    p.allmulti = l.allmulti;
    p.groups = l.groups.clone();
    p
}

/// A temporary name for a TAP on its way to another namespace, unique on this machine.
fn temp_name(i: usize) -> String {
    format!("umv{}p{i}", std::process::id() % 100_000)
}

fn create_port(
    nl: &mut Netlink,
    i: usize,
    p: &PlannedPort,
    parent_mtu: u32,
) -> anyhow::Result<Tap> {
    let name = match p.netns {
        Some(_) => temp_name(i),
        None => p.spec.name.clone(),
    };
    let tap = Tap::create(&name)?;
    let link = nl
        .link_by_name(tap.name())?
        .with_context(|| format!("TAP {} vanished after creation", tap.name()))?;
    nl.set_mac(link.index, p.config.mac)?;
    nl.set_mtu(link.index, p.config.mtu.unwrap_or(parent_mtu))?;
    nl.set_txqlen(link.index, TAP_TXQLEN)?;
    if let Some(ns) = &p.netns {
        nl.set_netns(link.index, ns)?;
        let mut there = Netlink::open_in(ns)?;
        let moved = there
            .link_by_name(&name)?
            .with_context(|| format!("TAP {name} is not in {ns} after the move"))?;
        there.set_name(moved.index, &p.spec.name)?;
    }
    Ok(tap)
}

/// The ports (id and name) one watcher follows in its namespace, and that namespace's inode.
type NsGroup = (Netns, u64, Vec<(PortId, String)>);

/// One watcher per namespace that holds ports, and one for the parent's namespace.
fn spawn_watchers(
    plan: &Plan,
    tx: &Sender<Event>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    // Group ports by namespace (by inode), the engine's own namespace first, with the parent.
    let own = Netns::current()?;
    let mut groups: Vec<NsGroup> = vec![(own.try_clone()?, own.inode()?, Vec::new())];
    for (i, p) in plan.ports.iter().enumerate() {
        let ns = p.netns.as_ref().unwrap_or(&own);
        let inode = ns.inode()?;
        let entry = (PortId(i as u16), p.spec.name.clone());
        match groups.iter_mut().find(|g| g.1 == inode) {
            Some(g) => g.2.push(entry),
            None => groups.push((ns.try_clone()?, inode, vec![entry])),
        }
    }
    let mut handles = Vec::new();
    for (i, (ns, _, ports)) in groups.into_iter().enumerate() {
        let parent = (i == 0).then(|| (plan.parent.name.clone(), plan.parent.flags.lower_up));
        let (tx, stop) = (tx.clone(), Arc::clone(stop));
        let h = std::thread::Builder::new()
            .name(format!("umacvlan-watch-{i}"))
            .spawn(move || {
                let parent = parent.as_ref().map(|(n, c)| (n.as_str(), *c));
                if let Err(e) = watch(&ns, &ports, parent, &tx, &stop) {
                    tracing::error!("watching {ns} stopped: {e:#}");
                }
            })?;
        handles.push(h);
    }
    Ok(handles)
}

/// The watcher loop for one namespace; runs on its own thread, which it moves into `ns`.
/// `parent` is the parent's name and the carrier the worker was given, for the watcher that
/// follows the parent.
fn watch(
    ns: &Netns,
    ports: &[(PortId, String)],
    parent: Option<(&str, bool)>,
    tx: &Sender<Event>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
    let mut monitor = LinkMonitor::open_current()?;
    let mut nl = Netlink::open()?;
    let mut links: Vec<Option<LinkInfo>> = ports
        .iter()
        .map(|(_, n)| nl.link_by_name(n))
        .collect::<Result<_, _>>()?;
    let mut sent: Vec<Option<Option<LiveState>>> = vec![None; ports.len()];
    // What the worker was last told about the parent's carrier.
    let mut carrier = parent.is_some_and(|(_, on)| on);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(monitor.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(MCAST_POLL.as_millis() as i32).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, wait);
        let mut parent_seen = None;
        for ev in monitor.drain()? {
            match ev {
                LinkEvent::Changed(l) => {
                    if parent.is_some_and(|(p, _)| p == l.name) {
                        parent_seen = Some(Some(l.flags.lower_up));
                    }
                    if let Some(i) = ports.iter().position(|(_, n)| *n == l.name) {
                        links[i] = Some(l);
                    }
                }
                LinkEvent::Removed { name, .. } => {
                    if parent.is_some_and(|(p, _)| p == name) {
                        parent_seen = Some(None);
                    }
                    if let Some(i) = ports.iter().position(|(_, n)| *n == name) {
                        links[i] = None;
                    }
                }
                LinkEvent::Overrun => {
                    for (i, (_, n)) in ports.iter().enumerate() {
                        links[i] = nl.link_by_name(n)?;
                    }
                }
            }
        }
        if let Some((p, _)) = parent {
            // The first pass reads the parent: a change between the start and the monitor's
            // opening would otherwise go unseen.
            let now = match parent_seen {
                Some(s) => s,
                None if first => nl.link_by_name(p)?.map(|l| l.flags.lower_up),
                None => Some(carrier),
            };
            match now {
                None => {
                    let _ = tx.send(Event::ParentGone);
                    return Ok(());
                }
                Some(on) if on != carrier => {
                    carrier = on;
                    let _ = tx.send(Event::Carrier(on));
                }
                Some(_) => {}
            }
        }
        first = false;
        for l in links.iter().flatten() {
            if l.flags.up && l.flags.lower_up && l.operstate == OperState::Unknown {
                // Look like a macvlan child (`state UP`), which a TAP never does by itself.
                if let Err(e) = nl.set_operstate_up(l.index) {
                    tracing::debug!(port = %l.name, "setting operstate up failed: {e}");
                }
            }
        }
        let groups = read_groups()?;
        for (i, (id, name)) in ports.iter().enumerate() {
            let state = links[i].as_ref().and_then(|l| {
                Some(LiveState {
                    up: l.flags.up,
                    mac: l.mac?,
                    mtu: l.mtu,
                    promisc: l.flags.promisc,
                    allmulti: l.flags.allmulti,
                    groups: groups
                        .iter()
                        .filter(|e| e.name == *name)
                        .filter_map(DevMcastEntry::mac)
                        .collect(),
                })
            });
            if sent[i].as_ref() != Some(&state) {
                sent[i] = Some(state.clone());
                if tx.send(Event::Port(*id, state)).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Every device's link-layer multicast list in the calling thread's namespace.
fn read_groups() -> anyhow::Result<Vec<DevMcastEntry>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev_mcast")
        .context("reading /proc/thread-self/net/dev_mcast")?;
    parse_dev_mcast(&text).map_err(|e| anyhow::anyhow!("parsing dev_mcast: {e}"))
}
