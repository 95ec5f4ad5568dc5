//! Differential test, kernel arm: the kernel's own macvlan (the reference) against `decide()`.
//!
//! Every scenario of [`common::parity::Scenario`] is built with kernel macvlan children, once
//! without and once with a hairpin switch on the wire; every ingress (the wire, each child, the
//! host) sends a probe to every destination class; the children and the wire must see exactly what
//! `decide()` predicts, except that the kernel may deliver an unjoined multicast group to a child
//! whose hashed filter collides with it (docs/design.md#multicast-filters-and-the-broadcast-queue).
//! What the host's own stack got is printed, not asserted
//! (docs/design.md#differences-from-the-kernel). Needs root; fails without it.
//!
//! Run with `cargo test --test kernel_parity -- --nocapture` to see the per-scenario summaries.

mod common;

use common::{ChildrenProvider, ETH_P_ALL, EXT_MAC, PacketSocket, ip, require_root, test_frame};

common::parity::parity_tests!(ChildrenProvider::Kernel, "kernel");

/// What an AF_PACKET SOCK_RAW send does with runt and oversize frames on a veth (MTU 1500),
/// which decides what the parity probes can put on the wire at all:
/// * fewer than 14 bytes: EINVAL (`dev_validate_header`, below `min_header_len`), even as root;
///   a runt never reaches the wire, so umacvlan's Runt drop cannot be tested differentially;
/// * exactly 14 bytes (a bare header) is sent;
/// * MTU + 14 bytes is sent, MTU + 15 is EMSGSIZE;
/// * with an inline 802.1Q tag, MTU + 18 is sent and MTU + 19 is EMSGSIZE
///   (`packet_extra_vlan_len_allowed`).
#[test]
fn af_packet_send_limits_on_veth() {
    require_root();
    let ns = common::netns("limits");
    let n = ns.name();
    common::disable_ipv6(n);
    ip(
        n,
        &[
            "link", "add", "name", "va", "type", "veth", "peer", "name", "vb",
        ],
    );
    ip(n, &["link", "set", "va", "up"]);
    ip(n, &["link", "set", "vb", "up"]);
    let a = PacketSocket::open(n, "va", ETH_P_ALL);
    let dst = umacvlan::wire::mac::MacAddr::BROADCAST;
    let errno = |len: usize, vlan: Option<u16>| -> Option<i32> {
        let mut f = test_frame(dst, EXT_MAC, vlan, 1, len.max(40));
        f.truncate(len);
        a.send(&f).err().map(|e| e.raw_os_error().unwrap_or(-1))
    };
    let mtu = 1500;
    let got = [
        ("13 bytes", errno(13, None)),
        ("14 bytes", errno(14, None)),
        ("MTU+14", errno(mtu + 14, None)),
        ("MTU+15", errno(mtu + 15, None)),
        ("tagged MTU+18", errno(mtu + 18, Some(7))),
        ("tagged MTU+19", errno(mtu + 19, Some(7))),
    ];
    let want = [
        ("13 bytes", Some(libc::EINVAL)),
        ("14 bytes", None),
        ("MTU+14", None),
        ("MTU+15", Some(libc::EMSGSIZE)),
        ("tagged MTU+18", None),
        ("tagged MTU+19", Some(libc::EMSGSIZE)),
    ];
    assert_eq!(
        got, want,
        "AF_PACKET send limits on a veth changed (errno values)"
    );
    drop(a);
}
