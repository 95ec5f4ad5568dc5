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
use crate::control::spec::{HOST_MODE, PortKind, derived_mac};
use crate::engine::admit::{Refusal, address_busy};
use crate::engine::dev::PortDev;
use crate::forward::{MIN_MTU, Mode, ParentConfig, PortTable};
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
