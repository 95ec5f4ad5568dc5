//! Checking a request before anything is created: the parent, the namespaces, names, MACs, MTUs
//! and the mode rules. [`plan`] validates a whole `umacvlan run` command line and creates nothing,
//! so bad input leaves the machine untouched; the daemon uses the same checks for `link add`.

use crate::control::proto::ErrorKind;
use crate::control::spec::{PortKind, PortSpec};
use crate::forward::{Mode, ParentConfig, PortConfig, PortTable, TableError};
use crate::net::{LinkInfo, Netlink, Netns, is_wireless};
use crate::wire::vlan::{Emulated, parse_name};

const ARPHRD_ETHER: u16 = 1;

/// Bad input: nothing was created. The CLI exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown parent {0:?}: no such network interface in this namespace")]
    UnknownParent(String),
    #[error(
        "unknown parent {name:?}: no such network interface in this namespace, and no {lower:?} to emulate it on as its 802.1Q sub-interface with VID {vid}"
    )]
    UnknownVlanLower {
        name: String,
        lower: String,
        vid: u16,
    },
    #[error(
        "parent {name:?}: stacked VLAN tags (802.1Q in 802.1Q or 802.1ad) are not emulated: {lower:?} does not exist either; create {lower} as a real VLAN device (ip link add link ... type vlan) and use {name} on it"
    )]
    StackedVlan { name: String, lower: String },
    #[error("{0}")]
    Vlan(#[from] crate::wire::vlan::VlanNameError),
    #[error("parent {0} is a loopback device; macvlan needs an Ethernet parent")]
    ParentLoopback(String),
    #[error(
        "parent {name} is not Ethernet (link type {link_type}); macvlan needs an Ethernet parent"
    )]
    ParentNotEthernet { name: String, link_type: u16 },
    #[error(
        "parent {0} is wireless: access points drop frames from MACs that did not associate, so macvlan children get nothing; use ipvlan (L2 shares the parent's MAC) or a 4-address (WDS) link"
    )]
    ParentWireless(String),
    #[error("port {port}: {source}")]
    Netns {
        port: String,
        #[source]
        source: crate::net::Error,
    },
    #[error("port {port}: an interface named {device} already exists in {place}")]
    NameInUse {
        port: String,
        device: String,
        place: String,
    },
    #[error(
        "port {port}: an interface named {device} already exists in {place} and is a {kind} device: a persistent port adopts only a persistent TAP"
    )]
    NotAdoptable {
        port: String,
        device: String,
        place: String,
        kind: String,
    },
    #[error("ports {first} and {second} both want the device name {device} in one namespace")]
    DeviceTwice {
        first: String,
        second: String,
        device: String,
    },
    #[error(
        "port {port}: kind=attach needs an existing interface named {port} in {place} (the VM's TAP: start the VM first)"
    )]
    NoSuchNetdev { port: String, place: String },
    #[error("port {0}: kind=attach cannot attach to the parent itself")]
    AttachToParent(String),
    #[error("{0}")]
    Stream(#[from] crate::engine::stream::StreamError),
    #[error("ports {0} and {1} cannot both listen on {2}")]
    SamePath(String, String, String),
    #[error("{0}")]
    Spec(#[from] crate::control::spec::SpecError),
    #[error("{0}")]
    Table(#[from] TableError),
    #[error(
        "port {port} has MAC {mac}, which is the parent's: it could never come up (EADDRINUSE)"
    )]
    ParentMac {
        port: String,
        mac: crate::wire::mac::MacAddr,
    },
    #[error("no parent given and no default route to take one from: name the parent")]
    NoDefaultRoute,
    #[error("{0}")]
    Netlink(#[from] crate::net::Error),
}

/// One port, checked and ready to create: its description and its namespace, open.
#[derive(Debug)]
pub struct PlannedPort {
    pub spec: PortSpec,
    pub netns: Option<Netns>,
    /// A persistent port whose TAP exists already: the engine attaches to it
    /// ([`check_port_place`]).
    pub adopt: bool,
}

/// A validated request.
#[derive(Debug)]
pub struct Plan {
    pub parent: LinkInfo,
    pub parent_config: ParentConfig,
    pub ports: Vec<PlannedPort>,
}

/// Whether the kernel's macvlan would see this parent filter unicast in hardware
/// (IFF_UNICAST_FLT, not visible from userspace): physical NICs and VLAN, bond and team devices
/// do; veth and bridge do not, and go promiscuous as soon as a port is up (§5).
fn has_unicast_filter(kind: Option<&str>) -> bool {
    matches!(kind, None | Some("vlan" | "bond" | "team"))
}

/// Parent-wide settings of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentOptions {
    /// `bclim` (IFLA_MACVLAN_BC_CUTOFF), port-wide in the kernel.
    pub bc_cutoff: i32,
}

impl Default for ParentOptions {
    fn default() -> Self {
        ParentOptions {
            bc_cutoff: crate::forward::DEFAULT_BC_CUTOFF,
        }
    }
}

/// The device `name`, or, when there is none and `name` is `LOWER.VID`, its lower device and
/// the sub-interface the engine emulates on it (docs/design.md#8021q-sub-interfaces-emulated).
pub fn find_parent(
    nl: &mut Netlink,
    name: &str,
) -> Result<(LinkInfo, Option<Emulated>), PlanError> {
    if let Some(link) = nl.link_by_name(name)? {
        return Ok((link, None));
    }
    let Some(v) = parse_name(name)? else {
        return Err(PlanError::UnknownParent(name.to_string()));
    };
    match nl.link_by_name(v.lower)? {
        Some(lower) => Ok((
            lower,
            Some(Emulated {
                lower: v.lower.to_string(),
                vid: v.vid,
            }),
        )),
        None if parse_name(v.lower).ok().flatten().is_some() => Err(PlanError::StackedVlan {
            name: name.to_string(),
            lower: v.lower.to_string(),
        }),
        None => Err(PlanError::UnknownVlanLower {
            name: name.to_string(),
            lower: v.lower.to_string(),
            vid: v.vid,
        }),
    }
}

/// Checks that `name` can be a parent (Ethernet, not loopback, not wireless) and describes it.
/// A `LOWER.VID` name with no device of its own is the 802.1Q sub-interface of `LOWER`, emulated:
/// the checks are the lower device's, and the returned link is the lower's under `name`.
pub fn check_parent(
    nl: &mut Netlink,
    name: &str,
    opts: ParentOptions,
) -> Result<(LinkInfo, ParentConfig), PlanError> {
    let (mut link, vlan) = find_parent(nl, name)?;
    if link.flags.loopback {
        return Err(PlanError::ParentLoopback(link.name));
    }
    let mac = link.mac.filter(|_| link.link_type == ARPHRD_ETHER);
    let Some(mac) = mac else {
        return Err(PlanError::ParentNotEthernet {
            name: link.name,
            link_type: link.link_type,
        });
    };
    if is_wireless(&link.name) {
        return Err(PlanError::ParentWireless(link.name));
    }
    let kind = match vlan {
        // The kernel's VLAN device filters unicast (and syncs its list to the lower device).
        Some(_) => Some("vlan"),
        None => link.kind.as_deref(),
    };
    let unicast_filter = has_unicast_filter(kind);
    link.name = name.to_string();
    let mut config = ParentConfig::new(name, mac, link.mtu);
    config.unicast_filter = unicast_filter;
    config.bc_cutoff = opts.bc_cutoff;
    config.vlan = vlan;
    Ok((link, config))
}

/// Opens the port's namespace and checks that its name is free there (a TAP), that the netdev to
/// attach to exists there (`attach`), or that the socket path can be listened on (`stream`).
/// A persistent port's name may be taken by a TAP, which it then adopts (`true`; whether that
/// TAP is persistent and free is for the attach to tell); by any other device, it is refused.
pub fn check_port_place(
    nl: &mut Netlink,
    spec: &PortSpec,
    parent: &str,
) -> Result<(Option<Netns>, bool), PlanError> {
    if let (PortKind::Stream, Some(path)) = (spec.kind, &spec.path) {
        crate::engine::stream::check_path(&spec.name, path)?;
        return Ok((None, false));
    }
    let netns = spec
        .netns
        .as_deref()
        .map(Netns::open)
        .transpose()
        .map_err(|source| PlanError::Netns {
            port: spec.name.clone(),
            source,
        })?;
    let taken = match &netns {
        Some(ns) => Netlink::open_in(ns)?.link_by_name(spec.device())?,
        None => nl.link_by_name(spec.device())?,
    };
    let place = || {
        netns
            .as_ref()
            .map_or("this namespace".to_string(), |ns| format!("namespace {ns}"))
    };
    let port = spec.name.clone();
    match (spec.kind, taken) {
        (PortKind::Attach, None) => Err(PlanError::NoSuchNetdev {
            port,
            place: place(),
        }),
        (PortKind::Attach, Some(_)) if netns.is_none() && spec.name == parent => {
            Err(PlanError::AttachToParent(port))
        }
        (PortKind::Attach, Some(_)) | (_, None) => Ok((netns, false)),
        (PortKind::Tap, Some(l)) if spec.persist => match l.kind.as_deref() {
            Some("tun") => Ok((netns, true)),
            kind => Err(PlanError::NotAdoptable {
                port,
                device: spec.device().to_string(),
                place: place(),
                kind: kind.unwrap_or("physical").to_string(),
            }),
        },
        (_, Some(_)) => Err(PlanError::NameInUse {
            port,
            device: spec.device().to_string(),
            place: place(),
        }),
    }
}

/// The interface of the IPv4 default route in the calling thread's namespace (what CNI and
/// netavark use when no parent is named).
pub fn default_route_interface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/thread-self/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

impl PlanError {
    /// The control protocol's error kind for this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PlanError::UnknownParent(_)
            | PlanError::UnknownVlanLower { .. }
            | PlanError::NoDefaultRoute => ErrorKind::NoSuchLink,
            PlanError::StackedVlan { .. } | PlanError::Vlan(_) => ErrorKind::InvalidArgument,
            PlanError::ParentLoopback(_)
            | PlanError::ParentNotEthernet { .. }
            | PlanError::ParentWireless(_) => ErrorKind::Busy,
            PlanError::Netns { .. } => ErrorKind::NoSuchNetns,
            PlanError::NameInUse { .. }
            | PlanError::DeviceTwice { .. }
            | PlanError::NotAdoptable { .. } => ErrorKind::Exists,
            PlanError::NoSuchNetdev { .. } => ErrorKind::NoSuchLink,
            PlanError::AttachToParent(_) | PlanError::SamePath(..) => ErrorKind::InvalidArgument,
            PlanError::Stream(crate::engine::stream::StreamError::InUse { .. }) => ErrorKind::Busy,
            PlanError::Stream(_) => ErrorKind::InvalidArgument,
            PlanError::Spec(_) => ErrorKind::BadRequest,
            PlanError::Table(e) => table_error_kind(e),
            PlanError::ParentMac { .. } => ErrorKind::AddressInUse,
            PlanError::Netlink(_) => ErrorKind::Internal,
        }
    }
}

/// The kernel's errno meaning for a table refusal.
pub fn table_error_kind(e: &TableError) -> ErrorKind {
    match e {
        TableError::DuplicateMac { .. } => ErrorKind::AddressInUse,
        TableError::InvalidMac { .. }
        | TableError::InvalidSourceMac { .. }
        | TableError::InvalidParentMac(_) => ErrorKind::AddressNotAvailable,
        TableError::DuplicateName(_) => ErrorKind::Exists,
        TableError::PassthruNotAlone { .. }
        | TableError::SecondPassthru { .. }
        | TableError::SourcesNotSourceMode { .. }
        | TableError::Mtu { .. }
        | TableError::BadName(_)
        | TableError::TooManyPorts(_) => ErrorKind::InvalidArgument,
    }
}

/// Checks a whole `run` command line and creates nothing. `specs` pairs each port's text (for
/// messages) with its parsed form.
pub fn plan(
    parent: &str,
    opts: ParentOptions,
    specs: &[(String, PortSpec)],
) -> Result<Plan, PlanError> {
    let mut nl = Netlink::open()?;
    let (link, parent_config) = check_parent(&mut nl, parent, opts)?;
    let mut ports: Vec<PlannedPort> = Vec::with_capacity(specs.len());
    for (i, (text, spec)) in specs.iter().enumerate() {
        spec.config_only(text)?;
        if let Some(path) = &spec.path
            && let Some((_, other)) = specs[..i]
                .iter()
                .find(|(_, s)| s.path.as_ref() == Some(path))
        {
            let path = path.display().to_string();
            return Err(PlanError::SamePath(
                other.name.clone(),
                spec.name.clone(),
                path,
            ));
        }
        let (netns, adopt) = check_port_place(&mut nl, spec, parent)?;
        // Two ports of this command line may not take one device name in one namespace
        // (however each names it: `ip netns` name or path). Attached netdevs are someone
        // else's and stream ports have none.
        let inode = |ns: &Option<Netns>| ns.as_ref().map(Netns::inode).transpose();
        let here = inode(&netns)?;
        for other in ports.iter().filter(|o| o.spec.kind == PortKind::Tap) {
            if spec.kind == PortKind::Tap
                && other.spec.device() == spec.device()
                && inode(&other.netns)? == here
            {
                return Err(PlanError::DeviceTwice {
                    first: other.spec.name.clone(),
                    second: spec.name.clone(),
                    device: spec.device().to_string(),
                });
            }
        }
        ports.push(PlannedPort {
            spec: spec.clone(),
            netns,
            adopt,
        });
    }
    // At start every port must be able to come up: the kernel checks MACs at open, we refuse a
    // request that could never work as a whole (`link add` follows the kernel's moment: it
    // checks nothing at creation, see engine::admit).
    let all_up = ports
        .iter()
        .map(|p| PortConfig {
            up: true,
            ..p.spec.to_config(parent)
        })
        .collect();
    PortTable::build(parent_config.clone(), all_up)?;
    let on_parent_mac = ports
        .iter()
        .find(|p| p.spec.mode != Mode::Passthru && p.spec.mac_on(parent) == parent_config.mac);
    if let Some(p) = on_parent_mac {
        return Err(PlanError::ParentMac {
            port: p.spec.name.clone(),
            mac: p.spec.mac_on(parent),
        });
    }
    Ok(Plan {
        parent: link,
        parent_config,
        ports,
    })
}
