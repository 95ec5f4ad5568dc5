//! `umacvlan-cni`: a CNI plugin (spec 0.3.0 to 1.1.0) that gives containers umacvlan ports.
//!
//! The plugin is a short-lived program a container runtime runs once per operation
//! (`CNI_COMMAND` = ADD, DEL, CHECK, STATUS, GC or VERSION, the network configuration on stdin,
//! the answer on stdout). It owns no state: the running engine (`umacvlan run`) does. ADD asks
//! the engine, over its control socket, for a port in `CNI_NETNS` whose device is called
//! `CNI_IFNAME`; the port's name in the engine is derived from (`CNI_CONTAINERID`,
//! `CNI_IFNAME`) ([`port_name`]) and the port carries an owner label
//! (`cni:NETWORK/CONTAINERID/IFNAME`), so DEL and GC find it again without any file. Addresses
//! come from the IPAM plugin named in `ipam.type` (`ipam`); `setup` applies them in the
//! container. Keys and behaviour follow the upstream `macvlan` plugin
//! (containernetworking/plugins `plugins/main/macvlan`), so a configuration switches with one
//! word: `"type": "macvlan"` becomes `"type": "umacvlan"`.
//!
//! * [`conf`]: the network configuration, the environment, versions, and result shapes.
//! * `verbs`: what each command does.
//! * `ipam`: running the IPAM plugin.
//! * `setup`: addresses, routes and sysctls inside the container's namespace.

pub mod conf;
pub(crate) mod ipam;
pub(crate) mod setup;
pub(crate) mod verbs;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::wire::mac::MacAddr;

/// The spec versions this plugin speaks (VERSION's `supportedVersions`).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec "Error codes"); 100 and above are this plugin's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// Failure to decode content (stdin is not a JSON object of the right shape).
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the engine is not running (ADD, CHECK).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now (no engine, or the parent is missing).
    pub const NOT_AVAILABLE: u32 = 50;
    /// The engine refused or failed the port request (its message says why).
    pub const ENGINE: u32 = 100;
    /// Configuring the interface inside the container failed (addresses, routes, sysctls).
    pub const SETUP: u32 = 101;
    /// CHECK found the container's interface other than `prevResult` describes.
    pub const CHECK: u32 = 102;
    /// The IPAM plugin could not be run or answered something that is not a CNI result.
    pub const IPAM: u32 = 103;
}

/// A CNI error object: what the plugin prints on stdout when it fails (exit status 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The port's name in the engine for the attachment (container, ifname): `cni` and 12 hex
/// digits of a stable hash, a valid interface name (15 bytes), the same on every call.
pub fn port_name(container_id: &str, ifname: &str) -> String {
    let h = MacAddr::derived(format!("cni/{container_id}/{ifname}").as_bytes()).0;
    let mut s = String::from("cni");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The owner label of a port the plugin created for (network, container, ifname).
pub fn owner_label(network: &str, container_id: &str, ifname: &str) -> String {
    format!("cni:{network}/{container_id}/{ifname}")
}

/// The (container, ifname) of a port of `network`, from its owner label; `None` for ports of
/// other networks and ports not created by CNI.
pub fn parse_owner<'a>(label: &'a str, network: &str) -> Option<(&'a str, &'a str)> {
    let rest = label.strip_prefix("cni:")?.strip_prefix(network)?;
    rest.strip_prefix('/')?.rsplit_once('/')
}

/// Runs one plugin invocation: the command from `env`, the configuration `stdin`. Returns the
/// text for stdout and whether it succeeded (the exit status is 0 then, else 1).
pub fn run(env: &conf::Env, stdin: &[u8]) -> (String, bool) {
    match verbs::dispatch(env, stdin) {
        Ok(out) => (out, true),
        Err((version, e)) => (error_text(&version, &e), false),
    }
}

/// The output of a failure before any configuration was read.
pub fn run_failed(e: &CniError) -> (String, bool) {
    (error_text(verbs::FALLBACK_VERSION, e), false)
}

/// The error object as printed: `{cniVersion, code, msg, details}`.
fn error_text(version: &str, e: &CniError) -> String {
    let mut j = serde_json::to_value(e).expect("an error object serialises");
    j["cniVersion"] = serde_json::Value::String(version.to_string());
    serde_json::to_string_pretty(&j).expect("JSON serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_are_stable_valid_interface_names() {
        let a = port_name("0123456789abcdef0123456789abcdef", "eth0");
        assert_eq!(a, port_name("0123456789abcdef0123456789abcdef", "eth0"));
        assert_ne!(a, port_name("0123456789abcdef0123456789abcdef", "net1"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("cni") && a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn owner_labels_belong_to_one_network() {
        let l = owner_label("net", "ctr-1", "eth0");
        assert_eq!(parse_owner(&l, "net"), Some(("ctr-1", "eth0")));
        assert_eq!(parse_owner(&l, "ne"), None);
        assert_eq!(parse_owner(&l, "net-b"), None);
        assert_eq!(parse_owner("someone-else", "net"), None);
    }

    #[test]
    fn failures_print_an_error_object() {
        let env = conf::Env {
            command: Some("ADD".into()),
            ..conf::Env::default()
        };
        let (out, ok) = run(&env, br#"{"cniVersion":"0.4.0","name":"n"}"#);
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], code::INVALID_ENV);
        let (out, ok) = run(&conf::Env::default(), b"");
        assert!(!ok && out.contains("CNI_COMMAND"), "{out}");
    }
}
