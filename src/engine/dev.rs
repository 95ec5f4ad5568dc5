//! The device behind a port: a TAP the engine owns (containers), a netdev someone else owns
//! (`attach`: a hypervisor's TAP), or a Unix socket with QEMU's stream framing (`stream`).
//!
//! All three read and write the same thing, a virtio-net header followed by a frame, so the
//! forwarding path does not know which it has; each has one fd for the worker's epoll. `Send +
//! Sync`: writes may come from any worker thread (a stream port serialises its own).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};

pub use super::stream::Recv;
use super::stream::StreamPort;
use crate::forward::DropReason;
use crate::sys::attach::PacketPort;
use crate::sys::tap::Tap;

/// How a port reaches what is behind it.
#[derive(Debug)]
pub enum PortDev {
    Tap(Tap),
    Attach(PacketPort),
    Stream(StreamPort),
}

fn nothing_or(e: io::Error) -> io::Result<Recv> {
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(Recv::Empty)
    } else {
        Err(e)
    }
}

impl PortDev {
    /// The device's name (the TAP's or the attached netdev's; the port's for a stream).
    pub fn name(&self) -> &str {
        match self {
            PortDev::Tap(t) => t.name(),
            PortDev::Attach(a) => a.name(),
            PortDev::Stream(s) => s.name(),
        }
    }

    /// Reads the next frame the port sent into `buf` (vnet header first). Non-blocking. `buf`
    /// must hold a 64 KiB frame, its vnet header and a tag.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        match self {
            PortDev::Tap(t) => t.read(buf).map(Recv::Frame).or_else(nothing_or),
            PortDev::Attach(a) => match a.read(buf) {
                Ok(n) if n > buf.len() => Ok(Recv::Refused {
                    len: n,
                    reason: DropReason::Truncated,
                }),
                r => r.map(Recv::Frame).or_else(nothing_or),
            },
            PortDev::Stream(s) => Ok(s.read(buf)),
        }
    }

    /// Writes one frame (vnet header first) to the port.
    pub fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            PortDev::Tap(t) => t.write_vectored(iov),
            PortDev::Attach(a) => a.write_vectored(iov),
            PortDev::Stream(s) => s.write_frame(iov),
        }
    }

    /// Mirrors the parent's carrier onto a TAP. A device the engine does not own keeps its own
    /// carrier (the hypervisor's), and a stream has none.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        match self {
            PortDev::Tap(t) => t.set_carrier(on),
            PortDev::Attach(_) | PortDev::Stream(_) => Ok(()),
        }
    }
}

impl AsFd for PortDev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            PortDev::Tap(t) => t.as_fd(),
            PortDev::Attach(a) => a.as_fd(),
            PortDev::Stream(s) => s.as_fd(),
        }
    }
}
