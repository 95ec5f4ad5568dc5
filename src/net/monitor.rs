//! [`LinkMonitor`]: link notifications (RTNLGRP_LINK) from one namespace, for poll loops.
//!
//! Notes from the kernel:
//! * A device moved out of the namespace shows up here as a DELLINK, moved in as a NEWLINK.
//! * Bridge-port notifications (`ifi_family == AF_BRIDGE`) also travel on RTNLGRP_LINK, and a port
//!   leaving a bridge sends an AF_BRIDGE *DELLINK* while the device lives on. Only AF_UNSPEC
//!   messages describe devices, so the others are dropped here.
//! * If the socket's queue overflows the kernel drops notifications and the next read fails
//!   with ENOBUFS: [`LinkEvent::Overrun`] says so; the caller must re-read state with
//!   [`super::Netlink::links`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::error::{Error, Result};
use super::netlink::{LinkInfo, is_link_msg, parse_link, recv_datagram};
use super::netns::{Netns, in_netns};

const RECV_BUF: usize = 64 * 1024;
const SO_RCVBUF_BYTES: usize = 1024 * 1024;
/// `AF_UNSPEC`: a message about a device (as opposed to AF_BRIDGE port info).
const AF_UNSPEC: u8 = 0;

/// One notification from [`LinkMonitor::drain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_NEWLINK: a device appeared or changed (flags, carrier, MAC, MTU, name, ...). It carries
    /// the device's full current state.
    Changed(LinkInfo),
    /// RTM_DELLINK: the device is gone from this namespace (deleted or moved away).
    Removed { index: u32, name: String },
    /// Notifications were lost (ENOBUFS): re-dump the links to resynchronise.
    Overrun,
}

/// A non-blocking NETLINK_ROUTE socket subscribed to RTNLGRP_LINK in one namespace. Poll its fd
/// for readability, then call [`drain`](LinkMonitor::drain).
#[derive(Debug)]
pub struct LinkMonitor {
    sock: Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Listen to link events in `netns` (the socket is opened there on a helper thread).
    pub fn open(netns: &Netns) -> Result<LinkMonitor> {
        in_netns(netns, LinkMonitor::open_current)?
    }

    /// Listen to link events in the calling thread's namespace.
    pub fn open_current() -> Result<LinkMonitor> {
        let op = "open a link monitor";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::sys(op, e))?;
        sock.bind_auto()
            .map_err(|e| Error::sys(format!("{op}: bind"), e))?;
        sock.add_membership(libc::RTNLGRP_LINK)
            .map_err(|e| Error::sys(format!("{op}: join RTNLGRP_LINK"), e))?;
        sock.set_non_blocking(true)
            .map_err(|e| Error::sys(format!("{op}: O_NONBLOCK"), e))?;
        let m = LinkMonitor {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        };
        m.set_receive_buffer(SO_RCVBUF_BYTES)?;
        Ok(m)
    }

    /// Set the socket's receive queue size (SO_RCVBUF; the kernel doubles it and caps it at
    /// `net.core.rmem_max`). A small queue overruns sooner.
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<()> {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.sock
            .set_rx_buf_sz(v)
            .map_err(|e| Error::sys(format!("set SO_RCVBUF of a link monitor to {bytes}"), e))
    }

    /// Read every queued notification without blocking, in order. An overflow shows up as one
    /// [`LinkEvent::Overrun`] at the point where messages were lost.
    pub fn drain(&mut self) -> Result<Vec<LinkEvent>> {
        let mut events = Vec::new();
        loop {
            let n = match self.recv() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(events),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    events.push(LinkEvent::Overrun);
                    continue;
                }
                Err(e) => return Err(Error::sys("read link events", e)),
            };
            parse_datagram(&self.buf[..n], &mut events)?;
        }
    }

    /// One datagram into `self.buf` (peeked first so that a large one is not truncated).
    fn recv(&mut self) -> io::Result<usize> {
        recv_datagram(&self.sock, &mut self.buf)
    }

    /// The socket's address (its netlink port id), for diagnostics.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let mut a = SocketAddr::new(0, 0);
        self.sock
            .get_address(&mut a)
            .map_err(|e| Error::sys("get the address of a link monitor", e))?;
        Ok(a)
    }
}

impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Parse the netlink messages of one datagram into events.
fn parse_datagram(mut data: &[u8], events: &mut Vec<LinkEvent>) -> Result<()> {
    let op = "parse a link event";
    while !data.is_empty() {
        let nb = NetlinkBuffer::new_checked(data).map_err(|e| Error::Protocol {
            op: op.into(),
            detail: e.to_string(),
        })?;
        let len = nb.length() as usize;
        let (ty, payload) = (nb.message_type(), nb.payload());
        if let Some(new) = is_link_msg(ty)
            && payload.first() == Some(&AF_UNSPEC)
        {
            let link = parse_link(payload).map_err(|detail| Error::Protocol {
                op: op.into(),
                detail,
            })?;
            events.push(if new {
                LinkEvent::Changed(link)
            } else {
                LinkEvent::Removed {
                    index: link.index,
                    name: link.name,
                }
            });
        }
        data = data.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn datagram(msgs: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
            nl.finalize();
            let mut b = vec![0u8; nl.buffer_len()];
            nl.serialize(&mut b);
            out.extend_from_slice(&b);
        }
        out
    }

    fn link(index: u32, name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    #[test]
    fn new_and_del_become_events_and_bridge_family_is_dropped() {
        let mut bridge_del = link(5, "v0");
        bridge_del.header.interface_family = netlink_packet_route::AddressFamily::Bridge;
        let d = datagram(vec![
            RouteNetlinkMessage::NewLink(link(4, "a")),
            RouteNetlinkMessage::DelLink(bridge_del),
            RouteNetlinkMessage::DelLink(link(4, "a")),
        ]);
        let mut ev = Vec::new();
        parse_datagram(&d, &mut ev).unwrap();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(&ev[0], LinkEvent::Changed(l) if l.index == 4 && l.name == "a"));
        assert_eq!(
            ev[1],
            LinkEvent::Removed {
                index: 4,
                name: "a".into()
            }
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut ev = Vec::new();
        assert!(parse_datagram(&[1, 2, 3], &mut ev).is_err());
    }
}
