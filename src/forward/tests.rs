//! `decide()` against the kernel's decision tables, one row per cell of docs/design.md's "Who gets
//! what", multicast, passthru and source-mode sections, each named after the rule it pins.
//! Properties follow the table.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::wire::frame::FrameMeta;
use crate::wire::mac::MacAddr;

const PARENT: MacAddr = MacAddr([2, 0, 0, 0, 1, 0]);
const EXTERNAL: MacAddr = MacAddr([2, 0, 0, 0, 9, 9]);
const UNKNOWN: MacAddr = MacAddr([2, 0, 0, 0, 0xa, 0xa]);
const JOINED: MacAddr = MacAddr([1, 0, 0x5e, 0, 0, 1]);
const UNJOINED: MacAddr = MacAddr([1, 0, 0x5e, 0, 0, 2]);

/// A port's MAC: 02:00:00:00:00:<letter>.
fn mac_of(name: &str) -> MacAddr {
    MacAddr([2, 0, 0, 0, 0, name.as_bytes()[0]])
}

/// Where a frame enters.
#[derive(Clone, Copy, Debug)]
enum Entry {
    Wire,
    Port(&'static str),
    /// Sent by `port`, and with a hairpin switch reflected back to the parent (§4.4).
    Hairpin(&'static str),
}

#[derive(Clone, Copy, Debug)]
enum Addr {
    Port(&'static str),
    Parent,
    External,
    Unknown,
    Bcast,
    Joined,
    Unjoined,
    Pause,
}

impl Addr {
    fn mac(self) -> MacAddr {
        match self {
            Addr::Port(n) => mac_of(n),
            Addr::Parent => PARENT,
            Addr::External => EXTERNAL,
            Addr::Unknown => UNKNOWN,
            Addr::Bcast => MacAddr::BROADCAST,
            Addr::Joined => JOINED,
            Addr::Unjoined => UNJOINED,
            Addr::Pause => MacAddr::PAUSE,
        }
    }
}

type Setup = fn(&mut ParentConfig, &mut [PortConfig]);

struct Case {
    name: &'static str,
    /// Ports as (name, mode); every port is up and has joined JOINED unless `setup` changes it.
    ports: &'static [(&'static str, Mode)],
    setup: Setup,
    from: Entry,
    src: Addr,
    dst: Addr,
    len: usize,
    want: &'static [&'static str],
    wire: bool,
    host: bool,
}

const NO_SETUP: Setup = |_, _| {};

fn port<'a>(ports: &'a mut [PortConfig], name: &str) -> &'a mut PortConfig {
    ports
        .iter_mut()
        .find(|p| p.name == name)
        .expect("port in case")
}

const B: Mode = Mode::Bridge;
const V: Mode = Mode::Vepa;
const P: Mode = Mode::Private;
const S: Mode = Mode::Source;
const PT: Mode = Mode::Passthru;

/// The "mixed" set every §4 row runs on: two bridge, a vepa, a private and a source port.
const MIX: &[(&str, Mode)] = &[("b", B), ("c", B), ("v", V), ("w", V), ("p", P), ("s", S)];

fn case(name: &'static str, from: Entry, src: Addr, dst: Addr) -> Case {
    Case {
        name,
        ports: MIX,
        setup: NO_SETUP,
        from,
        src,
        dst,
        len: 100,
        want: &[],
        wire: false,
        host: false,
    }
}

impl Case {
    fn on(mut self, ports: &'static [(&'static str, Mode)]) -> Self {
        self.ports = ports;
        self
    }
    fn setup(mut self, s: Setup) -> Self {
        self.setup = s;
        self
    }
    fn len(mut self, len: usize) -> Self {
        self.len = len;
        self
    }
    fn to(mut self, want: &'static [&'static str]) -> Self {
        self.want = want;
        self
    }
    fn wire(mut self) -> Self {
        self.wire = true;
        self
    }
    fn host(mut self) -> Self {
        self.host = true;
        self
    }

    fn table(&self) -> PortTable {
        let mut parent = ParentConfig::new("p0", PARENT, 1500);
        let mut ports: Vec<PortConfig> = self
            .ports
            .iter()
            .map(|(n, m)| {
                let mut p = PortConfig::new(*n, *m, mac_of(n));
                p.groups.insert(JOINED);
                p
            })
            .collect();
        (self.setup)(&mut parent, &mut ports);
        PortTable::build(parent, ports).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn frame_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len];
        b[..6].copy_from_slice(&self.dst.mac().0);
        b[6..12].copy_from_slice(&self.src.mac().0);
        let ethertype: u16 = if matches!(self.dst, Addr::Pause) {
            0x8808
        } else {
            0x88b5
        };
        b[12..14].copy_from_slice(&ethertype.to_be_bytes());
        b
    }

    /// (receivers by name, reached the wire, the parent's stack got it)
    fn run(&self) -> (BTreeSet<String>, bool, bool) {
        let t = self.table();
        let bytes = self.frame_bytes();
        let f = FrameMeta::parse(&bytes, None, t.parent().max_frame).unwrap();
        let names = |v: &Verdict<'_>| -> Vec<String> {
            v.receivers(&t)
                .iter()
                .map(|id| t.port(*id).name().to_string())
                .collect()
        };
        match self.from {
            Entry::Wire => {
                let v = decide(&t, Ingress::Parent, &f);
                (names(&v).into_iter().collect(), false, v.to_host)
            }
            Entry::Port(n) => {
                let v = decide(&t, Ingress::Port(t.by_name(n).unwrap()), &f);
                (names(&v).into_iter().collect(), v.to_wire, v.to_host)
            }
            Entry::Hairpin(n) => {
                let tx = decide(&t, Ingress::Port(t.by_name(n).unwrap()), &f);
                let mut got: BTreeSet<String> = names(&tx).into_iter().collect();
                let mut host = tx.to_host;
                if tx.to_wire {
                    let rx = decide(&t, Ingress::Parent, &f);
                    let again = names(&rx);
                    for n in &again {
                        assert!(!got.contains(n), "{}: {n} got the frame twice", self.name);
                    }
                    got.extend(again);
                    host |= rx.to_host;
                }
                (got, tx.to_wire, host)
            }
        }
    }
}

use Addr::{Bcast, External, Joined, Parent, Unjoined, Unknown};
use Entry::{Hairpin, Wire};

fn tx(n: &'static str) -> Entry {
    Entry::Port(n)
}
fn at(n: &'static str) -> Addr {
    Addr::Port(n)
}

fn cases() -> Vec<Case> {
    vec![
        // §4.1 — a port transmits, no hairpin.
        case(
            "4.1 B unicast to an up B sibling stays local",
            tx("b"),
            at("b"),
            at("c"),
        )
        .to(&["c"]),
        case(
            "4.1 B unicast to a V sibling goes to the wire only",
            tx("b"),
            at("b"),
            at("v"),
        )
        .wire(),
        case(
            "4.1 B unicast to a P sibling goes to the wire only",
            tx("b"),
            at("b"),
            at("p"),
        )
        .wire(),
        case(
            "4.1 B unicast to an S sibling goes to the wire only",
            tx("b"),
            at("b"),
            at("s"),
        )
        .wire(),
        case(
            "4.1 B unicast to the host goes to the wire",
            tx("b"),
            at("b"),
            Parent,
        )
        .wire(),
        case(
            "4.1 B unicast to an unknown MAC goes to the wire",
            tx("b"),
            at("b"),
            Unknown,
        )
        .wire(),
        case(
            "4.1 B broadcast: B siblings locally, then the wire",
            tx("b"),
            at("b"),
            Bcast,
        )
        .to(&["c"])
        .wire(),
        case(
            "4.1 B multicast: B siblings that joined, then the wire",
            tx("b"),
            at("b"),
            Joined,
        )
        .to(&["c"])
        .wire(),
        case(
            "4.1 B multicast nobody joined: wire only",
            tx("b"),
            at("b"),
            Unjoined,
        )
        .wire(),
        case(
            "4.1 V unicast to a sibling: wire only",
            tx("v"),
            at("v"),
            at("w"),
        )
        .wire(),
        case(
            "4.1 V unicast to a B sibling: wire only",
            tx("v"),
            at("v"),
            at("b"),
        )
        .wire(),
        case("4.1 V broadcast: wire only", tx("v"), at("v"), Bcast).wire(),
        case("4.1 V multicast: wire only", tx("v"), at("v"), Joined).wire(),
        case(
            "4.1 P unicast to a sibling: wire only",
            tx("p"),
            at("p"),
            at("b"),
        )
        .wire(),
        case("4.1 P broadcast: wire only", tx("p"), at("p"), Bcast).wire(),
        case(
            "4.1 S unicast to a sibling: wire only",
            tx("s"),
            at("s"),
            at("b"),
        )
        .wire(),
        case("4.1 S broadcast: wire only", tx("s"), at("s"), Bcast).wire(),
        case("4.1 PT unicast: wire", tx("t"), at("t"), External)
            .on(&[("t", PT)])
            .wire(),
        case("4.1 PT broadcast: wire", tx("t"), at("t"), Bcast)
            .on(&[("t", PT)])
            .wire(),
        case(
            "4.1 a down port transmits nothing",
            tx("b"),
            at("b"),
            at("c"),
        )
        .setup(|_, p| port(p, "b").up = false),
        case(
            "4.1 B unicast to a down B sibling goes to the wire",
            tx("b"),
            at("b"),
            at("c"),
        )
        .setup(|_, p| port(p, "c").up = false)
        .wire(),
        // §4.2 — from the wire, source not a local port.
        case(
            "4.2 unicast to an up B port: that port only",
            Wire,
            External,
            at("b"),
        )
        .to(&["b"]),
        case(
            "4.2 unicast to an up V port: that port only",
            Wire,
            External,
            at("v"),
        )
        .to(&["v"]),
        case(
            "4.2 unicast to an up P port: that port only",
            Wire,
            External,
            at("p"),
        )
        .to(&["p"]),
        case(
            "4.2 unicast to a down port: host only",
            Wire,
            External,
            at("b"),
        )
        .setup(|_, p| port(p, "b").up = false)
        .host(),
        case(
            "4.2 unicast to an S port's MAC: host only",
            Wire,
            External,
            at("s"),
        )
        .host(),
        case(
            "4.2 unicast to the host's MAC: host only",
            Wire,
            External,
            Parent,
        )
        .host(),
        case(
            "4.2 unicast to an unknown MAC: host only",
            Wire,
            External,
            Unknown,
        )
        .host(),
        case(
            "4.2 unknown unicast is not flooded to a promisc port",
            Wire,
            External,
            Unknown,
        )
        .setup(|_, p| port(p, "b").promisc = true)
        .host(),
        case(
            "4.2 broadcast: every up B/V/P port + host, not S",
            Wire,
            External,
            Bcast,
        )
        .to(&["b", "c", "v", "w", "p"])
        .host(),
        case("4.2 broadcast skips down ports", Wire, External, Bcast)
            .setup(|_, p| port(p, "c").up = false)
            .to(&["b", "v", "w", "p"])
            .host(),
        case(
            "4.2 multicast: the ports that joined + host",
            Wire,
            External,
            Joined,
        )
        .setup(|_, p| port(p, "v").groups.clear())
        .to(&["b", "c", "w", "p"])
        .host(),
        case(
            "4.2 multicast nobody joined: host only",
            Wire,
            External,
            Unjoined,
        )
        .host(),
        case(
            "4.2 allmulti port gets unjoined multicast",
            Wire,
            External,
            Unjoined,
        )
        .setup(|_, p| port(p, "w").allmulti = true)
        .to(&["w"])
        .host(),
        case(
            "4.2 promisc port gets unjoined multicast",
            Wire,
            External,
            Unjoined,
        )
        .setup(|_, p| port(p, "p").promisc = true)
        .to(&["p"])
        .host(),
        case("4.2 PAUSE is never flooded", Wire, External, Addr::Pause)
            .setup(|_, p| p.iter_mut().for_each(|p| p.allmulti = true))
            .host(),
        case(
            "4.2 passthru: unicast to any MAC goes to the PT port",
            Wire,
            External,
            Unknown,
        )
        .on(&[("t", PT)])
        .to(&["t"]),
        case(
            "4.2 passthru: unicast to the parent's MAC goes to the PT port",
            Wire,
            External,
            Parent,
        )
        .on(&[("t", PT)])
        .to(&["t"]),
        case(
            "4.2 passthru: broadcast to PT + host",
            Wire,
            External,
            Bcast,
        )
        .on(&[("t", PT)])
        .to(&["t"])
        .host(),
        case(
            "4.2 passthru: joined multicast to PT + host",
            Wire,
            External,
            Joined,
        )
        .on(&[("t", PT)])
        .to(&["t"])
        .host(),
        case(
            "4.2 passthru: unjoined multicast to host only",
            Wire,
            External,
            Unjoined,
        )
        .on(&[("t", PT)])
        .host(),
        // §4.3 — from the wire, source is an up port's MAC (reflected or spoofed).
        case(
            "4.3 src B broadcast: V ports + host, no B port",
            Wire,
            at("b"),
            Bcast,
        )
        .to(&["v", "w"])
        .host(),
        case(
            "4.3 src B multicast: V ports that joined + host",
            Wire,
            at("b"),
            Joined,
        )
        .setup(|_, p| port(p, "w").groups.clear())
        .to(&["v"])
        .host(),
        case(
            "4.3 src V broadcast: V and B ports except the sender + host",
            Wire,
            at("v"),
            Bcast,
        )
        .to(&["b", "c", "w"])
        .host(),
        case(
            "4.3 src P broadcast: only the sender itself",
            Wire,
            at("p"),
            Bcast,
        )
        .to(&["p"]),
        case(
            "4.3 src P unjoined multicast: still only the sender",
            Wire,
            at("p"),
            Unjoined,
        )
        .to(&["p"]),
        case(
            "4.3 src S broadcast: only the sender itself",
            Wire,
            at("s"),
            Bcast,
        )
        .to(&["s"]),
        case(
            "4.3 src PT broadcast: only the PT port",
            Wire,
            Parent,
            Bcast,
        )
        .on(&[("t", PT)])
        .to(&["t"]),
        case(
            "4.3 src of a down P port counts as external",
            Wire,
            at("p"),
            Bcast,
        )
        .setup(|_, p| port(p, "p").up = false)
        .to(&["b", "c", "v", "w"])
        .host(),
        case(
            "4.3 src B unicast to a sibling is delivered",
            Wire,
            at("b"),
            at("c"),
        )
        .to(&["c"]),
        case(
            "4.3 src V unicast to a P port is delivered",
            Wire,
            at("v"),
            at("p"),
        )
        .to(&["p"]),
        case(
            "4.3 src P unicast to a P sibling is delivered",
            Wire,
            at("p"),
            at("q"),
        )
        .on(&[("p", P), ("q", P)])
        .to(&["q"]),
        // §4.4 — with a hairpin switch: §4.1 then §4.3.
        case(
            "4.4 B->B unicast is local, never reflected",
            Hairpin("b"),
            at("b"),
            at("c"),
        )
        .to(&["c"]),
        case(
            "4.4 B->V unicast: out, reflected, delivered",
            Hairpin("b"),
            at("b"),
            at("v"),
        )
        .to(&["v"])
        .wire(),
        case(
            "4.4 V->P unicast is delivered: private does not isolate unicast",
            Hairpin("v"),
            at("v"),
            at("p"),
        )
        .to(&["p"])
        .wire(),
        case(
            "4.4 P->P unicast is delivered",
            Hairpin("p"),
            at("p"),
            at("q"),
        )
        .on(&[("p", P), ("q", P)])
        .to(&["q"])
        .wire(),
        case(
            "4.4 V broadcast: B and V siblings + host, no echo",
            Hairpin("v"),
            at("v"),
            Bcast,
        )
        .to(&["b", "c", "w"])
        .wire()
        .host(),
        case(
            "4.4 B broadcast: B siblings once, V after the reflection",
            Hairpin("b"),
            at("b"),
            Bcast,
        )
        .to(&["c", "v", "w"])
        .wire()
        .host(),
        case(
            "4.4 P broadcast: the sender gets its own frame back, nobody else",
            Hairpin("p"),
            at("p"),
            Bcast,
        )
        .to(&["p"])
        .wire(),
        case(
            "4.4 P unjoined multicast: echo to the sender anyway",
            Hairpin("p"),
            at("p"),
            Unjoined,
        )
        .to(&["p"])
        .wire(),
        case(
            "4.4 S broadcast: echo to the sender only",
            Hairpin("s"),
            at("s"),
            Bcast,
        )
        .to(&["s"])
        .wire(),
        case(
            "4.4 port -> host's MAC is reflected to the host",
            Hairpin("v"),
            at("v"),
            Parent,
        )
        .wire()
        .host(),
        // §5 — broadcast queue and bc_cutoff.
        case(
            "5 veth parent, bcqueuelen 0 everywhere: broadcast reaches no port",
            Wire,
            External,
            Bcast,
        )
        .setup(|_, p| p.iter_mut().for_each(|p| p.bcqueuelen = 0))
        .host(),
        case(
            "5 veth parent, bcqueuelen 0: joined multicast reaches no port",
            Wire,
            External,
            Joined,
        )
        .setup(|_, p| p.iter_mut().for_each(|p| p.bcqueuelen = 0))
        .host(),
        case(
            "5 bcqueuelen 0 with bclim -1: everything inline, delivered",
            Wire,
            External,
            Bcast,
        )
        .setup(|par, p| {
            par.bc_cutoff = -1;
            p.iter_mut().for_each(|p| p.bcqueuelen = 0);
        })
        .to(&["b", "c", "v", "w", "p"])
        .host(),
        case(
            "5 bcqueuelen 0 on some ports only has no effect",
            Wire,
            External,
            Bcast,
        )
        .setup(|_, p| port(p, "b").bcqueuelen = 0)
        .to(&["b", "c", "v", "w", "p"])
        .host(),
        case(
            "5 bcqueuelen 0 on a down port still counts",
            Wire,
            External,
            Bcast,
        )
        .setup(|_, p| {
            p.iter_mut().for_each(|p| p.bcqueuelen = 0);
            port(p, "c").up = false;
            port(p, "c").bcqueuelen = 1000;
        })
        .to(&["b", "v", "w", "p"])
        .host(),
        case(
            "5 PT+nopromisc, bcqueuelen 0: broadcast is lost",
            Wire,
            External,
            Bcast,
        )
        .on(&[("t", PT)])
        .setup(pt_nopromisc_no_queue)
        .host(),
        case(
            "5 PT+nopromisc, bcqueuelen 0: a group one port joined is inline",
            Wire,
            External,
            Joined,
        )
        .on(&[("t", PT)])
        .setup(pt_nopromisc_no_queue)
        .to(&["t"])
        .host(),
        case(
            "5 PT+nopromisc, bcqueuelen 0, bclim 0: that group is lost too",
            Wire,
            External,
            Joined,
        )
        .on(&[("t", PT)])
        .setup(|par, p| {
            pt_nopromisc_no_queue(par, p);
            par.bc_cutoff = 0;
        })
        .host(),
        case(
            "5 PT+nopromisc, bcqueuelen 0, bclim -1: broadcast delivered",
            Wire,
            External,
            Bcast,
        )
        .on(&[("t", PT)])
        .setup(|par, p| {
            pt_nopromisc_no_queue(par, p);
            par.bc_cutoff = -1;
        })
        .to(&["t"])
        .host(),
        case(
            "5 unicast-filtering parent, bcqueuelen 0: single-joiner group is inline",
            Wire,
            External,
            Joined,
        )
        .setup(|par, p| {
            par.unicast_filter = true;
            p.iter_mut().for_each(|p| {
                p.bcqueuelen = 0;
                p.groups.clear();
            });
            port(p, "v").groups.insert(JOINED);
        })
        .to(&["v"])
        .host(),
        case(
            "5 unicast-filtering parent, bcqueuelen 0: two-joiner group is queued and lost",
            Wire,
            External,
            Joined,
        )
        .setup(|par, p| {
            par.unicast_filter = true;
            p.iter_mut().for_each(|p| p.bcqueuelen = 0);
        })
        .host(),
        // §6 — passthru.
        case(
            "6 PT down: unicast is lost, not even the host gets it",
            Wire,
            External,
            Unknown,
        )
        .on(&[("t", PT)])
        .setup(|_, p| port(p, "t").up = false),
        case(
            "6 PT down: broadcast still reaches the host",
            Wire,
            External,
            Bcast,
        )
        .on(&[("t", PT)])
        .setup(|_, p| port(p, "t").up = false)
        .host(),
        // §7 — source mode.
        case(
            "7 listed source: copy to S and normal delivery",
            Wire,
            External,
            at("b"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
        })
        .to(&["s", "b"]),
        case(
            "7 listed source: S gets an unjoined group with no filter",
            Wire,
            External,
            Unjoined,
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
        })
        .to(&["s"])
        .host(),
        case(
            "7 listed source, unicast to the host: S copy + host",
            Wire,
            External,
            Parent,
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
        })
        .to(&["s"])
        .host(),
        case(
            "7 nodst: S only, no destination delivery, no host",
            Wire,
            External,
            at("b"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
            port(p, "s").flags.nodst = true;
        })
        .to(&["s"]),
        case(
            "7 nodst: broadcast consumed after the copy",
            Wire,
            External,
            Bcast,
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
            port(p, "s").flags.nodst = true;
        })
        .to(&["s"]),
        case(
            "7 nodst on a down S port still blackholes the source",
            Wire,
            External,
            at("b"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
            port(p, "s").flags.nodst = true;
            port(p, "s").up = false;
        }),
        case(
            "7 down S port without nodst: no copy, normal delivery",
            Wire,
            External,
            at("b"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
            port(p, "s").up = false;
        })
        .to(&["b"]),
        case(
            "7 one MAC on two S lists: both get copies",
            Wire,
            External,
            Unknown,
        )
        .on(&[("s", S), ("r", S)])
        .setup(|_, p| {
            port(p, "s").sources.insert(EXTERNAL);
            port(p, "r").sources.insert(EXTERNAL);
        })
        .to(&["r", "s"])
        .host(),
        case(
            "7 bridge-local unicast is re-received: S copy too",
            tx("b"),
            at("b"),
            at("c"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(mac_of("b"));
        })
        .to(&["c", "s"]),
        case(
            "7 bridge-local unicast from a nodst source is swallowed",
            tx("b"),
            at("b"),
            at("c"),
        )
        .setup(|_, p| {
            port(p, "s").sources.insert(mac_of("b"));
            port(p, "s").flags.nodst = true;
        })
        .to(&["s"]),
        // §3 — MTU checks on the bridge-local paths.
        case(
            "3 B multicast copy longer than the receiver's MTU is dropped",
            tx("b"),
            at("b"),
            Bcast,
        )
        .setup(|_, p| port(p, "c").mtu = Some(1400))
        .len(1500)
        .wire(),
        case(
            "3 B multicast copy within the receiver's MTU + 18 is delivered",
            tx("b"),
            at("b"),
            Bcast,
        )
        .setup(|_, p| port(p, "c").mtu = Some(1400))
        .len(1418)
        .to(&["c"])
        .wire(),
        case(
            "3 B unicast longer than the parent's MTU + 18 is dropped",
            tx("b"),
            at("b"),
            at("c"),
        )
        .len(1519),
        case(
            "3 B unicast at the parent's MTU + 18 is delivered",
            tx("b"),
            at("b"),
            at("c"),
        )
        .len(1518)
        .to(&["c"]),
        case("3 RX never checks a port's MTU", Wire, External, at("c"))
            .setup(|_, p| port(p, "c").mtu = Some(1400))
            .len(1514)
            .to(&["c"]),
        case(
            "3 B PAUSE goes to the wire, never to siblings",
            tx("b"),
            at("b"),
            Addr::Pause,
        )
        .wire(),
    ]
}

fn pt_nopromisc_no_queue(_: &mut ParentConfig, p: &mut [PortConfig]) {
    let t = port(p, "t");
    t.flags.nopromisc = true;
    t.bcqueuelen = 0;
}

#[test]
fn matches_the_kernels_tables() {
    let mut failures = Vec::new();
    for c in cases() {
        let (got, wire, host) = c.run();
        let want: BTreeSet<String> = c.want.iter().map(|s| s.to_string()).collect();
        if (got.clone(), wire, host) != (want.clone(), c.wire, c.host) {
            failures.push(format!(
                "{}\n    want ports {want:?} wire {} host {}\n    got  ports {got:?} wire {wire} host {host}",
                c.name, c.wire, c.host
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn rows_have_unique_names() {
    let mut seen = BTreeSet::new();
    for c in cases() {
        assert!(seen.insert(c.name), "duplicate row name {}", c.name);
    }
}

#[test]
fn reasons_and_rules_explain_non_delivery() {
    let t = case("", Wire, External, Unknown).table();
    let bytes = case("", Wire, External, Unknown).frame_bytes();
    let f = FrameMeta::parse(&bytes, None, 2000).unwrap();
    let v = decide(&t, Ingress::Parent, &f);
    assert_eq!(v.reason, Some(DropReason::UnknownDestination));
    assert_eq!(v.rule, Rule::RxUnicastUnknown);

    // A flood explains every port it skipped.
    let c = case("", Wire, at("b"), Bcast);
    let (t, bytes) = (c.table(), c.frame_bytes());
    let f = FrameMeta::parse(&bytes, None, 2000).unwrap();
    let v = decide(&t, Ingress::Parent, &f);
    assert_eq!(v.rule, Rule::RxGroupFromBridge);
    let outcome = |n: &str| {
        let id = t.by_name(n).unwrap();
        v.outcomes(&t)
            .into_iter()
            .find(|(p, _)| *p == id)
            .unwrap()
            .1
    };
    assert_eq!(outcome("b"), Outcome::Skipped(DropReason::OwnSource));
    assert_eq!(outcome("c"), Outcome::Skipped(DropReason::ModeIsolation));
    assert_eq!(outcome("s"), Outcome::Skipped(DropReason::ModeIsolation));
    assert_eq!(outcome("v"), Outcome::Delivered);
}

#[test]
fn drop_reason_names_are_unique_snake_case() {
    let mut seen = BTreeSet::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(
            r.name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        );
        assert!(seen.insert(r.name()));
        assert!(!r.meaning().is_empty());
    }
}

#[test]
fn rule_all_lists_every_rule_once_in_order() {
    let mut seen = BTreeSet::new();
    for (i, r) in Rule::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
        assert!(seen.insert(r.name()));
        // A new variant breaks this match: add it to `Rule::ALL` (and to docs/design.md).
        match r {
            Rule::RxNodst
            | Rule::RxGroupEcho
            | Rule::RxGroupExternal
            | Rule::RxGroupFromVepa
            | Rule::RxGroupFromBridge
            | Rule::RxUnicastToPort
            | Rule::RxUnicastPassthru
            | Rule::RxUnicastPassthruDown
            | Rule::RxUnicastUnknown
            | Rule::RxUnicastToSourcePort
            | Rule::TxPortDown
            | Rule::TxNotBridge
            | Rule::TxBridgeGroup
            | Rule::TxBridgeUnicastLocal
            | Rule::TxBridgeUnicastMtu
            | Rule::TxBridgeUnicastWire => {}
        }
    }
    assert_eq!(Rule::ALL.len(), Rule::TxBridgeUnicastWire as usize + 1);
}

// ---- PortTable validation -------------------------------------------------------------------

fn build(ports: Vec<PortConfig>) -> Result<PortTable, TableError> {
    PortTable::build(ParentConfig::new("p0", PARENT, 1500), ports)
}

#[test]
fn table_refuses_bad_configurations_naming_the_ports() {
    let m = mac_of("a");
    let err = |ports| build(ports).unwrap_err().to_string();
    let dup = err(vec![PortConfig::new("a", B, m), PortConfig::new("b", V, m)]);
    assert!(
        dup.contains("a and b") && dup.contains("EADDRINUSE"),
        "{dup}"
    );
    // The parent's MAC, and a MAC shared by down ports, are the admission rule's business
    // (engine::admit: checked when a port comes up), not the table's.
    assert!(build(vec![PortConfig::new("a", B, PARENT)]).is_ok());
    let mut down = PortConfig::new("b", V, m);
    down.up = false;
    assert!(build(vec![PortConfig::new("a", B, m), down]).is_ok());
    assert!(err(vec![PortConfig::new("a", B, JOINED)]).contains("group or zero"));
    assert!(err(vec![PortConfig::new("a", B, MacAddr::ZERO)]).contains("group or zero"));
    let pt = err(vec![
        PortConfig::new("t", PT, m),
        PortConfig::new("b", B, mac_of("b")),
    ]);
    assert!(
        pt.contains("passthru port t") && pt.contains("b is there"),
        "{pt}"
    );
    let pt2 = err(vec![
        PortConfig::new("t", PT, m),
        PortConfig::new("u", PT, m),
    ]);
    assert!(pt2.contains("t and u are both passthru"), "{pt2}");
    let mut s = PortConfig::new("s", S, m);
    s.sources.insert(JOINED);
    assert!(err(vec![s]).contains("source MAC"));
    let mut b = PortConfig::new("b", B, m);
    b.sources.insert(EXTERNAL);
    assert!(err(vec![b]).contains("only source-mode ports"));
    let mut big = PortConfig::new("a", B, m);
    big.mtu = Some(9000);
    assert!(err(vec![big]).contains("MTU 9000"));
    let mut small = PortConfig::new("a", B, m);
    small.mtu = Some(67);
    assert!(err(vec![small]).contains("MTU 67"));
    let names = err(vec![
        PortConfig::new("a", B, m),
        PortConfig::new("a", B, mac_of("b")),
    ]);
    assert!(names.contains("two ports are named a"));
    assert!(err(vec![PortConfig::new("a-very-long-name", B, m)]).contains("longer than 15"));
    assert!(err(vec![PortConfig::new("a/b", B, m)]).contains("'/'"));
}

#[test]
fn a_pinned_guest_mac_refuses_other_sources_only_when_pinned() {
    let vm = mac_of("vm");
    let mut pinned = PortConfig::new("vm", Mode::Bridge, vm);
    pinned.pinned_mac = true;
    let trusting = PortConfig::new("trusting", Mode::Bridge, mac_of("trusting"));
    let t = build(vec![pinned, trusting]).unwrap();
    let frame = |src: MacAddr| {
        let mut b = vec![0u8; 60];
        b[..6].copy_from_slice(&MacAddr::BROADCAST.0);
        b[6..12].copy_from_slice(&src.0);
        b
    };
    let rows = [
        ("pinned port, its own MAC", PortId(0), vm, false),
        ("pinned port, another MAC", PortId(0), mac_of("other"), true),
        (
            "pinned port, a sibling's MAC",
            PortId(0),
            mac_of("trusting"),
            true,
        ),
        (
            "unpinned port, another MAC",
            PortId(1),
            mac_of("other"),
            false,
        ),
    ];
    for (name, id, src, want) in rows {
        let b = frame(src);
        let f = FrameMeta::parse(&b, None, 1514).unwrap();
        assert_eq!(spoofed(&t, id, &f), want, "{name}");
        // decide() is unchanged by the pin: the check is separate.
        let v = decide(&t, Ingress::Port(id), &f);
        assert!(v.to_wire, "{name}: decide still floods to the wire");
    }
}

#[test]
fn table_allows_a_duplicate_mac_on_a_down_port() {
    // The kernel checks at open: a down port may hold an up port's MAC (§8).
    let mut down = PortConfig::new("b", V, mac_of("a"));
    down.up = false;
    let t = build(vec![PortConfig::new("a", B, mac_of("a")), down]).unwrap();
    assert_eq!(t.lookup_up(mac_of("a")), t.by_name("a"));
}

#[test]
fn passthru_takes_the_parents_mac() {
    let t = build(vec![PortConfig::new("t", PT, mac_of("t"))]).unwrap();
    assert_eq!(t.port(PortId(0)).mac(), PARENT);
}

#[test]
fn used_bcqueuelen_is_the_max_over_all_ports() {
    let mut a = PortConfig::new("a", B, mac_of("a"));
    a.bcqueuelen = 10;
    let mut b = PortConfig::new("b", B, mac_of("b"));
    b.bcqueuelen = 4000;
    b.up = false;
    assert_eq!(build(vec![a, b]).unwrap().bc_queue_len_used(), 4000);
}

#[test]
fn mode_names_and_alias() {
    for m in Mode::ALL {
        assert_eq!(m.name().parse::<Mode>().unwrap(), m);
    }
    assert_eq!("passthrough".parse::<Mode>().unwrap(), Mode::Passthru);
    let e = "bridged".parse::<Mode>().unwrap_err().to_string();
    assert!(
        e.contains("bridged") && e.contains("private, vepa, bridge"),
        "{e}"
    );
}

// ---- Properties -----------------------------------------------------------------------------

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(Mode::ALL.to_vec())
}

/// A MAC from a small pool so that frames often hit ports, sources and groups.
fn arb_mac() -> impl Strategy<Value = MacAddr> {
    prop_oneof![
        (0u8..8).prop_map(|i| MacAddr([2, 0, 0, 0, 0, i])),
        Just(PARENT),
        Just(MacAddr::BROADCAST),
        (0u8..3).prop_map(|i| MacAddr([1, 0, 0x5e, 0, 0, i])),
        Just(MacAddr::PAUSE),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    table: PortTable,
    ingress: Ingress,
    frame: Vec<u8>,
    oob_vlan: bool,
    gso: bool,
}

fn arb_port(i: u8) -> impl Strategy<Value = PortConfig> {
    (
        arb_mode(),
        any::<bool>(),
        any::<[bool; 4]>(),
        prop::collection::btree_set(arb_mac(), 0..3),
        prop::collection::btree_set((0u8..8).prop_map(|i| MacAddr([2, 0, 0, 0, 0, i])), 0..3),
        prop::option::of(68u32..1500),
        prop::sample::select(vec![0u32, 1, 1000]),
    )
        .prop_map(move |(mode, up, fl, groups, sources, mtu, bcq)| {
            let mut p = PortConfig::new(format!("p{i}"), mode, MacAddr([2, 0, 0, 0, 0, i]));
            p.up = up;
            p.flags.nodst = fl[0];
            p.flags.nopromisc = fl[1];
            p.promisc = fl[2];
            p.allmulti = fl[3];
            p.groups = groups.into_iter().filter(MacAddr::is_group).collect();
            if mode == Mode::Source {
                p.sources = sources;
            }
            p.mtu = mtu;
            p.bcqueuelen = bcq;
            p
        })
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    let ports = (1usize..7).prop_flat_map(|n| {
        (0..u8::try_from(n).unwrap())
            .map(arb_port)
            .collect::<Vec<_>>()
    });
    (
        ports,
        -1i32..3,
        any::<[bool; 2]>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        arb_mac(),
        arb_mac(),
        14usize..1600,
        any::<[bool; 2]>(),
    )
        .prop_filter_map(
            "table must be valid",
            |(mut ports, cutoff, pf, idx, from_port, dst, src, len, fl)| {
                // A passthru port must be alone.
                if let Some(pt) = ports.iter().position(|p| p.mode == Mode::Passthru) {
                    ports = vec![ports.swap_remove(pt)];
                }
                let mut parent = ParentConfig::new("p0", PARENT, 1500);
                parent.bc_cutoff = cutoff;
                parent.unicast_filter = pf[0];
                parent.host_promisc = pf[1];
                let table = PortTable::build(parent, ports).ok()?;
                let ingress = if from_port {
                    Ingress::Port(PortId::nth(idx.index(table.ports().len())))
                } else {
                    Ingress::Parent
                };
                let mut frame = vec![0u8; len];
                frame[..6].copy_from_slice(&dst.0);
                frame[6..12].copy_from_slice(&src.0);
                Some(Scenario {
                    table,
                    ingress,
                    frame,
                    oob_vlan: fl[0],
                    gso: fl[1],
                })
            },
        )
}

impl Scenario {
    fn meta(&self) -> FrameMeta<'_> {
        let vlan = self.oob_vlan.then(|| crate::wire::frame::VlanTag::dot1q(7));
        FrameMeta::parse(&self.frame, vlan, DEFAULT_MAX_FRAME)
            .unwrap()
            .with_gso(self.gso)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Every frame goes somewhere (a port, the wire, the parent's stack) or carries a reason.
    #[test]
    fn every_frame_is_delivered_or_explained(s in arb_scenario()) {
        let v = decide(&s.table, s.ingress, &s.meta());
        let receivers = v.receivers(&s.table);
        let flood_filtered_all = matches!(v.deliver, Delivery::Flood(_)) && receivers.is_empty();
        prop_assert!(
            !receivers.is_empty() || v.to_wire || v.to_host || v.reason.is_some() || flood_filtered_all,
            "{v:?}"
        );
        if let Delivery::Flood(fl) = v.deliver {
            // Every port the flood passed over has a reason.
            for (id, o) in v.outcomes(&s.table) {
                if !receivers.contains(&id) {
                    prop_assert!(matches!(o, Outcome::Skipped(_)) || v.copies.contains(&id), "{id:?} {o:?} {fl:?}");
                }
            }
        }
    }

    /// A frame never returns to its ingress port, except through the kernel's own paths: the
    /// echo of §2 step 1.4 (RX only), a source-mode copy, or a bridge port sending to its own MAC.
    #[test]
    fn never_back_to_the_ingress_port(s in arb_scenario()) {
        let f = s.meta();
        let v = decide(&s.table, s.ingress, &f);
        if let Ingress::Port(id) = s.ingress {
            let p = s.table.port(id);
            let own_mac_local = p.mode() == Mode::Bridge && f.dst() == p.mac();
            let back = matches!(v.deliver, Delivery::One(d) if d == id)
                || matches!(v.deliver, Delivery::Flood(fl) if fl.admits(&s.table, id).is_ok());
            prop_assert!(!back || own_mac_local, "{v:?}");
        }
    }

    /// A private port never receives a group frame whose source MAC is another up local
    /// port's, whatever the ingress, with or without a hairpin switch (the reflection is the
    /// same frame received on the parent). Its own source list is the one way in (§7).
    #[test]
    fn private_ports_never_get_a_siblings_group_frame(s in arb_scenario()) {
        let f = s.meta();
        let Some(sender) = s.table.lookup_up(f.src()) else { return Ok(()) };
        if !f.dst().is_group() {
            return Ok(());
        }
        let v = decide(&s.table, s.ingress, &f);
        let mut got = v.receivers(&s.table);
        if v.to_wire {
            got.extend(decide(&s.table, Ingress::Parent, &f).receivers(&s.table));
        }
        for id in got {
            let p = s.table.port(id);
            let via_source_list = p.config.sources.contains(&f.src());
            prop_assert!(
                p.mode() != Mode::Private || id == sender || via_source_list,
                "{} got a group frame from {}", p.name(), s.table.port(sender).name()
            );
        }
    }

    /// With an up passthru port, every unicast from the wire reaches it (absent NODST, which
    /// passthru tables cannot have).
    #[test]
    fn passthru_takes_every_unicast(s in arb_scenario()) {
        // Whatever the ingress in the scenario, ask what the wire's unicast would do.
        let f = s.meta();
        let Some(pt) = s.table.passthru().filter(|pt| s.table.port(*pt).is_up()) else {
            return Ok(());
        };
        if f.dst().is_group() {
            return Ok(());
        }
        let v = decide(&s.table, Ingress::Parent, &f);
        prop_assert_eq!(v.receivers(&s.table), vec![pt]);
        prop_assert!(!v.to_host);
    }

    /// decide() never panics, for any table and any frame metadata, from any ingress.
    #[test]
    fn decide_never_panics(s in arb_scenario(), bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(f) = FrameMeta::parse(&bytes, None, 1518) {
            for ing in std::iter::once(Ingress::Parent).chain(s.table.ids().map(Ingress::Port)) {
                let v = decide(&s.table, ing, &f);
                let _ = v.receivers(&s.table);
                let _ = v.outcomes(&s.table);
            }
        }
    }
}
