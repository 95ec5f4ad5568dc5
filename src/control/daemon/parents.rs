//! The parents: each one's workers (rings, send sockets), started with its first port, closed
//! with its last, and followed as the kernel's macvlan follows its lower: gone and back, MTU, MAC.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;

use super::Daemon;
use super::ports::PortEntry;
use crate::control::plan::{ParentOptions, check_parent};
use crate::engine::adaptive::Auto;
use crate::engine::counters::{ParentCounters, Sharded};
use crate::engine::observe::ObserverCache;
use crate::engine::worker::{Command, PortSet, Worker, WorkerGroup};
use crate::forward::{LowerFilter, Mode, ParentConfig, PortTable};
use crate::net::LinkInfo;
use crate::sys::membership::Memberships;
use crate::sys::ring::{RingConfig, RingVersion, RxRing};
use crate::sys::tx::TxSocket;
use crate::wire::mac::MacAddr;
use crate::wire::vlan::VidSet;

/// One parent and its workers.
#[derive(Debug)]
pub(super) struct ParentRun {
    pub(super) link: LinkInfo,
    pub(super) config: ParentConfig,
    /// `None` while the parent is gone (deleted); its ports wait, down, for it to come back.
    pub(super) worker: Option<WorkerGroup>,
    pub(super) counters: Sharded<ParentCounters>,
    pub(super) table: Arc<PortTable>,
    /// Port keys, aligned with `table`.
    pub(super) keys: Vec<u64>,
    /// The parent's promiscuity and filters as `table`'s ports ask them (`None` while it is
    /// gone); kept in step by [`ParentRun::sync_lower`] at every table change.
    lower: Option<Memberships>,
}

impl ParentRun {
    /// Makes the parent's memberships what the table's UP ports ask of it, as the kernel's
    /// macvlan does to its lower (`LowerFilter`): with no port up, nothing.
    pub(super) fn sync_lower(&mut self) {
        let Some(m) = &mut self.lower else {
            return;
        };
        if let Err(e) = m.apply(&LowerFilter::of(&self.table)) {
            let parent = &self.link.name;
            tracing::warn!(%parent, "setting the parent's promiscuity and filters failed: {e}");
        }
    }
}

/// The device a parent forwards on: itself, or an emulated sub-interface's lower device.
fn device_of(config: &ParentConfig) -> &str {
    config.vlan.as_ref().map_or(&config.name, |v| &v.lower)
}

/// The VIDs emulated on the device a parent with `config` forwards on: one set for the device's
/// own parent and its sub-interfaces.
fn vids_in(vids: &mut BTreeMap<String, Arc<VidSet>>, config: &ParentConfig) -> Arc<VidSet> {
    let device = device_of(config).to_string();
    Arc::clone(vids.entry(device).or_default())
}

impl Daemon {
    /// Starts the workers of a parent that has none yet.
    pub(super) fn ensure_parent(
        &mut self,
        link: LinkInfo,
        config: ParentConfig,
    ) -> anyhow::Result<()> {
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
        let vids = vids_in(&mut self.vids, &config);
        let worker = self.spawn_workers(&link, &config, sets, &counters, &vids)?;
        let lower = Memberships::open(link.index)
            .with_context(|| format!("opening the membership socket on {}", link.name))?;
        self.watchers
            .parent(&self.own_ns, &link, device_of(&config))?;
        if let Some(v) = &config.vlan {
            vids.insert(v.vid);
            tracing::info!(parent = %link.name, lower = %v.lower, vid = v.vid, "no such device: the engine is its 802.1Q sub-interface on the lower device");
        }
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
        config: &ParentConfig,
        sets: Vec<PortSet>,
        counters: &Sharded<ParentCounters>,
        vids: &Arc<VidSet>,
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
        // A sub-interface's rings take its VID's frames only, filtered in the kernel before any
        // copy; the lower device's own parent skips them in the worker (`Claim`).
        if let Some(v) = &config.vlan {
            let filtered = rings.iter().chain(autos.iter().map(|a| &a.v2));
            for ring in filtered {
                ring.keep_only_vid(v.vid)
                    .with_context(|| format!("filtering {}'s ring for VID {}", link.name, v.vid))?;
            }
        }
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
                priority: self.opts.priority,
                priority_warned: Arc::clone(&self.priority_warned),
                vids: Arc::clone(vids),
                spin: std::time::Duration::from_micros(u64::from(self.opts.spin_us)),
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
        let group = WorkerGroup::new(workers);
        let priority = group.priority();
        tracing::info!(parent = %link.name, "parent opened; {n} worker(s), each with {rings}; worker priority {priority}; spin {} us", self.opts.spin_us);
        Ok(group)
    }

    /// The parent disappeared: its worker stops, its ports lose carrier and wait, and every
    /// other parent goes on (unless `exit_on_parent_loss`).
    pub(super) fn parent_gone(&mut self, parent: &str) -> anyhow::Result<()> {
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
                tracing::warn!(port = %e.spec.name, "clearing carrier failed: {err}");
            }
        }
        tracing::error!(%parent, "parent disappeared: its ports are down until it comes back");
        Ok(())
    }

    /// A parent that was gone exists again: reopen it and forward for its ports again.
    pub(super) fn parent_back(&mut self, parent: &str, carrier: bool) -> anyhow::Result<()> {
        let Some(run) = self.parents.get(parent) else {
            return Ok(());
        };
        let opts = ParentOptions {
            bc_cutoff: run.config.bc_cutoff,
        };
        let (link, mut config) = check_parent(&mut self.nl, parent, opts)?;
        config.bc_cutoff = run.config.bc_cutoff;
        let sets = self.port_sets(parent, &run.table);
        let vids = vids_in(&mut self.vids, &config);
        let worker = self.spawn_workers(&link, &config, sets, &run.counters, &vids)?;
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
    pub(super) fn parent_mtu(&mut self, parent: &str, mtu: u32) {
        let Some(run) = self.parents.get_mut(parent) else {
            return;
        };
        let old = run.config.mtu;
        if old != mtu {
            tracing::info!(%parent, from = old, to = mtu, "parent MTU changed");
        }
        (run.config.mtu, run.link.mtu) = (mtu, mtu);
        let now = |e: &PortEntry| e.live.as_ref().map_or(e.spec.mtu.unwrap_or(old), |l| l.mtu);
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
            if e.spec.mtu > Some(mtu) {
                e.spec.mtu = Some(mtu);
            }
            let name = e.spec.name.clone();
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
    pub(super) fn parent_mac(&mut self, parent: &str, mac: MacAddr) {
        let Some(run) = self.parents.get_mut(parent) else {
            return;
        };
        tracing::info!(%parent, from = %run.config.mac, to = %mac, "parent MAC changed");
        (run.config.mac, run.link.mac) = (mac, Some(mac));
        let mut taps = Vec::new();
        for e in self
            .ports
            .iter_mut()
            .filter(|e| e.parent == parent && e.spec.mode == Mode::Passthru)
        {
            e.spec.mac = Some(mac);
            if !e.spec.kind.is_vm() {
                taps.push((e.key, e.spec.name.clone()));
            }
        }
        for (key, name) in taps {
            if let Err(e) = self.on_port_link(key, |nl, index| nl.set_mac(index, mac)) {
                tracing::warn!(port = %name, "giving the passthru port the parent's new MAC failed: {}", e.message);
            }
        }
        self.rebuild(parent);
    }

    pub(super) fn close_parent(&mut self, name: &str) {
        if let Some(run) = self.parents.remove(name) {
            if let Some(v) = &run.config.vlan {
                vids_in(&mut self.vids, &run.config).remove(v.vid);
            }
            if let Err(e) = self.watchers.forget_parent(&self.own_ns, name) {
                tracing::warn!("{}", crate::errors::chain(&e));
            }
            if let Some(Err(e)) = run.worker.map(WorkerGroup::stop) {
                tracing::warn!(parent = name, "the worker failed: {e}");
            }
            tracing::info!(parent = name, "parent closed (no ports left)");
        }
    }
}
