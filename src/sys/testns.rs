//! Test support: private network namespaces and helpers for the root tests of `sys`.
//!
//! Every root test runs inside a namespace it creates (`ip netns add umv-<pid>-sys-<n>`); the
//! [`NetNs`] guard deletes it on drop, panics included, which also removes every device in it.
//! Socket and TAP work happens on a dedicated thread that `setns`-es into the namespace, so the
//! test process itself never changes namespace and no traffic leaves the namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};

use crate::wire::frame::VlanTag;

use super::{RxRing, disable_ipv6_here, require_root};

/// A network namespace that exists as long as this guard.
#[derive(Debug)]
pub(crate) struct NetNs {
    pub(crate) name: String,
}

impl NetNs {
    pub(crate) fn new() -> NetNs {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        require_root();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("umv-{}-sys-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        // No IPv6 autoconfiguration chatter on the devices we create.
        ns.run(disable_ipv6_here).expect("disabling IPv6");
        ns
    }

    /// `ip -n NS args...`, panicking with ip's stderr on failure.
    pub(crate) fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// `ip -n NS args...` and its stdout.
    pub(crate) fn ip_output(&self, args: &[&str]) -> String {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A veth pair `a` ↔ `b`, both up.
    pub(crate) fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", "dev", a, "up"]);
        self.ip(&["link", "set", "dev", b, "up"]);
    }

    /// Runs `f` on a fresh thread that has joined this namespace; re-raises its panic.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns({path}): {e}"));
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ifindex of `name` in the calling thread's namespace.
pub(crate) fn ifindex(name: &str) -> u32 {
    nix::net::if_::if_nametoindex(name).unwrap_or_else(|e| panic!("if_nametoindex({name}): {e}"))
}

/// The test frames' source MAC (locally administered), used to pick them out of other traffic.
pub(crate) const SRC_MAC: [u8; 6] = [0x02, 0x75, 0x6d, 0x76, 0x00, 0x01];
pub(crate) const DST_MAC: [u8; 6] = [0x02, 0x75, 0x6d, 0x76, 0x00, 0x02];

/// An Ethernet/IPv4/UDP frame with `marker` as payload and a valid IP header checksum; the UDP
/// checksum is left 0 (to be filled by whoever honours NEEDS_CSUM, or never).
pub(crate) fn udp_frame(vlan: Option<VlanTag>, marker: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    if let Some(t) = vlan {
        f.extend_from_slice(&t.to_bytes());
    }
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(20 + 8 + marker.len()).expect("small frame");
    let mut ip = [
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 1, 10, 99, 0, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let mut sum = sum;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !u16::try_from(sum).expect("folded to 16 bits");
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&4001u16.to_be_bytes());
    f.extend_from_slice(&(total - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(marker);
    f
}

/// [`udp_frame`] of flow `flow`: the UDP source port is 4000 + `flow`, so frames of different
/// flows hash apart (fanout, multi-queue TAPs).
pub(crate) fn udp_flow_frame(flow: u16, marker: &[u8]) -> Vec<u8> {
    let mut f = udp_frame(None, marker);
    f[34..36].copy_from_slice(&(4000 + flow).to_be_bytes());
    f
}

/// One frame copied out of a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub frame: Vec<u8>,
    pub vnet: [u8; 10],
    pub vlan: Option<VlanTag>,
    pub truncated: bool,
    pub pkt_type: u8,
}

impl Seen {
    /// True for frames the tests built (our source MAC), whatever the tag handling.
    pub(crate) fn ours(&self) -> bool {
        self.frame.get(6..12) == Some(&SRC_MAC[..])
    }

    pub(crate) fn has_marker(&self, marker: &[u8]) -> bool {
        self.ours() && self.frame.ends_with(marker)
    }
}

/// Drains `ring` until `done(seen so far)` holds or `timeout` passes; returns every frame seen.
pub(crate) fn collect(
    ring: &mut RxRing,
    timeout: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        while let Some(block) = ring.next_block() {
            // May be 0: a frame clamped to the block size retires the (empty) current block and
            // lands in the next one (measured on 6.18).
            let mut n = 0;
            for f in block.frames() {
                n += 1;
                seen.push(Seen {
                    frame: f.frame().to_vec(),
                    vnet: *f.vnet(),
                    vlan: f.vlan(),
                    truncated: f.truncated(),
                    pkt_type: f.pkt_type(),
                });
            }
            assert_eq!(
                n,
                block.num_pkts(),
                "the walk ended early on a kernel block"
            );
        }
        if done(&seen) || Instant::now() >= deadline {
            return seen;
        }
        let mut fds = [PollFd::new(ring.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(20u8)).expect("poll on the ring");
    }
}
