//! Ethernet MAC addresses: parsing, printing (`aa:bb:cc:dd:ee:ff`, as `ip link` prints them) and
//! the address-class predicates macvlan's decisions turn on.
//!
//! Nothing here allocates; every predicate is `const`.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet (IEEE 802) MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    #[error("{0:?} is not a MAC address: expected six hex bytes like 02:00:5e:10:00:01")]
    Syntax(String),
}

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The group (I/G) bit: multicast or broadcast.
    pub const fn is_group(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_broadcast(&self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// A group address that is not broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.is_group() && !self.is_broadcast()
    }

    pub const fn is_zero(&self) -> bool {
        matches!(self.0, [0, 0, 0, 0, 0, 0])
    }

    /// The U/L bit: the address was assigned locally, not by a vendor.
    pub const fn is_local_admin(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// What the kernel's `is_valid_ether_addr` accepts as a device address: unicast and not zero.
    pub const fn is_valid_unicast(&self) -> bool {
        !self.is_group() && !self.is_zero()
    }

    /// The IEEE 802.3x PAUSE destination, 01:80:c2:00:00:01.
    pub const PAUSE: MacAddr = MacAddr([0x01, 0x80, 0xc2, 0x00, 0x00, 0x01]);

    /// A stable, locally administered unicast address derived from `seed` (FNV-1a, 64 bit):
    /// the same seed gives the same MAC on every run and every machine.
    pub fn derived(seed: &[u8]) -> MacAddr {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in seed {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        // Clear the group bit, set the locally-administered bit.
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, either case, one or two hex digits per
    /// byte (as `ip link` does).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError::Syntax(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_like_ip() {
        let m: MacAddr = "02:AB:0:1:fe:Ff".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0x00, 0x01, 0xfe, 0xff]);
        assert_eq!(m.to_string(), "02:ab:00:01:fe:ff");
        assert_eq!("02-ab-00-01-fe-ff".parse::<MacAddr>().unwrap(), m);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:123",
            "02::00:00:00:00",
            "02:00:00:00:00:00:",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(e.to_string().contains("not a MAC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn classes() {
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_group());
        assert!(!MacAddr::BROADCAST.is_multicast());
        let mc: MacAddr = "01:00:5e:01:02:03".parse().unwrap();
        assert!(mc.is_multicast() && !mc.is_broadcast() && !mc.is_valid_unicast());
        assert!(!MacAddr::ZERO.is_valid_unicast());
        let la: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        assert!(la.is_local_admin() && la.is_valid_unicast());
        let oui: MacAddr = "00:16:3e:00:00:01".parse().unwrap();
        assert!(!oui.is_local_admin());
    }

    #[test]
    fn derived_is_stable_local_unicast_and_distinct() {
        let a = MacAddr::derived(b"eth0/c1");
        assert_eq!(a, MacAddr::derived(b"eth0/c1"));
        assert_ne!(a, MacAddr::derived(b"eth0/c2"));
        assert!(a.is_valid_unicast() && a.is_local_admin());
    }

    #[test]
    fn serde_round_trip() {
        let m: MacAddr = "02:00:00:00:00:07".parse().unwrap();
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:00:00:00:00:07\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
