//! The TPACKET ring's formats, parsed: the frames of a TPACKET_V3 block or a TPACKET_V2 slot.
//!
//! The kernel lays out what it hands over in a ring (`include/uapi/linux/if_packet.h`):
//!
//! * a **V3 block** starts with a `struct tpacket_block_desc` (`block_status`, `num_pkts`,
//!   `offset_to_first_pkt`, `seq_num`), then a chain of frames, each a `struct tpacket3_hdr`
//!   (`tp_next_offset` to the next, 0 for the last), a `struct sockaddr_ll`, the 10-byte
//!   `virtio_net_hdr` and the frame from its MAC header (`tp_mac`), `tp_snaplen` bytes of it;
//! * a **V2 slot** holds one frame the same way behind a `struct tpacket2_hdr`.
//!
//! This module reads those bytes and nothing else: [`Frames`] walks a unit and yields
//! [`RingFrame`]s, each a view of one frame and its metadata. The socket, the shared mapping and
//! the ownership protocol of a block are [`sys::ring`](crate::sys::ring)'s: it hands this module
//! the bytes of a block it owns, without the status word the kernel may still touch.
//! [`frames_in`] walks a block in ordinary memory the same way, and `fake_v3_block` (the test kit:
//! `cargo test` or the `testkit` feature) builds one (benchmarks and tests run everything
//! downstream of the ring with them, without a socket).
//!
//! The kernel's offsets inside a block (`offset_to_first_pkt`, `tp_next_offset`, `tp_mac`,
//! `tp_snaplen`) are never trusted: each is bounds-checked against the block, and a bad one ends
//! the iteration instead of reading outside it. The offsets of the C structures are written out
//! here and checked against `libc`'s layouts in the tests.

use crate::wire::frame::{ETH_P_8021Q, VlanTag};
use crate::wire::vnet::{VNET_HDR_LEN, VnetHdr};

/// `sizeof(struct tpacket_block_desc)`; also the kernel's `offset_to_first_pkt` when
/// `tp_sizeof_priv` is 0. Frames never start before it.
const BLOCK_DESC_LEN: usize = 48;
/// Offset of `hdr.bh1.block_status` in `struct tpacket_block_desc`.
pub(crate) const BLOCK_STATUS_OFF: usize = 8;
/// Offsets in `struct tpacket_block_desc` (`hdr.bh1.*`).
pub(crate) const NUM_PKTS_OFF: usize = 12;
const FIRST_PKT_OFF: usize = 16;
const SEQ_NUM_OFF: usize = 24;

/// `sizeof(struct tpacket3_hdr)`.
const TPACKET3_HDR_LEN: usize = 48;
/// Offsets in `struct tpacket3_hdr`.
const TP_NEXT_OFFSET_OFF: usize = 0;
const TP_SEC_OFF: usize = 4;
const TP_NSEC_OFF: usize = 8;
const TP_SNAPLEN_OFF: usize = 12;
const TP_LEN_OFF: usize = 16;
const TP_STATUS_OFF: usize = 20;
const TP_MAC_OFF: usize = 24;
const TP_RXHASH_OFF: usize = 28;
const TP_VLAN_TCI_OFF: usize = 32;
const TP_VLAN_TPID_OFF: usize = 36;
/// The kernel puts a `struct sockaddr_ll` at `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`.
const SLL_OFF: usize = TPACKET3_HDR_LEN;
/// `sll_pkttype` within `struct sockaddr_ll`.
const SLL_PKTTYPE_OFF: usize = 10;
/// `sizeof(struct sockaddr_ll)`.
const SLL_LEN: usize = 20;
/// `tp_mac` can be no smaller: frame header, address, vnet header, then the MAC header.
pub(crate) const MIN_TP_MAC: usize = SLL_OFF + SLL_LEN + VNET_HDR_LEN;

/// `sizeof(struct tpacket2_hdr)` (TPACKET2_HDRLEN without the address), already aligned.
const TPACKET2_HDR_LEN: usize = 32;
/// Offsets in `struct tpacket2_hdr`.
pub(crate) const TP2_STATUS_OFF: usize = 0;
const TP2_LEN_OFF: usize = 4;
const TP2_SNAPLEN_OFF: usize = 8;
const TP2_MAC_OFF: usize = 12;
const TP2_SEC_OFF: usize = 16;
const TP2_NSEC_OFF: usize = 20;
const TP2_VLAN_TCI_OFF: usize = 24;
const TP2_VLAN_TPID_OFF: usize = 26;
/// `tp_mac` in a V2 slot can be no smaller than this.
pub(crate) const MIN_TP2_MAC: usize = TPACKET2_HDR_LEN + SLL_LEN + VNET_HDR_LEN;

/// The outermost VLAN tag a packet socket reports out of band (`tp_status`, `tp_vlan_tci`,
/// `tp_vlan_tpid` of a ring slot or of `PACKET_AUXDATA`): the kernel removed it from the bytes.
/// The TPID is 0x8100 when the kernel did not report one (`TP_STATUS_VLAN_TPID_VALID` unset).
pub(crate) fn vlan_of(status: u32, tci: u16, tpid: u16) -> Option<VlanTag> {
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return None;
    }
    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
        tpid
    } else {
        ETH_P_8021Q
    };
    Some(VlanTag { tpid, tci })
}

/// The frames of a TPACKET_V3 block held in ordinary memory (a copy of a ring block, or
/// `fake_v3_block`'s): the same checked walk as
/// [`Block::frames`](crate::sys::ring::Block::frames).
pub fn frames_in(block: &[u8]) -> Frames<'_> {
    let skip = BLOCK_STATUS_OFF + 4;
    Frames::v3(BlockView::new(block.get(skip..).unwrap_or_default(), skip))
}

/// Checked little reader over a user-owned block, indexed by offsets from the block start.
///
/// The unit (a V3 block or a V2 slot) from `skip` on: the ring leaves out the status word, the
/// one word the kernel may still write while user space reads the rest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockView<'b> {
    /// The block from `skip` on (after its status word).
    bytes: &'b [u8],
    skip: usize,
}

impl<'b> BlockView<'b> {
    /// `bytes` is the unit from block offset `skip` on.
    pub(crate) fn new(bytes: &'b [u8], skip: usize) -> Self {
        BlockView { bytes, skip }
    }

    /// A V3 block's `num_pkts`: how many frames the kernel says it holds (0 if unreadable).
    pub(crate) fn num_pkts(&self) -> u32 {
        self.u32_at(NUM_PKTS_OFF).unwrap_or(0)
    }

    /// A V3 block's `seq_num` (0 if unreadable).
    pub(crate) fn seq_num(&self) -> u64 {
        self.u64_at(SEQ_NUM_OFF).unwrap_or(0)
    }

    fn range(&self, block_off: usize, len: usize) -> Option<&'b [u8]> {
        let start = block_off.checked_sub(self.skip)?;
        self.bytes.get(start..start.checked_add(len)?)
    }

    fn u16_at(&self, off: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(self.range(off, 2)?.try_into().ok()?))
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(self.range(off, 4)?.try_into().ok()?))
    }

    fn u64_at(&self, off: usize) -> Option<u64> {
        Some(u64::from_ne_bytes(self.range(off, 8)?.try_into().ok()?))
    }
}

/// Iterator over the frames of a [`Block`](crate::sys::ring::Block), or of a block in ordinary
/// memory ([`frames_in`]).
#[derive(Debug)]
pub struct Frames<'b> {
    view: BlockView<'b>,
    /// Block offset of the next `tpacket3_hdr` (V2: 0, the slot's `tpacket2_hdr`).
    next: usize,
    remaining: u32,
    unit: Unit<'b>,
}

/// The layout of the unit a [`Frames`] walks.
#[derive(Clone, Copy, Debug)]
enum Unit<'b> {
    /// A TPACKET_V3 block: a chain of `tpacket3_hdr`s.
    V3,
    /// A TPACKET_V2 slot: one `tpacket2_hdr` and its frame.
    V2 {
        /// The slot's status word (its frame's flags), read by the ring before the hand-over.
        status: u32,
        /// The slot's whole frame, when it came through the socket's queue.
        copy: Option<&'b [u8]>,
    },
}

impl<'b> Frames<'b> {
    /// The frames of a V3 block: `num_pkts` of them from `offset_to_first_pkt`.
    pub(crate) fn v3(view: BlockView<'b>) -> Self {
        Frames {
            view,
            next: view.u32_at(FIRST_PKT_OFF).unwrap_or(0) as usize,
            remaining: view.num_pkts(),
            unit: Unit::V3,
        }
    }

    /// The one frame of a V2 slot whose status word was `status`; `copy` is the whole frame
    /// (vnet header first) when the slot holds a truncated copy (`TP_STATUS_COPY`).
    pub(crate) fn v2(view: BlockView<'b>, status: u32, copy: Option<&'b [u8]>) -> Self {
        Frames {
            view,
            next: 0,
            remaining: 1,
            unit: Unit::V2 { status, copy },
        }
    }

    fn parse(&self, off: usize) -> Option<(RingFrame<'b>, u32)> {
        match self.unit {
            Unit::V3 => self.parse_v3(off),
            Unit::V2 { status, copy } => self.parse_v2(status, copy).map(|f| (f, 0)),
        }
    }

    /// The one frame of a V2 slot (`struct tpacket2_hdr` at its start).
    fn parse_v2(&self, status: u32, copy: Option<&'b [u8]>) -> Option<RingFrame<'b>> {
        let v = &self.view;
        let snaplen = v.u32_at(TP2_SNAPLEN_OFF)? as usize;
        let mac = v.u16_at(TP2_MAC_OFF)? as usize;
        if mac < MIN_TP2_MAC {
            return None;
        }
        let data = match copy {
            // The frame in the queue, from its vnet header, instead of the slot's truncated
            // copy; the slot's metadata (length, tag, time, flags) describes it all the same.
            Some(whole) if whole.len() >= VNET_HDR_LEN => whole,
            _ => v.range(mac - VNET_HDR_LEN, snaplen.checked_add(VNET_HDR_LEN)?)?,
        };
        let pkt_type = v.range(TPACKET2_HDR_LEN + SLL_PKTTYPE_OFF, 1)?[0];
        // The status word is not in the view (the kernel owns it); the ring read it before the
        // hand-over (`RxRing::next_block`).
        Some(RingFrame {
            data,
            wire_len: v.u32_at(TP2_LEN_OFF)?,
            status,
            rxhash: 0,
            sec: v.u32_at(TP2_SEC_OFF)?,
            nsec: v.u32_at(TP2_NSEC_OFF)?,
            vlan_tci: u32::from(v.u16_at(TP2_VLAN_TCI_OFF)?),
            vlan_tpid: v.u16_at(TP2_VLAN_TPID_OFF)?,
            pkt_type,
        })
    }

    fn parse_v3(&self, off: usize) -> Option<(RingFrame<'b>, u32)> {
        if off < BLOCK_DESC_LEN {
            return None;
        }
        let v = &self.view;
        v.range(off, TPACKET3_HDR_LEN)?;
        let next_offset = v.u32_at(off + TP_NEXT_OFFSET_OFF)?;
        let snaplen = v.u32_at(off + TP_SNAPLEN_OFF)? as usize;
        let mac = v.u16_at(off + TP_MAC_OFF)? as usize;
        if mac < MIN_TP_MAC {
            return None;
        }
        let mac_abs = off.checked_add(mac)?;
        let data = v.range(mac_abs - VNET_HDR_LEN, snaplen.checked_add(VNET_HDR_LEN)?)?;
        let pkt_type = v.range(off + SLL_OFF + SLL_PKTTYPE_OFF, 1)?[0];
        let frame = RingFrame {
            data,
            wire_len: v.u32_at(off + TP_LEN_OFF)?,
            status: v.u32_at(off + TP_STATUS_OFF)?,
            rxhash: v.u32_at(off + TP_RXHASH_OFF)?,
            sec: v.u32_at(off + TP_SEC_OFF)?,
            nsec: v.u32_at(off + TP_NSEC_OFF)?,
            vlan_tci: v.u32_at(off + TP_VLAN_TCI_OFF)?,
            vlan_tpid: v.u16_at(off + TP_VLAN_TPID_OFF)?,
            pkt_type,
        };
        Some((frame, next_offset))
    }
}

impl<'b> Iterator for Frames<'b> {
    type Item = RingFrame<'b>;

    fn next(&mut self) -> Option<RingFrame<'b>> {
        if self.remaining == 0 {
            return None;
        }
        let Some((frame, next_offset)) = self.parse(self.next) else {
            self.remaining = 0;
            return None;
        };
        self.remaining -= 1;
        match self.next.checked_add(next_offset as usize) {
            Some(n) if next_offset != 0 => self.next = n,
            // The last frame has tp_next_offset 0; a 0 earlier is corrupt: stop after this one.
            _ => self.remaining = 0,
        }
        Some(frame)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// One frame in a user-owned block, borrowed from the [`Block`](crate::sys::ring::Block) guard
/// (or from the block in memory given to [`frames_in`]).
#[derive(Clone, Copy, Debug)]
pub struct RingFrame<'b> {
    /// vnet header followed by the frame (`tp_snaplen` bytes from the MAC header).
    data: &'b [u8],
    wire_len: u32,
    status: u32,
    rxhash: u32,
    /// `tp_sec`, `tp_nsec`: when the kernel received it (`CLOCK_REALTIME`).
    sec: u32,
    nsec: u32,
    vlan_tci: u32,
    vlan_tpid: u16,
    pkt_type: u8,
}

impl<'b> RingFrame<'b> {
    /// The frame from its destination MAC, `tp_snaplen` bytes. The outermost VLAN tag, if any, is
    /// not in here: see [`RingFrame::vlan`].
    pub fn frame(&self) -> &'b [u8] {
        &self.data[VNET_HDR_LEN..]
    }

    /// The 10-byte `virtio_net_hdr` that the kernel wrote immediately before the MAC header.
    pub fn vnet(&self) -> &'b [u8; VNET_HDR_LEN] {
        match self.data.first_chunk::<VNET_HDR_LEN>() {
            Some(h) => h,
            None => unreachable!("parse() always includes the vnet header"),
        }
    }

    /// The vnet header, decoded.
    pub fn vnet_hdr(&self) -> VnetHdr {
        VnetHdr::parse(self.vnet()).unwrap_or_default()
    }

    /// vnet header and frame as one contiguous slice, ready for a TAP `write` or a
    /// [`TxSocket::send`](crate::sys::TxSocket::send).
    pub fn with_vnet(&self) -> &'b [u8] {
        self.data
    }

    /// When the kernel received the frame, in ns since the epoch; `None` if it left the
    /// timestamp zero.
    pub fn time_ns(&self) -> Option<u64> {
        let ns = u64::from(self.sec) * 1_000_000_000 + u64::from(self.nsec);
        (ns != 0).then_some(ns)
    }

    /// `tp_snaplen`: the bytes present in [`RingFrame::frame`].
    pub fn snaplen(&self) -> usize {
        self.data.len() - VNET_HDR_LEN
    }

    /// `tp_len`: the frame's full length as received (without the out-of-band VLAN tag).
    pub fn wire_len(&self) -> usize {
        self.wire_len as usize
    }

    /// The frame did not fit in the block and was cut (`tp_snaplen < tp_len`): count it as a drop.
    pub fn truncated(&self) -> bool {
        self.snaplen() < self.wire_len()
    }

    /// The outermost VLAN tag, which the kernel removed from the bytes before the ring saw them.
    /// The TPID is 0x8100 when the kernel did not report one (`TP_STATUS_VLAN_TPID_VALID` unset).
    pub fn vlan(&self) -> Option<VlanTag> {
        // The kernel stores the 16-bit TCI in a 32-bit field.
        vlan_of(self.status, (self.vlan_tci & 0xffff) as u16, self.vlan_tpid)
    }

    /// `tp_status` (`TP_STATUS_*` bits).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// `TP_STATUS_CSUMNOTREADY`: the checksum is still to be computed; the vnet header says where.
    pub fn csum_not_ready(&self) -> bool {
        self.status & libc::TP_STATUS_CSUMNOTREADY != 0
    }

    /// `sll_pkttype`: `PACKET_HOST`, `PACKET_BROADCAST`, `PACKET_MULTICAST`, `PACKET_OTHERHOST`
    /// (`PACKET_OUTGOING` never appears: the ring ignores outgoing frames).
    pub fn pkt_type(&self) -> u8 {
        self.pkt_type
    }

    /// `hv1.tp_rxhash`; 0 unless the ring requested `TP_FT_REQ_FILL_RXHASH` (this one does not).
    pub fn rxhash(&self) -> u32 {
        self.rxhash
    }
}

/// Where [`fake_v3_block`] puts each frame's Ethernet header, from the frame header's start (the
/// kernel's `tp_mac` for a ring with a vnet header: room for the headers, 16-aligned, + 10).
#[cfg(any(test, feature = "testkit"))]
const FAKE_MAC: usize = 92;

/// [`fake_v3_block`]'s `tp_sec` (2027-01-15); frame `i` has `tp_nsec` `i`.
#[cfg(any(test, feature = "testkit"))]
pub const FAKE_SEC: u32 = 1_800_000_000;

/// A TPACKET_V3 block in ordinary memory, laid out as the kernel fills one: `frames` are each a
/// virtio-net header followed by a frame, whole (snaplen = length) and untagged, stamped
/// [`FAKE_SEC`] s and their index in ns. With
/// [`frames_in`] it runs everything downstream of the ring (benchmarks, tests) without a socket.
/// Returns `None` when the frames do not fit in `block_size` bytes.
#[cfg(any(test, feature = "testkit"))]
pub fn fake_v3_block(frames: &[&[u8]], block_size: usize) -> Option<Vec<u8>> {
    let mut b = vec![0u8; block_size];
    let first = 48usize;
    let mut off = first;
    for (i, f) in frames.iter().enumerate() {
        let len = f.len().checked_sub(VNET_HDR_LEN)?;
        let end = off + FAKE_MAC + len;
        let next = (end + 15) & !15;
        if end > block_size {
            return None;
        }
        let last = i + 1 == frames.len();
        put_u32(
            &mut b,
            off + TP_NEXT_OFFSET_OFF,
            if last {
                0
            } else {
                u32::try_from(next - off).ok()?
            },
        );
        put_u32(&mut b, off + TP_SEC_OFF, FAKE_SEC);
        put_u32(&mut b, off + TP_NSEC_OFF, u32::try_from(i).ok()?);
        let len32 = u32::try_from(len).ok()?;
        put_u32(&mut b, off + TP_SNAPLEN_OFF, len32);
        put_u32(&mut b, off + TP_LEN_OFF, len32);
        put_u32(&mut b, off + TP_STATUS_OFF, libc::TP_STATUS_USER);
        put_u16(&mut b, off + TP_MAC_OFF, u16::try_from(FAKE_MAC).ok()?);
        b[off + FAKE_MAC - VNET_HDR_LEN..end].copy_from_slice(f);
        off = next;
    }
    put_u32(&mut b, BLOCK_STATUS_OFF, libc::TP_STATUS_USER);
    put_u32(&mut b, NUM_PKTS_OFF, u32::try_from(frames.len()).ok()?);
    put_u32(&mut b, FIRST_PKT_OFF, u32::try_from(first).ok()?);
    Some(b)
}

/// Writes a native-endian `u32` at `off` (building blocks in memory).
#[cfg(any(test, feature = "testkit"))]
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Writes a native-endian `u16` at `off`.
#[cfg(any(test, feature = "testkit"))]
fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn hand_written_offsets_match_libc_layouts() {
        assert_eq!(size_of::<libc::tpacket_block_desc>(), BLOCK_DESC_LEN);
        let bh1 = offset_of!(libc::tpacket_block_desc, hdr);
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, block_status),
            BLOCK_STATUS_OFF
        );
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, num_pkts),
            NUM_PKTS_OFF
        );
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            FIRST_PKT_OFF
        );
        assert_eq!(bh1 + offset_of!(libc::tpacket_hdr_v1, seq_num), SEQ_NUM_OFF);

        assert_eq!(size_of::<libc::tpacket3_hdr>(), TPACKET3_HDR_LEN);
        assert_eq!(
            offset_of!(libc::tpacket3_hdr, tp_next_offset),
            TP_NEXT_OFFSET_OFF
        );
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_snaplen), TP_SNAPLEN_OFF);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_len), TP_LEN_OFF);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_status), TP_STATUS_OFF);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_mac), TP_MAC_OFF);
        let hv1 = offset_of!(libc::tpacket3_hdr, hv1);
        assert_eq!(
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_rxhash),
            TP_RXHASH_OFF
        );
        assert_eq!(
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci),
            TP_VLAN_TCI_OFF
        );
        assert_eq!(
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
            TP_VLAN_TPID_OFF
        );
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_pkttype), SLL_PKTTYPE_OFF);
        assert_eq!(size_of::<libc::sockaddr_ll>(), SLL_LEN);
        assert_eq!(libc::TPACKET3_HDRLEN, SLL_OFF + SLL_LEN);

        // The V2 frame header, read by `parse_v2` at hand-written offsets.
        assert_eq!(size_of::<libc::tpacket2_hdr>(), TPACKET2_HDR_LEN);
        assert_eq!(offset_of!(libc::tpacket2_hdr, tp_status), TP2_STATUS_OFF);
        assert_eq!(offset_of!(libc::tpacket2_hdr, tp_len), TP2_LEN_OFF);
        assert_eq!(offset_of!(libc::tpacket2_hdr, tp_snaplen), TP2_SNAPLEN_OFF);
        assert_eq!(offset_of!(libc::tpacket2_hdr, tp_mac), TP2_MAC_OFF);
        assert_eq!(
            offset_of!(libc::tpacket2_hdr, tp_vlan_tci),
            TP2_VLAN_TCI_OFF
        );
        assert_eq!(
            offset_of!(libc::tpacket2_hdr, tp_vlan_tpid),
            TP2_VLAN_TPID_OFF
        );
        assert_eq!(size_of::<libc::tpacket_stats_v3>(), 12);
        assert_eq!(size_of::<libc::tpacket_req3>(), 28);
    }

    /// Builds a fake user-owned block in heap memory and walks it, including corrupt offsets.
    mod walk {
        use super::*;

        const BS: usize = 4096;

        /// Writes a frame header at `off` with the vnet header and `payload` at `off + 92`.
        fn put_frame(b: &mut [u8], off: usize, next: u32, payload: &[u8], status: u32) {
            let mac = 92usize;
            put_u32(b, off + TP_NEXT_OFFSET_OFF, next);
            let plen = u32::try_from(payload.len()).unwrap();
            put_u32(b, off + TP_SNAPLEN_OFF, plen);
            put_u32(b, off + TP_LEN_OFF, plen + 1);
            put_u32(b, off + TP_STATUS_OFF, status);
            put_u16(b, off + TP_MAC_OFF, u16::try_from(mac).unwrap());
            put_u32(b, off + TP_VLAN_TCI_OFF, 0x6064);
            put_u16(b, off + TP_VLAN_TPID_OFF, 0x88a8);
            b[off + SLL_OFF + SLL_PKTTYPE_OFF] = 3;
            b[off + mac - 10] = 1; // NEEDS_CSUM
            b[off + mac..off + mac + payload.len()].copy_from_slice(payload);
        }

        fn frames_of(b: &[u8], num: u32, first: u32) -> Vec<(Vec<u8>, bool, Option<VlanTag>)> {
            let mut b = b.to_vec();
            put_u32(&mut b, NUM_PKTS_OFF, num);
            put_u32(&mut b, FIRST_PKT_OFF, first);
            frames_in(&b)
                .map(|f| {
                    assert_eq!(f.vnet()[0], 1);
                    assert_eq!(f.with_vnet().len(), f.frame().len() + VNET_HDR_LEN);
                    assert_eq!(f.pkt_type(), 3);
                    (f.frame().to_vec(), f.truncated(), f.vlan())
                })
                .collect()
        }

        #[test]
        fn a_fake_block_walks_back_into_its_frames() {
            let frames: Vec<Vec<u8>> = (0..40u8)
                .map(|i| {
                    (0..VNET_HDR_LEN + 60 + usize::from(i))
                        .map(|j| j.to_le_bytes()[0] ^ i)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let b = fake_v3_block(&refs, 4 * BS).expect("40 small frames fit in 16 KiB");
            let got: Vec<Vec<u8>> = frames_in(&b).map(|f| f.with_vnet().to_vec()).collect();
            assert_eq!(got, frames);
            assert!(frames_in(&b).all(|f| !f.truncated() && f.vlan().is_none()));
            // Each frame's tp_sec / tp_nsec.
            let times: Vec<Option<u64>> = frames_in(&b).map(|f| f.time_ns()).collect();
            let want: Vec<Option<u64>> = (0..40)
                .map(|i| Some(u64::from(FAKE_SEC) * 1_000_000_000 + i))
                .collect();
            assert_eq!(times, want);
            assert_eq!(fake_v3_block(&refs, 1024), None, "too many for 1 KiB");
            assert_eq!(frames_in(&[]).count(), 0);
        }

        #[test]
        fn well_formed_block() {
            let mut b = vec![0u8; BS];
            put_frame(&mut b, 48, 160, b"first frame", libc::TP_STATUS_USER);
            let vlan = libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID;
            put_frame(&mut b, 208, 0, b"second", vlan);
            let got = frames_of(&b, 2, 48);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0], (b"first frame".to_vec(), true, None));
            assert_eq!(
                got[1].2,
                Some(VlanTag {
                    tpid: 0x88a8,
                    tci: 0x6064
                })
            );
            // VLAN_VALID without TPID_VALID defaults to 802.1Q.
            put_frame(&mut b, 208, 0, b"second", libc::TP_STATUS_VLAN_VALID);
            assert_eq!(
                frames_of(&b, 2, 48)[1].2,
                Some(VlanTag {
                    tpid: 0x8100,
                    tci: 0x6064
                })
            );
        }

        #[test]
        fn corrupt_offsets_end_the_walk() {
            let mut b = vec![0u8; BS];
            put_frame(&mut b, 48, 160, b"first", 0);
            put_frame(&mut b, 208, 0, b"second", 0);
            // num_pkts larger than the chain: stops at tp_next_offset 0.
            assert_eq!(frames_of(&b, 50, 48).len(), 2);
            // first offset inside the block descriptor or past the end.
            assert_eq!(frames_of(&b, 2, 0).len(), 0);
            assert_eq!(frames_of(&b, 2, u32::try_from(BS).unwrap() - 8).len(), 0);
            assert_eq!(frames_of(&b, 2, u32::MAX).len(), 0);
            // next offset pointing outside the block.
            put_u32(&mut b, 48 + TP_NEXT_OFFSET_OFF, 1 << 20);
            assert_eq!(frames_of(&b, 2, 48).len(), 1);
            put_u32(&mut b, 48 + TP_NEXT_OFFSET_OFF, 160);
            // snaplen running past the block.
            put_u32(&mut b, 208 + TP_SNAPLEN_OFF, u32::try_from(BS).unwrap());
            assert_eq!(frames_of(&b, 2, 48).len(), 1);
            put_u32(&mut b, 208 + TP_SNAPLEN_OFF, u32::MAX);
            assert_eq!(frames_of(&b, 2, 48).len(), 1);
            put_u32(&mut b, 208 + TP_SNAPLEN_OFF, 6);
            // tp_mac too small to hold sockaddr_ll + vnet header.
            put_u16(&mut b, 208 + TP_MAC_OFF, 40);
            assert_eq!(frames_of(&b, 2, 48).len(), 1);
            put_u16(&mut b, 208 + TP_MAC_OFF, u16::MAX);
            assert_eq!(frames_of(&b, 2, 48).len(), 1);
        }
    }
}
