//! The port table: everything `decide()` reads, validated once and immutable afterwards.
//!
//! It mirrors the kernel's `struct macvlan_port`
//! (docs/design.md#the-model-a-table-of-the-up-ports): a hash of the **UP** children by MAC
//! (`vlan_hash`), the source-mode hash (`vlan_source_hash`), the passthru flag, and the two
//! port-wide group filters, which the kernel keeps as lossy 256-bit hashes and we keep exactly
//! (docs/design.md#differences-from-the-kernel). The control plane builds a new table for every
//! change and swaps it in; the data plane never locks it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use hashbrown::HashMap;

use crate::wire::mac::MacAddr;
use crate::wire::vlan::Emulated;

/// A macvlan mode, with the kernel's values (`enum macvlan_mode`), which are bits of a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Private = 1,
    Vepa = 2,
    Bridge = 4,
    Passthru = 8,
    Source = 16,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Private,
        Mode::Vepa,
        Mode::Bridge,
        Mode::Passthru,
        Mode::Source,
    ];

    /// The name `ip -d link` prints.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Private => "private",
            Mode::Vepa => "vepa",
            Mode::Bridge => "bridge",
            Mode::Passthru => "passthru",
            Mode::Source => "source",
        }
    }

    const fn index(self) -> usize {
        match self {
            Mode::Private => 0,
            Mode::Vepa => 1,
            Mode::Bridge => 2,
            Mode::Passthru => 3,
            Mode::Source => 4,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown mode {0:?}: expected one of private, vepa, bridge, passthru (or passthrough), source"
)]
pub struct ModeParseError(String);

impl FromStr for Mode {
    type Err = ModeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passthrough" => Ok(Mode::Passthru),
            _ => Mode::ALL
                .into_iter()
                .find(|m| m.name() == s)
                .ok_or_else(|| ModeParseError(s.to_string())),
        }
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of modes, as the kernel's flood masks are (`MACVLAN_MODE_VEPA | MACVLAN_MODE_BRIDGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModeMask(u8);

impl ModeMask {
    pub const fn of(modes: &[Mode]) -> ModeMask {
        let mut bits = 0u8;
        let mut i = 0;
        while i < modes.len() {
            bits |= modes[i] as u8;
            i += 1;
        }
        ModeMask(bits)
    }

    pub const fn contains(self, m: Mode) -> bool {
        self.0 & m as u8 != 0
    }

    pub fn modes(self) -> impl Iterator<Item = Mode> {
        Mode::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl fmt::Display for ModeMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.modes().map(Mode::name).collect();
        f.write_str(&names.join("|"))
    }
}

/// Per-port flags (`IFLA_MACVLAN_FLAGS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortFlags {
    /// Passthru only: do not make the parent promiscuous when the port comes up.
    pub nopromisc: bool,
    /// Source only: frames from a listed source go to this port and nowhere else.
    pub nodst: bool,
}

/// Index of a port in its table. Stable for the life of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl PortId {
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The id of a table's `i`-th port ([`PortTable::build`] refuses more than [`MAX_PORTS`]).
    pub fn nth(i: usize) -> PortId {
        PortId(u16::try_from(i).expect("a table holds at most MAX_PORTS ports"))
    }
}

/// The kernel's default `bcqueuelen` request.
pub const DEFAULT_BC_QUEUE_LEN: u32 = 1000;
/// The kernel's default `bc_cutoff` (`bclim`).
pub const DEFAULT_BC_CUTOFF: i32 = 1;
/// The one MTU rule (`macvlan_change_mtu`, creation): a port's MTU must lie in
/// [`MIN_MTU`]`..=` the parent's. The table, `link set mtu` and the configuration file all ask it.
pub fn check_mtu(port: &str, mtu: u32, parent_mtu: u32) -> Result<u32, TableError> {
    if (MIN_MTU..=parent_mtu).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(TableError::Mtu {
            port: port.to_string(),
            mtu,
            max: parent_mtu,
        })
    }
}

/// The smallest MTU the kernel accepts for a macvlan (`ETH_MIN_MTU`).
pub const MIN_MTU: u32 = 68;
/// Ports per table; `PortId` is 16 bits.
pub const MAX_PORTS: usize = u16::MAX as usize;

/// One port as configured and as its netdev currently is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub name: String,
    pub mode: Mode,
    pub flags: PortFlags,
    /// For passthru this is ignored: the port takes the parent's MAC (`eth_hw_addr_inherit`).
    pub mac: MacAddr,
    /// Admin up. Only UP ports are in the MAC hash (`macvlan_open`/`macvlan_stop`).
    pub up: bool,
    /// `None`: the parent's MTU.
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub allmulti: bool,
    /// Link-layer groups the port has joined (its `ip maddr` list), matched exactly.
    pub groups: BTreeSet<MacAddr>,
    /// This port's `bcqueuelen` request.
    pub bcqueuelen: u32,
    /// Source mode: the remote source MACs (`macaddr add`).
    pub sources: BTreeSet<MacAddr>,
    /// A VM port's guest MAC is pinned: frames it sends from another source are dropped
    /// (`mac_spoof`, see [`spoofed`](super::spoofed)). Never set on TAP ports.
    pub pinned_mac: bool,
}

impl PortConfig {
    /// An UP port with the kernel's defaults for everything else.
    pub fn new(name: impl Into<String>, mode: Mode, mac: MacAddr) -> PortConfig {
        PortConfig {
            name: name.into(),
            mode,
            flags: PortFlags::default(),
            mac,
            up: true,
            mtu: None,
            promisc: false,
            allmulti: false,
            groups: BTreeSet::new(),
            bcqueuelen: DEFAULT_BC_QUEUE_LEN,
            sources: BTreeSet::new(),
            pinned_mac: false,
        }
    }
}

/// The parent (the kernel's "lower device").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentConfig {
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// `bclim`: groups joined by more than this many UP ports go through the broadcast queue.
    /// Negative: nothing is queued.
    pub bc_cutoff: i32,
    /// The parent filters unicast in hardware (IFF_UNICAST_FLT). veth and bridge do not, so the
    /// kernel makes them promiscuous as soon as a non-passthru child is up (§5, §8).
    pub unicast_filter: bool,
    /// The parent is PROMISC or ALLMULTI for reasons outside macvlan (tcpdump, the host).
    pub host_promisc: bool,
    /// Largest frame accepted from the parent or a port, on the wire (GSO super-frames included).
    pub max_frame: usize,
    /// The parent is an 802.1Q sub-interface the engine emulates on its lower device (no such
    /// device exists): its frames are the lower's tagged with this VID.
    pub vlan: Option<Emulated>,
}

impl ParentConfig {
    pub fn new(name: impl Into<String>, mac: MacAddr, mtu: u32) -> ParentConfig {
        ParentConfig {
            name: name.into(),
            mac,
            mtu,
            bc_cutoff: DEFAULT_BC_CUTOFF,
            unicast_filter: false,
            host_promisc: false,
            max_frame: DEFAULT_MAX_FRAME,
            vlan: None,
        }
    }
}

/// 64 KiB GSO super-frame plus Ethernet and VLAN headers.
pub const DEFAULT_MAX_FRAME: usize = 65_536 + 14 + 4;

/// Why a set of ports cannot form a table. Every variant names the offending ports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "ports {a} and {b} cannot both be up with MAC {mac} (the kernel refuses with EADDRINUSE)"
    )]
    DuplicateMac { mac: MacAddr, a: String, b: String },
    #[error(
        "port {port}: MAC {mac} is a group or zero address; a port needs a unicast MAC (EADDRNOTAVAIL)"
    )]
    InvalidMac { port: String, mac: MacAddr },
    #[error("the parent's MAC {0} is a group or zero address")]
    InvalidParentMac(MacAddr),
    #[error("passthru port {passthru} must be the parent's only port, but {other} is there too")]
    PassthruNotAlone { passthru: String, other: String },
    #[error("{a} and {b} are both passthru: a parent takes one passthru port and nothing else")]
    SecondPassthru { a: String, b: String },
    #[error("port {port}: source MAC {mac} is a group or zero address (EADDRNOTAVAIL)")]
    InvalidSourceMac { port: String, mac: MacAddr },
    #[error(
        "port {port} is in {mode} mode; only source-mode ports have a source MAC list (EINVAL)"
    )]
    SourcesNotSourceMode { port: String, mode: Mode },
    #[error("port {port}: MTU {mtu} is outside {MIN_MTU}..={max} (the parent's MTU)")]
    Mtu { port: String, mtu: u32, max: u32 },
    #[error("two ports are named {0}")]
    DuplicateName(String),
    #[error("port name {0:?} is empty, longer than 15 bytes, or has '/', ':', NUL or white space")]
    BadName(String),
    #[error("{0} ports: a table holds at most {MAX_PORTS}")]
    TooManyPorts(usize),
}

impl TableError {
    /// The port the error is about (for two ports, the later one), if any.
    pub fn port(&self) -> Option<&str> {
        match self {
            TableError::DuplicateMac { b: port, .. }
            | TableError::InvalidMac { port, .. }
            | TableError::PassthruNotAlone { other: port, .. }
            | TableError::SecondPassthru { b: port, .. }
            | TableError::InvalidSourceMac { port, .. }
            | TableError::SourcesNotSourceMode { port, .. }
            | TableError::Mtu { port, .. }
            | TableError::DuplicateName(port)
            | TableError::BadName(port) => Some(port),
            TableError::InvalidParentMac(_) | TableError::TooManyPorts(_) => None,
        }
    }
}

/// One port in a built table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub config: PortConfig,
    /// The effective MTU (the parent's when none was set).
    pub mtu: u32,
}

impl Port {
    pub fn name(&self) -> &str {
        &self.config.name
    }
    pub fn mode(&self) -> Mode {
        self.config.mode
    }
    pub fn mac(&self) -> MacAddr {
        self.config.mac
    }
    pub fn is_up(&self) -> bool {
        self.config.up
    }
    /// The exact form of the kernel's per-child `mc_filter` (`macvlan_compute_filter`): all
    /// groups when promisc or allmulti, else the joined groups plus broadcast.
    pub fn accepts_group(&self, group: MacAddr) -> bool {
        let c = &self.config;
        c.promisc || c.allmulti || group.is_broadcast() || c.groups.contains(&group)
    }
}

/// The entries of the source-mode hash for one remote MAC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceEntry {
    /// Owners that are UP and get a copy.
    pub up_owners: Vec<PortId>,
    /// Some owner, up or **down**, has NODST: the frame is consumed (§7, kernel behaviour).
    pub nodst: bool,
}

/// The validated, immutable port table.
#[derive(Clone, Debug)]
pub struct PortTable {
    parent: ParentConfig,
    ports: Vec<Port>,
    by_mac: HashMap<MacAddr, PortId>,
    by_name: HashMap<String, PortId>,
    up_in_mode: [Vec<PortId>; 5],
    group_members: HashMap<MacAddr, Vec<PortId>>,
    all_groups: Vec<PortId>,
    sources: HashMap<MacAddr, SourceEntry>,
    passthru: Option<PortId>,
    lower_all_groups: bool,
    bc_queue_len_used: u32,
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

impl PortTable {
    /// Validates `ports` against `parent` and builds the lookup structures.
    pub fn build(parent: ParentConfig, ports: Vec<PortConfig>) -> Result<PortTable, TableError> {
        if ports.len() > MAX_PORTS {
            return Err(TableError::TooManyPorts(ports.len()));
        }
        if !parent.mac.is_valid_unicast() {
            return Err(TableError::InvalidParentMac(parent.mac));
        }
        let mut by_name: HashMap<String, PortId> = HashMap::with_capacity(ports.len());
        let mut built = Vec::with_capacity(ports.len());
        for (i, mut c) in ports.into_iter().enumerate() {
            let id = PortId(u16::try_from(i).map_err(|_| TableError::TooManyPorts(i))?);
            if !valid_ifname(&c.name) {
                return Err(TableError::BadName(c.name));
            }
            if by_name.insert(c.name.clone(), id).is_some() {
                return Err(TableError::DuplicateName(c.name));
            }
            if c.mode == Mode::Passthru {
                c.mac = parent.mac;
            } else if !c.mac.is_valid_unicast() {
                return Err(TableError::InvalidMac {
                    port: c.name,
                    mac: c.mac,
                });
            }
            if !c.sources.is_empty() && c.mode != Mode::Source {
                return Err(TableError::SourcesNotSourceMode {
                    port: c.name,
                    mode: c.mode,
                });
            }
            if let Some(bad) = c.sources.iter().find(|m| !m.is_valid_unicast()) {
                return Err(TableError::InvalidSourceMac {
                    port: c.name,
                    mac: *bad,
                });
            }
            let mtu = check_mtu(&c.name, c.mtu.unwrap_or(parent.mtu), parent.mtu)?;
            built.push(Port { config: c, mtu });
        }
        Self::check_passthru(&built)?;
        Self::check_up_macs(&built)?;
        Ok(Self::index(parent, built, by_name))
    }

    /// The MAC hash holds one port per MAC: two UP ports cannot share one. Creation checks
    /// nothing else (DOWN ports may share a MAC or hold the parent's); the kernel's busy-address
    /// check at open is the control plane's ([`crate::engine::admit`]), because it depends on
    /// the order in which ports came up.
    fn check_up_macs(ports: &[Port]) -> Result<(), TableError> {
        let mut seen: HashMap<MacAddr, &str> = HashMap::with_capacity(ports.len());
        for p in ports.iter().filter(|p| p.is_up()) {
            if let Some(a) = seen.insert(p.mac(), p.name()) {
                return Err(TableError::DuplicateMac {
                    mac: p.mac(),
                    a: a.to_string(),
                    b: p.name().to_string(),
                });
            }
        }
        Ok(())
    }

    fn check_passthru(ports: &[Port]) -> Result<(), TableError> {
        let Some(pt) = ports.iter().find(|p| p.mode() == Mode::Passthru) else {
            return Ok(());
        };
        match ports.iter().find(|p| p.name() != pt.name()) {
            None => Ok(()),
            Some(o) if o.mode() == Mode::Passthru => Err(TableError::SecondPassthru {
                a: pt.name().to_string(),
                b: o.name().to_string(),
            }),
            Some(o) => Err(TableError::PassthruNotAlone {
                passthru: pt.name().to_string(),
                other: o.name().to_string(),
            }),
        }
    }

    fn index(parent: ParentConfig, ports: Vec<Port>, by_name: HashMap<String, PortId>) -> Self {
        let mut t = PortTable {
            by_mac: HashMap::new(),
            by_name,
            up_in_mode: Default::default(),
            group_members: HashMap::new(),
            all_groups: Vec::new(),
            sources: HashMap::new(),
            passthru: None,
            lower_all_groups: parent.host_promisc,
            bc_queue_len_used: 0,
            parent,
            ports: Vec::new(),
        };
        for (i, p) in ports.iter().enumerate() {
            let id = PortId::nth(i);
            let c = &p.config;
            t.bc_queue_len_used = t.bc_queue_len_used.max(c.bcqueuelen);
            if c.mode == Mode::Passthru {
                t.passthru = Some(id);
            }
            for src in &c.sources {
                let e = t.sources.entry(*src).or_default();
                e.nodst |= c.flags.nodst;
                if c.up {
                    e.up_owners.push(id);
                }
            }
            if !c.up {
                continue;
            }
            t.lower_all_groups |= Self::makes_lower_promisc(&t.parent, c);
            t.by_mac.insert(c.mac, id);
            t.up_in_mode[c.mode.index()].push(id);
            if c.promisc || c.allmulti {
                t.all_groups.push(id);
            } else {
                for g in &c.groups {
                    t.group_members.entry(*g).or_default().push(id);
                }
            }
        }
        t.ports = ports;
        t
    }

    /// Whether an UP port turns the parent PROMISC or ALLMULTI in the kernel (§5, §6, §8):
    /// `dev_uc_add` on a parent without a unicast filter, the child's own promisc (not passed on
    /// for passthru) and allmulti, and passthru's promiscuity unless NOPROMISC.
    fn makes_lower_promisc(parent: &ParentConfig, c: &PortConfig) -> bool {
        match c.mode {
            Mode::Passthru => !c.flags.nopromisc || c.allmulti,
            _ => !parent.unicast_filter || c.promisc || c.allmulti,
        }
    }

    pub fn parent(&self) -> &ParentConfig {
        &self.parent
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    pub fn port(&self, id: PortId) -> &Port {
        &self.ports[id.index()]
    }

    pub fn ids(&self) -> impl Iterator<Item = PortId> + '_ {
        (0..self.ports.len()).map(PortId::nth)
    }

    pub fn by_name(&self, name: &str) -> Option<PortId> {
        self.by_name.get(name).copied()
    }

    /// The kernel's `macvlan_hash_lookup`: UP ports only.
    pub fn lookup_up(&self, mac: MacAddr) -> Option<PortId> {
        self.by_mac.get(&mac).copied()
    }

    pub fn passthru(&self) -> Option<PortId> {
        self.passthru
    }

    pub fn source_entry(&self, src: MacAddr) -> Option<&SourceEntry> {
        self.sources.get(&src)
    }

    /// `usedbcqueuelen`: the largest request over all ports, down ones included.
    pub fn bc_queue_len_used(&self) -> u32 {
        self.bc_queue_len_used
    }

    /// The parent is PROMISC or ALLMULTI in the kernel's model, so both port filters are full.
    pub fn lower_all_groups(&self) -> bool {
        self.lower_all_groups
    }

    /// How many UP ports have synced `group` down to the parent (`ha->synced`).
    fn synced(&self, group: MacAddr) -> usize {
        let listed = self.group_members.get(&group).map_or(0, Vec::len);
        let all = self
            .all_groups
            .iter()
            .filter(|id| self.port(**id).config.groups.contains(&group))
            .count();
        listed + all
    }

    /// The port's `mc_filter` (§5): synced by at least one UP port, broadcast, or everything
    /// when the parent is promisc/allmulti.
    pub fn port_mc_filter(&self, group: MacAddr) -> bool {
        self.lower_all_groups || group.is_broadcast() || self.synced(group) >= 1
    }

    /// The port's `bc_filter` (§5): nothing when `bc_cutoff < 0`; else everything when the
    /// parent is promisc/allmulti, broadcast, and groups synced by more than `bc_cutoff` ports.
    pub fn port_bc_filter(&self, group: MacAddr) -> bool {
        let cutoff = self.parent.bc_cutoff;
        if cutoff < 0 {
            return false;
        }
        self.lower_all_groups
            || group.is_broadcast()
            || self.synced(group) > usize::try_from(cutoff).unwrap_or(usize::MAX)
    }

    /// The UP ports in `mode`.
    pub fn up_in_mode(&self, mode: Mode) -> &[PortId] {
        &self.up_in_mode[mode.index()]
    }

    /// UP ports that might accept `group` within `mask`: for broadcast every UP port of those
    /// modes, else the ports that joined it plus those in promisc/allmulti. Each appears once;
    /// the caller still applies the mode mask and the exact filter to the last two kinds.
    pub(crate) fn group_candidates(
        &self,
        group: MacAddr,
        mask: ModeMask,
    ) -> impl Iterator<Item = PortId> + '_ {
        let bcast = group.is_broadcast();
        let by_mode = mask
            .modes()
            .filter(move |_| bcast)
            .flat_map(move |m| self.up_in_mode(m).iter().copied());
        let (members, all): (&[PortId], &[PortId]) = if bcast {
            (&[], &[])
        } else {
            let members = self
                .group_members
                .get(&group)
                .map_or(&[][..], Vec::as_slice);
            (members, &self.all_groups)
        };
        by_mode
            .chain(members.iter().copied())
            .chain(all.iter().copied())
    }
}
