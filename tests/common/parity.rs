//! The differential test itself: scenarios, the probe frames sent in each, the expected result
//! from `decide()`, and the comparison with what the children, the wire and the host observed.
//!
//! One topology per scenario carries all its probes: every probe gets a nonce, all are sent,
//! then the sockets are drained until [`SETTLE`] has passed with the last send behind it.
//! Delivery *sets* are compared, never order (queued broadcast may overtake nothing, but may be
//! overtaken: docs/design.md#what-a-port-sees).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use umacvlan::forward::{Ingress, Mode, PortId, PortTable, decide};
use umacvlan::wire::frame::FrameMeta;
use umacvlan::wire::mac::MacAddr;

use super::{
    ChildSpec, ChildrenProvider, EXT_MAC, MIN_FRAME, PARENT_MAC, PacketSocket, Topology,
    TopologySpec, UNKNOWN_MAC, nonce_of, require_root, test_frame,
};

/// How long to keep collecting after the last probe was sent (≥ 200 ms: §11).
pub const SETTLE: Duration = Duration::from_millis(300);
/// ... and until nothing new has arrived for this long ...
pub const QUIET: Duration = Duration::from_millis(150);
/// ... but never longer than this.
pub const MAX_SETTLE: Duration = Duration::from_secs(3);

/// Group joined by the first two children (so it is "joined by more than bc_cutoff").
pub const GROUP_A: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x01, 0x00, 0x0a]);
/// Group joined by the last child only.
pub const GROUP_B: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x01, 0x00, 0x0b]);
/// Groups nobody joins. The kernel's per-child filter is a salted 256-bucket hash, so any one of
/// them may leak to a child (§5); several are probed so a leak cannot hide a real difference.
pub const UNJOINED: [MacAddr; 4] = [
    MacAddr([0x01, 0x00, 0x5e, 0x7f, 0x00, 0x01]),
    MacAddr([0x01, 0x00, 0x5e, 0x42, 0x17, 0x99]),
    MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]),
    MacAddr([0x33, 0x33, 0x00, 0x00, 0xbe, 0xef]),
];
/// The VID of the tagged probes (no VLAN device exists for it anywhere).
pub const VID: u16 = 200;
/// The MTU of the small child in scenarios that test §3's bridge-local MTU check.
pub const SMALL_MTU: u32 = 1400;

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// The scenarios both arms run, each without and with the hairpin switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Three bridge ports; the third has MTU 1400 (bridge-local MTU checks, §3).
    AllBridge,
    AllVepa,
    AllPrivate,
    /// One passthru port (it takes the parent's MAC).
    Passthru,
    /// Passthru with `nopromisc`: the parent is not promiscuous, so the port filters are real.
    PassthruNopromisc,
    /// A source port listing the external sender and a bridge sibling, with bridge, bridge and
    /// vepa siblings.
    Source,
    /// The same with `nodst`.
    SourceNodst,
    /// bridge + bridge + vepa + private.
    Mix,
    /// Passthru + nopromisc + bcqueuelen 0: the parent is not promiscuous, so a group joined by
    /// one port is delivered inline while broadcast, always queued, is lost (§5).
    PassthruNopromiscBcQueue0,
    /// Two source ports sharing a listed MAC (a vepa sibling's), one of them nodst, and the
    /// parent's own MAC on a list: one remote on two lists, nodst from either owner, and
    /// source copies of the host's (reflected) frames.
    SourceShared,
    /// bridge+promisc, vepa+allmulti, private, bridge: the per-child filter opens for every
    /// group, and unknown unicast still reaches no promiscuous child (§4.2).
    PromiscAllmulti,
    /// Three bridge ports with bcqueuelen 0: nothing received is queued, so no group frame from
    /// the parent reaches a port; bridge-local TX floods are synchronous and still do (§5).
    BridgeBcQueue0,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::AllBridge,
        Scenario::AllVepa,
        Scenario::AllPrivate,
        Scenario::Passthru,
        Scenario::PassthruNopromisc,
        Scenario::PassthruNopromiscBcQueue0,
        Scenario::Source,
        Scenario::SourceNodst,
        Scenario::Mix,
        Scenario::SourceShared,
        Scenario::PromiscAllmulti,
        Scenario::BridgeBcQueue0,
    ];

    fn tag(self) -> &'static str {
        match self {
            Scenario::AllBridge => "br",
            Scenario::AllVepa => "vepa",
            Scenario::AllPrivate => "priv",
            Scenario::Passthru => "pt",
            Scenario::PassthruNopromisc => "ptnp",
            Scenario::PassthruNopromiscBcQueue0 => "ptnpq0",
            Scenario::Source => "src",
            Scenario::SourceNodst => "srcnd",
            Scenario::Mix => "mix",
            Scenario::SourceShared => "srcsh",
            Scenario::PromiscAllmulti => "promisc",
            Scenario::BridgeBcQueue0 => "bcq0",
        }
    }

    /// The topology of this scenario.
    pub fn spec(self, hairpin: bool) -> TopologySpec {
        let mac = |i: u8| MacAddr([0x02, 0, 0, 0, 0x02, i]);
        let same = |mode: Mode, n: u8| -> Vec<ChildSpec> {
            (0..n)
                .map(|i| ChildSpec::new(&format!("c{i}"), mode, mac(i)))
                .collect()
        };
        let mut children = match self {
            Scenario::AllBridge | Scenario::BridgeBcQueue0 => same(Mode::Bridge, 3),
            Scenario::AllVepa => same(Mode::Vepa, 3),
            Scenario::AllPrivate => same(Mode::Private, 3),
            Scenario::Passthru
            | Scenario::PassthruNopromisc
            | Scenario::PassthruNopromiscBcQueue0 => same(Mode::Passthru, 1),
            Scenario::Source | Scenario::SourceNodst => vec![
                ChildSpec::new("c0", Mode::Source, mac(0)),
                ChildSpec::new("c1", Mode::Bridge, mac(1)),
                ChildSpec::new("c2", Mode::Bridge, mac(2)),
                ChildSpec::new("c3", Mode::Vepa, mac(3)),
            ],
            Scenario::Mix => vec![
                ChildSpec::new("c0", Mode::Bridge, mac(0)),
                ChildSpec::new("c1", Mode::Bridge, mac(1)),
                ChildSpec::new("c2", Mode::Vepa, mac(2)),
                ChildSpec::new("c3", Mode::Private, mac(3)),
            ],
            Scenario::SourceShared => vec![
                ChildSpec::new("c0", Mode::Source, mac(0)),
                ChildSpec::new("c1", Mode::Source, mac(1)),
                ChildSpec::new("c2", Mode::Vepa, mac(2)),
                ChildSpec::new("c3", Mode::Bridge, mac(3)),
            ],
            Scenario::PromiscAllmulti => vec![
                ChildSpec::new("c0", Mode::Bridge, mac(0)),
                ChildSpec::new("c1", Mode::Vepa, mac(1)),
                ChildSpec::new("c2", Mode::Private, mac(2)),
                ChildSpec::new("c3", Mode::Bridge, mac(3)),
            ],
        };
        match self {
            Scenario::AllBridge => children[2].mtu = Some(SMALL_MTU),
            Scenario::PassthruNopromisc => children[0].flags.nopromisc = true,
            Scenario::PassthruNopromiscBcQueue0 => {
                children[0].flags.nopromisc = true;
                children[0].bcqueuelen = Some(0);
            }
            Scenario::Source | Scenario::SourceNodst => {
                children[0].sources = vec![EXT_MAC, mac(1)];
                children[0].flags.nodst = self == Scenario::SourceNodst;
            }
            Scenario::SourceShared => {
                children[0].sources = vec![PARENT_MAC, mac(2)];
                children[1].sources = vec![mac(2)];
                children[1].flags.nodst = true;
            }
            Scenario::PromiscAllmulti => {
                children[0].promisc = true;
                children[1].allmulti = true;
            }
            Scenario::BridgeBcQueue0 => {
                for c in &mut children {
                    c.bcqueuelen = Some(0);
                }
            }
            _ => {}
        }
        let n = children.len();
        for (i, c) in children.iter_mut().enumerate() {
            if i < 2 {
                c.groups.push(GROUP_A);
            }
            if i + 1 == n {
                c.groups.push(GROUP_B);
            }
        }
        TopologySpec {
            tag: format!("{}{}", self.tag(), if hairpin { "-hp" } else { "" }),
            hairpin,
            children,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// Where a probe enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sender {
    /// The external sender on the wire side.
    Wire,
    /// A child, sending on its own interface.
    Child(usize),
    /// The host, sending on p0.
    Host,
}

/// One probe frame.
#[derive(Clone, Debug)]
pub struct Probe {
    pub sender: Sender,
    /// Human name of the destination, for the report.
    pub dest: String,
    pub frame: Vec<u8>,
}

fn sender_name(topo: &Topology, s: Sender) -> String {
    match s {
        Sender::Wire => "wire".into(),
        Sender::Child(i) => {
            let c = &topo.children[i].spec;
            format!("{}({})", c.name, c.mode)
        }
        Sender::Host => "host".into(),
    }
}

/// Every probe of a scenario: from every ingress to every destination class.
pub fn probes(topo: &Topology, mut nonce: impl FnMut() -> u64) -> Vec<Probe> {
    let children = &topo.children;
    let senders: Vec<(Sender, MacAddr, u32)> =
        std::iter::once((Sender::Wire, EXT_MAC, super::PARENT_MTU))
            .chain(
                children
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (Sender::Child(i), c.mac, c.spec.effective_mtu())),
            )
            .chain(std::iter::once((
                Sender::Host,
                PARENT_MAC,
                super::PARENT_MTU,
            )))
            .collect();

    // (label, dst, vlan, len)
    let mut dests: Vec<(String, MacAddr, Option<u16>, usize)> = Vec::new();
    for c in children {
        dests.push((format!("{}-mac", c.spec.name), c.mac, None, MIN_FRAME));
    }
    dests.push(("parent-mac".into(), PARENT_MAC, None, MIN_FRAME));
    dests.push(("unknown".into(), UNKNOWN_MAC, None, MIN_FRAME));
    dests.push(("broadcast".into(), MacAddr::BROADCAST, None, MIN_FRAME));
    let joined = |g: MacAddr| -> String {
        let names: Vec<&str> = children
            .iter()
            .filter(|c| c.spec.groups.contains(&g))
            .map(|c| c.spec.name.as_str())
            .collect();
        names.join(",")
    };
    dests.push((
        format!("group-A({})", joined(GROUP_A)),
        GROUP_A,
        None,
        MIN_FRAME,
    ));
    dests.push((
        format!("group-B({})", joined(GROUP_B)),
        GROUP_B,
        None,
        MIN_FRAME,
    ));
    for g in UNJOINED {
        dests.push((format!("unjoined {g}"), g, None, MIN_FRAME));
    }
    let first = &children[0];
    dests.push((
        format!("vlan{VID} {}-mac", first.spec.name),
        first.mac,
        Some(VID),
        MIN_FRAME,
    ));
    let lastc = &children[children.len() - 1];
    dests.push((
        format!("vlan{VID} {}-mac", lastc.spec.name),
        lastc.mac,
        Some(VID),
        MIN_FRAME,
    ));
    dests.push((
        format!("vlan{VID} broadcast"),
        MacAddr::BROADCAST,
        Some(VID),
        MIN_FRAME,
    ));
    dests.push((format!("vlan{VID} group-A"), GROUP_A, Some(VID), MIN_FRAME));
    // Long frames: around the smallest child MTU + 18 (the bridge-local group copy limit, §3),
    // and a full 1514-byte frame, which a smaller-MTU child may receive from the parent (RX
    // never checks MTU) and by bridge-local unicast (checked against the parent's MTU).
    let small = children
        .iter()
        .map(|c| c.spec.effective_mtu())
        .min()
        .unwrap_or(1500) as usize;
    for len in [small + 18, small + 19, 1514] {
        dests.push((
            format!("broadcast len {len}"),
            MacAddr::BROADCAST,
            None,
            len,
        ));
    }
    dests.push(("group-A len 1514".into(), GROUP_A, None, 1514));
    dests.push((
        format!("{}-mac len 1514", lastc.spec.name),
        lastc.mac,
        None,
        1514,
    ));
    dests.dedup_by(|a, b| a.0 == b.0);

    let mut out = Vec::new();
    for (sender, src, mtu) in &senders {
        for (label, dst, vlan, len) in &dests {
            // An AF_PACKET send above MTU + 14 (+ 4 if tagged) fails with EMSGSIZE.
            let max = *mtu as usize + 14 + if vlan.is_some() { 4 } else { 0 };
            if *len > max {
                continue;
            }
            out.push(Probe {
                sender: *sender,
                dest: label.clone(),
                frame: test_frame(*dst, *src, *vlan, nonce(), *len),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Observation and model
// ---------------------------------------------------------------------------------------------

/// Who saw one probe, or who should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Copies per child (index = child index = PortId).
    pub children: Vec<u32>,
    /// Copies that arrived on the wire from the parent.
    pub wire: u32,
    /// Copies handed to the host's own stack (recorded, not asserted:
    /// docs/design.md#differences-from-the-kernel).
    pub host: u32,
}

impl Seen {
    fn new(n: usize) -> Seen {
        Seen {
            children: vec![0; n],
            ..Seen::default()
        }
    }

    pub fn child_set(&self) -> BTreeSet<usize> {
        (0..self.children.len())
            .filter(|i| self.children[*i] > 0)
            .collect()
    }
}

/// What `decide()` says happens to `probe`, composed with the hairpin switch: a TX verdict with
/// `to_wire` comes back as an RX frame on the parent, and so does everything the host sends.
pub fn expected(table: &PortTable, hairpin: bool, probe: &Probe) -> Seen {
    let n = table.ports().len();
    let mut seen = Seen::new(n);
    let frame = FrameMeta::parse(&probe.frame, None, table.parent().max_frame)
        .unwrap_or_else(|e| panic!("probe {}: {e}", probe.dest));
    let add = |seen: &mut Seen, ingress: Ingress| {
        let v = decide(table, ingress, &frame);
        v.for_each_receiver(table, |id: PortId| seen.children[id.index()] += 1);
        seen.host += u32::from(v.to_host);
        v.to_wire
    };
    let on_wire = match probe.sender {
        Sender::Wire => {
            add(&mut seen, Ingress::Parent);
            false
        }
        Sender::Child(i) => add(&mut seen, Ingress::Port(PortId::nth(i))),
        Sender::Host => true,
    };
    seen.wire = u32::from(on_wire);
    if on_wire && hairpin {
        add(&mut seen, Ingress::Parent);
    }
    seen
}

/// Sends every probe and collects, per nonce, what each observer saw.
pub fn observe(topo: &Topology, probes: &[(u64, Probe)]) -> BTreeMap<u64, Seen> {
    let n = topo.children.len();
    let mut seen: BTreeMap<u64, Seen> = probes.iter().map(|(k, _)| (*k, Seen::new(n))).collect();
    let collect = |seen: &mut BTreeMap<u64, Seen>| {
        for (i, c) in topo.children.iter().enumerate() {
            c.sock.drain(|r| {
                if r.pkttype != libc::PACKET_OUTGOING
                    && let Some(s) = nonce_of(&r.bytes).and_then(|k| seen.get_mut(&k))
                {
                    s.children[i] += 1;
                }
            });
        }
        topo.wire.drain(|r| {
            if r.pkttype != libc::PACKET_OUTGOING
                && let Some(s) = nonce_of(&r.bytes).and_then(|k| seen.get_mut(&k))
            {
                s.wire += 1;
            }
        });
        let p0 = topo.host.ifindex();
        topo.host.drain(|r| {
            if r.pkttype != libc::PACKET_OUTGOING
                && r.ifindex == p0
                && let Some(s) = nonce_of(&r.bytes).and_then(|k| seen.get_mut(&k))
            {
                s.host += 1;
            }
        });
        if let Some(ext) = &topo.ext {
            ext.drain(|_| {}); // Flooded copies reaching the external sender: not observed.
        }
    };
    for (i, (_, p)) in probes.iter().enumerate() {
        let sock: &PacketSocket = match p.sender {
            Sender::Wire => topo.ext_sender(),
            Sender::Child(c) => &topo.children[c].sock,
            Sender::Host => &topo.host,
        };
        sock.send(&p.frame).unwrap_or_else(|e| {
            panic!(
                "send of {} bytes from {} to {} failed: {e}",
                p.frame.len(),
                sender_name(topo, p.sender),
                p.dest
            )
        });
        if i % 16 == 15 {
            collect(&mut seen);
        }
    }
    // Settle: at least SETTLE after the last send, and until nothing new arrived for QUIET
    // (a loaded CI machine may run the broadcast-queue worker late), at most MAX_SETTLE.
    let total = |seen: &BTreeMap<u64, Seen>| -> u32 {
        seen.values()
            .map(|s| s.children.iter().sum::<u32>() + s.wire + s.host)
            .sum()
    };
    let start = Instant::now();
    let (mut last_total, mut last_change) = (total(&seen), start);
    loop {
        std::thread::sleep(Duration::from_millis(10));
        collect(&mut seen);
        let now = Instant::now();
        let t = total(&seen);
        if t != last_total {
            (last_total, last_change) = (t, now);
        }
        let settled = now - start >= SETTLE && now - last_change >= QUIET;
        if settled || now - start >= MAX_SETTLE {
            break;
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Comparison and report
// ---------------------------------------------------------------------------------------------

/// How one probe compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Same,
    /// Only extra deliveries of a multicast group to children that did not join it (§5).
    Leak,
    Differ,
}

pub struct Row {
    pub sender: String,
    pub dest: String,
    pub dst: MacAddr,
    pub observed: Seen,
    pub model: Seen,
    pub outcome: Outcome,
    /// Children whose extra delivery was tolerated.
    pub leaked: BTreeSet<usize>,
}

fn classify(
    table: &PortTable,
    probe: &Probe,
    obs: &Seen,
    model: &Seen,
) -> (Outcome, BTreeSet<usize>) {
    let (o, m) = (obs.child_set(), model.child_set());
    let missing: BTreeSet<_> = m.difference(&o).copied().collect();
    let extra: BTreeSet<usize> = o.difference(&m).copied().collect();
    let dst = MacAddr(probe.frame[..6].try_into().expect("6 bytes"));
    let leak_ok = |i: &usize| dst.is_multicast() && !table.port(PortId::nth(*i)).accepts_group(dst);
    let wire_same = (obs.wire > 0) == (model.wire > 0);
    if !missing.is_empty() || !wire_same || !extra.iter().all(leak_ok) {
        (Outcome::Differ, extra)
    } else if !extra.is_empty() {
        (Outcome::Leak, extra)
    } else {
        (Outcome::Same, extra)
    }
}

fn fmt_set(topo: &Topology, s: &Seen) -> String {
    let names: Vec<String> = s
        .children
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            let name = &topo.children[i].spec.name;
            if *n > 1 {
                format!("{name}x{n}")
            } else {
                name.clone()
            }
        })
        .collect();
    format!(
        "{{{}}} wire={} host={}",
        names.join(","),
        if s.wire > 0 { "y" } else { "n" },
        if s.host > 0 { "y" } else { "n" }
    )
}

fn describe(topo: &Topology) -> String {
    let mut s = format!("hairpin={} children:", topo.spec.hairpin);
    for c in &topo.children {
        let _ = write!(s, " {}={}", c.spec.name, c.spec.mode);
        if c.spec.flags.nodst {
            s += "+nodst";
        }
        if c.spec.flags.nopromisc {
            s += "+nopromisc";
        }
        if c.spec.promisc {
            s += "+promisc";
        }
        if c.spec.allmulti {
            s += "+allmulti";
        }
        let _ = write!(s, "[{}", c.mac);
        if let Some(m) = c.spec.mtu {
            let _ = write!(s, " mtu {m}");
        }
        if let Some(n) = c.spec.bcqueuelen {
            let _ = write!(s, " bcqueuelen {n}");
        }
        if !c.spec.sources.is_empty() {
            let srcs: Vec<_> = c.spec.sources.iter().map(MacAddr::to_string).collect();
            let _ = write!(s, " sources {}", srcs.join(","));
        }
        let groups: Vec<_> = c.groups.iter().map(MacAddr::to_string).collect();
        let _ = write!(s, " groups {}]", groups.join(","));
    }
    s
}

/// Builds `scenario` with `provider`'s children, sends every probe, and asserts that every
/// child delivery set and every wire bit equal `decide()`'s (modulo the multicast-hash leak).
/// Host observations are printed, not asserted.
///
/// For the engine arm it then builds the very same topology with the kernel's macvlan children
/// and asserts, probe by probe, that the engine's delivery sets and wire bits equal the
/// kernel's: the only tolerated difference is the kernel delivering an extra copy of a group the
/// child did not join (its hashed filter, §5).
pub fn run(scenario: Scenario, hairpin: bool, provider: &ChildrenProvider, arm: &str) {
    let (table, engine) = run_arm(scenario, hairpin, provider, arm);
    if matches!(provider, ChildrenProvider::Umacvlan { .. }) {
        let (_, kernel) = run_arm(scenario, hairpin, &ChildrenProvider::Kernel, "kernel");
        compare_arms(&table, &kernel, &engine, arm);
    }
}

/// The engine's observations against the kernel's, probe by probe (same probes, same order).
fn compare_arms(table: &PortTable, kernel: &[Row], engine: &[Row], arm: &str) {
    assert_eq!(kernel.len(), engine.len(), "both arms send the same probes");
    let mut differ = Vec::new();
    for (k, e) in kernel.iter().zip(engine) {
        assert_eq!(
            (&k.sender, &k.dest),
            (&e.sender, &e.dest),
            "probes in the same order"
        );
        let (ks, es) = (k.observed.child_set(), e.observed.child_set());
        let kernel_leak =
            |i: &usize| k.dst.is_multicast() && !table.port(PortId::nth(*i)).accepts_group(k.dst);
        let same_children = es.is_subset(&ks) && ks.difference(&es).all(kernel_leak);
        let same_wire = (k.observed.wire > 0) == (e.observed.wire > 0);
        if !same_children || !same_wire {
            differ.push(format!(
                "  {:<16} {:<24} kernel {:?} wire {}   {arm} {:?} wire {}",
                k.sender, k.dest, ks, k.observed.wire, es, e.observed.wire
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{arm} and the kernel's macvlan differ on {} of {} probes:\n{}",
        differ.len(),
        kernel.len(),
        differ.join("\n")
    );
}

fn run_arm(
    scenario: Scenario,
    hairpin: bool,
    provider: &ChildrenProvider,
    arm: &str,
) -> (PortTable, Vec<Row>) {
    require_root();
    let spec = scenario.spec(hairpin);
    let topo = Topology::build(&spec, provider);
    let table = topo.model_table();
    let mut next = 0u64;
    let probes: Vec<(u64, Probe)> = probes(&topo, || {
        next += 1;
        next
    })
    .into_iter()
    .map(|p| (nonce_of(&p.frame).expect("probe carries a nonce"), p))
    .collect();
    let seen = observe(&topo, &probes);

    let rows: Vec<Row> = probes
        .iter()
        .map(|(k, p)| {
            let model = expected(&table, hairpin, p);
            let observed = seen[k].clone();
            let (outcome, leaked) = classify(&table, p, &observed, &model);
            Row {
                sender: sender_name(&topo, p.sender),
                dest: p.dest.clone(),
                dst: MacAddr(p.frame[..6].try_into().expect("6 bytes")),
                observed,
                model,
                outcome,
                leaked,
            }
        })
        .collect();

    let title = format!(
        "{arm} vs decide(): scenario {:?} ({})",
        scenario,
        describe(&topo)
    );
    let mut report = String::new();
    let line = |r: &Row| {
        format!(
            "  {:<16} {:<24} {:<7} {:<34} {}",
            r.sender,
            r.dest,
            match r.outcome {
                Outcome::Same => "same",
                Outcome::Leak => "LEAK",
                Outcome::Differ => "DIFFER",
            },
            fmt_set(&topo, &r.observed),
            fmt_set(&topo, &r.model),
        )
    };
    let header = format!(
        "  {:<16} {:<24} {:<7} {:<34} {}",
        "ingress", "destination", "result", arm, "decide()"
    );
    let differ: Vec<&Row> = rows
        .iter()
        .filter(|r| r.outcome == Outcome::Differ)
        .collect();
    let leaks: Vec<&Row> = rows.iter().filter(|r| r.outcome == Outcome::Leak).collect();
    let host_diff: Vec<&Row> = rows
        .iter()
        .filter(|r| (r.observed.host > 0) != (r.model.host > 0))
        .collect();
    let _ = writeln!(
        report,
        "{title}\n  {} probes: {} same, {} tolerated multicast leaks, {} DIFFER; host column \
         differs (not asserted) in {}",
        rows.len(),
        rows.len() - differ.len() - leaks.len(),
        leaks.len(),
        differ.len(),
        host_diff.len()
    );
    if !leaks.is_empty() {
        let _ = writeln!(
            report,
            " tolerated leaks of unjoined groups (§5):\n{header}"
        );
        for r in &leaks {
            let _ = writeln!(report, "{}", line(r));
        }
    }
    if !host_diff.is_empty() {
        let _ = writeln!(
            report,
            " host observation differs (recorded only):\n{header}"
        );
        for r in &host_diff {
            let _ = writeln!(report, "{}", line(r));
        }
    }
    let verbose = std::env::var_os("UMV_PARITY_VERBOSE").is_some();
    if differ.is_empty() {
        if verbose {
            let _ = writeln!(report, " all probes:\n{header}");
            for r in &rows {
                let _ = writeln!(report, "{}", line(r));
            }
        }
        println!("{report}");
        return (table, rows);
    }
    let _ = writeln!(report, " DIFFERENCES:\n{header}");
    for r in &differ {
        let _ = writeln!(report, "{}", line(r));
    }
    let _ = writeln!(report, " all probes:\n{header}");
    for r in &rows {
        let _ = writeln!(report, "{}", line(r));
    }
    panic!("{} of {} probes differ\n{report}", differ.len(), rows.len());
}

/// Declares one `#[test]` per scenario and hairpin setting, running `run` with `$provider`
/// (an expression giving a [`ChildrenProvider`]) and naming the arm `$arm` in reports, plus a
/// test that the list covers [`Scenario::ALL`]. Both arms expand the same list, so they can
/// never drift apart.
macro_rules! parity_tests {
    ($provider:expr, $arm:literal) => {
        $crate::common::parity::parity_tests!(@each $provider, $arm;
            all_bridge, all_bridge_hairpin => AllBridge;
            all_vepa, all_vepa_hairpin => AllVepa;
            all_private, all_private_hairpin => AllPrivate;
            passthru, passthru_hairpin => Passthru;
            passthru_nopromisc, passthru_nopromisc_hairpin => PassthruNopromisc;
            passthru_nopromisc_bcqueuelen_0, passthru_nopromisc_bcqueuelen_0_hairpin => PassthruNopromiscBcQueue0;
            source, source_hairpin => Source;
            source_nodst, source_nodst_hairpin => SourceNodst;
            mix, mix_hairpin => Mix;
            source_shared, source_shared_hairpin => SourceShared;
            promisc_allmulti, promisc_allmulti_hairpin => PromiscAllmulti;
            bridge_bcqueuelen_0, bridge_bcqueuelen_0_hairpin => BridgeBcQueue0;
        );
    };
    (@each $provider:expr, $arm:literal; $($name:ident, $hairpin:ident => $sc:ident;)*) => {
        $(
            #[test]
            fn $name() {
                use $crate::common::parity::{Scenario, run};
                run(Scenario::$sc, false, &$provider, $arm);
            }
            #[test]
            fn $hairpin() {
                use $crate::common::parity::{Scenario, run};
                run(Scenario::$sc, true, &$provider, $arm);
            }
        )*
        #[test]
        fn every_scenario_is_listed() {
            use $crate::common::parity::Scenario;
            assert_eq!([$(Scenario::$sc),*], Scenario::ALL, "parity_tests! must list every scenario");
        }
    };
}
pub(crate) use parity_tests;
