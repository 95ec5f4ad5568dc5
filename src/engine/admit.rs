//! When an up port may forward: the kernel's busy-address rule (`macvlan_addr_busy`) at the
//! moment the kernel applies it.
//!
//! The kernel checks a child's MAC when the child **opens** (`ip link set up`) and when an address
//! is **changed** (`macvlan_set_mac_address`, up or down): the MAC must be neither the parent's
//! nor an UP child's, else EADDRINUSE. Creation checks nothing, so two down children may share a
//! MAC (a VRRP standby pair), and a child that is already up keeps forwarding when the *parent*
//! later takes its MAC. A TAP cannot refuse `ip link set up` or a new address in its namespace,
//! so the engine applies the rule to what the watcher reports instead: a port whose TAP came up
//! (or changed MAC while up) on a busy MAC is kept out of the table — it is "refused" — until
//! its MAC or its state changes again. This module is that decision, pure and table-free.

use crate::forward::Mode;
use crate::wire::mac::MacAddr;

/// One port as the admission rule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub mode: Mode,
    /// Admin up (the TAP's IFF_UP; a stream port is always up).
    pub up: bool,
    pub mac: MacAddr,
    /// The MAC this port was admitted with the last time (it is in the table with it);
    /// `None`: not admitted.
    pub admitted: Option<MacAddr>,
}

/// Why an up port is kept out of the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("MAC {mac} is the parent's (EADDRINUSE)")]
    ParentMac { mac: MacAddr },
    #[error("MAC {mac} is port {owner}'s, which is up (EADDRINUSE)")]
    Busy { mac: MacAddr, owner: String },
    #[error("MAC {mac} is a group or zero address (EADDRNOTAVAIL)")]
    Invalid { mac: MacAddr },
}

/// The verdict for each candidate, in order: `Ok(Some(mac))` admitted with `mac`, `Ok(None)`
/// down, `Err` refused. Ports admitted before with the MAC they still have keep their place
/// first (the kernel never evicts an open child); the others are checked in order against the
/// parent's MAC and every MAC admitted so far. Passthru takes the parent's MAC and is never
/// checked (`macvlan_open` skips the check for it).
pub fn admit(
    parent_mac: MacAddr,
    ports: &[Candidate<'_>],
) -> Vec<Result<Option<MacAddr>, Refusal>> {
    let mut out: Vec<Option<Result<Option<MacAddr>, Refusal>>> = vec![None; ports.len()];
    let mut taken: Vec<(MacAddr, &str)> = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        if !p.up {
            out[i] = Some(Ok(None));
        } else if p.mode == Mode::Passthru {
            out[i] = Some(Ok(Some(parent_mac)));
        } else if p.admitted == Some(p.mac) && !taken.iter().any(|(m, _)| *m == p.mac) {
            taken.push((p.mac, p.name));
            out[i] = Some(Ok(Some(p.mac)));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let verdict = if !p.mac.is_valid_unicast() {
            Err(Refusal::Invalid { mac: p.mac })
        } else if p.mac == parent_mac {
            Err(Refusal::ParentMac { mac: p.mac })
        } else if let Some((_, owner)) = taken.iter().find(|(m, _)| *m == p.mac) {
            Err(Refusal::Busy {
                mac: p.mac,
                owner: owner.to_string(),
            })
        } else {
            taken.push((p.mac, p.name));
            Ok(Some(p.mac))
        };
        out[i] = Some(verdict);
    }
    out.into_iter().map(|v| v.expect("decided")).collect()
}

/// A change of address is refused when the new MAC is busy: the parent's, or that of another
/// port admitted to the table (`macvlan_set_mac_address`, for up and down children alike).
pub fn address_busy(
    parent_mac: MacAddr,
    mac: MacAddr,
    others: impl IntoIterator<Item = (String, Option<MacAddr>)>,
) -> Option<Refusal> {
    if !mac.is_valid_unicast() {
        return Some(Refusal::Invalid { mac });
    }
    if mac == parent_mac {
        return Some(Refusal::ParentMac { mac });
    }
    others
        .into_iter()
        .find(|(_, admitted)| *admitted == Some(mac))
        .map(|(owner, _)| Refusal::Busy { mac, owner })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xff]);
    const M1: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    fn c(name: &str, up: bool, mac: MacAddr, admitted: Option<MacAddr>) -> Candidate<'_> {
        Candidate {
            name,
            mode: Mode::Bridge,
            up,
            mac,
            admitted,
        }
    }

    #[test]
    fn down_ports_may_share_a_mac_and_hold_the_parents() {
        let v = admit(
            PARENT,
            &[
                c("a", false, M1, None),
                c("b", false, M1, None),
                c("p", false, PARENT, None),
            ],
        );
        assert_eq!(v, vec![Ok(None), Ok(None), Ok(None)]);
    }

    #[test]
    fn opening_on_the_parents_mac_is_refused() {
        let v = admit(PARENT, &[c("a", true, PARENT, None)]);
        assert_eq!(v, vec![Err(Refusal::ParentMac { mac: PARENT })]);
    }

    #[test]
    fn the_second_up_port_on_a_mac_is_refused_and_the_first_keeps_it() {
        // b was admitted first; a comes up later on the same MAC and is refused, whatever the
        // order of the list.
        let v = admit(
            PARENT,
            &[c("a", true, M1, None), c("b", true, M1, Some(M1))],
        );
        assert_eq!(
            v,
            vec![
                Err(Refusal::Busy {
                    mac: M1,
                    owner: "b".into()
                }),
                Ok(Some(M1))
            ]
        );
    }

    #[test]
    fn an_admitted_port_stays_when_the_parent_takes_its_mac() {
        // The kernel does not refuse a change of the lower's MAC to an up child's.
        let v = admit(M1, &[c("a", true, M1, Some(M1))]);
        assert_eq!(v, vec![Ok(Some(M1))]);
        // ... but the same port coming up again is refused.
        let v = admit(M1, &[c("a", true, M1, None)]);
        assert_eq!(v, vec![Err(Refusal::ParentMac { mac: M1 })]);
    }

    #[test]
    fn a_changed_mac_is_checked_again() {
        let v = admit(
            PARENT,
            &[c("a", true, M2, Some(M1)), c("b", true, M2, Some(M2))],
        );
        assert_eq!(v[1], Ok(Some(M2)));
        assert!(matches!(&v[0], Err(Refusal::Busy { owner, .. }) if owner == "b"));
    }

    #[test]
    fn a_refused_port_is_admitted_once_its_mac_is_free() {
        let v = admit(PARENT, &[c("a", true, M1, None), c("b", false, M1, None)]);
        assert_eq!(v, vec![Ok(Some(M1)), Ok(None)]);
    }

    #[test]
    fn passthru_takes_the_parents_mac_unchecked() {
        let mut p = c("pt", true, M1, None);
        p.mode = Mode::Passthru;
        assert_eq!(admit(PARENT, &[p]), vec![Ok(Some(PARENT))]);
    }

    #[test]
    fn group_macs_are_never_admitted() {
        let g = MacAddr([1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(
            admit(PARENT, &[c("a", true, g, None)]),
            vec![Err(Refusal::Invalid { mac: g })]
        );
    }

    #[test]
    fn a_new_address_is_busy_when_the_parent_or_an_admitted_port_holds_it() {
        let others = || vec![("a".to_string(), Some(M1)), ("b".to_string(), None)];
        assert_eq!(
            address_busy(PARENT, PARENT, others()),
            Some(Refusal::ParentMac { mac: PARENT })
        );
        assert_eq!(
            address_busy(PARENT, M1, others()),
            Some(Refusal::Busy {
                mac: M1,
                owner: "a".into()
            })
        );
        // b holds M2 only in its configuration (down): taking it is allowed, as in the kernel.
        assert_eq!(address_busy(PARENT, M2, others()), None);
    }
}
