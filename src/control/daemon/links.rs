//! `link add`, `link set`, `link del`, `link show`: the kernel's rules for a macvlan link, every
//! check before any change; and which configuration changes `link set` can make in place.

use super::ports::{PortEntry, close_devs, effective_mac};
use super::{Daemon, err, internal, plan_err};
use crate::control::plan::{
    ParentOptions, PlanError, PlannedPort, check_parent, check_port_place, default_route_interface,
    table_error_kind,
};
use crate::control::proto::{
    ControlError, ErrorKind, LinkChange, LinkSpec, LinkStats, LinkView, MacaddrOp,
};
use crate::control::spec::{HOST_MODE, PortKind, PortSpec, derived_mac};
use crate::engine::admit::{Refusal, address_busy};
use crate::engine::dev::PortDev;
use crate::forward::{DEFAULT_BC_QUEUE_LEN, Mode, ParentConfig, PortConfig, PortTable, check_mtu};
use crate::wire::mac::MacAddr;

impl Daemon {
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
        let spec = PortSpec::from(&l);
        spec.check_kind(&l.name)
            .map_err(|e| err(ErrorKind::BadRequest, e.to_string()))?;
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
        configs.push(PortConfig {
            up: false,
            ..spec.to_config(&parent)
        });
        PortTable::build(pconfig.clone(), configs)
            .map_err(|e| err(table_error_kind(&e), e.to_string()))?;
        // A path one of our ports listens on: refused before any probe connects to it.
        if let Some(path) = &spec.path
            && let Some(e) = self
                .ports
                .iter()
                .find(|e| e.spec.path.as_ref() == Some(path))
        {
            let path = path.display().to_string();
            let same = PlanError::SamePath(e.spec.name.clone(), spec.name.clone(), path);
            return Err(plan_err(same));
        }
        let (netns, adopt) = check_port_place(&mut self.nl, &spec, &parent).map_err(plan_err)?;
        self.ensure_parent(link, pconfig.clone())
            .map_err(internal)?;
        if let Some(run) = self.parents.get_mut(&parent) {
            run.config.bc_cutoff = pconfig.bc_cutoff;
        }
        let planned = PlannedPort { spec, netns, adopt };
        self.create(&parent, planned, l.owner.clone())
            .map_err(|e| match not_adoptable(&e) {
                true => err(ErrorKind::Exists, crate::errors::chain(&e)),
                false => internal(e),
            })?;
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
            .map(|e| (e.spec.name.clone(), e.admitted));
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
        if let Some(watch) = e.place.watch {
            let ns = e.place.netns.as_ref().unwrap_or(&self.own_ns);
            self.watchers.forget(ns, watch).map_err(internal)?;
        }
        if let (true, PortDev::Tap(t)) = (e.spec.persist, &*e.devs[0]) {
            // The device goes with the last queue, as a non-persistent TAP does.
            if let Err(err) = t.set_persist(false) {
                tracing::warn!(port = name, "TUNSETPERSIST 0 failed: {err}");
            }
        }
        self.rebuild(&e.parent);
        if !self.ports.iter().any(|p| p.parent == e.parent) {
            self.close_parent(&e.parent);
        }
        close_devs(e.devs, name);
        tracing::info!(port = name, "port deleted");
        Ok(())
    }

    /// `link set`: the kernel's changelink rules (§8), every check before any change.
    pub fn link_set(&mut self, c: LinkChange) -> Result<LinkView, ControlError> {
        let e = self.entry(&c.name)?;
        let (key, parent, old_mode) = (e.key, e.parent.clone(), e.spec.mode);
        let pconfig = self.parents[&parent].config.clone();
        let new_mode = c.mode.unwrap_or(old_mode);
        if e.spec.kind == PortKind::Host && new_mode != Mode::Bridge {
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
        if let Some(mtu) = c.mtu {
            check_mtu(&c.name, mtu, pconfig.mtu)
                .map_err(|e| err(ErrorKind::InvalidArgument, format!("{e} (EINVAL)")))?;
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
        if (c.address.is_some() || c.mtu.is_some()) && !self.entry(&c.name)?.spec.kind.is_vm() {
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
        let cfg = &mut e.spec;
        if c.address.is_some() {
            cfg.mac = c.address;
        }
        if c.mtu.is_some() {
            cfg.mtu = c.mtu;
        }
        if c.bcqueuelen.is_some() {
            cfg.bcqueuelen = c.bcqueuelen;
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

    fn view(&self, e: &PortEntry) -> Result<LinkView, ControlError> {
        let run = &self.parents[&e.parent];
        let id = run.keys.iter().position(|k| *k == e.key);
        let in_table = id.map(|i| run.table.port(crate::forward::PortId::nth(i)));
        let live = e.live.as_ref();
        let c = &e.counters.total();
        let stream = match &*e.devs[0] {
            PortDev::Stream(s) => Some(s.connected()),
            _ => None,
        };
        Ok(LinkView {
            name: e.spec.name.clone(),
            ifindex: live.map(|l| l.ifindex),
            address: effective_mac(e),
            mtu: live.map_or(e.spec.mtu.unwrap_or(run.config.mtu), |l| l.mtu),
            parent: e.parent.clone(),
            netns: e.place.shown.clone(),
            ifname: (e.place.dev != e.spec.name).then(|| e.place.dev.clone()),
            owner: e.owner.clone(),
            up: stream.is_some() || live.is_some_and(|l| l.up),
            lower_up: stream.unwrap_or(false) || live.is_some_and(|l| l.lower_up),
            forwarding: in_table.is_some_and(|p| p.is_up()),
            refused: e.refused.as_ref().map(ToString::to_string),
            promisc: live.is_some_and(|l| l.promisc),
            allmulti: live.is_some_and(|l| l.allmulti),
            mode: e.spec.mode,
            nopromisc: e.spec.flags.nopromisc,
            nodst: e.spec.flags.nodst,
            bcqueuelen: e.spec.bcqueuelen.unwrap_or(DEFAULT_BC_QUEUE_LEN),
            usedbcqueuelen: run.table.bc_queue_len_used(),
            bclim: run.config.bc_cutoff,
            macaddr: e.spec.sources.iter().copied().collect(),
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
            kind: e.spec.kind,
            path: e.spec.path.clone(),
            trust_guest_mac: e.spec.trust_guest_mac,
            persist: e.spec.persist,
        })
    }
}

/// Whether creating a port failed because its existing device cannot be adopted.
fn not_adoptable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::sys::tap::TapError>(),
            Some(crate::sys::tap::TapError::NotAdoptable { .. })
        )
    })
}

/// The `link set` that turns port `old` into `new`, when changelink can (same parent,
/// namespace, flags and kind, path and trust of a VM port, addresses and routes of a host port;
/// not to or from passthru). A setting dropped from the file goes back to its default: the
/// parent's MTU, the derived MAC, bcqueuelen 1000.
pub(super) fn in_place(old: &LinkSpec, new: &LinkSpec, parent_mtu: u32) -> Option<LinkChange> {
    let fixed = |s: &LinkSpec| {
        let vm = (s.kind, s.path.clone(), s.trust_guest_mac);
        let host = (s.addresses.clone(), s.routes.clone());
        let place = (s.parent.clone(), s.netns.clone(), s.ifname.clone());
        (place, s.nopromisc, s.nodst, vm, host, s.persist)
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
    let bcq = |s: &LinkSpec| s.bcqueuelen.unwrap_or(DEFAULT_BC_QUEUE_LEN);
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 9]);
    const SOURCE: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 10]);

    fn spec() -> LinkSpec {
        LinkSpec {
            name: "p".into(),
            parent: Some("eth0".into()),
            ..LinkSpec::default()
        }
    }

    /// What reloading `old` as `new` does, on a parent of MTU 1500.
    fn reload(old: LinkSpec, new: LinkSpec) -> Option<LinkChange> {
        in_place(&old, &new, 1500)
    }

    fn nothing() -> LinkChange {
        LinkChange {
            name: "p".into(),
            ..LinkChange::default()
        }
    }

    #[test]
    fn in_place_of_the_same_port_changes_nothing() {
        assert_eq!(reload(spec(), spec()), Some(nothing()));
        let full = LinkSpec {
            mode: Some(Mode::Source),
            address: Some(MAC),
            mtu: Some(1400),
            bcqueuelen: Some(10),
            bclim: Some(5),
            macaddr: vec![SOURCE],
            ..spec()
        };
        assert_eq!(reload(full.clone(), full), Some(nothing()));
    }

    #[test]
    fn in_place_changes_mode_mac_mtu_bcqueuelen_and_sources() {
        let changed = |new: LinkSpec| reload(spec(), new).expect("in place");
        let mode = changed(LinkSpec {
            mode: Some(Mode::Vepa),
            ..spec()
        });
        assert_eq!(
            mode,
            LinkChange {
                mode: Some(Mode::Vepa),
                ..nothing()
            }
        );
        let mac = changed(LinkSpec {
            address: Some(MAC),
            ..spec()
        });
        assert_eq!(mac.address, Some(MAC));
        let mtu = changed(LinkSpec {
            mtu: Some(1400),
            ..spec()
        });
        assert_eq!(mtu.mtu, Some(1400));
        let bcq = changed(LinkSpec {
            bcqueuelen: Some(10),
            ..spec()
        });
        assert_eq!(bcq.bcqueuelen, Some(10));
        let sources = changed(LinkSpec {
            mode: Some(Mode::Source),
            macaddr: vec![SOURCE],
            ..spec()
        });
        assert_eq!(sources.mode, Some(Mode::Source));
        assert_eq!(sources.macaddr, Some(MacaddrOp::Set(vec![SOURCE])));
    }

    #[test]
    fn in_place_takes_a_dropped_setting_back_to_its_default() {
        let set = LinkSpec {
            mode: Some(Mode::Vepa),
            address: Some(MAC),
            mtu: Some(1400),
            bcqueuelen: Some(10),
            ..spec()
        };
        let back = reload(set, spec()).expect("in place");
        assert_eq!(back.mode, Some(Mode::Bridge), "the default mode");
        assert_eq!(
            back.address,
            Some(derived_mac("eth0", "p")),
            "the derived MAC"
        );
        assert_eq!(back.mtu, Some(1500), "the parent's MTU");
        assert_eq!(back.bcqueuelen, Some(DEFAULT_BC_QUEUE_LEN));
        // Writing out a default that was implied changes nothing.
        let explicit = LinkSpec {
            mode: Some(Mode::Bridge),
            address: Some(derived_mac("eth0", "p")),
            mtu: Some(1500),
            bcqueuelen: Some(DEFAULT_BC_QUEUE_LEN),
            ..spec()
        };
        let same = reload(spec(), explicit).expect("in place");
        assert_eq!(
            same.mode,
            Some(Mode::Bridge),
            "None and Some(Bridge) differ as given"
        );
        assert_eq!(
            (same.address, same.mtu, same.bcqueuelen),
            (None, None, None)
        );
    }

    #[test]
    fn in_place_never_sets_bclim_a_parents_setting() {
        let new = LinkSpec {
            bclim: Some(3),
            ..spec()
        };
        assert_eq!(reload(spec(), new), Some(nothing()));
    }

    #[test]
    fn in_place_refuses_what_changelink_cannot_do() {
        let recreated = [
            LinkSpec {
                parent: Some("eth1".into()),
                ..spec()
            },
            LinkSpec {
                netns: Some("ns1".into()),
                ..spec()
            },
            LinkSpec {
                ifname: Some("eth0".into()),
                ..spec()
            },
            LinkSpec {
                nopromisc: true,
                ..spec()
            },
            LinkSpec {
                nodst: true,
                ..spec()
            },
            LinkSpec {
                kind: PortKind::Host,
                ..spec()
            },
            LinkSpec {
                kind: PortKind::Stream,
                path: Some(PathBuf::from("/run/vm.sock")),
                ..spec()
            },
            LinkSpec {
                trust_guest_mac: true,
                ..spec()
            },
            LinkSpec {
                addresses: vec!["10.0.0.1/24".parse().unwrap()],
                ..spec()
            },
            LinkSpec {
                routes: vec!["10.1.0.0/16".parse().unwrap()],
                ..spec()
            },
            LinkSpec {
                mode: Some(Mode::Passthru),
                ..spec()
            },
        ];
        for new in recreated {
            assert_eq!(reload(spec(), new.clone()), None, "{new:?}");
            assert_eq!(reload(new.clone(), spec()), None, "{new:?}");
        }
        let stream = |path: &str| LinkSpec {
            kind: PortKind::Stream,
            path: Some(PathBuf::from(path)),
            ..spec()
        };
        assert_eq!(reload(stream("/run/a.sock"), stream("/run/b.sock")), None);
    }

    #[test]
    fn in_place_keeps_a_passthru_ports_mac_the_parents() {
        let passthru = |address| LinkSpec {
            mode: Some(Mode::Passthru),
            address,
            mtu: Some(1400),
            ..spec()
        };
        let change = reload(passthru(None), passthru(Some(MAC))).expect("in place");
        assert_eq!(
            change.address, None,
            "a passthru port's MAC is its parent's"
        );
        assert_eq!(change.mtu, None);
    }
}
