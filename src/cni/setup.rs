//! Inside the container's namespace: apply an IPAM result to the port's device (as upstream's
//! `ipam.ConfigureIface` does), and compare the device with a `prevResult` (CHECK).

use std::net::IpAddr;

use super::conf::{Interface, IpConf, RouteConf};
use super::{CniError, code};
use crate::net::{LinkInfo, Netlink, Netns, Route, in_netns};
use crate::wire::mac::MacAddr;

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

/// One sysctl under `/proc/sys/net` to set, and whether failing to set it is an error.
struct Sysctl {
    path: String,
    value: &'static str,
    required: bool,
}

/// Sets `sysctls` in `ns` (`/proc/sys/net` follows the thread's namespace).
fn set_sysctls(ns: &Netns, sysctls: &[Sysctl]) -> Result<(), CniError> {
    let results = in_netns(ns, || {
        sysctls
            .iter()
            .map(|s| std::fs::write(format!("/proc/sys/net/{}", s.path), s.value))
            .collect::<Vec<_>>()
    })
    .map_err(setup_err)?;
    for (s, r) in sysctls.iter().zip(results) {
        match r {
            Err(e) if s.required => {
                return Err(CniError::new(
                    code::SETUP,
                    format!("set net/{} to {}: {e}", s.path, s.value),
                ));
            }
            Err(e) => tracing::debug!("net/{}: {e} (IPv6 off in the container)", s.path),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// What upstream sets: `arp_notify=1` (a gratuitous ARP when the link comes up, so neighbours
/// learn the new MAC at once) and, where IPv6 is on, `ndisc_notify=1`; with an IPv6 address,
/// IPv6 switched on for `lo` and the device and `keep_addr_on_down=1`.
fn sysctls_for(ifname: &str, ips: &[IpConf]) -> Vec<Sysctl> {
    let set = |path: String, value, required| Sysctl {
        path,
        value,
        required,
    };
    let mut out = vec![
        set(format!("ipv4/conf/{ifname}/arp_notify"), "1", true),
        set(format!("ipv6/conf/{ifname}/ndisc_notify"), "1", false),
    ];
    if ips.iter().any(|ip| ip.address.is_ipv6()) {
        out.push(set("ipv6/conf/lo/disable_ipv6".into(), "0", true));
        out.push(set(format!("ipv6/conf/{ifname}/disable_ipv6"), "0", true));
        out.push(set(
            format!("ipv6/conf/{ifname}/keep_addr_on_down"),
            "1",
            true,
        ));
    }
    out
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
    set_sysctls(&ns, &sysctls_for(ifname, ips))?;
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

/// How long DEL, GC and a rolled-back ADD wait for a deleted port's device to leave the
/// container (the engine closes the TAP a moment after it answers).
const GONE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits until no device `ifname` is left in namespace `netns` (a name or path), so that the
/// same name can be used again at once. A namespace that no longer exists counts as done.
pub fn wait_gone(netns: &str, ifname: &str) -> Result<(), CniError> {
    let Ok(ns) = Netns::open(netns) else {
        return Ok(());
    };
    let mut nl = Netlink::open_in(&ns).map_err(setup_err)?;
    let deadline = std::time::Instant::now() + GONE_TIMEOUT;
    while nl.link_by_name(ifname).map_err(setup_err)?.is_some() {
        if std::time::Instant::now() > deadline {
            return Err(CniError::new(
                code::TRY_AGAIN,
                format!("the deleted port's device {ifname} is still in {netns}"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
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
