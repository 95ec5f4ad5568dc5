//! umacvlan: Linux macvlan rebuilt in userspace.
//!
//! * [`mac`], [`frame`]: vocabulary — MAC addresses and a checked view of one frame.
//! * [`forward`]: the pure forwarding decision, `decide()`, and the port table it reads.
//! * [`sys`]: the only `unsafe` code — TPACKET_V3 ring, TX socket, TAP devices.
//! * [`offload`]: checksum and TCP segmentation in software, for ports without a vnet header.
//! * [`vnet`]: the `virtio_net_hdr` that rides in front of every frame on the ring, TX socket
//!   and TAPs.
//! * [`net`]: rtnetlink and network-namespace helpers.
//! * [`engine`]: the worker loop that moves frames and counts them.
//! * [`control`]: the control socket: protocol, server, client.
//! * [`errors`]: an error and its causes as one line, each cause said once.
//! * [`trace`]: one frame's decision explained, as JSON and text.
//! * [`service`]: running under systemd (sd_notify, the watchdog's health rule).
//! * [`cni`]: the CNI plugin `umacvlan-cni` (a client of the control socket).
//! * [`lab`]: `umacvlan lab`, a self-contained lab in namespaces that checks the engine against
//!   the rules.
#![deny(unsafe_code)]

pub mod cli;
pub mod cni;
pub mod control;
pub mod engine;
pub mod errors;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod lab;
pub mod net;
#[allow(unsafe_code)]
pub mod sys;
pub mod wire;
