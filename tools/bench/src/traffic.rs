//! The traffic generators: a 64-byte frame blaster (sendmmsg on an AF_PACKET socket) with a
//! TPACKET_V3 ring counting at the receiver, a UDP ping-pong, and TCP bulk (iperf3, or our own
//! sender/receiver when iperf3 is not installed).
//!
//! Sockets are opened inside the lab's namespaces by [`in_netns`] (a thread that `setns`es and
//! ends); the fds keep their namespace, so the traffic itself runs on ordinary threads.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use umacvlan::net::{Netlink, Netns, in_netns};
use umacvlan::sys::ring::{RingConfig, RingVersion, RxRing};
use umacvlan::sys::tx::{MmsgScratch, TxSocket};
use umacvlan::wire::mac::MacAddr;
use umacvlan::wire::vnet::VNET_HDR_LEN;

use crate::lab::ns_command;

/// IEEE 802 "local experimental" ethertype: the children's stacks drop it at once, and the
/// counting socket sees nothing else.
pub const ETH_P_BENCH: u16 = 0x88b5;
/// 60 bytes + the 4-byte FCS a real wire would add = a minimum-size 64-byte Ethernet frame.
const FRAME_LEN: usize = 60;
pub const BATCH: usize = 64;

fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let mut nl = Netlink::open_in(ns)?;
    Ok(nl
        .link_by_name(dev)?
        .with_context(|| format!("no device {dev}"))?
        .index)
}

/// The counting ring at the receiver: 16 blocks of 1 MiB, handed over after 2 ms when partly
/// filled. It is umacvlan's own audited ring (`umacvlan::sys::ring`), and the blaster sends with
/// its TX socket: the bench keeps no ring or `sendmmsg` code of its own.
const COUNT_RING: RingConfig = RingConfig {
    version: RingVersion::V3,
    block_size: 1 << 20,
    block_nr: 16,
    frame_size: 2048,
    retire_tov_ms: 2,
};

/// Whether a ring frame (virtio-net header first) is one of the blaster's.
fn is_bench_frame(with_vnet: &[u8]) -> bool {
    with_vnet.get(VNET_HDR_LEN + 12..VNET_HDR_LEN + 14) == Some(&ETH_P_BENCH.to_be_bytes()[..])
}

/// Count the blaster's frames arriving in `ring` until `done`, then drain what is left.
fn count_ring(ring: &mut RxRing, done: &AtomicBool) -> u64 {
    let mut count = 0u64;
    loop {
        let finishing = done.load(Ordering::Acquire);
        let mut got = false;
        while let Some(block) = ring.next_block() {
            got = true;
            count += block
                .frames()
                .filter(|f| is_bench_frame(f.with_vnet()))
                .count() as u64;
        }
        if finishing && !got {
            return count;
        }
        let mut pfd = [nix::poll::PollFd::new(
            ring.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(10u8));
    }
}

/// The pps test's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Pps {
    /// What the blaster put on the wire, frames/s.
    pub sent: f64,
    /// What reached c1's packet socket, frames/s.
    pub received: f64,
    /// Frames the counting socket itself dropped (its ring full): 0 when the count is exact.
    pub rx_socket_drops: u64,
}

/// Blast 60-byte frames (64 with FCS) from wire0 to `dst` for `dur`; count them at `dev` in `rx_ns`.
pub fn pps(
    wire: &Netns,
    wire_mac: MacAddr,
    rx_ns: &Netns,
    dev: &str,
    dst: MacAddr,
    dur: Duration,
    stop: &AtomicBool,
) -> Result<Pps> {
    let rx_if = ifindex(rx_ns, dev)?;
    let tx_if = ifindex(wire, "wire0")?;
    let mut rx = in_netns(rx_ns, || RxRing::open(rx_if, COUNT_RING))??;
    let tx = in_netns(wire, || TxSocket::open(tx_if))??;
    let _ = rx.stats(); // clear
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Pps> {
        let counter = s.spawn(|| {
            let received = count_ring(&mut rx, &done);
            (received, rx.stats())
        });
        let (sent, elapsed) = blast(&tx, wire_mac, dst, dur, stop);
        // Let the last frames cross the forwarder and the ring's 2 ms block timer fire.
        std::thread::sleep(Duration::from_millis(150));
        done.store(true, Ordering::Release);
        let (received, st) = counter.join().expect("counter thread");
        let st = st.context("PACKET_STATISTICS")?;
        let secs = elapsed.as_secs_f64();
        Ok(Pps {
            sent: sent as f64 / secs,
            received: received as f64 / secs,
            rx_socket_drops: u64::from(st.drops),
        })
    })
}

/// A zero virtio-net header (no offload), then a 60-byte frame `src` → `dst` of the bench's
/// ethertype: what the blasters send (a [`TxSocket`] takes the header first).
pub fn bench_frame(src: MacAddr, dst: MacAddr) -> [u8; VNET_HDR_LEN + FRAME_LEN] {
    let mut frame = [0u8; VNET_HDR_LEN + FRAME_LEN];
    let eth = &mut frame[VNET_HDR_LEN..];
    eth[..6].copy_from_slice(&dst.0);
    eth[6..12].copy_from_slice(&src.0);
    eth[12..14].copy_from_slice(&ETH_P_BENCH.to_be_bytes());
    frame
}

/// sendmmsg batches of one 60-byte frame for `dur`; returns (frames sent, time taken).
fn blast(
    tx: &TxSocket,
    src: MacAddr,
    dst: MacAddr,
    dur: Duration,
    stop: &AtomicBool,
) -> (u64, Duration) {
    let frame = bench_frame(src, dst);
    let mut scratch = MmsgScratch::default();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur && !stop.load(Ordering::Relaxed) {
        match tx.send_batch(std::iter::repeat_n(&frame[..], BATCH), &mut scratch) {
            Ok(n) if n > 0 => sent += n as u64,
            // ENOBUFS/EAGAIN: the device queue is full; yield and go on.
            _ => std::thread::yield_now(),
        }
    }
    (sent, start.elapsed())
}

/// Round-trip times of a UDP ping-pong, µs.
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    pub median_us: f64,
    pub p99_us: f64,
    pub lost: u32,
}

const ECHO_PORT: u16 = 7007;

/// An echo server at `server_addr` in `server_ns`, `n` round trips from a client in `client_ns`.
pub fn rtt(
    server_ns: &Netns,
    server_addr: Ipv4Addr,
    client_ns: &Netns,
    n: u32,
    stop: &AtomicBool,
) -> Result<Rtt> {
    let server = in_netns(server_ns, || UdpSocket::bind((server_addr, ECHO_PORT)))??;
    server.set_read_timeout(Some(Duration::from_millis(50)))?;
    let client = in_netns(client_ns, || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect((server_addr, ECHO_PORT))?;
        Ok(s)
    })??;
    client.set_read_timeout(Some(Duration::from_millis(500)))?;
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Rtt> {
        let echo = s.spawn(|| -> std::io::Result<()> {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                match server.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        server.send_to(&buf[..len], from)?;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
        let result = ping_pong(&client, n, stop);
        done.store(true, Ordering::Relaxed);
        echo.join().expect("echo thread").context("echo server")?;
        result
    })
}

fn ping_pong(client: &UdpSocket, n: u32, stop: &AtomicBool) -> Result<Rtt> {
    let mut payload = [0u8; 64];
    let mut buf = [0u8; 2048];
    let mut one = |seq: u64| -> std::io::Result<Option<Duration>> {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        client.send(&payload)?;
        loop {
            match client.recv(&mut buf) {
                Ok(len) if len >= 8 && buf[..8] == seq.to_le_bytes() => {
                    return Ok(Some(t0.elapsed()));
                }
                Ok(_) => continue, // a late reply to an earlier, timed-out probe
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    };
    // Warm up: ARP on both sides, caches; 20 answered probes (or give up after 100 tries).
    let mut seq = 1u64 << 40;
    let mut ok = 0;
    for _ in 0..100 {
        seq += 1;
        if one(seq)?.is_some() {
            ok += 1;
            if ok == 20 {
                break;
            }
        }
    }
    if ok == 0 {
        bail!("no UDP echo reply at all (is the path up?)");
    }
    let mut samples = Vec::with_capacity(n as usize);
    let mut lost = 0;
    for seq in 0..u64::from(n) {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        match one(seq)? {
            Some(d) => samples.push(d.as_secs_f64() * 1e6),
            None => lost += 1,
        }
    }
    if samples.is_empty() {
        bail!("every probe was lost");
    }
    samples.sort_by(f64::total_cmp);
    Ok(Rtt {
        median_us: percentile(&samples, 50.0),
        p99_us: percentile(&samples, 99.0),
        lost,
    })
}

/// Nearest-rank percentile of sorted samples.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the rank is a small non-negative count (clamped below)"
)]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// TCP bulk with iperf3 (-J): server in `server_ns` (by name), client in `client_ns`; Gbit/s
/// received.
pub fn iperf3(
    server_ns: &str,
    server_addr: Ipv4Addr,
    client_ns: &str,
    secs: u64,
    streams: u32,
) -> Result<f64> {
    let addr = server_addr.to_string();
    let mut server = ns_command(server_ns, "iperf3")
        .args(["-s", "-1", "-B", &addr, "-p", "5201", "--forceflush"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start iperf3 -s")?;
    let reap = |server: &mut std::process::Child| {
        let _ = server.kill();
        let _ = server.wait();
    };
    let mut lines = BufReader::new(server.stdout.take().expect("piped"));
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            let mut err = String::new();
            if let Some(mut e) = server.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            reap(&mut server);
            bail!("iperf3 server exited: {}", err.trim());
        }
        if line.contains("Server listening") {
            break;
        }
    }
    // Keep draining the server's stdout so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = lines.read_to_end(&mut sink);
    });
    let out = ns_command(client_ns, "iperf3")
        .args(["-c", &addr, "-p", "5201", "-J", "-t"])
        .arg(secs.to_string())
        .arg("-P")
        .arg(streams.to_string())
        .stdin(Stdio::null())
        .output()
        .context("run iperf3 -c")?;
    reap(&mut server);
    let _ = drain.join();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("iperf3 -J output is not JSON: {}", text.trim()))?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

/// TCP bulk with our own sender/receiver (when iperf3 is not installed): `streams` connections
/// writing 128 KiB buffers for `dur`; Gbit/s received.
pub fn own_tcp(
    server_ns: &Netns,
    server_addr: Ipv4Addr,
    client_ns: &Netns,
    dur: Duration,
    streams: u32,
) -> Result<f64> {
    let listener = in_netns(server_ns, || TcpListener::bind((server_addr, 5202)))??;
    let received = AtomicU64::new(0);
    let start = Instant::now();
    let end = std::thread::scope(|s| -> Result<Instant> {
        let rx = s.spawn(|| -> std::io::Result<Instant> {
            std::thread::scope(|s2| {
                let mut readers = Vec::new();
                for _ in 0..streams {
                    let (mut conn, _) = listener.accept()?;
                    let received = &received;
                    readers.push(s2.spawn(move || -> std::io::Result<Instant> {
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            let n = conn.read(&mut buf)?;
                            if n == 0 {
                                return Ok(Instant::now());
                            }
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }));
                }
                let mut last = Instant::now();
                for r in readers {
                    last = last.max(r.join().expect("reader")?);
                }
                Ok(last)
            })
        });
        let mut senders = Vec::new();
        for _ in 0..streams {
            let conn = in_netns(client_ns, || TcpStream::connect((server_addr, 5202)))??;
            senders.push(s.spawn(move || -> std::io::Result<()> {
                let mut conn = conn;
                let buf = vec![0x5au8; 128 * 1024];
                while start.elapsed() < dur {
                    conn.write_all(&buf)?;
                }
                conn.shutdown(std::net::Shutdown::Write)
            }));
        }
        for t in senders {
            t.join().expect("sender").context("TCP sender")?;
        }
        rx.join().expect("receiver").context("TCP receiver")
    })?;
    let secs = end.duration_since(start).as_secs_f64();
    Ok(received.load(Ordering::Relaxed) as f64 * 8.0 / secs / 1e9)
}
