//! Inside the container's namespace: apply an IPAM result to the port's device (as upstream's
//! `ipam.ConfigureIface` does), and compare the device with a `prevResult` (CHECK).

use std::net::IpAddr;

use super::conf::{Interface, IpConf, RouteConf};
use super::{CniError, code};
use crate::mac::MacAddr;
use crate::net::{LinkInfo, Netlink, Netns, Route, in_netns};

/// The error and its causes, `: `-separated (the kernel's errno is a cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn setup_err(e: impl std::error::Error) -> CniError {
    CniError::new(code::SETUP, chain(&e))
}

fn find_link(nl: &mut Netlink, ifname: &str, netns: &str) -> Result<LinkInfo, CniError> {
    nl.link_by_name(ifname)
        .map_err(setup_err)?
        .ok_or_else(|| CniError::new(code::SETUP, format!("no device {ifname} in {netns}")))
}

/// Sets `net.ipv4.conf.IFNAME.arp_notify=1` (a gratuitous ARP when the link comes up, so
/// neighbours learn the new MAC at once) and, where IPv6 is on, `net.ipv6.conf.IFNAME.
/// ndisc_notify=1`, in `ns` (`/proc/sys/net` follows the thread's namespace).
fn notify_sysctls(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    let write = |path: String| std::fs::write(&path, "1").map_err(|e| (path, e));
    let (v4, v6) = in_netns(ns, || {
        (
            write(format!("/proc/sys/net/ipv4/conf/{ifname}/arp_notify")),
            write(format!("/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify")),
        )
    })
    .map_err(setup_err)?;
    v4.map_err(|(p, e)| CniError::new(code::SETUP, format!("set {p}: {e}")))?;
    if let Err((p, e)) = v6 {
        tracing::debug!("{p}: {e} (IPv6 off in the container)");
    }
    Ok(())
}

/// Brings the device up and, given an IPAM result, sets the notify sysctls, adds the
/// addresses, then the routes (a route without `gw` goes via the first gateway of its family,
/// as upstream does).
pub fn configure(
    netns: &str,
    ifname: &str,
    ipam: Option<(&[IpConf], &[RouteConf])>,
) -> Result<(), CniError> {
    let ns = Netns::open(netns).map_err(setup_err)?;
    let mut nl = Netlink::open_in(&ns).map_err(setup_err)?;
    let link = find_link(&mut nl, ifname, netns)?;
    let Some((ips, routes)) = ipam else {
        return nl.set_up(link.index, true).map_err(setup_err);
    };
    notify_sysctls(&ns, ifname)?;
    for ip in ips {
        nl.add_address(link.index, ip.address, ip.prefix_len)
            .map_err(setup_err)?;
    }
    nl.set_up(link.index, true).map_err(setup_err)?;
    let gateway = |v4: bool| {
        ips.iter()
            .filter_map(|i| i.gateway)
            .find(|g| g.is_ipv4() == v4)
    };
    for r in routes {
        nl.add_route(&Route {
            dst: r.dst,
            prefix_len: r.prefix_len,
            gateway: r.gw.or_else(|| gateway(r.dst.is_ipv4())),
            oif: link.index,
        })
        .map_err(setup_err)?;
    }
    Ok(())
}

/// CHECK inside the namespace: the device exists with the MAC of `prevResult`, has every
/// address, and every route exists (same destination and, when given, gateway).
pub fn check(iface: &Interface, ips: &[IpConf], routes: &[RouteConf]) -> Result<(), CniError> {
    let bad = |m: String| CniError::new(code::CHECK, m);
    let sys = |e: crate::net::Error| CniError::new(code::CHECK, chain(&e));
    let ns = Netns::open(&iface.sandbox).map_err(sys)?;
    let mut nl = Netlink::open_in(&ns).map_err(sys)?;
    let link = nl
        .link_by_name(&iface.name)
        .map_err(sys)?
        .ok_or_else(|| bad(format!("no device {} in {}", iface.name, iface.sandbox)))?;
    if link.mac != Some(iface.mac) {
        return Err(bad(format!(
            "{} has MAC {}, prevResult says {}",
            iface.name,
            link.mac.map_or("none".into(), |m: MacAddr| m.to_string()),
            iface.mac
        )));
    }
    let have = nl.addresses(link.index).map_err(sys)?;
    if let Some(ip) = ips
        .iter()
        .find(|ip| !have.contains(&(ip.address, ip.prefix_len)))
    {
        return Err(bad(format!(
            "{} lacks address {}/{} of prevResult",
            iface.name, ip.address, ip.prefix_len
        )));
    }
    let table = nl.routes().map_err(sys)?;
    let matches = |r: &RouteConf, t: &Route| {
        t.dst == r.dst && t.prefix_len == r.prefix_len && r.gw.is_none_or(|g| t.gateway == Some(g))
    };
    if let Some(r) = routes.iter().find(|r| !table.iter().any(|t| matches(r, t))) {
        let via =
            r.gw.map(|g: IpAddr| format!(" via {g}"))
                .unwrap_or_default();
        return Err(bad(format!(
            "no route to {}/{}{via} of prevResult in {}",
            r.dst, r.prefix_len, iface.sandbox
        )));
    }
    Ok(())
}
