//! The ports: their devices (a TAP per port, one queue per worker; attach; stream), created and
//! closed; the table their parent's workers forward with, rebuilt from their configuration and
//! live state; and the rate-limited lines logged when a port starts or stops forwarding.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{Daemon, err, internal};
use crate::control::plan::PlannedPort;
use crate::control::proto::{ControlError, ErrorKind};
use crate::control::spec::{PortKind, PortSpec};
use crate::control::watch::LiveState;
use crate::engine::admit::{Candidate, Refusal, admit};
use crate::engine::counters::{PortCounters, Sharded};
use crate::engine::dev::PortDev;
use crate::engine::stream::StreamPort;
use crate::engine::worker::{Command, PortHandle, PortSet};
use crate::forward::{MIN_MTU, Mode, PortConfig, PortTable};
use crate::net::{Netlink, Netns};
use crate::sys::attach::PacketPort;
use crate::sys::tap::Tap;
use crate::wire::mac::MacAddr;

/// TAP transmit queue (frames waiting for the engine to read them): the kernel's 1000 drops
/// under bursts (docs/performance.md#tap-devices).
const TAP_TXQLEN: u32 = 10_000;

/// One port.
#[derive(Debug)]
pub(super) struct PortEntry {
    pub(super) key: u64,
    pub(super) parent: String,
    /// As configured: created, then changed by `link set` and by its parent's MAC and MTU. The
    /// table's port is built from it ([`PortSpec::to_config`]) with the live state on top.
    pub(super) spec: PortSpec,
    /// Where its device is now.
    pub(super) place: Place,
    /// What the port's workers read and write: one queue of its TAP per worker, or (attach,
    /// stream) one device that worker 0 reads and every worker writes.
    pub(super) devs: Vec<Arc<PortDev>>,
    pub(super) counters: Sharded<PortCounters>,
    /// Who created the port (`LinkSpec::owner`).
    pub(super) owner: Option<String>,
    pub(super) live: Option<LiveState>,
    /// The MAC it is in the table with ([`admit`]); `None`: not forwarding.
    pub(super) admitted: Option<MacAddr>,
    /// Why it is up and yet out of the table (the kernel would have refused the `ip link set
    /// up` or the address change).
    pub(super) refused: Option<Refusal>,
    /// Its state-change log lines: a port flapping in its namespace cannot flood the log.
    log_gate: LogGate,
}

/// Where a port's device is: where the spec put it, until someone else moves or renames it
/// (Docker's AddInterface and Remove); the port follows (`Daemon::follow_device`).
#[derive(Debug)]
pub(super) struct Place {
    /// The key the watchers report the device under: a new one each time the port follows its
    /// device to another namespace, so that a late report from the old one is not taken for it;
    /// `None`: not watched (a stream port, or a device the engine let go of).
    pub(super) watch: Option<u64>,
    /// The device's name now.
    pub(super) dev: String,
    /// Its namespace, open; `None`: the engine's namespace.
    pub(super) netns: Option<Netns>,
    /// That namespace as `link show` names it (`None`: the engine's).
    pub(super) shown: Option<String>,
    /// Followed into a namespace nobody named to the engine: it lets go of it once nothing else
    /// holds it, so that the namespace can die and the kernel delete the TAP.
    pub(super) followed: bool,
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

impl Daemon {
    /// Creates a checked port's device, adds it to its parent and starts following it.
    pub(super) fn create(
        &mut self,
        parent: &str,
        mut p: PlannedPort,
        owner: Option<String>,
    ) -> anyhow::Result<()> {
        let mtu = self.parents[parent].config.mtu;
        if p.spec.mode == Mode::Passthru {
            // The kernel's passthru child takes its lower's MAC (`eth_hw_addr_inherit`),
            // whatever MAC was asked for; its TAP must have it too, or every unicast reaches
            // the port's stack as OTHERHOST.
            p.spec.mac = Some(self.parents[parent].config.mac);
        }
        let key = self.next_key;
        self.next_key += 1;
        let workers = self.opts.workers;
        let devs = match (p.spec.kind, p.spec.path.clone()) {
            (PortKind::Tap, _) if p.adopt => adopt_tap(&mut self.nl, &mut p, parent, workers)
                .map(|queues| queues.into_iter().map(PortDev::Tap).collect()),
            (PortKind::Tap | PortKind::Host, _) => {
                create_tap(&mut self.nl, key, &p, parent, mtu, workers)
                    .map(|queues| queues.into_iter().map(PortDev::Tap).collect())
            }
            (PortKind::Attach, _) => attach(&mut self.nl, &p.spec.name, p.netns.as_ref())
                .map(|a| vec![PortDev::Attach(a)]),
            (PortKind::Stream, Some(path)) => StreamPort::listen(&p.spec.name, &path)
                .map(|s| vec![PortDev::Stream(s)])
                .map_err(Into::into),
            (PortKind::Stream, None) => Err(anyhow::anyhow!("a stream port needs path=")),
        }
        .with_context(|| format!("creating port {}", p.spec.name))?;
        if let (true, Some(PortDev::Tap(t))) = (p.spec.persist, devs.first()) {
            // Once made: a port that failed on its way is not left behind.
            t.set_persist(true)
                .with_context(|| format!("making port {}'s TAP persistent", p.spec.name))?;
        }
        if p.spec.kind != PortKind::Stream {
            let ns = p.netns.as_ref().unwrap_or(&self.own_ns);
            self.watchers.port(ns, key, p.spec.device())?;
        }
        let place = Place {
            watch: (p.spec.kind != PortKind::Stream).then_some(key),
            dev: p.spec.device().to_string(),
            shown: p.spec.netns.clone(),
            netns: p.netns,
            followed: false,
        };
        self.ports.push(PortEntry {
            key,
            parent: parent.to_string(),
            spec: p.spec,
            place,
            devs: devs.into_iter().map(Arc::new).collect(),
            counters: Sharded::new(self.opts.workers),
            owner,
            live: None,
            admitted: None,
            refused: None,
            log_gate: LogGate::default(),
        });
        self.rebuild(parent);
        Ok(())
    }

    /// Runs `f` with a netlink socket in port `key`'s namespace and its TAP's ifindex.
    pub(super) fn on_port_link<T>(
        &mut self,
        key: u64,
        f: impl FnOnce(&mut Netlink, u32) -> crate::net::Result<T>,
    ) -> Result<T, ControlError> {
        let e = self
            .ports
            .iter()
            .find(|e| e.key == key)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, "the port is gone"))?;
        if e.place.watch.is_none() {
            let name = &e.spec.name;
            return Err(err(
                ErrorKind::NoSuchLink,
                format!("port {name} has no device any more"),
            ));
        }
        let name = e.place.dev.clone();
        let ifindex = e.live.as_ref().map(|l| l.ifindex);
        let mut nl_there;
        let nl = match &e.place.netns {
            Some(ns) => {
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
    pub(super) fn port_sets(&self, parent: &str, table: &Arc<PortTable>) -> Vec<PortSet> {
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

    /// The parent's ports as the table should see them now.
    pub(super) fn configs_of(&self, parent: &str, parent_mtu: u32) -> Vec<PortConfig> {
        self.ports
            .iter()
            .filter(|e| e.parent == parent)
            .map(|e| {
                let config = e.spec.to_config(&e.parent);
                apply_live(config, e.spec.kind, e.live.as_ref(), parent_mtu)
            })
            .collect()
    }

    /// A new table for `parent` from the configuration and every TAP's live state, handed to its
    /// worker with the matching port set. An up port whose MAC the kernel would have refused at
    /// that moment ([`admit`]: `ip link set up` or an address change failing with
    /// EADDRINUSE/EADDRNOTAVAIL) stays out of the table until its MAC or state changes. Each
    /// port's change of state is logged, at most once a second per port.
    pub(super) fn rebuild(&mut self, parent: &str) {
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

    /// The state lines of ports whose changes were held back by their [`LogGate`].
    pub(super) fn write_held_logs(&mut self) {
        for e in &mut self.ports {
            if let Some(held) = e.log_gate.due() {
                write_port_state(e, held);
            }
        }
    }
}

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
    let port = e.spec.name.as_str();
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
pub(super) fn effective_mac(e: &PortEntry) -> MacAddr {
    match (&e.live, e.spec.mode) {
        (Some(l), m) if m != Mode::Passthru && !e.spec.kind.is_vm() => l.mac,
        _ => e.spec.mac_on(&e.parent),
    }
}

/// The port as the table should see it: its configuration with its netdev's live state on top.
/// A VM port keeps its guest MAC and takes every group (the guest filters, as behind a
/// macvtap); a stream port, which has no netdev, is always up.
fn apply_live(
    mut p: PortConfig,
    kind: PortKind,
    live: Option<&LiveState>,
    parent_mtu: u32,
) -> PortConfig {
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
pub(super) fn bring_up_attached(
    nl: &mut Netlink,
    name: &str,
    ns: Option<&Netns>,
) -> anyhow::Result<u32> {
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
pub(super) fn close_devs(devs: Vec<Arc<PortDev>>, name: &str) {
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

/// Attaches one queue per worker to the existing persistent TAP of a persistent port (in its
/// namespace: `TUNSETIFF` by name resolves in the caller's). Only what the spec sets explicitly
/// is applied: its MAC (a passthru port's is the parent's) and its MTU; the device keeps its
/// name, state, addresses and routes, so a container using it notices nothing. A port given no
/// MAC takes the device's.
fn adopt_tap(
    nl: &mut Netlink,
    p: &mut PlannedPort,
    parent: &str,
    workers: usize,
) -> anyhow::Result<Vec<Tap>> {
    let name = p.spec.device().to_string();
    let adopt = || Tap::adopt(&name, workers);
    let queues = match &p.netns {
        Some(ns) => crate::net::in_netns(ns, adopt)??,
        None => adopt()?,
    };
    let mut there;
    let nl = match &p.netns {
        Some(ns) => {
            there = Netlink::open_in(ns)?;
            &mut there
        }
        None => nl,
    };
    let link = nl
        .link_by_name(&name)?
        .with_context(|| format!("TAP {name} vanished while being adopted"))?;
    match p.spec.mac {
        Some(_) => nl.set_mac(link.index, p.spec.mac_on(parent))?,
        None => p.spec.mac = link.mac,
    }
    if let Some(mtu) = p.spec.mtu {
        nl.set_mtu(link.index, mtu)?;
    }
    tracing::info!(port = %p.spec.name, device = name, "adopted an existing persistent TAP");
    Ok(queues)
}

/// Creates a port's TAP with one queue per worker, sets it up and moves it to its namespace.
fn create_tap(
    nl: &mut Netlink,
    key: u64,
    p: &PlannedPort,
    parent: &str,
    parent_mtu: u32,
    workers: usize,
) -> anyhow::Result<Vec<Tap>> {
    let name = match p.netns {
        Some(_) => temp_name(key),
        None => p.spec.device().to_string(),
    };
    // A persistent TAP is always multi-queue: an engine with any number of workers can adopt it.
    let queues = match p.spec.persist {
        true => Tap::create_multi_queue(&name, workers)?,
        false => Tap::create_queues(&name, workers)?,
    };
    let tap = &queues[0];
    let link = nl
        .link_by_name(tap.name())?
        .with_context(|| format!("TAP {} vanished after creation", tap.name()))?;
    nl.set_mac(link.index, p.spec.mac_on(parent))?;
    nl.set_mtu(link.index, p.spec.mtu.unwrap_or(parent_mtu))?;
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
    use std::collections::BTreeSet;

    use super::*;

    const CONFIGURED: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    const SEEN: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 2]);
    const GROUP: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);

    fn config(mode: Mode) -> PortConfig {
        PortConfig {
            up: false,
            mtu: Some(1400),
            ..PortConfig::new("p", mode, CONFIGURED)
        }
    }

    /// A netdev up, with another MAC than the configured one, an MTU, promisc and a group.
    fn live(mtu: u32) -> LiveState {
        LiveState {
            ifindex: 7,
            name: "p".into(),
            up: true,
            lower_up: true,
            mac: SEEN,
            mtu,
            promisc: true,
            allmulti: false,
            groups: BTreeSet::from([GROUP]),
        }
    }

    /// A port with no device: enough for what reads only its configuration and live state.
    fn entry(kind: PortKind, mode: Mode, live: Option<LiveState>) -> PortEntry {
        let mut spec: PortSpec = "name=p".parse().expect("a port spec");
        (spec.kind, spec.mode, spec.mac, spec.mtu) = (kind, mode, Some(CONFIGURED), Some(1400));
        PortEntry {
            key: 1,
            parent: "eth0".into(),
            place: Place {
                watch: Some(1),
                dev: "p".into(),
                netns: None,
                shown: None,
                followed: false,
            },
            spec,
            devs: Vec::new(),
            counters: Sharded::new(1),
            owner: None,
            live,
            admitted: None,
            refused: None,
            log_gate: LogGate::default(),
        }
    }

    #[test]
    fn apply_live_takes_a_tap_ports_netdev_state() {
        let p = apply_live(config(Mode::Bridge), PortKind::Tap, Some(&live(1300)), 1500);
        assert!(p.up);
        assert_eq!(p.mac, SEEN, "the TAP's MAC, once seen, is the port's");
        assert_eq!(p.mtu, Some(1300));
        assert!(p.promisc);
        assert!(!p.allmulti);
        assert_eq!(p.groups, BTreeSet::from([GROUP]));
        assert_eq!((p.name.as_str(), p.mode), ("p", Mode::Bridge));
    }

    #[test]
    fn apply_live_without_a_netdev_is_down_as_configured() {
        for kind in [PortKind::Tap, PortKind::Host, PortKind::Attach] {
            let p = apply_live(config(Mode::Bridge), kind, None, 1500);
            assert!(!p.up, "{kind}: no netdev seen, not up");
            assert_eq!(p.mac, CONFIGURED, "{kind}");
            assert_eq!(p.mtu, Some(1400), "{kind}");
            assert!(!p.promisc && p.groups.is_empty(), "{kind}");
        }
    }

    #[test]
    fn apply_live_clamps_the_mtu_to_the_parents() {
        let mtu =
            |seen| apply_live(config(Mode::Bridge), PortKind::Tap, Some(&live(seen)), 1500).mtu;
        assert_eq!(mtu(9000), Some(1500), "above the parent's: the parent's");
        assert_eq!(mtu(1500), Some(1500));
        assert_eq!(mtu(MIN_MTU), Some(MIN_MTU));
        assert_eq!(
            mtu(0),
            Some(MIN_MTU),
            "below the kernel's minimum: the minimum"
        );
    }

    #[test]
    fn apply_live_keeps_a_vm_ports_guest_mac_and_takes_every_group() {
        let p = apply_live(
            config(Mode::Bridge),
            PortKind::Attach,
            Some(&live(1500)),
            1500,
        );
        assert!(p.up);
        assert_eq!(
            p.mac, CONFIGURED,
            "the guest's MAC, not the host side's netdev's"
        );
        assert!(p.allmulti, "the guest filters, as behind a macvtap");
        assert_eq!(p.mtu, Some(1500));
        let down = apply_live(config(Mode::Bridge), PortKind::Attach, None, 1500);
        assert!(down.allmulti && !down.up);
    }

    #[test]
    fn apply_live_has_a_stream_port_always_up() {
        for seen in [None, Some(live(9000))] {
            let p = apply_live(config(Mode::Vepa), PortKind::Stream, seen.as_ref(), 1500);
            assert!(p.up, "a stream port has no netdev: always up");
            assert!(p.allmulti);
            assert_eq!(p.mac, CONFIGURED);
            assert_eq!(p.mtu, Some(1400), "as configured");
            assert!(
                !p.promisc && p.groups.is_empty(),
                "nothing taken from a netdev"
            );
        }
    }

    #[test]
    fn apply_live_keeps_a_passthru_ports_configured_mac() {
        let p = apply_live(
            config(Mode::Passthru),
            PortKind::Tap,
            Some(&live(1500)),
            1500,
        );
        assert_eq!(p.mac, CONFIGURED, "the parent's MAC, given at creation");
        assert!(p.up && p.promisc);
    }

    #[test]
    fn effective_mac_is_the_taps_once_seen_except_for_passthru_and_vm_ports() {
        let mac = |kind, mode, live| effective_mac(&entry(kind, mode, live));
        assert_eq!(mac(PortKind::Tap, Mode::Bridge, None), CONFIGURED);
        assert_eq!(mac(PortKind::Tap, Mode::Bridge, Some(live(1500))), SEEN);
        assert_eq!(mac(PortKind::Host, Mode::Bridge, Some(live(1500))), SEEN);
        assert_eq!(mac(PortKind::Tap, Mode::Source, Some(live(1500))), SEEN);
        assert_eq!(
            mac(PortKind::Tap, Mode::Passthru, Some(live(1500))),
            CONFIGURED
        );
        assert_eq!(
            mac(PortKind::Attach, Mode::Bridge, Some(live(1500))),
            CONFIGURED
        );
        assert_eq!(mac(PortKind::Stream, Mode::Bridge, None), CONFIGURED);
    }

    #[test]
    fn temp_name_is_unique_per_key_and_a_valid_interface_name() {
        let pid = std::process::id() % 100_000;
        assert_eq!(temp_name(1), format!("umv{pid}p1"));
        assert_ne!(temp_name(1), temp_name(11), "key 1 and key 11 differ");
        assert_ne!(temp_name(12), temp_name(112));
        for key in [1, 42, 999_999] {
            let name = temp_name(key);
            // IFNAMSIZ is 16 with the NUL: the kernel refuses a longer name.
            assert!(name.len() <= 15, "{name} is too long for an interface");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
            assert!(name.ends_with(&format!("p{key}")), "{name}");
        }
    }

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

    #[test]
    fn log_gate_says_how_many_were_held_on_the_next_line() {
        let mut g = LogGate::default();
        for _ in 0..LogGate::BURST {
            assert_eq!(g.pass(), Some(0));
        }
        assert_eq!(g.pass(), None);
        assert_eq!(g.pass(), None);
        g.refilled -= LogGate::EVERY;
        assert_eq!(
            g.pass(),
            Some(2),
            "a new change's line counts the two held back"
        );
        assert_eq!(g.due(), None, "nothing held: no extra line");
    }

    #[test]
    fn log_gate_held_line_for_a_single_change_counts_none_other() {
        let mut g = LogGate::default();
        for _ in 0..LogGate::BURST {
            g.pass();
        }
        assert_eq!(g.pass(), None);
        g.refilled -= LogGate::EVERY;
        assert_eq!(g.due(), Some(0), "the line shows that one change's state");
    }

    #[test]
    fn log_gate_refills_one_line_a_second_up_to_the_burst() {
        let mut g = LogGate::default();
        for _ in 0..LogGate::BURST {
            g.pass();
        }
        // One second: one line.
        g.refilled -= LogGate::EVERY;
        assert_eq!(g.pass(), Some(0));
        assert_eq!(g.pass(), None);
        // A long quiet time: a full burst again, never more.
        g.refilled -= LogGate::EVERY * 10;
        assert_eq!(g.pass(), Some(1), "the change held above is counted");
        for _ in 1..LogGate::BURST {
            assert_eq!(g.pass(), Some(0));
        }
        assert_eq!(g.pass(), None, "the burst is at most {}", LogGate::BURST);
    }
}
