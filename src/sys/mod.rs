//! The only module with `unsafe`: the parent's TPACKET_V3 ring and TX socket, TAP devices, and
//! attached netdevs.
//!
//! * [`ring`]: [`RxRing`], the parent's receive path: an `AF_PACKET` socket with a
//!   memory-mapped TPACKET_V3 ring and a virtio-net header before every frame
//!   (docs/performance.md#how-the-engine-sets-up-its-sockets). The frames of the blocks it hands
//!   over are parsed in safe code, [`wire::ring_format`](crate::wire::ring_format).
//! * `membership`: [`Memberships`], the parent's promiscuity, allmulti and address filters as
//!   the ports ask them of it, the way the kernel's macvlan asks them of its lower.
//! * [`tx`]: [`TxSocket`], the parent's transmit path: an `AF_PACKET` socket with protocol 0 that
//!   never receives (§8 "Wire TX").
//! * `tap`: [`Tap`], one child port: a non-persistent `IFF_TAP | IFF_VNET_HDR` device that
//!   vanishes when its fd closes (§8 "Children"), or a persistent one that outlives its fds and
//!   is adopted again; its fd follows the device across moves and renames.
//! * `caps`: least privilege: `capset`, the bounding set, `PR_SET_NO_NEW_PRIVS`.
//! * `sched`: the calling thread's scheduling: `SCHED_FIFO` or a nice value (`run
//!   --worker-priority`).
//! * `attach`: [`PacketPort`], a netdev someone else owns (a VM's TAP) used as a port through
//!   an `AF_PACKET` socket bound to it.
//! * [`disable_ipv6_here`]: no IPv6 on a namespace's devices (a sysctl write, no `unsafe`;
//!   here so that `net` and this module's own root tests share it).
//!
//! Every fd is an [`OwnedFd`] (or a `File`); every `unsafe` block names the invariant it relies on
//! in a `// SAFETY:` comment. The helpers below are the few raw calls the three files share.

pub(crate) mod attach;
pub(crate) mod caps;
pub(crate) mod membership;
pub mod ring;
pub(crate) mod sched;
pub(crate) mod tap;
pub mod tx;

#[cfg(test)]
pub(crate) mod testns;

pub use attach::{AttachError, PacketPort};
pub use membership::Memberships;
pub use ring::{Block, RingConfig, RingError, RingStats, RxRing, Steering};
pub use tap::{Tap, TapError};
pub use tx::{TxError, TxSocket};

use std::io::{self, IoSlice};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, sendmsg, socket,
};

/// The nice value of work that must yield the CPU to forwarding.
pub const YIELDING_NICE: i32 = 19;

/// Makes the calling thread yield the CPU to forwarding, for work that must never take one from
/// it: relaying and writing a capture. Threads it starts later inherit this. Needs no privilege.
///
/// Two steps: nice [`YIELDING_NICE`], and the `SCHED_IDLE` policy. With nice 19 alone, the fair
/// scheduler may let the running yielding thread finish its protected slice (about a millisecond
/// and a half on two CPUs) before a waking worker gets the CPU; a `SCHED_IDLE` task is
/// preempted at once by any waking normal one (`check_preempt_wakeup_fair`). Measured in
/// docs/performance.md#what-observing-costs.
pub fn yield_cpu_to_forwarding() -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let tid = libc::id_t::try_from(tid).map_err(io::Error::other)?;
    // SAFETY: setpriority reads only its integer arguments. On Linux, PRIO_PROCESS with a thread
    // id sets that one thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, YIELDING_NICE) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it; pid 0
    // is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns IPv6 off in the calling thread's namespace for every interface, present and future
/// (`all` and `default`): no link-local addresses, DAD, router solicitations or MLD reports to
/// muddy a lab's counters. A kernel without IPv6 has no such files: nothing to do then.
pub fn disable_ipv6_here() -> std::io::Result<()> {
    for which in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6");
        match std::fs::write(&path, "1") {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    Ok(())
}

/// The test kit's root check (`net::testutil` re-exports it): panics unless running as root, so
/// a root test never passes silently without root.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN: it creates network \
             namespaces, veths, macvlans and TAPs, and opens raw AF_PACKET sockets); run it as \
             root, e.g. `sudo -E cargo test --release`. It fails rather than being skipped so \
             CI cannot mistake it for a pass."
        );
    }
}

/// Opens a raw, close-on-exec, non-blocking `AF_PACKET` socket. `Some(EthAll)` receives every
/// protocol once bound; `None` is protocol 0, which registers no receive hook at all.
fn packet_socket(protocol: Option<SockProtocol>) -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        protocol,
    )
    .map_err(io::Error::from)
}

/// What `umacvlan doctor` asks of the kernel: an `AF_PACKET` socket (protocol 0: it receives
/// nothing and touches no interface) opens, and takes `PACKET_VERSION = TPACKET_V3`. The first
/// error says which step failed (`"af_packet"` or `"tpacket_v3"`).
pub fn probe_packet() -> Result<(), (&'static str, io::Error)> {
    let fd = packet_socket(None).map_err(|e| ("af_packet", e))?;
    let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
    set_packet_opt(fd.as_fd(), libc::PACKET_VERSION, &v3).map_err(|e| ("tpacket_v3", e))
}

/// `setsockopt(fd, SOL_PACKET, name, value, sizeof *value)`.
fn set_packet_opt<T: Copy>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    set_opt(fd, libc::SOL_PACKET, name, value)
}

/// `setsockopt(fd, level, name, value, sizeof value)`.
fn set_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `value` is a live reference, so the pointer is valid for reads of `len` =
    // `size_of::<T>()` bytes for the whole call; `fd` is borrowed, so it stays open.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, SOL_PACKET, name, value, &len)`: fills `value` and returns the length the
/// kernel wrote.
fn get_packet_opt<T: Copy>(
    fd: BorrowedFd<'_>,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<libc::socklen_t> {
    let mut len = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `value` and `len` are live exclusive references; `len` holds `size_of::<T>()`, so
    // the kernel writes at most that many bytes through the pointer and updates `len`. `T: Copy`
    // has no drop glue or invariants the kernel's bytes could break for the plain C structs
    // and integers this is used with. `fd` is borrowed, so it stays open.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(len)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `AF_PACKET` as `sockaddr_ll.sll_family` holds it (the constant is an `int`).
const AF_PACKET_FAMILY: libc::c_ushort = 17;
const _: () = assert!(AF_PACKET_FAMILY as libc::c_int == libc::AF_PACKET);

/// Binds a packet socket to `ifindex` with `protocol` (host order; 0 means "transmit only").
fn bind_packet(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    let ifindex = libc::c_int::try_from(ifindex).map_err(io::Error::other)?;
    let sll = libc::sockaddr_ll {
        sll_family: AF_PACKET_FAMILY,
        sll_protocol: protocol.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    let len =
        libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).map_err(io::Error::other)?;
    // SAFETY: `sll` is a fully initialised `sockaddr_ll` on our stack and `len` is its exact size;
    // the kernel only reads it during the call. `fd` is borrowed, so it stays open.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends one message gathered from `iov` on a packet socket; a short send is an error (a packet
/// socket sends all or nothing, so it would mean a kernel change). Returns the length.
fn send_whole(fd: BorrowedFd<'_>, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    let n = sendmsg::<()>(fd.as_raw_fd(), iov, &[], MsgFlags::empty(), None)?;
    let want = iov.iter().map(|s| s.len()).sum();
    check_len(n, want).map(|()| n)
}

fn check_len(sent: usize, want: usize) -> io::Result<()> {
    if sent == want {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("packet socket sent {sent} of {want} bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_constants_are_the_uapi_values() {
        // include/uapi/linux/if_packet.h; pinned so a libc change cannot silently move them.
        assert_eq!(libc::PACKET_ADD_MEMBERSHIP, 1);
        assert_eq!(libc::PACKET_RX_RING, 5);
        assert_eq!(libc::PACKET_STATISTICS, 6);
        assert_eq!(libc::PACKET_VERSION, 10);
        assert_eq!(libc::PACKET_VNET_HDR, 15);
        assert_eq!(libc::PACKET_IGNORE_OUTGOING, 23);
        assert_eq!(libc::PACKET_MR_PROMISC, 1);
        assert_eq!(libc::tpacket_versions::TPACKET_V3 as u32, 2);
        assert_eq!(libc::ETH_P_ALL, 3);
        assert_eq!(size_of::<libc::sockaddr_ll>(), 20);
    }
}
