//! [`Netlink`]: a small, blocking NETLINK_ROUTE client with typed verbs.
//!
//! One request socket per namespace (a socket stays in the namespace it was opened in; use
//! [`Netlink::open_in`]). Every request asks for an ACK, checks sequence numbers, loops dumps until
//! `NLMSG_DONE` (retrying a dump the kernel marks `NLM_F_DUMP_INTR`), and turns a kernel error into
//! [`Error::Kernel`] with the errno, the extended-ack text and what was being done. Monitoring
//! uses its own socket ([`super::LinkMonitor`]) so that notifications never interleave with replies.
//!
//! Built on netlink-packet-route's typed attributes; netlink-packet-core does not decode extended
//! acks, so `parse_nlmsgerr` does.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::DefaultNla;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkInfo as NlLinkInfo;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
    LinkProtoInfoBridge, MacVlanFlags, MacVlanMacAddressMode, MacVlanMode,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::error::{Error, Result};
use super::netns::{Netns, in_netns};
use crate::wire::mac::MacAddr;

/// macvlan modes, as the kernel numbers them (`enum macvlan_mode`).
pub const MACVLAN_MODE_PRIVATE: u32 = 1;
pub const MACVLAN_MODE_VEPA: u32 = 2;
pub const MACVLAN_MODE_BRIDGE: u32 = 4;
pub const MACVLAN_MODE_PASSTHRU: u32 = 8;
pub const MACVLAN_MODE_SOURCE: u32 = 16;
/// macvlan flags (`IFLA_MACVLAN_FLAGS`), which the tests read back from the kernel.
#[cfg(test)]
pub const MACVLAN_FLAG_NOPROMISC: u16 = 1;
#[cfg(test)]
pub const MACVLAN_FLAG_NODST: u16 = 2;

/// The name iproute2 prints for a macvlan mode (`ip -d link`: "mode bridge").
pub fn macvlan_mode_name(mode: u32) -> Option<&'static str> {
    Some(match mode {
        MACVLAN_MODE_PRIVATE => "private",
        MACVLAN_MODE_VEPA => "vepa",
        MACVLAN_MODE_BRIDGE => "bridge",
        MACVLAN_MODE_PASSTHRU => "passthru",
        MACVLAN_MODE_SOURCE => "source",
        _ => return None,
    })
}

/// Receive buffer we read datagrams into (the kernel sizes dump chunks to the reader's buffer;
/// iproute2 uses at least 32 KiB). A datagram larger than this is still read whole (peeked first).
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue (SO_RCVBUF) for the request socket.
const SO_RCVBUF_BYTES: i32 = 1024 * 1024;
/// How often a dump the kernel marked inconsistent (NLM_F_DUMP_INTR) is retried.
const DUMP_RETRIES: usize = 5;
/// `NLMSGERR_ATTR_MSG`: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLMSGERR_ATTR_MISS_TYPE`: the type of a missing attribute.
const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;
const NLMSG_HDRLEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
/// `IFLA_BRPORT_MODE` (hairpin) inside `IFLA_PROTINFO` for AF_BRIDGE.
const IFLA_BRPORT_MODE: u16 = 4;

/// Interface flags (`ifi_flags`) that matter to us, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfFlags {
    /// IFF_UP: administratively up.
    pub up: bool,
    /// IFF_RUNNING: operationally up (RFC 2863 "up").
    pub running: bool,
    /// IFF_LOWER_UP: carrier.
    pub lower_up: bool,
    pub promisc: bool,
    pub allmulti: bool,
    pub loopback: bool,
    /// All of `ifi_flags`, for anything not decoded above.
    pub raw: u32,
}

impl IfFlags {
    pub fn from_raw(raw: u32) -> IfFlags {
        let f = LinkFlags::from_bits_retain(raw);
        IfFlags {
            up: f.contains(LinkFlags::Up),
            running: f.contains(LinkFlags::Running),
            lower_up: f.contains(LinkFlags::LowerUp),
            promisc: f.contains(LinkFlags::Promisc),
            allmulti: f.contains(LinkFlags::Allmulti),
            loopback: f.contains(LinkFlags::Loopback),
            raw,
        }
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`), printed as `ip link` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OperState {
    #[default]
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
    Other(u8),
}

impl From<u8> for OperState {
    fn from(v: u8) -> OperState {
        match v {
            0 => OperState::Unknown,
            1 => OperState::NotPresent,
            2 => OperState::Down,
            3 => OperState::LowerLayerDown,
            4 => OperState::Testing,
            5 => OperState::Dormant,
            6 => OperState::Up,
            v => OperState::Other(v),
        }
    }
}

impl fmt::Display for OperState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperState::Unknown => f.write_str("UNKNOWN"),
            OperState::NotPresent => f.write_str("NOTPRESENT"),
            OperState::Down => f.write_str("DOWN"),
            OperState::LowerLayerDown => f.write_str("LOWERLAYERDOWN"),
            OperState::Testing => f.write_str("TESTING"),
            OperState::Dormant => f.write_str("DORMANT"),
            OperState::Up => f.write_str("UP"),
            OperState::Other(v) => write!(f, "{v}"),
        }
    }
}

/// What the kernel reports about a macvlan device (`IFLA_INFO_DATA` of kind "macvlan").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacvlanInfo {
    /// `MACVLAN_MODE_*` (1 private, 2 vepa, 4 bridge, 8 passthru, 16 source).
    pub mode: u32,
    /// `MACVLAN_FLAG_*` (1 nopromisc, 2 nodst).
    pub flags: u16,
    /// Number of source-mode addresses.
    pub macaddr_count: u32,
    /// The source-mode address list (`IFLA_MACVLAN_MACADDR_DATA`).
    pub sources: Vec<MacAddr>,
    /// Requested broadcast queue length (kernel ≥ 5.11).
    pub bc_queue_len: Option<u32>,
    /// Length in use: the maximum requested by any macvlan on the same parent.
    pub bc_queue_len_used: Option<u32>,
    /// Broadcast cutoff (kernel ≥ 6.4).
    pub bc_cutoff: Option<i32>,
}

/// One network device as RTM_NEWLINK describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_ADDRESS` when it is 6 bytes long (Ethernet-like devices).
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// `IFLA_MIN_MTU`, 0 when absent.
    pub min_mtu: u32,
    /// `IFLA_MAX_MTU`, 0 when absent.
    pub max_mtu: u32,
    /// ARPHRD_* from the header (1 = Ethernet, 772 = loopback).
    pub link_type: u16,
    pub flags: IfFlags,
    /// `IFLA_INFO_KIND`: "veth", "bridge", "tun", "macvlan", ...; `None` for physical devices.
    pub kind: Option<String>,
    /// The promiscuity counter (`IFLA_PROMISCUITY`).
    pub promiscuity: u32,
    pub txqlen: u32,
    /// 0 when absent.
    pub gso_max_size: u32,
    /// 0 when absent.
    pub gro_max_size: u32,
    pub operstate: OperState,
    /// `IFLA_LINK`: the lower device (a macvlan's parent, a veth's peer). It may be in another
    /// namespace, in which case `link_netnsid` is set.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace (by nsid, as seen from this one) `link` lives in.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`: the bridge (or bond, ...) this device is a port of.
    pub master: Option<u32>,
    /// Set for kind "macvlan".
    pub macvlan: Option<MacvlanInfo>,
}

/// A macvlan to create with [`Netlink::add_macvlan`]. Every mode and flag the kernel has can be
/// expressed, including `bc_cutoff` (iproute2 6.1 cannot set it).
#[derive(Debug, Clone)]
pub struct MacvlanSpec<'a> {
    pub name: String,
    /// The parent's ifindex, in the namespace of the [`Netlink`] socket.
    pub parent_index: u32,
    /// `MACVLAN_MODE_*` (1, 2, 4, 8 or 16).
    pub mode: u32,
    /// `MACVLAN_FLAG_*` (NOPROMISC = 1, NODST = 2).
    pub flags: u16,
    /// The new device's MAC; the kernel picks a random one when `None` (passthru: the parent's).
    pub mac: Option<MacAddr>,
    pub bc_queue_len: Option<u32>,
    pub bc_cutoff: Option<i32>,
    /// Source mode: the allowed source addresses (sent as MACADDR_MODE SET + MACADDR_DATA).
    pub sources: Vec<MacAddr>,
    /// Create the device directly in this namespace (the parent stays where it is).
    pub netns: Option<&'a Netns>,
}

impl MacvlanSpec<'static> {
    /// A spec with no flags, a kernel-chosen MAC, default queue settings and no namespace move.
    pub fn new(name: impl Into<String>, parent_index: u32, mode: u32) -> MacvlanSpec<'static> {
        MacvlanSpec {
            name: name.into(),
            parent_index,
            mode,
            flags: 0,
            mac: None,
            bc_queue_len: None,
            bc_cutoff: None,
            sources: Vec::new(),
            netns: None,
        }
    }
}

/// Whether `name` is a wireless device (macvlan on Wi-Fi rarely works: the AP drops frames from
/// MACs that did not associate). Reads **the caller's sysfs**: `/sys/class/net/NAME/wireless` or
/// `/phy80211`. `/sys` shows the namespace that mounted it (normally the host's), not the calling
/// thread's, so ask about devices of that namespace only.
pub fn is_wireless(name: &str) -> bool {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return false;
    }
    let dir = Path::new("/sys/class/net").join(name);
    dir.join("wireless").exists() || dir.join("phy80211").exists()
}

/// A blocking NETLINK_ROUTE request socket, bound to the namespace it was opened in.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Why one request failed, before we know how to describe the request.
#[derive(Debug)]
enum Failure {
    Kernel {
        errno: i32,
        extack: Option<String>,
    },
    Sys {
        what: &'static str,
        source: io::Error,
    },
    Protocol(String),
}

impl Failure {
    fn into_error(self, op: String) -> Error {
        match self {
            Failure::Kernel { errno, extack } => Error::Kernel {
                op,
                extack,
                source: io::Error::from_raw_os_error(errno),
            },
            Failure::Sys { what, source } => Error::Sys {
                op: format!("{op}: {what}"),
                source,
            },
            Failure::Protocol(detail) => Error::Protocol { op, detail },
        }
    }

    fn errno(&self) -> Option<i32> {
        match self {
            Failure::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The decoded payload of an `NLMSG_ERROR` (or of an `NLMSG_DONE` that carries an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NlMsgErr {
    /// 0 for an ACK, else a negative errno.
    pub code: i32,
    pub extack: Option<String>,
}

/// Decode `struct nlmsgerr` + extended-ack TLVs. `flags` are the *outer* header's flags:
/// `NLM_F_CAPPED` says only the request's 16-byte header was echoed (else the whole request, whose
/// length is in the echoed header), `NLM_F_ACK_TLVS` says attributes follow.
pub(crate) fn parse_nlmsgerr(payload: &[u8], flags: u16) -> std::result::Result<NlMsgErr, String> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| format!("NLMSG_ERROR of {} bytes", payload.len()))?;
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        payload
            .get(4..8)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize)
            .unwrap_or(NLMSG_HDRLEN)
    };
    let tlvs = payload.get(4 + align4(echoed)..).unwrap_or(&[]);
    let extack = if flags & NLM_F_ACK_TLVS != 0 {
        extack_text(tlvs)
    } else {
        None
    };
    Ok(NlMsgErr { code, extack })
}

/// The extack message among `tlvs` (or, lacking one, the missing attribute's type).
fn extack_text(tlvs: &[u8]) -> Option<String> {
    let mut missing = None;
    for nla in NlasIterator::new(tlvs) {
        let Ok(nla) = nla else { break };
        match nla.kind() {
            NLMSGERR_ATTR_MSG => {
                let text = String::from_utf8_lossy(nla.value());
                return Some(text.trim_end_matches('\0').to_string());
            }
            NLMSGERR_ATTR_MISS_TYPE => {
                if let Ok(b) = <[u8; 4]>::try_from(nla.value()) {
                    missing = Some(format!("missing attribute type {}", u32::from_ne_bytes(b)));
                }
            }
            _ => {}
        }
    }
    missing
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Netlink {
    /// Open a request socket in the calling thread's namespace.
    pub fn open() -> Result<Netlink> {
        let op = "open a NETLINK_ROUTE socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::sys(op, e))?;
        sock.bind_auto()
            .map_err(|e| Error::sys(format!("{op}: bind"), e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::sys(format!("{op}: connect"), e))?;
        sock.set_netlink_get_strict_chk(true)
            .map_err(|e| Error::sys(format!("{op}: NETLINK_GET_STRICT_CHK"), e))?;
        sock.set_ext_ack(true)
            .map_err(|e| Error::sys(format!("{op}: NETLINK_EXT_ACK"), e))?;
        sock.set_cap_ack(true)
            .map_err(|e| Error::sys(format!("{op}: NETLINK_CAP_ACK"), e))?;
        sock.set_rx_buf_sz(SO_RCVBUF_BYTES)
            .map_err(|e| Error::sys(format!("{op}: SO_RCVBUF"), e))?;
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Open a request socket inside `netns` (on a helper thread; the socket stays there).
    pub fn open_in(netns: &Netns) -> Result<Netlink> {
        in_netns(netns, Netlink::open)?
    }

    // ---- reading links ----------------------------------------------------------------------

    /// The device named `name` (or with altname `name`), `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_one(msg)
            .map_err(|f| f.into_error(format!("look up device {name:?}")))
    }

    /// The device with ifindex `index`, `None` if there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_one(msg)
            .map_err(|f| f.into_error(format!("look up ifindex {index}")))
    }

    /// Every device in the socket's namespace.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        self.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            RTM_NEWLINK,
            parse_link,
            || "list devices".to_string(),
        )
    }

    /// A dump request: every message of type `ty` parsed with `parse`, the whole dump retried
    /// when the kernel marks it interrupted.
    fn dump<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        ty: u16,
        parse: impl Fn(&[u8]) -> std::result::Result<T, String>,
        op: impl Fn() -> String,
    ) -> Result<Vec<T>> {
        for _ in 0..DUMP_RETRIES {
            let mut out = Vec::new();
            let interrupted = self
                .transact(msg.clone(), NLM_F_DUMP, |t, payload| {
                    if t == ty {
                        out.push(parse(payload).map_err(Failure::Protocol)?);
                    }
                    Ok(())
                })
                .map_err(|f| f.into_error(op()))?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(Error::Protocol {
            op: op(),
            detail: format!("the dump was interrupted by changes {DUMP_RETRIES} times in a row"),
        })
    }

    fn get_one(&mut self, msg: LinkMessage) -> std::result::Result<Option<LinkInfo>, Failure> {
        let mut found = None;
        let r = self.transact(
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_ACK,
            |ty, payload| {
                if ty == RTM_NEWLINK {
                    found = Some(parse_link(payload).map_err(Failure::Protocol)?);
                }
                Ok(())
            },
        );
        match r {
            Ok(_) => Ok(found),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => Err(f),
        }
    }

    // ---- changing links ---------------------------------------------------------------------

    /// Set the device's MAC address (`ip link set X address M`).
    pub fn set_mac(&mut self, index: u32, mac: MacAddr) -> Result<()> {
        self.set_link(index, vec![LinkAttribute::Address(mac.0.to_vec())], |who| {
            format!("set MAC of {who} to {mac}")
        })
    }

    /// Set the MTU (`ip link set X mtu N`).
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(index, vec![LinkAttribute::Mtu(mtu)], |who| {
            format!("set MTU of {who} to {mtu}")
        })
    }

    /// Set the transmit queue length (`ip link set X txqueuelen N`).
    pub fn set_txqlen(&mut self, index: u32, txqlen: u32) -> Result<()> {
        self.set_link(index, vec![LinkAttribute::TxQueueLen(txqlen)], |who| {
            format!("set txqueuelen of {who} to {txqlen}")
        })
    }

    /// Bring the device administratively up or down (`ip link set X up|down`).
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        let r = self.transact(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, |_, _| Ok(()));
        self.finish(r, index, |who| {
            format!("bring {who} {}", if up { "up" } else { "down" })
        })
    }

    /// Report the device's operational state as UP (`IFLA_OPERSTATE`). The kernel's
    /// `set_operstate` only allows this from UNKNOWN, DORMANT or TESTING, so a device with no
    /// carrier stays down. A TAP never leaves UNKNOWN on its own (tun fires no link-watch event
    /// when it opens), while a macvlan child shows UP: the engine uses this to look the same.
    pub fn set_operstate_up(&mut self, index: u32) -> Result<()> {
        use netlink_packet_route::link::State;
        self.set_link(index, vec![LinkAttribute::OperState(State::Up)], |who| {
            format!("set the operstate of {who} to up")
        })
    }

    /// Move the device into another namespace (`IFLA_NET_NS_FD`). Its ifindex may change there.
    pub fn set_netns(&mut self, index: u32, netns: &Netns) -> Result<()> {
        self.set_link(
            index,
            vec![LinkAttribute::NetNsFd(netns.as_raw_fd())],
            |who| format!("move {who} to {netns}"),
        )
    }

    /// Rename the device (it must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_link(
            index,
            vec![LinkAttribute::IfName(name.to_string())],
            |who| format!("rename {who} to {name:?}"),
        )
    }

    /// Make the device a port of `master` (a bridge); `master` 0 releases it.
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<()> {
        self.set_link(index, vec![LinkAttribute::Controller(master)], |who| {
            if master == 0 {
                format!("release {who} from its master")
            } else {
                format!("make {who} a port of ifindex {master}")
            }
        })
    }

    /// Turn hairpin mode of a bridge port on or off (`bridge link set dev X hairpin on`): an
    /// AF_BRIDGE RTM_SETLINK with `IFLA_PROTINFO { IFLA_BRPORT_MODE }`.
    pub fn set_bridge_port_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.interface_family = AddressFamily::Bridge;
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(on)])),
        ]));
        let r = self.transact(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, |_, _| Ok(()));
        self.finish(r, index, |who| {
            format!(
                "turn hairpin {} on bridge port {who}",
                if on { "on" } else { "off" }
            )
        })
    }

    /// Delete the device (`ip link del X`). Deleting one end of a veth deletes both.
    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let who = self.describe(index);
        self.transact(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK, |_, _| Ok(()))
            .map(drop)
            .map_err(|f| f.into_error(format!("delete {who}")))
    }

    // ---- creating links (tests and the lab) -----------------------------------------------

    /// Create a veth pair `name` <-> `peer`; the peer is created in `peer_netns` if given.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: Option<&Netns>) -> Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        if let Some(ns) = peer_netns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let attrs = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Veth),
                NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.new_link(attrs, || {
            let where_ = peer_netns.map(|n| format!(" in {n}")).unwrap_or_default();
            format!("create veth {name:?} with peer {peer:?}{where_}")
        })
    }

    /// Create a bridge `name` (down, default settings).
    pub fn add_bridge(&mut self, name: &str) -> Result<()> {
        let attrs = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Bridge)]),
        ];
        self.new_link(attrs, || format!("create bridge {name:?}"))
    }

    /// Create a kernel macvlan as `spec` says (the reference our differential tests compare to).
    pub fn add_macvlan(&mut self, spec: &MacvlanSpec<'_>) -> Result<()> {
        let mut data = vec![
            InfoMacVlan::Mode(MacVlanMode::from(spec.mode)),
            InfoMacVlan::Flags(MacVlanFlags::from_bits_retain(spec.flags)),
        ];
        if let Some(n) = spec.bc_queue_len {
            data.push(InfoMacVlan::BcQueueLen(n));
        }
        if let Some(n) = spec.bc_cutoff {
            data.push(InfoMacVlan::BcCutoff(n));
        }
        if !spec.sources.is_empty() {
            data.push(InfoMacVlan::MacAddrMode(MacVlanMacAddressMode::Set));
            data.push(InfoMacVlan::MacAddrData(
                spec.sources
                    .iter()
                    .map(|m| InfoMacVlan::MacAddr(m.0))
                    .collect(),
            ));
        }
        let mut attrs = vec![
            LinkAttribute::IfName(spec.name.clone()),
            LinkAttribute::Link(spec.parent_index),
        ];
        if let Some(mac) = spec.mac {
            attrs.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(ns) = spec.netns {
            attrs.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        attrs.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::MacVlan),
            NlLinkInfo::Data(InfoData::MacVlan(data)),
        ]));
        let parent = self.describe(spec.parent_index);
        self.new_link(attrs, || {
            let mode = macvlan_mode_name(spec.mode)
                .map(str::to_string)
                .unwrap_or_else(|| format!("mode {}", spec.mode));
            format!("create macvlan {:?} ({mode}) on {parent}", spec.name)
        })
    }

    // ---- addresses and neighbours (the lab) ---------------------------------------------------

    /// Add an address (`ip addr add ADDR/PREFIX [brd +] dev X`): RTM_NEWADDR with `IFA_LOCAL`
    /// and `IFA_ADDRESS` set to `addr` and, for IPv4, `IFA_BROADCAST` to the subnet's broadcast
    /// address (none for /31 and /32). Fails with `EEXIST` if the device already has it.
    pub fn add_address(
        &mut self,
        index: u32,
        addr: impl Into<IpAddr>,
        prefix_len: u8,
    ) -> Result<()> {
        let addr = addr.into();
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if let IpAddr::V4(v4) = addr
            && let Some(brd) = broadcast_of(v4, prefix_len)
        {
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
        let r = self.transact(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |_, _| Ok(()),
        );
        self.finish(r, index, |who| {
            format!("add address {addr}/{prefix_len} to {who}")
        })
    }

    /// The addresses of device `index`, both families (`ip addr show dev X`).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let all = self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            RTM_NEWADDR,
            |payload| {
                let m = AddressMessage::parse(payload)
                    .map_err(|e| format!("bad address message: {e}"))?;
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = local.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                Ok((m.header.index, addr, m.header.prefix_len))
            },
            || format!("list the addresses of ifindex {index}"),
        )?;
        Ok(all
            .into_iter()
            .filter_map(|(i, a, p)| a.filter(|_| i == index).map(|a| (a, p)))
            .collect())
    }

    /// Add a route in the main table (`ip route prepend DST/PREFIX [via GW] dev X`): scope link
    /// without a gateway, universe with one. Without NLM_F_EXCL, as upstream CNI's
    /// `RouteAddEcmp`: a route to the same destination through another device (a second
    /// interface in the same subnet) is added beside it instead of failing with EEXIST.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = family_of(route.dst);
        h.destination_prefix_length = route.prefix_len;
        h.table = RouteHeader::RT_TABLE_MAIN;
        h.protocol = RouteProtocol::Boot;
        h.scope = match route.gateway {
            Some(_) => RouteScope::Universe,
            None => RouteScope::Link,
        };
        h.kind = RouteType::Unicast;
        if route.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route.dst.into()));
        }
        if let Some(gw) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        msg.attributes.push(RouteAttribute::Oif(route.oif));
        let r = self.transact(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE,
            |_, _| Ok(()),
        );
        self.finish(r, route.oif, |who| format!("add route {route} on {who}"))
    }

    /// Every route of the main table, both families (`ip route show`, `ip -6 route show`).
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let all = self.dump(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            RTM_NEWROUTE,
            |payload| {
                let m =
                    RouteMessage::parse(payload).map_err(|e| format!("bad route message: {e}"))?;
                Ok(parse_route(&m))
            },
            || "list routes".to_string(),
        )?;
        Ok(all.into_iter().flatten().collect())
    }

    /// Forget the IPv4 neighbour (ARP) entry for `addr` on the device (`ip neigh del ADDR dev
    /// X`), whatever its state. Returns whether there was one.
    pub fn del_neighbour(&mut self, index: u32, addr: Ipv4Addr) -> Result<bool> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        let r = self.transact(RouteNetlinkMessage::DelNeighbour(msg), NLM_F_ACK, |_, _| {
            Ok(())
        });
        match r {
            Err(f) if f.errno() == Some(libc::ENOENT) => Ok(false),
            r => self
                .finish(r, index, |who| format!("delete neighbour {addr} on {who}"))
                .map(|()| true),
        }
    }

    // ---- plumbing ----------------------------------------------------------------------------

    fn new_link(&mut self, attrs: Vec<LinkAttribute>, op: impl FnOnce() -> String) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes = attrs;
        self.transact(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            |_, _| Ok(()),
        )
        .map(drop)
        .map_err(|f| f.into_error(op()))
    }

    fn set_link(
        &mut self,
        index: u32,
        attrs: Vec<LinkAttribute>,
        op: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes = attrs;
        let r = self.transact(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK, |_, _| Ok(()));
        self.finish(r, index, op)
    }

    /// Map a failed request on device `index` to an error that names the device.
    fn finish(
        &mut self,
        r: std::result::Result<bool, Failure>,
        index: u32,
        op: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        match r {
            Ok(_) => Ok(()),
            Err(f) => {
                let who = self.describe(index);
                Err(f.into_error(op(&who)))
            }
        }
    }

    /// "c1 (ifindex 7)" if the device can be looked up, else "ifindex 7".
    fn describe(&mut self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(l)) => format!("{} (ifindex {index})", l.name),
            _ => format!("ifindex {index}"),
        }
    }

    /// Send one request and read until its ACK, error or DONE, handing every other message of
    /// the same sequence number to `on_msg(type, payload)`. Returns whether a dump was marked
    /// NLM_F_DUMP_INTR (inconsistent: retry it). Messages with other sequence numbers (left over
    /// from an earlier request that stopped early) are skipped.
    fn transact(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut on_msg: impl FnMut(u16, &[u8]) -> std::result::Result<(), Failure>,
    ) -> std::result::Result<bool, Failure> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|source| Failure::Sys {
            what: "send",
            source,
        })?;

        let mut interrupted = false;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let nb = NetlinkBuffer::new_checked(&self.buf[off..n])
                    .map_err(|e| Failure::Protocol(format!("bad netlink message: {e}")))?;
                let (ty, fl, s) = (nb.message_type(), nb.flags(), nb.sequence_number());
                let payload = nb.payload();
                off += align4(nb.length() as usize);
                if s != seq {
                    tracing::debug!(
                        seq = s,
                        expected = seq,
                        ty,
                        "skipping stale netlink message"
                    );
                    continue;
                }
                if fl & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let e = parse_nlmsgerr(payload, fl).map_err(Failure::Protocol)?;
                        if e.code == 0 {
                            if let Some(w) = e.extack {
                                tracing::debug!("kernel warning: {w}");
                            }
                            return Ok(interrupted);
                        }
                        return Err(Failure::Kernel {
                            errno: -e.code,
                            extack: e.extack,
                        });
                    }
                    NLMSG_DONE => {
                        // A DONE may carry an error: i32, then extack TLVs right after it.
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if code < 0 {
                            let extack = if fl & NLM_F_ACK_TLVS != 0 {
                                extack_text(&payload[4..])
                            } else {
                                None
                            };
                            return Err(Failure::Kernel {
                                errno: -code,
                                extack,
                            });
                        }
                        return Ok(interrupted);
                    }
                    NLMSG_OVERRUN => {
                        return Err(Failure::Protocol("NLMSG_OVERRUN: data lost".into()));
                    }
                    _ => on_msg(ty, payload)?,
                }
            }
        }
    }

    /// Read one datagram into `self.buf` (growing it if the datagram is larger), return its size.
    fn recv(&mut self) -> std::result::Result<usize, Failure> {
        recv_datagram(&self.sock, &mut self.buf).map_err(|source| Failure::Sys {
            what: "receive",
            source,
        })
    }
}

/// One whole datagram from `sock` into `buf`: peeked first (MSG_TRUNC gives its real size) so
/// that `buf` grows to fit instead of truncating it; returns its length.
pub(super) fn recv_datagram(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        buf.clear();
        match sock.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC) {
            Ok(n) if n > buf.capacity() => buf.reserve(n),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    loop {
        buf.clear();
        match sock.recv(buf, 0) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A route as umacvlan sets and reads them: destination, gateway, output device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix_len)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        Ok(())
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A main-table unicast route with one output device; `None` for any other kind.
fn parse_route(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut route = Route {
        dst: unspecified,
        prefix_len: h.destination_prefix_length,
        gateway: None,
        oif: 0,
    };
    let mut table = u32::from(h.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => route.dst = ip(d)?,
            RouteAttribute::Gateway(g) => route.gateway = ip(g),
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    (table == u32::from(RouteHeader::RT_TABLE_MAIN) && h.kind == RouteType::Unicast)
        .then_some(route)
}

/// The broadcast address of `addr`'s subnet, as `ip addr add ... brd +` computes it; `None` for
/// /31 and /32, which have none.
pub fn broadcast_of(addr: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Addr> {
    if prefix_len >= 31 {
        return None;
    }
    let host_bits = u32::MAX >> prefix_len;
    Some(Ipv4Addr::from(u32::from(addr) | host_bits))
}

/// Parse an RTM_NEWLINK/RTM_DELLINK payload (`ifinfomsg` + attributes).
pub(crate) fn parse_link(payload: &[u8]) -> std::result::Result<LinkInfo, String> {
    if payload.len() < 16 {
        return Err(format!("link message of {} bytes", payload.len()));
    }
    let link_type = u16::from_ne_bytes([payload[2], payload[3]]);
    let msg = LinkMessage::parse(payload).map_err(|e| format!("bad link message: {e}"))?;
    let mut info = LinkInfo {
        index: msg.header.index,
        link_type,
        flags: IfFlags::from_raw(msg.header.flags.bits()),
        ..LinkInfo::default()
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n,
            LinkAttribute::Address(a) => {
                info.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Mtu(v) => info.mtu = v,
            LinkAttribute::MinMtu(v) => info.min_mtu = v,
            LinkAttribute::MaxMtu(v) => info.max_mtu = v,
            LinkAttribute::TxQueueLen(v) => info.txqlen = v,
            LinkAttribute::Promiscuity(v) => info.promiscuity = v,
            LinkAttribute::GsoMaxSize(v) => info.gso_max_size = v,
            LinkAttribute::GroMaxSize(v) => info.gro_max_size = v,
            LinkAttribute::OperState(s) => info.operstate = OperState::from(u8::from(s)),
            LinkAttribute::Link(v) => info.link = Some(v),
            LinkAttribute::LinkNetNsId(v) => info.link_netnsid = Some(v),
            LinkAttribute::Controller(v) => info.master = Some(v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                        NlLinkInfo::Data(InfoData::MacVlan(d)) => {
                            info.macvlan = Some(parse_macvlan(d));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn parse_macvlan(data: Vec<InfoMacVlan>) -> MacvlanInfo {
    let mut m = MacvlanInfo::default();
    for d in data {
        match d {
            InfoMacVlan::Mode(mode) => m.mode = u32::from(mode),
            InfoMacVlan::Flags(f) => m.flags = f.bits(),
            InfoMacVlan::MacAddrCount(n) => m.macaddr_count = n,
            InfoMacVlan::MacAddrData(list) => {
                m.sources.extend(list.into_iter().filter_map(|x| match x {
                    InfoMacVlan::MacAddr(a) => Some(MacAddr(a)),
                    _ => None,
                }));
            }
            InfoMacVlan::BcQueueLen(n) => m.bc_queue_len = Some(n),
            InfoMacVlan::BcQueueLenUsed(n) => m.bc_queue_len_used = Some(n),
            InfoMacVlan::BcCutoff(n) => m.bc_cutoff = Some(n),
            _ => {}
        }
    }
    m
}

/// Whether a message type is a link message we parse (for the monitor).
pub(crate) fn is_link_msg(ty: u16) -> Option<bool> {
    match ty {
        RTM_NEWLINK => Some(true),
        RTM_DELLINK => Some(false),
        _ => None,
    }
}

/// Serialize a link message as the kernel would send it (tests).
#[cfg(test)]
pub(crate) fn emit_link(msg: &LinkMessage) -> Vec<u8> {
    use netlink_packet_core::Emitable;
    let mut b = vec![0u8; msg.buffer_len()];
    msg.emit(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NLMSG_ERROR payload as the kernel builds it with CAP_ACK and an extack message.
    fn nlmsgerr_bytes(code: i32, msg: Option<&str>) -> Vec<u8> {
        let mut p = code.to_ne_bytes().to_vec();
        // Echoed request header: length says 100 (the whole request), but CAPPED is set.
        p.extend_from_slice(&100u32.to_ne_bytes());
        p.extend_from_slice(&[0x13, 0, 0x05, 0]); // RTM_SETLINK, REQUEST|ACK
        p.extend_from_slice(&7u32.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        if let Some(m) = msg {
            let mut v = m.as_bytes().to_vec();
            v.push(0);
            let len = 4 + v.len();
            p.extend_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
            p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            p.extend_from_slice(&v);
            p.resize(align4(p.len()), 0);
        }
        p
    }

    #[test]
    fn extack_message_is_decoded() {
        let p = nlmsgerr_bytes(-libc::EINVAL, Some("mtu less than device minimum"));
        let e = parse_nlmsgerr(&p, NLM_F_CAPPED | NLM_F_ACK_TLVS).unwrap();
        assert_eq!(e.code, -libc::EINVAL);
        assert_eq!(e.extack.as_deref(), Some("mtu less than device minimum"));
    }

    #[test]
    fn no_tlvs_flag_means_no_extack() {
        let p = nlmsgerr_bytes(-libc::EEXIST, None);
        let e = parse_nlmsgerr(&p, NLM_F_CAPPED).unwrap();
        assert_eq!(
            e,
            NlMsgErr {
                code: -libc::EEXIST,
                extack: None
            }
        );
        // An ACK.
        let p = nlmsgerr_bytes(0, None);
        assert_eq!(parse_nlmsgerr(&p, NLM_F_CAPPED).unwrap().code, 0);
    }

    #[test]
    fn uncapped_error_skips_the_whole_echoed_request() {
        // Echo of a 20-byte request (16 header + 4 payload), then the TLV.
        let mut p = (-libc::EPERM).to_ne_bytes().to_vec();
        p.extend_from_slice(&20u32.to_ne_bytes());
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[0xaa; 4]);
        p.extend_from_slice(&8u16.to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"no\0\0");
        let e = parse_nlmsgerr(&p, NLM_F_ACK_TLVS).unwrap();
        assert_eq!(e.extack.as_deref(), Some("no"));
    }

    #[test]
    fn short_error_is_a_protocol_error() {
        assert!(parse_nlmsgerr(&[1, 2], 0).is_err());
    }

    #[test]
    fn link_message_fields_are_decoded() {
        let mut msg = LinkMessage::default();
        msg.header.index = 9;
        msg.header.link_layer_type = netlink_packet_route::link::LinkLayerType::Ether;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        msg.attributes = vec![
            LinkAttribute::IfName("mv0".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]),
            LinkAttribute::Mtu(1400),
            LinkAttribute::MaxMtu(65535),
            LinkAttribute::TxQueueLen(500),
            LinkAttribute::Promiscuity(1),
            LinkAttribute::Link(3),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::MacVlan),
                NlLinkInfo::Data(InfoData::MacVlan(vec![
                    InfoMacVlan::Mode(MacVlanMode::Source),
                    InfoMacVlan::Flags(MacVlanFlags::NoDst),
                    InfoMacVlan::MacAddrCount(1),
                    InfoMacVlan::MacAddrData(vec![InfoMacVlan::MacAddr([2, 1, 1, 1, 1, 1])]),
                    InfoMacVlan::BcQueueLen(1000),
                    InfoMacVlan::BcCutoff(-1),
                ])),
            ]),
        ];
        let l = parse_link(&emit_link(&msg)).unwrap();
        assert_eq!(l.index, 9);
        assert_eq!(l.name, "mv0");
        assert_eq!(l.link_type, 1);
        assert_eq!(l.mac, Some(MacAddr([2, 0, 0, 0, 0, 9])));
        assert_eq!(
            (l.mtu, l.max_mtu, l.txqlen, l.promiscuity),
            (1400, 65535, 500, 1)
        );
        assert!(l.flags.up && l.flags.lower_up && !l.flags.promisc && !l.flags.loopback);
        assert_eq!(l.kind.as_deref(), Some("macvlan"));
        assert_eq!(l.link, Some(3));
        assert_eq!(l.gro_max_size, 0);
        let m = l.macvlan.unwrap();
        assert_eq!(m.mode, MACVLAN_MODE_SOURCE);
        assert_eq!(m.flags, MACVLAN_FLAG_NODST);
        assert_eq!(m.sources, vec![MacAddr([2, 1, 1, 1, 1, 1])]);
        assert_eq!(m.bc_queue_len, Some(1000));
        assert_eq!(m.bc_cutoff, Some(-1));
    }

    #[test]
    fn mode_names_match_iproute2() {
        assert_eq!(macvlan_mode_name(MACVLAN_MODE_PASSTHRU), Some("passthru"));
        assert_eq!(macvlan_mode_name(3), None);
    }

    #[test]
    fn wireless_check_does_not_escape_sysfs() {
        assert!(!is_wireless("lo"));
        assert!(!is_wireless("../../"));
        assert!(!is_wireless(""));
    }
}
