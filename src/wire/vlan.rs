//! 802.1Q sub-interfaces emulated on their lower device, as the kernel's `8021q` module would
//! make them (`net/8021q/`): the parent name `eth0.100`, which frames of the lower device belong
//! to which parent, and the tag a child's frame gets on its way out.
//!
//! * **Receive** (`vlan_do_receive`): the lower device's ring reports the outer tag out of band
//!   (`skb_vlan_untag` ran before the packet taps). A frame whose outer tag is 802.1Q (TPID
//!   0x8100) with the parent's VID is that parent's, its tag gone (the ring's vnet header is
//!   already relative to the untagged frame: nothing to adjust). A frame tagged 802.1ad (0x88a8),
//!   or with a VID no parent claims, or untagged, stays with the lower device's own (untagged)
//!   parent, tag and all, as the kernel's `vlan_find_dev` miss leaves it to the lower device's
//!   `rx_handler`. VID 0 (priority tags) is a VID like any other here, as in the kernel: it is
//!   a sub-interface's only if one was made with VID 0.
//! * **Transmit** (`vlan_dev_hard_start_xmit` with the default `REORDER_HDR` and an empty egress
//!   priority map): every frame gets an outer 802.1Q tag with the VID and priority 0, in front of
//!   any tag it already carries; the vnet header's offsets move past it ([`tag_in_place`]).
//!
//! Pure and safe: no I/O.

use std::sync::atomic::{AtomicU64, Ordering};

use super::frame::{ETH_P_8021Q, VID_RESERVED, VLAN_HLEN, VlanTag};
use super::vnet::{VNET_HDR_LEN, VnetHdr};

/// The largest VID a sub-interface may have (`vlan_validate`: `id >= VLAN_VID_MASK` is
/// `ERANGE`); 4095 is reserved.
pub const VID_MAX: u16 = VID_RESERVED - 1;

/// The room [`tag_in_place`] needs in front of the vnet header.
pub const TAG_HEADROOM: usize = VLAN_HLEN;

/// A parent name of the form `LOWER.VID`, the `ip link` convention for 802.1Q sub-interfaces
/// (`vconfig`'s zero-padded `eth0.0100` included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanName<'a> {
    pub lower: &'a str,
    pub vid: u16,
}

/// Why a `LOWER.VID` name cannot be an 802.1Q sub-interface.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VlanNameError {
    #[error(
        "parent {name}: VID {vid} is out of range (an 802.1Q sub-interface has a VID from 0 to {VID_MAX}; 4095 is reserved)"
    )]
    VidRange { name: String, vid: u32 },
}

/// Reads `name` as `LOWER.VID`: `Ok(None)` when it is not of that form (no dot, or something
/// other than 1 to 4 digits after the last one), an error when the VID is out of range.
pub fn parse_name(name: &str) -> Result<Option<VlanName<'_>>, VlanNameError> {
    let Some((lower, digits)) = name.rsplit_once('.') else {
        return Ok(None);
    };
    if lower.is_empty()
        || digits.is_empty()
        || digits.len() > 4
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(None);
    }
    let vid: u32 = digits.parse().expect("1 to 4 ASCII digits");
    match u16::try_from(vid) {
        Ok(vid) if vid <= VID_MAX => Ok(Some(VlanName { lower, vid })),
        _ => Err(VlanNameError::VidRange {
            name: name.to_string(),
            vid,
        }),
    }
}

/// A parent emulated as an 802.1Q sub-interface of `lower` with VID `vid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Emulated {
    pub lower: String,
    pub vid: u16,
}

/// The VIDs claimed by emulated sub-interfaces of one lower device, shared between the threads
/// that forward for it: the lower device's own parent leaves those frames to them.
#[derive(Debug)]
pub struct VidSet([AtomicU64; 64]);

impl Default for VidSet {
    fn default() -> Self {
        VidSet::new()
    }
}

impl VidSet {
    /// The empty set (a `static` one serves a lower device with no sub-interfaces).
    pub const fn new() -> VidSet {
        VidSet([const { AtomicU64::new(0) }; 64])
    }

    fn bit(vid: u16) -> (usize, u64) {
        let v = usize::from(vid & 0x0fff);
        (v / 64, 1u64 << (v % 64))
    }

    pub fn insert(&self, vid: u16) {
        let (w, b) = Self::bit(vid);
        self.0[w].fetch_or(b, Ordering::Relaxed);
    }

    pub fn remove(&self, vid: u16) {
        let (w, b) = Self::bit(vid);
        self.0[w].fetch_and(!b, Ordering::Relaxed);
    }

    pub fn contains(&self, vid: u16) -> bool {
        let (w, b) = Self::bit(vid);
        self.0[w].load(Ordering::Relaxed) & b != 0
    }
}

/// Which of the lower device's frames a parent takes.
#[derive(Clone, Copy, Debug)]
pub enum Claim<'a> {
    /// An emulated sub-interface: its VID's 802.1Q frames only.
    Vid(u16),
    /// The lower device itself: everything but the frames of its emulated sub-interfaces.
    Lower(&'a VidSet),
}

impl Claim<'_> {
    /// For a frame whose outer tag the ring reported as `tag`: `None` when the frame belongs to
    /// another parent of the same device, else the tag the parent's ports see (`None` once an
    /// emulated sub-interface removed it).
    #[inline]
    pub fn take(self, tag: Option<VlanTag>) -> Option<Option<VlanTag>> {
        let dot1q = tag.filter(|t| t.tpid == ETH_P_8021Q).map(|t| t.vid());
        match self {
            Claim::Vid(v) => (dot1q == Some(v)).then_some(None),
            Claim::Lower(set) => match dot1q {
                Some(v) if set.contains(v) => None,
                _ => Some(tag),
            },
        }
    }
}

/// Puts an outer 802.1Q tag (VID `vid`, priority 0) after the MACs of the frame held in
/// `buf[TAG_HEADROOM..]` (its vnet header first): the header and the MACs move into the
/// headroom, the tag takes their place, and the header's offsets into the frame move past it
/// ([`VnetHdr::with_vlan_inserted`]). Returns the tagged frame, vnet header first (all of
/// `buf`), or `None` when `buf` is too short to hold a header and two MACs behind the headroom.
pub fn tag_in_place(buf: &mut [u8], vid: u16) -> Option<&[u8]> {
    const MACS: usize = 12;
    let head = TAG_HEADROOM + VNET_HDR_LEN + MACS;
    if buf.len() < head {
        return None;
    }
    buf.copy_within(TAG_HEADROOM..head, 0);
    let hdr = VnetHdr::parse(buf)?.with_vlan_inserted();
    buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    let tag = VlanTag::dot1q(vid).to_bytes();
    buf[VNET_HDR_LEN + MACS..head].copy_from_slice(&tag);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::ETH_P_8021AD;
    use crate::wire::vnet::SAMPLE_TSO4;

    #[test]
    fn names_of_sub_interfaces() {
        let n = |s| parse_name(s).unwrap();
        assert_eq!(
            n("eth0.100"),
            Some(VlanName {
                lower: "eth0",
                vid: 100
            })
        );
        assert_eq!(n("eth0.0100").map(|v| v.vid), Some(100));
        assert_eq!(n("eth0.0").map(|v| v.vid), Some(0));
        assert_eq!(n("eth0.4094").map(|v| v.vid), Some(4094));
        assert_eq!(
            n("bond0.5.7"),
            Some(VlanName {
                lower: "bond0.5",
                vid: 7
            })
        );
        for not in [
            "eth0",
            ".100",
            "eth0.",
            "eth0.1a",
            "eth0.+1",
            "eth0.12345",
            "br.lan",
        ] {
            assert_eq!(n(not), None, "{not}");
        }
        for bad in ["eth0.4095", "eth0.9999"] {
            let e = parse_name(bad).unwrap_err().to_string();
            assert!(e.contains("out of range") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_sub_interface_takes_its_own_dot1q_vid_untagged() {
        let c = Claim::Vid(100);
        assert_eq!(c.take(Some(VlanTag::dot1q(100))), Some(None));
        let with_pcp = VlanTag {
            tpid: ETH_P_8021Q,
            tci: 0xa000 | 100,
        };
        assert_eq!(c.take(Some(with_pcp)), Some(None));
        assert_eq!(c.take(None), None);
        assert_eq!(c.take(Some(VlanTag::dot1q(200))), None);
        assert_eq!(c.take(Some(VlanTag::dot1q(0))), None);
        let ad = VlanTag {
            tpid: ETH_P_8021AD,
            tci: 100,
        };
        assert_eq!(c.take(Some(ad)), None, "an 802.1ad outer tag is not 802.1Q");
    }

    #[test]
    fn the_lower_keeps_what_no_sub_interface_claims() {
        let set = VidSet::default();
        set.insert(100);
        set.insert(4094);
        let c = Claim::Lower(&set);
        assert_eq!(c.take(None), Some(None));
        assert_eq!(c.take(Some(VlanTag::dot1q(100))), None);
        assert_eq!(c.take(Some(VlanTag::dot1q(4094))), None);
        let other = Some(VlanTag::dot1q(300));
        assert_eq!(c.take(other), Some(other));
        let prio = Some(VlanTag::dot1q(0));
        assert_eq!(
            c.take(prio),
            Some(prio),
            "priority tags stay with the lower"
        );
        let ad = Some(VlanTag {
            tpid: ETH_P_8021AD,
            tci: 100,
        });
        assert_eq!(c.take(ad), Some(ad));
        set.remove(100);
        assert!(!set.contains(100) && set.contains(4094));
        assert_eq!(
            c.take(Some(VlanTag::dot1q(100))),
            Some(Some(VlanTag::dot1q(100)))
        );
    }

    #[test]
    fn tagging_moves_the_macs_and_the_offsets() {
        let hdr = SAMPLE_TSO4;
        let mut buf = vec![0xeeu8; TAG_HEADROOM];
        buf.extend_from_slice(&hdr.to_bytes());
        let macs: Vec<u8> = (1..=12).collect();
        buf.extend_from_slice(&macs);
        buf.extend_from_slice(&[0x08, 0x00, 0x45]);
        let out = tag_in_place(&mut buf, 100).unwrap().to_vec();
        assert_eq!(out.len(), TAG_HEADROOM + VNET_HDR_LEN + 15);
        let got = VnetHdr::parse(&out).unwrap();
        assert_eq!((got.csum_start, got.hdr_len), (38, 70));
        assert_eq!((got.gso_size, got.csum_offset), (1448, 16));
        assert_eq!(&out[VNET_HDR_LEN..VNET_HDR_LEN + 12], &macs[..]);
        assert_eq!(
            &out[VNET_HDR_LEN + 12..],
            &[0x81, 0x00, 0x00, 0x64, 0x08, 0x00, 0x45]
        );
        assert!(tag_in_place(&mut [0u8; TAG_HEADROOM + VNET_HDR_LEN + 11], 1).is_none());
    }

    #[test]
    fn an_already_tagged_frame_gets_a_second_outer_tag() {
        let mut buf = vec![0u8; TAG_HEADROOM + VNET_HDR_LEN + 12];
        buf.extend_from_slice(&[0x81, 0x00, 0x00, 0x07, 0x08, 0x06]);
        let out = tag_in_place(&mut buf, 4094).unwrap();
        assert_eq!(
            &out[VNET_HDR_LEN + 12..],
            &[0x81, 0x00, 0x0f, 0xfe, 0x81, 0x00, 0x00, 0x07, 0x08, 0x06]
        );
    }
}
