//! The running engine: its parents and ports, changed while it forwards.
//!
//! Each parent has one or more workers (ring, TX socket, a queue of every TAP); every port belongs
//! to one parent. With several workers the parent's rings form a fanout group and every TAP has
//! one queue per worker, so a flow always meets the same worker (see [`EngineOptions::workers`]).
//! Adding, removing or changing a port builds a new table for its parent and swaps it into its
//! workers together with the new port sets ([`PortSet`]): the forwarding path never takes a lock,
//! and no other port loses or reorders a frame.
//!
//! Ports are TAPs created non-persistent (a crashed engine leaves none behind), under a temporary
//! name, given their MAC and MTU, then moved and renamed into their namespace, admin-down like a
//! fresh `ip link add ... type macvlan`. Their live state comes from the [`watch`](super::watch)
//! threads. Requests follow the kernel's control-plane rules
//! (docs/design.md#the-parent-and-the-control-plane).
//!
//! A VM's port is not a TAP of ours ([`PortDev`]): `attach` opens a packet socket on a netdev
//! someone else owns (brought up, never deleted; followed by the watchers, and re-bound when a
//! netdev of that name comes back), `stream` listens on a Unix socket (always in the table; a copy
//! for it without a peer is a `no_peer` drop). Both keep their guest MAC from the configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, select};

use super::plan::{
    ParentOptions, Plan, PlanError, PlannedPort, check_parent, check_port_place,
    default_route_interface, table_error_kind,
};
use super::watch::{Event, LiveState, Watchers};
use crate::control::Call;
use crate::control::config::{Config, diff};
use crate::control::proto::{
    ControlError, ErrorKind, FollowInterface, FollowRequest, LinkChange, LinkSpec, LinkStats,
    LinkView, MAX_SNAPLEN, MacaddrOp, ParentView, ReloadReport, Reply, Request, Response,
    StatsView,
};
use crate::control::service::Service;
use crate::control::spec::{HOST_MODE, PortKind, derived_mac};
use crate::engine::adaptive::Auto;
use crate::engine::admit::{Candidate, Refusal, address_busy, admit};
use crate::engine::counters::{ParentCounters, PortCounters, Sharded};
use crate::engine::dev::PortDev;
use crate::engine::observe::{Filter, ObserverCache, Observers};
use crate::engine::record::{self, Chunk, FrameRecord};
use crate::engine::stream::StreamPort;
use crate::engine::worker::{Command, PortHandle, PortSet, Worker, WorkerGroup};
use crate::forward::{LowerFilter, MIN_MTU, Mode, ParentConfig, PortConfig, PortTable};
use crate::net::{LinkInfo, Netlink, Netns};
use crate::sys::attach::PacketPort;
use crate::sys::membership::Memberships;
use crate::sys::ring::{RingConfig, RingVersion, RxRing};
use crate::sys::tap::Tap;
use crate::sys::tx::TxSocket;
use crate::wire::mac::MacAddr;

/// TAP transmit queue (frames waiting for the engine to read them): the kernel's 1000 drops
/// under bursts (docs/performance.md#tap-devices).
pub const TAP_TXQLEN: u32 = 10_000;

/// How the engine runs every parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// The geometry of every parent's receive ring (one ring per worker).
    pub ring: RingConfig,
    /// `--ring auto`: the geometry of a TPACKET_V2 ring opened beside `ring` (then a V3 ring)
    /// in one steered fanout group; the worker reads one or the other by load
    /// ([`crate::engine::adaptive`]). One worker per parent only.
    pub per_frame: Option<RingConfig>,
    /// Worker threads per parent (at least 1). More than one: the parent's rings form a
    /// `PACKET_FANOUT` HASH group and every TAP gets one queue per worker (`IFF_MULTI_QUEUE`);
    /// workers are pinned to distinct CPUs when the machine has more CPUs than workers.
    pub workers: usize,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            // `run`'s default with one worker: `--ring auto`.
            ring: RingConfig::DEFAULT,
            per_frame: Some(RingConfig::V2),
            workers: 1,
        }
    }
}

/// One parent and its workers.
#[derive(Debug)]
struct ParentRun {
    link: LinkInfo,
    config: ParentConfig,
    /// `None` while the parent is gone (deleted); its ports wait, down, for it to come back.
    worker: Option<WorkerGroup>,
    counters: Sharded<ParentCounters>,
    table: Arc<PortTable>,
    /// Port keys, aligned with `table`.
    keys: Vec<u64>,
    /// The parent's promiscuity and filters as `table`'s ports ask them (`None` while it is
    /// gone); kept in step by [`ParentRun::sync_lower`] at every table change.
    lower: Option<Memberships>,
}

impl ParentRun {
    /// Makes the parent's memberships what the table's UP ports ask of it, as the kernel's
    /// macvlan does to its lower (`LowerFilter`): with no port up, nothing.
    fn sync_lower(&mut self) {
        let Some(m) = &mut self.lower else {
            return;
        };
        if let Err(e) = m.apply(&LowerFilter::of(&self.table)) {
            let parent = &self.link.name;
            tracing::warn!(%parent, "setting the parent's promiscuity and filters failed: {e}");
        }
    }
}

/// One port.
#[derive(Debug)]
struct PortEntry {
    key: u64,
    parent: String,
    /// As configured; the live state is applied on top when tables are built.
    config: PortConfig,
    /// The namespace's name (`ip netns`) or path and an open handle; `None`: the engine's
    /// namespace.
    netns: Option<(String, Netns)>,
    /// What the port's workers read and write: one queue of its TAP per worker, or (attach,
    /// stream) one device that worker 0 reads and every worker writes.
    devs: Vec<Arc<PortDev>>,
    counters: Sharded<PortCounters>,
    /// The device's name in its namespace, when it differs from the port's.
    ifname: Option<String>,
    /// Who created the port (`LinkSpec::owner`).
    owner: Option<String>,
    live: Option<LiveState>,
    /// The MAC it is in the table with ([`admit`]); `None`: not forwarding.
    admitted: Option<MacAddr>,
    /// Why it is up and yet out of the table (the kernel would have refused the `ip link set
    /// up` or the address change).
    refused: Option<Refusal>,
    /// Its state-change log lines: a port flapping in its namespace cannot flood the log.
    log_gate: LogGate,
    kind: PortKind,
    path: Option<PathBuf>,
    trust_guest_mac: bool,
}

/// A port's log lines: a burst of [`LogGate::BURST`], then one per [`LogGate::EVERY`]. Changes in
/// between are held back: the next line (written as soon as the gate opens, see
/// [`LogGate::due`]) gives the state reached and how many changes were not logged.
#[derive(Debug)]
struct LogGate {
    tokens: u32,
    refilled: std::time::Instant,
    held: u64,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate {
            tokens: Self::BURST,
            refilled: std::time::Instant::now(),
            held: 0,
        }
    }
}

impl LogGate {
    const BURST: u32 = 3;
    const EVERY: Duration = Duration::from_secs(1);

    fn open(&mut self) -> bool {
        while self.tokens < Self::BURST && self.refilled.elapsed() >= Self::EVERY {
            self.tokens += 1;
            self.refilled += Self::EVERY;
        }
        if self.tokens == Self::BURST {
            self.refilled = std::time::Instant::now();
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// A change: `Some(changes held back before it)` when its line may be written now.
    fn pass(&mut self) -> Option<u64> {
        if self.open() {
            Some(std::mem::take(&mut self.held))
        } else {
            self.held += 1;
            None
        }
    }

    /// Changes were held back and the gate is open again: `Some(how many, less the one whose
    /// state the line shows)`.
    fn due(&mut self) -> Option<u64> {
        (self.held > 0 && self.open()).then(|| std::mem::take(&mut self.held) - 1)
    }
}

/// The engine.
#[derive(Debug)]
pub struct Daemon {
    nl: Netlink,
    own_ns: Netns,
    parents: BTreeMap<String, ParentRun>,
    ports: Vec<PortEntry>,
    next_key: u64,
    watchers: Watchers,
    events: Receiver<Event>,
    /// The configuration file and what was last applied from it (`run --config`).
    config: Option<(std::path::PathBuf, Config)>,
    /// Ring geometry and workers of every parent.
    opts: EngineOptions,
    /// Stop the whole engine when a parent disappears (default: its ports wait for it).
    pub exit_on_parent_loss: bool,
    /// Followers of real frames (`trace --follow`, `capture`), shared with every worker.
    observers: Arc<Observers>,
    /// systemd's notification socket and watchdog, when run by systemd (Type=notify).
    pub service: Option<Service>,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError::new(kind, message)
}

fn plan_err(e: PlanError) -> ControlError {
    err(e.kind(), e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    err(ErrorKind::Internal, e.to_string())
}

impl Daemon {
    /// An engine with no ports yet, in the calling thread's namespace; every parent runs as
    /// `opts` says.
    pub fn new(opts: EngineOptions) -> anyhow::Result<Daemon> {
        let (tx, events) = crossbeam_channel::unbounded();
        Ok(Daemon {
            nl: Netlink::open()?,
            own_ns: Netns::current()?,
            parents: BTreeMap::new(),
            ports: Vec::new(),
            next_key: 1,
            watchers: Watchers::new(tx),
            events,
            config: None,
            opts: EngineOptions {
                workers: opts.workers.max(1),
                ..opts
            },
            exit_on_parent_loss: false,
            observers: Arc::default(),
            service: None,
        })
    }

    /// An engine with the ports of a configuration file, which `reload` re-reads. The file must
    /// have passed [`Config::check_machine`].
    pub fn from_config(
        path: &std::path::Path,
        config: Config,
        opts: EngineOptions,
    ) -> anyhow::Result<Daemon> {
        let mut d = Daemon::new(opts)?;
        d.config = Some((
            path.to_path_buf(),
            Config {
                ports: Vec::new(),
                ..config.clone()
            },
        ));
        d.apply(config)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(d)
    }

    /// An engine with the ports of a checked `run` command line. On error everything created so
    /// far is gone again (TAPs are non-persistent; the parent's promiscuity ends with the
    /// membership sockets).
    pub fn start(plan: Plan, opts: EngineOptions) -> anyhow::Result<Daemon> {
        let mut d = Daemon::new(opts)?;
        let parent = plan.parent.name.clone();
        d.ensure_parent(plan.parent, plan.parent_config)?;
        for p in plan.ports {
            d.create(&parent, p, None)?;
        }
        Ok(d)
    }

    /// The receive ring kind every parent runs: `v2`, `v3` or `auto`.
    fn ring_kind(&self) -> &'static str {
        match (self.opts.per_frame, self.opts.ring.version) {
            (Some(_), _) => "auto",
            (None, RingVersion::V2) => "v2",
            (None, RingVersion::V3) => "v3",
        }
    }

    /// Starts the workers of a parent that has none yet.
    fn ensure_parent(&mut self, link: LinkInfo, config: ParentConfig) -> anyhow::Result<()> {
        if self.parents.contains_key(&link.name) {
            return Ok(());
        }
        let table = Arc::new(PortTable::build(config.clone(), Vec::new())?);
        let counters = Sharded::new(self.opts.workers);
        let sets = (0..self.opts.workers)
            .map(|_| PortSet {
                table: Arc::clone(&table),
                ports: Arc::from(Vec::new()),
            })
            .collect();
        let worker = self.spawn_workers(&link, sets, &counters)?;
        let lower = Memberships::open(link.index)
            .with_context(|| format!("opening the membership socket on {}", link.name))?;
        self.watchers.parent(&self.own_ns, &link)?;
        let name = link.name.clone();
        let run = ParentRun {
            link,
            config,
            worker: Some(worker),
            counters,
            table,
            keys: Vec::new(),
            lower: Some(lower),
        };
        self.parents.insert(name, run);
        Ok(())
    }

    /// Opens the parent's rings (a fanout group with several workers) and send sockets and
    /// starts worker `i` on `sets[i]`, pinned to CPU `i` when there are several and CPUs to
    /// spare.
    fn spawn_workers(
        &self,
        link: &LinkInfo,
        sets: Vec<PortSet>,
        counters: &Sharded<ParentCounters>,
    ) -> anyhow::Result<WorkerGroup> {
        let n = self.opts.workers;
        let context = || format!("opening the receive ring on {}", link.name);
        let (rings, mut autos) = match self.opts.per_frame {
            None => (
                RxRing::open_fanout(link.index, self.opts.ring, n),
                Vec::new(),
            ),
            Some(v2) => {
                anyhow::ensure!(n == 1, "--ring auto works with one worker per parent only");
                let pair = RxRing::open_steered(link.index, self.opts.ring, v2);
                let pair = pair.with_context(context)?;
                let name = format!("umv-steer-{}", link.name);
                let auto =
                    Auto::new(pair.1, name, std::time::Instant::now()).with_context(|| {
                        format!("starting the ring steering thread of {}", link.name)
                    })?;
                (Ok(vec![pair.0]), vec![auto])
            }
        };
        let rings = rings.with_context(context)?;
        // Pinned only when CPUs are left over for everything else (the senders, the receiving
        // stacks, softirqs): with a worker on every CPU, pinning kept the scheduler from moving
        // a worker off a busy CPU, and pings were lost under load (docs/design.md#architecture).
        let cores = match core_affinity::get_core_ids() {
            Some(cores) if n > 1 && cores.len() > n => cores,
            _ => Vec::new(),
        };
        let mut workers = Vec::with_capacity(n);
        for (i, (ring, set)) in rings.into_iter().zip(sets).enumerate() {
            let wire = TxSocket::open(link.index)
                .with_context(|| format!("opening the send socket on {}", link.name))?;
            let worker = Worker {
                ring,
                auto: autos.pop(),
                wire,
                set,
                counters: Arc::clone(counters.shard(i)),
                carrier: link.flags.lower_up,
                observers: Arc::clone(&self.observers),
                observer_cache: ObserverCache::default(),
            };
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            workers.push(worker.spawn(format!("umv-{}-{i}", link.name), core)?);
        }
        let describe = |r: &RingConfig| {
            let mib = f64::from(r.block_nr) * f64::from(r.block_size) / f64::from(1u32 << 20);
            let slots = match r.version {
                RingVersion::V2 => format!(
                    " ({} slots of {} bytes; larger frames queued on its socket, up to as much \
                     again)",
                    r.block_size / r.frame_size * r.block_nr,
                    r.frame_size
                ),
                RingVersion::V3 => String::new(),
            };
            format!(
                "{:?} ring of {} x {} bytes = {mib:.1} MiB{slots}",
                r.version, r.block_nr, r.block_size
            )
        };
        let rings = match &self.opts.per_frame {
            Some(v2) => format!(
                "a {} and a {}, steered by load",
                describe(&self.opts.ring),
                describe(v2)
            ),
            None => format!("a {}", describe(&self.opts.ring)),
        };
        tracing::info!(parent = %link.name, "parent opened; {n} worker(s), each with {rings}");
        Ok(WorkerGroup::new(workers))
    }

    /// The parent disappeared: its worker stops, its ports lose carrier and wait, and every
    /// other parent goes on (unless `exit_on_parent_loss`).
    fn parent_gone(&mut self, parent: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!self.exit_on_parent_loss, "parent {parent} disappeared");
        let Some(run) = self.parents.get_mut(parent) else {
            return Ok(());
        };
        if let Some(w) = run.worker.take()
            && let Err(e) = w.stop()
        {
            tracing::warn!(%parent, "its worker failed: {e}");
        }
        run.lower = None;
        for e in self.ports.iter().filter(|e| e.parent == parent) {
            if let Err(err) = e.devs[0].set_carrier(false) {
                tracing::warn!(port = %e.config.name, "clearing carrier failed: {err}");
            }
        }
        tracing::error!(%parent, "parent disappeared: its ports are down until it comes back");
        Ok(())
    }

    /// A parent that was gone exists again: reopen it and forward for its ports again.
    fn parent_back(&mut self, parent: &str, carrier: bool) -> anyhow::Result<()> {
        let Some(run) = self.parents.get(parent) else {
            return Ok(());
        };
        let opts = ParentOptions {
            bc_cutoff: run.config.bc_cutoff,
        };
        let (link, mut config) = check_parent(&mut self.nl, parent, opts)?;
        config.bc_cutoff = run.config.bc_cutoff;
        let sets = self.port_sets(parent, &run.table);
        let worker = self.spawn_workers(&link, sets, &run.counters)?;
        worker.send_each(|_| Command::SetCarrier(carrier));
        let lower = Memberships::open(link.index)
            .with_context(|| format!("opening the membership socket on {}", link.name))?;
        let mtu = link.mtu;
        let run = self.parents.get_mut(parent).expect("checked above");
        (run.link, run.config, run.worker) = (link, config, Some(worker));
        run.lower = Some(lower);
        run.sync_lower();
        self.parent_mtu(parent, mtu);
        tracing::info!(%parent, "parent is back: forwarding again");
        Ok(())
    }

    /// The parent's MTU is now `mtu`: as the kernel does on NETDEV_CHANGEMTU
    /// (`macvlan_device_event`), every port above it is lowered to it, and ports below stay
    /// where they are when it rises. Also the new bound for `link set mtu`.
    fn parent_mtu(&mut self, parent: &str, mtu: u32) {
        let Some(run) = self.parents.get_mut(parent) else {
            return;
        };
        let old = run.config.mtu;
        if old != mtu {
            tracing::info!(%parent, from = old, to = mtu, "parent MTU changed");
        }
        (run.config.mtu, run.link.mtu) = (mtu, mtu);
        let now = |e: &PortEntry| {
            e.live
                .as_ref()
                .map_or(e.config.mtu.unwrap_or(old), |l| l.mtu)
        };
        let above: Vec<u64> = self
            .ports
            .iter()
            .filter(|e| e.parent == parent && now(e) > mtu)
            .map(|e| e.key)
            .collect();
        for key in above {
            let e = self
                .ports
                .iter_mut()
                .find(|e| e.key == key)
                .expect("listed");
            if e.config.mtu > Some(mtu) {
                e.config.mtu = Some(mtu);
            }
            let name = e.config.name.clone();
            match self.on_port_link(key, |nl, index| nl.set_mtu(index, mtu)) {
                Ok(()) => tracing::info!(port = %name, mtu, "port MTU lowered to the parent's"),
                Err(e) => tracing::warn!(port = %name, "lowering the MTU failed: {}", e.message),
            }
        }
        self.rebuild(parent);
    }

    /// The parent's MAC is now `mac` (NETDEV_CHANGEADDR): the busy-address check uses it from
    /// now on, and a passthru port, which has the parent's MAC, takes it as the kernel's child
    /// does. Ports already forwarding keep forwarding, even on that very MAC (the kernel does not
    /// refuse a change of the lower's MAC to an up child's).
    fn parent_mac(&mut self, parent: &str, mac: MacAddr) {
        let Some(run) = self.parents.get_mut(parent) else {
            return;
        };
        tracing::info!(%parent, from = %run.config.mac, to = %mac, "parent MAC changed");
        (run.config.mac, run.link.mac) = (mac, Some(mac));
        let mut taps = Vec::new();
        for e in self
            .ports
            .iter_mut()
            .filter(|e| e.parent == parent && e.config.mode == Mode::Passthru)
        {
            e.config.mac = mac;
            if !e.kind.is_vm() {
                taps.push((e.key, e.config.name.clone()));
            }
        }
        for (key, name) in taps {
            if let Err(e) = self.on_port_link(key, |nl, index| nl.set_mac(index, mac)) {
                tracing::warn!(port = %name, "giving the passthru port the parent's new MAC failed: {}", e.message);
            }
        }
        self.rebuild(parent);
    }

    /// Runs `f` with a netlink socket in port `key`'s namespace and its TAP's ifindex.
    fn on_port_link<T>(
        &mut self,
        key: u64,
        f: impl FnOnce(&mut Netlink, u32) -> crate::net::Result<T>,
    ) -> Result<T, ControlError> {
        let e = self
            .ports
            .iter()
            .find(|e| e.key == key)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, "the port is gone"))?;
        let name = e.ifname.clone().unwrap_or_else(|| e.config.name.clone());
        let ifindex = e.live.as_ref().map(|l| l.ifindex);
        let mut nl_there;
        let nl = match &e.netns {
            Some((_, ns)) => {
                nl_there = Netlink::open_in(ns).map_err(internal)?;
                &mut nl_there
            }
            None => &mut self.nl,
        };
        let index = match ifindex {
            Some(i) => i,
            None => {
                nl.link_by_name(&name)
                    .map_err(internal)?
                    .ok_or_else(|| err(ErrorKind::NoSuchLink, format!("{name} vanished")))?
                    .index
            }
        };
        f(nl, index).map_err(internal)
    }

    /// `table` with the parent's ports, as each of its workers should hold them: worker `i`
    /// gets queue `i` of every TAP and copy `i` of every port's counters.
    fn port_sets(&self, parent: &str, table: &Arc<PortTable>) -> Vec<PortSet> {
        (0..self.opts.workers)
            .map(|i| PortSet {
                table: Arc::clone(table),
                ports: self
                    .ports
                    .iter()
                    .filter(|e| e.parent == parent)
                    .map(|e| e.handle(i))
                    .collect(),
            })
            .collect()
    }

    /// Creates a checked port's device, adds it to its parent and starts following it.
    fn create(
        &mut self,
        parent: &str,
        mut p: PlannedPort,
        owner: Option<String>,
    ) -> anyhow::Result<()> {
        let mtu = self.parents[parent].config.mtu;
        if p.config.mode == Mode::Passthru {
            // The kernel's passthru child takes its lower's MAC (`eth_hw_addr_inherit`),
            // whatever MAC was asked for; its TAP must have it too, or every unicast reaches
            // the port's stack as OTHERHOST.
            p.config.mac = self.parents[parent].config.mac;
        }
        let key = self.next_key;
        self.next_key += 1;
        let name = &p.spec.name;
        let workers = self.opts.workers;
        let devs = match (&p.spec.kind, &p.spec.path) {
            (PortKind::Tap | PortKind::Host, _) => create_tap(&mut self.nl, key, &p, mtu, workers)
                .map(|queues| queues.into_iter().map(PortDev::Tap).collect()),
            (PortKind::Attach, _) => {
                attach(&mut self.nl, name, p.netns.as_ref()).map(|a| vec![PortDev::Attach(a)])
            }
            (PortKind::Stream, Some(path)) => StreamPort::listen(name, path)
                .map(|s| vec![PortDev::Stream(s)])
                .map_err(Into::into),
            (PortKind::Stream, None) => Err(anyhow::anyhow!("a stream port needs path=")),
        }
        .with_context(|| format!("creating port {name}"))?;
        if p.spec.kind != PortKind::Stream {
            let ns = p.netns.as_ref().unwrap_or(&self.own_ns);
            self.watchers.port(ns, key, p.spec.device())?;
        }
        let netns = p.spec.netns.clone().zip(p.netns);
        self.ports.push(PortEntry {
            key,
            parent: parent.to_string(),
            config: p.config,
            netns,
            devs: devs.into_iter().map(Arc::new).collect(),
            counters: Sharded::new(self.opts.workers),
            ifname: p.spec.ifname,
            owner,
            live: None,
            admitted: None,
            refused: None,
            log_gate: LogGate::default(),
            kind: p.spec.kind,
            path: p.spec.path,
            trust_guest_mac: p.spec.trust_guest_mac,
        });
        self.rebuild(parent);
        Ok(())
    }

    /// The first parent's table (for a single-parent engine such as the lab's).
    pub fn table(&self) -> Option<Arc<PortTable>> {
        self.parents.values().next().map(|p| Arc::clone(&p.table))
    }

    /// Follows port state and serves `calls` until `stop` delivers a value (returned) or is
    /// closed (`None`), a parent disappears or a worker fails.
    pub fn run_until<T>(
        &mut self,
        stop: &Receiver<T>,
        calls: Option<&Receiver<Call>>,
    ) -> anyhow::Result<Option<T>> {
        let never = crossbeam_channel::never();
        let mut calls = calls.unwrap_or(&never);
        let ticks = self
            .service
            .as_ref()
            .map_or_else(crossbeam_channel::never, Service::ticks);
        loop {
            select! {
                recv(stop) -> v => return Ok(v.ok()),
                recv(calls) -> call => match call {
                    Ok(call) => {
                        self.call(call);
                        self.report_status();
                    }
                    // Every caller is gone: stop looking (a closed channel is always ready).
                    Err(_) => calls = &never,
                },
                recv(self.events) -> ev => match ev {
                    Ok(ev) => {
                        self.on_events(ev)?;
                        self.report_status();
                        self.write_held_logs();
                    }
                    Err(_) => anyhow::bail!("every port watcher stopped"),
                },
                recv(ticks) -> _ => self.watchdog(),
                default(Duration::from_millis(200)) => {
                    self.write_held_logs();
                    let finished = |p: &ParentRun| p.worker.as_ref().is_some_and(WorkerGroup::is_finished);
                    if let Some((name, _)) = self.parents.iter().find(|(_, p)| finished(p)) {
                        anyhow::bail!("the forwarding worker of {name} stopped");
                    }
                }
            }
        }
    }

    /// The state lines of ports whose changes were held back by their [`LogGate`].
    fn write_held_logs(&mut self) {
        for e in &mut self.ports {
            if let Some(held) = e.log_gate.due() {
                write_port_state(e, held);
            }
        }
    }

    /// One line for systemd's STATUS=: how many ports, forwarding, and parents.
    pub fn status_text(&self) -> String {
        let forwarding = self
            .parents
            .values()
            .map(|r| r.table.ports().iter().filter(|p| p.is_up()).count())
            .sum::<usize>();
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{} ({forwarding} forwarding) on {}",
            plural(self.ports.len(), "port"),
            plural(self.parents.len(), "parent")
        )
    }

    /// Tells systemd the engine is ready (READY=1 and STATUS=), when run by it.
    pub fn notify_ready(&mut self) {
        let status = self.status_text();
        if let Some(s) = &mut self.service {
            s.ready(status);
        }
    }

    fn report_status(&mut self) {
        let status = self.status_text();
        if let Some(s) = &mut self.service {
            s.status(status);
        }
    }

    /// A watchdog tick: ping systemd only while every worker makes progress.
    fn watchdog(&mut self) {
        let workers: Vec<(String, bool, u64)> =
            self.parents
                .iter()
                .filter_map(|(name, run)| {
                    let w = run.worker.as_ref()?;
                    let alive = !w.is_finished();
                    Some(run.counters.shards().iter().enumerate().map(move |(i, c)| {
                        (format!("{name} worker {i}"), alive, c.heartbeat.get())
                    }))
                })
                .flatten()
                .collect();
        if let Some(s) = &mut self.service {
            s.check(&workers);
        }
    }

    /// `first` and every event queued behind it. Port changes only record the new live state,
    /// and each parent they touched is rebuilt once at the end: a port flapping in its namespace
    /// costs one table per batch of events, not one per event.
    fn on_events(&mut self, first: Event) -> anyhow::Result<()> {
        let mut stale: Vec<String> = Vec::new();
        let mut next = Some(first);
        while let Some(ev) = next.take().or_else(|| self.events.try_recv().ok()) {
            if let Some(parent) = self.on_event(ev)?
                && !stale.contains(&parent)
            {
                stale.push(parent);
            }
        }
        for parent in stale {
            self.rebuild(&parent);
        }
        Ok(())
    }

    /// Applies one event; a port's new state is returned as its parent, to rebuild.
    fn on_event(&mut self, ev: Event) -> anyhow::Result<Option<String>> {
        match ev {
            Event::Port { key, state } => {
                self.reattach(key, state.as_ref());
                if let Some(e) = self.ports.iter_mut().find(|e| e.key == key) {
                    e.live = state;
                    return Ok(Some(e.parent.clone()));
                }
            }
            Event::Carrier { parent, on } => {
                if let Some(run) = self.parents.get(&parent) {
                    tracing::info!(%parent, carrier = on, "parent carrier changed");
                    if let Some(w) = &run.worker {
                        w.send_each(|_| Command::SetCarrier(on));
                    }
                }
            }
            Event::ParentMtu { parent, mtu } => self.parent_mtu(&parent, mtu),
            Event::ParentMac { parent, mac } => self.parent_mac(&parent, mac),
            Event::ParentGone { parent } => self.parent_gone(&parent)?,
            Event::ParentBack { parent, carrier } => {
                if let Err(e) = self.parent_back(&parent, carrier) {
                    tracing::error!(%parent, "the parent is back but cannot be reopened: {}", crate::errors::chain(&e));
                }
            }
        }
        Ok(None)
    }

    /// An attached netdev that appeared again under its name (the VM restarted and its
    /// hypervisor made a new TAP): the port's socket is bound to it and it is brought up.
    fn reattach(&mut self, key: u64, state: Option<&LiveState>) {
        let Some(e) = self.ports.iter().find(|e| e.key == key) else {
            return;
        };
        let (PortDev::Attach(a), Some(l)) = (&*e.devs[0], state) else {
            return;
        };
        if a.ifindex() == l.ifindex {
            return;
        }
        let ns = e.netns.as_ref().map(|(_, ns)| ns);
        let again = bring_up_attached(&mut self.nl, a.name(), ns)
            .and_then(|index| a.rebind(index).map_err(Into::into));
        match again {
            Ok(_) => tracing::info!(port = a.name(), ifindex = l.ifindex, "attached again"),
            Err(err) => tracing::warn!(
                port = a.name(),
                "attaching again failed: {}",
                crate::errors::chain(&err)
            ),
        }
    }

    /// Answers one call: streams for `follow`, one response otherwise.
    fn call(
        &mut self,
        Call {
            request,
            reply,
            closed,
            raw,
        }: Call,
    ) {
        match request {
            Request::Follow(f) => {
                if let Err(error) = self.follow(f, reply.clone(), closed, raw) {
                    let _ = reply.send(Response::Error { error });
                }
            }
            request => {
                let _ = reply.send(self.handle(request));
            }
        }
    }

    /// Starts a follow stream: registers a sink and hands its frames to the client from a
    /// thread of its own, so the control loop never waits for a slow client: as JSON
    /// `observation`s on `reply`, or (binary) as the workers' chunks of records on `raw`. The
    /// stream ends after `count` frames or when `closed` disconnects (the client is gone); the
    /// sink is then unregistered and workers stop emitting for it.
    fn follow(
        &self,
        f: FollowRequest,
        reply: crossbeam_channel::Sender<Response>,
        closed: Receiver<()>,
        raw: Option<crossbeam_channel::Sender<Chunk>>,
    ) -> Result<(), ControlError> {
        let raw = match (f.binary, raw) {
            (false, _) => None,
            (true, Some(raw)) => Some(raw),
            (true, None) => {
                return Err(err(
                    ErrorKind::BadRequest,
                    "a binary follow stream is served only on the control socket",
                ));
            }
        };
        let t = f.target.as_str();
        let (filter, parents): (Filter, Vec<&String>) = if t == "parent" || t == "drops" {
            let all = self.parents.keys().collect();
            let filter = if t == "drops" {
                Filter::Drops
            } else {
                Filter::All
            };
            (filter, all)
        } else if let Some((name, _)) = self.parents.get_key_value(t) {
            (Filter::Parent(t.to_string()), vec![name])
        } else if let Ok(e) = self.entry(t) {
            (Filter::Port(t.to_string()), vec![&e.parent])
        } else {
            return Err(err(
                ErrorKind::NoSuchLink,
                format!(
                    "nothing named {t} to follow (use parent, a parent's or a port's name, or drops)"
                ),
            ));
        };
        let mut interfaces = Vec::new();
        for p in parents {
            let run = &self.parents[p];
            interfaces.push(FollowInterface {
                name: p.clone(),
                parent: p.clone(),
                kind: "parent".into(),
                mac: run.config.mac,
            });
            for e in self.ports.iter().filter(|e| &e.parent == p) {
                interfaces.push(FollowInterface {
                    name: e.config.name.clone(),
                    parent: p.clone(),
                    kind: e.config.mode.name().into(),
                    mac: effective_mac(e),
                });
            }
        }
        let snaplen = match f.with_bytes {
            true => f
                .snaplen
                .filter(|n| *n > 0)
                .unwrap_or(MAX_SNAPLEN)
                .min(MAX_SNAPLEN) as usize,
            false => 0,
        };
        let (sink, rx) = self.observers.register(filter, snaplen, FOLLOW_BACKLOG);
        let _ = reply.send(Response::Ok {
            reply: Reply::Following { interfaces },
        });
        let observers = Arc::clone(&self.observers);
        let count = f.count.unwrap_or(u64::MAX);
        let relay = move || {
            // Decoding and relaying observations yields to the workers.
            if let Err(e) = crate::sys::yield_cpu_to_forwarding() {
                tracing::debug!("follow: could not lower the relay's priority: {e}");
            }
            let mut seen = 0u64;
            'stream: while seen < count {
                select! {
                    recv(rx) -> chunk => {
                        let Ok(mut chunk) = chunk else { break };
                        chunk.keep(count - seen);
                        if let Some(raw) = &raw {
                            seen += chunk.frames();
                            if raw.send(chunk).is_err() {
                                break;
                            }
                            continue;
                        }
                        for r in record::records(chunk.bytes()) {
                            let r = match FrameRecord::decode(r) {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!("follow: a worker's record: {e}");
                                    continue;
                                }
                            };
                            let frame = r.to_observed(snaplen > 0);
                            if reply.send(Response::Ok { reply: Reply::Observation { frame } }).is_err() {
                                break 'stream;
                            }
                            seen += 1;
                        }
                    }
                    recv(closed) -> _ => break,
                }
            }
            observers.unregister(sink.id);
            let lost = sink.lost.load(std::sync::atomic::Ordering::Relaxed);
            let end = Response::Ok {
                reply: Reply::FollowEnd { seen, lost },
            };
            match &raw {
                Some(raw) => {
                    if let Ok(end) = Chunk::end(&end) {
                        let _ = raw.send(end);
                    }
                }
                None => {
                    let _ = reply.send(end);
                }
            }
            if lost > 0 {
                tracing::info!(
                    seen,
                    lost,
                    "a follower ended; it read too slowly for {lost} frames"
                );
            } else {
                tracing::debug!(seen, "follow stream ended");
            }
        };
        std::thread::Builder::new()
            .name("umacvlan-follow".into())
            .spawn(relay)
            .map_err(internal)?;
        Ok(())
    }

    /// Applies one control request.
    pub fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::LinkAdd(spec) => self.link_add(spec).map(|v| Reply::Links { links: vec![v] }),
            Request::LinkDel(l) => self.link_del(&l.name).map(|()| Reply::Done),
            Request::LinkSet(c) => self.link_set(c).map(|v| Reply::Links { links: vec![v] }),
            Request::LinkShow(f) => self
                .link_show(f.name.as_deref())
                .map(|links| Reply::Links { links }),
            Request::Trace(t) => self.trace(&t).map(|trace| Reply::Trace { trace }),
            Request::Reload(_) => self.reload().map(|report| Reply::Reloaded { report }),
            Request::Follow(_) => Err(err(
                ErrorKind::BadRequest,
                "follow is a streaming request: only the control socket serves it",
            )),
            Request::Stats(_) => self.stats().map(|stats| Reply::Stats { stats }),
        };
        match result {
            Ok(reply) => Response::Ok { reply },
            Err(error) => Response::Error { error },
        }
    }

    /// Re-reads the configuration file and applies only the difference: untouched ports keep
    /// forwarding; removed ports go; changed ports change in place when `link set` can do it
    /// (mode, MAC, MTU, bcqueuelen, source list) and are re-created otherwise. A file that does
    /// not validate changes nothing.
    pub fn reload(&mut self) -> Result<ReloadReport, ControlError> {
        let Some((path, _)) = &self.config else {
            return Err(err(
                ErrorKind::BadConfig,
                "this engine was started without --config: there is nothing to reload",
            ));
        };
        let path = path.clone();
        let bad = |e: crate::control::config::ConfigError| err(ErrorKind::BadConfig, e.to_string());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(ErrorKind::BadConfig, format!("{}: {e}", path.display())))?;
        let file = path.display().to_string();
        let new = Config::parse(&file, &text).map_err(bad)?;
        new.check_machine(&file, &text).map_err(bad)?;
        if let Some(s) = &self.service {
            s.reloading();
        }
        let report = self.apply(new);
        self.notify_ready();
        let report = report?;
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Moves from the last applied configuration to `new`.
    fn apply(&mut self, new: Config) -> Result<ReloadReport, ControlError> {
        let (path, old) = self.config.take().expect("only with a configuration");
        let d = diff(&old, &new);
        let mut report = ReloadReport {
            unchanged: d.unchanged,
            ..ReloadReport::default()
        };
        let result = (|| {
            for name in &d.removed {
                self.link_del(name)?;
                report.removed.push(name.clone());
            }
            for spec in &d.changed {
                let old_spec = &old
                    .ports
                    .iter()
                    .find(|p| p.spec.name == spec.name)
                    .expect("in diff")
                    .spec;
                let parent_mtu = spec
                    .parent
                    .as_ref()
                    .and_then(|p| self.parents.get(p))
                    .map_or(0, |r| r.config.mtu);
                match in_place(old_spec, spec, parent_mtu).filter(|_| parent_mtu > 0) {
                    Some(change) => {
                        self.link_set(change)?;
                    }
                    None => {
                        self.link_del(&spec.name)?;
                        self.link_add(self.with_bclim(spec, &new))?;
                    }
                }
                report.changed.push(spec.name.clone());
            }
            for spec in &d.added {
                self.link_add(self.with_bclim(spec, &new))?;
                report.added.push(spec.name.clone());
            }
            for (parent, b) in &new.bclim {
                if let Some(run) = self.parents.get_mut(parent) {
                    run.config.bc_cutoff = *b;
                }
            }
            let parents: Vec<String> = self.parents.keys().cloned().collect();
            for p in parents {
                self.rebuild(&p);
            }
            Ok(())
        })();
        self.config = Some((path, new));
        result.map(|()| report)
    }

    fn with_bclim(&self, spec: &LinkSpec, config: &Config) -> LinkSpec {
        let bclim = spec
            .parent
            .as_ref()
            .and_then(|p| config.bclim.get(p))
            .copied();
        LinkSpec {
            bclim,
            ..spec.clone()
        }
    }

    /// `trace` against the current table of the port's parent (or of the named parent).
    fn trace(
        &self,
        t: &crate::control::proto::TraceRequest,
    ) -> Result<serde_json::Value, ControlError> {
        let parent = match (&t.parent, self.entry(&t.from)) {
            (Some(p), _) => p.clone(),
            (None, Ok(e)) => e.parent.clone(),
            (None, Err(_)) if self.parents.len() == 1 => {
                self.parents.keys().next().cloned().unwrap_or_default()
            }
            (None, Err(_)) if self.parents.is_empty() => {
                return Err(err(ErrorKind::NoSuchLink, "the engine has no parent yet"));
            }
            (None, Err(_)) => {
                let names: Vec<&str> = self.parents.keys().map(String::as_str).collect();
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the engine has several parents ({}): say which with --parent",
                        names.join(", ")
                    ),
                ));
            }
        };
        let run = self
            .parents
            .get(&parent)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, format!("no parent named {parent}")))?;
        Ok(crate::control::trace::trace_json(
            &run.table,
            &t.from,
            &crate::control::trace::TraceFrame::from(t),
        )?)
    }

    fn entry(&self, name: &str) -> Result<&PortEntry, ControlError> {
        self.ports
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, format!("no port named {name}")))
    }

    /// `link add`: every check first, then the port is created down, like `ip link add`.
    pub fn link_add(&mut self, l: LinkSpec) -> Result<LinkView, ControlError> {
        if self.entry(&l.name).is_ok() {
            return Err(err(
                ErrorKind::Exists,
                format!("a port named {} exists", l.name),
            ));
        }
        let parent = match l.parent.clone() {
            Some(p) => p,
            None => default_route_interface().ok_or_else(|| plan_err(PlanError::NoDefaultRoute))?,
        };
        let opts = ParentOptions {
            bc_cutoff: l.bclim.unwrap_or(crate::forward::DEFAULT_BC_CUTOFF),
        };
        let (link, mut pconfig) = match self.parents.get(&parent) {
            Some(run) if run.worker.is_none() => {
                return Err(err(
                    ErrorKind::NoSuchLink,
                    format!(
                        "parent {parent} was deleted; its ports wait for it to come back (ENODEV)"
                    ),
                ));
            }
            Some(run) => (run.link.clone(), run.config.clone()),
            None => check_parent(&mut self.nl, &parent, opts).map_err(plan_err)?,
        };
        if let Some(b) = l.bclim {
            pconfig.bc_cutoff = b;
        }
        let spec = l.port_spec();
        spec.check_kind(&l.name)
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
        let mut config = spec.to_config(&parent);
        config.up = false;
        // Creation checks no busy address (`macvlan_common_newlink`): that is done when the port
        // comes up. Only a group or zero MAC is refused now.
        if let Some(mac) = l
            .address
            .filter(|m| spec.mode != Mode::Passthru && !m.is_valid_unicast())
        {
            return Err(err(
                ErrorKind::AddressNotAvailable,
                format!("{mac} is a group or zero address (EADDRNOTAVAIL)"),
            ));
        }
        // The table the parent would have: the mode, passthru and MTU rules.
        let mut configs = self.configs_of(&parent, pconfig.mtu);
        configs.push(config.clone());
        PortTable::build(pconfig.clone(), configs)
            .map_err(|e| err(table_error_kind(&e), e.to_string()))?;
        // A path one of our ports listens on: refused before any probe connects to it.
        if let Some(path) = &spec.path
            && let Some(e) = self.ports.iter().find(|e| e.path.as_ref() == Some(path))
        {
            let path = path.display().to_string();
            let same = PlanError::SamePath(e.config.name.clone(), spec.name.clone(), path);
            return Err(plan_err(same));
        }
        let netns = check_port_place(&mut self.nl, &spec, &parent).map_err(plan_err)?;
        self.ensure_parent(link, pconfig.clone())
            .map_err(internal)?;
        if let Some(run) = self.parents.get_mut(&parent) {
            run.config.bc_cutoff = pconfig.bc_cutoff;
        }
        self.create(
            &parent,
            PlannedPort {
                spec,
                config,
                netns,
            },
            l.owner.clone(),
        )
        .map_err(internal)?;
        tracing::info!(port = %l.name, %parent, "port added");
        self.view(self.entry(&l.name)?)
    }

    /// `macvlan_set_mac_address`: a new MAC, for an up port or a down one, must be valid and
    /// neither the parent's nor that of another port forwarding on the same parent.
    fn check_new_address(
        &self,
        key: u64,
        parent: &ParentConfig,
        mac: MacAddr,
    ) -> Result<(), ControlError> {
        let others = self
            .ports
            .iter()
            .filter(|e| e.parent == parent.name && e.key != key)
            .map(|e| (e.config.name.clone(), e.admitted));
        match address_busy(parent.mac, mac, others) {
            None => Ok(()),
            Some(r @ Refusal::Invalid { .. }) => {
                Err(err(ErrorKind::AddressNotAvailable, r.to_string()))
            }
            Some(r) => Err(err(ErrorKind::AddressInUse, r.to_string())),
        }
    }

    /// `link del`: the port leaves the table at once; its TAP vanishes when the worker lets go.
    pub fn link_del(&mut self, name: &str) -> Result<(), ControlError> {
        let key = self.entry(name)?.key;
        let i = self
            .ports
            .iter()
            .position(|e| e.key == key)
            .expect("found above");
        let e = self.ports.remove(i);
        let ns = e.netns.as_ref().map_or(&self.own_ns, |(_, ns)| ns);
        self.watchers.forget(ns, key).map_err(internal)?;
        self.rebuild(&e.parent);
        if !self.ports.iter().any(|p| p.parent == e.parent) {
            self.close_parent(&e.parent);
        }
        close_devs(e.devs, name);
        tracing::info!(port = name, "port deleted");
        Ok(())
    }

    fn close_parent(&mut self, name: &str) {
        if let Some(run) = self.parents.remove(name) {
            if let Err(e) = self.watchers.forget_parent(&self.own_ns, name) {
                tracing::warn!("{}", crate::errors::chain(&e));
            }
            if let Some(Err(e)) = run.worker.map(WorkerGroup::stop) {
                tracing::warn!(parent = name, "the worker failed: {e}");
            }
            tracing::info!(parent = name, "parent closed (no ports left)");
        }
    }

    /// `link set`: the kernel's changelink rules (§8), every check before any change.
    pub fn link_set(&mut self, c: LinkChange) -> Result<LinkView, ControlError> {
        let e = self.entry(&c.name)?;
        let (key, parent, old_mode) = (e.key, e.parent.clone(), e.config.mode);
        let pconfig = self.parents[&parent].config.clone();
        let new_mode = c.mode.unwrap_or(old_mode);
        if e.kind == PortKind::Host && new_mode != Mode::Bridge {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("{}: {HOST_MODE}, not {new_mode}", c.name),
            ));
        }
        if (new_mode == Mode::Passthru) != (old_mode == Mode::Passthru) {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "cannot change {} from {old_mode} to {new_mode}: passthru is fixed at creation (EINVAL)",
                    c.name
                ),
            ));
        }
        if let Some(mac) = c.address {
            if old_mode == Mode::Passthru {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    "a passthru port has the parent's MAC; umacvlan does not change the parent's MAC",
                ));
            }
            self.check_new_address(key, &pconfig, mac)?;
        }
        if let Some(mtu) = c.mtu.filter(|m| !(MIN_MTU..=pconfig.mtu).contains(m)) {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "MTU {mtu} is outside {MIN_MTU}..={} (the parent's MTU) (EINVAL)",
                    pconfig.mtu
                ),
            ));
        }
        if let Some(op) = &c.macaddr {
            if new_mode != Mode::Source {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!(
                        "{} is in {new_mode} mode; macaddr needs source mode (EINVAL)",
                        c.name
                    ),
                ));
            }
            let macs = match op {
                MacaddrOp::Add(m) | MacaddrOp::Del(m) | MacaddrOp::Set(m) => m.as_slice(),
                MacaddrOp::Flush => &[],
            };
            if let Some(bad) = macs.iter().find(|m| !m.is_valid_unicast()) {
                return Err(err(
                    ErrorKind::AddressNotAvailable,
                    format!("{bad} is a group or zero address (EADDRNOTAVAIL)"),
                ));
            }
        }
        // Checked: apply. The device itself first (MAC, MTU), then the configuration. A VM
        // port's MAC is the guest's and its netdev (if any) is not ours: configuration only.
        if (c.address.is_some() || c.mtu.is_some()) && !self.entry(&c.name)?.kind.is_vm() {
            self.on_port_link(key, |nl, index| {
                if let Some(mac) = c.address {
                    nl.set_mac(index, mac)?;
                }
                if let Some(mtu) = c.mtu {
                    nl.set_mtu(index, mtu)?;
                }
                Ok(())
            })?;
        }
        let e = self
            .ports
            .iter_mut()
            .find(|e| e.key == key)
            .expect("found above");
        let cfg = &mut e.config;
        if let Some(mac) = c.address {
            cfg.mac = mac;
        }
        if c.mtu.is_some() {
            cfg.mtu = c.mtu;
        }
        if let Some(q) = c.bcqueuelen {
            cfg.bcqueuelen = q;
        }
        if new_mode != Mode::Source {
            cfg.sources.clear();
        }
        cfg.mode = new_mode;
        match c.macaddr {
            Some(MacaddrOp::Add(m)) => cfg.sources.extend(m),
            Some(MacaddrOp::Del(m)) => m.iter().for_each(|x| {
                cfg.sources.remove(x);
            }),
            Some(MacaddrOp::Set(m)) => cfg.sources = m.into_iter().collect(),
            Some(MacaddrOp::Flush) => cfg.sources.clear(),
            None => {}
        }
        if let Some(b) = c.bclim {
            self.parents
                .get_mut(&parent)
                .expect("has ports")
                .config
                .bc_cutoff = b;
        }
        self.rebuild(&parent);
        self.view(self.entry(&c.name)?)
    }

    /// `link show`.
    pub fn link_show(&self, name: Option<&str>) -> Result<Vec<LinkView>, ControlError> {
        match name {
            Some(n) => Ok(vec![self.view(self.entry(n)?)?]),
            None => self.ports.iter().map(|e| self.view(e)).collect(),
        }
    }

    /// `stats`: every port (as `link show`) and every parent's counters, in one snapshot.
    pub fn stats(&self) -> Result<StatsView, ControlError> {
        let parents = self
            .parents
            .iter()
            .map(|(name, run)| {
                let c = &run.counters.total();
                ParentView {
                    name: name.clone(),
                    rx_packets: c.rx.packets.get(),
                    rx_bytes: c.rx.bytes.get(),
                    tx_packets: c.tx.packets.get(),
                    tx_bytes: c.tx.bytes.get(),
                    drops: c
                        .drops
                        .nonzero()
                        .into_iter()
                        .map(|(r, n)| (r.name().to_string(), n))
                        .collect(),
                    ring_packets: c.ring_packets.get(),
                    ring_drops: c.ring_drops.get(),
                    ring_freezes: c.ring_freezes.get(),
                    ring: self.ring_kind().to_string(),
                    ring_mode: ring_mode(c.ring_v2.get(), self.opts.workers).to_string(),
                    ring_mode_switches: c.ring_mode_switches.get(),
                    ring_steer_failures: c.ring_steer_failures.get(),
                    ports: self.ports.iter().filter(|e| e.parent == *name).count(),
                    bcqueuelen_used: run.table.bc_queue_len_used(),
                    // Delivered at once: nothing ever waits (see ParentView).
                    broadcast_queue_depth: 0,
                }
            })
            .collect();
        Ok(StatsView {
            ports: self.link_show(None)?,
            parents,
        })
    }

    fn view(&self, e: &PortEntry) -> Result<LinkView, ControlError> {
        let run = &self.parents[&e.parent];
        let id = run.keys.iter().position(|k| *k == e.key);
        let in_table = id.map(|i| run.table.port(crate::forward::PortId(i as u16)));
        let live = e.live.as_ref();
        let c = &e.counters.total();
        let stream = match &*e.devs[0] {
            PortDev::Stream(s) => Some(s.connected()),
            _ => None,
        };
        Ok(LinkView {
            name: e.config.name.clone(),
            ifindex: live.map(|l| l.ifindex),
            address: effective_mac(e),
            mtu: live.map_or(e.config.mtu.unwrap_or(run.config.mtu), |l| l.mtu),
            parent: e.parent.clone(),
            netns: e.netns.as_ref().map(|(n, _)| n.clone()),
            ifname: e.ifname.clone(),
            owner: e.owner.clone(),
            up: stream.is_some() || live.is_some_and(|l| l.up),
            lower_up: stream.unwrap_or(false) || live.is_some_and(|l| l.lower_up),
            forwarding: in_table.is_some_and(|p| p.is_up()),
            refused: e.refused.as_ref().map(ToString::to_string),
            promisc: live.is_some_and(|l| l.promisc),
            allmulti: live.is_some_and(|l| l.allmulti),
            mode: e.config.mode,
            nopromisc: e.config.flags.nopromisc,
            nodst: e.config.flags.nodst,
            bcqueuelen: e.config.bcqueuelen,
            usedbcqueuelen: run.table.bc_queue_len_used(),
            bclim: run.config.bc_cutoff,
            macaddr: e.config.sources.iter().copied().collect(),
            stats: LinkStats {
                rx_packets: c.rx.packets.get(),
                rx_bytes: c.rx.bytes.get(),
                rx_multicast: c.rx_multicast.get(),
                rx_dropped: c.rx_dropped(),
                tx_packets: c.tx.packets.get(),
                tx_bytes: c.tx.bytes.get(),
                tx_dropped: c.tx_dropped(),
                drops: c
                    .drops
                    .nonzero()
                    .into_iter()
                    .map(|(r, n)| (r.name().to_string(), n))
                    .collect(),
            },
            kind: e.kind,
            path: e.path.clone(),
            trust_guest_mac: e.trust_guest_mac,
        })
    }

    /// The parent's ports as the table should see them now.
    fn configs_of(&self, parent: &str, parent_mtu: u32) -> Vec<PortConfig> {
        self.ports
            .iter()
            .filter(|e| e.parent == parent)
            .map(|e| apply_live(&e.config, e.kind, e.live.as_ref(), parent_mtu))
            .collect()
    }

    /// A new table for `parent` from the configuration and every TAP's live state, handed to its
    /// worker with the matching port set. An up port whose MAC the kernel would have refused at
    /// that moment ([`admit`]: `ip link set up` or an address change failing with
    /// EADDRINUSE/EADDRNOTAVAIL) stays out of the table until its MAC or state changes. Each
    /// port's change of state is logged, at most once a second per port.
    fn rebuild(&mut self, parent: &str) {
        let Some(run) = self.parents.get(parent) else {
            return;
        };
        let parent_mac = run.config.mac;
        let mut configs = self.configs_of(parent, run.config.mtu);
        let mine: Vec<usize> = (0..self.ports.len())
            .filter(|i| self.ports[*i].parent == parent)
            .collect();
        let candidates: Vec<Candidate<'_>> = mine
            .iter()
            .zip(&configs)
            .map(|(i, c)| Candidate {
                name: &c.name,
                mode: c.mode,
                up: c.up,
                mac: c.mac,
                admitted: self.ports[*i].admitted,
            })
            .collect();
        let verdicts = admit(parent_mac, &candidates);
        for ((i, config), verdict) in mine.iter().zip(&mut configs).zip(verdicts) {
            let e = &mut self.ports[*i];
            let was = (e.admitted.is_some(), e.refused.clone());
            (e.admitted, e.refused) = match verdict {
                Ok(mac) => (mac, None),
                Err(r) => (None, Some(r)),
            };
            config.up = e.admitted.is_some();
            if (e.admitted.is_some(), &e.refused) != (was.0, &was.1) {
                log_port_state(e);
            }
        }
        let table = match PortTable::build(run.config.clone(), configs) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::error!("keeping the previous table of {parent}: {e}");
                return;
            }
        };
        let sets = self.port_sets(parent, &table);
        let keys: Vec<u64> = mine.iter().map(|i| self.ports[*i].key).collect();
        let run = self.parents.get_mut(parent).expect("checked above");
        run.table = table;
        run.keys = keys;
        run.sync_lower();
        if let Some(w) = &run.worker {
            let mut sets = sets.into_iter();
            w.send_each(|_| Command::SetPorts(sets.next().expect("one set per worker")));
        }
    }

    /// Every port's and parent's counters, as `run` prints them on exit.
    pub fn counters_text(&self) -> String {
        let port_totals: Vec<_> = self.ports.iter().map(|e| e.counters.total()).collect();
        let parent_totals: Vec<_> = self.parents.values().map(|r| r.counters.total()).collect();
        let ports: Vec<_> = self
            .ports
            .iter()
            .zip(&port_totals)
            .map(|(e, c)| (e.config.name.as_str(), e.config.mode, c))
            .collect();
        let parents: Vec<_> = self
            .parents
            .keys()
            .zip(&parent_totals)
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        crate::control::report::counters_text(&ports, &parents)
    }

    /// Stops everything; the TAPs vanish with their fds and each parent's promiscuity with its
    /// membership sockets. Returns the final counters as text.
    pub fn shutdown(mut self) -> anyhow::Result<String> {
        // Workers first: each drains its ring and folds the kernel's ring counters in as it stops,
        // so the text below is final.
        let mut failed = Vec::new();
        for (name, run) in &mut self.parents {
            if let Some(Err(e)) = run.worker.take().map(WorkerGroup::stop) {
                failed.push(format!("the worker of {name} failed: {e}"));
            }
        }
        let text = self.counters_text();
        self.watchers.stop();
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
        Ok(text)
    }
}

/// The `link set` that turns port `old` into `new`, when changelink can (same parent,
/// namespace, flags and kind, path and trust of a VM port, addresses and routes of a host port;
/// not to or from passthru). A setting dropped from the file goes back to its default: the
/// parent's MTU, the derived MAC, bcqueuelen 1000.
fn in_place(old: &LinkSpec, new: &LinkSpec, parent_mtu: u32) -> Option<LinkChange> {
    let fixed = |s: &LinkSpec| {
        let vm = (s.kind, s.path.clone(), s.trust_guest_mac);
        let host = (s.addresses.clone(), s.routes.clone());
        let place = (s.parent.clone(), s.netns.clone(), s.ifname.clone());
        (place, s.nopromisc, s.nodst, vm, host)
    };
    let passthru = |s: &LinkSpec| s.mode == Some(Mode::Passthru);
    if fixed(old) != fixed(new) || passthru(old) != passthru(new) {
        return None;
    }
    fn changed<T: PartialEq>(a: T, b: T) -> Option<T> {
        (a != b).then_some(b)
    }
    let parent = new.parent.as_deref().unwrap_or_default();
    let mac = |s: &LinkSpec| s.address.unwrap_or_else(|| derived_mac(parent, &s.name));
    let bcq = |s: &LinkSpec| s.bcqueuelen.unwrap_or(crate::forward::DEFAULT_BC_QUEUE_LEN);
    Some(LinkChange {
        name: new.name.clone(),
        mode: changed(old.mode, new.mode).map(|m| m.unwrap_or(Mode::Bridge)),
        address: changed(mac(old), mac(new)).filter(|_| !passthru(new)),
        mtu: changed(old.mtu.unwrap_or(parent_mtu), new.mtu.unwrap_or(parent_mtu)),
        bcqueuelen: changed(bcq(old), bcq(new)),
        bclim: None,
        macaddr: (old.macaddr != new.macaddr).then(|| MacaddrOp::Set(new.macaddr.clone())),
    })
}

/// The ring a parent's workers read now, from how many of its `workers` read a V2 ring.
fn ring_mode(v2_workers: u64, workers: usize) -> &'static str {
    match v2_workers {
        0 => "v3",
        n if n == workers as u64 => "v2",
        _ => "mixed",
    }
}

/// Chunks (one per worker batch) a follower may have waiting before the workers count new
/// frames as lost (its bytes in flight are bounded too: [`crate::engine::observe::SINK_BYTES`]).
const FOLLOW_BACKLOG: usize = 4096;

impl PortEntry {
    /// The port as its parent's worker holds it.
    /// The port as worker `i` holds it: its own TAP queue, or the shared device (read by worker
    /// 0 only), and its own copy of the counters.
    fn handle(&self, i: usize) -> PortHandle {
        PortHandle {
            key: self.key,
            dev: Arc::clone(&self.devs[i % self.devs.len()]),
            reads: i < self.devs.len(),
            counters: Arc::clone(self.counters.shard(i)),
        }
    }
}

/// One line for a port that starts or stops forwarding, or is refused (rate-limited per port).
fn log_port_state(e: &mut PortEntry) {
    if let Some(held) = e.log_gate.pass() {
        write_port_state(e, held);
    }
}

fn write_port_state(e: &PortEntry, held: u64) {
    let port = e.config.name.as_str();
    let held = (held > 0).then(|| format!(" ({held} earlier changes not logged)"));
    let held = held.unwrap_or_default();
    match (&e.refused, e.admitted) {
        (Some(r), _) => tracing::warn!(
            "port {port}: {r}: the kernel would refuse this, so the port is out of forwarding until its MAC changes or it goes down{held}"
        ),
        (None, Some(mac)) => tracing::info!(port, %mac, "port forwarding{held}"),
        (None, None) => tracing::info!(port, "port not forwarding (down){held}"),
    }
}

/// The MAC a port has now: the TAP's, once seen, else the configured one; a VM port's is always
/// the configured guest MAC (its netdev's own MAC is the host side's).
fn effective_mac(e: &PortEntry) -> MacAddr {
    match (&e.live, e.config.mode) {
        (Some(l), m) if m != Mode::Passthru && !e.kind.is_vm() => l.mac,
        _ => e.config.mac,
    }
}

/// The port as the table should see it: its configuration with its netdev's live state on top.
/// A VM port keeps its guest MAC and takes every group (the guest filters, as behind a
/// macvtap); a stream port, which has no netdev, is always up.
fn apply_live(
    c: &PortConfig,
    kind: PortKind,
    live: Option<&LiveState>,
    parent_mtu: u32,
) -> PortConfig {
    let mut p = c.clone();
    p.allmulti = kind.is_vm();
    if kind == PortKind::Stream {
        p.up = true;
        return p;
    }
    let Some(l) = live else {
        p.up = false;
        return p;
    };
    p.up = l.up;
    if p.mode != Mode::Passthru && !kind.is_vm() {
        p.mac = l.mac;
    }
    p.mtu = Some(l.mtu.clamp(MIN_MTU, parent_mtu));
    p.promisc = l.promisc;
    p.allmulti |= l.allmulti;
    p.groups = l.groups.clone();
    p
}

/// Brings up the netdev `name` (in `ns`, else the engine's namespace) that someone else owns;
/// returns its ifindex.
fn bring_up_attached(nl: &mut Netlink, name: &str, ns: Option<&Netns>) -> anyhow::Result<u32> {
    let mut there;
    let nl = match ns {
        Some(ns) => {
            there = Netlink::open_in(ns)?;
            &mut there
        }
        None => nl,
    };
    let link = nl
        .link_by_name(name)?
        .with_context(|| format!("no interface named {name} to attach to"))?;
    nl.set_up(link.index, true)?;
    Ok(link.index)
}

/// Brings up the netdev `name` someone else owns and opens a packet socket on it (in its
/// namespace: the socket binds there).
fn attach(nl: &mut Netlink, name: &str, ns: Option<&Netns>) -> anyhow::Result<PacketPort> {
    let index = bring_up_attached(nl, name, ns)?;
    let open = || PacketPort::open(name, index);
    Ok(match ns {
        Some(ns) => crate::net::in_netns(ns, open)??,
        None => open()?,
    })
}

/// Closes a removed port's devices once its workers have let go of them (each does so when it
/// takes the new port set, between two batches), waiting up to [`TAP_RELEASE_TIMEOUT`]. The
/// kernel deletes a non-persistent TAP when its last queue closes, so when `link del` answers
/// the name is free again, as after `ip link del` (the churn soak re-adds the same name 0.4 s
/// later).
fn close_devs(devs: Vec<Arc<PortDev>>, name: &str) {
    let deadline = std::time::Instant::now() + TAP_RELEASE_TIMEOUT;
    for mut dev in devs {
        loop {
            match Arc::try_unwrap(dev) {
                Ok(d) => break drop(d),
                Err(d) if std::time::Instant::now() < deadline => {
                    dev = d;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => {
                    tracing::warn!(
                        port = name,
                        "a worker still holds the port's device: it goes when released"
                    );
                    return;
                }
            }
        }
    }
}

/// How long `link del` waits for the workers to release a port's devices.
const TAP_RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// A temporary name for a TAP on its way to another namespace, unique on this machine.
fn temp_name(key: u64) -> String {
    format!("umv{}p{key}", std::process::id() % 100_000)
}

/// Creates a port's TAP with one queue per worker, sets it up and moves it to its namespace.
fn create_tap(
    nl: &mut Netlink,
    key: u64,
    p: &PlannedPort,
    parent_mtu: u32,
    workers: usize,
) -> anyhow::Result<Vec<Tap>> {
    let name = match p.netns {
        Some(_) => temp_name(key),
        None => p.spec.device().to_string(),
    };
    let queues = Tap::create_queues(&name, workers)?;
    let tap = &queues[0];
    let link = nl
        .link_by_name(tap.name())?
        .with_context(|| format!("TAP {} vanished after creation", tap.name()))?;
    nl.set_mac(link.index, p.config.mac)?;
    nl.set_mtu(link.index, p.config.mtu.unwrap_or(parent_mtu))?;
    nl.set_txqlen(link.index, TAP_TXQLEN)?;
    if p.spec.kind == PortKind::Host {
        // Up first: the kernel refuses a route through a device that is down.
        nl.set_up(link.index, true)?;
        for a in &p.spec.addresses {
            nl.add_address(link.index, a.addr, a.prefix_len)?;
        }
        for r in &p.spec.routes {
            nl.add_route(&crate::net::netlink::Route {
                dst: r.addr,
                prefix_len: r.prefix_len,
                gateway: None,
                oif: link.index,
            })?;
        }
    }
    if let Some(ns) = &p.netns {
        nl.set_netns(link.index, ns)?;
        let mut there = Netlink::open_in(ns)?;
        let moved = there
            .link_by_name(&name)?
            .with_context(|| format!("TAP {name} is not in {ns} after the move"))?;
        there.set_name(moved.index, p.spec.device())?;
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use super::LogGate;

    #[test]
    fn log_gate_lets_a_burst_through_then_holds_and_counts() {
        let mut g = LogGate::default();
        for _ in 0..LogGate::BURST {
            assert_eq!(g.pass(), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(g.pass(), None);
        }
        assert_eq!(g.due(), None, "the gate is closed for a second");
        // A second later, one line shows the state reached and the 999 others held back.
        g.refilled -= LogGate::EVERY;
        assert_eq!(g.due(), Some(999));
        assert_eq!(g.due(), None, "nothing held any more");
    }
}
