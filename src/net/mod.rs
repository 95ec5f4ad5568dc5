//! Safe helpers around the kernel's control plane: rtnetlink and network namespaces.
//!
//! * [`netns`]: [`Netns`], an owned network-namespace fd; `ip netns add/del` equivalents and
//!   [`in_netns`], which runs a closure on a fresh thread inside a namespace.
//! * `netlink`: [`Netlink`], a small blocking NETLINK_ROUTE client with typed verbs (read links,
//!   set MAC/MTU/state/namespace, create veth/bridge/macvlan for tests and the lab).
//! * `monitor`: [`LinkMonitor`], a non-blocking RTNLGRP_LINK listener (carrier mirroring).
//! * `mcast`: [`link_multicast`], a device's link-layer multicast list from `dev_mcast`.
//!
//! Every function is safe Rust: the syscalls go through `nix` and `netlink-sys`.
//!
//! Threads and namespaces: `setns`/`unshare(CLONE_NEWNET)` only ever happen on threads this module
//! spawns and then lets end, so no caller's thread ever changes namespace. Sockets and fds keep the
//! namespace they were created in.

pub(crate) mod cidr;
mod error;
pub(crate) mod mcast;
pub(crate) mod monitor;
pub(crate) mod netlink;
pub mod netns;
// The test kit: for this crate's tests and, with the `testkit` feature, for `tests/` and
// tools/soak; not in a normal build.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testutil;

pub use cidr::Cidr;
pub use error::{Error, Result};
pub use mcast::link_multicast;
pub use monitor::{LinkEvent, LinkMonitor};
pub use netlink::{
    IfFlags, LinkInfo, MacvlanInfo, MacvlanSpec, Netlink, OperState, Route, is_wireless,
};
pub use netns::{Netns, disable_ipv6, in_netns};

#[cfg(test)]
mod tests;
