//! [`Memberships`]: what the engine's ports ask of the parent (its promiscuity, allmulti, and the
//! addresses in its unicast and multicast filters), held as `PACKET_ADD_MEMBERSHIP`s on
//! `AF_PACKET` sockets of protocol 0, which receive nothing.
//!
//! A membership is the packet-socket form of what the kernel's macvlan does to its lower:
//! `PACKET_MR_PROMISC` is `dev_set_promiscuity(dev, 1)`, `PACKET_MR_ALLMULTI` is
//! `dev_set_allmulti(dev, 1)`, `PACKET_MR_UNICAST` is `dev_uc_add` (on a device without
//! IFF_UNICAST_FLT, such as veth or a bridge, the kernel turns a non-empty unicast list into one
//! promiscuity of its own) and `PACKET_MR_MULTICAST` is `dev_mc_add`. The kernel drops a
//! socket's memberships when it closes, so an engine that dies leaves the parent as it found it.
//!
//! One socket holds each address once, and a type without an address counts once per socket, so
//! every unit of promiscuity and allmulti gets a socket of its own.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::forward::LowerFilter;
use crate::wire::mac::MacAddr;

use super::{packet_socket, set_packet_opt};

/// The parent's memberships, changed to what a table asks with [`Memberships::apply`].
#[derive(Debug)]
pub struct Memberships {
    ifindex: libc::c_int,
    /// The unicast and multicast addresses, one membership each.
    addrs: OwnedFd,
    unicast: BTreeSet<MacAddr>,
    multicast: BTreeSet<MacAddr>,
    /// One socket per unit of promiscuity, one per unit of allmulti.
    promisc: Vec<OwnedFd>,
    allmulti: Vec<OwnedFd>,
}

impl Memberships {
    /// Holds nothing yet on `ifindex`.
    pub fn open(ifindex: u32) -> io::Result<Memberships> {
        Ok(Memberships {
            ifindex: libc::c_int::try_from(ifindex).map_err(io::Error::other)?,
            addrs: packet_socket(None)?,
            unicast: BTreeSet::new(),
            multicast: BTreeSet::new(),
            promisc: Vec::new(),
            allmulti: Vec::new(),
        })
    }

    /// Adds and drops memberships until they are `want`. On an error the memberships taken so
    /// far stay, and the next call picks up from there. Call it in the network namespace `open`
    /// ran in: a unit of promiscuity or allmulti is a new socket, and a socket belongs to the
    /// namespace it is created in (the engine's control thread never leaves its own).
    pub fn apply(&mut self, want: &LowerFilter) -> io::Result<()> {
        // Drops first: a MAC moving from one port to another is never in the filter twice.
        for (held, wanted, ty) in [
            (&mut self.unicast, &want.unicast, libc::PACKET_MR_UNICAST),
            (
                &mut self.multicast,
                &want.multicast,
                libc::PACKET_MR_MULTICAST,
            ),
        ] {
            for mac in held.difference(wanted).copied().collect::<Vec<_>>() {
                let mreq = mreq(self.ifindex, ty, Some(mac));
                set_packet_opt(self.addrs.as_fd(), libc::PACKET_DROP_MEMBERSHIP, &mreq)?;
                held.remove(&mac);
            }
        }
        for (held, wanted, ty) in [
            (&mut self.unicast, &want.unicast, libc::PACKET_MR_UNICAST),
            (
                &mut self.multicast,
                &want.multicast,
                libc::PACKET_MR_MULTICAST,
            ),
        ] {
            for mac in wanted.difference(held).copied().collect::<Vec<_>>() {
                let mreq = mreq(self.ifindex, ty, Some(mac));
                set_packet_opt(self.addrs.as_fd(), libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
                held.insert(mac);
            }
        }
        for (held, n, ty) in [
            (&mut self.promisc, want.promisc, libc::PACKET_MR_PROMISC),
            (&mut self.allmulti, want.allmulti, libc::PACKET_MR_ALLMULTI),
        ] {
            // Closing a socket drops its membership.
            held.truncate(n);
            while held.len() < n {
                let fd = packet_socket(None)?;
                let mreq = mreq(self.ifindex, ty, None);
                set_packet_opt(fd.as_fd(), libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
                held.push(fd);
            }
        }
        Ok(())
    }

    /// What is held now.
    pub fn held(&self) -> LowerFilter {
        LowerFilter {
            promisc: self.promisc.len(),
            allmulti: self.allmulti.len(),
            unicast: self.unicast.clone(),
            multicast: self.multicast.clone(),
        }
    }
}

fn mreq(ifindex: libc::c_int, ty: libc::c_int, mac: Option<MacAddr>) -> libc::packet_mreq {
    let mut mr_address = [0u8; 8];
    if let Some(m) = mac {
        mr_address[..6].copy_from_slice(&m.0);
    }
    libc::packet_mreq {
        mr_ifindex: ifindex,
        mr_type: libc::c_ushort::try_from(ty).expect("PACKET_MR_* values are small"),
        mr_alen: if mac.is_some() { 6 } else { 0 },
        mr_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_address_only_with_one() {
        let m = MacAddr([2, 0, 0, 0, 0, 7]);
        let r = mreq(4, libc::PACKET_MR_UNICAST, Some(m));
        assert_eq!((r.mr_ifindex, r.mr_alen), (4, 6));
        assert_eq!(r.mr_address, [2, 0, 0, 0, 0, 7, 0, 0]);
        let r = mreq(4, libc::PACKET_MR_PROMISC, None);
        assert_eq!((r.mr_alen, r.mr_address), (0, [0; 8]));
        assert_eq!(libc::PACKET_MR_MULTICAST, 0);
        assert_eq!(libc::PACKET_MR_ALLMULTI, 2);
        assert_eq!(libc::PACKET_MR_UNICAST, 3);
        assert_eq!(libc::PACKET_DROP_MEMBERSHIP, 2);
    }

    mod root {
        use super::*;
        use crate::sys::ring::{RingConfig, RxRing};
        use crate::sys::testns::{NetNs, ifindex};

        fn promiscuity(ns: &NetNs, dev: &str) -> u64 {
            let out = ns.ip_output(&["-d", "-j", "link", "show", "dev", dev]);
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v[0]["promiscuity"].as_u64().unwrap()
        }

        /// On a veth (no IFF_UNICAST_FLT) unicast addresses make it promiscuous once, as the
        /// kernel's macvlan children do; PROMISC units add up; closing drops everything. No ring
        /// (V3, V2, a fanout group, a steered pair) makes the parent promiscuous by itself.
        #[test]
        fn memberships_move_the_parents_promiscuity_and_rings_do_not() {
            let ns = NetNs::new();
            ns.veth("va", "vb");
            let rings = ns.run(|| {
                let i = ifindex("vb");
                (
                    RxRing::open(i, RingConfig::DEFAULT).unwrap(),
                    RxRing::open(i, RingConfig::V2).unwrap(),
                    RxRing::open_fanout(i, RingConfig::DEFAULT, 2).unwrap(),
                    RxRing::open_steered(i, RingConfig::DEFAULT, RingConfig::V2).unwrap(),
                )
            });
            assert_eq!(promiscuity(&ns, "vb"), 0, "rings alone");
            let mut m = ns.run(|| Memberships::open(ifindex("vb"))).unwrap();
            let mac = |i: u8| MacAddr([2, 0, 0, 0, 0, i]);
            let mut want = LowerFilter {
                unicast: [mac(1), mac(2)].into_iter().collect(),
                multicast: [MacAddr([1, 0, 0x5e, 0, 0, 9])].into_iter().collect(),
                ..LowerFilter::default()
            };
            ns.run(|| m.apply(&want)).unwrap();
            assert_eq!(promiscuity(&ns, "vb"), 1, "two addresses: uc_promisc once");
            assert!(
                ns.ip_output(&["maddr", "show", "dev", "vb"])
                    .contains("01:00:5e:00:00:09")
            );
            want.unicast.clear();
            want.promisc = 2;
            ns.run(|| m.apply(&want)).unwrap();
            assert_eq!(promiscuity(&ns, "vb"), 2);
            assert_eq!(m.held(), want);
            want.promisc = 1;
            ns.run(|| m.apply(&want)).unwrap();
            assert_eq!(promiscuity(&ns, "vb"), 1);
            ns.run(|| m.apply(&LowerFilter::default())).unwrap();
            assert_eq!(promiscuity(&ns, "vb"), 0);
            want.promisc = 1;
            ns.run(|| m.apply(&want)).unwrap();
            drop(m);
            assert_eq!(promiscuity(&ns, "vb"), 0, "closing drops every membership");
            drop(rings);
        }
    }
}
