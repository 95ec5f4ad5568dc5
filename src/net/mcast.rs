//! A device's link-layer multicast list, exactly as `ip maddr show dev X` lists it at link level.
//!
//! The only complete source is `dev_mcast` in procfs: `ip maddr add 01:00:5e:…` (an L2-only
//! change) sends no netlink message at all, and RTM_NEWMULTICAST covers IP group joins only
//! (see crates.md §4). `/proc/net` follows the *process's* namespace, `/proc/thread-self/net` the
//! calling thread's, so the file is read on a thread inside the namespace ([`in_netns`]).

use std::collections::BTreeSet;
use std::fs;

use super::error::{Error, Result};
use super::netns::{Netns, in_netns};
use crate::wire::mac::MacAddr;

/// One line of `dev_mcast`: `ifindex name refcount global_use hexaddr`
/// (kernel `dev_mc_seq_show`: `"%-4d %-15s %-5d %-5d %*phN\n"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevMcastEntry {
    pub ifindex: u32,
    pub name: String,
    pub refcount: u32,
    /// 1 if added with `dev_mc_add_global` (e.g. `ip maddr add`), else 0.
    pub global_use: u32,
    /// The address bytes (6 for Ethernet; other link types have other lengths).
    pub addr: Vec<u8>,
}

impl DevMcastEntry {
    /// The address as a MAC, if it is 6 bytes long.
    pub fn mac(&self) -> Option<MacAddr> {
        <[u8; 6]>::try_from(self.addr.as_slice()).ok().map(MacAddr)
    }
}

/// Parse the text of `/proc/.../net/dev_mcast`. A malformed line is an error that quotes it.
pub fn parse_dev_mcast(text: &str) -> std::result::Result<Vec<DevMcastEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("dev_mcast line {}: {why}: {line:?}", n + 1);
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ifindex, name, refcount, global_use, hex] = f[..] else {
            return Err(bad("expected 5 fields"));
        };
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad("bad number"));
        if hex.len() % 2 != 0 || hex.is_empty() {
            return Err(bad("bad hex address"));
        }
        let addr = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| bad("bad hex address"))?;
        out.push(DevMcastEntry {
            ifindex: num(ifindex)?,
            name: name.to_string(),
            refcount: num(refcount)?,
            global_use: num(global_use)?,
            addr,
        });
    }
    Ok(out)
}

/// Device names from the text of `/proc/.../net/dev` (two header lines, then `name: counters`).
pub fn parse_proc_net_dev_names(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// The link-layer multicast addresses of device `ifname` in `netns`. A device with no multicast
/// addresses gives an empty set; a device that does not exist is [`Error::NoSuchLink`].
pub fn link_multicast(netns: &Netns, ifname: &str) -> Result<BTreeSet<MacAddr>> {
    in_netns(netns, || link_multicast_here(ifname)).and_then(|r| r)
}

/// [`link_multicast`] for the calling thread's own namespace (`/proc/thread-self/net`), for a
/// thread that lives in the namespace already.
pub fn link_multicast_here(ifname: &str) -> Result<BTreeSet<MacAddr>> {
    let read = |p: &str| fs::read_to_string(p).map_err(|e| Error::sys(format!("read {p}"), e));
    let mcast = read("/proc/thread-self/net/dev_mcast")?;
    let dev = read("/proc/thread-self/net/dev")?;
    let entries = parse_dev_mcast(&mcast).map_err(|detail| Error::Protocol {
        op: format!("read the multicast list of {ifname:?}"),
        detail,
    })?;
    let set: BTreeSet<MacAddr> = entries
        .iter()
        .filter(|e| e.name == ifname)
        .filter_map(DevMcastEntry::mac)
        .collect();
    if set.is_empty() && !parse_proc_net_dev_names(&dev).iter().any(|n| n == ifname) {
        return Err(Error::NoSuchLink {
            name: ifname.to_string(),
            netns: "the current namespace".to_string(),
        });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1    lo              1     0     01005e000001
1    lo              1     0     333300000001
2    veth0           1     0     333300000001
2    veth0           1     1     01005e010203
2    veth0           2     0     3333ff4c5e3a
7    ib0             1     0     00ffffffff12601bffff000000000000ffffffff
";

    #[test]
    fn parses_the_kernel_format() {
        let e = parse_dev_mcast(SAMPLE).unwrap();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[3],
            DevMcastEntry {
                ifindex: 2,
                name: "veth0".into(),
                refcount: 1,
                global_use: 1,
                addr: vec![0x01, 0x00, 0x5e, 0x01, 0x02, 0x03],
            }
        );
        assert_eq!(e[3].mac().unwrap().to_string(), "01:00:5e:01:02:03");
        assert_eq!(e[4].refcount, 2);
        assert_eq!(e[5].addr.len(), 20);
        assert_eq!(e[5].mac(), None);
    }

    #[test]
    fn empty_file_is_empty() {
        assert!(parse_dev_mcast("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_that_quote_the_line() {
        for bad in [
            "1 lo 1 0",
            "x lo 1 0 01005e000001",
            "1 lo 1 0 01005e00000",
            "1 lo 1 0 zz005e000001",
            "1 lo 1 0 01005e000001 extra",
        ] {
            let e = parse_dev_mcast(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn proc_net_dev_names() {
        let text = "\
Inter-|   Receive                            |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets
    lo:       0       0    0    0    0     0          0         0        0       0
 veth0:    1234      10    0    0    0     0          0         0     5678      20
";
        assert_eq!(parse_proc_net_dev_names(text), vec!["lo", "veth0"]);
    }
}
