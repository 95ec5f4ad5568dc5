//! Criterion benches for the engine's per-batch loop, without root: a TPACKET_V3 block built in
//! memory ([`fake_v3_block`]) is forwarded with the worker's own code
//! ([`deliver::from_parent_block`]), counters included, into ports whose writes cost nothing.
//! What remains is the engine's own cost per frame: the ring walk, parsing, `decide()`, the
//! gathered-write setup and the counting. The TAP writes themselves (the kernel's part) are
//! measured end to end by `tools/bench`.

use std::hint::black_box;
use std::io::{self, IoSlice};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use umacvlan::engine::counters::{ParentCounters, PortCounters};
use umacvlan::engine::deliver::{self, PortIo, ToWire};
use umacvlan::engine::observe::{Filter, ObserverCache, Observers};
use umacvlan::forward::{Mode, ParentConfig, PortConfig, PortId, PortTable};
use umacvlan::wire::mac::MacAddr;
use umacvlan::wire::ring_format::{fake_v3_block, frames_in};
use umacvlan::wire::vlan::{Claim, VidSet};
use umacvlan::wire::vnet::VNET_HDR_LEN;

/// No emulated 802.1Q sub-interfaces: every frame is the parent's.
static NO_VLANS: VidSet = VidSet::new();

/// A port whose writes succeed at once and go nowhere.
#[derive(Default)]
struct Sink(PortCounters);

impl PortIo for Sink {
    fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(iov.iter().map(|s| s.len()).sum())
    }

    fn counters(&self) -> &PortCounters {
        &self.0
    }
}

fn port_mac(i: usize) -> MacAddr {
    let [_, _, a, b] = u32::try_from(i).unwrap().to_be_bytes();
    MacAddr([2, 0, 0, 1, a, b])
}

fn table(n: usize, mode: Mode) -> PortTable {
    let parent = ParentConfig::new("p0", MacAddr([2, 0, 0, 0, 0, 1]), 1500);
    table_on(parent, n, mode)
}

fn table_on(parent: ParentConfig, n: usize, mode: Mode) -> PortTable {
    let ports = (0..n)
        .map(|i| {
            let mut p = PortConfig::new(format!("c{i}"), mode, port_mac(i));
            p.up = true;
            p
        })
        .collect();
    PortTable::build(parent, ports).unwrap()
}

/// A 64-byte frame (60 + FCS on the wire) behind a zero virtio-net header.
fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
    sized_frame(dst, src, 60)
}

/// A frame of `len` bytes (without FCS) behind a zero virtio-net header.
fn sized_frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.0);
    f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.0);
    f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// Frames per block: what a 64 KiB block holds of 64-byte frames.
const BATCH: usize = 256;
const EXT: MacAddr = MacAddr([2, 0, 0, 0, 9, 9]);

fn bench_ring_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_block");
    g.throughput(Throughput::Elements(BATCH as u64));
    for n in [1usize, 64, 1024] {
        let t = table(n, Mode::Bridge);
        let ports: Vec<Sink> = (0..n).map(|_| Sink::default()).collect();
        let pc = ParentCounters::default();
        // Unicast to every port in turn (the common case), and broadcast to all of them.
        let unicast: Vec<Vec<u8>> = (0..BATCH).map(|i| frame(port_mac(i % n), EXT)).collect();
        let cases = [
            ("unicast", unicast),
            ("broadcast", vec![frame(MacAddr::BROADCAST, EXT); BATCH]),
        ];
        for (name, frames) in &cases {
            if *name == "broadcast" && n > 64 {
                continue; // one copy per port: cost grows with n by design.
            }
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let block = fake_v3_block(&refs, 64 * 1024).expect("a batch fits a 64 KiB block");
            g.bench_with_input(BenchmarkId::new(*name, n), &block, |b, block| {
                b.iter(|| {
                    let lower = Claim::Lower(&NO_VLANS);
                    deliver::from_parent_block(
                        &t,
                        &pc,
                        &ports,
                        frames_in(black_box(block)),
                        lower,
                        None,
                    )
                });
            });
        }
    }
    g.finish();
}

fn bench_tap_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("tap_batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, mode, dst) in [
        ("bridge_to_port", Mode::Bridge, port_mac(1)),
        ("vepa_to_wire", Mode::Vepa, port_mac(1)),
        ("to_wire_unknown", Mode::Bridge, EXT),
    ] {
        let t = table(64, mode);
        let ports: Vec<Sink> = (0..64).map(|_| Sink::default()).collect();
        let f = frame(dst, port_mac(0));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut wire = 0;
                for _ in 0..BATCH {
                    if deliver::from_port(&t, &ports, PortId(0), black_box(&f)) != ToWire::No {
                        wire += 1;
                    }
                }
                wire
            });
        });
    }
    g.finish();
}

/// What a follower adds to the worker (`capture parent`, every frame): a ring block of unicast
/// frames to one port, forwarded with nobody following, with a follower of the headers
/// (snaplen 128) and with one of the whole frames. The follower's chunks are taken off its
/// channel as they come (a reader that keeps up), so each iteration pays the record copy.
fn bench_observed_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("observed_block");
    // 64-byte frames, and full-size frames of a jumbo parent (the per-byte cost of the copy).
    for (size, mtu) in [(60usize, 1500u32), (9000, 9000)] {
        let parent = ParentConfig::new("p0", MacAddr([2, 0, 0, 0, 0, 1]), mtu);
        let t = table_on(parent, 1, Mode::Bridge);
        let ports = [Sink::default()];
        let pc = ParentCounters::default();
        let block_size = 1024 * 1024;
        let n = if size == 60 { BATCH } else { 100 };
        let frames = vec![sized_frame(port_mac(0), EXT, size); n];
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let block = fake_v3_block(&refs, block_size).expect("the frames fit a 1 MiB block");
        g.throughput(Throughput::Elements(n as u64));
        for (follower, snaplen) in [
            ("none", None),
            ("headers", Some(128)),
            ("whole", Some(size)),
        ] {
            let observers = Observers::default();
            let rx = snaplen.map(|s| observers.register(Filter::All, s, 1024).1);
            let mut cache = ObserverCache::default();
            let id = BenchmarkId::new(format!("{}_bytes", size + 4), follower);
            g.bench_function(id, |b| {
                b.iter(|| {
                    let obs = observers.batch(&mut cache, "p0");
                    deliver::from_parent_block(
                        &t,
                        &pc,
                        &ports,
                        frames_in(black_box(&block)),
                        Claim::Lower(&NO_VLANS),
                        obs.as_ref(),
                    );
                    drop(obs);
                    if let Some(rx) = &rx {
                        rx.try_iter().for_each(drop);
                    }
                });
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_ring_block,
    bench_tap_batch,
    bench_observed_block
);
criterion_main!(benches);
