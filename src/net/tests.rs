//! Root tests: each builds its own namespaces (`umv-<pid>-net-<n>`) and reads kernel state back,
//! with our own parser and with `ip -j`. Without root they panic and say why.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::netlink::*;
use super::testutil::{ip, ip_json, netns};
use super::*;
use crate::wire::mac::MacAddr;

fn nl(ns: &Netns) -> Netlink {
    Netlink::open_in(ns).expect("open netlink in test namespace")
}

fn link(nl: &mut Netlink, name: &str) -> LinkInfo {
    nl.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no device {name}"))
}

fn ip_link(ns: &str, dev: &str) -> serde_json::Value {
    ip_json(&["-n", ns, "-d", "link", "show", "dev", dev])[0].clone()
}

#[test]
fn netns_add_delete_is_visible_to_ip() {
    let g = netns("net");
    let name = g.name().to_string();
    assert!(
        ip(&["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "ip netns list does not show {name}"
    );
    // `ip netns exec` enters it: only lo there.
    let links = ip(&["netns", "exec", &name, "ip", "-j", "link", "show"]);
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    let names: Vec<_> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].clone())
        .collect();
    assert_eq!(names, vec!["lo"]);
    // Opening by name gives the same namespace; it is not ours.
    let again = Netns::open(&name).unwrap();
    assert_eq!(again.inode().unwrap(), g.inode().unwrap());
    assert_ne!(
        g.inode().unwrap(),
        Netns::current().unwrap().inode().unwrap()
    );
    assert_eq!(again.name(), Some(name.as_str()));
    // Taking the name again fails with EEXIST.
    let e = Netns::add(&name).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e:?}");

    drop(again);
    drop(g);
    assert!(!ip(&["netns", "list"]).contains(&name));
    let e = Netns::open(&name).unwrap_err();
    assert!(matches!(e, Error::NoSuchNetns { .. }), "{e:?}");
    assert!(matches!(
        Netns::delete(&name),
        Err(Error::NoSuchNetns { .. })
    ));
}

#[test]
fn in_netns_never_moves_the_caller_and_resumes_panics() {
    let g = netns("net");
    let before = Netns::current().unwrap().inode().unwrap();
    let inside = in_netns(&g, || Netns::current().unwrap().inode().unwrap()).unwrap();
    assert_eq!(inside, g.inode().unwrap());
    assert_eq!(Netns::current().unwrap().inode().unwrap(), before);
    // A borrowed value can be used inside (scoped thread).
    let local = String::from("borrowed");
    assert_eq!(in_netns(&g, || local.len()).unwrap(), 8);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        in_netns(&g, || panic!("boom in netns"))
    }));
    let payload = r.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in netns"));
    assert_eq!(Netns::current().unwrap().inode().unwrap(), before);
}

#[test]
fn veth_across_namespaces_and_link_fields() {
    let a = netns("net");
    let b = netns("net");
    let mut na = nl(&a);
    let mut nb = nl(&b);
    na.add_veth("v0", "v1", Some(&b)).unwrap();

    let v0 = link(&mut na, "v0");
    assert_eq!(v0.kind.as_deref(), Some("veth"));
    assert_eq!(v0.link_type, 1);
    assert_eq!(v0.mtu, 1500);
    assert!(v0.max_mtu > 1500, "{v0:?}");
    assert!(v0.mac.unwrap().is_valid_unicast());
    assert!(!v0.flags.up && !v0.flags.lower_up && !v0.flags.loopback);
    assert_eq!(v0.operstate, OperState::Down);
    assert!(v0.link_netnsid.is_some(), "peer is in another namespace");

    // Field by field against `ip -j -d link show`.
    let j = ip_link(a.name(), "v0");
    assert_eq!(j["ifindex"], v0.index);
    assert_eq!(j["address"], v0.mac.unwrap().to_string());
    assert_eq!(j["mtu"], v0.mtu);
    assert_eq!(j["max_mtu"], v0.max_mtu);
    assert_eq!(j["min_mtu"], v0.min_mtu);
    assert_eq!(j["txqlen"], v0.txqlen);
    assert_eq!(j["promiscuity"], v0.promiscuity);
    assert_eq!(j["gso_max_size"], v0.gso_max_size);
    assert_eq!(j["gro_max_size"], v0.gro_max_size);
    assert_eq!(j["link_type"], "ether");
    assert_eq!(j["operstate"], v0.operstate.to_string());
    assert_eq!(j["linkinfo"]["info_kind"], "veth");

    assert!(na.link_by_name("v1").unwrap().is_none());
    let v1 = link(&mut nb, "v1");
    assert_eq!(v1.kind.as_deref(), Some("veth"));
    assert_eq!(na.link_by_index(v0.index).unwrap().unwrap().name, "v0");
    assert!(na.link_by_name("nope").unwrap().is_none());
    assert!(na.link_by_index(999_999).unwrap().is_none());

    let all = na.links().unwrap();
    let lo = all.iter().find(|l| l.name == "lo").expect("lo listed");
    assert!(lo.flags.loopback);
    assert_eq!(lo.link_type, 772);
    assert_eq!(lo.kind, None);
    assert!(all.iter().any(|l| l.name == "v0"));
    assert_eq!(all.len(), 2, "{all:?}");
}

#[test]
fn setters_change_what_the_kernel_reports() {
    let a = netns("net");
    let b = netns("net");
    let mut na = nl(&a);
    let mut nb = nl(&b);
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    let i1 = link(&mut na, "v1").index;

    let mac = MacAddr::derived(b"setters v0");
    na.set_mac(i0, mac).unwrap();
    na.set_mtu(i0, 9000).unwrap();
    na.set_txqlen(i0, 123).unwrap();
    let v0 = link(&mut na, "v0");
    assert_eq!((v0.mac, v0.mtu, v0.txqlen), (Some(mac), 9000, 123));
    assert_eq!(ip_link(a.name(), "v0")["address"], mac.to_string());

    na.set_up(i0, true).unwrap();
    let v0 = link(&mut na, "v0");
    assert!(
        v0.flags.up && !v0.flags.lower_up,
        "peer down: no carrier: {v0:?}"
    );
    na.set_up(i1, true).unwrap();
    let v0 = link(&mut na, "v0");
    assert!(v0.flags.up && v0.flags.lower_up, "{v0:?}");
    na.set_up(i0, false).unwrap();
    assert!(!link(&mut na, "v0").flags.up);

    na.set_name(i0, "w0").unwrap();
    assert!(na.link_by_name("v0").unwrap().is_none());
    assert_eq!(link(&mut na, "w0").index, i0);

    na.set_netns(i0, &b).unwrap();
    assert!(na.link_by_name("w0").unwrap().is_none());
    let w0 = link(&mut nb, "w0");
    assert_eq!(w0.mac, Some(mac));

    na.del_link(i1).unwrap();
    assert!(na.link_by_name("v1").unwrap().is_none());
    assert!(
        nb.link_by_name("w0").unwrap().is_none(),
        "deleting a veth end deletes both"
    );
}

#[test]
fn kernel_errors_carry_errno_extack_and_what_was_done() {
    let a = netns("net");
    let mut na = nl(&a);
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;

    let e = na.set_mtu(i0, 10).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e:?}");
    assert_eq!(e.extack(), Some("mtu less than device minimum"));
    let text = e.to_string();
    assert!(
        text.contains(&format!("set MTU of v0 (ifindex {i0}) to 10")),
        "{text}"
    );
    assert!(text.contains("mtu less than device minimum"), "{text}");

    let e = na.add_veth("v0", "v9", None).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e:?}");
    assert!(e.to_string().contains("create veth \"v0\""), "{e}");

    let e = na.set_up(999_999, true).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENODEV), "{e:?}");
    assert!(e.to_string().contains("ifindex 999999"), "{e}");
}

/// Each mode gets its own parent: passthru wants a parent with no other macvlan.
#[test]
fn every_macvlan_mode_is_created_as_ip_shows_it() {
    let a = netns("net");
    let b = netns("net");
    let mut na = nl(&a);
    let mut nb = nl(&b);
    let src = [MacAddr::derived(b"src 1"), MacAddr::derived(b"src 2")];
    let cases: &[(u32, u16, &[MacAddr])] = &[
        (MACVLAN_MODE_BRIDGE, 0, &[]),
        (MACVLAN_MODE_BRIDGE, MACVLAN_FLAG_NOPROMISC, &[]),
        (MACVLAN_MODE_VEPA, 0, &[]),
        (MACVLAN_MODE_PRIVATE, 0, &[]),
        (MACVLAN_MODE_PASSTHRU, 0, &[]),
        (MACVLAN_MODE_SOURCE, 0, &src),
        (MACVLAN_MODE_SOURCE, MACVLAN_FLAG_NODST, &src[..1]),
    ];
    for (i, &(mode, flags, sources)) in cases.iter().enumerate() {
        let (p, q, mv) = (format!("p{i}"), format!("q{i}"), format!("mv{i}"));
        na.add_veth(&p, &q, None).unwrap();
        let parent = link(&mut na, &p);
        let mac = MacAddr::derived(mv.as_bytes());
        let spec = MacvlanSpec {
            flags,
            mac: (mode != MACVLAN_MODE_PASSTHRU).then_some(mac),
            bc_queue_len: Some(1000 + u32::try_from(i).unwrap()),
            sources: sources.to_vec(),
            ..MacvlanSpec::new(mv.clone(), parent.index, mode)
        };
        na.add_macvlan(&spec)
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));

        let ours = link(&mut na, &mv);
        assert_eq!(ours.kind.as_deref(), Some("macvlan"));
        assert_eq!(ours.link, Some(parent.index));
        let m = ours.macvlan.clone().unwrap();
        assert_eq!((m.mode, m.flags), (mode, flags), "{mv}");
        assert_eq!(m.bc_queue_len, Some(1000 + u32::try_from(i).unwrap()));
        assert_eq!(m.sources, sources.to_vec());
        assert_eq!(m.macaddr_count as usize, sources.len());
        if mode == MACVLAN_MODE_PASSTHRU {
            assert_eq!(ours.mac, parent.mac, "passthru takes the parent's MAC");
        } else {
            assert_eq!(ours.mac, Some(mac));
        }

        let j = ip_link(a.name(), &mv);
        let d = &j["linkinfo"]["info_data"];
        assert_eq!(j["linkinfo"]["info_kind"], "macvlan");
        assert_eq!(d["mode"], macvlan_mode_name(mode).unwrap(), "{mv}: {d}");
        assert_eq!(
            d["nopromisc"].as_bool().unwrap_or(false),
            flags & MACVLAN_FLAG_NOPROMISC != 0
        );
        assert_eq!(
            d["nodst"].as_bool().unwrap_or(false),
            flags & MACVLAN_FLAG_NODST != 0
        );
        assert_eq!(d["bcqueuelen"], 1000 + u32::try_from(i).unwrap());
        if !sources.is_empty() {
            let want: Vec<String> = sources.iter().map(MacAddr::to_string).collect();
            assert_eq!(d["macaddr_data"], serde_json::json!(want), "{d}");
        }
    }

    // Created straight into another namespace; the parent stays in `a`.
    na.add_veth("pn", "qn", None).unwrap();
    let parent = link(&mut na, "pn");
    let spec = MacvlanSpec {
        netns: Some(&b),
        ..MacvlanSpec::new("mvn", parent.index, MACVLAN_MODE_BRIDGE)
    };
    na.add_macvlan(&spec).unwrap();
    assert!(na.link_by_name("mvn").unwrap().is_none());
    assert_eq!(
        link(&mut nb, "mvn").macvlan.unwrap().mode,
        MACVLAN_MODE_BRIDGE
    );
    assert_eq!(
        ip_link(b.name(), "mvn")["linkinfo"]["info_data"]["mode"],
        "bridge"
    );
}

#[test]
fn macvlan_bc_cutoff_is_set_and_read_back() {
    let a = netns("net");
    let mut na = nl(&a);
    for (i, cutoff) in [3, 0, -1].into_iter().enumerate() {
        let (p, q, mv) = (format!("p{i}"), format!("q{i}"), format!("mv{i}"));
        na.add_veth(&p, &q, None).unwrap();
        let parent = link(&mut na, &p).index;
        let spec = MacvlanSpec {
            bc_cutoff: Some(cutoff),
            ..MacvlanSpec::new(mv.clone(), parent, MACVLAN_MODE_BRIDGE)
        };
        na.add_macvlan(&spec).unwrap();
        let m = link(&mut na, &mv).macvlan.unwrap();
        assert_eq!(m.bc_cutoff, Some(cutoff), "{m:?}");
    }
}

#[test]
fn bridge_port_hairpin_and_master() {
    let a = netns("net");
    let mut na = nl(&a);
    na.add_bridge("br0").unwrap();
    na.add_veth("v0", "v1", None).unwrap();
    let br = link(&mut na, "br0");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    let i0 = link(&mut na, "v0").index;
    na.set_master(i0, br.index).unwrap();
    assert_eq!(link(&mut na, "v0").master, Some(br.index));

    na.set_bridge_port_hairpin(i0, true).unwrap();
    let hairpin = || ip_link(a.name(), "v0")["linkinfo"]["info_slave_data"]["hairpin"].clone();
    assert_eq!(hairpin(), true);
    na.set_bridge_port_hairpin(i0, false).unwrap();
    assert_eq!(hairpin(), false);

    na.set_master(i0, 0).unwrap();
    assert_eq!(link(&mut na, "v0").master, None);
}

#[test]
fn add_address_is_what_ip_addr_shows() {
    let a = netns("net");
    let mut na = nl(&a);
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    let addr = std::net::Ipv4Addr::new(192, 0, 2, 7);
    na.add_address(i0, addr, 24).unwrap();
    let info = ip_json(&["-n", a.name(), "addr", "show", "dev", "v0"])[0]["addr_info"].clone();
    let v4: Vec<_> = info
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["family"] == "inet")
        .collect();
    assert_eq!(v4.len(), 1, "{info}");
    assert_eq!(v4[0]["local"], "192.0.2.7");
    assert_eq!(v4[0]["prefixlen"], 24);
    assert_eq!(v4[0]["broadcast"], "192.0.2.255");
    assert_eq!(v4[0]["scope"], "global");
    // The same address again: EEXIST, naming the device.
    let e = na.add_address(i0, addr, 24).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST), "{e:?}");
    assert!(e.to_string().contains("v0"), "{e}");
    // A /32 has no broadcast address.
    na.add_address(i0, std::net::Ipv4Addr::new(198, 51, 100, 1), 32)
        .unwrap();
    let info = ip_json(&["-n", a.name(), "addr", "show", "dev", "v0"])[0]["addr_info"].clone();
    let host = info
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["local"] == "198.51.100.1")
        .unwrap_or_else(|| panic!("no 198.51.100.1 in {info}"));
    assert_eq!(host["prefixlen"], 32);
    assert!(host.get("broadcast").is_none(), "{host}");
    assert_eq!(
        broadcast_of(std::net::Ipv4Addr::new(10, 1, 2, 3), 16),
        Some(std::net::Ipv4Addr::new(10, 1, 255, 255))
    );
}

#[test]
fn del_neighbour_forgets_an_arp_entry() {
    let a = netns("net");
    let mut na = nl(&a);
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    na.set_up(i0, true).unwrap();
    ip(&[
        "-n",
        a.name(),
        "neigh",
        "add",
        "192.0.2.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "v0",
    ]);
    let shown = || ip(&["-n", a.name(), "neigh", "show", "dev", "v0"]);
    assert!(shown().contains("192.0.2.9"), "{}", shown());
    let addr = std::net::Ipv4Addr::new(192, 0, 2, 9);
    assert!(na.del_neighbour(i0, addr).unwrap());
    assert!(!shown().contains("192.0.2.9"), "{}", shown());
    assert!(!na.del_neighbour(i0, addr).unwrap());
}

/// Poll `mon` until an event satisfies `want` or 5 s pass; return everything seen.
fn wait_for(mon: &mut LinkMonitor, want: impl Fn(&LinkEvent) -> bool) -> Vec<LinkEvent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let evs = mon.drain().unwrap();
        let hit = evs.iter().any(&want);
        seen.extend(evs);
        if hit {
            return seen;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "expected event not seen; got {seen:#?}");
        let mut fds = [PollFd::new(mon.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(100u16)).unwrap();
    }
}

#[test]
fn link_monitor_sees_up_down_mac_and_removal() {
    let a = netns("net");
    let mut na = nl(&a);
    let mut mon = LinkMonitor::open(&a).unwrap();
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Changed(l) if l.name == "v0"),
    );

    na.set_up(i0, true).unwrap();
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Changed(l) if l.index == i0 && l.flags.up),
    );
    na.set_up(i0, false).unwrap();
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Changed(l) if l.index == i0 && !l.flags.up),
    );
    let mac = MacAddr::derived(b"monitor v0");
    na.set_mac(i0, mac).unwrap();
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Changed(l) if l.mac == Some(mac)),
    );
    na.del_link(i0).unwrap();
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Removed { index, name } if *index == i0 && name == "v0"),
    );
}

#[test]
fn link_monitor_reports_overrun() {
    let a = netns("net");
    let mut na = nl(&a);
    let mut mon = LinkMonitor::open(&a).unwrap();
    mon.set_receive_buffer(0).unwrap(); // the kernel's minimum: a couple of messages
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    for mtu in 1000..1050 {
        na.set_mtu(i0, mtu).unwrap();
    }
    let evs = mon.drain().unwrap();
    assert!(evs.contains(&LinkEvent::Overrun), "{evs:#?}");
    // The socket keeps working after the overrun.
    na.set_mtu(i0, 1400).unwrap();
    wait_for(
        &mut mon,
        |e| matches!(e, LinkEvent::Changed(l) if l.mtu == 1400),
    );
}

/// The `link` lines of `ip maddr show dev X`.
fn ip_maddr_link(ns: &str, dev: &str) -> BTreeSet<MacAddr> {
    ip(&["-n", ns, "maddr", "show", "dev", dev])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("link"))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn link_multicast_matches_ip_maddr() {
    let a = netns("net");
    let mut na = nl(&a);
    na.add_veth("v0", "v1", None).unwrap();
    let i0 = link(&mut na, "v0").index;
    na.set_up(i0, true).unwrap();
    let group: MacAddr = "01:00:5e:01:02:03".parse().unwrap();

    assert!(!link_multicast(&a, "v0").unwrap().contains(&group));
    ip(&[
        "-n",
        a.name(),
        "maddr",
        "add",
        &group.to_string(),
        "dev",
        "v0",
    ]);
    let got = link_multicast(&a, "v0").unwrap();
    assert!(got.contains(&group), "{got:?}");
    assert_eq!(got, ip_maddr_link(a.name(), "v0"));

    ip(&[
        "-n",
        a.name(),
        "maddr",
        "del",
        &group.to_string(),
        "dev",
        "v0",
    ]);
    assert!(!link_multicast(&a, "v0").unwrap().contains(&group));

    let e = link_multicast(&a, "nope").unwrap_err();
    assert!(matches!(e, Error::NoSuchLink { .. }), "{e:?}");
    // A device that exists but has no group addresses gives an empty set, not an error.
    assert_eq!(
        link_multicast(&a, "v1").unwrap(),
        ip_maddr_link(a.name(), "v1")
    );
}
