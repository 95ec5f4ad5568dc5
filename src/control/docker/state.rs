//! What the driver remembers across restarts: Docker sends `CreateNetwork` and `Join` once, so
//! its networks and endpoints live in a JSON file, written whole to a temporary file and renamed
//! over the old one on every change (a crash leaves the old state or the new, never half).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::proto::{IpamData, NetworkOptions};
use crate::net::Cidr;
use crate::wire::mac::MacAddr;

/// Where `run --docker-plugin` keeps its state unless told otherwise (`--docker-state`).
pub const DEFAULT_STATE: &str = "/var/lib/umacvlan/docker.json";

/// A Docker network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    #[serde(flatten)]
    pub options: NetworkOptions,
    #[serde(default)]
    pub ipv4: Vec<IpamData>,
    #[serde(default)]
    pub ipv6: Vec<IpamData>,
}

/// A Docker endpoint: one container's interface on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_ipv6: Option<Cidr>,
    /// Set by `Join` (the container's namespace file), cleared by `Leave`: a joined endpoint's
    /// port is re-adopted when the engine starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// Every network and endpoint, by Docker ID.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// The state and the file it is kept in (`None`: memory only, for tests).
#[derive(Debug)]
pub struct Store {
    pub state: State,
    path: Option<PathBuf>,
}

impl Store {
    /// A store that writes nothing.
    pub fn in_memory(state: State) -> Store {
        Store { state, path: None }
    }

    /// Loads `path` (missing: empty state; unreadable or not this format: an error, so that a
    /// damaged file is never overwritten with nothing).
    pub fn load(path: &Path) -> Result<Store, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!("{}: not a umacvlan Docker state file: {e}", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(format!("{}: cannot read it: {e}", path.display())),
        };
        Ok(Store {
            state,
            path: Some(path.to_path_buf()),
        })
    }

    /// Writes the state: a temporary file beside it, synced, renamed over it.
    pub fn save(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("creating the directory of", e))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut text = serde_json::to_vec_pretty(&self.state).map_err(|e| e.to_string())?;
        text.push(b'\n');
        let mut f = std::fs::File::create(&tmp).map_err(|e| fail("writing", e))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| fail("writing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| fail("replacing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Mode;

    #[test]
    fn a_saved_state_loads_back_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("umv-docker-state-{}", std::process::id()));
        let path = dir.join("sub/docker.json");
        let mut store = Store::load(&path).unwrap();
        assert_eq!(store.state, State::default());
        store.state.networks.insert(
            "n1".into(),
            Network {
                options: NetworkOptions {
                    parent: "eth0".into(),
                    mode: Mode::Vepa,
                    host: Some("10.0.0.2/24".parse().unwrap()),
                    internal: false,
                },
                ipv4: vec![IpamData {
                    pool: "10.0.0.0/24".into(),
                    gateway: "10.0.0.1/24".into(),
                    ..IpamData::default()
                }],
                ipv6: vec![],
            },
        );
        store.state.endpoints.insert(
            "e1".into(),
            Endpoint {
                network: "n1".into(),
                mac: MacAddr([2, 0x42, 10, 0, 0, 5]),
                address: Some("10.0.0.5/24".parse().unwrap()),
                address_ipv6: None,
                sandbox: Some("/run/docker/netns/abc".into()),
            },
        );
        store.save().unwrap();
        assert!(!dir.join("sub/docker.json.tmp").exists());
        assert_eq!(Store::load(&path).unwrap().state, store.state);
        std::fs::write(&path, b"{nope").unwrap();
        let e = Store::load(&path).unwrap_err();
        assert!(e.contains("not a umacvlan Docker state file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
