//! Criterion benches for the pure core: `decide()` for each destination class at 1, 64 and
//! 4096 ports, and `FrameMeta::parse` against etherparse's Ethernet header slice.
//!
//! Group frames walk their receivers, so their cost grows with how many ports get the frame;
//! unicast must stay flat in the port count.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use umacvlan::forward::{Ingress, Mode, ParentConfig, PortConfig, PortTable, decide};
use umacvlan::wire::frame::FrameMeta;
use umacvlan::wire::mac::MacAddr;

const JOINED: MacAddr = MacAddr([1, 0, 0x5e, 0, 0, 1]);
const UNJOINED: MacAddr = MacAddr([1, 0, 0x5e, 0, 0, 2]);

fn port_mac(i: usize) -> MacAddr {
    let [_, _, a, b] = u32::try_from(i).unwrap().to_be_bytes();
    MacAddr([2, 0, 0, 1, a, b])
}

/// `n` bridge ports; one in 64 has joined JOINED.
fn table(n: usize) -> PortTable {
    let parent = ParentConfig::new("p0", MacAddr([2, 0, 0, 0, 0, 1]), 1500);
    let ports = (0..n)
        .map(|i| {
            let mut p = PortConfig::new(format!("c{i}"), Mode::Bridge, port_mac(i));
            if i % 64 == 0 {
                p.groups.insert(JOINED);
            }
            p
        })
        .collect();
    PortTable::build(parent, ports).unwrap()
}

fn frame(dst: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 9, 9]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn bench_decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [1usize, 64, 4096] {
        let t = table(n);
        let cases = [
            ("unicast", frame(port_mac(n / 2))),
            ("broadcast", frame(MacAddr::BROADCAST)),
            ("multicast_joined", frame(JOINED)),
            ("multicast_unjoined", frame(UNJOINED)),
        ];
        for (name, bytes) in &cases {
            g.bench_with_input(BenchmarkId::new(*name, n), bytes, |b, bytes| {
                b.iter(|| {
                    let f = FrameMeta::parse(black_box(bytes), None, 1518).unwrap();
                    let v = decide(&t, Ingress::Parent, &f);
                    let mut receivers = 0u32;
                    v.for_each_receiver(&t, |_| receivers += 1);
                    black_box(receivers)
                })
            });
        }
    }
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let tagged = {
        let mut f = frame(port_mac(1));
        f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        f
    };
    g.bench_function("framemeta_untagged", |b| {
        let f = frame(port_mac(1));
        b.iter(|| {
            let m = FrameMeta::parse(black_box(&f), None, 1518).unwrap();
            black_box((m.dst(), m.src(), m.outer_vlan(), m.ethertype()))
        })
    });
    g.bench_function("framemeta_tagged", |b| {
        b.iter(|| {
            let m = FrameMeta::parse(black_box(&tagged), None, 1518).unwrap();
            black_box((m.dst(), m.src(), m.outer_vlan(), m.ethertype()))
        })
    });
    g.bench_function("etherparse_tagged", |b| {
        b.iter(|| {
            let s = etherparse::LaxSlicedPacket::from_ethernet(black_box(&tagged)).unwrap();
            let eth = s.link.as_ref().and_then(|l| l.to_header());
            black_box((eth, s.vlan().map(|v| v.to_header())))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decide, bench_parse);
criterion_main!(benches);
