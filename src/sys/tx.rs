//! `TxSocket`: the parent's transmit path (docs/performance.md#how-the-engine-sets-up-its-sockets).
//!
//! * `socket(AF_PACKET, SOCK_RAW, 0)`, bound with `sll_protocol = 0`: `packet_do_bind` then
//!   registers no receive hook, so this socket never queues a copy of the parent's traffic.
//! * `PACKET_VNET_HDR = 1`: every message starts with a 10-byte `virtio_net_hdr`, so GSO
//!   super-frames and CHECKSUM_PARTIAL frames go out with their offload state (the kernel
//!   segments in software if the parent cannot TSO).
//! * No `PACKET_QDISC_BYPASS`: GSO keeps its software fallback and tcpdump still sees our frames.
//! * Non-blocking: a full queue is `EAGAIN`/`ENOBUFS`, returned as an `io::Error` for the caller
//!   to count; nothing here retries or blocks.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{MsgFlags, send};

use super::{bind_packet, check_len, packet_socket, send_whole, set_packet_opt};

/// Why a [`TxSocket`] could not be set up; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    #[error("refusing to open a TX socket on ifindex 0")]
    ZeroIfindex,
    #[error("TX socket for ifindex {ifindex}: socket(AF_PACKET, SOCK_RAW, 0) failed")]
    Socket {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("TX socket for ifindex {ifindex}: setsockopt(PACKET_VNET_HDR) failed")]
    VnetHdr {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("TX socket for ifindex {ifindex}: bind failed")]
    Bind {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// A transmit-only packet socket on one interface. Every message is a `virtio_net_hdr` followed
/// by a complete Ethernet frame (tags inline).
#[derive(Debug)]
pub struct TxSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl TxSocket {
    /// Opens the socket on `ifindex`.
    pub fn open(ifindex: u32) -> Result<TxSocket, TxError> {
        if ifindex == 0 {
            return Err(TxError::ZeroIfindex);
        }
        let fd = packet_socket(None).map_err(|source| TxError::Socket { ifindex, source })?;
        set_packet_opt(fd.as_fd(), libc::PACKET_VNET_HDR, &1 as &libc::c_int)
            .map_err(|source| TxError::VnetHdr { ifindex, source })?;
        bind_packet(fd.as_fd(), ifindex, 0).map_err(|source| TxError::Bind { ifindex, source })?;
        Ok(TxSocket { fd, ifindex })
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one frame: `vnet_and_frame` is the 10-byte vnet header followed by the frame, e.g.
    /// [`RingFrame::with_vnet`](crate::wire::ring_format::RingFrame::with_vnet).
    pub fn send(&self, vnet_and_frame: &[u8]) -> io::Result<()> {
        let n = send(self.fd.as_raw_fd(), vnet_and_frame, MsgFlags::empty())?;
        check_len(n, vnet_and_frame.len())
    }

    /// Sends one frame gathered from `iov` (vnet header, MACs, VLAN tag, rest, for instance).
    pub fn send_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<()> {
        send_whole(self.fd.as_fd(), iov).map(drop)
    }

    /// Sends several frames (each vnet header + frame) with one `sendmmsg`, building its
    /// headers in `scratch` (no allocation once it has grown to the batch size). Returns how
    /// many were sent, from the front; the rest failed or did not fit (at most 1024 go per
    /// call). An error means the first frame could not be sent.
    pub fn send_batch<'f>(
        &self,
        frames: impl IntoIterator<Item = &'f [u8]>,
        scratch: &mut MmsgScratch,
    ) -> io::Result<usize> {
        const MAX: usize = 1024; // UIO_MAXIOV: the kernel's cap on vlen.
        let MmsgScratch { iovs, msgs } = scratch;
        iovs.clear();
        msgs.clear();
        iovs.extend(frames.into_iter().take(MAX).map(|f| libc::iovec {
            iov_base: f.as_ptr().cast_mut().cast(),
            iov_len: f.len(),
        }));
        if iovs.is_empty() {
            return Ok(0);
        }
        for iov in iovs.iter_mut() {
            // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are a valid value
            // (null name/control, zero lengths).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let vlen = libc::c_uint::try_from(msgs.len()).map_err(io::Error::other)?;
        // SAFETY: `msgs` holds `vlen` initialised headers, each pointing at one `iovec` in `iovs`,
        // which in turn point at the caller's frames; all outlive the call. The kernel only reads
        // the buffers (send) and writes `msg_len` into `msgs`, which we own mutably.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), vlen, 0) };
        // No pointer into the caller's frames stays behind.
        iovs.clear();
        msgs.clear();
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(rc).unwrap_or(0))
    }
}

/// The `sendmmsg` headers of [`TxSocket::send_batch`], kept between calls for their capacity:
/// empty whenever no call is running, so it never holds a pointer to a frame.
#[derive(Default)]
pub struct MmsgScratch {
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for MmsgScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgScratch")
            .field("capacity", &self.msgs.capacity())
            .finish()
    }
}

impl AsFd for TxSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifindex_zero_is_refused() {
        assert!(matches!(TxSocket::open(0), Err(TxError::ZeroIfindex)));
    }
}
