//! `umacvlan doctor`: pre-flight diagnostics in plain words, each a finding with a level and
//! what to do. It reads the machine and changes nothing.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{ControlArg, Failure};
use crate::control::client;
use crate::control::plan::{PlanError, default_route_interface, find_parent};
use crate::control::proto::{LinkFilter, Reply, Request};
use crate::net::{LinkInfo, Netlink, is_wireless};
use crate::wire::vlan::Emulated;

/// Check a parent and this machine before running umacvlan, in plain words.
///
/// Every finding has a level (ok, warn, error), says what was found and, when something must
/// be done, what: the parent exists, is up and has carrier; it is not Wi-Fi (macvlan does not
/// work there); its driver (a hypervisor or cloud NIC needs a setting outside this machine to
/// accept extra MACs); promiscuity; how many MACs the ports need; the kernel features the engine
/// uses (/dev/net/tun, AF_PACKET, TPACKET_V3); and the host<->child rule. Nothing is changed.
///
/// A parent named LOWER.VID that does not exist is the 802.1Q sub-interface the engine emulates
/// on LOWER: the `vlan` finding says so, and the other checks are LOWER's.
///
/// Without --parent, the interface of the default route. Exit status: 0 no error found, 1 at
/// least one error finding, 2 bad input (an unknown parent: nothing to check).
///
/// Examples:
///
///   umacvlan doctor --parent eth0
///   umacvlan doctor -j | jq '.findings[] | select(.level != "ok")'
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DoctorArgs {
    /// The parent to check (default: the interface of the default route).
    #[arg(long, value_name = "P")]
    parent: Option<String>,
    /// JSON: {"parent", "findings": [{"check", "level", "message", "fix"}]}.
    #[arg(short = 'j', long = "json")]
    json: bool,
    #[command(flatten)]
    control: ControlArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Error,
}

/// One finding: a stable `check` name, its level, what was found and what to do.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    pub fix: Option<String>,
}

fn finding(check: &'static str, level: Level, message: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        level,
        message,
        fix: fix.map(str::to_string),
    }
}

/// What a hypervisor or cloud NIC driver needs before frames from extra MACs pass.
fn driver_advice(driver: &str) -> Option<&'static str> {
    Some(match driver {
        "vmxnet3" => {
            "VMware: set Promiscuous mode and Forged transmits to Accept on the vSwitch port group (MAC address changes too, for passthru)"
        }
        "hv_netvsc" => {
            "Hyper-V: enable MAC address spoofing on this VM's network adapter (Set-VMNetworkAdapter -MacAddressSpoofing On)"
        }
        "ena" | "gve" => {
            "the cloud fabric (AWS ENA / GCP gVNIC) drops frames from MACs it did not assign: macvlan children will not be reached; use ipvlan or the provider's secondary-IP mechanism"
        }
        "virtio_net" => {
            "the host's bridge or macvtap must accept the children's MACs (libvirt: trustGuestRxFilters='yes' on the interface, no MAC filter on the host bridge)"
        }
        _ => return None,
    })
}

/// The parent's findings (it exists); `ports`: the running engine's ports on it, if it answered.
pub fn parent_findings(
    link: &LinkInfo,
    driver: Option<&str>,
    ports: Option<usize>,
) -> Vec<Finding> {
    use Level::{Error, Ok, Warn};
    let p = &link.name;
    let mut out = Vec::new();
    let ether = link.link_type == 1 && !link.flags.loopback && link.mac.is_some();
    out.push(match ether {
        true => finding("parent", Ok, format!("{p} exists and is Ethernet"), None),
        false => finding(
            "parent",
            Error,
            format!(
                "{p} is not an Ethernet device (link type {})",
                link.link_type
            ),
            Some("name an Ethernet interface as the parent"),
        ),
    });
    out.push(match link.flags.up {
        true => finding("parent_up", Ok, format!("{p} is up"), None),
        false => finding(
            "parent_up",
            Error,
            format!("{p} is down: nothing is received or sent"),
            Some(&format!("ip link set {p} up")),
        ),
    });
    out.push(match link.flags.lower_up {
        true => finding("carrier", Ok, format!("{p} has carrier"), None),
        false => finding(
            "carrier",
            Warn,
            format!("{p} has no carrier: its ports show NO-CARRIER until it has"),
            Some("check the cable, the switch port or the peer"),
        ),
    });
    out.push(match is_wireless(p) {
        false => finding("wireless", Ok, format!("{p} is not wireless"), None),
        true => finding(
            "wireless",
            Error,
            format!(
                "{p} is Wi-Fi: an access point drops frames from MACs that did not associate, so macvlan children get nothing"
            ),
            Some("use ipvlan (children share the parent's MAC) or a 4-address (WDS) link"),
        ),
    });
    out.push(match (driver, link.kind.as_deref()) {
        (Some(d), _) => match driver_advice(d) {
            Some(fix) => finding(
                "driver",
                Warn,
                format!("{p} uses driver {d}: extra MACs are filtered outside this machine"),
                Some(fix),
            ),
            None => finding("driver", Ok, format!("{p} uses driver {d}"), None),
        },
        (None, kind) => finding(
            "driver",
            Ok,
            format!(
                "{p} is a virtual device ({}): no NIC filters its MACs",
                kind.unwrap_or("no driver")
            ),
            None,
        ),
    });
    // IFF_PROMISC in the flags is only `ip link set promisc on`; packet sockets raise the count.
    out.push(match link.promiscuity > 0 || link.flags.promisc {
        true => finding(
            "promiscuous",
            Ok,
            format!(
                "{p} is promiscuous (promiscuity {}): it accepts every MAC",
                link.promiscuity
            ),
            None,
        ),
        false => finding(
            "promiscuous",
            Ok,
            format!(
                "{p} is not promiscuous now; umacvlan raises it as the kernel's macvlan does: while a passthru port (without nopromisc) is up, and on a parent without a unicast filter (veth, bridge) while any other port is up"
            ),
            Some(&format!(
                "with a passthru port up, or a port up on a veth or bridge parent, `ip -d link show {p}` must show promiscuity 1 or more"
            )),
        ),
    });
    let macs = match ports {
        Some(n) => format!("the running engine has {n} port(s) on {p}: {n} extra MAC(s)"),
        None => "each port needs a MAC of its own (no engine answered)".to_string(),
    };
    out.push(finding(
        "mac_count",
        Ok,
        format!(
            "{macs}. The engine adds each up port's MAC to {p}'s unicast filter, as the kernel's macvlan does; a NIC whose filter is full (its size is not visible from userspace) goes promiscuous by itself. What can still drop them is upstream: switch port security, a vSwitch, a cloud fabric (see driver)"
        ),
        None,
    ));
    out.push(finding(
        "host_to_child",
        Warn,
        format!(
            "this host cannot reach its own macvlan children through {p}, nor they it (the kernel rule umacvlan keeps)"
        ),
        Some(&format!(
            "add a host port: umacvlan link add shim0 parent {p} kind host ipaddr ADDR/32 route CHILDREN/PREFIX"
        )),
    ));
    out
}

/// A parent named `LOWER.VID` with no device of its own: what the engine does instead of the
/// `8021q` module (the findings after it are the lower device's).
fn vlan_finding(parent: &str, v: &Emulated) -> Finding {
    let (lower, vid) = (&v.lower, v.vid);
    finding(
        "vlan",
        Level::Ok,
        format!(
            "{parent} does not exist: umacvlan emulates it as the 802.1Q sub-interface of {lower} with VID {vid} (no 8021q module needed). Frames tagged {vid} on {lower} are its ports' (untagged when they get them); its ports' frames leave {lower} tagged {vid}, priority 0; untagged frames, priority tags (VID 0), other VIDs and 802.1ad tags stay {lower}'s. Carrier, MTU and MAC are {lower}'s; the checks below are of {lower}"
        ),
        Some(&format!(
            "the switch port behind {lower} must carry VID {vid} tagged (a trunk)"
        )),
    )
}

/// The kernel features the engine needs.
pub fn kernel_findings() -> Vec<Finding> {
    use Level::{Error, Ok};
    let mut out = Vec::new();
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    out.push(match tun {
        Result::Ok(_) => finding("tun", Ok, "/dev/net/tun opens".into(), None),
        Err(e) => finding(
            "tun",
            Error,
            format!("/dev/net/tun cannot be opened: {e}; ports are TAP devices"),
            Some("modprobe tun (CONFIG_TUN); run as root"),
        ),
    });
    let (packet, v3) = match crate::sys::probe_packet() {
        Result::Ok(()) => (None, None),
        Err(("af_packet", e)) => (Some(e), None),
        Err((_, e)) => (None, Some(e)),
    };
    out.push(match &packet {
        None => finding("af_packet", Ok, "AF_PACKET sockets open".into(), None),
        Some(e) => finding(
            "af_packet",
            Error,
            format!("an AF_PACKET socket cannot be opened: {e}"),
            Some("run as root (CAP_NET_RAW); modprobe af_packet (CONFIG_PACKET)"),
        ),
    });
    out.push(match (&packet, v3) {
        (None, None) => finding(
            "tpacket_v3",
            Ok,
            "TPACKET_V3 rings are available".into(),
            None,
        ),
        (Some(_), _) => finding(
            "tpacket_v3",
            Error,
            "TPACKET_V3 not checked: no AF_PACKET socket".into(),
            None,
        ),
        (None, Some(e)) => finding(
            "tpacket_v3",
            Error,
            format!("PACKET_VERSION TPACKET_V3 refused: {e}"),
            Some("a kernel of 3.2 or later"),
        ),
    });
    out
}

/// The driver bound to `name` (`/sys/class/net/NAME/device/driver`), `None` for a virtual device.
fn driver_of(name: &str) -> Option<String> {
    let link = std::fs::read_link(Path::new("/sys/class/net").join(name).join("device/driver"));
    link.ok()?
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
}

pub fn run(a: DoctorArgs) -> Result<ExitCode, Failure> {
    let parent = match a.parent {
        Some(p) => p,
        None => {
            default_route_interface().ok_or_else(|| Failure::usage(PlanError::NoDefaultRoute))?
        }
    };
    let mut nl = Netlink::open().map_err(anyhow::Error::from)?;
    let (link, vlan) = match find_parent(&mut nl, &parent) {
        Ok(found) => found,
        Err(PlanError::Netlink(e)) => return Err(anyhow::Error::from(e).into()),
        Err(e) => return Err(Failure::usage(e)),
    };
    let ports = match client::request(&a.control.path, Request::LinkShow(LinkFilter::default())) {
        Ok(Reply::Links { links }) => Some(links.iter().filter(|l| l.parent == parent).count()),
        _ => None,
    };
    let mut findings: Vec<Finding> = vlan.iter().map(|v| vlan_finding(&parent, v)).collect();
    findings.extend(parent_findings(
        &link,
        driver_of(&link.name).as_deref(),
        ports,
    ));
    findings.extend(kernel_findings());
    let out = if a.json {
        let v = serde_json::json!({"parent": parent, "findings": findings});
        format!("{v}\n")
    } else {
        let mut s = format!("umacvlan doctor: parent {parent}\n");
        for f in &findings {
            let level = serde_json::to_value(f.level).unwrap_or_default();
            let level = level.as_str().unwrap_or_default();
            s += &format!("{level:<6} {:<14} {}\n", f.check, f.message);
            if let Some(fix) = &f.fix {
                s += &format!("{:<21} fix: {fix}\n", "");
            }
        }
        s
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing to stdout")?;
    Ok(match findings.iter().any(|f| f.level == Level::Error) {
        true => ExitCode::from(super::EXIT_FAILURE),
        false => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(up: bool) -> LinkInfo {
        LinkInfo {
            name: "eth9".into(),
            link_type: 1,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            flags: crate::net::IfFlags {
                up,
                lower_up: up,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn level(f: &[Finding], check: &str) -> Level {
        f.iter().find(|x| x.check == check).unwrap().level
    }

    #[test]
    fn drivers_and_states_in_plain_words() {
        let f = parent_findings(&link(true), Some("vmxnet3"), Some(3));
        assert_eq!(level(&f, "driver"), Level::Warn);
        let d = f.iter().find(|x| x.check == "driver").unwrap();
        assert!(d.fix.as_deref().unwrap().contains("Forged transmits"));
        assert!(f[6].message.contains("3 port(s) on eth9: 3 extra MAC(s)"));
        for (drv, word) in [
            ("hv_netvsc", "MAC address spoofing"),
            ("ena", "ipvlan"),
            ("gve", "secondary-IP"),
            ("virtio_net", "trustGuestRxFilters"),
        ] {
            assert!(driver_advice(drv).unwrap().contains(word), "{drv}");
        }
        assert!(driver_advice("e1000e").is_none());
        let f = parent_findings(&link(false), Some("e1000e"), None);
        assert_eq!(level(&f, "parent_up"), Level::Error);
        assert_eq!(level(&f, "carrier"), Level::Warn);
        assert_eq!(level(&f, "driver"), Level::Ok);
        assert_eq!(level(&f, "host_to_child"), Level::Warn);
    }
}
