//! Following ports and parents in their namespaces.
//!
//! Port state follows the TAP the way the kernel's hash follows a child: only a TAP that is
//! admin-up in its namespace is in the table. One watcher thread per namespace listens to
//! RTNLGRP_LINK there (up/down, MAC, MTU, promisc, allmulti, carrier) and reads the exact
//! link-layer multicast list from `/proc/thread-self/net/dev_mcast` every [`MCAST_POLL`] (joins
//! made with `ip maddr` produce no netlink event). The watcher of the engine's own namespace also
//! follows the parents' carrier and MTU. Changes go to the daemon as [`Event`]s.
//!
//! A port's device is followed by its ifindex once seen, so a rename in its namespace is a new
//! state (with the new name), not a disappearance. A device moved to another namespace is gone
//! from this one: the daemon asks the TAP's fd where it went and watches it there under a new
//! key. A watcher with nothing left to watch stops, and lets go of its namespace (which could
//! otherwise never die, nor delete the TAPs in it, as the kernel does).

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use hashbrown::HashMap;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;

use crate::net::mcast::{DevMcastEntry, parse_dev_mcast};
use crate::net::{LinkEvent, LinkInfo, LinkMonitor, Netlink, Netns, OperState};
use crate::wire::mac::MacAddr;

/// How often each namespace's multicast lists are re-read.
pub const MCAST_POLL: Duration = Duration::from_millis(100);

/// How long a watcher lets link changes gather before it looks at them.
pub const COALESCE: Duration = Duration::from_millis(2);

/// A port's state as its TAP shows it in its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveState {
    pub ifindex: u32,
    /// The device's name now (someone may have renamed it).
    pub name: String,
    pub up: bool,
    pub lower_up: bool,
    pub mac: MacAddr,
    pub mtu: u32,
    pub promisc: bool,
    pub allmulti: bool,
    pub groups: BTreeSet<MacAddr>,
}

/// What the watchers report.
#[derive(Debug)]
pub enum Event {
    /// `None`: the TAP is gone from its namespace (deleted, or the namespace went away).
    Port {
        key: u64,
        state: Option<LiveState>,
    },
    Carrier {
        parent: String,
        on: bool,
    },
    /// The parent's MTU changed (`ip link set P mtu N`).
    ParentMtu {
        parent: String,
        mtu: u32,
    },
    /// The parent's MAC changed (`ip link set P address MAC`).
    ParentMac {
        parent: String,
        mac: MacAddr,
    },
    ParentGone {
        parent: String,
    },
    /// A parent that was gone exists again (re-created with the same name).
    ParentBack {
        parent: String,
        carrier: bool,
    },
}

#[derive(Debug)]
enum WatchCmd {
    Port {
        key: u64,
        name: String,
    },
    Forget {
        key: u64,
    },
    /// Follow a parent's carrier, MTU and MAC, starting from what the daemon knows of it.
    Parent {
        name: String,
        device: String,
        known: ParentLook,
    },
    ForgetParent {
        name: String,
    },
}

#[derive(Debug)]
struct Watcher {
    cmds: Sender<WatchCmd>,
    thread: JoinHandle<()>,
    /// Ports and parents it follows: at 0 it stops.
    users: usize,
}

/// Every watcher thread, one per namespace (by inode).
#[derive(Debug)]
pub struct Watchers {
    by_inode: HashMap<u64, Watcher>,
    /// Watchers told to stop (nothing left to follow), joined at [`Watchers::stop`].
    retired: Vec<JoinHandle<()>>,
    events: Sender<Event>,
    stop: Arc<AtomicBool>,
}

impl Watchers {
    pub fn new(events: Sender<Event>) -> Watchers {
        Watchers {
            by_inode: HashMap::new(),
            retired: Vec::new(),
            events,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn watcher(&mut self, ns: &Netns) -> anyhow::Result<&mut Watcher> {
        let inode = ns.inode()?;
        if !self.by_inode.contains_key(&inode) {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (ns, events, stop) = (ns.try_clone()?, self.events.clone(), Arc::clone(&self.stop));
            let thread = std::thread::Builder::new()
                .name(format!("umacvlan-watch-{inode}"))
                .spawn(move || {
                    if let Err(e) = watch(&ns, &rx, &events, &stop) {
                        tracing::error!("watching {ns} stopped: {}", crate::errors::chain(&e));
                    }
                })?;
            let users = 0;
            self.by_inode.insert(
                inode,
                Watcher {
                    cmds: tx,
                    thread,
                    users,
                },
            );
        }
        Ok(self.by_inode.get_mut(&inode).expect("inserted above"))
    }

    /// Something more to follow in `ns`.
    fn send(&mut self, ns: &Netns, cmd: WatchCmd) -> anyhow::Result<()> {
        let w = self.watcher(ns)?;
        w.cmds
            .send(cmd)
            .map_err(|_| anyhow::anyhow!("the watcher of {ns} stopped"))?;
        w.users += 1;
        Ok(())
    }

    /// One thing less to follow in `ns`; the watcher stops when nothing is left.
    fn release(&mut self, ns: &Netns, cmd: WatchCmd) -> anyhow::Result<()> {
        let inode = ns.inode()?;
        let Some(w) = self.by_inode.get_mut(&inode) else {
            return Ok(());
        };
        w.users = w.users.saturating_sub(1);
        let sent = w.cmds.send(cmd);
        if w.users == 0 {
            let w = self.by_inode.remove(&inode).expect("found above");
            // The closed channel stops the thread once it has read the commands before.
            drop(w.cmds);
            self.reap_retired();
            self.retired.push(w.thread);
        }
        sent.map_err(|_| anyhow::anyhow!("the watcher of {ns} stopped"))
    }

    /// Follows port `key`, a device called `name` in `ns`.
    pub fn port(&mut self, ns: &Netns, key: u64, name: &str) -> anyhow::Result<()> {
        let name = name.to_string();
        self.send(ns, WatchCmd::Port { key, name })
    }

    pub fn forget(&mut self, ns: &Netns, key: u64) -> anyhow::Result<()> {
        self.release(ns, WatchCmd::Forget { key })
    }

    /// Follows the carrier, MTU and MAC of parent `link` in `ns` (the engine's namespace), which
    /// is the device named `device` (an emulated 802.1Q sub-interface's is its lower device).
    pub fn parent(&mut self, ns: &Netns, link: &LinkInfo, device: &str) -> anyhow::Result<()> {
        let cmd = WatchCmd::Parent {
            name: link.name.clone(),
            device: device.to_string(),
            known: ParentLook::of(link),
        };
        self.send(ns, cmd)
    }

    pub fn forget_parent(&mut self, ns: &Netns, name: &str) -> anyhow::Result<()> {
        let name = name.to_string();
        self.release(ns, WatchCmd::ForgetParent { name })
    }

    /// Joins the retired watchers that have finished: a thread nobody joins keeps its stack
    /// (the soak's churn, a namespace per port, grew the engine by ~28 KB/s before this).
    fn reap_retired(&mut self) {
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(JoinHandle::is_finished);
        for t in done {
            let _ = t.join();
        }
        self.retired = running;
    }

    /// Stops and joins every watcher.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, w) in self.by_inode {
            drop(w.cmds);
            let _ = w.thread.join();
        }
        for t in self.retired {
            let _ = t.join();
        }
    }
}

struct WatchedPort {
    key: u64,
    name: String,
    link: Option<LinkInfo>,
    /// What was last reported (`None`: nothing yet).
    sent: Option<Option<LiveState>>,
}

impl WatchedPort {
    /// Whether the device `index` called `name` is this port's: by ifindex once the device
    /// was seen (it may have been renamed), else by name.
    fn is(&self, index: u32, name: &str) -> bool {
        match &self.link {
            Some(l) => l.index == index,
            None => self.name == name,
        }
    }
}

/// What the daemon follows of a parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ParentLook {
    carrier: bool,
    mtu: u32,
    mac: Option<MacAddr>,
}

impl ParentLook {
    fn of(l: &LinkInfo) -> ParentLook {
        ParentLook {
            carrier: l.flags.lower_up,
            mtu: l.mtu,
            mac: l.mac,
        }
    }
}

struct WatchedParent {
    name: String,
    /// The device looked at: the parent itself, or an emulated sub-interface's lower device.
    device: String,
    /// What the daemon was last told: the worker's carrier, the MTU the ports were sized by,
    /// the MAC the table holds.
    known: ParentLook,
    /// Read the parent once: a change before the monitor opened would otherwise go unseen.
    fresh: bool,
    /// The last state seen in an event; `Some(None)`: it was removed.
    seen: Option<Option<ParentLook>>,
    /// The parent disappeared and has not come back yet.
    gone: bool,
}

/// The watcher loop for one namespace; runs on its own thread, which it moves into `ns`.
fn watch(
    ns: &Netns,
    cmds: &Receiver<WatchCmd>,
    tx: &Sender<Event>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
    crate::sys::caps::settle().context("dropping capabilities")?;
    let mut monitor = LinkMonitor::open_current()?;
    let mut nl = Netlink::open()?;
    let mut ports: Vec<WatchedPort> = Vec::new();
    let mut parents: Vec<WatchedParent> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        loop {
            let cmd = match cmds.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Empty) => break,
                // Nothing left to follow here: let go of the namespace.
                Err(TryRecvError::Disconnected) => return Ok(()),
            };
            match cmd {
                WatchCmd::Port { key, name } => {
                    let link = nl.link_by_name(&name)?;
                    ports.push(WatchedPort {
                        key,
                        name,
                        link,
                        sent: None,
                    });
                }
                WatchCmd::Forget { key } => ports.retain(|p| p.key != key),
                WatchCmd::Parent {
                    name,
                    device,
                    known,
                } => parents.push(WatchedParent {
                    name,
                    device,
                    known,
                    fresh: true,
                    seen: None,
                    gone: false,
                }),
                WatchCmd::ForgetParent { name } => parents.retain(|p| p.name != name),
            }
        }
        let mut fds = [PollFd::new(monitor.as_fd(), PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(MCAST_POLL).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, wait).is_ok_and(|n| n > 0) {
            // Let a burst of changes (a port flapping in its namespace) arrive, and report
            // where it ended: at most one look per COALESCE.
            std::thread::sleep(COALESCE);
        }
        for ev in monitor.drain()? {
            match ev {
                LinkEvent::Changed(l) => {
                    for p in parents.iter_mut().filter(|p| p.device == l.name) {
                        p.seen = Some(Some(ParentLook::of(&l)));
                    }
                    if let Some(p) = ports.iter_mut().find(|p| p.is(l.index, &l.name)) {
                        // A rename is followed: the device is known by its ifindex.
                        p.name.clone_from(&l.name);
                        p.link = Some(l);
                    }
                }
                LinkEvent::Removed { name, index } => {
                    for p in parents.iter_mut().filter(|p| p.device == name) {
                        p.seen = Some(None);
                    }
                    if let Some(p) = ports.iter_mut().find(|p| p.is(index, &name)) {
                        p.link = None;
                    }
                }
                LinkEvent::Overrun => {
                    for p in &mut ports {
                        p.link = match &p.link {
                            Some(l) => nl.link_by_index(l.index)?,
                            None => nl.link_by_name(&p.name)?,
                        };
                        if let Some(l) = &p.link {
                            p.name.clone_from(&l.name);
                        }
                    }
                    for p in &mut parents {
                        p.fresh = true;
                    }
                }
            }
        }
        for p in &mut parents {
            for ev in parent_events(p, &mut nl)? {
                let _ = tx.send(ev);
            }
        }
        for l in ports.iter().filter_map(|p| p.link.as_ref()) {
            if l.flags.up && l.flags.lower_up && l.operstate == OperState::Unknown {
                // Look like a macvlan child (`state UP`), which a TAP never does by itself.
                if let Err(e) = nl.set_operstate_up(l.index) {
                    tracing::debug!(port = %l.name, "setting operstate up failed: {e}");
                }
            }
        }
        if ports.is_empty() {
            continue;
        }
        let groups = read_groups()?;
        for p in &mut ports {
            let state = p.link.as_ref().and_then(|l| live_state(l, &groups));
            if p.sent.as_ref() != Some(&state) {
                p.sent = Some(state.clone());
                if tx.send(Event::Port { key: p.key, state }).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// What changed about a watched parent since the last look: gone, back, carrier, MTU, MAC.
fn parent_events(p: &mut WatchedParent, nl: &mut Netlink) -> anyhow::Result<Vec<Event>> {
    let now = match p.seen.take() {
        Some(s) => s,
        None if p.fresh => nl.link_by_name(&p.device)?.as_ref().map(ParentLook::of),
        None if p.gone => None,
        None => Some(p.known),
    };
    p.fresh = false;
    let parent = p.name.clone();
    let mut events = Vec::new();
    match (now, p.gone) {
        (None, false) => {
            p.gone = true;
            events.push(Event::ParentGone { parent });
        }
        (Some(now), true) => {
            (p.gone, p.known) = (false, now);
            events.push(Event::ParentBack {
                parent,
                carrier: now.carrier,
            });
        }
        (Some(now), false) => {
            let was = std::mem::replace(&mut p.known, now);
            if now.mtu != was.mtu {
                events.push(Event::ParentMtu {
                    parent: parent.clone(),
                    mtu: now.mtu,
                });
            }
            if let Some(mac) = now.mac.filter(|m| Some(*m) != was.mac) {
                events.push(Event::ParentMac {
                    parent: parent.clone(),
                    mac,
                });
            }
            if now.carrier != was.carrier {
                events.push(Event::Carrier {
                    parent,
                    on: now.carrier,
                });
            }
        }
        (None, true) => {}
    }
    Ok(events)
}

fn live_state(l: &LinkInfo, groups: &[DevMcastEntry]) -> Option<LiveState> {
    Some(LiveState {
        ifindex: l.index,
        name: l.name.clone(),
        up: l.flags.up,
        lower_up: l.flags.lower_up,
        mac: l.mac?,
        mtu: l.mtu,
        promisc: l.flags.promisc,
        allmulti: l.flags.allmulti,
        groups: groups
            .iter()
            .filter(|e| e.name == l.name)
            .filter_map(DevMcastEntry::mac)
            .collect(),
    })
}

/// Every device's link-layer multicast list in the calling thread's namespace.
fn read_groups() -> anyhow::Result<Vec<DevMcastEntry>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev_mcast")
        .context("reading /proc/thread-self/net/dev_mcast")?;
    parse_dev_mcast(&text).map_err(|e| anyhow::anyhow!("parsing dev_mcast: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(name: &str, seen: Option<u32>) -> WatchedPort {
        WatchedPort {
            key: 1,
            name: name.into(),
            link: seen.map(|index| LinkInfo {
                index,
                name: name.into(),
                ..LinkInfo::default()
            }),
            sent: None,
        }
    }

    #[test]
    fn a_port_is_its_device_by_ifindex_once_seen_else_by_name() {
        let unseen = watched("c0", None);
        assert!(unseen.is(7, "c0"));
        assert!(!unseen.is(7, "eth0"));
        let seen = watched("c0", Some(7));
        assert!(seen.is(7, "eth0"), "renamed: still the port's device");
        assert!(!seen.is(8, "c0"), "another device that took the old name");
    }
}
