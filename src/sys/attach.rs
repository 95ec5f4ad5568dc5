//! `PacketPort`: a netdev someone else owns (a hypervisor's TAP, typically), used as a port
//! through one `AF_PACKET` socket bound to it (`perf-facts.md` §8, the same calls as the
//! parent's sockets):
//!
//! * `socket(AF_PACKET, SOCK_RAW, 0)`, then `bind` with `ETH_P_ALL` and the ifindex: the receive
//!   hook exists only for that device (a socket opened with `ETH_P_ALL` would hear every device
//!   until bound);
//! * `PACKET_VNET_HDR = 1`: reads and writes carry a 10-byte `virtio_net_hdr`, exactly like the
//!   engine's TAPs, so GSO super-frames and partial checksums pass both ways;
//! * `PACKET_IGNORE_OUTGOING = 1`: what the engine (or the host) sends towards the guest is not
//!   read back;
//! * a 4 MiB receive buffer (`SO_RCVBUFFORCE`), so bursts from the guest wait rather than drop.
//!
//! Reading: what the guest sent (the hypervisor wrote it into its TAP, so it arrives *on* the
//! device). Writing: `dev_queue_xmit` on the device, which hands the frame to the hypervisor.
//! The device is never created, changed (except brought up, by the daemon) or deleted here.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::socket::{MsgFlags, recv, setsockopt, sockopt};

use super::{bind_packet, packet_socket, send_whole, set_packet_opt};

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

    /// Reads one frame the guest sent (vnet header first). Non-blocking. Returns the frame's
    /// **full** length (`MSG_TRUNC`): more than `buf.len()` means it was cut short.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC).map_err(io::Error::from)
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
