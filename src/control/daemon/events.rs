//! What the watchers report: a port's new live state, a parent's carrier, MTU or MAC, a parent
//! gone or back.

use super::Daemon;
use super::ports::bring_up_attached;
use crate::control::watch::{Event, LiveState};
use crate::engine::dev::PortDev;
use crate::engine::worker::Command;

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
        let ns = e.netns.as_ref();
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
