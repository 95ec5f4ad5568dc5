//! The driver: each call of the remote driver protocol turned into the engine's own requests
//! (`link add`, `link del`) and a change of the persisted [`State`](super::state::State). The engine is reached
//! through [`Engine`], so that the whole protocol runs in unit tests without a daemon.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::proto::{
    self, AllocateNetwork, CreateEndpoint, CreateNetwork, EndpointRef, InterfaceName, Join,
    JoinResponse, NetworkOptions, NetworkRef,
};
use super::state::{Endpoint, Network, Store};
use crate::control::proto::{ControlError, ErrorKind, LinkName, LinkSpec, Reply, Request};
use crate::control::spec::PortKind;
use crate::net::Cidr;
use crate::wire::mac::MacAddr;

/// Where a port's device is: its namespace (`None`: the engine's) and its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub netns: Option<String>,
    pub ifname: String,
}

/// What the driver needs from the engine.
pub trait Engine {
    /// A control request, applied by the daemon exactly as one from the control socket.
    fn request(&mut self, request: Request) -> Result<Reply, ControlError>;
    /// Whether `name` can be a parent (exists, Ethernet, not loopback; or `LOWER.VID`).
    fn check_parent(&mut self, name: &str) -> Result<(), String>;
    /// Where a joined endpoint's TAP is now: in its container's namespace `sandbox` (under
    /// `ethN`: the tun device with the endpoint's MAC), or back in the engine's under `src_name`.
    fn find_device(&mut self, sandbox: Option<&str>, mac: MacAddr, src_name: &str)
    -> Option<Place>;
}

/// An answer: the HTTP status and the JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer { status: 200, body }
    }

    /// A refusal as Docker reads it: `{"Err": ...}` (the user sees `remote: MESSAGE`).
    fn err(message: impl Into<String>) -> Answer {
        Answer {
            status: 200,
            body: json!({ "Err": message.into() }),
        }
    }
}

/// The Docker network driver over an engine.
#[derive(Debug)]
pub struct Driver<E> {
    pub engine: E,
    pub store: Store,
}

fn parse<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad request body: {e}"))
}

/// An address Docker sent (`ADDR/LEN`; empty: none).
fn cidr(what: &str, s: &str) -> Result<Option<Cidr>, String> {
    match s {
        "" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|e| format!("{what} {s:?}: {e}")),
    }
}

/// `link del` that treats a port already gone as deleted.
fn is_gone(e: &ControlError) -> bool {
    e.kind == ErrorKind::NoSuchLink
}

impl<E: Engine> Driver<E> {
    /// Answers `POST /METHOD` with `body`. An unknown method is a 404, which Docker reads as
    /// "not implemented".
    pub fn call(&mut self, method: &str, body: &[u8]) -> Answer {
        let result = match method {
            "/Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver"] })),
            "/NetworkDriver.GetCapabilities" => {
                Ok(json!({ "Scope": "local", "ConnectivityScope": "global" }))
            }
            "/NetworkDriver.CreateNetwork" => parse(body).and_then(|r| self.create_network(r)),
            "/NetworkDriver.DeleteNetwork" => parse(body).and_then(|r| self.delete_network(r)),
            "/NetworkDriver.CreateEndpoint" => parse(body).and_then(|r| self.create_endpoint(r)),
            "/NetworkDriver.DeleteEndpoint" => parse(body).and_then(|r| self.delete_endpoint(r)),
            "/NetworkDriver.Join" => parse(body).and_then(|r| self.join(r)),
            "/NetworkDriver.Leave" => parse(body).and_then(|r| self.leave(r)),
            "/NetworkDriver.EndpointOperInfo" => parse(body).map(|r| self.oper_info(&r)),
            "/NetworkDriver.ProgramExternalConnectivity"
            | "/NetworkDriver.RevokeExternalConnectivity" => {
                parse::<EndpointRef>(body).map(|_| json!({}))
            }
            "/NetworkDriver.DiscoverNew" | "/NetworkDriver.DiscoverDelete" => Ok(json!({})),
            "/NetworkDriver.AllocateNetwork" => {
                parse::<AllocateNetwork>(body).map(|r| json!({ "Options": r.options }))
            }
            "/NetworkDriver.FreeNetwork" => parse::<NetworkRef>(body).map(|_| json!({})),
            _ => {
                return Answer {
                    status: 404,
                    body: json!({ "Err": format!("{method}: not implemented by umacvlan") }),
                };
            }
        };
        match result {
            Ok(body) => Answer::ok(body),
            Err(message) => {
                tracing::warn!(method, "docker: refused: {message}");
                Answer::err(message)
            }
        }
    }

    fn save(&self) -> Result<(), String> {
        self.store.save()
    }

    fn create_network(&mut self, r: CreateNetwork) -> Result<Value, String> {
        proto::check_id("network", &r.network_id)?;
        if self.store.state.networks.contains_key(&r.network_id) {
            return Ok(json!({}));
        }
        let options = NetworkOptions::parse(&r.options)?;
        proto::check_ipv4(&r.ipv4_data)?;
        for d in r.ipv4_data.iter().chain(&r.ipv6_data) {
            cidr("pool", &d.pool)?;
            cidr("gateway", &d.gateway)?;
        }
        self.engine.check_parent(&options.parent)?;
        let network = Network {
            options,
            ipv4: r.ipv4_data,
            ipv6: r.ipv6_data,
        };
        self.add_host_port(&r.network_id, &network)?;
        self.store
            .state
            .networks
            .insert(r.network_id.clone(), network);
        if let Err(e) = self.save() {
            self.store.state.networks.remove(&r.network_id);
            self.del_port(&proto::host_port_name(&r.network_id));
            return Err(e);
        }
        tracing::info!(
            network = proto::short(&r.network_id),
            "docker: network created"
        );
        Ok(json!({}))
    }

    /// A network's host port (`-o host=`), if it asks for one.
    fn add_host_port(&mut self, id: &str, n: &Network) -> Result<(), String> {
        let Some(addr) = n.options.host else {
            return Ok(());
        };
        let spec = LinkSpec {
            name: proto::host_port_name(id),
            parent: Some(n.options.parent.clone()),
            owner: Some(proto::host_owner(id)),
            kind: PortKind::Host,
            addresses: vec![addr],
            ..LinkSpec::default()
        };
        self.engine
            .request(Request::LinkAdd(spec))
            .map(|_| ())
            .map_err(|e| format!("the host port of -o host={addr}: {}", e.message))
    }

    /// Deletes a port; one already gone is fine, another failure is logged.
    fn del_port(&mut self, name: &str) {
        let del = Request::LinkDel(LinkName { name: name.into() });
        if let Err(e) = self.engine.request(del)
            && !is_gone(&e)
        {
            tracing::warn!(port = name, "docker: cannot delete the port: {}", e.message);
        }
    }

    fn delete_network(&mut self, r: NetworkRef) -> Result<Value, String> {
        let Some(n) = self.store.state.networks.remove(&r.network_id) else {
            return Ok(json!({}));
        };
        if n.options.host.is_some() {
            self.del_port(&proto::host_port_name(&r.network_id));
        }
        // Endpoints Docker did not delete first (it always does): their ports go too.
        let stale: Vec<String> = self
            .store
            .state
            .endpoints
            .iter()
            .filter(|(_, e)| e.network == r.network_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.store.state.endpoints.remove(&id);
            self.del_port(&proto::port_name(&id));
        }
        self.save()?;
        tracing::info!(
            network = proto::short(&r.network_id),
            "docker: network deleted"
        );
        Ok(json!({}))
    }

    fn create_endpoint(&mut self, r: CreateEndpoint) -> Result<Value, String> {
        proto::check_id("endpoint", &r.endpoint_id)?;
        if !self.store.state.networks.contains_key(&r.network_id) {
            return Err(format!(
                "network {} is not a umacvlan network (not in its state file)",
                proto::short(&r.network_id)
            ));
        }
        let iface = r.interface.unwrap_or_default();
        let address = cidr("address", &iface.address)?;
        let address_ipv6 = cidr("IPv6 address", &iface.address_ipv6)?;
        let mac = match iface.mac_address.as_str() {
            "" => {
                let v4 = address.and_then(|a| match a.addr {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                });
                proto::endpoint_mac(v4, &r.endpoint_id)
            }
            m => m
                .parse::<MacAddr>()
                .map_err(|e| format!("MAC address {m:?}: {e}"))?,
        };
        if !mac.is_valid_unicast() {
            return Err(format!("{mac} is a group or zero address"));
        }
        // Docker's IPAM gives an address to one endpoint of a network at a time: an endpoint
        // we still have with it is one Docker deleted while the engine was away.
        let stale: Vec<String> = self
            .store
            .state
            .endpoints
            .iter()
            .filter(|(id, e)| {
                e.network == r.network_id
                    && **id != r.endpoint_id
                    && ((address.is_some() && e.address == address)
                        || (address_ipv6.is_some() && e.address_ipv6 == address_ipv6))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            tracing::info!(
                endpoint = proto::short(&id),
                "docker: forgetting a stale endpoint"
            );
            self.store.state.endpoints.remove(&id);
            self.del_port(&proto::port_name(&id));
        }
        if let Some((other, _)) = self
            .store
            .state
            .endpoints
            .iter()
            .find(|(id, e)| e.network == r.network_id && e.mac == mac && **id != r.endpoint_id)
        {
            return Err(format!(
                "MAC address {mac} is already used by endpoint {} on this network",
                proto::short(other)
            ));
        }
        self.store.state.endpoints.insert(
            r.endpoint_id.clone(),
            Endpoint {
                network: r.network_id,
                mac,
                address,
                address_ipv6,
                sandbox: None,
            },
        );
        if let Err(e) = self.save() {
            self.store.state.endpoints.remove(&r.endpoint_id);
            return Err(e);
        }
        // Only what Docker left empty: it refuses a reply that changes what it set.
        Ok(match iface.mac_address.is_empty() {
            true => json!({ "Interface": { "MacAddress": mac.to_string() } }),
            false => json!({}),
        })
    }

    fn delete_endpoint(&mut self, r: EndpointRef) -> Result<Value, String> {
        // Unknown IDs too: after a dockerd crash, stale sandboxes are deleted without Leave.
        self.del_port(&proto::port_name(&r.endpoint_id));
        if self.store.state.endpoints.remove(&r.endpoint_id).is_some() {
            self.save()?;
        }
        Ok(json!({}))
    }

    /// The `link add` of an endpoint's port: a persistent TAP (a killed engine leaves the
    /// container's interface in place) in the engine's namespace, or, given `place` (where its
    /// device is now), the adoption of that device.
    fn endpoint_spec(id: &str, e: &Endpoint, n: &Network, place: Option<Place>) -> LinkSpec {
        let (netns, ifname) = match place {
            Some(p) => (p.netns, Some(p.ifname)),
            None => (None, None),
        };
        LinkSpec {
            name: proto::port_name(id),
            parent: Some(n.options.parent.clone()),
            mode: Some(n.options.mode),
            address: Some(e.mac),
            owner: Some(proto::owner(&e.network, id)),
            netns,
            ifname,
            persist: true,
            ..LinkSpec::default()
        }
    }

    fn join(&mut self, r: Join) -> Result<Value, String> {
        let e = self
            .store
            .state
            .endpoints
            .get(&r.endpoint_id)
            .cloned()
            .ok_or_else(|| format!("endpoint {} not found", proto::short(&r.endpoint_id)))?;
        let n = self
            .store
            .state
            .networks
            .get(&e.network)
            .cloned()
            .ok_or_else(|| format!("network {} not found", proto::short(&e.network)))?;
        let spec = Self::endpoint_spec(&r.endpoint_id, &e, &n, None);
        let name = spec.name.clone();
        self.engine
            .request(Request::LinkAdd(spec))
            .map_err(|e| e.message)?;
        if let Some(ep) = self.store.state.endpoints.get_mut(&r.endpoint_id) {
            ep.sandbox = Some(r.sandbox_key).filter(|s| !s.is_empty());
        }
        if let Err(err) = self.save() {
            self.del_port(&name);
            return Err(err);
        }
        let gateway = |d: &[proto::IpamData]| match n.options.internal {
            true => String::new(),
            false => d
                .first()
                .and_then(proto::IpamData::gateway_ip)
                .map(|g| g.to_string())
                .unwrap_or_default(),
        };
        let answer = JoinResponse {
            interface_name: InterfaceName {
                src_name: name,
                dst_prefix: "eth".into(),
            },
            gateway: gateway(&n.ipv4),
            gateway_ipv6: gateway(&n.ipv6),
            disable_gateway_service: false,
        };
        serde_json::to_value(answer).map_err(|e| e.to_string())
    }

    fn leave(&mut self, r: EndpointRef) -> Result<Value, String> {
        if let Some(e) = self.store.state.endpoints.get_mut(&r.endpoint_id)
            && e.sandbox.take().is_some()
        {
            self.save()?;
        }
        Ok(json!({}))
    }

    fn oper_info(&self, r: &EndpointRef) -> Value {
        match self.store.state.endpoints.get(&r.endpoint_id) {
            Some(e) => json!({ "Value": {
                "umacvlan.port": proto::port_name(&r.endpoint_id),
                "umacvlan.mac": e.mac.to_string(),
            }}),
            None => json!({ "Value": {} }),
        }
    }

    /// At engine start: every network's host port again, and every joined endpoint's TAP
    /// adopted where it is now. Returns what could not be done, one line each (nothing in the
    /// state changes: Docker deletes what is gone).
    pub fn restore(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        let networks: Vec<(String, Network)> = self
            .store
            .state
            .networks
            .iter()
            .map(|(id, n)| (id.clone(), n.clone()))
            .collect();
        for (id, n) in &networks {
            if let Err(e) = self.add_host_port(id, n) {
                failed.push(format!("network {}: {e}", proto::short(id)));
            }
        }
        let joined: Vec<(String, Endpoint)> = self
            .store
            .state
            .endpoints
            .iter()
            .filter(|(_, e)| e.sandbox.is_some())
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        for (id, e) in joined {
            let Some((_, n)) = networks.iter().find(|(nid, _)| *nid == e.network) else {
                failed.push(format!(
                    "endpoint {}: its network is gone",
                    proto::short(&id)
                ));
                continue;
            };
            let src = proto::port_name(&id);
            let Some(place) = self.engine.find_device(e.sandbox.as_deref(), e.mac, &src) else {
                failed.push(format!(
                    "endpoint {}: no device with MAC {} in {} or as {src}",
                    proto::short(&id),
                    e.mac,
                    e.sandbox.as_deref().unwrap_or("-"),
                ));
                continue;
            };
            // Back in the engine's namespace under its own name: Docker took it out of its
            // container while the engine was away (Leave and DeleteEndpoint went unanswered).
            let left = place.netns.is_none();
            let spec = Self::endpoint_spec(&id, &e, n, Some(place));
            if let Err(err) = self.engine.request(Request::LinkAdd(spec)) {
                failed.push(format!("endpoint {}: {}", proto::short(&id), err.message));
            } else if left {
                tracing::info!(
                    endpoint = proto::short(&id),
                    "docker: removing an endpoint its container left"
                );
                self.del_port(&src);
                self.store.state.endpoints.remove(&id);
                if let Err(err) = self.save() {
                    failed.push(err);
                }
            }
        }
        failed
    }
}
