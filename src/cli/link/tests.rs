use std::collections::BTreeMap;

use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};
use crate::control::proto::LinkStats;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn add(s: &str) -> LinkSpec {
    parse_add(&words(s)).unwrap_or_else(|f| panic!("{s}: {:#}", f.error))
}

fn add_err(s: &str) -> String {
    let f = parse_add(&words(s)).expect_err(s);
    assert_eq!(f.status, crate::cli::EXIT_USAGE);
    format!("{:#}", f.error)
}

fn set(s: &str) -> LinkChange {
    parse_set(&words(s)).unwrap_or_else(|f| panic!("{s}: {:#}", f.error))
}

fn set_err(s: &str) -> String {
    format!("{:#}", parse_set(&words(s)).expect_err(s).error)
}

#[test]
fn add_persist_in_both_forms() {
    let words = add("c1 parent eth0 netns /var/run/docker/netns/abc persist");
    assert!(words.persist);
    let kv = add("name=c1,parent=eth0,netns=/var/run/docker/netns/abc,persist");
    assert_eq!(words, LinkSpec { mode: None, ..kv });
    assert!(!add("c1 parent eth0").persist);
}

#[test]
fn add_vm_ports_in_both_forms() {
    let words = add("vm1 parent eth0 kind attach address 52:54:00:12:34:56 trust_guest_mac");
    assert_eq!(words.kind, crate::control::spec::PortKind::Attach);
    assert!(words.trust_guest_mac);
    let kv = add("name=vm1,parent=eth0,kind=attach,mac=52:54:00:12:34:56,trust_guest_mac");
    assert_eq!(words, LinkSpec { mode: None, ..kv });
    let s = add("vm2 kind stream path /run/umacvlan/vm2.sock");
    assert_eq!(s.kind, crate::control::spec::PortKind::Stream);
    assert_eq!(
        s.path.as_deref(),
        Some(std::path::Path::new("/run/umacvlan/vm2.sock"))
    );
    assert!(add_err("vm3 kind vm").contains("unknown kind \"vm\""));
    assert!(add_err("vm3 kind").contains("kind needs"));
    assert!(add_err("name=vm3,kind=stream").contains("needs path=SOCKET"));
}

#[test]
fn add_in_ip_words() {
    let s = add("c1 parent eth0 mode vepa address 02:00:00:00:00:01 mtu 1400 netns ns1");
    assert_eq!(s.name, "c1");
    assert_eq!(s.parent.as_deref(), Some("eth0"));
    assert_eq!(s.mode, Some(Mode::Vepa));
    assert_eq!(s.address, Some(mac("02:00:00:00:00:01")));
    assert_eq!(s.mtu, Some(1400));
    assert_eq!(s.netns.as_deref(), Some("ns1"));
    // ip's own order and words: `link P`, `name N`, `type macvlan`, `mode passthru nopromisc`.
    let s = add("link eth0 name c2 type macvlan mode passthrough nopromisc bcqueuelen 0 bclim -1");
    assert_eq!(
        (s.name.as_str(), s.parent.as_deref(), s.mode),
        ("c2", Some("eth0"), Some(Mode::Passthru))
    );
    assert!(s.nopromisc && !s.nodst);
    assert_eq!((s.bcqueuelen, s.bclim), (Some(0), Some(-1)));
    let s = add("s1 mode source nodst macaddr 02:00:00:00:00:09 02:00:00:00:00:0a flag nopromisc");
    assert!(s.nodst && s.nopromisc);
    assert_eq!(s.macaddr.len(), 2);
    let s = add("c3 flag nodst flag null");
    assert!(!s.nodst && !s.nopromisc);
    // Only a name: parent and mode are the daemon's defaults.
    let s = add("c4");
    assert_eq!((s.parent, s.mode, s.address), (None, None, None));
}

#[test]
fn add_a_host_port() {
    let s =
        add("shim0 parent eth0 kind host ipaddr 192.0.2.100/32 2001:db8::1/64 route 192.0.2.0/24");
    assert_eq!(s.kind, crate::control::spec::PortKind::Host);
    let addrs: Vec<String> = s.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["192.0.2.100/32", "2001:db8::1/64"]);
    assert_eq!(s.routes, vec!["192.0.2.0/24".parse().unwrap()]);
    let k = add("name=shim1,parent=eth0,kind=host,address=192.0.2.101/32,route=192.0.2.0/25");
    assert_eq!(k.kind, crate::control::spec::PortKind::Host);
    assert_eq!(k.routes, vec!["192.0.2.0/25".parse().unwrap()]);
    for (w, want) in [
        ("h kind vm", "unknown kind \"vm\""),
        ("h kind host ipaddr", "ipaddr needs at least one CIDR"),
        (
            "h kind host route 192.0.2.0",
            "route \"192.0.2.0\": not a CIDR",
        ),
        (
            "name=h,kind=host,route=192.0.2.1/24",
            "the network is 192.0.2.0/24",
        ),
    ] {
        let e = add_err(w);
        assert!(e.contains(want), "{w}: {e}");
    }
}

#[test]
fn add_in_key_value_form() {
    let s =
        add("name=c1,parent=eth0,mode=vepa,mac=02:00:00:00:00:01,bclim=2,source=02:00:00:00:00:09");
    assert_eq!(s.name, "c1");
    assert_eq!(s.parent.as_deref(), Some("eth0"));
    assert_eq!(s.mode, Some(Mode::Vepa));
    assert_eq!(s.address, Some(mac("02:00:00:00:00:01")));
    assert_eq!(s.bclim, Some(2));
    assert_eq!(s.macaddr, vec![mac("02:00:00:00:00:09")]);
    let e = add_err("name=c1,colour=red");
    assert!(e.contains("unknown key \"colour\""), "{e}");
    let e = add_err("name=c1,down");
    assert!(e.contains("trace"), "{e}");
}

#[test]
fn add_errors_name_the_bad_word() {
    for (s, want) in [
        (
            "c1 mode bridged",
            "mode \"bridged\": unknown mode \"bridged\"",
        ),
        (
            "c1 mode",
            "mode needs a value (mode private|vepa|bridge|passthru|source)",
        ),
        ("c1 address 02:00", "address \"02:00\""),
        ("c1 mtu big", "mtu \"big\": not a valid number"),
        (
            "c1 type vlan",
            "type \"vlan\": umacvlan only makes macvlan ports",
        ),
        ("c1 c2", "unexpected word \"c2\""),
        ("c1 flag fast", "flag \"fast\""),
        ("c1 macaddr nope", "macaddr \"nope\": not a MAC address"),
        ("c1 parent eth0 link eth1", "link is given twice"),
        ("parent eth0", "which port?"),
        ("c1 name=c2", "key=value form is one word"),
    ] {
        let e = add_err(s);
        assert!(e.contains(want), "{s}: {e}");
    }
}

#[test]
fn set_del_show_words() {
    let c = set("c1 mode private address 02:00:00:00:00:11 mtu 9000 bclim -1");
    assert_eq!(c.name, "c1");
    assert_eq!(c.mode, Some(Mode::Private));
    assert_eq!(c.mtu, Some(9000));
    assert_eq!(c.bclim, Some(-1));
    let c = set("dev s1 type macvlan macaddr add 02:00:00:00:00:0b 02:00:00:00:00:0c");
    assert_eq!(
        c.macaddr,
        Some(MacaddrOp::Add(vec![
            mac("02:00:00:00:00:0b"),
            mac("02:00:00:00:00:0c")
        ]))
    );
    assert_eq!(set("s1 macaddr flush").macaddr, Some(MacaddrOp::Flush));
    assert!(matches!(
        set("s1 macaddr set 02:00:00:00:00:0b").macaddr,
        Some(MacaddrOp::Set(v)) if v.len() == 1
    ));
    assert!(matches!(
        set("s1 macaddr del 02:00:00:00:00:0b").macaddr,
        Some(MacaddrOp::Del(_))
    ));
    for (s, want) in [
        ("c1", "nothing to change"),
        ("c1 netns ns2", "unexpected word \"netns\""),
        (
            "c1 macaddr clear",
            "macaddr \"clear\": expected add, del, set or flush",
        ),
        ("c1 macaddr add", "macaddr add needs at least one MAC"),
        ("mode bridge", "which port?"),
    ] {
        let e = set_err(s);
        assert!(e.contains(want), "{s}: {e}");
    }
    assert_eq!(parse_del(&words("dev c1")).unwrap().name, "c1");
    assert!(format!("{:#}", parse_del(&words("c1 c2")).unwrap_err().error).contains("\"c2\""));
    assert_eq!(parse_show(&words("")).unwrap().name, None);
    assert_eq!(
        parse_show(&words("c1")).unwrap().name.as_deref(),
        Some("c1")
    );
}

#[test]
fn clap_takes_ip_style_flags_anywhere() {
    let parse = |args: &[&str]| {
        let mut v = vec!["umacvlan"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
    };
    for args in [
        &["link", "-d", "-s", "-s", "-j", "show", "c1"][..],
        &["link", "show", "c1", "-d", "-s", "-s", "-j"],
        &["link", "show", "-ds", "-s", "--json", "c1"],
    ] {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let Command::Link(l) = cli.command else {
            panic!()
        };
        assert!(l.details && l.json && l.stats == 2, "{args:?}");
        assert!(matches!(&l.cmd, LinkCommand::Show(w) if w.words == ["c1"]));
    }
    let cli = parse(&["link", "set", "c1", "bclim", "-1"]).unwrap();
    let Command::Link(l) = cli.command else {
        panic!()
    };
    assert!(matches!(&l.cmd, LinkCommand::Set(w) if w.words == ["c1", "bclim", "-1"]));
    let cli = parse(&["link", "--control", "/tmp/x.sock", "list"]).unwrap();
    let Command::Link(l) = cli.command else {
        panic!()
    };
    assert_eq!(l.control.path, std::path::Path::new("/tmp/x.sock"));
    assert!(parse(&["link", "delete", "c1"]).is_ok());
    assert!(parse(&["link", "add"]).is_err());
    assert!(parse(&["reload", "-j"]).is_ok());
    // The live trace needs no table.
    assert!(
        parse(&[
            "trace",
            "--src",
            "02:00:00:00:00:01",
            "--dst",
            "ff:ff:ff:ff:ff:ff"
        ])
        .is_ok()
    );
}

pub(crate) fn sample() -> Vec<LinkView> {
    let mut drops = BTreeMap::new();
    drops.insert("mode_isolation".to_string(), 4);
    drops.insert("unknown_destination".to_string(), 12);
    let c1 = LinkView {
        name: "c1".into(),
        ifindex: Some(4),
        address: mac("02:00:5e:00:00:01"),
        mtu: 1500,
        parent: "eth0".into(),
        netns: Some("ns1".into()),
        ifname: None,
        owner: None,
        up: true,
        lower_up: true,
        forwarding: true,
        refused: None,
        promisc: false,
        allmulti: false,
        mode: Mode::Bridge,
        nopromisc: false,
        nodst: false,
        bcqueuelen: 1000,
        usedbcqueuelen: 1000,
        bclim: 1,
        macaddr: vec![],
        stats: LinkStats {
            rx_packets: 1234,
            rx_bytes: 98_765_432_100,
            rx_multicast: 17,
            rx_dropped: 3,
            tx_packets: 1200,
            tx_bytes: 150_000,
            tx_dropped: 13,
            drops,
        },
        kind: Default::default(),
        path: None,
        trust_guest_mac: false,
        persist: false,
    };
    let s1 = LinkView {
        name: "s1".into(),
        ifindex: None,
        address: mac("02:00:5e:00:00:02"),
        netns: None,
        ifname: None,
        owner: None,
        up: false,
        lower_up: false,
        forwarding: false,
        refused: Some("MAC 02:00:5e:00:00:02 is the parent's (EADDRINUSE)".into()),
        mode: Mode::Source,
        nodst: true,
        bclim: -1,
        macaddr: vec![mac("02:00:00:00:00:09"), mac("02:00:00:00:00:0a")],
        stats: LinkStats::default(),
        ..c1.clone()
    };
    vec![c1, s1]
}

#[test]
fn text_reads_like_ip_link() {
    let links = sample();
    let plain = links_text(&links, &ShowOptions::default());
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(
        lines[0],
        "4: c1@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP"
    );
    assert_eq!(
        lines[1],
        "    link/ether 02:00:5e:00:00:01 brd ff:ff:ff:ff:ff:ff netns ns1"
    );
    assert_eq!(
        lines[2],
        "?: s1@eth0: <BROADCAST,MULTICAST> mtu 1500 state DOWN"
    );
    assert_eq!(lines.len(), 4);

    let all = links_text(
        &links,
        &ShowOptions {
            details: true,
            stats: 2,
        },
    );
    assert!(
        all.contains("    macvlan mode bridge bcqueuelen 1000 usedbcqueuelen 1000\n"),
        "{all}"
    );
    assert!(all.contains(
        "    macvlan mode source nodst bcqueuelen 1000 usedbcqueuelen 1000 bclim -1 remotes (2) 02:00:00:00:00:09 02:00:00:00:00:0a\n"
    ), "{all}");
    // ip -s link's columns: widths grow with the numbers, headers right-aligned over them.
    assert!(all.contains(
        "    RX:   bytes packets errors dropped  missed   mcast\n    98765432100    1234      0       3       0      17\n"
    ), "{all}");
    assert!(all.contains(
        "    TX:   bytes packets errors dropped carrier collsns\n         150000    1200      0      13       0       0\n"
    ), "{all}");
    assert!(
        all.contains("      unknown_destination         12  unicast to a MAC"),
        "{all}"
    );
    assert!(all.contains("    drops: none\n"), "{all}");
    assert!(all.contains("    umacvlan forwarding yes\n"), "{all}");
    assert!(
        all.contains(
            "    umacvlan forwarding no (refused: MAC 02:00:5e:00:00:02 is the parent's (EADDRINUSE))\n"
        ),
        "{all}"
    );
    let s1 = links_text(
        &links[1..],
        &ShowOptions {
            details: false,
            stats: 1,
        },
    );
    assert!(s1.contains(
        "    RX:  bytes packets errors dropped  missed   mcast\n             0       0      0       0       0       0\n"
    ), "{s1}");
}

/// A port whose device someone moved and renamed (Docker's eth0), persistent: the engine's
/// name first, where the device is now and `persist` after, in text and JSON.
#[test]
fn a_moved_persistent_port_shows_its_device_and_the_engines_name() {
    let moved = LinkView {
        name: "umv0123".into(),
        netns: Some("/run/docker/netns/1f2e3d4c5b6a".into()),
        ifname: Some("eth0".into()),
        persist: true,
        ..sample()[0].clone()
    };
    let text = links_text(std::slice::from_ref(&moved), &ShowOptions::default());
    assert!(text.starts_with("4: umv0123@eth0: "), "{text}");
    assert!(
        text.contains("netns /run/docker/netns/1f2e3d4c5b6a ifname eth0 persist\n"),
        "{text}"
    );
    let json = links_json(&[moved], &ShowOptions::default());
    let extra = &json[0]["umacvlan"];
    assert_eq!(json[0]["ifname"], "umv0123");
    assert_eq!(extra["ifname"], "eth0");
    assert_eq!(extra["netns"], "/run/docker/netns/1f2e3d4c5b6a");
    assert_eq!(extra["persist"], true);
    let plain = links_json(&sample(), &ShowOptions::default());
    assert_eq!(plain[0]["umacvlan"]["persist"], false);
}

#[test]
fn json_has_iproute2_keys() {
    let links = sample();
    let plain = links_json(&links, &ShowOptions::default());
    let c1 = &plain[0];
    assert_eq!(c1["ifname"], "c1");
    assert_eq!(c1["ifindex"], 4);
    assert_eq!(c1["link"], "eth0");
    assert_eq!(c1["address"], "02:00:5e:00:00:01");
    assert_eq!(c1["mtu"], 1500);
    assert_eq!(c1["operstate"], "UP");
    assert_eq!(
        c1["flags"],
        serde_json::json!(["BROADCAST", "MULTICAST", "UP", "LOWER_UP"])
    );
    assert_eq!(c1["umacvlan"]["netns"], "ns1");
    assert_eq!(c1["umacvlan"]["forwarding"], true);
    assert!(c1["umacvlan"].get("refused").is_none());
    assert_eq!(
        plain[1]["umacvlan"]["refused"],
        "MAC 02:00:5e:00:00:02 is the parent's (EADDRINUSE)"
    );
    // Like ip: linkinfo only with -d, stats64 only with -s.
    assert!(c1.get("linkinfo").is_none() && c1.get("stats64").is_none());
    assert!(plain[1].get("ifindex").is_none());

    let full = links_json(
        &links,
        &ShowOptions {
            details: true,
            stats: 1,
        },
    );
    let (c1, s1) = (&full[0], &full[1]);
    assert_eq!(c1["linkinfo"]["info_kind"], "macvlan");
    let d = &c1["linkinfo"]["info_data"];
    assert_eq!(d["mode"], "bridge");
    assert_eq!(d["bcqueuelen"], 1000);
    assert_eq!(d["usedbcqueuelen"], 1000);
    assert_eq!(d["bclim"], 1);
    assert!(d.get("nopromisc").is_none() && d.get("macaddr_count").is_none());
    let d = &s1["linkinfo"]["info_data"];
    assert_eq!(d["mode"], "source");
    assert_eq!(d["nodst"], true);
    assert_eq!(d["macaddr_count"], 2);
    assert_eq!(
        d["macaddr_data"],
        serde_json::json!(["02:00:00:00:00:09", "02:00:00:00:00:0a"])
    );
    let rx = &c1["stats64"]["rx"];
    assert_eq!(rx["bytes"], 98_765_432_100u64);
    assert_eq!(rx["packets"], 1234);
    assert_eq!(rx["dropped"], 3);
    assert_eq!(rx["multicast"], 17);
    for k in ["errors", "over_errors"] {
        assert_eq!(rx[k], 0, "{k}");
    }
    let tx = &c1["stats64"]["tx"];
    assert_eq!(
        (tx["bytes"].as_u64(), tx["packets"].as_u64()),
        (Some(150_000), Some(1200))
    );
    assert_eq!(tx["dropped"], 13);
    for k in ["errors", "carrier_errors", "collisions"] {
        assert_eq!(tx[k], 0, "{k}");
    }
    assert_eq!(c1["umacvlan"]["drops"]["unknown_destination"], 12);
    assert_eq!(c1["promiscuity"], 0);
    let ss = links_json(
        &links,
        &ShowOptions {
            details: false,
            stats: 2,
        },
    );
    assert_eq!(ss[0]["stats64"]["rx"]["missed_errors"], 0);
    assert_eq!(ss[0]["stats64"]["tx"]["carrier_changes"], 0);
}
