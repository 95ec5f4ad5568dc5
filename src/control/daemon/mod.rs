//! The running engine: its parents and ports, changed while it forwards.
//!
//! Each parent has one or more workers (ring, TX socket, a queue of every TAP); every port belongs
//! to one parent. With several workers the parent's rings form a fanout group and every TAP has
//! one queue per worker, so a flow always meets the same worker (see [`EngineOptions::workers`]).
//! Adding, removing or changing a port builds a new table for its parent and swaps it into its
//! workers together with the new port sets ([`PortSet`]): the forwarding path never takes a lock,
//! and no other port loses or reorders a frame.
//!
//! Ports are TAPs created non-persistent (a crashed engine leaves none behind) unless asked
//! (`persist`: they outlive the engine, and an existing one is adopted), under a temporary
//! name, given their MAC and MTU, then moved and renamed into their namespace, admin-down like a
//! fresh `ip link add ... type macvlan`. Their live state comes from the [`watch`](super::watch)
//! threads. Requests follow the kernel's control-plane rules
//! (docs/design.md#the-parent-and-the-control-plane).
//!
//! A VM's port is not a TAP of ours ([`PortDev`]): `attach` opens a packet socket on a netdev
//! someone else owns (brought up, never deleted; followed by the watchers, and re-bound when a
//! netdev of that name comes back), `stream` listens on a Unix socket (always in the table; a copy
//! for it without a peer is a `no_peer` drop). Both keep their guest MAC from the configuration.
//!
//! By concern: this file holds the engine, its loop and its shutdown; `parents` the parents and
//! their workers; `ports` the ports' devices, tables and state lines; `links` the `link`
//! requests; `events` what the watchers report; `observe` follow, trace and stats; `reload` the
//! configuration file.
//!
//! [`PortSet`]: crate::engine::worker::PortSet
//! [`PortDev`]: crate::engine::dev::PortDev

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use super::plan::{Plan, PlanError};
use super::watch::{Event, Watchers};
use crate::control::Call;
use crate::control::config::Config;
use crate::control::proto::{ControlError, ErrorKind, Reply, Request, Response};
use crate::control::service::Service;
use crate::engine::observe::Observers;
use crate::engine::priority::WorkerPriority;
use crate::engine::worker::WorkerGroup;
use crate::forward::PortTable;
use crate::net::{Netlink, Netns};
use crate::sys::ring::RingConfig;
use crate::wire::vlan::VidSet;

mod events;
mod links;
mod observe;
mod parents;
mod ports;
mod reload;

use parents::ParentRun;
use ports::PortEntry;

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
    /// The scheduling every worker asks for itself at start (`run --worker-priority`).
    pub priority: WorkerPriority,
    /// `run --spin-us`: how long each worker polls after activity before sleeping (0: never).
    pub spin_us: u32,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            // `run`'s default with one worker: `--ring auto`.
            ring: RingConfig::DEFAULT,
            per_frame: Some(RingConfig::V2),
            workers: 1,
            priority: WorkerPriority::default(),
            spin_us: 0,
        }
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
    /// Set once a worker logged that its priority was refused: one warning per engine.
    priority_warned: Arc<AtomicBool>,
    /// Per device: the VIDs of the 802.1Q sub-interfaces emulated on it, which its own parent
    /// leaves to them.
    vids: BTreeMap<String, Arc<VidSet>>,
    /// When the namespaces ports followed their devices into were last checked for being
    /// held by anything but the engine.
    held_checked: std::time::Instant,
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
            vids: BTreeMap::new(),
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
            priority_warned: Arc::default(),
            held_checked: std::time::Instant::now(),
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
    /// far is gone again (TAPs are non-persistent, persistent ones made here are deleted, adopted
    /// ones are left as they were; the parent's promiscuity ends with the membership sockets).
    pub fn start(plan: Plan, opts: EngineOptions) -> anyhow::Result<Daemon> {
        let mut d = Daemon::new(opts)?;
        let parent = plan.parent.name.clone();
        d.ensure_parent(plan.parent, plan.parent_config)?;
        let mut made: Vec<String> = Vec::new();
        for p in plan.ports {
            let persistent = (p.spec.persist && !p.adopt).then(|| p.spec.name.clone());
            if let Err(e) = d.create(&parent, p, None) {
                for name in &made {
                    let _ = d.link_del(name);
                }
                return Err(e);
            }
            made.extend(persistent);
        }
        Ok(d)
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
                        self.let_go_of_orphans();
                    }
                    Err(_) => anyhow::bail!("every port watcher stopped"),
                },
                recv(ticks) -> _ => self.watchdog(),
                default(Duration::from_millis(200)) => {
                    self.write_held_logs();
                    self.let_go_of_orphans();
                    let finished = |p: &ParentRun| p.worker.as_ref().is_some_and(WorkerGroup::is_finished);
                    if let Some((name, _)) = self.parents.iter().find(|(_, p)| finished(p)) {
                        anyhow::bail!("the forwarding worker of {name} stopped");
                    }
                }
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

    fn entry(&self, name: &str) -> Result<&PortEntry, ControlError> {
        self.ports
            .iter()
            .find(|e| e.spec.name == name)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, format!("no port named {name}")))
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
