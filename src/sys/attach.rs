//! `PacketPort`: a netdev someone else owns (a hypervisor's TAP, typically), used as a port through
//! one `AF_PACKET` socket bound to it (docs/performance.md#how-the-engine-sets-up-its-sockets, the
//! same calls as the parent's sockets):
//!
//! * `socket(AF_PACKET, SOCK_RAW, 0)`, then `bind` with `ETH_P_ALL` and the ifindex: the receive
//!   hook exists only for that device (a socket opened with `ETH_P_ALL` would hear every device
//!   until bound);
//! * `PACKET_VNET_HDR = 1`: reads and writes carry a 10-byte `virtio_net_hdr`, exactly like the
//!   engine's TAPs, so GSO super-frames and partial checksums pass both ways;
//! * `PACKET_IGNORE_OUTGOING = 1`: what the engine (or the host) sends towards the guest is not
//!   read back;
//! * `PACKET_AUXDATA = 1`: the kernel takes a frame's outer VLAN tag out of its bytes before any
//!   packet socket sees it (`skb_vlan_untag`); the tag comes back in a control message and is
//!   put back inline by [`PacketPort::read`];
//! * a 4 MiB receive buffer (`SO_RCVBUFFORCE`), so bursts from the guest wait rather than drop.
//!
//! Reading: what the guest sent (the hypervisor wrote it into its TAP, so it arrives *on* the
//! device). Writing: `dev_queue_xmit` on the device, which hands the frame to the hypervisor.
//! The device is never created, changed (except brought up, by the daemon) or deleted here.

use std::io::{self, IoSlice};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{setsockopt, sockopt};

use super::{bind_packet, packet_socket, send_whole, set_packet_opt};
use crate::wire::frame::VlanTag;
use crate::wire::ring_format::vlan_of;
use crate::wire::vnet::{VNET_HDR_LEN, VnetHdr};

/// Where an inline tag goes: after the vnet header and the two MAC addresses.
const TAG_AT: usize = VNET_HDR_LEN + 12;
/// `PACKET_AUXDATA` (`include/uapi/linux/if_packet.h`).
const PACKET_AUXDATA: libc::c_int = 8;

/// The receive buffer asked for (`SO_RCVBUFFORCE`, root only; the kernel doubles it).
const RCVBUF: usize = 4 << 20;

/// Why a [`PacketPort`] could not be set up; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("refusing to attach to ifindex 0")]
    ZeroIfindex,
    #[error("attaching to {name}: socket(AF_PACKET, SOCK_RAW, 0) failed")]
    Socket {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching to {name}: setsockopt({option}) failed")]
    Option {
        name: String,
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("attaching to {name} (ifindex {ifindex}): bind failed")]
    Bind {
        name: String,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// One attached netdev. Every message is a `virtio_net_hdr` followed by a whole frame.
#[derive(Debug)]
pub struct PacketPort {
    fd: OwnedFd,
    name: String,
    ifindex: AtomicU32,
}

impl PacketPort {
    /// Opens the socket on `ifindex` (the device `name`) in the calling thread's namespace.
    pub fn open(name: &str, ifindex: u32) -> Result<PacketPort, AttachError> {
        if ifindex == 0 {
            return Err(AttachError::ZeroIfindex);
        }
        let name = name.to_string();
        let fd = packet_socket(None).map_err(|source| AttachError::Socket {
            name: name.clone(),
            source,
        })?;
        let opt = |option, source| AttachError::Option {
            name: name.clone(),
            option,
            source,
        };
        set_packet_opt(fd.as_fd(), libc::PACKET_VNET_HDR, &1 as &libc::c_int)
            .map_err(|e| opt("PACKET_VNET_HDR", e))?;
        set_packet_opt(fd.as_fd(), libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)
            .map_err(|e| opt("PACKET_IGNORE_OUTGOING", e))?;
        set_packet_opt(fd.as_fd(), PACKET_AUXDATA, &1 as &libc::c_int)
            .map_err(|e| opt("PACKET_AUXDATA", e))?;
        setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF)
            .map_err(|e| opt("SO_RCVBUFFORCE", e.into()))?;
        let port = PacketPort {
            fd,
            name,
            ifindex: AtomicU32::new(0),
        };
        port.rebind(ifindex)?;
        Ok(port)
    }

    /// Binds the socket to `ifindex`, e.g. to the device of the same name created again after
    /// the VM restarted (the socket, and so its place in the worker's epoll, stays).
    pub fn rebind(&self, ifindex: u32) -> Result<(), AttachError> {
        let eth_all = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL fits");
        bind_packet(self.fd.as_fd(), ifindex, eth_all).map_err(|source| AttachError::Bind {
            name: self.name.clone(),
            ifindex,
            source,
        })?;
        self.ifindex.store(ifindex, Ordering::Relaxed);
        Ok(())
    }

    /// The device's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ifindex the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex.load(Ordering::Relaxed)
    }

    /// Reads one frame the guest sent (vnet header first), its VLAN tag back inline (and the
    /// header's checksum offset moved past it). Non-blocking. Returns the **full** length
    /// (`MSG_TRUNC`, tag included): more than `buf.len()` means the frame was cut short.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, tag) = self.recv_with_tag(buf)?;
        let room = buf.len().saturating_sub(4);
        if n > room {
            // Cut short (the last 4 bytes were kept free for a tag): say so.
            return Ok(n.max(buf.len() + 1));
        }
        let Some(tag) = tag.filter(|_| n >= TAG_AT) else {
            return Ok(n);
        };
        buf.copy_within(TAG_AT..n, TAG_AT + 4);
        buf[TAG_AT..TAG_AT + 4].copy_from_slice(&tag.to_bytes());
        if let Some(h) = VnetHdr::parse(buf) {
            buf[..VNET_HDR_LEN].copy_from_slice(&h.with_vlan_inserted().to_bytes());
        }
        Ok(n + 4)
    }

    /// `recvmsg` into `buf` (leaving 4 bytes free at its end for a tag) with the
    /// `PACKET_AUXDATA` control message: the full length and the tag the kernel took out.
    fn recv_with_tag(&self, buf: &mut [u8]) -> io::Result<(usize, Option<VlanTag>)> {
        let room = buf.len().saturating_sub(4);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: room,
        };
        // u64s: aligned for `cmsghdr`; room for one header and one `tpacket_auxdata`.
        let mut control = [0u64; 8];
        // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        // SAFETY: `msg` points at one `iovec` covering the first `room` bytes of `buf` (an
        // exclusive borrow) and at `control`, both live locals that outlive the call; the kernel
        // writes at most `iov_len` and `msg_controllen` bytes into them and updates `msg`.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut tag = None;
        // SAFETY: `msg` was filled in by a successful recvmsg: CMSG_FIRSTHDR/CMSG_NXTHDR walk
        // only the `msg_controllen` bytes the kernel wrote into `control`, which is still live.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and points at a complete `cmsghdr` inside `control` (as
            // CMSG_FIRSTHDR/CMSG_NXTHDR guarantee).
            let h = unsafe { &*c };
            // CMSG_LEN: the header (16 bytes, already aligned) and the data.
            let want = size_of::<libc::cmsghdr>() + size_of::<libc::tpacket_auxdata>();
            if h.cmsg_level == libc::SOL_PACKET
                && h.cmsg_type == PACKET_AUXDATA
                && h.cmsg_len >= want
            {
                // SAFETY: `c` is a complete header inside `control` (see above): CMSG_DATA only
                // computes the address just after it.
                let data = unsafe { libc::CMSG_DATA(c) }.cast::<libc::tpacket_auxdata>();
                // SAFETY: the kernel wrote a whole `tpacket_auxdata` at `data` (the header's
                // length was checked just above); it may be unaligned, hence read_unaligned.
                let aux = unsafe { std::ptr::read_unaligned(data) };
                tag = vlan_of(aux.tp_status, aux.tp_vlan_tci, aux.tp_vlan_tpid);
            }
            // SAFETY: as for CMSG_FIRSTHDR above; `c` is a header inside `msg`'s control buffer.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        Ok((n, tag))
    }

    /// Sends one frame (vnet header first, gathered from `iov`) towards the guest.
    pub fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        send_whole(self.fd.as_fd(), iov)
    }
}

impl AsFd for PacketPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifindex_zero_is_refused() {
        assert!(matches!(
            PacketPort::open("x", 0),
            Err(AttachError::ZeroIfindex)
        ));
    }
}
