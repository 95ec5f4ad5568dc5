//! The traffic generators: a 64-byte frame blaster (sendmmsg on an AF_PACKET socket) with a
//! TPACKET_V3 ring counting at the receiver, a UDP ping-pong, and TCP bulk (iperf3, or our own
//! sender/receiver when iperf3 is not installed).
//!
//! Sockets are opened inside the lab's namespaces by [`in_netns`] (a thread that `setns`es and
//! ends); the fds keep their namespace, so the traffic itself runs on ordinary threads.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use umacvlan::net::{Netlink, Netns, in_netns};
use umacvlan::wire::mac::MacAddr;

use crate::lab::ns_command;

/// IEEE 802 "local experimental" ethertype: the children's stacks drop it at once, and the
/// counting socket sees nothing else.
const ETH_P_BENCH: u16 = 0x88b5;
/// 60 bytes + the 4-byte FCS a real wire would add = a minimum-size 64-byte Ethernet frame.
const FRAME_LEN: usize = 60;
const BATCH: usize = 64;

fn ifindex(ns: &Netns, dev: &str) -> Result<u32> {
    let mut nl = Netlink::open_in(ns)?;
    Ok(nl
        .link_by_name(dev)?
        .with_context(|| format!("no device {dev}"))?
        .index)
}

/// `socket(AF_PACKET, SOCK_RAW, proto)` bound to `ifindex` (in the calling thread's namespace).
fn packet_socket(
    proto: u16,
    ifindex: u32,
    rx_ring: Option<&libc::tpacket_req3>,
) -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be())) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(req) = rx_ring {
        let v3: libc::c_int = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(&fd, libc::PACKET_VERSION, &v3).context("PACKET_VERSION")?;
        setsockopt(&fd, libc::PACKET_RX_RING, req).context("PACKET_RX_RING")?;
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    Ok(fd)
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    // SAFETY: `val` points to a live T and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `PACKET_STATISTICS` (V3 layout; the kernel clears them on read).
fn packet_stats(fd: &OwnedFd) -> std::io::Result<libc::tpacket_stats_v3> {
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as u32;
    // SAFETY: `st` and `len` are live and `len` is the size of `st`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&raw mut st).cast(),
            &raw mut len,
        )
    };
    if r == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const BLOCK_SIZE: u32 = 1 << 20;
const BLOCK_NR: u32 = 16;
/// Offsets in `struct tpacket_block_desc`: version, offset_to_priv, then `tpacket_hdr_v1`
/// (8-byte aligned) whose first fields are block_status and num_pkts.
const BLOCK_STATUS_OFF: usize = 8;
const NUM_PKTS_OFF: usize = 12;

/// A mapped TPACKET_V3 RX ring; unmapped on drop.
struct RingMap {
    base: *mut u8,
    len: usize,
}

impl RingMap {
    fn map(fd: &OwnedFd) -> Result<RingMap> {
        let len = (BLOCK_SIZE * BLOCK_NR) as usize;
        // SAFETY: a fresh shared mapping of the socket's ring; the kernel checks the length.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap the RX ring");
        }
        Ok(RingMap {
            base: base.cast(),
            len,
        })
    }

    fn status(&self, block: usize) -> &std::sync::atomic::AtomicU32 {
        let off = block * BLOCK_SIZE as usize + BLOCK_STATUS_OFF;
        assert!(off + 8 <= self.len);
        // SAFETY: `off` is inside the mapping (checked above) and 4-byte aligned (blocks are
        // page-aligned); the word is shared with the kernel, so it is only accessed atomically.
        unsafe {
            &*self
                .base
                .wrapping_add(off)
                .cast::<std::sync::atomic::AtomicU32>()
        }
    }

    /// Frames in a block the kernel handed over (call after seeing TP_STATUS_USER).
    fn num_pkts(&self, block: usize) -> u32 {
        let off = block * BLOCK_SIZE as usize + NUM_PKTS_OFF;
        assert!(off + 4 <= self.len);
        // SAFETY: inside the mapping and aligned; the kernel no longer writes a user-owned block.
        unsafe { std::ptr::read_volatile(self.base.wrapping_add(off).cast::<u32>()) }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`; no reference into it outlives
        // `self` (status() borrows self).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// Count frames arriving in a V3 ring until `done`, then drain what is left.
fn count_ring(fd: &OwnedFd, done: &AtomicBool) -> Result<u64> {
    let ring = RingMap::map(fd)?;
    let mut next = 0usize;
    let mut count = 0u64;
    loop {
        let st = ring.status(next);
        if st.load(Ordering::Acquire) & libc::TP_STATUS_USER != 0 {
            count += u64::from(ring.num_pkts(next));
            st.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            next = (next + 1) % BLOCK_NR as usize;
            continue;
        }
        if done.load(Ordering::Acquire) {
            return Ok(count);
        }
        let mut pfd = [nix::poll::PollFd::new(
            fd.as_fd(),
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
    let req = libc::tpacket_req3 {
        tp_block_size: BLOCK_SIZE,
        tp_block_nr: BLOCK_NR,
        tp_frame_size: 2048,
        tp_frame_nr: BLOCK_SIZE / 2048 * BLOCK_NR,
        tp_retire_blk_tov: 2,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    let rx = in_netns(rx_ns, || packet_socket(ETH_P_BENCH, rx_if, Some(&req)))??;
    let tx = in_netns(wire, || packet_socket(0, tx_if, None))??;
    let _ = packet_stats(&rx); // clear
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Pps> {
        let counter = s.spawn(|| count_ring(&rx, &done));
        let (sent, elapsed) = blast(&tx, wire_mac, dst, dur, stop);
        // Let the last frames cross the forwarder and the ring's 2 ms block timer fire.
        std::thread::sleep(Duration::from_millis(150));
        done.store(true, Ordering::Release);
        let received = counter.join().expect("counter thread")?;
        let st = packet_stats(&rx).context("PACKET_STATISTICS")?;
        let secs = elapsed.as_secs_f64();
        Ok(Pps {
            sent: sent as f64 / secs,
            received: received as f64 / secs,
            rx_socket_drops: u64::from(st.tp_drops),
        })
    })
}

/// sendmmsg batches of one 60-byte frame for `dur`; returns (frames sent, time taken).
fn blast(
    fd: &OwnedFd,
    src: MacAddr,
    dst: MacAddr,
    dur: Duration,
    stop: &AtomicBool,
) -> (u64, Duration) {
    let mut frame = [0u8; FRAME_LEN];
    frame[..6].copy_from_slice(&dst.0);
    frame[6..12].copy_from_slice(&src.0);
    frame[12..14].copy_from_slice(&ETH_P_BENCH.to_be_bytes());
    let mut iov = [libc::iovec {
        iov_base: frame.as_mut_ptr().cast(),
        iov_len: FRAME_LEN,
    }; BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < dur && !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH valid headers whose iovecs point into `frame`, all alive
        // for the call; the socket is bound, so no address is needed.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // ENOBUFS/EAGAIN: the device queue is full; yield and go on.
            std::thread::yield_now();
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
