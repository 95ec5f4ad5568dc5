//! What `decide()` returns: who gets a frame, whether it goes to the wire or the parent's own
//! stack, the kernel rule that decided it, and a reason for everything that did not happen.

use std::fmt;

use crate::wire::frame::{ETH_HLEN, FrameError, VLAN_HLEN};
use crate::wire::mac::MacAddr;

use super::table::{Mode, ModeMask, PortId, PortTable};

/// Why a frame (or one port's copy of it) went nowhere. The names are stable: counters, JSON and
/// metrics use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    Runt,
    Oversize,
    Truncated,
    BadVlan,
    BadVnetHeader,
    UnknownDestination,
    SourcePortDestination,
    MulticastNotJoined,
    NoReceiver,
    ModeIsolation,
    OwnSource,
    PortDown,
    Mtu,
    BcQueueFull,
    PauseFrame,
    NodstSource,
    TapQueueFull,
    TapWriteFailed,
    WireSendFailed,
    MacSpoof,
    NoPeer,
}

/// Bytes that are not a frame `decide()` may look at are dropped for the parse error's reason.
impl From<FrameError> for DropReason {
    fn from(e: FrameError) -> DropReason {
        match e {
            FrameError::Runt(_) => DropReason::Runt,
            FrameError::Oversize { .. } => DropReason::Oversize,
            FrameError::BadVlan(_) => DropReason::BadVlan,
        }
    }
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::Truncated,
        DropReason::BadVlan,
        DropReason::BadVnetHeader,
        DropReason::UnknownDestination,
        DropReason::SourcePortDestination,
        DropReason::MulticastNotJoined,
        DropReason::NoReceiver,
        DropReason::ModeIsolation,
        DropReason::OwnSource,
        DropReason::PortDown,
        DropReason::Mtu,
        DropReason::BcQueueFull,
        DropReason::PauseFrame,
        DropReason::NodstSource,
        DropReason::TapQueueFull,
        DropReason::TapWriteFailed,
        DropReason::WireSendFailed,
        DropReason::MacSpoof,
        DropReason::NoPeer,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::Truncated => "truncated",
            DropReason::BadVlan => "bad_vlan",
            DropReason::BadVnetHeader => "bad_vnet_header",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::SourcePortDestination => "source_port_destination",
            DropReason::MulticastNotJoined => "multicast_not_joined",
            DropReason::NoReceiver => "no_receiver",
            DropReason::ModeIsolation => "mode_isolation",
            DropReason::OwnSource => "own_source",
            DropReason::PortDown => "port_down",
            DropReason::Mtu => "mtu",
            DropReason::BcQueueFull => "bcqueue_full",
            DropReason::PauseFrame => "pause_frame",
            DropReason::NodstSource => "nodst_source",
            DropReason::TapQueueFull => "tap_queue_full",
            DropReason::TapWriteFailed => "tap_write_failed",
            DropReason::WireSendFailed => "wire_send_failed",
            DropReason::MacSpoof => "mac_spoof",
            DropReason::NoPeer => "no_peer",
        }
    }

    /// One line for docs/reference.md#drop-reasons, `--help` and trace output.
    pub const fn meaning(self) -> &'static str {
        match self {
            DropReason::Runt => "shorter than an Ethernet header (14 bytes)",
            DropReason::Oversize => {
                "longer than the largest frame the engine accepts (from a port: a non-GSO frame longer than the parent's MTU + 18)"
            }
            DropReason::Truncated => "the parent's ring slot held less than the whole frame",
            DropReason::BadVlan => "the outer VLAN tag is cut short or has the reserved VID 4095",
            DropReason::BadVnetHeader => {
                "the virtio-net header is inconsistent (unknown GSO type, GSO without a segment size, checksum offsets past the frame)"
            }
            DropReason::UnknownDestination => {
                "unicast to a MAC that no up port owns: only the parent's own stack gets it"
            }
            DropReason::SourcePortDestination => {
                "unicast to a source-mode port's MAC: source ports are never reached by their MAC; the parent's stack gets it"
            }
            DropReason::MulticastNotJoined => {
                "the port (or, for the whole frame, every port) has not joined this group"
            }
            DropReason::NoReceiver => {
                "a group frame that no port accepted (mode, filter or sender)"
            }
            DropReason::ModeIsolation => "the port's mode is outside this flood's mode mask",
            DropReason::OwnSource => "the sender never gets its own flood back",
            DropReason::PortDown => "the port is down (a down passthru port loses all unicast)",
            DropReason::Mtu => "longer than the receiving MTU on a bridge-local path",
            DropReason::BcQueueFull => {
                "the broadcast queue is full or its length is 0 (bcqueuelen)"
            }
            DropReason::PauseFrame => "802.3x PAUSE frames are never flooded",
            DropReason::NodstSource => "the source is on a nodst source-mode port's list: consumed",
            DropReason::TapQueueFull => "the port's TAP would block (its queue is full)",
            DropReason::TapWriteFailed => "writing to the port's TAP failed",
            DropReason::WireSendFailed => "sending on the parent failed",
            DropReason::MacSpoof => {
                "a VM port sent a frame whose source is not its pinned guest MAC (trust_guest_mac is off)"
            }
            DropReason::NoPeer => "the stream port has no peer connected: its copy is lost",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernel rule that decided a frame; each has its section in docs/design.md#the-kernels-rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    RxNodst,
    RxGroupEcho,
    RxGroupExternal,
    RxGroupFromVepa,
    RxGroupFromBridge,
    RxUnicastToPort,
    RxUnicastPassthru,
    RxUnicastPassthruDown,
    RxUnicastUnknown,
    RxUnicastToSourcePort,
    TxPortDown,
    TxNotBridge,
    TxBridgeGroup,
    TxBridgeUnicastLocal,
    TxBridgeUnicastMtu,
    TxBridgeUnicastWire,
}

impl Rule {
    /// Every rule, in declaration order (docs/design.md has a section for each).
    pub const ALL: [Rule; 16] = [
        Rule::RxNodst,
        Rule::RxGroupEcho,
        Rule::RxGroupExternal,
        Rule::RxGroupFromVepa,
        Rule::RxGroupFromBridge,
        Rule::RxUnicastToPort,
        Rule::RxUnicastPassthru,
        Rule::RxUnicastPassthruDown,
        Rule::RxUnicastUnknown,
        Rule::RxUnicastToSourcePort,
        Rule::TxPortDown,
        Rule::TxNotBridge,
        Rule::TxBridgeGroup,
        Rule::TxBridgeUnicastLocal,
        Rule::TxBridgeUnicastMtu,
        Rule::TxBridgeUnicastWire,
    ];

    /// A stable snake_case name, for JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Rule::RxNodst => "rx_nodst",
            Rule::RxGroupEcho => "rx_group_echo",
            Rule::RxGroupExternal => "rx_group_external",
            Rule::RxGroupFromVepa => "rx_group_from_vepa",
            Rule::RxGroupFromBridge => "rx_group_from_bridge",
            Rule::RxUnicastToPort => "rx_unicast_to_port",
            Rule::RxUnicastPassthru => "rx_unicast_passthru",
            Rule::RxUnicastPassthruDown => "rx_unicast_passthru_down",
            Rule::RxUnicastUnknown => "rx_unicast_unknown",
            Rule::RxUnicastToSourcePort => "rx_unicast_to_source_port",
            Rule::TxPortDown => "tx_port_down",
            Rule::TxNotBridge => "tx_not_bridge",
            Rule::TxBridgeGroup => "tx_bridge_group",
            Rule::TxBridgeUnicastLocal => "tx_bridge_unicast_local",
            Rule::TxBridgeUnicastMtu => "tx_bridge_unicast_mtu",
            Rule::TxBridgeUnicastWire => "tx_bridge_unicast_wire",
        }
    }

    /// The section label of the rule (§N: docs/design.md#the-kernels-rules maps them).
    pub const fn section(self) -> &'static str {
        match self {
            Rule::RxNodst => "§7, §2 step 1.2/2.1",
            Rule::RxGroupEcho => "§2 step 1.4",
            Rule::RxGroupExternal | Rule::RxGroupFromVepa | Rule::RxGroupFromBridge => {
                "§2 steps 1.5-1.6, §5"
            }
            Rule::RxUnicastToPort => "§2 step 2.5",
            Rule::RxUnicastPassthru => "§6, §2 step 2.2",
            Rule::RxUnicastPassthruDown => "§6, §2 step 2.4",
            Rule::RxUnicastUnknown | Rule::RxUnicastToSourcePort => "§2 step 2.3",
            Rule::TxPortDown => "§8 (a down port transmits nothing)",
            Rule::TxNotBridge => "§3",
            Rule::TxBridgeGroup => "§3 (bridge group frame)",
            Rule::TxBridgeUnicastLocal | Rule::TxBridgeUnicastMtu => "§3 (bridge unicast)",
            Rule::TxBridgeUnicastWire => "§3",
        }
    }

    pub const fn text(self) -> &'static str {
        match self {
            Rule::RxNodst => {
                "the source MAC is on a nodst source-mode port's list: copies to the source ports, nothing else (not even the parent's stack)"
            }
            Rule::RxGroupEcho => {
                "a group frame whose source is an up private/passthru/source port goes back to that port only, filter or not; the parent's stack does not get it"
            }
            Rule::RxGroupExternal => {
                "a group frame from outside floods private, vepa, passthru and bridge ports that joined it; the parent's stack gets it too"
            }
            Rule::RxGroupFromVepa => {
                "a group frame whose source is an up vepa port floods the other vepa and bridge ports that joined it; the parent's stack gets it too"
            }
            Rule::RxGroupFromBridge => {
                "a group frame whose source is an up bridge port floods only vepa ports (bridge ports had it when it was sent); the parent's stack gets it too"
            }
            Rule::RxUnicastToPort => "unicast to an up port's MAC goes to that port only",
            Rule::RxUnicastPassthru => {
                "passthru: every unicast goes to the passthru port, whatever its destination"
            }
            Rule::RxUnicastPassthruDown => {
                "passthru port is down: unicast is dropped, neither port nor parent stack gets it"
            }
            Rule::RxUnicastUnknown => {
                "no up port owns the destination MAC: the parent's own stack gets it, no port does (no unknown-unicast flooding)"
            }
            Rule::RxUnicastToSourcePort => {
                "the destination is a source-mode port's MAC: source ports are never reached by their MAC; the parent's stack gets it"
            }
            Rule::TxPortDown => "the sending port is down",
            Rule::TxNotBridge => {
                "only bridge mode does anything locally: vepa, private, passthru and source ports send everything to the wire"
            }
            Rule::TxBridgeGroup => {
                "a bridge port's group frame is copied to the other up bridge ports that joined it (MTU-checked), then sent to the wire"
            }
            Rule::TxBridgeUnicastLocal => {
                "bridge unicast to an up bridge port stays local (re-received on the parent, so source-mode copies apply); never the wire"
            }
            Rule::TxBridgeUnicastMtu => {
                "bridge unicast to an up bridge port longer than the parent's MTU: dropped"
            }
            Rule::TxBridgeUnicastWire => {
                "bridge unicast to anything but an up bridge port goes to the wire"
            }
        }
    }
}

/// A flood over the UP ports (`macvlan_broadcast`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flood {
    pub group: MacAddr,
    pub mask: ModeMask,
    /// The sender, never flooded back.
    pub except: Option<PortId>,
    /// Bridge TX copies are dropped when longer than the receiver's MTU + 18 (`is_skb_forwardable`);
    /// `None` for RX floods and GSO frames, which the kernel does not check.
    pub mtu_check_len: Option<usize>,
    /// RX only: through the broadcast queue (`bc_filter`) rather than inline.
    pub queued: bool,
}

impl Flood {
    /// Whether the flood reaches port `id`, and why not.
    pub fn admits(&self, table: &PortTable, id: PortId) -> Result<(), DropReason> {
        let p = table.port(id);
        if self.except == Some(id) {
            Err(DropReason::OwnSource)
        } else if !p.is_up() {
            Err(DropReason::PortDown)
        } else if !self.mask.contains(p.mode()) {
            Err(DropReason::ModeIsolation)
        } else if !p.accepts_group(self.group) {
            Err(DropReason::MulticastNotJoined)
        } else if self
            .mtu_check_len
            .is_some_and(|len| len > p.mtu as usize + ETH_HLEN + VLAN_HLEN)
        {
            Err(DropReason::Mtu)
        } else {
            Ok(())
        }
    }
}

/// The destination-based part of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Nobody,
    One(PortId),
    Flood(Flood),
}

/// How a port got its copy, for trace output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A source-mode copy (§7).
    SourceCopy,
    /// The destination-based delivery.
    Delivered,
    Skipped(DropReason),
}

/// The decision for one frame. `Copy`, no allocation; `copies` borrows the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'t> {
    /// Source-mode ports that get a copy (§7), delivered before anything else.
    pub copies: &'t [PortId],
    pub deliver: Delivery,
    /// Also transmitted on the parent.
    pub to_wire: bool,
    /// In the kernel the parent's own stack gets the frame too (RX only; informational, since an
    /// AF_PACKET engine cannot take a frame away from the parent's stack:
    /// docs/design.md#differences-from-the-kernel).
    pub to_host: bool,
    /// Why the destination-based delivery gave nothing, when it did not.
    pub reason: Option<DropReason>,
    pub rule: Rule,
}

impl Verdict<'_> {
    /// Calls `f` for every port that gets a copy, in delivery order. A port may appear twice (a
    /// source copy and a normal delivery), exactly as the kernel delivers it twice.
    pub fn for_each_receiver(&self, table: &PortTable, mut f: impl FnMut(PortId)) {
        self.copies.iter().copied().for_each(&mut f);
        match self.deliver {
            Delivery::Nobody => {}
            Delivery::One(id) => f(id),
            Delivery::Flood(fl) => table
                .group_candidates(fl.group, fl.mask)
                .filter(|id| fl.admits(table, *id).is_ok())
                .for_each(f),
        }
    }

    /// The destination port `id`'s copy of a frame to `dst` must carry so that the port's stack
    /// takes it as PACKET_HOST, as the kernel's child does, when that is not `dst` itself. A TAP
    /// classifies a frame against its own MAC, while the kernel gives a child pkt_type HOST in
    /// two cases where the destination is another MAC: a passthru port's foreign unicast (§6,
    /// forced), and a source copy of a frame to the parent's MAC (§7, `macvlan_forward_source_one`
    /// keeps the lower's HOST). Both are delivered with the port's own MAC as destination.
    pub fn host_dst(&self, table: &PortTable, dst: MacAddr, id: PortId) -> Option<MacAddr> {
        let p = table.port(id);
        if dst.is_group() || dst == p.mac() {
            return None;
        }
        let host = match p.mode() {
            Mode::Passthru => self.rule == Rule::RxUnicastPassthru,
            Mode::Source => dst == table.parent().mac && self.copies.contains(&id),
            _ => false,
        };
        host.then(|| p.mac())
    }

    /// Every receiver, sorted: for tests and trace.
    pub fn receivers(&self, table: &PortTable) -> Vec<PortId> {
        let mut v = Vec::new();
        self.for_each_receiver(table, |id| v.push(id));
        v.sort();
        v
    }

    /// What happened at every port, for trace: deliveries, and for floods why each other port
    /// was passed over.
    pub fn outcomes(&self, table: &PortTable) -> Vec<(PortId, Outcome)> {
        let mut out: Vec<_> = self
            .copies
            .iter()
            .map(|id| (*id, Outcome::SourceCopy))
            .collect();
        match self.deliver {
            Delivery::Nobody => {}
            Delivery::One(id) => out.push((id, Outcome::Delivered)),
            Delivery::Flood(fl) => out.extend(table.ids().map(|id| {
                let o = fl
                    .admits(table, id)
                    .map_or_else(Outcome::Skipped, |()| Outcome::Delivered);
                (id, o)
            })),
        }
        out
    }
}
