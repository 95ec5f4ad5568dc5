//! [`Cidr`]: an IPv4 or IPv6 address with a prefix length (`192.0.2.1/24`, `2001:db8::1/64`), as
//! a host port's `address=` and `route=` take them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address and a prefix length; the prefix fits the family (≤ 32 or ≤ 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not ADDRESS/PREFIX (e.g. 192.0.2.1/24 or 2001:db8::1/64)")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be 0..={max}")]
    Prefix { text: String, max: u8 },
}

impl Cidr {
    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// The first address of the network (host bits cleared).
    pub fn network(self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len));
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(a) & mask.unwrap_or(0)))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len));
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(a) & mask.unwrap_or(0)))
            }
        };
        Cidr { addr, ..self }
    }

    /// Whether no host bit is set (a route destination must be a network).
    pub fn is_network(self) -> bool {
        self.network() == self
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = Cidr::max_prefix(addr);
        let prefix_len = len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max && !len.starts_with('+'))
            .ok_or_else(|| CidrError::Prefix {
                text: s.to_string(),
                max,
            })?;
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_and_finds_the_network() {
        let c: Cidr = "192.0.2.77/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.77/24");
        assert_eq!(c.network().to_string(), "192.0.2.0/24");
        assert!(!c.is_network());
        assert!("192.0.2.77/32".parse::<Cidr>().unwrap().is_network());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().is_network());
        let v6: Cidr = "2001:db8::1/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "2001:db8::/64");
        assert_eq!(
            serde_json::to_string(&v6).unwrap(),
            "\"2001:db8::1/64\"".to_string()
        );
        for (bad, want) in [
            ("192.0.2.1", "is not ADDRESS/PREFIX"),
            ("192.0.2/24", "is not ADDRESS/PREFIX"),
            ("192.0.2.1/33", "0..=32"),
            ("2001:db8::1/129", "0..=128"),
            ("192.0.2.1/+8", "0..=32"),
            ("192.0.2.1/x", "0..=32"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
