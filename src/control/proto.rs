//! The control protocol between `umacvlan` commands and a running engine: one JSON object per
//! line each way over a Unix stream socket (default [`DEFAULT_SOCKET`]).
//!
//! A client sends an [`Envelope`] (`{"version":1,"request":{"cmd":"link-show",...}}`) and reads
//! one [`Response`] line. Every request is parsed in full, with unknown fields refused, before
//! anything changes; a request that fails changes nothing. Versions: a daemon answers a request of
//! another `version` with `unsupported-version` and the version it speaks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::control::spec::{LinkPortSpec, PortKind, PortSpec};
/// A frame as an `observation` carries it: the JSON face of the engine's frame record.
pub use crate::engine::record::{FailedCopy, ObservedFrame};
use crate::forward::Mode;
use crate::net::Cidr;
use crate::wire::mac::MacAddr;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Where `umacvlan run` listens unless told otherwise (`--control PATH`).
pub const DEFAULT_SOCKET: &str = "/run/umacvlan/umacvlan.sock";
/// The longest request line a daemon reads; a longer one is refused and the connection closed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// What a client can ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// `umacvlan link add`.
    LinkAdd(LinkSpec),
    /// `umacvlan link del NAME`.
    LinkDel(LinkName),
    /// `umacvlan link set NAME ...`, with the kernel's changelink rules.
    LinkSet(LinkChange),
    /// `umacvlan link show [NAME]`.
    LinkShow(LinkFilter),
    /// `umacvlan trace` against the daemon's current table.
    Trace(TraceRequest),
    /// `umacvlan reload`: re-read the configuration file and apply the difference.
    Reload(Empty),
    /// `umacvlan trace --follow` and `umacvlan capture`: a stream of responses, see
    /// [`FollowRequest`].
    Follow(FollowRequest),
    /// `umacvlan stats` (and every `/metrics` scrape): every port's and parent's counters.
    Stats(Empty),
}

impl Request {
    /// A streaming request: answered with many response lines, see [`FollowRequest`].
    pub fn is_stream(&self) -> bool {
        matches!(self, Request::Follow(_))
    }
}

/// Follow real frames as the engine forwards them. The answer is a stream of lines: first
/// `following` (the interfaces involved) or an error, then one `observation` per frame, then
/// `follow-end` with how many were sent and how many were lost (the client read too slowly). It
/// ends after `count` frames, or when the client disconnects (or closes its sending side).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowRequest {
    /// `parent` (every frame of every parent), a parent's name (every frame of that parent),
    /// a port's name (frames it sent or received), or `drops` (frames that went nowhere, and
    /// copies a port's TAP refused).
    pub target: String,
    /// Stop after this many frames; `None`: until the client disconnects.
    #[serde(default)]
    pub count: Option<u64>,
    /// Bytes per frame when `with_bytes`; default (and at most) [`MAX_SNAPLEN`].
    #[serde(default)]
    pub snaplen: Option<u32>,
    /// Send each frame's bytes (hex) too.
    #[serde(default)]
    pub with_bytes: bool,
    /// After `following`, send the frames as binary records (see [`crate::engine::record`]) instead of
    /// `observation` lines; then a zero length and the `follow-end` line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary: bool,
}

/// The largest snaplen a follower gets (tcpdump's default).
pub const MAX_SNAPLEN: u32 = 262_144;

/// An interface a follow stream may name: a parent or a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowInterface {
    pub name: String,
    /// The parent it hangs off (itself for a parent).
    pub parent: String,
    /// `parent`, or the port's mode.
    pub kind: String,
    pub mac: MacAddr,
}

/// A request without arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkName {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFilter {
    /// `None`: every port.
    #[serde(default)]
    pub name: Option<String>,
}

/// A new port: `ip link add NAME link PARENT type macvlan ...` in umacvlan's words.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub name: String,
    /// `None`: the interface of the default route (what CNI and netavark do).
    #[serde(default)]
    pub parent: Option<String>,
    /// `None`: bridge.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// `None`: the stable MAC derived from the parent's and the port's names.
    #[serde(default)]
    pub address: Option<MacAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// A name from `ip netns add`, or an absolute path to a namespace file (`/proc/PID/ns/net`,
    /// `/var/run/netns/X`); `None`: the engine's namespace.
    #[serde(default)]
    pub netns: Option<String>,
    /// The device's name in its namespace; `None`: `name`. Lets many ports (named uniquely in
    /// the engine) all be `eth0` in their containers, as CNI wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Who created the port, an opaque label the engine keeps and shows (`link show`); the CNI
    /// plugin writes `cni:NETWORK/CONTAINERID/IFNAME` and finds its ports by it (GC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default)]
    pub nopromisc: bool,
    #[serde(default)]
    pub nodst: bool,
    #[serde(default)]
    pub bcqueuelen: Option<u32>,
    /// Parent-wide, as in the kernel: the last port that sets it wins.
    #[serde(default)]
    pub bclim: Option<i32>,
    /// Source mode: the remote source MACs.
    #[serde(default)]
    pub macaddr: Vec<MacAddr>,
    /// `tap` (default), `attach` (an existing netdev, e.g. a VM's TAP) or `stream` (a Unix
    /// socket with QEMU's stream framing).
    #[serde(default)]
    pub kind: PortKind,
    /// A stream port's socket path.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A VM port may send from any source MAC (no `mac_spoof` check).
    #[serde(default)]
    pub trust_guest_mac: bool,
    /// A host port's IP addresses (`address` is the MAC, as in `ip link`).
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    /// Networks routed through a host port.
    #[serde(default)]
    pub routes: Vec<Cidr>,
    /// A TAP port whose device outlives the engine (`TUNSETPERSIST`): an engine's exit (even
    /// SIGKILL) leaves it where it is, and `link add` of a persistent port whose device already
    /// exists as a persistent TAP (`ifname` or `name` in `netns`) adopts it
    /// (docs/design.md#ports-that-move-and-ports-that-persist).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
}

/// The request as the one description of a port ([`PortSpec`]); `parent`, `owner` and `bclim`
/// are not the port's. A request's port attributes are read here and nowhere else.
impl From<&LinkSpec> for PortSpec {
    fn from(l: &LinkSpec) -> PortSpec {
        PortSpec {
            name: l.name.clone(),
            mode: l.mode.unwrap_or(Mode::Bridge),
            netns: l.netns.clone(),
            mac: l.address,
            mtu: l.mtu,
            flags: crate::forward::PortFlags {
                nopromisc: l.nopromisc,
                nodst: l.nodst,
            },
            bcqueuelen: l.bcqueuelen,
            sources: l.macaddr.iter().copied().collect(),
            state: Default::default(),
            ifname: l.ifname.clone(),
            persist: l.persist,
            kind: l.kind,
            path: l.path.clone(),
            trust_guest_mac: l.trust_guest_mac,
            addresses: l.addresses.clone(),
            routes: l.routes.clone(),
        }
    }
}

/// `link add KEY=VALUE,...` (a `--port` spec with `parent` and `bclim`) as a request: the
/// reverse of `From<&LinkSpec> for PortSpec`.
impl From<LinkPortSpec> for LinkSpec {
    fn from(l: LinkPortSpec) -> LinkSpec {
        let p = l.port;
        LinkSpec {
            name: p.name,
            parent: l.parent,
            mode: Some(p.mode),
            address: p.mac,
            mtu: p.mtu,
            netns: p.netns,
            ifname: p.ifname,
            owner: None,
            nopromisc: p.flags.nopromisc,
            nodst: p.flags.nodst,
            bcqueuelen: p.bcqueuelen,
            bclim: l.bclim,
            macaddr: p.sources.into_iter().collect(),
            kind: p.kind,
            path: p.path,
            trust_guest_mac: p.trust_guest_mac,
            addresses: p.addresses,
            routes: p.routes,
            persist: p.persist,
        }
    }
}

/// `umacvlan link set NAME ...`: only the fields given change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkChange {
    pub name: String,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub address: Option<MacAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub bcqueuelen: Option<u32>,
    #[serde(default)]
    pub bclim: Option<i32>,
    /// Source mode only (EINVAL otherwise).
    #[serde(default)]
    pub macaddr: Option<MacaddrOp>,
}

/// `macaddr add|del|set|flush` (IFLA_MACVLAN_MACADDR_MODE).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "macs", rename_all = "kebab-case")]
pub enum MacaddrOp {
    /// A MAC already listed is a silent no-op.
    Add(Vec<MacAddr>),
    /// A MAC not listed is a silent success.
    Del(Vec<MacAddr>),
    /// Flush, then add these.
    Set(Vec<MacAddr>),
    Flush,
}

/// A frame to decide against the daemon's current table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// `parent` or a port's name.
    pub from: String,
    /// Which parent when `from` is `parent` and the daemon has several; `None`: the only one.
    #[serde(default)]
    pub parent: Option<String>,
    pub src: MacAddr,
    pub dst: MacAddr,
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Frame length on the wire; default 64.
    #[serde(default)]
    pub len: Option<usize>,
    #[serde(default)]
    pub gso: bool,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Response {
    Ok { reply: Reply },
    Error { error: ControlError },
}

/// What a successful request returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reply {
    /// The request was applied (del).
    Done,
    /// link-add, link-set (the port as it is now) and link-show.
    Links {
        links: Vec<LinkView>,
    },
    Trace {
        trace: serde_json::Value,
    },
    Reloaded {
        report: ReloadReport,
    },
    /// The first line of a follow stream: the interfaces it may name.
    Following {
        interfaces: Vec<FollowInterface>,
    },
    /// One frame of a follow stream.
    Observation {
        frame: ObservedFrame,
    },
    /// The last line of a follow stream.
    FollowEnd {
        /// Observations sent.
        seen: u64,
        /// Observations that matched but were lost because the client read too slowly.
        lost: u64,
    },
    /// stats: one consistent snapshot, taken by the daemon's control loop.
    Stats {
        stats: StatsView,
    },
}

/// Why a request failed; `kind` is stable (scripts match on it), `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

/// Stable error kinds; where the kernel has an errno for the same refusal, it is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Malformed JSON, an unknown command or field, a line too long.
    BadRequest,
    UnsupportedVersion,
    /// ENODEV: no port (or parent) of that name.
    NoSuchLink,
    /// EEXIST: a port or interface of that name exists.
    Exists,
    /// EADDRINUSE: the MAC is the parent's or an up port's.
    AddressInUse,
    /// EADDRNOTAVAIL: a group or zero MAC.
    AddressNotAvailable,
    /// EINVAL: a value the kernel refuses (MTU range, mode change to/from passthru, passthru
    /// not alone, macaddr outside source mode, ...).
    InvalidArgument,
    /// EBUSY: the parent cannot take macvlan ports (loopback, not Ethernet, wireless, ...).
    Busy,
    NoSuchNetns,
    /// `reload` on a daemon started without `--config`, or a configuration that does not
    /// validate (nothing changed).
    BadConfig,
    /// EPERM: the peer (SO_PEERCRED) is neither root nor in the daemon's allowed group.
    PermissionDenied,
    /// The daemon failed to do something it should have been able to do.
    Internal,
}

/// A port as `umacvlan link show` reports it; the client renders it as `ip -d -s link` text or
/// iproute2-shaped JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkView {
    pub name: String,
    /// In its namespace, when known.
    pub ifindex: Option<u32>,
    pub address: MacAddr,
    pub mtu: u32,
    pub parent: String,
    pub netns: Option<String>,
    /// The device's name in its namespace when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Who created the port ([`LinkSpec::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Admin up (the TAP's IFF_UP).
    pub up: bool,
    /// Carrier (IFF_LOWER_UP).
    pub lower_up: bool,
    /// In the forwarding table (up, and its MAC not refused).
    pub forwarding: bool,
    /// Why an up port is not forwarding: the kernel would have refused its `ip link set up` or
    /// its new MAC (EADDRINUSE: the parent's or an up port's; EADDRNOTAVAIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub promisc: bool,
    pub allmulti: bool,
    pub mode: Mode,
    pub nopromisc: bool,
    pub nodst: bool,
    pub bcqueuelen: u32,
    pub usedbcqueuelen: u32,
    pub bclim: i32,
    pub macaddr: Vec<MacAddr>,
    pub stats: LinkStats,
    #[serde(default)]
    pub kind: PortKind,
    /// A stream port's socket; whether a peer is connected is `lower_up`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub trust_guest_mac: bool,
    /// A persistent TAP ([`LinkSpec::persist`]).
    #[serde(default)]
    pub persist: bool,
}

/// Counters from the port's side, as `ip -s link` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_multicast: u64,
    /// Copies for this port that could not be written.
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames this port sent that went nowhere.
    pub tx_dropped: u64,
    /// Every non-zero drop counter by its stable reason name.
    pub drops: BTreeMap<String, u64>,
}

/// Every counter of the engine at one moment: what `umacvlan stats` shows and `/metrics`
/// exports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsView {
    /// Every port, as `link show` reports it (counters in `stats`).
    pub ports: Vec<LinkView>,
    /// Every parent with at least one port.
    pub parents: Vec<ParentView>,
}

/// A parent's counters: `rx` is what came from the wire (the ring), `tx` what went to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentView {
    pub name: String,
    /// The parent is the 802.1Q sub-interface the engine emulates on a lower device (no device
    /// of its name exists): which, and its VID. Absent for a real device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanView>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames from the wire that reached no port, by their stable reason name (non-zero only).
    pub drops: BTreeMap<String, u64>,
    /// The kernel's own counters of the parent's AF_PACKET ring (PACKET_STATISTICS,
    /// accumulated): frames it queued, frames it dropped because the ring was full, and times
    /// it froze the queue.
    pub ring_packets: u64,
    pub ring_drops: u64,
    pub ring_freezes: u64,
    /// The receive ring kind (`run --ring`): `v2`, `v3` or `auto`.
    #[serde(default)]
    pub ring: String,
    /// The ring the parent's worker reads now: `v2` or `v3` (`mixed` when its workers differ).
    #[serde(default)]
    pub ring_mode: String,
    /// `--ring auto`: switches between the V2 and the V3 ring so far, both ways.
    #[serde(default)]
    pub ring_mode_switches: u64,
    /// `--ring auto`: switches that failed (the kernel refused the new program; the worker
    /// stayed in its mode).
    #[serde(default)]
    pub ring_steer_failures: u64,
    /// The scheduling the parent's workers applied to themselves (`run --worker-priority`):
    /// `normal`, `nice:N`, `fifo:P`, or what a refused one fell back to, with why, e.g.
    /// `nice:-10 (fifo:1 refused: EPERM)`. Empty while the parent is gone.
    #[serde(default)]
    pub worker_priority: String,
    /// How many ports hang off this parent.
    pub ports: usize,
    /// The broadcast queue's length in use (the largest `bcqueuelen` of its ports, as the
    /// kernel's `usedbcqueuelen`).
    pub bcqueuelen_used: u32,
    /// Frames waiting in the broadcast queue now. Always 0 in umacvlan: the kernel defers
    /// broadcast and multicast to a work queue, umacvlan delivers every queued frame at once in
    /// the worker's loop, so nothing is ever left waiting between two looks. A frame the queue
    /// cannot take is still counted (`bcqueue_full`). Kept for parity with the kernel's knobs.
    pub broadcast_queue_depth: u64,
}

/// An emulated 802.1Q sub-interface: its lower device and VID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlanView {
    pub lower: String,
    pub vid: u16,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_refuse_unknown_fields() {
        let e = Envelope {
            version: VERSION,
            request: Request::LinkSet(LinkChange {
                name: "c1".into(),
                mode: Some(Mode::Vepa),
                macaddr: Some(MacaddrOp::Add(vec!["02:00:00:00:00:09".parse().unwrap()])),
                ..LinkChange::default()
            }),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&line).unwrap(), e);
        let show = r#"{"version":1,"request":{"cmd":"link-show"}}"#;
        assert_eq!(
            serde_json::from_str::<Envelope>(show).unwrap().request,
            Request::LinkShow(LinkFilter { name: None })
        );
        for bad in [
            r#"{"version":1,"request":{"cmd":"link-show","colour":"red"}}"#,
            r#"{"version":1,"request":{"cmd":"link-explode"}}"#,
            r#"{"version":1,"request":{"cmd":"link-del"}}"#,
            r#"{"version":1}"#,
            r#"{"version":1,"request":{"cmd":"reload"},"extra":0}"#,
        ] {
            assert!(serde_json::from_str::<Envelope>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn follow_requests_stream() {
        let line = r#"{"version":1,"request":{"cmd":"follow","target":"c1","count":3}}"#;
        let r = serde_json::from_str::<Envelope>(line).unwrap().request;
        assert!(r.is_stream());
        assert_eq!(
            r,
            Request::Follow(FollowRequest {
                target: "c1".into(),
                count: Some(3),
                ..FollowRequest::default()
            })
        );
        assert!(!Request::Reload(Empty {}).is_stream());
        let bad = r#"{"version":1,"request":{"cmd":"follow","target":"c1","colour":1}}"#;
        assert!(serde_json::from_str::<Envelope>(bad).is_err());
        let end = Response::Ok {
            reply: Reply::FollowEnd { seen: 3, lost: 1 },
        };
        let j = serde_json::to_value(&end).unwrap();
        assert_eq!(j["reply"]["kind"], "follow-end");
    }

    #[test]
    fn responses_are_tagged() {
        let r = Response::Error {
            error: ControlError::new(ErrorKind::AddressInUse, "MAC busy"),
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["status"], "error");
        assert_eq!(j["error"]["kind"], "address-in-use");
    }
}
