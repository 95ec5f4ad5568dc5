//! What the kernel's macvlan asks of its lower device for a table's ports (docs/design.md#passthru,
//! #the-parent-and-the-control-plane): its promiscuity and allmulti counts and the addresses in its
//! unicast and multicast filters. Pure: the engine hands the answer to a membership holder on the
//! parent ([`crate::sys::membership`]), which the kernel drops with the holder's sockets.
//!
//! The rule, per UP port (`macvlan_open`, `macvlan_change_rx_flags`, `macvlan_set_mac_lists`):
//! * passthru: promiscuity +1 unless NOPROMISC; no unicast address (the port has the parent's);
//! * any other mode: its MAC goes into the parent's unicast filter (`dev_uc_add`). A parent
//!   without IFF_UNICAST_FLT (veth, bridge) turns that into promiscuity +1 by itself
//!   (`__dev_set_rx_mode`, uc_promisc), however many addresses there are; a NIC filters them.
//!   Its own PROMISC adds +1 to the parent's promiscuity (not passed on for passthru in 6.18);
//! * every mode: its ALLMULTI adds +1 to the parent's allmulti, and its joined groups go into the
//!   parent's multicast filter (`dev_mc_sync`).
//!
//! A DOWN port asks nothing, so with no port up the parent's promiscuity is what it was.

use std::collections::BTreeSet;

use crate::wire::mac::MacAddr;

use super::table::{Mode, PortTable};

/// What a table's ports ask of the parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowerFilter {
    /// How many times the parent's promiscuity is raised (`dev_set_promiscuity(lower, 1)`).
    pub promisc: usize,
    /// How many times its allmulti is raised.
    pub allmulti: usize,
    /// Addresses added to its unicast filter.
    pub unicast: BTreeSet<MacAddr>,
    /// Groups added to its multicast filter.
    pub multicast: BTreeSet<MacAddr>,
}

impl LowerFilter {
    /// What `table`'s UP ports ask of its parent.
    pub fn of(table: &PortTable) -> LowerFilter {
        let mut f = LowerFilter::default();
        for p in table.ports().iter().filter(|p| p.is_up()) {
            let c = &p.config;
            if c.mode == Mode::Passthru {
                f.promisc += usize::from(!c.flags.nopromisc);
            } else {
                f.unicast.insert(c.mac);
                f.promisc += usize::from(c.promisc);
            }
            f.allmulti += usize::from(c.allmulti);
            f.multicast.extend(c.groups.iter().copied());
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::{ParentConfig, PortConfig};

    const PARENT: MacAddr = MacAddr([2, 0, 0, 0, 1, 0]);

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    fn filter(ports: Vec<PortConfig>) -> LowerFilter {
        let t = PortTable::build(ParentConfig::new("p0", PARENT, 1500), ports).unwrap();
        LowerFilter::of(&t)
    }

    fn port(mode: Mode, i: u8, up: bool) -> PortConfig {
        let mut p = PortConfig::new(format!("c{i}"), mode, mac(i));
        p.up = up;
        p
    }

    #[test]
    fn no_port_up_asks_nothing() {
        assert_eq!(filter(vec![]), LowerFilter::default());
        let down = vec![port(Mode::Bridge, 1, false), port(Mode::Source, 2, false)];
        assert_eq!(filter(down), LowerFilter::default());
        assert_eq!(
            filter(vec![port(Mode::Passthru, 1, false)]),
            LowerFilter::default()
        );
    }

    #[test]
    fn passthru_up_raises_promiscuity_unless_nopromisc() {
        let f = filter(vec![port(Mode::Passthru, 1, true)]);
        assert_eq!((f.promisc, f.unicast.len()), (1, 0), "no unicast address");
        let mut nopromisc = port(Mode::Passthru, 1, true);
        nopromisc.flags.nopromisc = true;
        assert_eq!(filter(vec![nopromisc]), LowerFilter::default());
    }

    #[test]
    fn other_modes_add_their_mac_and_their_own_flags() {
        let mut b = port(Mode::Bridge, 1, true);
        b.promisc = true;
        b.groups.insert(MacAddr([1, 0, 0x5e, 0, 0, 9]));
        let mut s = port(Mode::Source, 2, true);
        s.allmulti = true;
        let f = filter(vec![b, s, port(Mode::Vepa, 3, false)]);
        assert_eq!(f.unicast, [mac(1), mac(2)].into_iter().collect());
        assert_eq!((f.promisc, f.allmulti), (1, 1));
        assert_eq!(f.multicast.len(), 1);
    }

    #[test]
    fn a_passthru_ports_own_promisc_is_not_passed_on() {
        let mut pt = port(Mode::Passthru, 1, true);
        pt.flags.nopromisc = true;
        pt.promisc = true;
        assert_eq!(filter(vec![pt]).promisc, 0);
    }
}
