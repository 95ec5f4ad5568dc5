//! What the watchers report: a port's new live state, a parent's carrier, MTU or MAC, a parent
//! gone or back; and a port following its device when someone else moves or renames it.

use std::time::{Duration, Instant};

use super::Daemon;
use super::ports::{Place, bring_up_attached};
use crate::control::watch::{Event, LiveState};
use crate::engine::dev::PortDev;
use crate::engine::worker::Command;
use crate::net::Netns;
use crate::net::netns::{describe, held_elsewhere};

/// How often the namespaces ports followed their devices into are checked for being held by
/// anything but the engine.
const HELD_CHECK: Duration = Duration::from_secs(1);

impl Daemon {
    /// `first` and every event queued behind it. Port changes only record the new live state,
    /// and each parent they touched is rebuilt once at the end: a port flapping in its namespace
    /// costs one table per batch of events, not one per event.
    pub(super) fn on_events(&mut self, first: Event) -> anyhow::Result<()> {
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
                // A report under a key the port no longer has is from before it moved.
                let Some(i) = self.ports.iter().position(|e| e.place.watch == Some(key)) else {
                    return Ok(None);
                };
                if state.is_none() && self.follow_device(i) {
                    return Ok(Some(self.ports[i].parent.clone()));
                }
                self.reattach(i, state.as_ref());
                let e = &mut self.ports[i];
                if let Some(l) = &state {
                    e.place.dev.clone_from(&l.name);
                }
                e.live = state;
                return Ok(Some(e.parent.clone()));
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
    fn reattach(&mut self, i: usize, state: Option<&LiveState>) {
        let e = &self.ports[i];
        let (PortDev::Attach(a), Some(l)) = (&*e.devs[0], state) else {
            return;
        };
        if a.ifindex() == l.ifindex {
            return;
        }
        let ns = e.place.netns.as_ref();
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
}

impl Daemon {
    /// Port `i`'s device is gone from the namespace it was watched in. If the port's TAP fd still
    /// has a device (`TUNGETIFF`), someone moved it (or renamed it before its watcher saw it):
    /// the port follows it to its namespace now (`TUNGETDEVNETNS`), watched there under a new
    /// key, and keeps forwarding as soon as the device is up there. Returns whether it did; a
    /// deleted TAP is gone, as before.
    fn follow_device(&mut self, i: usize) -> bool {
        let PortDev::Tap(tap) = &*self.ports[i].devs[0] else {
            return false;
        };
        let Ok(dev) = tap.device() else {
            return false;
        };
        let port = self.ports[i].spec.name.clone();
        let moved = tap
            .device_netns()
            .map_err(anyhow::Error::from)
            .and_then(|fd| self.move_place(i, Netns::from(fd), dev.name));
        match moved {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(%port, "cannot follow the port's device: {}", crate::errors::chain(&e));
                false
            }
        }
    }

    /// Port `i`'s device is `dev` in `ns` now: watched there under a new key, unless that is
    /// where it was watched already.
    fn move_place(&mut self, i: usize, ns: Netns, dev: String) -> anyhow::Result<bool> {
        let inode = ns.inode()?;
        let own = self.own_ns.inode()?;
        let e = &self.ports[i];
        let was = e.place.netns.as_ref().unwrap_or(&self.own_ns);
        if inode == was.inode()? && dev == e.place.dev {
            return Ok(false);
        }
        if let Some(watch) = e.place.watch {
            self.watchers.forget(was, watch)?;
        }
        let named = e.spec.netns.as_deref().and_then(|n| Netns::open(n).ok());
        let (netns, shown, followed) = if inode == own {
            (None, None, false)
        } else if named.map(|n| n.inode()).transpose()? == Some(inode) {
            (Some(ns), e.spec.netns.clone(), false)
        } else {
            (Some(ns), Some(describe(inode)), true)
        };
        let watch = self.next_key;
        self.next_key += 1;
        let place = netns.as_ref().unwrap_or(&self.own_ns);
        self.watchers.port(place, watch, &dev)?;
        let e = &mut self.ports[i];
        tracing::info!(
            port = %e.spec.name,
            device = %dev,
            netns = shown.as_deref().unwrap_or("the engine's"),
            "following the port's device"
        );
        e.place = Place {
            watch: Some(watch),
            dev,
            netns,
            shown,
            followed,
        };
        e.live = None;
        Ok(true)
    }

    /// Lets go of every namespace a port followed its device into that nothing but the engine
    /// holds any more (its container is gone and its name unmounted): the kernel can then destroy
    /// it and delete the TAP in it, as it deletes a macvlan child with its namespace. The port
    /// stays, with no device, as after `ip link del`. At most once per [`HELD_CHECK`].
    pub(super) fn let_go_of_orphans(&mut self) {
        if self.held_checked.elapsed() < HELD_CHECK {
            return;
        }
        self.held_checked = Instant::now();
        // Several ports may share a namespace (a container with two networks): look once each.
        let mut held: hashbrown::HashMap<u64, bool> = hashbrown::HashMap::new();
        let orphans: Vec<usize> = (0..self.ports.len())
            .filter(|&i| {
                let p = &self.ports[i].place;
                p.followed
                    && p.netns
                        .as_ref()
                        .and_then(|ns| ns.inode().ok())
                        .is_some_and(|inode| {
                            !*held.entry(inode).or_insert_with(|| held_elsewhere(inode))
                        })
            })
            .collect();
        for i in orphans {
            let e = &mut self.ports[i];
            let (watch, netns) = (e.place.watch.take(), e.place.netns.take());
            (e.place.followed, e.live) = (false, None);
            let (port, parent) = (e.spec.name.clone(), e.parent.clone());
            let shown = e.place.shown.clone().unwrap_or_default();
            if let (Some(watch), Some(ns)) = (watch, &netns)
                && let Err(err) = self.watchers.forget(ns, watch)
            {
                tracing::warn!(%port, "{}", crate::errors::chain(&err));
            }
            tracing::info!(
                %port,
                netns = %shown,
                "nothing but the engine holds the namespace the port's device is in: letting go (the kernel deletes the device with it)"
            );
            self.rebuild(&parent);
        }
    }
}
