//! The protocol without Docker: the bodies Docker 20.10 sends (libnetwork's `drivers/remote`,
//! as recorded in the project's design notes), answered by a driver over a fake engine.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::driver::{Answer, Driver, Engine, Place};
use super::proto;
use super::state::{State, Store};
use crate::control::proto::{ControlError, ErrorKind, LinkSpec, Reply, Request};
use crate::control::spec::PortKind;
use crate::forward::Mode;
use crate::wire::mac::MacAddr;

const NET: &str = "4b1e2c0a7f3d9e8b6a5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
const EP: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const EP2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// An engine that records what it is asked, with the ports it would have.
#[derive(Debug, Default)]
struct Fake {
    requests: Vec<Request>,
    ports: BTreeSet<String>,
    /// What `find_device` finds.
    device: Option<Place>,
}

impl Engine for Fake {
    fn request(&mut self, request: Request) -> Result<Reply, ControlError> {
        self.requests.push(request.clone());
        match request {
            Request::LinkAdd(l) => {
                if !self.ports.insert(l.name.clone()) {
                    return Err(ControlError::new(ErrorKind::Exists, "exists"));
                }
                Ok(Reply::Links { links: vec![] })
            }
            Request::LinkDel(l) => match self.ports.remove(&l.name) {
                true => Ok(Reply::Done),
                false => Err(ControlError::new(
                    ErrorKind::NoSuchLink,
                    format!("no port named {}", l.name),
                )),
            },
            _ => Ok(Reply::Done),
        }
    }

    fn check_parent(&mut self, name: &str) -> Result<(), String> {
        match name {
            "enp0s3" | "enp0s3.10" => Ok(()),
            _ => Err(format!("parent {name} does not exist (ENODEV)")),
        }
    }

    fn find_device(&mut self, _: Option<&str>, _: MacAddr, _: &str) -> Option<Place> {
        self.device.clone()
    }
}

fn driver() -> Driver<Fake> {
    Driver {
        engine: Fake::default(),
        store: Store::in_memory(State::default()),
    }
}

fn call(d: &mut Driver<Fake>, method: &str, body: &str) -> Answer {
    d.call(&format!("/NetworkDriver.{method}"), body.as_bytes())
}

fn ok(d: &mut Driver<Fake>, method: &str, body: &str) -> Value {
    let a = call(d, method, body);
    assert_eq!(a.status, 200, "{method}: {a:?}");
    assert!(a.body.get("Err").is_none(), "{method}: {a:?}");
    a.body
}

fn refused(d: &mut Driver<Fake>, method: &str, body: &str) -> String {
    let a = call(d, method, body);
    assert_eq!(a.status, 200, "{method}: {a:?}");
    a.body["Err"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} was not refused: {a:?}"))
        .to_string()
}

/// CreateNetwork as `docker network create -d umacvlan --subnet=192.168.1.0/24
/// --gateway=192.168.1.1 -o parent=enp0s3 net1` sends it (json.Encoder: a trailing newline).
fn create_network(generic: &str, extra: &str) -> String {
    format!(
        r#"{{"NetworkID":"{NET}","Options":{{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{generic}{extra}}},"IPv4Data":[{{"AddressSpace":"LocalDefault","Pool":"192.168.1.0/24","Gateway":"192.168.1.1/24"}}],"IPv6Data":[]}}
"#
    )
}

fn create_endpoint(ep: &str, address: &str, mac: &str) -> String {
    format!(
        r#"{{"NetworkID":"{NET}","EndpointID":"{ep}","Interface":{{"Address":"{address}","AddressIPv6":"","MacAddress":"{mac}"}},"Options":{{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}}}
"#
    )
}

fn join(ep: &str) -> String {
    format!(
        r#"{{"NetworkID":"{NET}","EndpointID":"{ep}","SandboxKey":"/var/run/docker/netns/1a2b3c4d5e6f","Options":{{}}}}
"#
    )
}

fn ids(ep: &str) -> String {
    format!("{{\"NetworkID\":\"{NET}\",\"EndpointID\":\"{ep}\"}}\n")
}

/// net1 with the endpoint EP (192.168.1.100) joined.
fn joined() -> Driver<Fake> {
    let mut d = driver();
    net1(&mut d);
    let ep = create_endpoint(EP, "192.168.1.100/24", "");
    ok(&mut d, "CreateEndpoint", &ep);
    ok(&mut d, "Join", &join(EP));
    d
}

fn net1(d: &mut Driver<Fake>) {
    ok(
        d,
        "CreateNetwork",
        &create_network(r#"{"parent":"enp0s3"}"#, ""),
    );
}

#[test]
fn activation_and_capabilities_are_macvlans() {
    let mut d = driver();
    let a = d.call("/Plugin.Activate", b"");
    assert_eq!(a.body, json!({"Implements": ["NetworkDriver"]}));
    let a = d.call("/NetworkDriver.GetCapabilities", b"");
    assert_eq!(
        a.body,
        json!({"Scope": "local", "ConnectivityScope": "global"})
    );
}

#[test]
fn unknown_methods_are_404_and_the_no_ops_answer_empty() {
    let mut d = driver();
    let a = d.call("/NetworkDriver.Nope", b"{}");
    assert_eq!(a.status, 404);
    assert!(a.body["Err"].is_string());
    let both = format!("{{\"NetworkID\":\"{NET}\",\"EndpointID\":\"{EP}\",\"Options\":{{}}}}");
    assert_eq!(ok(&mut d, "ProgramExternalConnectivity", &both), json!({}));
    assert_eq!(
        ok(&mut d, "RevokeExternalConnectivity", &ids(EP)),
        json!({})
    );
    let discover = r#"{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.1","self":true}}"#;
    assert_eq!(ok(&mut d, "DiscoverNew", discover), json!({}));
    assert_eq!(ok(&mut d, "DiscoverDelete", discover), json!({}));
    let alloc = format!(
        r#"{{"NetworkID":"{NET}","Options":{{"parent":"enp0s3"}},"IPv4Data":[],"IPv6Data":[]}}"#
    );
    assert_eq!(
        ok(&mut d, "AllocateNetwork", &alloc),
        json!({"Options": {"parent": "enp0s3"}})
    );
    assert_eq!(
        ok(
            &mut d,
            "FreeNetwork",
            &format!("{{\"NetworkID\":\"{NET}\"}}")
        ),
        json!({})
    );
    assert!(d.engine.requests.is_empty(), "no-ops touch nothing");
    let bad = refused(&mut d, "CreateNetwork", "{nope");
    assert!(bad.starts_with("bad request body"), "{bad}");
}

#[test]
fn create_network_checks_options_like_macvlan() {
    let mut d = driver();
    let mode = refused(
        &mut d,
        "CreateNetwork",
        &create_network(r#"{"parent":"enp0s3","macvlan_mode":"bogus"}"#, ""),
    );
    assert_eq!(
        mode,
        "requested macvlan mode 'bogus' is not valid, 'bridge' mode is the macvlan driver default"
    );
    // Each refusal names what is wrong.
    for (generic, says) in [
        (r#"{"parent":"lo"}"#, "loopback"),
        (r#"{"parent":"enp9"}"#, "enp9"),
        ("{}", "-o parent="),
        (r#"{"partent":"enp0s3"}"#, "partent"),
        (r#"{"parent":"enp0s3","host":"nope"}"#, "-o host=nope"),
    ] {
        let e = refused(&mut d, "CreateNetwork", &create_network(generic, ""));
        assert!(e.contains(says), "{generic}: {e}");
    }
    // --ipam-driver null: no IPv4 pool.
    let null = format!(
        r#"{{"NetworkID":"{NET}","Options":{{"com.docker.network.generic":{{"parent":"enp0s3"}}}},"IPv4Data":[{{"AddressSpace":"null","Pool":"0.0.0.0/0"}}],"IPv6Data":[]}}"#
    );
    assert_eq!(
        refused(&mut d, "CreateNetwork", &null),
        "ipv4 pool is empty"
    );
    assert!(
        d.store.state.networks.is_empty(),
        "nothing refused was kept"
    );
    assert!(d.engine.requests.is_empty());
    for (mode, want) in [
        ("bridge", Mode::Bridge),
        ("vepa", Mode::Vepa),
        ("private", Mode::Private),
        ("passthru", Mode::Passthru),
    ] {
        let mut d = driver();
        let g = format!(r#"{{"parent":"enp0s3.10","macvlan_mode":"{mode}"}}"#);
        ok(&mut d, "CreateNetwork", &create_network(&g, ""));
        let n = &d.store.state.networks[NET];
        assert_eq!(
            (n.options.mode, n.options.parent.as_str()),
            (want, "enp0s3.10")
        );
    }
}

#[test]
fn a_whole_container_lifecycle() {
    let mut d = driver();
    net1(&mut d);
    let n = &d.store.state.networks[NET];
    assert_eq!(n.options.mode, Mode::Bridge);
    assert_eq!(n.ipv4[0].gateway, "192.168.1.1/24");
    // No MAC from Docker: 02:42 + the IPv4 address, returned (only that field).
    let a = ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP, "192.168.1.100/24", ""),
    );
    assert_eq!(a, json!({"Interface": {"MacAddress": "02:42:c0:a8:01:64"}}));
    let j = ok(&mut d, "Join", &join(EP));
    assert_eq!(
        j,
        json!({
            "InterfaceName": {"SrcName": "umv0123456789ab", "DstPrefix": "eth"},
            "Gateway": "192.168.1.1",
            "DisableGatewayService": false,
        })
    );
    let Request::LinkAdd(spec) = &d.engine.requests[0] else {
        panic!("{:?}", d.engine.requests)
    };
    assert_eq!(
        spec,
        &LinkSpec {
            name: "umv0123456789ab".into(),
            parent: Some("enp0s3".into()),
            mode: Some(Mode::Bridge),
            address: Some("02:42:c0:a8:01:64".parse().unwrap()),
            owner: Some("docker:4b1e2c0a7f3d/0123456789ab".into()),
            persist: true,
            ..LinkSpec::default()
        }
    );
    let e = &d.store.state.endpoints[EP];
    assert_eq!(
        e.sandbox.as_deref(),
        Some("/var/run/docker/netns/1a2b3c4d5e6f")
    );
    let info = ok(&mut d, "EndpointOperInfo", &ids(EP));
    assert_eq!(info["Value"]["umacvlan.port"], "umv0123456789ab");
    ok(&mut d, "Leave", &ids(EP));
    assert_eq!(d.store.state.endpoints[EP].sandbox, None);
    assert_eq!(d.engine.requests.len(), 1, "Leave changes no port");
    ok(&mut d, "DeleteEndpoint", &ids(EP));
    assert!(d.engine.ports.is_empty(), "the port is gone");
    assert!(d.store.state.endpoints.is_empty());
    ok(
        &mut d,
        "DeleteNetwork",
        &format!("{{\"NetworkID\":\"{NET}\"}}"),
    );
    assert!(d.store.state.networks.is_empty());
    // Deletes of what is not there succeed (stale sandboxes after a dockerd crash).
    ok(&mut d, "DeleteEndpoint", &ids(EP2));
    ok(
        &mut d,
        "DeleteNetwork",
        &format!("{{\"NetworkID\":\"{NET}\"}}"),
    );
    assert_eq!(
        ok(&mut d, "EndpointOperInfo", &ids(EP2)),
        json!({"Value": {}})
    );
}

#[test]
fn what_docker_set_is_not_returned_and_macs_are_unique() {
    let mut d = driver();
    net1(&mut d);
    let a = ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP, "192.168.1.100/24", "02:42:c0:a8:01:65"),
    );
    assert_eq!(a, json!({}), "--mac-address: nothing to return");
    // Another endpoint whose derived MAC is that one.
    let dup = refused(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP2, "192.168.1.101/24", ""),
    );
    assert!(
        dup.contains("02:42:c0:a8:01:65") && dup.contains("already used"),
        "{dup}"
    );
    let group = refused(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP2, "192.168.1.101/24", "01:00:5e:00:00:01"),
    );
    assert!(group.contains("group"), "{group}");
    let unknown = format!(
        r#"{{"NetworkID":"{EP2}","EndpointID":"{EP2}","Interface":{{"Address":"10.0.0.2/24"}}}}"#
    );
    let err = refused(&mut d, "CreateEndpoint", &unknown);
    assert!(err.contains("not a umacvlan network"), "{err}");
    assert_eq!(d.store.state.endpoints.len(), 1);
}

#[test]
fn internal_networks_have_no_gateway_and_ipv6_has_its_own() {
    let mut d = driver();
    let body = format!(
        r#"{{"NetworkID":"{NET}","Options":{{"com.docker.network.enable_ipv6":true,"com.docker.network.generic":{{"parent":"enp0s3"}}}},"IPv4Data":[{{"AddressSpace":"LocalDefault","Pool":"192.168.1.0/24","Gateway":"192.168.1.1/24","AuxAddresses":{{"router":"192.168.1.2/24"}}}}],"IPv6Data":[{{"AddressSpace":"LocalDefault","Pool":"2001:db8::/64","Gateway":"2001:db8::1/64"}}]}}"#
    );
    ok(&mut d, "CreateNetwork", &body);
    let ep = format!(
        r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Interface":{{"Address":"192.168.1.100/24","AddressIPv6":"2001:db8::100/64","MacAddress":""}}}}"#
    );
    ok(&mut d, "CreateEndpoint", &ep);
    assert_eq!(
        d.store.state.endpoints[EP].address_ipv6,
        Some("2001:db8::100/64".parse().unwrap())
    );
    let j = ok(&mut d, "Join", &join(EP));
    assert_eq!(j["Gateway"], "192.168.1.1");
    assert_eq!(j["GatewayIPv6"], "2001:db8::1");

    let mut d = driver();
    ok(
        &mut d,
        "CreateNetwork",
        &create_network(
            r#"{"parent":"enp0s3"}"#,
            r#","com.docker.network.internal":true"#,
        ),
    );
    ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP, "192.168.1.100/24", ""),
    );
    let j = ok(&mut d, "Join", &join(EP));
    assert!(j.get("Gateway").is_none(), "{j}");
    assert!(j.get("GatewayIPv6").is_none(), "{j}");
}

#[test]
fn a_host_port_lives_and_dies_with_its_network() {
    let mut d = driver();
    ok(
        &mut d,
        "CreateNetwork",
        &create_network(r#"{"parent":"enp0s3","host":"192.168.1.254/24"}"#, ""),
    );
    let Request::LinkAdd(spec) = &d.engine.requests[0] else {
        panic!()
    };
    assert_eq!(spec.name, "umvh4b1e2c0a7f3");
    assert_eq!(spec.kind, PortKind::Host);
    assert_eq!(spec.addresses, vec!["192.168.1.254/24".parse().unwrap()]);
    assert_eq!(spec.owner.as_deref(), Some("docker:4b1e2c0a7f3d/host"));
    assert!(d.engine.ports.contains("umvh4b1e2c0a7f3"));
    ok(
        &mut d,
        "DeleteNetwork",
        &format!("{{\"NetworkID\":\"{NET}\"}}"),
    );
    assert!(d.engine.ports.is_empty());
}

#[test]
fn restore_readds_host_ports_and_adopts_joined_endpoints() {
    let mut d = driver();
    ok(
        &mut d,
        "CreateNetwork",
        &create_network(r#"{"parent":"enp0s3","host":"192.168.1.254/24"}"#, ""),
    );
    ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP, "192.168.1.100/24", ""),
    );
    ok(&mut d, "Join", &join(EP));
    ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP2, "192.168.1.101/24", ""),
    );
    // The engine restarts: a new engine, the same state.
    let mut d = Driver {
        engine: Fake {
            device: Some(Place {
                netns: Some("/var/run/docker/netns/1a2b3c4d5e6f".into()),
                ifname: "eth0".into(),
            }),
            ..Fake::default()
        },
        store: Store::in_memory(d.store.state.clone()),
    };
    assert_eq!(d.restore(), Vec::<String>::new());
    let names: Vec<_> = d
        .engine
        .requests
        .iter()
        .map(|r| match r {
            Request::LinkAdd(l) => (l.name.clone(), l.netns.clone(), l.ifname.clone()),
            r => panic!("{r:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("umvh4b1e2c0a7f3".into(), None, None),
            (
                "umv0123456789ab".into(),
                Some("/var/run/docker/netns/1a2b3c4d5e6f".into()),
                Some("eth0".into())
            ),
        ],
        "the joined endpoint only"
    );
    // A device that is gone is reported, and nothing else changes.
    d.engine = Fake::default();
    let failed = d.restore();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("02:42:c0:a8:01:64"), "{failed:?}");
    assert_eq!(d.store.state.endpoints.len(), 2);
}

#[test]
fn the_mac_rule_is_docker_20_10s() {
    let mac = proto::endpoint_mac(Some("192.168.1.100".parse().unwrap()), EP);
    assert_eq!(mac.to_string(), "02:42:c0:a8:01:64");
    let mac = proto::endpoint_mac(Some("10.0.0.2".parse().unwrap()), EP);
    assert_eq!(mac.to_string(), "02:42:0a:00:00:02");
    let mac = proto::endpoint_mac(None, EP);
    assert_eq!(mac.to_string(), "02:42:01:23:45:67", "from the endpoint ID");
    assert_eq!(proto::port_name(EP).len(), 15);
    assert_eq!(proto::host_port_name(NET).len(), 15);
}

#[test]
fn an_endpoint_docker_deleted_while_the_engine_was_away_is_forgotten() {
    let mut d = joined();
    // The engine was down when the container went: Docker now gives its address to another.
    let a = ok(
        &mut d,
        "CreateEndpoint",
        &create_endpoint(EP2, "192.168.1.100/24", ""),
    );
    assert_eq!(a["Interface"]["MacAddress"], "02:42:c0:a8:01:64");
    assert!(
        !d.store.state.endpoints.contains_key(EP),
        "the stale endpoint is gone"
    );
    assert!(!d.engine.ports.contains("umv0123456789ab"), "and its port");

    // Restored from the state: a TAP found back in the engine's namespace is deleted.
    let d = joined();
    let mut d = Driver {
        engine: Fake {
            device: Some(Place {
                netns: None,
                ifname: "umv0123456789ab".into(),
            }),
            ..Fake::default()
        },
        store: Store::in_memory(d.store.state.clone()),
    };
    assert_eq!(d.restore(), Vec::<String>::new());
    assert!(d.store.state.endpoints.is_empty());
    assert!(d.engine.ports.is_empty(), "adopted, then deleted");
}
