//! Isolation as a security property (root): a flood from a private and a vepa port — unicast to
//! every other port's MAC, broadcast, a joined and an unjoined multicast group, tens of
//! thousands of frames — without and with a hairpin switch on the wire. Every copy each port's
//! namespace receives (counted with a packet socket there) must be one the kernel's rules allow
//! (`decide()`, composed with the switch's reflection; the differential suites hold `decide()`
//! to the kernel's macvlan): no frame reaches a port its mode forbids, every allowed copy
//! arrives, and the engine's counters equal what the namespaces saw.

// The harness and the probes' model; the parity scenarios themselves are unused here.
#[allow(unused_imports, unused_macros)]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::parity::{GROUP_A, Probe, Sender, UNJOINED, expected, observe};
use common::{ChildSpec, ChildrenProvider, Topology, TopologySpec, require_root, test_frame};
use umacvlan::forward::Mode;
use umacvlan::wire::mac::MacAddr;

/// Rounds of the flood: each sends every probe kind from both flooders once.
const ROUNDS: usize = 1500;

fn spec(hairpin: bool) -> TopologySpec {
    let mac = |i: u8| MacAddr([0x02, 0, 0, 0, 0x05, i]);
    let modes = [
        Mode::Private, // flooder
        Mode::Vepa,    // flooder
        Mode::Bridge,
        Mode::Private,
        Mode::Vepa,
    ];
    let children = modes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut c = ChildSpec::new(&format!("c{i}"), *m, mac(u8::try_from(i).unwrap()));
            if i >= 2 {
                c.groups = vec![GROUP_A];
            }
            c
        })
        .collect();
    TopologySpec {
        tag: format!("iso{}", u8::from(hairpin)),
        hairpin,
        children,
    }
}

/// The engine's `stats -j` for the topology's engine.
fn engine_stats(topo: &Topology) -> serde_json::Value {
    let h = topo.host_ns.name();
    common::engine::stats_json(h, &std::env::temp_dir().join(format!("{h}.sock")))
}

fn flood(hairpin: bool) {
    require_root();
    let started = Instant::now();
    let bin = env!("CARGO_BIN_EXE_umacvlan").into();
    let topo = Topology::build(&spec(hairpin), &ChildrenProvider::Umacvlan { bin });
    let table = topo.model_table();
    let n = topo.children.len();
    let mut dests: Vec<MacAddr> = topo.children.iter().map(|c| c.mac).collect();
    dests.extend([MacAddr::BROADCAST, GROUP_A, UNJOINED[0]]);
    let mut probes: Vec<(u64, Probe)> = Vec::new();
    for _ in 0..ROUNDS {
        for from in [0, 1] {
            let src = topo.children[from].mac;
            for dst in dests.iter().filter(|d| **d != src) {
                let nonce = probes.len() as u64 + 1;
                let frame = test_frame(*dst, src, None, nonce, 60);
                let probe = Probe {
                    sender: Sender::Child(from),
                    dest: dst.to_string(),
                    frame,
                };
                probes.push((nonce, probe));
            }
        }
    }
    let seen = observe(&topo, &probes);

    let mut forbidden: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let mut missing: BTreeMap<(usize, String), u32> = BTreeMap::new();
    let mut copies = vec![0u64; n];
    let (mut wire_extra, mut wire_missing) = (0u32, 0u32);
    for (nonce, probe) in &probes {
        let (got, want) = (&seen[nonce], expected(&table, hairpin, probe));
        let from = match probe.sender {
            Sender::Child(i) => i,
            _ => unreachable!("only children flood"),
        };
        wire_extra += got.wire.saturating_sub(want.wire);
        wire_missing += want.wire.saturating_sub(got.wire);
        let pairs = got.children.iter().zip(&want.children);
        for (i, (copy, (g, w))) in copies.iter_mut().zip(pairs).enumerate() {
            *copy += u64::from(*g);
            let key = (i, format!("c{from} -> {}", probe.dest));
            if g > w {
                *forbidden.entry(key).or_default() += g - w;
            } else if g < w {
                *missing.entry(key).or_default() += w - g;
            }
        }
    }
    assert!(
        forbidden.is_empty(),
        "hairpin={hairpin}: frames reached ports their mode forbids ((receiver, flow): copies): \
         {forbidden:?}"
    );
    assert!(
        missing.is_empty(),
        "hairpin={hairpin}: allowed copies did not arrive: {missing:?}"
    );
    assert_eq!(
        wire_extra, 0,
        "hairpin={hairpin}: copies on the wire the rules do not allow"
    );
    // Every allowed wire copy reached the wire (the children behind the hairpin saw the
    // reflections); the wire's own observer may fall behind on a loaded machine, and then the
    // kernel counts what it could not hand it.
    let observer_drops = topo.wire.kernel_drops();
    assert!(
        wire_missing <= observer_drops,
        "hairpin={hairpin}: {wire_missing} allowed copies missing on the wire, and its observer \
         dropped only {observer_drops}"
    );
    // The engine's counters: what it read from each flooder, and delivered to each port, are
    // exactly what was sent and what each namespace saw.
    let stats = engine_stats(&topo);
    let ports = stats["ports"].as_array().unwrap();
    let port = |name: &str| &ports.iter().find(|p| p["name"] == name).unwrap()["stats"];
    for (i, c) in topo.children.iter().enumerate() {
        let s = port(&c.spec.name);
        assert_eq!(
            s["rx_packets"].as_u64(),
            Some(copies[i]),
            "{}: the engine's rx count differs from what its namespace saw: {s}",
            c.spec.name
        );
    }
    let sent_by = |i: usize| {
        probes
            .iter()
            .filter(|(_, p)| p.sender == Sender::Child(i))
            .count() as u64
    };
    for i in [0, 1] {
        let s = port(&format!("c{i}"));
        assert_eq!(s["tx_packets"].as_u64(), Some(sent_by(i)), "c{i}: {s}");
    }
    eprintln!(
        "hairpin={hairpin}: {} frames flooded from c0 (private) and c1 (vepa), {} copies \
         delivered, none forbidden, in {:.1} s",
        probes.len(),
        copies.iter().sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_flood_from_private_and_vepa_ports_reaches_only_what_the_modes_allow() {
    flood(false);
}

#[test]
fn the_same_behind_a_hairpin_switch() {
    flood(true);
}
