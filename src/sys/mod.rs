//! The only module with `unsafe`: the parent's TPACKET_V3 ring and TX socket, and TAP devices.
