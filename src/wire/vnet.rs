//! `VnetHdr`: the 10-byte `struct virtio_net_hdr` that precedes every frame on the parent's
//! packet sockets (`PACKET_VNET_HDR`) and on every child TAP (`IFF_VNET_HDR`).
//!
//! It carries checksum and GSO offload state, so a frame whose checksum is not yet computed
//! (`CHECKSUM_PARTIAL`) or a 64 KiB TCP super-frame can cross the engine unchanged (see
//! docs/performance.md#the-virtio-net-header-on-rings-and-sockets and #tap-devices).
//!
//! Layout (`include/uapi/linux/virtio_net.h`):
//!
//! | offset | field | size |
//! |---|---|---|
//! | 0 | `flags` | u8 |
//! | 1 | `gso_type` | u8 |
//! | 2 | `hdr_len` | u16 |
//! | 4 | `gso_size` | u16 |
//! | 6 | `csum_start` | u16 |
//! | 8 | `csum_offset` | u16 |
//!
//! **Byte order.** The u16 fields are `__virtio16`. Packet sockets convert them with
//! `vio_le()` = `virtio_legacy_is_little_endian()`, which is true exactly when the host is
//! little-endian; TAP uses `tun_is_little_endian()`, which is the same legacy rule unless
//! `TUNSETVNETLE`/`TUNSETVNETBE` was issued (the engine never does). Both therefore use the
//! host's **native** byte order: little-endian on x86-64 and arm64. This module reads and
//! writes native-endian.
//!
//! Pure and safe: no I/O.

/// Size of `struct virtio_net_hdr`, the header size both the ring and the TAPs are set to.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: checksum the bytes from `csum_start` and store the result at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has been validated (CHECKSUM_UNNECESSARY).
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_F_RSC_INFO`.
pub const F_RSC_INFO: u8 = 4;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, obsolete).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag or-ed into `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// Length of one 802.1Q/802.1ad tag; the shift applied by [`VnetHdr::with_vlan_inserted`].
const VLAN_HLEN: u16 = 4;

/// One `struct virtio_net_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (Ethernet to L4) in a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment in a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts, counted from the first byte of the Ethernet header.
    pub csum_start: u16,
    /// Where, counted from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header that says "nothing special": no checksum work, no GSO.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the first [`VNET_HDR_LEN`] bytes of `bytes`; `None` when there are fewer.
    pub fn parse(bytes: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = bytes.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Encodes the header in the kernel's layout (native byte order).
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// True when the frame is a GSO super-frame (any type but `GSO_NONE`, ignoring the ECN bit).
    pub const fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Whether the header is one the kernel would accept for a frame of `frame_len` bytes
    /// (`virtio_net_hdr_to_skb`): a known GSO type with a segment size, and checksum offsets
    /// inside the frame. The kernel only ever hands the engine valid ones; anything else is
    /// refused, never forwarded with a guessed meaning.
    pub fn is_valid_for(&self, frame_len: usize) -> bool {
        let known = matches!(
            self.gso_type & !GSO_ECN,
            GSO_NONE | GSO_TCPV4 | GSO_UDP | GSO_TCPV6 | GSO_UDP_L4
        );
        let sized = !self.is_gso() || self.gso_size > 0;
        let csum = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
        known && sized && (!self.needs_csum() || csum <= frame_len)
    }

    /// True when the checksum is still to be computed (`CHECKSUM_PARTIAL`).
    pub const fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The header for the same frame after a 4-byte VLAN tag was inserted after the MACs.
    ///
    /// Packet sockets report `csum_start` (and `hdr_len`) relative to the frame the ring holds,
    /// which the kernel has already untagged (`virtio_net_hdr_from_skb(.., vlan_hlen = 0)`,
    /// docs/performance.md#the-virtio-net-header-on-rings-and-sockets). When the engine puts the
    /// tag back inline, every offset into the frame moves by 4: `csum_start` if `NEEDS_CSUM` is
    /// set, `hdr_len` if the frame is GSO. Saturating, so a hostile header cannot wrap around.
    #[must_use]
    pub const fn with_vlan_inserted(self) -> VnetHdr {
        let mut h = self;
        if h.needs_csum() {
            h.csum_start = h.csum_start.saturating_add(VLAN_HLEN);
        }
        if h.is_gso() {
            h.hdr_len = h.hdr_len.saturating_add(VLAN_HLEN);
        }
        h
    }
}

/// A TCPv4 super-frame's header as a veth with TSO hands it over (tests).
#[cfg(test)]
pub(crate) const SAMPLE_TSO4: VnetHdr = VnetHdr {
    flags: F_NEEDS_CSUM,
    gso_type: GSO_TCPV4,
    hdr_len: 66,
    gso_size: 1448,
    csum_start: 34,
    csum_offset: 16,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_headers_the_kernel_accepts_are_valid() {
        let tcp = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert!(tcp.is_valid_for(3000));
        assert!(VnetHdr::NONE.is_valid_for(14));
        let cases = [
            ("unknown GSO type", VnetHdr { gso_type: 2, ..tcp }),
            ("GSO without a segment size", VnetHdr { gso_size: 0, ..tcp }),
            (
                "checksum past the frame",
                VnetHdr {
                    csum_start: 2990,
                    ..tcp
                },
            ),
        ];
        for (what, h) in cases {
            assert!(!h.is_valid_for(3000), "{what}");
        }
        // Checksum offsets only matter when a checksum is to be computed.
        assert!(
            VnetHdr {
                flags: 0,
                ..cases[2].1
            }
            .is_valid_for(3000)
        );
    }

    #[test]
    fn len_matches_the_kernel_struct() {
        // struct virtio_net_hdr { __u8 flags; __u8 gso_type; __virtio16 x4 } = 10 bytes.
        assert_eq!(VNET_HDR_LEN, 1 + 1 + 4 * 2);
        assert_eq!(VnetHdr::default().to_bytes().len(), VNET_HDR_LEN);
    }

    #[test]
    fn parse_is_native_endian_and_round_trips() {
        let h = SAMPLE_TSO4;
        let b = h.to_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 1);
        assert_eq!(&b[2..4], &66u16.to_ne_bytes());
        assert_eq!(&b[4..6], &1448u16.to_ne_bytes());
        assert_eq!(&b[6..8], &34u16.to_ne_bytes());
        assert_eq!(&b[8..10], &16u16.to_ne_bytes());
        assert_eq!(VnetHdr::parse(&b), Some(h));
        #[cfg(target_endian = "little")]
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
    }

    #[test]
    fn parse_needs_ten_bytes_and_ignores_the_rest() {
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        assert_eq!(VnetHdr::parse(&[]), None);
        let mut long = [0u8; 64];
        long[10..].fill(0xff);
        assert_eq!(VnetHdr::parse(&long), Some(VnetHdr::NONE));
    }

    #[test]
    fn gso_detection_ignores_ecn() {
        let mut h = VnetHdr::NONE;
        assert!(!h.is_gso());
        h.gso_type = GSO_ECN;
        assert!(!h.is_gso());
        h.gso_type = GSO_TCPV6 | GSO_ECN;
        assert!(h.is_gso());
        h.gso_type = GSO_UDP_L4;
        assert!(h.is_gso());
    }

    #[test]
    fn vlan_insertion_shifts_only_the_offsets_in_use() {
        assert_eq!(VnetHdr::NONE.with_vlan_inserted(), VnetHdr::NONE);

        let csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::NONE
        };
        let t = csum.with_vlan_inserted();
        assert_eq!((t.csum_start, t.csum_offset, t.hdr_len), (38, 6, 0));

        let t = SAMPLE_TSO4.with_vlan_inserted();
        assert_eq!((t.csum_start, t.hdr_len, t.gso_size), (38, 70, 1448));

        // DATA_VALID carries no offsets: nothing moves.
        let valid = VnetHdr {
            flags: F_DATA_VALID,
            csum_start: 7,
            ..VnetHdr::NONE
        };
        assert_eq!(valid.with_vlan_inserted(), valid);

        let edge = VnetHdr {
            csum_start: u16::MAX - 1,
            ..csum
        };
        assert_eq!(edge.with_vlan_inserted().csum_start, u16::MAX);
    }
}
