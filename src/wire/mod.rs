//! The vocabulary every layer speaks: MAC addresses ([`mac`]), a checked view of one frame
//! ([`frame`]), the `virtio_net_hdr` in front of frames on rings, sockets and TAPs ([`vnet`]),
//! checksum and segmentation finished in software for a peer without one ([`offload`]), and the
//! TPACKET ring's block and frame formats, parsed from bytes the ring hands over
//! ([`ring_format`]), and 802.1Q sub-interfaces emulated on their lower device ([`vlan`]).
//!
//! Pure and safe; it imports nothing from the rest of the crate.

pub mod frame;
pub mod mac;
pub mod offload;
pub mod ring_format;
pub mod vlan;
pub mod vnet;
