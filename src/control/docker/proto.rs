//! libnetwork's remote driver protocol (Docker 20.10): the bodies of the calls umacvlan answers,
//! the network options it takes, and the built-in macvlan driver's rules it re-implements (the
//! mode error text, the MAC derived from the IPv4 address). Pure: no I/O.
//!
//! Field names are libnetwork's (`drivers/remote/api/api.go`); every request field not listed
//! is ignored, as Docker adds some over time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::forward::Mode;
use crate::net::Cidr;
use crate::wire::mac::MacAddr;

/// `com.docker.network.generic`: the `-o KEY=VALUE` options of `docker network create`.
pub const GENERIC: &str = "com.docker.network.generic";
/// `--internal`.
pub const INTERNAL: &str = "com.docker.network.internal";

/// One address pool of a network, as Docker's IPAM gives it (`Gateway` is `ADDR/LEN`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub address_space: String,
    pub pool: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, String>,
}

impl IpamData {
    /// The gateway as a plain address (Docker sends it as `ADDR/LEN`); `None` if there is none.
    pub fn gateway_ip(&self) -> Option<IpAddr> {
        let g = self.gateway.split('/').next()?;
        g.parse().ok()
    }
}

/// `/NetworkDriver.CreateNetwork`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Vec<IpamData>,
}

/// A call that names a network only (`DeleteNetwork`, `FreeNetwork`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `/NetworkDriver.AllocateNetwork` (swarm managers only): its options are echoed back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AllocateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: BTreeMap<String, String>,
}

/// A call that names an endpoint (`DeleteEndpoint`, `Leave`, `EndpointOperInfo`,
/// `Program`/`RevokeExternalConnectivity`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EndpointRef {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// The interface of `CreateEndpoint`: what Docker already chose; an empty string is "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// `/NetworkDriver.CreateEndpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
}

/// `/NetworkDriver.Join`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Join {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
}

/// Join's interface names: Docker moves `SrcName` into the container and names it
/// `DstPrefix` + an index (`eth0`, `eth1`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// Join's answer. Without a gateway (and not internal) Docker would build `docker_gwbridge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// The options of one network, from `CreateNetwork`'s `Options`, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOptions {
    /// `-o parent=IF` (or `IF.VID`, an emulated 802.1Q sub-interface).
    pub parent: String,
    /// `-o macvlan_mode=` (or `mode=`); default bridge.
    pub mode: Mode,
    /// `-o host=ADDR/LEN`: a host port on the network with this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Cidr>,
    /// `--internal`: Join returns no gateway.
    #[serde(default)]
    pub internal: bool,
}

/// The modes `macvlan_mode` takes, as Docker's macvlan driver spells them.
const MODES: [(&str, Mode); 4] = [
    ("bridge", Mode::Bridge),
    ("vepa", Mode::Vepa),
    ("private", Mode::Private),
    ("passthru", Mode::Passthru),
];

/// The built-in driver's refusal of a mode, word for word.
pub fn bad_mode(mode: &str) -> String {
    format!(
        "requested macvlan mode '{mode}' is not valid, 'bridge' mode is the macvlan driver default"
    )
}

/// The options umacvlan reads from `-o`.
pub const OPTION_KEYS: [&str; 4] = ["parent", "macvlan_mode", "mode", "host"];

impl NetworkOptions {
    /// Reads and checks a network's options (nothing about the machine: the parent's existence
    /// is the caller's).
    pub fn parse(options: &BTreeMap<String, serde_json::Value>) -> Result<NetworkOptions, String> {
        let generic = match options.get(GENERIC) {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m.clone(),
            Some(v) => return Err(format!("{GENERIC} must be an object, not {v}")),
        };
        let mut opt = BTreeMap::new();
        for (k, v) in &generic {
            if !OPTION_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown option -o {k}: umacvlan takes {}",
                    OPTION_KEYS.join(", ")
                ));
            }
            let v = v
                .as_str()
                .ok_or_else(|| format!("option {k} must be a string, not {v}"))?;
            opt.insert(k.as_str(), v);
        }
        let mode = match (opt.get("macvlan_mode"), opt.get("mode")) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!("-o macvlan_mode={a} and -o mode={b} disagree"));
            }
            (Some(m), _) | (None, Some(m)) => MODES
                .iter()
                .find(|(name, _)| name == m)
                .map(|(_, mode)| *mode)
                .ok_or_else(|| bad_mode(m))?,
            (None, None) => Mode::Bridge,
        };
        let parent = match opt.get("parent") {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => {
                return Err(
                    "umacvlan needs a parent: -o parent=IF (an Ethernet interface, or IF.VID)"
                        .into(),
                );
            }
        };
        if parent == "lo" {
            return Err("loopback interface is not a valid macvlan parent link".into());
        }
        let host = opt
            .get("host")
            .map(|h| h.parse::<Cidr>().map_err(|e| format!("-o host={h}: {e}")))
            .transpose()?;
        let internal = match options.get(INTERNAL) {
            None | Some(serde_json::Value::Bool(false)) => false,
            Some(serde_json::Value::Bool(true)) => true,
            Some(v) => return Err(format!("{INTERNAL} must be a boolean, not {v}")),
        };
        Ok(NetworkOptions {
            parent,
            mode,
            host,
            internal,
        })
    }
}

/// Docker's macvlan refuses a network without an IPv4 pool (`--ipam-driver null`), word for word.
pub fn check_ipv4(data: &[IpamData]) -> Result<(), String> {
    match data.first() {
        Some(d) if d.pool != "0.0.0.0/0" => Ok(()),
        _ => Err("ipv4 pool is empty".into()),
    }
}

/// The MAC of an endpoint Docker gave none: `02:42` and the four bytes of its IPv4 address, as
/// Docker 20.10's macvlan (`netutils.GenerateMACFromIP`): stable as long as the address is.
/// Without an IPv4 address: `02:42` and the first four bytes of the endpoint ID.
pub fn endpoint_mac(ipv4: Option<std::net::Ipv4Addr>, endpoint_id: &str) -> MacAddr {
    let tail = match ipv4 {
        Some(a) => a.octets(),
        None => {
            let mut b = [0u8; 4];
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = endpoint_id
                    .get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .unwrap_or(0);
            }
            b
        }
    };
    MacAddr([0x02, 0x42, tail[0], tail[1], tail[2], tail[3]])
}

/// The first 12 characters of a Docker ID (as `docker ps` shows them).
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// An endpoint's port (and TAP) name: `umv` and its ID's first 12 characters: 15 bytes,
/// `IFNAMSIZ` - 1.
pub fn port_name(endpoint_id: &str) -> String {
    format!("umv{}", short(endpoint_id))
}

/// A network's host port: `umvh` and its ID's first 11 characters.
pub fn host_port_name(network_id: &str) -> String {
    format!("umvh{}", network_id.get(..11).unwrap_or(network_id))
}

/// The owner label of an endpoint's port (`link show`): `docker:NETWORK12/ENDPOINT12`.
pub fn owner(network_id: &str, endpoint_id: &str) -> String {
    format!("docker:{}/{}", short(network_id), short(endpoint_id))
}

/// The owner label of a network's host port: `docker:NETWORK12/host`.
pub fn host_owner(network_id: &str) -> String {
    format!("docker:{}/host", short(network_id))
}

/// A Docker ID: hex, at least 12 characters (names are derived from it).
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?} is not a Docker ID (hex, 12 characters or more)"
        ))
    }
}
