//! `FrameMeta`: a checked, zero-copy view of one Ethernet frame, holding exactly what `decide()`
//! needs (destination, source, VLAN tags, ethertype, length, GSO).
//!
//! The one constructor, [`FrameMeta::parse`], checks the length and the outer VLAN tag; after it
//! no accessor can panic or fail. A frame that is too short for an Ethernet header ("runt"),
//! longer than the configured maximum ("oversize"), or whose outer tag is cut short or carries
//! the reserved VID 4095 ("bad VLAN") never becomes a `FrameMeta`: it is a [`FrameError`], which
//! the engine counts as a drop with its own reason.
//!
//! VLAN tags come two ways: inline in the bytes (what a TAP read gives), or out of band (what an
//! AF_PACKET ring gives in `tp_vlan_tci`/`tp_vlan_tpid`, because the kernel strips the outermost
//! tag before the packet taps run). Both look the same through this view.

use crate::wire::mac::MacAddr;

/// Length of an untagged Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q/802.1ad tag.
pub const VLAN_HLEN: usize = 4;

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IEEE 802.3x flow control; macvlan never floods it (`macvlan_broadcast`).
pub const ETH_P_PAUSE: u16 = 0x8808;

/// One 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88a8) tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanTag {
    pub tpid: u16,
    /// Priority (3 bits), DEI (1 bit), VLAN id (12 bits).
    pub tci: u16,
}

impl VlanTag {
    pub const fn dot1q(vid: u16) -> VlanTag {
        VlanTag {
            tpid: ETH_P_8021Q,
            tci: vid & 0x0fff,
        }
    }

    pub const fn vid(&self) -> u16 {
        self.tci & 0x0fff
    }

    pub const fn to_bytes(self) -> [u8; 4] {
        let [a, b] = self.tpid.to_be_bytes();
        let [c, d] = self.tci.to_be_bytes();
        [a, b, c, d]
    }
}

/// Why bytes are not a frame `decide()` may look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("runt frame: {0} bytes, an Ethernet header needs {ETH_HLEN}")]
    Runt(usize),
    #[error("oversize frame: {len} bytes, the maximum is {max}")]
    Oversize { len: usize, max: usize },
    /// The outer 802.1Q/802.1ad tag ends past the frame, or has VID 4095, which IEEE 802.1Q
    /// reserves and says shall not be transmitted in a tag.
    #[error("bad VLAN tag: {0}")]
    BadVlan(&'static str),
}

/// The VID IEEE 802.1Q reserves (Table 9-2): never valid in a tag on the wire.
pub const VID_RESERVED: u16 = 0x0fff;

/// A checked view of one frame. Cheap to copy; borrows the frame bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta<'a> {
    bytes: &'a [u8],
    oob_vlan: Option<VlanTag>,
    gso: bool,
}

impl<'a> FrameMeta<'a> {
    /// Checks `bytes` (the frame from its destination MAC on, without any vnet header) and wraps
    /// it. `oob_vlan` is a tag the kernel removed and reported beside the bytes; it counts in the
    /// length. `max_len` bounds the frame as it would be on the wire, tag included.
    pub fn parse(
        bytes: &'a [u8],
        oob_vlan: Option<VlanTag>,
        max_len: usize,
    ) -> Result<FrameMeta<'a>, FrameError> {
        let len = bytes.len() + if oob_vlan.is_some() { VLAN_HLEN } else { 0 };
        if bytes.len() < ETH_HLEN {
            return Err(FrameError::Runt(bytes.len()));
        }
        if len > max_len {
            return Err(FrameError::Oversize { len, max: max_len });
        }
        let meta = FrameMeta {
            bytes,
            oob_vlan,
            gso: false,
        };
        let inline_tpid = meta
            .u16_at(12)
            .filter(|t| *t == ETH_P_8021Q || *t == ETH_P_8021AD);
        if oob_vlan.is_none() && inline_tpid.is_some() && bytes.len() < ETH_HLEN + VLAN_HLEN {
            return Err(FrameError::BadVlan("the tag is cut short"));
        }
        if meta.outer_vlan().is_some_and(|t| t.vid() == VID_RESERVED) {
            return Err(FrameError::BadVlan("VID 4095 is reserved"));
        }
        Ok(meta)
    }

    /// Marks the frame as a GSO super-frame (its virtio-net header has a GSO type). The kernel's
    /// MTU checks on forwarding paths let GSO frames through whatever their length.
    pub fn with_gso(mut self, gso: bool) -> Self {
        self.gso = gso;
        self
    }

    fn mac_at(&self, off: usize) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.bytes[off..off + 6]);
        MacAddr(m)
    }

    fn u16_at(&self, off: usize) -> Option<u16> {
        let b = self.bytes.get(off..off + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn dst(&self) -> MacAddr {
        self.mac_at(0)
    }

    pub fn src(&self) -> MacAddr {
        self.mac_at(6)
    }

    /// The bytes as given (without an out-of-band tag).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The tag the ring reported out of band, if any.
    pub fn oob_vlan(&self) -> Option<VlanTag> {
        self.oob_vlan
    }

    pub fn is_gso(&self) -> bool {
        self.gso
    }

    /// Length on the wire: the bytes plus an out-of-band tag.
    pub fn len(&self) -> usize {
        self.bytes.len()
            + if self.oob_vlan.is_some() {
                VLAN_HLEN
            } else {
                0
            }
    }

    /// Never true: a `FrameMeta` always holds at least an Ethernet header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The outermost VLAN tag: the out-of-band one, else an inline 802.1Q/802.1ad tag.
    pub fn outer_vlan(&self) -> Option<VlanTag> {
        self.oob_vlan.or_else(|| self.inline_tag(12))
    }

    /// The tag inside the outer one (QinQ), if any.
    pub fn inner_vlan(&self) -> Option<VlanTag> {
        match (self.oob_vlan, self.inline_tag(12)) {
            (Some(_), inline) => inline,
            (None, Some(_)) => self.inline_tag(16),
            (None, None) => None,
        }
    }

    fn inline_tag(&self, off: usize) -> Option<VlanTag> {
        let tpid = self.u16_at(off)?;
        if tpid != ETH_P_8021Q && tpid != ETH_P_8021AD {
            return None;
        }
        Some(VlanTag {
            tpid,
            tci: self.u16_at(off + 2)?,
        })
    }

    /// The ethertype that follows the outermost tag, as the kernel's `eth_hdr(skb)->h_proto`
    /// reads once the outer tag has been moved to metadata. For QinQ this is the inner TPID.
    pub fn ethertype(&self) -> Option<u16> {
        match (self.oob_vlan, self.inline_tag(12)) {
            (None, Some(_)) => self.u16_at(16),
            _ => self.u16_at(12),
        }
    }

    /// An 802.3x PAUSE frame, which macvlan never floods.
    pub fn is_pause(&self) -> bool {
        self.ethertype() == Some(ETH_P_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], rest: &[u8]) -> Vec<u8> {
        let mut v = dst.to_vec();
        v.extend_from_slice(&src);
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn a_cut_short_tag_and_vid_4095_are_bad_vlans() {
        let mac = [2, 0, 0, 0, 0, 1];
        let short = frame(mac, mac, &[0x81, 0x00, 0x00]);
        let err = FrameMeta::parse(&short, None, 1518);
        assert_eq!(err, Err(FrameError::BadVlan("the tag is cut short")));
        let qinq_short = frame(mac, mac, &[0x88, 0xa8]);
        assert!(matches!(
            FrameMeta::parse(&qinq_short, None, 1518),
            Err(FrameError::BadVlan(_))
        ));
        let reserved = frame(mac, mac, &[0x81, 0x00, 0x0f, 0xff, 0x08, 0x00]);
        let want = Err(FrameError::BadVlan("VID 4095 is reserved"));
        assert_eq!(FrameMeta::parse(&reserved, None, 1518), want);
        let plain = frame(mac, mac, &[0x08, 0x00]);
        let oob = Some(VlanTag::dot1q(VID_RESERVED));
        assert_eq!(FrameMeta::parse(&plain, oob, 1518), want);
        // Priority bits set, VID 4094: a valid tag.
        let ok = frame(mac, mac, &[0x81, 0x00, 0xef, 0xfe, 0x08, 0x00]);
        assert_eq!(
            FrameMeta::parse(&ok, None, 1518).unwrap().outer_vlan(),
            Some(VlanTag {
                tpid: ETH_P_8021Q,
                tci: 0xeffe
            })
        );
        // With the outer tag out of band, an inline tag is the inner one: not checked here.
        let inner = frame(mac, mac, &[0x81, 0x00]);
        assert!(FrameMeta::parse(&inner, Some(VlanTag::dot1q(5)), 1518).is_ok());
    }

    #[test]
    fn runt_and_oversize_are_errors() {
        assert_eq!(
            FrameMeta::parse(&[0; 13], None, 1518),
            Err(FrameError::Runt(13))
        );
        assert_eq!(FrameMeta::parse(&[], None, 1518), Err(FrameError::Runt(0)));
        assert!(FrameMeta::parse(&[0; 14], None, 1518).is_ok());
        assert_eq!(
            FrameMeta::parse(&[0; 1519], None, 1518),
            Err(FrameError::Oversize {
                len: 1519,
                max: 1518
            })
        );
        // An out-of-band tag counts in the length.
        assert_eq!(
            FrameMeta::parse(&[0; 1515], Some(VlanTag::dot1q(5)), 1518),
            Err(FrameError::Oversize {
                len: 1519,
                max: 1518
            })
        );
    }

    #[test]
    fn untagged() {
        let b = frame([0xff; 6], [2, 0, 0, 0, 0, 1], &[0x08, 0x06, 0, 0]);
        let m = FrameMeta::parse(&b, None, 1518).unwrap();
        assert!(m.dst().is_broadcast());
        assert_eq!(m.src().to_string(), "02:00:00:00:00:01");
        assert_eq!(m.ethertype(), Some(0x0806));
        assert_eq!(m.outer_vlan(), None);
        assert_eq!(m.len(), 16);
        assert!(!m.is_pause());
    }

    #[test]
    fn inline_and_oob_tags() {
        let b = frame([1; 6], [2; 6], &[0x81, 0x00, 0x60, 0x64, 0x08, 0x00]);
        let m = FrameMeta::parse(&b, None, 1518).unwrap();
        assert_eq!(
            m.outer_vlan(),
            Some(VlanTag {
                tpid: 0x8100,
                tci: 0x6064
            })
        );
        assert_eq!(m.outer_vlan().unwrap().vid(), 100);
        assert_eq!(m.ethertype(), Some(0x0800));
        assert_eq!(m.inner_vlan(), None);

        // The ring's view of the same frame: tag out of band, bytes untagged.
        let b = frame([1; 6], [2; 6], &[0x08, 0x00]);
        let m = FrameMeta::parse(
            &b,
            Some(VlanTag {
                tpid: 0x8100,
                tci: 0x6064,
            }),
            1518,
        )
        .unwrap();
        assert_eq!(m.outer_vlan().unwrap().vid(), 100);
        assert_eq!(m.ethertype(), Some(0x0800));
        assert_eq!(m.len(), b.len() + 4);

        // QinQ from the ring: outer 802.1ad out of band, inner 802.1Q inline.
        let b = frame([1; 6], [2; 6], &[0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
        let outer = VlanTag {
            tpid: ETH_P_8021AD,
            tci: 200,
        };
        let m = FrameMeta::parse(&b, Some(outer), 1518).unwrap();
        assert_eq!(m.outer_vlan(), Some(outer));
        assert_eq!(m.inner_vlan(), Some(VlanTag::dot1q(7)));
        assert_eq!(m.ethertype(), Some(0x8100));
    }

    #[test]
    fn tag_at_the_very_end_is_a_bad_vlan() {
        // 14 bytes whose ethertype says "tag follows", but nothing follows.
        let b = frame([1; 6], [2; 6], &[0x81, 0x00]);
        assert!(matches!(
            FrameMeta::parse(&b, None, 1518),
            Err(FrameError::BadVlan(_))
        ));
    }

    #[test]
    fn pause() {
        let b = frame(MacAddr::PAUSE.0, [2; 6], &[0x88, 0x08, 0x00, 0x01]);
        assert!(FrameMeta::parse(&b, None, 1518).unwrap().is_pause());
    }
}
