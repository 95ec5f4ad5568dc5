//! umacvlan: Linux macvlan rebuilt in userspace.
//!
//! # Layers
//!
//! The modules form layers, from the bottom up. **A module may import only from its own layer
//! or a layer below it**; `tests/layers.rs` checks every `crate::` path under `src/` against
//! this table.
//!
//! | layer | modules                     | what it is                                         |
//! |-------|-----------------------------|----------------------------------------------------|
//! | 0     | [`wire`], [`errors`]        | vocabulary: addresses, frames, headers; error text |
//! | 1     | [`forward`]                 | the pure forwarding decision                       |
//! | 2     | [`sys`]                     | the only `unsafe`: sockets, rings, TAPs            |
//! | 3     | [`net`]                     | rtnetlink and network namespaces                   |
//! | 4     | [`engine`]                  | the data plane: workers that carry out verdicts    |
//! | 5     | [`control`]                 | the control plane: the daemon and its socket       |
//! | 6     | [`cli`], [`cni`], `lab`, `fuzzing` | the programs and test bodies built on it    |
//!
//! # Modules
//!
//! * [`wire`]: MAC addresses, a checked view of one frame, the `virtio_net_hdr`, and checksum
//!   and segmentation in software for ports without one.
//! * [`errors`]: an error and its causes as one line, each cause said once.
//! * [`forward`]: the pure forwarding decision, `decide()`, and the port table it reads.
//! * [`sys`]: the only `unsafe` code: TPACKET ring, TX socket, TAP devices, attached netdevs,
//!   capabilities.
//! * [`net`]: rtnetlink and network-namespace helpers.
//! * [`engine`]: the worker loop that moves frames and counts them, and the observers that record
//!   them.
//! * [`control`]: the daemon that runs the engine and changes it while it forwards, its plan
//!   checks, watchers, configuration and port specs, and its socket: protocol, server, client.
//! * [`cni`]: the CNI plugin `umacvlan-cni` (a client of the control socket).
//! * [`cli`]: the command line `umacvlan`.
//! * `lab` (private): `umacvlan lab`, a self-contained lab in namespaces that checks the engine
//!   against the rules.
//! * `fuzzing`: the fuzz targets' bodies (`fuzz/`), also run as unit tests; only with the
//!   `fuzzing` feature (which `fuzz/` turns on) or under `cargo test`.
//!
//! # What is public
//!
//! A module is public when something outside the library uses it: `tests/`, `benches/`, the
//! tools (`tools/bench`, `tools/soak`), the two binaries or `fuzz/`. The others are
//! `pub(crate)`: `control`'s daemon, plan, watchers, server, report and service; `engine`'s
//! workers, devices, admission, stream ports, priority and `--ring auto` policy; `sys`'s TAP,
//! attach, memberships, capabilities and scheduling; `net`'s netlink, monitor, multicast and
//! CIDR modules (the types used outside are re-exported by `net` and `sys`); the CNI plugin's
//! parts but its configuration; `cli`'s subcommands but `link`; and `lab`.
//!
//! The test kit (`net::testutil`: namespaces that delete themselves, `ip` helpers, the root
//! check; `wire::ring_format::fake_v3_block`, a ring block in memory) exists only under `cargo test` and with the `testkit` feature, which `tests/` (through
//! this package's dev-dependency on itself) and `tools/soak` enable: a normal build of the
//! library does not have it.
#![deny(unsafe_code)]

pub mod cli;
pub mod cni;
pub mod control;
pub mod engine;
pub mod errors;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod lab;
pub mod net;
#[allow(unsafe_code)]
pub mod sys;
pub mod wire;
