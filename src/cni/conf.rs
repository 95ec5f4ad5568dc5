//! The plugin's inputs (environment, network configuration) and its result, shaped per spec
//! version.
//!
//! Unknown keys are accepted, as the spec requires (runtimes add `runtimeConfig`,
//! `capabilities`, `prevResult`, `cni.dev/valid-attachments` and other plugins' keys).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{CniError, SUPPORTED_VERSIONS, code};
use crate::control::proto::DEFAULT_SOCKET;
use crate::forward::Mode;
use crate::wire::mac::MacAddr;

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    /// The process's environment (empty variables count as missing).
    pub fn from_process() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// The variables `names` (by their `CNI_` names), or one error listing every missing one.
    pub fn require<const N: usize>(&self, names: [&str; N]) -> Result<[&str; N], CniError> {
        let get = |n: &str| match n {
            "CNI_CONTAINERID" => self.container_id.as_deref(),
            "CNI_NETNS" => self.netns.as_deref(),
            "CNI_IFNAME" => self.ifname.as_deref(),
            "CNI_PATH" => self.path.as_deref(),
            _ => None,
        };
        let missing: Vec<&str> = names.iter().copied().filter(|n| get(n).is_none()).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        Ok(names.map(|n| get(n).unwrap_or_default()))
    }

    /// `MAC=` from `CNI_ARGS` (`K=V;K=V`; other keys, such as Kubernetes' `K8S_POD_NAME`, are
    /// ignored).
    pub fn args_mac(&self) -> Result<Option<MacAddr>, CniError> {
        let Some(args) = &self.args else {
            return Ok(None);
        };
        for kv in args.split(';').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {kv:?} is not KEY=VALUE"),
                )
            })?;
            if k.eq_ignore_ascii_case("MAC") {
                return v.parse().map(Some).map_err(|e| {
                    CniError::new(code::INVALID_ENV, format!("CNI_ARGS MAC={v}: {e}"))
                });
            }
        }
        Ok(None)
    }
}

/// `ipam` of the configuration: only its `type` matters here; the IPAM plugin reads the rest.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `runtimeConfig` (capability arguments the runtime fills in).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub mac: Option<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration as written (upstream macvlan's keys plus `socket`).
#[derive(Clone, Debug, Deserialize)]
pub struct RawConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub bcqueuelen: Option<u32>,
    /// Upstream's nested setups (the master inside the container): not supported.
    #[serde(rename = "linkInContainer", default)]
    pub link_in_container: bool,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: RuntimeConfig,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// umacvlan's own key: the engine's control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: String,
    pub name: String,
    /// `None`: the interface of the default route, resolved by [`NetConf::master`].
    pub master: Option<String>,
    pub mode: Mode,
    /// `None` (or 0 in the file): the parent's MTU.
    pub mtu: Option<u32>,
    /// The top-level `mac`.
    pub mac: Option<MacAddr>,
    /// The port's broadcast queue length (`bcqueuelen`, as upstream).
    pub bcqueuelen: Option<u32>,
    /// `runtimeConfig.mac`.
    pub runtime_mac: Option<MacAddr>,
    /// `ipam.type`; `None`: layer 2 only (the link is just brought up).
    pub ipam: Option<String>,
    pub dns: Value,
    pub prev_result: Option<Value>,
    pub socket: PathBuf,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The version of a configuration that may not parse otherwise (for error objects).
pub fn version_of(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: String,
    }
    serde_json::from_slice::<V>(stdin).ok().map(|v| v.v)
}

/// `(major, minor, patch)` of a version string.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

/// Whether `v` is at least `min` (both valid versions).
pub fn at_least(v: &str, min: &str) -> bool {
    parse_version(v) >= parse_version(min)
}

impl NetConf {
    /// Parses and checks stdin: a decode failure is code 6, an unsupported version 1, a bad
    /// value 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        if !SUPPORTED_VERSIONS.contains(&raw.cni_version.as_str()) {
            return Err(incompatible(&raw.cni_version));
        }
        let invalid = |m: String| CniError::new(code::INVALID_CONFIG, m);
        if raw.link_in_container {
            return Err(invalid(
                "linkInContainer is not supported: the engine's parents are in its own namespace"
                    .into(),
            ));
        }
        let mode = match raw.mode.as_deref() {
            None | Some("") => Mode::Bridge,
            Some(m) => m.parse().map_err(|e| invalid(format!("mode: {e}")))?,
        };
        let mac = |key: &str, v: &Option<String>| {
            v.as_deref()
                .filter(|m| !m.is_empty())
                .map(|m| m.parse::<MacAddr>())
                .transpose()
                .map_err(|e| invalid(format!("{key}: {e}")))
        };
        Ok(NetConf {
            mac: mac("mac", &raw.mac)?,
            runtime_mac: mac("runtimeConfig.mac", &raw.runtime_config.mac)?,
            bcqueuelen: raw.bcqueuelen,
            version: raw.cni_version,
            name: raw.name,
            master: raw.master.filter(|m| !m.is_empty()),
            mode,
            mtu: raw.mtu.filter(|m| *m != 0),
            ipam: raw.ipam.map(|i| i.kind).filter(|k| !k.is_empty()),
            dns: raw.dns.unwrap_or_else(|| json!({})),
            prev_result: raw.prev_result,
            socket: raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The parent: `master`, else the interface of the default route (as upstream macvlan).
    pub fn master(&self) -> Result<String, CniError> {
        match &self.master {
            Some(m) => Ok(m.clone()),
            None => crate::control::plan::default_route_interface().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "no master given and no default route interface found",
                )
            }),
        }
    }

    /// The MAC the port gets, by upstream's precedence: `runtimeConfig.mac`, `CNI_ARGS MAC=`,
    /// `mac`; `None`: the engine's stable derived MAC.
    pub fn port_mac(&self, env: &Env) -> Result<Option<MacAddr>, CniError> {
        Ok(self.runtime_mac.or(env.args_mac()?).or(self.mac))
    }
}

/// Error 1 for a version outside [`SUPPORTED_VERSIONS`].
pub fn incompatible(v: &str) -> CniError {
    CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(format!(
        "config is {v:?}, plugin supports {}",
        SUPPORTED_VERSIONS.join(", ")
    ))
}

/// One address of a result (`ips[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConf {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

/// One route of a result (`routes[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gw: Option<IpAddr>,
}

/// `A.B.C.D/N` or `X::Y/N`.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (p <= max).then_some((addr, p))
}

/// The addresses and routes of a result (an IPAM plugin's or a `prevResult`), any version from
/// 0.3.0 on.
pub fn ips_and_routes(result: &Value) -> Result<(Vec<IpConf>, Vec<RouteConf>), String> {
    let list = |key: &str| result[key].as_array().cloned().unwrap_or_default();
    let ip = |v: &Value, key: &str| -> Result<Option<IpAddr>, String> {
        match v[key].as_str() {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("{key} {s:?} is not an IP address")),
        }
    };
    let cidr = |v: &Value, key: &str| -> Result<(IpAddr, u8), String> {
        let s = v[key].as_str().unwrap_or_default();
        parse_cidr(s).ok_or_else(|| format!("{key} {s:?} is not an address/prefix"))
    };
    let ips = list("ips")
        .iter()
        .map(|v| {
            let (address, prefix_len) = cidr(v, "address")?;
            Ok(IpConf {
                address,
                prefix_len,
                gateway: ip(v, "gateway")?,
            })
        })
        .collect::<Result<_, String>>()?;
    let routes = list("routes")
        .iter()
        .map(|v| {
            let (dst, prefix_len) = cidr(v, "dst")?;
            Ok(RouteConf {
                dst,
                prefix_len,
                gw: ip(v, "gw")?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((ips, routes))
}

/// The container-side interface of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: MacAddr,
    pub sandbox: String,
}

/// The ADD result in the shape of `version`: `interfaces` (the one container interface),
/// `ips` (every address on interface 0; with `"version": "4"|"6"` before 1.0.0), the IPAM's
/// `routes`, and the configuration's `dns`, as upstream macvlan prints them.
pub fn result(version: &str, iface: &Interface, ipam: Option<&Value>, dns: &Value) -> Value {
    let mut out = BTreeMap::new();
    out.insert("cniVersion", json!(version));
    out.insert(
        "interfaces",
        json!([{"name": iface.name, "mac": iface.mac, "sandbox": iface.sandbox}]),
    );
    if let Some(r) = ipam {
        let ips: Vec<Value> = r["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|ip| {
                let mut ip = ip.clone();
                ip["interface"] = json!(0);
                let family = ip["address"]
                    .as_str()
                    .and_then(parse_cidr)
                    .map(|(a, _)| if a.is_ipv4() { "4" } else { "6" });
                match ip.as_object_mut() {
                    Some(o) if at_least(version, "1.0.0") => {
                        o.remove("version");
                    }
                    Some(o) => {
                        o.insert("version".into(), json!(family));
                    }
                    None => {}
                }
                ip
            })
            .collect();
        out.insert("ips", json!(ips));
        if let Some(routes) = r["routes"].as_array().filter(|r| !r.is_empty()) {
            out.insert("routes", json!(routes));
        }
    }
    out.insert("dns", dns.clone());
    json!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        NetConf::parse(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes())
    }

    #[test]
    fn defaults_are_upstream_macvlans() {
        let c = conf(r#","mode":"","mtu":0,"ipam":{},"unknownKey":[1]"#).unwrap();
        assert_eq!(c.mode, Mode::Bridge);
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam, None, "ipam {{}}: layer 2 only");
        assert_eq!(c.dns, json!({}));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        let c = conf(r#","master":"eth1","mode":"vepa","mtu":1400,"socket":"/tmp/s","ipam":{"type":"host-local"},"bcqueuelen":0"#)
            .unwrap();
        assert_eq!(
            (c.master.as_deref(), c.mode, c.mtu, c.ipam.as_deref()),
            (Some("eth1"), Mode::Vepa, Some(1400), Some("host-local"))
        );
        assert_eq!(c.master().unwrap(), "eth1");
        assert_eq!(c.socket, PathBuf::from("/tmp/s"));
        assert_eq!(c.bcqueuelen, Some(0));
    }

    #[test]
    fn errors_have_the_spec_codes() {
        for (stdin, want) in [
            ("{", code::DECODE),
            (r#"{"cniVersion":"1.0.0"}"#, code::DECODE),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#,
                code::DECODE,
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"n"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mode":"x"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","linkInContainer":true}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mac":"01:00:5e"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"zz"}}"#,
                code::INVALID_CONFIG,
            ),
        ] {
            let e = NetConf::parse(stdin.as_bytes()).unwrap_err();
            assert_eq!(e.code, want, "{stdin}: {e}");
        }
    }

    #[test]
    fn mac_precedence_runtime_then_args_then_conf() {
        let env = |args: &str| Env {
            args: Some(args.to_string()),
            ..Env::default()
        };
        let c = conf(r#","mac":"02:00:00:00:00:01""#).unwrap();
        assert_eq!(c.port_mac(&Env::default()).unwrap(), c.mac);
        let m2: MacAddr = "02:00:00:00:00:02".parse().unwrap();
        let with_args = env("IgnoreUnknown=1;K8S_POD_NAME=p;MAC=02:00:00:00:00:02");
        assert_eq!(c.port_mac(&with_args).unwrap(), Some(m2));
        let c = conf(r#","mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}"#)
            .unwrap();
        assert_eq!(
            c.port_mac(&with_args).unwrap(),
            Some("02:00:00:00:00:03".parse().unwrap())
        );
        assert_eq!(
            c.port_mac(&env("MAC=nope")).unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(
            c.port_mac(&env("novalue")).unwrap_err().code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn missing_variables_are_listed_together() {
        let env = Env {
            ifname: Some("eth0".into()),
            ..Env::default()
        };
        let e = env
            .require(["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"])
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.ends_with("CNI_CONTAINERID, CNI_NETNS"), "{e}");
        assert_eq!(env.require(["CNI_IFNAME"]).unwrap(), ["eth0"]);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(at_least("0.10.0", "0.4.0") && at_least("1.1.0", "1.1.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert_eq!(parse_version("1.0"), None);
        assert_eq!(parse_version("1.0.0.0"), None);
        assert_eq!(version_of(br#"{"cniVersion":"0.4.0","x":"#), None);
        assert_eq!(
            version_of(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
    }

    #[test]
    fn results_are_shaped_per_version() {
        let ipam = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "192.0.2.10/24", "gateway": "192.0.2.254"},
                    {"address": "2001:db8::a/64", "version": "6"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["192.0.2.1"]}
        });
        let iface = Interface {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".parse().unwrap(),
            sandbox: "/run/netns/x".into(),
        };
        let dns = json!({"search": ["example.test"]});
        let old = result("0.4.0", &iface, Some(&ipam), &dns);
        assert_eq!(
            old,
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
                "ips": [{"version": "4", "interface": 0, "address": "192.0.2.10/24", "gateway": "192.0.2.254"},
                        {"version": "6", "interface": 0, "address": "2001:db8::a/64"}],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dns": {"search": ["example.test"]}
            })
        );
        let new = result("1.1.0", &iface, Some(&ipam), &dns);
        assert!(
            new["ips"]
                .as_array()
                .unwrap()
                .iter()
                .all(|ip| ip.get("version").is_none())
        );
        assert_eq!(new["cniVersion"], "1.1.0");
        let l2 = result("1.0.0", &iface, None, &json!({}));
        assert_eq!(l2.as_object().unwrap().len(), 3, "no ips or routes: {l2}");
        let (ips, routes) = ips_and_routes(&ipam).unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[1].prefix_len, 64);
        assert_eq!(routes[0].prefix_len, 0);
        assert!(ips_and_routes(&json!({"ips": [{"address": "192.0.2.1"}]})).is_err());
        assert!(ips_and_routes(&json!({"ips": [{"address": "192.0.2.1/33"}]})).is_err());
    }
}
