//! The `--port` grammar shared by `umacvlan run` and `umacvlan trace`:
//!
//! ```text
//! name=N[,mode=M][,netns=NS][,mac=MAC][,mtu=N][,flag=nopromisc|nodst][,bcqueuelen=N][,source=MAC+MAC..]
//!       [,kind=tap|host|attach|stream][,path=SOCKET][,trust_guest_mac]
//!       [,ifname=DEV][,address=CIDR+CIDR..][,route=CIDR+CIDR..][,persist]
//! ```
//!
//! `netns` is a name from `ip netns add` or an absolute path to a namespace file
//! (`/proc/PID/ns/net`, `/var/run/netns/X`: what CNI passes). `ifname` is the device's name in
//! its namespace when it must differ from the port's name (the port's name is unique in the
//! engine; CNI names every container's device `eth0`).
//!
//! `name=N,mode=M[,netns=NS][,mac=MAC][,mtu=N]` is a stable contract: other tools drive the
//! engine with it. Keys may be added, never removed or changed. `trace` also accepts the keys
//! that describe a port's live state (`down`, `promisc`, `allmulti`, `join=GROUP+GROUP`), which
//! `run` reads from the TAP itself.

use std::collections::BTreeSet;
use std::str::FromStr;

use crate::forward::{Mode, ModeParseError, PortConfig, PortFlags};
use crate::net::Cidr;
use crate::net::cidr::CidrError;
use crate::wire::mac::{MacAddr, MacParseError};

/// Why a host port refuses any mode but bridge (also `link set`'s answer).
pub const HOST_MODE: &str =
    "a host port is a bridge-mode port (mode bridge): only bridge siblings are reached locally";

/// The keys every `--port` accepts.
pub const CONFIG_KEYS: &[&str] = &[
    "name",
    "mode",
    "netns",
    "mac",
    "mtu",
    "flag",
    "bcqueuelen",
    "source",
    "kind",
    "address",
    "route",
    "path",
    "trust_guest_mac",
    "ifname",
    "persist",
];
/// The keys `umacvlan link add KEY=VALUE,...` accepts besides [`CONFIG_KEYS`]: the parent
/// (`link` is a synonym, ip's word) and the parent-wide `bclim`.
pub const LINK_KEYS: &[&str] = &["parent", "link", "bclim"];
/// The keys that describe live port state; `trace` only.
pub const STATE_KEYS: &[&str] = &["down", "promisc", "allmulti", "join"];

/// A port's live state as `trace` describes it (the engine reads it from the TAP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    pub down: bool,
    pub promisc: bool,
    pub allmulti: bool,
    pub groups: BTreeSet<MacAddr>,
}

impl PortState {
    pub fn is_default(&self) -> bool {
        *self == PortState::default()
    }
}

/// What a port is: a TAP the engine creates (containers), a host port, or a VM's connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// A TAP the engine creates and owns (the default).
    #[default]
    Tap,
    /// A host port: a bridge-mode TAP left in the engine's own namespace with addresses and
    /// routes, so that the host reaches its bridge-mode siblings (which the kernel's macvlan
    /// never lets it do through the parent).
    Host,
    /// An existing netdev someone else owns (a hypervisor's TAP), reached with a packet socket.
    Attach,
    /// A Unix socket with QEMU's stream framing (`-netdev stream`).
    Stream,
}

impl PortKind {
    pub const ALL: [PortKind; 4] = [
        PortKind::Tap,
        PortKind::Host,
        PortKind::Attach,
        PortKind::Stream,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Host => "host",
            PortKind::Attach => "attach",
            PortKind::Stream => "stream",
        }
    }

    /// A VM's port: its guest MAC is pinned unless `trust_guest_mac`.
    pub const fn is_vm(self) -> bool {
        !matches!(self, PortKind::Tap | PortKind::Host)
    }
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PortKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PortKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kind {s:?}: expected one of tap, host, attach, stream"))
    }
}

impl serde::Serialize for PortKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PortKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One parsed `--port` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    /// Bridge when not given: the default of Docker, CNI and netavark (`ip link` defaults to vepa).
    pub mode: Mode,
    pub netns: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub flags: PortFlags,
    pub bcqueuelen: Option<u32>,
    pub sources: BTreeSet<MacAddr>,
    pub state: PortState,
    pub kind: PortKind,
    /// A host port's IP addresses and the networks routed through it.
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Cidr>,
    /// A stream port's socket.
    pub path: Option<std::path::PathBuf>,
    /// A VM port may send from any source MAC (no `mac_spoof` check).
    pub trust_guest_mac: bool,
    /// The device's name in its namespace; `None`: the port's name.
    pub ifname: Option<String>,
    /// A persistent TAP: it outlives the engine, and an existing one is adopted.
    pub persist: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--port {spec:?}: unknown key {key:?}; keys are {}", CONFIG_KEYS.join(", "))]
    UnknownKey { spec: String, key: String },
    #[error("--port {spec:?}: {key} is given twice")]
    RepeatedKey { spec: String, key: String },
    #[error("--port {spec:?}: {key} needs a value ({key}=...)")]
    MissingValue { spec: String, key: String },
    #[error("--port {spec:?}: {key} takes no value")]
    UnexpectedValue { spec: String, key: String },
    #[error("--port {spec:?}: name=N is required")]
    MissingName { spec: String },
    #[error("--port {spec:?}: {source}")]
    Mode {
        spec: String,
        source: ModeParseError,
    },
    #[error("--port {spec:?}: {source}")]
    Mac { spec: String, source: MacParseError },
    #[error("--port {spec:?}: {key}={value:?} is not a number")]
    Number {
        spec: String,
        key: String,
        value: String,
    },
    #[error(
        "--port {spec:?}: unknown flag {0:?}; flags are nopromisc and nodst",
        flag
    )]
    Flag { spec: String, flag: String },
    #[error("--port {spec:?}: {source}")]
    Cidr { spec: String, source: CidrError },
    #[error(
        "--port {spec:?}: {key} describes live port state; `run` reads it from the TAP (it is for `trace` only)"
    )]
    StateKey { spec: String, key: String },
    #[error("--port {spec:?}: {message}")]
    Kind { spec: String, message: String },
}

impl FromStr for PortSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let s = || spec.to_string();
        let mut seen: Vec<&str> = Vec::new();
        let mut out = PortSpec {
            name: String::new(),
            mode: Mode::Bridge,
            netns: None,
            mac: None,
            mtu: None,
            flags: PortFlags::default(),
            bcqueuelen: None,
            sources: BTreeSet::new(),
            state: PortState::default(),
            kind: PortKind::Tap,
            addresses: Vec::new(),
            routes: Vec::new(),
            path: None,
            trust_guest_mac: false,
            ifname: None,
            persist: false,
        };
        for item in spec.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            // `flag` may repeat (flag=nodst,flag=nopromisc), like `ip link ... flag`.
            if key != "flag" && seen.contains(&key) {
                return Err(SpecError::RepeatedKey {
                    spec: s(),
                    key: key.into(),
                });
            }
            seen.push(key);
            let is_flag_key = matches!(
                key,
                "down" | "promisc" | "allmulti" | "trust_guest_mac" | "persist"
            );
            let value = match (value, is_flag_key) {
                (Some(_), true) => {
                    return Err(SpecError::UnexpectedValue {
                        spec: s(),
                        key: key.into(),
                    });
                }
                (None, true) => "",
                (Some(v), false) if !v.is_empty() => v,
                _ if CONFIG_KEYS.contains(&key) || STATE_KEYS.contains(&key) => {
                    return Err(SpecError::MissingValue {
                        spec: s(),
                        key: key.into(),
                    });
                }
                _ => {
                    return Err(SpecError::UnknownKey {
                        spec: s(),
                        key: key.into(),
                    });
                }
            };
            let mac = |v: &str| {
                v.parse::<MacAddr>()
                    .map_err(|source| SpecError::Mac { spec: s(), source })
            };
            let macs = |v: &str| v.split('+').map(mac).collect::<Result<BTreeSet<_>, _>>();
            let cidrs = |v: &str| {
                v.split('+')
                    .map(|c| c.parse::<Cidr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| SpecError::Cidr { spec: s(), source })
            };
            let num = |v: &str| {
                v.parse::<u32>().map_err(|_| SpecError::Number {
                    spec: s(),
                    key: key.into(),
                    value: v.into(),
                })
            };
            match key {
                "name" => out.name = value.to_string(),
                "mode" => {
                    out.mode = value
                        .parse()
                        .map_err(|source| SpecError::Mode { spec: s(), source })?
                }
                "netns" => out.netns = Some(value.to_string()),
                "ifname" => out.ifname = Some(value.to_string()),
                "mac" => out.mac = Some(mac(value)?),
                "mtu" => out.mtu = Some(num(value)?),
                "bcqueuelen" => out.bcqueuelen = Some(num(value)?),
                "flag" => match value {
                    "nopromisc" => out.flags.nopromisc = true,
                    "nodst" => out.flags.nodst = true,
                    _ => {
                        return Err(SpecError::Flag {
                            spec: s(),
                            flag: value.into(),
                        });
                    }
                },
                "source" => out.sources = macs(value)?,
                "kind" => {
                    out.kind = value
                        .parse()
                        .map_err(|message| SpecError::Kind { spec: s(), message })?
                }
                "address" => out.addresses = cidrs(value)?,
                "route" => out.routes = cidrs(value)?,
                "path" => out.path = Some(value.into()),
                "trust_guest_mac" => out.trust_guest_mac = true,
                "persist" => out.persist = true,
                "join" => out.state.groups = macs(value)?,
                "down" => out.state.down = true,
                "promisc" => out.state.promisc = true,
                "allmulti" => out.state.allmulti = true,
                _ => {
                    return Err(SpecError::UnknownKey {
                        spec: s(),
                        key: key.into(),
                    });
                }
            }
        }
        if out.name.is_empty() {
            return Err(SpecError::MissingName { spec: s() });
        }
        out.check_kind(spec)?;
        Ok(out)
    }
}

/// The stable, locally administered MAC of a port created without one: derived from the
/// parent's and the port's names, the same on every run and machine.
pub fn derived_mac(parent: &str, port: &str) -> MacAddr {
    MacAddr::derived(format!("umacvlan/{parent}/{port}").as_bytes())
}

impl PortSpec {
    /// The keys that go with the port's kind: a stream port needs `path=` and has no namespace
    /// (nor netdev); `path=` is for stream ports only, `trust_guest_mac` for VM ports only.
    pub fn check_kind(&self, spec: &str) -> Result<(), SpecError> {
        let message = match self.kind {
            PortKind::Stream if self.path.is_none() => {
                "kind=stream needs path=SOCKET (the Unix socket QEMU connects to)"
            }
            PortKind::Stream if self.netns.is_some() => {
                "a stream port is a Unix socket, not a netdev: it has no netns"
            }
            PortKind::Stream if self.path.as_ref().is_some_and(|p| p.is_relative()) => {
                "path= must be absolute"
            }
            PortKind::Tap | PortKind::Attach if self.path.is_some() => {
                "path= is for kind=stream only"
            }
            PortKind::Tap | PortKind::Host if self.trust_guest_mac => {
                "trust_guest_mac is for VM ports only (kind=attach or kind=stream)"
            }
            k if k != PortKind::Tap && self.persist => {
                "persist is for TAP ports (kind=tap): only those are TAPs that can outlive the engine"
            }
            PortKind::Host if self.netns.is_some() => {
                "a host port stays in the engine's namespace: it takes no netns"
            }
            PortKind::Host if self.mode != Mode::Bridge => HOST_MODE,
            PortKind::Host if self.path.is_some() || self.ifname.is_some() => {
                "a host port is a TAP the engine creates: no path= or ifname="
            }
            k if k != PortKind::Host && (!self.addresses.is_empty() || !self.routes.is_empty()) => {
                "addresses and routes are for host ports (kind=host); set a tap port's where it lives"
            }
            _ => match self.routes.iter().find(|r| !r.is_network()) {
                Some(r) => {
                    return Err(SpecError::Kind {
                        spec: spec.into(),
                        message: format!(
                            "route {r} has host bits set: the network is {}",
                            r.network()
                        ),
                    });
                }
                None => return Ok(()),
            },
        };
        Err(SpecError::Kind {
            spec: spec.into(),
            message: message.into(),
        })
    }

    /// The device's name in its namespace: `ifname`, else the port's name.
    pub fn device(&self) -> &str {
        self.ifname.as_deref().unwrap_or(&self.name)
    }

    /// Refuses the trace-only state keys (for `run`).
    pub fn config_only(&self, spec: &str) -> Result<(), SpecError> {
        let st = &self.state;
        let key = [
            (st.down, "down"),
            (st.promisc, "promisc"),
            (st.allmulti, "allmulti"),
            (!st.groups.is_empty(), "join"),
        ]
        .into_iter()
        .find_map(|(set, k)| set.then_some(k));
        match key {
            Some(k) => Err(SpecError::StateKey {
                spec: spec.into(),
                key: k.into(),
            }),
            None => Ok(()),
        }
    }

    /// The MAC the port gets: the given one, else a stable locally-administered MAC derived from
    /// the parent's name and the port's name (the same on every run and machine).
    pub fn mac_on(&self, parent: &str) -> MacAddr {
        self.mac.unwrap_or_else(|| derived_mac(parent, &self.name))
    }

    /// The port as the forwarding table sees it, with the state the spec describes.
    pub fn to_config(&self, parent: &str) -> PortConfig {
        let mut c = PortConfig::new(self.name.clone(), self.mode, self.mac_on(parent));
        c.flags = self.flags;
        c.mtu = self.mtu;
        c.sources = self.sources.clone();
        if let Some(q) = self.bcqueuelen {
            c.bcqueuelen = q;
        }
        c.up = !self.state.down;
        c.promisc = self.state.promisc;
        c.allmulti = self.state.allmulti;
        c.groups = self.state.groups.clone();
        c.pinned_mac = self.kind.is_vm() && !self.trust_guest_mac;
        c
    }
}

/// `umacvlan link add name=N[,parent=P][,mode=M][,netns=NS][,mac=MAC][,mtu=N][,flag=F]
/// [,bcqueuelen=N][,bclim=N][,source=MAC+MAC..]`: a `--port` spec plus the [`LINK_KEYS`]. The
/// live-state keys of `trace` are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPortSpec {
    pub port: PortSpec,
    pub parent: Option<String>,
    pub bclim: Option<i32>,
}

impl FromStr for LinkPortSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let s = || spec.to_string();
        let mut parent = None;
        let mut bclim = None;
        let mut rest: Vec<&str> = Vec::new();
        for item in spec.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, v),
                None => (item, ""),
            };
            if !LINK_KEYS.contains(&key) {
                rest.push(item);
                continue;
            }
            if value.is_empty() {
                return Err(SpecError::MissingValue {
                    spec: s(),
                    key: key.into(),
                });
            }
            let repeated = match key {
                "bclim" => bclim.is_some(),
                _ => parent.is_some(),
            };
            if repeated {
                return Err(SpecError::RepeatedKey {
                    spec: s(),
                    key: key.into(),
                });
            }
            match key {
                "bclim" => {
                    bclim = Some(value.parse::<i32>().map_err(|_| SpecError::Number {
                        spec: s(),
                        key: key.into(),
                        value: value.into(),
                    })?)
                }
                _ => parent = Some(value.to_string()),
            }
        }
        let port = rest
            .join(",")
            .parse::<PortSpec>()
            .map_err(|e| with_spec(e, spec))?;
        port.config_only(spec)?;
        Ok(LinkPortSpec {
            port,
            parent,
            bclim,
        })
    }
}

/// The same error, about the whole spec as the user typed it.
fn with_spec(e: SpecError, whole: &str) -> SpecError {
    let spec = whole.to_string();
    match e {
        SpecError::UnknownKey { key, .. } => SpecError::UnknownKey { spec, key },
        SpecError::RepeatedKey { key, .. } => SpecError::RepeatedKey { spec, key },
        SpecError::MissingValue { key, .. } => SpecError::MissingValue { spec, key },
        SpecError::UnexpectedValue { key, .. } => SpecError::UnexpectedValue { spec, key },
        SpecError::MissingName { .. } => SpecError::MissingName { spec },
        SpecError::Mode { source, .. } => SpecError::Mode { spec, source },
        SpecError::Mac { source, .. } => SpecError::Mac { spec, source },
        SpecError::Number { key, value, .. } => SpecError::Number { spec, key, value },
        SpecError::Flag { flag, .. } => SpecError::Flag { spec, flag },
        SpecError::StateKey { key, .. } => SpecError::StateKey { spec, key },
        SpecError::Cidr { source, .. } => SpecError::Cidr { spec, source },
        SpecError::Kind { message, .. } => SpecError::Kind { spec, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PortSpec, String> {
        s.parse::<PortSpec>().map_err(|e| e.to_string())
    }

    #[test]
    fn the_stable_contract_form() {
        let p = parse("name=c1,mode=vepa,netns=ns1,mac=02:00:00:00:00:01,mtu=1400").unwrap();
        assert_eq!(p.name, "c1");
        assert_eq!(p.mode, Mode::Vepa);
        assert_eq!(p.netns.as_deref(), Some("ns1"));
        assert_eq!(p.mac, Some("02:00:00:00:00:01".parse().unwrap()));
        assert_eq!(p.mtu, Some(1400));
        assert!(p.config_only("x").is_ok());
        assert_eq!(p.device(), "c1");
    }

    #[test]
    fn a_namespace_path_and_a_device_name_apart_from_the_port_name() {
        let p = parse("name=cni0a1b2c3d4e5f,netns=/proc/1/ns/net,ifname=eth0").unwrap();
        assert_eq!(p.netns.as_deref(), Some("/proc/1/ns/net"));
        assert_eq!(p.device(), "eth0");
        assert_eq!(p.name, "cni0a1b2c3d4e5f");
        let e = parse("name=c1,ifname=").unwrap_err();
        assert!(e.contains("ifname needs a value"), "{e}");
    }

    #[test]
    fn defaults_bridge_and_a_stable_derived_mac() {
        let p = parse("name=c1").unwrap();
        assert_eq!(p.mode, Mode::Bridge);
        assert_eq!(p.mac_on("eth0"), parse("name=c1").unwrap().mac_on("eth0"));
        assert_ne!(p.mac_on("eth0"), p.mac_on("eth1"));
        assert!(p.mac_on("eth0").is_local_admin());
    }

    #[test]
    fn extensions() {
        let p = parse(
            "name=s,mode=source,flag=nodst,source=02:00:00:00:00:09+02:00:00:00:00:0a,bcqueuelen=0",
        )
        .unwrap();
        assert!(p.flags.nodst && !p.flags.nopromisc);
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.bcqueuelen, Some(0));
        let t =
            parse("name=c,mode=passthrough,flag=nopromisc,down,allmulti,join=01:00:5e:00:00:01")
                .unwrap();
        assert_eq!(t.mode, Mode::Passthru);
        assert!(t.state.down && t.state.allmulti && t.state.groups.len() == 1);
        let e = t.config_only("x").unwrap_err().to_string();
        assert!(e.contains("down") && e.contains("for `trace` only"), "{e}");
        let c = t.to_config("p0");
        assert!(!c.up && c.allmulti && c.flags.nopromisc);
    }

    #[test]
    fn link_specs_take_parent_and_bclim() {
        let l: LinkPortSpec = "name=c1,parent=eth0,mode=vepa,bclim=-1".parse().unwrap();
        assert_eq!(l.parent.as_deref(), Some("eth0"));
        assert_eq!(l.bclim, Some(-1));
        assert_eq!(l.port.mode, Mode::Vepa);
        let l: LinkPortSpec = "link=eth1,name=c2".parse().unwrap();
        assert_eq!(l.parent.as_deref(), Some("eth1"));
        for (bad, want) in [
            ("name=c1,parent=a,link=b", "link is given twice"),
            ("name=c1,bclim=x", "bclim=\"x\" is not a number"),
            ("name=c1,down", "for `trace` only"),
            ("parent=eth0", "\"parent=eth0\": name=N is required"),
        ] {
            let e = bad.parse::<LinkPortSpec>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn host_ports() {
        let p = parse(
            "name=shim0,kind=host,address=192.0.2.100/32+2001:db8::64/128,route=192.0.2.0/24",
        )
        .unwrap();
        assert_eq!(p.kind, PortKind::Host);
        assert_eq!(p.mode, Mode::Bridge);
        assert_eq!(
            p.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["192.0.2.100/32", "2001:db8::64/128"]
        );
        assert_eq!(p.routes, vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(parse("name=c1,kind=tap").unwrap().kind, PortKind::Tap);
        for (bad, want) in [
            (
                "name=s,kind=vm",
                "unknown kind \"vm\": expected one of tap, host, attach, stream",
            ),
            (
                "name=s,kind=host,netns=ns1",
                "a host port stays in the engine's namespace",
            ),
            (
                "name=s,kind=host,mode=vepa",
                "a host port is a bridge-mode port",
            ),
            (
                "name=s,address=192.0.2.1/24",
                "addresses and routes are for host ports",
            ),
            (
                "name=s,route=192.0.2.0/24",
                "addresses and routes are for host ports",
            ),
            (
                "name=s,kind=host,route=192.0.2.1/24",
                "the network is 192.0.2.0/24",
            ),
            (
                "name=s,kind=host,address=192.0.2.1",
                "is not ADDRESS/PREFIX",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn persist_is_a_flag_of_tap_ports() {
        assert!(!parse("name=c1").unwrap().persist, "off by default");
        let p = parse("name=c1,netns=/var/run/docker/netns/abc,ifname=eth0,persist").unwrap();
        assert!(p.persist);
        assert_eq!(p.device(), "eth0");
        assert!(parse("name=c1,kind=tap,persist").unwrap().persist);
        for (bad, want) in [
            ("name=c1,persist=yes", "takes no value"),
            ("name=c1,persist,persist", "given twice"),
            ("name=h,kind=host,persist", "persist is for TAP ports"),
            ("name=v,kind=attach,persist", "persist is for TAP ports"),
            (
                "name=v,kind=stream,path=/x,persist",
                "persist is for TAP ports",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let link: LinkPortSpec = "name=c1,parent=p0,persist".parse().unwrap();
        assert!(link.port.persist);
    }

    #[test]
    fn vm_kinds_their_keys_and_the_pinned_mac() {
        let tap = parse("name=c1,mode=bridge").unwrap();
        assert_eq!(tap.kind, PortKind::Tap);
        assert!(!tap.to_config("p0").pinned_mac);
        let a = parse("name=vm1,kind=attach,mode=bridge,mac=02:00:00:00:00:07").unwrap();
        assert_eq!(a.kind, PortKind::Attach);
        assert!(a.to_config("p0").pinned_mac, "a VM's guest MAC is pinned");
        let s = parse("name=vm2,kind=stream,path=/run/umacvlan/vm2.sock,trust_guest_mac").unwrap();
        assert_eq!(s.kind, PortKind::Stream);
        assert_eq!(
            s.path.as_deref(),
            Some(std::path::Path::new("/run/umacvlan/vm2.sock"))
        );
        assert!(s.trust_guest_mac && !s.to_config("p0").pinned_mac);
        for (bad, want) in [
            ("name=v,kind=vm", "unknown kind \"vm\""),
            ("name=v,kind=stream", "needs path=SOCKET"),
            ("name=v,kind=stream,path=/x,netns=n", "has no netns"),
            ("name=v,kind=stream,path=rel.sock", "must be absolute"),
            ("name=v,path=/x", "for kind=stream only"),
            ("name=v,kind=attach,path=/x", "for kind=stream only"),
            ("name=v,trust_guest_mac", "for VM ports only"),
            ("name=v,kind=attach,trust_guest_mac=yes", "takes no value"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("mode=bridge", "name=N is required"),
            ("name=c1,colour=red", "unknown key \"colour\""),
            ("name=c1,mode=bridged", "unknown mode \"bridged\""),
            ("name=c1,mac=02:00", "not a MAC address"),
            ("name=c1,mtu=big", "mtu=\"big\" is not a number"),
            ("name=c1,name=c2", "name is given twice"),
            ("name=c1,mac=", "mac needs a value"),
            ("name=c1,mode", "mode needs a value"),
            ("name=c1,down=yes", "down takes no value"),
            ("name=c1,flag=fast", "unknown flag \"fast\""),
        ];
        for (spec, want) in cases {
            let e = parse(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
    }
}
