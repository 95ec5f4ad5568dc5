//! Carrying out a verdict: one frame in, copies out to TAPs and the wire, every outcome counted.
//!
//! Generic over the ports' I/O ([`PortIo`]) so it runs in unit tests without root. Frames
//! from the parent are written to TAPs straight from ring memory, the virtio-net header that
//! precedes them included; a VLAN tag the ring reported out of band is put back inline with a
//! gathered write, and the header's checksum offsets moved past it.
//!
//! Frames a port sends to the wire are not sent here: [`from_port`] says so, and the worker
//! sends them in batches (`sendmmsg`) straight from the buffer they were read into, then counts
//! each outcome with [`wire_sent`].
//!
//! Accounting: for every frame that enters, each port that got a copy counts it in its `rx`,
//! the wire counts it in the parent's `tx`, and a frame that reached neither counts one drop
//! with its reason at its ingress (the parent, or the sending port). A copy that could not be
//! written counts a drop at the port it was for; a failed send to the wire, at the sender.

use std::io::{self, IoSlice};

use super::counters::{ParentCounters, PortCounters};
use smallvec::SmallVec;

use super::observe::{Observe, Seen};
use crate::forward::{DropReason, Ingress, PortId, PortTable, Rule, decide, spoofed};
use crate::wire::frame::{ETH_HLEN, FrameMeta, VLAN_HLEN, VlanTag};
use crate::wire::ring_format::RingFrame;
use crate::wire::vlan::Claim;
use crate::wire::vnet::{VNET_HDR_LEN, VnetHdr};

/// A port as the data path sees it: where its frames go, and its counters.
pub trait PortIo {
    /// Writes one frame (virtio-net header first) to the port's device (TAP, attached netdev or
    /// stream peer).
    fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize>;
    fn counters(&self) -> &PortCounters;
}

/// One frame as the parent's ring holds it.
#[derive(Clone, Copy, Debug)]
pub struct ParentFrame<'a> {
    /// The 10-byte virtio-net header followed by the frame, as captured.
    pub with_vnet: &'a [u8],
    /// The frame's full length (the capture may be shorter: truncated).
    pub wire_len: usize,
    /// The outermost tag, which the kernel moved out of the frame.
    pub vlan: Option<VlanTag>,
    /// When the kernel received it, in ns since the epoch (the ring's timestamp), if it says.
    pub time_ns: Option<u64>,
}

/// Checks a frame and its virtio-net header (both sides: ring and TAP) before any decision.
fn check_frame<'a>(
    hdr: &[u8],
    data: &'a [u8],
    vlan: Option<VlanTag>,
    max_frame: usize,
) -> Result<(VnetHdr, FrameMeta<'a>), DropReason> {
    let meta = FrameMeta::parse(data, vlan, max_frame).map_err(DropReason::from)?;
    let vnet = VnetHdr::parse(hdr)
        .filter(|v| v.is_valid_for(data.len()))
        .ok_or(DropReason::BadVnetHeader)?;
    Ok((vnet, meta.with_gso(vnet.is_gso())))
}

fn write_error(e: &io::Error) -> DropReason {
    match e.kind() {
        io::ErrorKind::WouldBlock => DropReason::TapQueueFull,
        // A stream port without a peer.
        io::ErrorKind::NotConnected => DropReason::NoPeer,
        _ => DropReason::TapWriteFailed,
    }
}

/// Per-port outcomes recorded for an observation (only when someone follows: see
/// [`Observe`]): who got a copy, whose write failed. Inline up to a few ports.
#[derive(Debug, Default)]
struct Record<'t> {
    receivers: SmallVec<[&'t str; 8]>,
    failed: SmallVec<[(&'t str, &'static str); 2]>,
}

/// Writes the frame to every receiver of the verdict (`write` does it for one port) and counts
/// it; records each outcome in `rec` when someone observes.
#[allow(clippy::too_many_arguments)]
fn deliver<'t, P: PortIo>(
    ports: &[P],
    table: &'t PortTable,
    receivers: impl FnOnce(&mut dyn FnMut(PortId)),
    mut write: impl FnMut(&P, PortId) -> io::Result<usize>,
    len: usize,
    group: bool,
    mut rec: Option<&mut Record<'t>>,
) -> usize {
    let mut delivered = 0;
    receivers(&mut |id: PortId| {
        let port = &ports[id.index()];
        let c = port.counters();
        match write(port, id) {
            Ok(_) => {
                c.rx.count(len);
                if group {
                    c.rx_multicast.add(1);
                }
                delivered += 1;
                if let Some(r) = rec.as_deref_mut() {
                    r.receivers.push(table.port(id).name());
                }
            }
            Err(e) => {
                c.drops.count(write_error(&e));
                if let Some(r) = rec.as_deref_mut() {
                    r.failed
                        .push((table.port(id).name(), write_error(&e).name()));
                }
            }
        }
    });
    delivered
}

/// A frame refused before any decision, observed (`time_ns` as in [`Seen`]).
fn refused(
    obs: Option<&Observe<'_>>,
    from: Option<&str>,
    time_ns: Option<u64>,
    data: &[u8],
    wire_len: usize,
    r: DropReason,
) {
    if let Some(o) = obs {
        o.emit(&Seen {
            from,
            time_ns,
            pieces: [data, &[], &[]],
            vlan: None,
            wire_len,
            receivers: &[],
            failed: &[],
            to_wire: false,
            reason: Some(r),
            rule: None,
        });
    }
}

/// A frame from the parent's ring.
pub fn from_parent<P: PortIo>(
    table: &PortTable,
    pc: &ParentCounters,
    ports: &[P],
    f: &ParentFrame<'_>,
) {
    from_parent_observed(table, pc, ports, f, None);
}

/// Every frame of one ring block that is the parent's (`claim`: an emulated 802.1Q
/// sub-interface takes its VID's frames untagged, the lower device the rest), in order, as the
/// worker forwards them (`obs` as in [`from_parent_observed`]). Another parent's frames are not
/// this one's: neither received nor dropped here.
pub fn from_parent_block<'a, P: PortIo>(
    table: &PortTable,
    pc: &ParentCounters,
    ports: &[P],
    frames: impl Iterator<Item = RingFrame<'a>>,
    claim: Claim<'_>,
    obs: Option<&Observe<'_>>,
) {
    for f in frames {
        let Some(vlan) = claim.take(f.vlan()) else {
            continue;
        };
        let pf = ParentFrame {
            with_vnet: f.with_vnet(),
            wire_len: f.wire_len(),
            vlan,
            time_ns: f.time_ns(),
        };
        from_parent_observed(table, pc, ports, &pf, obs);
    }
}

/// [`from_parent`], telling `obs` (when someone follows) what happened.
pub fn from_parent_observed<P: PortIo>(
    table: &PortTable,
    pc: &ParentCounters,
    ports: &[P],
    f: &ParentFrame<'_>,
    obs: Option<&Observe<'_>>,
) {
    pc.rx.count(f.wire_len);
    let Some((hdr, data)) = f.with_vnet.split_at_checked(VNET_HDR_LEN) else {
        pc.dropped(DropReason::Runt);
        refused(obs, None, f.time_ns, &[], f.wire_len, DropReason::Runt);
        return;
    };
    if data.len() < f.wire_len {
        pc.dropped(DropReason::Truncated);
        refused(
            obs,
            None,
            f.time_ns,
            data,
            f.wire_len,
            DropReason::Truncated,
        );
        return;
    }
    let checked = check_frame(hdr, data, f.vlan, table.parent().max_frame);
    let (vnet, meta) = match checked {
        Ok(ok) => ok,
        Err(r) => {
            pc.dropped(r);
            refused(obs, None, f.time_ns, data, f.wire_len, r);
            return;
        }
    };
    let v = decide(table, Ingress::Parent, &meta);
    let tagged_hdr = f.vlan.map(|_| vnet.with_vlan_inserted().to_bytes());
    let tag = f.vlan.map(VlanTag::to_bytes);
    // Header, destination, source and the tag's place, tag, the rest: a tag goes back inline,
    // and a copy the kernel gives pkt_type HOST carries its port's MAC as destination
    // ([`Verdict::host_dst`]: passthru's foreign unicast, a source copy to the parent's MAC).
    let pieces: [&[u8]; 5] = [
        tagged_hdr.as_ref().map_or(hdr, |h| h.as_slice()),
        &data[..6],
        &data[6..ETH_HLEN - 2],
        tag.as_ref().map_or(&[][..], |t| t.as_slice()),
        &data[ETH_HLEN - 2..],
    ];
    let group = meta.dst().is_group();
    let may_rewrite = !group && (v.rule == Rule::RxUnicastPassthru || !v.copies.is_empty());
    let write = |port: &P, id: PortId| {
        let dst = may_rewrite
            .then(|| v.host_dst(table, meta.dst(), id))
            .flatten()
            .map(|m| m.0);
        if tag.is_none() && dst.is_none() {
            // The common case: straight from ring memory, header and frame in one piece.
            return port.write_frame(&[IoSlice::new(f.with_vnet)]);
        }
        let mut parts = pieces.map(IoSlice::new);
        if let Some(d) = &dst {
            parts[1] = IoSlice::new(d);
        }
        port.write_frame(&parts)
    };
    let mut rec = obs.map(|_| Record::default());
    let n = deliver(
        ports,
        table,
        |f| v.for_each_receiver(table, f),
        write,
        meta.len(),
        group,
        rec.as_mut(),
    );
    let reason = (n == 0).then(|| v.reason.unwrap_or(DropReason::NoReceiver));
    match reason {
        Some(r) => pc.dropped(r),
        None => pc.rx_forwarded.add(1),
    }
    if let (Some(o), Some(rec)) = (obs, rec) {
        let (head, tail) = data.split_at(ETH_HLEN - 2);
        o.emit(&Seen {
            from: None,
            time_ns: f.time_ns,
            pieces: [head, tag.as_ref().map_or(&[][..], |t| t.as_slice()), tail],
            vlan: meta.outer_vlan().map(|t| t.vid()),
            wire_len: meta.len(),
            receivers: &rec.receivers,
            failed: &rec.failed,
            to_wire: false,
            reason,
            rule: Some(v.rule),
        });
    }
}

/// A frame port `id` sent that its device refused before it was whole (a stream peer's bad
/// length, or a frame cut short by its disconnect): `len` bytes were read; counted as sent and
/// dropped with `reason`.
pub fn port_refused<P: PortIo>(
    table: &PortTable,
    ports: &[P],
    id: PortId,
    len: usize,
    reason: DropReason,
    obs: Option<&Observe<'_>>,
) {
    let c = ports[id.index()].counters();
    c.tx.count(len);
    c.dropped(reason);
    refused(obs, Some(table.port(id).name()), None, &[], len, reason);
}

/// Whether a port's frame must also be sent on the parent, and what the send decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToWire {
    No,
    /// The frame already reached a port; the wire gets a copy.
    Copy,
    /// The wire is the frame's only destination: the send decides whether it was forwarded.
    Only,
}

/// A frame read from port `id`'s TAP: `buf` is the virtio-net header followed by the frame.
/// Delivers it to the ports that get it and says whether it must also go to the wire, which the
/// caller does (and reports with [`wire_sent`]).
#[must_use = "a frame for the wire must be sent and counted with wire_sent"]
pub fn from_port<P: PortIo>(table: &PortTable, ports: &[P], id: PortId, buf: &[u8]) -> ToWire {
    from_port_observed(table, ports, id, buf, None)
}

/// [`from_port`], telling `obs` (when someone follows) what happened. `to_wire` in the
/// observation means "queued for the wire"; a send that then fails is counted (as
/// `wire_send_failed`) but not observed.
#[must_use = "a frame for the wire must be sent and counted with wire_sent"]
pub fn from_port_observed<P: PortIo>(
    table: &PortTable,
    ports: &[P],
    id: PortId,
    buf: &[u8],
    obs: Option<&Observe<'_>>,
) -> ToWire {
    let c = ports[id.index()].counters();
    let name = || Some(table.port(id).name());
    let Some((hdr, data)) = buf.split_at_checked(VNET_HDR_LEN) else {
        c.tx.count(buf.len());
        c.dropped(DropReason::Runt);
        refused(obs, name(), None, &[], buf.len(), DropReason::Runt);
        return ToWire::No;
    };
    c.tx.count(data.len());
    // A port's non-GSO frame cannot be longer than the parent's MTU allows (the kernel bounds a
    // macvlan child's MTU by its lower's; a TAP's MTU can be raised past it in its namespace).
    let parent = table.parent();
    let port_max = parent.mtu as usize + ETH_HLEN + VLAN_HLEN;
    let checked = check_frame(hdr, data, None, parent.max_frame).and_then(|(vnet, meta)| {
        if !vnet.is_gso() && meta.len() > port_max {
            Err(DropReason::Oversize)
        } else {
            Ok((vnet, meta))
        }
    });
    let meta = match checked {
        Ok((_, meta)) => meta,
        Err(r) => {
            c.dropped(r);
            refused(obs, name(), None, data, data.len(), r);
            return ToWire::No;
        }
    };
    if spoofed(table, id, &meta) {
        c.dropped(DropReason::MacSpoof);
        refused(obs, name(), None, data, data.len(), DropReason::MacSpoof);
        return ToWire::No;
    }
    let v = decide(table, Ingress::Port(id), &meta);
    let iov = [IoSlice::new(buf)];
    let group = meta.dst().is_group();
    let mut rec = obs.map(|_| Record::default());
    let n = deliver(
        ports,
        table,
        |f| v.for_each_receiver(table, f),
        |port: &P, _| port.write_frame(&iov),
        meta.len(),
        group,
        rec.as_mut(),
    );
    let reason = (n == 0 && !v.to_wire).then(|| v.reason.unwrap_or(DropReason::NoReceiver));
    if let Some(r) = reason {
        c.dropped(r);
    }
    if let (Some(o), Some(rec)) = (obs, rec) {
        o.emit(&Seen {
            from: name(),
            time_ns: None,
            pieces: [data, &[], &[]],
            vlan: meta.outer_vlan().map(|t| t.vid()),
            wire_len: meta.len(),
            receivers: &rec.receivers,
            failed: &rec.failed,
            to_wire: v.to_wire,
            reason,
            rule: Some(v.rule),
        });
    }
    match (n, v.to_wire) {
        (0, false) => ToWire::No,
        (0, true) => ToWire::Only,
        (_, to_wire) => {
            c.tx_forwarded.add(1);
            if to_wire { ToWire::Copy } else { ToWire::No }
        }
    }
}

/// Counts the outcome of sending on the parent a frame of `len` bytes (vnet header included)
/// that the port with counters `sender` sent. A failed copy counts at the parent; when the wire
/// was the frame's only destination, the send also decides the frame's fate at the sender.
pub fn wire_sent(
    parent: &ParentCounters,
    sender: &PortCounters,
    len: usize,
    how: ToWire,
    sent: bool,
) {
    if sent {
        parent.tx.count(len.saturating_sub(VNET_HDR_LEN));
        if how == ToWire::Only {
            sender.tx_forwarded.add(1);
        }
    } else {
        parent.drops.count(DropReason::WireSendFailed);
        if how == ToWire::Only {
            sender.dropped(DropReason::WireSendFailed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::forward::{Mode, ParentConfig, PortConfig};
    use crate::wire::mac::MacAddr;

    #[derive(Default)]
    struct Fake {
        got: RefCell<Vec<Vec<u8>>>,
        fail: bool,
        counters: PortCounters,
    }

    impl PortIo for Fake {
        fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.fail {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let v: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
            let n = v.len();
            self.got.borrow_mut().push(v);
            Ok(n)
        }

        fn counters(&self) -> &PortCounters {
            &self.counters
        }
    }

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    fn setup(modes: &[Mode]) -> (PortTable, ParentCounters, Vec<Fake>) {
        let parent = ParentConfig::new("p0", mac(100), 1500);
        let ports = modes
            .iter()
            .enumerate()
            .map(|(i, m)| PortConfig::new(format!("c{i}"), *m, mac(u8::try_from(i).unwrap())))
            .collect();
        let t = PortTable::build(parent, ports).unwrap();
        let n = modes.len();
        let ports = (0..n).map(|_| Fake::default()).collect();
        (t, ParentCounters::default(), ports)
    }

    /// A frame from the ring, whole and untagged: `b` is the vnet header and the frame.
    fn pf(b: &[u8]) -> ParentFrame<'_> {
        ParentFrame {
            with_vnet: b,
            wire_len: b.len() - VNET_HDR_LEN,
            vlan: None,
            time_ns: None,
        }
    }

    fn with_vnet(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; VNET_HDR_LEN + len];
        b[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&dst.0);
        b[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12].copy_from_slice(&src.0);
        b[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x88, 0xb5]);
        b
    }

    #[test]
    fn wire_unicast_goes_to_its_port_from_ring_memory() {
        let (t, c, ports) = setup(&[Mode::Bridge, Mode::Vepa]);
        let b = with_vnet(mac(1), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&b));
        assert_eq!(ports[1].got.borrow().as_slice(), std::slice::from_ref(&b));
        assert!(ports[0].got.borrow().is_empty());
        assert_eq!(ports[1].counters.rx.packets.get(), 1);
        assert_eq!(ports[1].counters.rx.bytes.get(), 60);
        assert_eq!(c.rx.packets.get(), 1);
        assert_eq!(c.drops.total(), 0);
    }

    #[test]
    fn out_of_band_tag_is_put_back_inline() {
        let (t, c, ports) = setup(&[Mode::Bridge]);
        let mut b = with_vnet(mac(0), mac(9), 60);
        // NEEDS_CSUM with csum_start 34: the tag moves it to 38.
        b[0] = 1;
        b[6..8].copy_from_slice(&34u16.to_le_bytes());
        let vlan = Some(VlanTag::dot1q(100));
        from_parent(&t, &c, &ports, &ParentFrame { vlan, ..pf(&b) });
        let got = ports[0].got.borrow()[0].clone();
        assert_eq!(got.len(), b.len() + 4);
        assert_eq!(
            &got[VNET_HDR_LEN + 12..VNET_HDR_LEN + 16],
            &[0x81, 0x00, 0x00, 0x64]
        );
        assert_eq!(&got[VNET_HDR_LEN + 16..VNET_HDR_LEN + 18], &[0x88, 0xb5]);
        assert_eq!(u16::from_le_bytes([got[6], got[7]]), 38);
        assert_eq!(ports[0].counters.rx.bytes.get(), 64);
    }

    #[test]
    fn passthru_foreign_unicast_is_rewritten_to_the_ports_mac() {
        let (t, c, ports) = setup(&[Mode::Passthru]);
        let b = with_vnet(mac(50), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&b));
        let got = ports[0].got.borrow()[0].clone();
        assert_eq!(
            &got[VNET_HDR_LEN..VNET_HDR_LEN + 6],
            &mac(100).0,
            "the parent's MAC"
        );
        assert_eq!(
            &got[VNET_HDR_LEN + 6..],
            &b[VNET_HDR_LEN + 6..],
            "the rest unchanged"
        );
        assert_eq!(ports[0].counters.rx.packets.get(), 1);
    }

    #[test]
    fn passthru_unicast_to_the_parents_mac_is_untouched() {
        let (t, c, ports) = setup(&[Mode::Passthru]);
        let b = with_vnet(mac(100), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&b));
        assert_eq!(ports[0].got.borrow().as_slice(), std::slice::from_ref(&b));
    }

    /// Two source ports listing the same remote, one of them also a tagged frame's receiver:
    /// each copy of a frame to the parent's MAC carries its own port's MAC (§7: the kernel's
    /// copy is HOST); to any other destination it is untouched.
    #[test]
    fn source_copies_to_the_parents_mac_carry_each_ports_mac() {
        let parent = ParentConfig::new("p0", mac(100), 1500);
        let ports: Vec<PortConfig> = (0..2)
            .map(|i| {
                let mut p = PortConfig::new(format!("s{i}"), Mode::Source, mac(i));
                p.sources.insert(mac(9));
                p
            })
            .collect();
        let t = PortTable::build(parent, ports).unwrap();
        let (c, ports) = (
            ParentCounters::default(),
            [Fake::default(), Fake::default()],
        );
        let to_parent = with_vnet(mac(100), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&to_parent));
        let vlan = Some(VlanTag::dot1q(5));
        from_parent(
            &t,
            &c,
            &ports,
            &ParentFrame {
                vlan,
                ..pf(&to_parent)
            },
        );
        let foreign = with_vnet(mac(50), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&foreign));
        for (i, p) in ports.iter().enumerate() {
            let got = p.got.borrow();
            assert_eq!(got.len(), 3, "s{i}");
            assert_eq!(
                &got[0][VNET_HDR_LEN..VNET_HDR_LEN + 6],
                &mac(u8::try_from(i).unwrap()).0
            );
            assert_eq!(&got[0][VNET_HDR_LEN + 6..], &to_parent[VNET_HDR_LEN + 6..]);
            assert_eq!(
                &got[1][VNET_HDR_LEN..VNET_HDR_LEN + 6],
                &mac(u8::try_from(i).unwrap()).0
            );
            assert_eq!(
                &got[1][VNET_HDR_LEN + 12..VNET_HDR_LEN + 16],
                &[0x81, 0, 0, 5]
            );
            assert_eq!(
                got[2], foreign,
                "a foreign destination stays (OTHERHOST, as the kernel)"
            );
        }
    }

    #[test]
    fn unknown_unicast_runt_and_truncated_are_counted_drops() {
        let (t, c, ports) = setup(&[Mode::Bridge]);
        let b = with_vnet(mac(50), mac(9), 60);
        from_parent(&t, &c, &ports, &pf(&b));
        let runt = vec![0u8; VNET_HDR_LEN + 10];
        from_parent(&t, &c, &ports, &pf(&runt));
        // The ring holds fewer bytes than the frame had.
        let cut = ParentFrame {
            wire_len: 9000,
            ..pf(&b)
        };
        from_parent(&t, &c, &ports, &cut);
        let d = &c.drops;
        assert_eq!(d.get(DropReason::UnknownDestination), 1);
        assert_eq!(d.get(DropReason::Runt), 1);
        assert_eq!(d.get(DropReason::Truncated), 1);
        assert_eq!(c.rx.packets.get(), 3);
        assert!(ports[0].got.borrow().is_empty());
    }

    #[test]
    fn hostile_frames_are_counted_drops_from_both_sides() {
        let (t, c, ports) = setup(&[Mode::Bridge, Mode::Bridge]);
        let mut bad_vnet = with_vnet(mac(1), mac(9), 60);
        bad_vnet[1] = 0x7f; // no such GSO type
        let mut cut_tag = with_vnet(mac(1), mac(9), 16);
        cut_tag[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x81, 0x00]);
        let mut vid4095 = with_vnet(mac(1), mac(9), 64);
        vid4095[VNET_HDR_LEN + 12..VNET_HDR_LEN + 16].copy_from_slice(&[0x81, 0x00, 0x0f, 0xff]);
        for b in [&bad_vnet, &cut_tag, &vid4095] {
            from_parent(&t, &c, &ports, &pf(b));
            assert_eq!(from_port(&t, &ports, PortId(0), b), ToWire::No);
        }
        let reserved = Some(VlanTag::dot1q(0x0fff));
        let plain = with_vnet(mac(1), mac(9), 60);
        from_parent(
            &t,
            &c,
            &ports,
            &ParentFrame {
                vlan: reserved,
                ..pf(&plain)
            },
        );
        // Longer than the parent's MTU (1500) + 18 from a port: oversize, unless it is GSO.
        let long = with_vnet(mac(1), mac(0), 1519);
        assert_eq!(from_port(&t, &ports, PortId(0), &long), ToWire::No);
        let mut gso = long.clone();
        gso[1] = crate::wire::vnet::GSO_TCPV4;
        gso[4..6].copy_from_slice(&1448u16.to_ne_bytes());
        assert_eq!(from_port(&t, &ports, PortId(0), &gso), ToWire::No);
        assert_eq!(
            ports[1].got.borrow().len(),
            1,
            "only the GSO frame reached c1"
        );
        let (p, s) = (&c.drops, &ports[0].counters.drops);
        assert_eq!(p.get(DropReason::BadVnetHeader), 1);
        assert_eq!(p.get(DropReason::BadVlan), 3);
        assert_eq!(s.get(DropReason::BadVnetHeader), 1);
        assert_eq!(s.get(DropReason::BadVlan), 2);
        assert_eq!(s.get(DropReason::Oversize), 1);
        assert_eq!(ports[0].counters.tx.packets.get(), 5);
    }

    #[test]
    fn bridge_broadcast_goes_to_siblings_and_wire() {
        let (t, c, ports) = setup(&[Mode::Bridge, Mode::Bridge, Mode::Vepa]);
        let b = with_vnet(MacAddr::BROADCAST, mac(0), 60);
        assert_eq!(
            from_port(&t, &ports, PortId(0), &b),
            ToWire::Copy,
            "also for the wire"
        );
        assert_eq!(ports[1].got.borrow().len(), 1);
        assert!(ports[0].got.borrow().is_empty() && ports[2].got.borrow().is_empty());
        assert_eq!(ports[0].counters.tx.packets.get(), 1);
        assert_eq!(ports[1].counters.rx_multicast.get(), 1);
        wire_sent(&c, &ports[0].counters, b.len(), ToWire::Copy, true);
        assert_eq!(c.tx.packets.get(), 1);
        assert_eq!(c.tx.bytes.get(), 60);
    }

    #[test]
    fn failed_writes_and_sends_are_counted_where_they_happen() {
        let (t, c, mut ports) = setup(&[Mode::Bridge, Mode::Bridge, Mode::Bridge]);
        ports[1].fail = true;
        let b = with_vnet(MacAddr::BROADCAST, mac(0), 60);
        assert_eq!(from_port(&t, &ports, PortId(0), &b), ToWire::Copy);
        wire_sent(&c, &ports[0].counters, b.len(), ToWire::Copy, false);
        // Copies lost: at the port they were for, and at the parent for the wire.
        assert_eq!(ports[1].counters.drops.get(DropReason::TapWriteFailed), 1);
        assert_eq!(c.drops.get(DropReason::WireSendFailed), 1);
        assert_eq!(c.tx.packets.get(), 0);
        // The frame itself reached c2: forwarded, not dropped.
        let s = &ports[0].counters;
        assert_eq!((s.tx_forwarded.get(), s.tx_dropped_frames.get()), (1, 0));
    }

    #[test]
    fn a_wire_only_frame_is_decided_by_the_send() {
        let (t, c, ports) = setup(&[Mode::Vepa]);
        let b = with_vnet(mac(50), mac(0), 60);
        assert_eq!(from_port(&t, &ports, PortId(0), &b), ToWire::Only);
        wire_sent(&c, &ports[0].counters, b.len(), ToWire::Only, false);
        assert_eq!(from_port(&t, &ports, PortId(0), &b), ToWire::Only);
        wire_sent(&c, &ports[0].counters, b.len(), ToWire::Only, true);
        let s = &ports[0].counters;
        assert_eq!(
            (
                s.tx.packets.get(),
                s.tx_forwarded.get(),
                s.tx_dropped_frames.get()
            ),
            (2, 1, 1)
        );
        assert_eq!(s.drops.get(DropReason::WireSendFailed), 1);
    }

    #[test]
    fn every_frame_from_the_wire_is_forwarded_or_dropped_exactly_once() {
        let (t, c, mut ports) = setup(&[Mode::Bridge, Mode::Vepa]);
        ports[1].fail = true;
        let frames = [
            with_vnet(mac(0), mac(9), 60),
            with_vnet(mac(1), mac(9), 60),
            with_vnet(mac(77), mac(9), 60),
            with_vnet(MacAddr::BROADCAST, mac(9), 60),
            vec![0u8; VNET_HDR_LEN + 5],
        ];
        for b in &frames {
            from_parent(&t, &c, &ports, &pf(b));
        }
        assert_eq!(c.rx.packets.get(), 5);
        assert_eq!(c.rx_forwarded.get() + c.rx_dropped_frames.get(), 5);
        // c0's unicast and the broadcast (c0 got it) were forwarded; c1's unicast failed its only
        // write; unknown and runt went nowhere.
        assert_eq!(c.rx_forwarded.get(), 2);
        assert_eq!(c.drops.total(), c.rx_dropped_frames.get());
    }

    #[test]
    fn a_spoofed_source_from_a_pinned_port_is_dropped_before_deciding() {
        let parent = ParentConfig::new("p0", mac(100), 1500);
        let mut vm = PortConfig::new("vm", Mode::Bridge, mac(0));
        vm.pinned_mac = true;
        let t = PortTable::build(
            parent,
            vec![vm, PortConfig::new("c1", Mode::Bridge, mac(1))],
        )
        .unwrap();
        let ports = [Fake::default(), Fake::default()];
        let spoofed = with_vnet(mac(1), mac(7), 60);
        assert_eq!(from_port(&t, &ports, PortId(0), &spoofed), ToWire::No);
        assert!(ports[1].got.borrow().is_empty(), "not delivered");
        assert_eq!(ports[0].counters.drops.get(DropReason::MacSpoof), 1);
        let own = with_vnet(mac(1), mac(0), 60);
        assert_eq!(from_port(&t, &ports, PortId(0), &own), ToWire::No);
        assert_eq!(ports[1].got.borrow().len(), 1, "its own MAC goes through");
        let s = &ports[0].counters;
        assert_eq!(
            (
                s.tx.packets.get(),
                s.tx_forwarded.get(),
                s.tx_dropped_frames.get()
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn a_copy_for_a_peerless_stream_port_is_a_no_peer_drop() {
        let e = io::Error::from(io::ErrorKind::NotConnected);
        assert_eq!(write_error(&e), DropReason::NoPeer);
        let c = PortCounters::default();
        c.drops.count(write_error(&e));
        assert_eq!((c.rx_dropped(), c.tx_dropped()), (1, 0));
    }

    #[test]
    fn a_down_port_sending_is_a_counted_drop() {
        let parent = ParentConfig::new("p0", mac(100), 1500);
        let mut p = PortConfig::new("c0", Mode::Vepa, mac(0));
        p.up = false;
        let t = PortTable::build(parent, vec![p]).unwrap();
        let ports = [Fake::default()];
        let sent = from_port(&t, &ports, PortId(0), &with_vnet(mac(5), mac(0), 60));
        assert_eq!(
            sent,
            ToWire::No,
            "a down port's frame never reaches the wire"
        );
        assert_eq!(ports[0].counters.drops.get(DropReason::PortDown), 1);
    }

    mod observed {
        use super::*;
        use crate::engine::observe::{Filter, ObserverCache, Observers, received};

        fn frame(dst: MacAddr) -> Vec<u8> {
            with_vnet(dst, mac(9), 60)
        }

        #[test]
        fn the_follower_sees_exactly_the_frames_with_their_outcomes() {
            let (t, c, mut ports) = setup(&[Mode::Bridge, Mode::Bridge]);
            ports[1].fail = true;
            let o = Observers::default();
            let (sink, rx) = o.register(Filter::All, 64, 16);
            let mut cache = ObserverCache::default();
            let known = frame(mac(0));
            let obs = o.batch(&mut cache, "p0");
            from_parent_observed(&t, &c, &ports, &pf(&known), obs.as_ref());
            from_parent_observed(&t, &c, &ports, &pf(&frame(mac(50))), obs.as_ref());
            let bcast = with_vnet(MacAddr::BROADCAST, mac(0), 60);
            let how = from_port_observed(&t, &ports, PortId(0), &bcast, obs.as_ref());
            assert_eq!(how, ToWire::Only, "c1 refused its copy: the wire decides");
            drop(obs);
            cache.flush();
            let got = received(&rx);
            assert_eq!(got.len(), 3);
            let (f, bytes) = &got[0];
            assert_eq!(f.from, "parent");
            assert_eq!(f.parent, "p0");
            assert_eq!(f.receivers, ["c0"]);
            assert_eq!(f.reason, None);
            assert_eq!(f.rule.as_deref(), Some(Rule::RxUnicastToPort.name()));
            assert_eq!(bytes[..], known[VNET_HDR_LEN..]);
            assert_eq!(f.dst, Some(mac(0)));
            assert!(got[1].0.receivers.is_empty());
            assert_eq!(
                got[1].0.reason.as_deref(),
                Some(DropReason::UnknownDestination.name())
            );
            let f = &got[2].0;
            assert_eq!(f.from, "c0");
            assert!(f.to_wire && f.receivers.is_empty());
            assert_eq!(f.failed.len(), 1);
            assert_eq!(
                (f.failed[0].port.as_str(), f.failed[0].reason.as_str()),
                ("c1", DropReason::TapWriteFailed.name())
            );
            assert_eq!(sink.lost.load(std::sync::atomic::Ordering::Relaxed), 0);
            // Counting is unchanged by observing.
            assert_eq!(c.drops.get(DropReason::UnknownDestination), 1);
            assert_eq!(ports[0].counters.rx.packets.get(), 1);
        }

        #[test]
        fn an_out_of_band_tag_is_inline_in_the_observed_bytes() {
            let (t, c, ports) = setup(&[Mode::Bridge]);
            let o = Observers::default();
            let (_s, rx) = o.register(Filter::Port("c0".into()), 1000, 4);
            let mut cache = ObserverCache::default();
            let b = frame(mac(0));
            let f = ParentFrame {
                vlan: Some(VlanTag::dot1q(7)),
                time_ns: Some(1_800_000_000_000_000_007),
                ..pf(&b)
            };
            let obs = o.batch(&mut cache, "p0");
            from_parent_observed(&t, &c, &ports, &f, obs.as_ref());
            drop(obs);
            cache.flush();
            let got = received(&rx);
            let (f, bytes) = &got[0];
            assert_eq!(f.time_ns, 1_800_000_000_000_000_007, "the ring's timestamp");
            assert_eq!(f.vlan, Some(7));
            assert_eq!(f.len, 64);
            assert_eq!(&bytes[12..16], &[0x81, 0x00, 0x00, 0x07]);
            assert_eq!(bytes.len(), 64);
        }

        #[test]
        fn drops_only_and_refused_frames() {
            let (t, c, ports) = setup(&[Mode::Bridge]);
            let o = Observers::default();
            let (_s, rx) = o.register(Filter::Drops, 0, 8);
            let mut cache = ObserverCache::default();
            let obs = o.batch(&mut cache, "p0");
            from_parent_observed(&t, &c, &ports, &pf(&frame(mac(0))), obs.as_ref());
            from_parent_observed(&t, &c, &ports, &pf(&frame(mac(50))), obs.as_ref());
            let runt = vec![0u8; VNET_HDR_LEN + 10];
            from_parent_observed(&t, &c, &ports, &pf(&runt), obs.as_ref());
            drop(obs);
            cache.flush();
            let got = received(&rx);
            assert_eq!(got.len(), 2, "the delivered frame is not a drop");
            let reason = |i: usize| got[i].0.reason.clone();
            assert_eq!(reason(0).as_deref(), Some("unknown_destination"));
            assert_eq!(reason(1).as_deref(), Some("runt"));
            assert_eq!(got[1].0.rule, None);
            assert!(got[1].1.is_empty(), "snaplen 0: no bytes");
        }

        #[test]
        fn nobody_listening_emits_nothing() {
            let (t, c, ports) = setup(&[Mode::Bridge]);
            let o = Observers::default();
            let (s, rx) = o.register(Filter::All, 0, 8);
            o.unregister(s.id);
            let mut cache = ObserverCache::default();
            assert!(o.batch(&mut cache, "p0").is_none());
            from_parent(&t, &c, &ports, &pf(&frame(mac(0))));
            assert!(rx.try_recv().is_err());
            assert_eq!(ports[0].counters.rx.packets.get(), 1);
        }
    }
}
