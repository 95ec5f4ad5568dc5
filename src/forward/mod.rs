//! The forwarding decision: the kernel's macvlan (`drivers/net/macvlan.c`, Linux 6.18) as one pure
//! function, [`decide`]. Read it side by side with docs/design.md#the-kernels-rules: `rx` is
//! `macvlan_handle_frame` (#the-receive-path), `tx` is `macvlan_queue_xmit`
//! (#the-transmit-path), and the flood masks are `macvlan_multicast_rx`'s.
//!
//! `decide` does no I/O, reads no clock and allocates nothing. The same function drives the data
//! plane, `umacvlan trace`, the tests and the benchmarks.
//!
//! Differences from the kernel are deliberate and listed in
//! docs/design.md#differences-from-the-kernel: the per-port and per-child group filters are exact
//! sets rather than 256-bucket hashes, and IPv4 fragments of group frames are not reassembled
//! before delivery.

mod lower;
mod table;
mod verdict;

#[cfg(test)]
mod tests;

pub use lower::LowerFilter;
pub use table::{
    DEFAULT_BC_CUTOFF, DEFAULT_BC_QUEUE_LEN, DEFAULT_MAX_FRAME, MAX_PORTS, MIN_MTU, Mode, ModeMask,
    ModeParseError, ParentConfig, Port, PortConfig, PortFlags, PortId, PortTable, SourceEntry,
    TableError, check_mtu,
};
pub use verdict::{Delivery, DropReason, Flood, Outcome, Rule, Verdict};

use crate::wire::frame::{ETH_HLEN, FrameMeta, VLAN_HLEN};

/// Where a frame entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ingress {
    /// Received on the parent (from the wire).
    Parent,
    /// Sent by a port (read from its TAP).
    Port(PortId),
}

/// Decides what happens to `frame` entering at `ingress`, exactly as the kernel would.
pub fn decide<'t>(table: &'t PortTable, ingress: Ingress, frame: &FrameMeta<'_>) -> Verdict<'t> {
    match ingress {
        Ingress::Parent => rx(table, frame),
        Ingress::Port(id) => tx(table, id, frame),
    }
}

/// Whether port `id` sends `frame` from a source MAC other than its pinned guest MAC (a VM port
/// without `trust_guest_mac`; libvirt's no-mac-spoofing). Such a frame is dropped as `mac_spoof`
/// before [`decide`] sees it; the kernel's macvtap has no such check, so `decide` stays the
/// kernel's rules alone.
pub fn spoofed(table: &PortTable, id: PortId, frame: &FrameMeta<'_>) -> bool {
    let p = table.port(id);
    p.config.pinned_mac && frame.src() != p.mac()
}

const NONE: &[crate::forward::PortId] = &[];

fn verdict(rule: Rule) -> Verdict<'static> {
    Verdict {
        copies: NONE,
        deliver: Delivery::Nobody,
        to_wire: false,
        to_host: false,
        reason: None,
        rule,
    }
}

/// `macvlan_handle_frame`: a frame received on the parent (§2).
fn rx<'t>(t: &'t PortTable, f: &FrameMeta<'_>) -> Verdict<'t> {
    // Steps 1.2 / 2.1: `macvlan_forward_source` runs first for every frame.
    let (copies, nodst) = match t.source_entry(f.src()) {
        Some(e) => (e.up_owners.as_slice(), e.nodst),
        None => (NONE, false),
    };
    let mut v = if nodst {
        Verdict {
            reason: Some(DropReason::NodstSource),
            ..verdict(Rule::RxNodst)
        }
    } else if f.dst().is_group() {
        rx_group(t, f)
    } else {
        rx_unicast(t, f)
    };
    v.copies = copies;
    v
}

/// Step 1: a group destination.
fn rx_group(t: &PortTable, f: &FrameMeta<'_>) -> Verdict<'static> {
    use table::Mode::*;
    let src = t.lookup_up(f.src());
    // Step 1.4: "forward to original port" for private, passthru and source senders.
    if let Some(s) = src.filter(|s| matches!(t.port(*s).mode(), Private | Passthru | Source)) {
        return Verdict {
            deliver: Delivery::One(s),
            ..verdict(Rule::RxGroupEcho)
        };
    }
    // `macvlan_multicast_rx`'s masks.
    let (rule, mask) = match src {
        None => (
            Rule::RxGroupExternal,
            ModeMask::of(&[Private, Vepa, Passthru, Bridge]),
        ),
        Some(s) if t.port(s).mode() == Vepa => {
            (Rule::RxGroupFromVepa, ModeMask::of(&[Vepa, Bridge]))
        }
        Some(_) => (Rule::RxGroupFromBridge, ModeMask::of(&[Vepa])),
    };
    let group = f.dst();
    // Step 1.5: queued if in bc_filter, else inline if in mc_filter, else no port.
    let queued = t.port_bc_filter(group);
    let reason = if !queued && !t.port_mc_filter(group) {
        Some(DropReason::MulticastNotJoined)
    } else if queued && t.bc_queue_len_used() == 0 {
        Some(DropReason::BcQueueFull)
    } else if f.is_pause() {
        Some(DropReason::PauseFrame)
    } else {
        None
    };
    let deliver = match reason {
        Some(_) => Delivery::Nobody,
        None => Delivery::Flood(Flood {
            group,
            mask,
            except: src,
            mtu_check_len: None,
            queued,
        }),
    };
    // Step 1.6: the parent's stack always gets it.
    Verdict {
        deliver,
        to_host: true,
        reason,
        ..verdict(rule)
    }
}

/// Step 2: a unicast destination.
fn rx_unicast(t: &PortTable, f: &FrameMeta<'_>) -> Verdict<'static> {
    let target = match t.passthru() {
        Some(pt) => Some(pt),
        None => t.lookup_up(f.dst()),
    };
    let Some(id) = target else {
        return Verdict {
            to_host: true,
            reason: Some(DropReason::UnknownDestination),
            ..verdict(Rule::RxUnicastUnknown)
        };
    };
    let port = t.port(id);
    if port.mode() == Mode::Source {
        Verdict {
            to_host: true,
            reason: Some(DropReason::SourcePortDestination),
            ..verdict(Rule::RxUnicastToSourcePort)
        }
    } else if !port.is_up() {
        // Only a passthru port can be found while down.
        Verdict {
            reason: Some(DropReason::PortDown),
            ..verdict(Rule::RxUnicastPassthruDown)
        }
    } else {
        let rule = match port.mode() {
            Mode::Passthru => Rule::RxUnicastPassthru,
            _ => Rule::RxUnicastToPort,
        };
        Verdict {
            deliver: Delivery::One(id),
            ..verdict(rule)
        }
    }
}

/// `macvlan_queue_xmit`: a frame sent by port `id` (§3).
fn tx<'t>(t: &'t PortTable, id: PortId, f: &FrameMeta<'_>) -> Verdict<'t> {
    let port = t.port(id);
    if !port.is_up() {
        return Verdict {
            reason: Some(DropReason::PortDown),
            ..verdict(Rule::TxPortDown)
        };
    }
    if port.mode() != Mode::Bridge {
        return Verdict {
            to_wire: true,
            ..verdict(Rule::TxNotBridge)
        };
    }
    let dst = f.dst();
    if dst.is_group() {
        let (deliver, reason) = if f.is_pause() {
            (Delivery::Nobody, Some(DropReason::PauseFrame))
        } else {
            let flood = Flood {
                group: dst,
                mask: ModeMask::of(&[Mode::Bridge]),
                except: Some(id),
                mtu_check_len: (!f.is_gso()).then(|| f.len()),
                queued: false,
            };
            (Delivery::Flood(flood), None)
        };
        return Verdict {
            deliver,
            to_wire: true,
            reason,
            ..verdict(Rule::TxBridgeGroup)
        };
    }
    match t.lookup_up(dst) {
        Some(d) if t.port(d).mode() == Mode::Bridge => {
            // `dev_forward_skb(lower)`: MTU-checked against the parent, then received on it.
            let max = t.parent().mtu as usize + ETH_HLEN + VLAN_HLEN;
            if !f.is_gso() && f.len() > max {
                return Verdict {
                    reason: Some(DropReason::Mtu),
                    ..verdict(Rule::TxBridgeUnicastMtu)
                };
            }
            let mut v = rx(t, f);
            if v.rule != Rule::RxNodst {
                v.rule = Rule::TxBridgeUnicastLocal;
            }
            v
        }
        _ => Verdict {
            to_wire: true,
            ..verdict(Rule::TxBridgeUnicastWire)
        },
    }
}
