//! The vocabulary every layer speaks: MAC addresses ([`mac`]), a checked view of one frame
//! ([`frame`]), the `virtio_net_hdr` in front of frames on rings, sockets and TAPs ([`vnet`]), and
//! checksum and segmentation finished in software for a peer without one ([`offload`]).
//!
//! Pure and safe; it imports nothing from the rest of the crate.

pub mod frame;
pub mod mac;
pub mod offload;
pub mod vnet;
