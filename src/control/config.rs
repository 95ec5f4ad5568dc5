//! The declarative configuration (TOML): parents, ports and the control socket.
//!
//! ```toml
//! control = "/run/umacvlan/umacvlan.sock"   # optional
//! control_group = "netadmin"                 # optional: the socket becomes root:GROUP 0660
//! worker_priority = "fifo:1"                 # optional: loaded[:N] (default loaded:-10), nice[:N], normal, fifo[:P]
//! spin_us = 50                               # optional: poll 50 µs after activity (default 0)
//! docker_plugin = "/run/docker/plugins/umacvlan.sock"  # optional: serve `-d umacvlan`
//! docker_state = "/var/lib/umacvlan/docker.json"       # optional: its networks and endpoints
//!
//! [parents.eth0]                             # optional: parent-wide settings
//! bclim = 1
//!
//! [[ports]]
//! name = "c1"
//! parent = "eth0"
//! mode = "bridge"                            # default bridge
//! netns = "web1"                             # default: the engine's namespace
//! ifname = "eth1"                            # the device's name there; default: name
//! mac = "02:00:00:00:00:01"                  # default: stable, derived
//! mtu = 1500
//! flags = ["nodst"]                          # nopromisc, nodst
//! bcqueuelen = 1000
//! macaddr = ["02:00:00:00:00:99"]            # source mode
//! kind = "tap"                               # tap (default), attach, stream
//! path = "/run/umacvlan/vm2.sock"            # kind = "stream" only
//! trust_guest_mac = false                    # VM ports (attach, stream) only
//! persist = false                            # TAP ports only: the device outlives the engine
//! ```
//!
//! [`Config::parse`] checks the syntax, the schema (unknown keys are errors) and every rule that
//! needs no machine; [`Config::check_machine`] adds the ones that read (never change) the
//! machine: parents, namespaces, MTUs. Errors name `FILE:LINE:COL` and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::control::proto::LinkSpec;
use crate::control::spec::{PortKind, PortSpec};
use crate::engine::priority::WorkerPriority;
use crate::forward::{MIN_MTU, Mode, ParentConfig, PortConfig, PortTable, check_mtu};
use crate::net::{Cidr, Netlink};
use crate::wire::mac::MacAddr;

/// The longest `spin_us` (and `run --spin-us`): 10 ms, far beyond where spinning pays.
pub const MAX_SPIN_US: u32 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control: Option<PathBuf>,
    control_group: Option<String>,
    worker_priority: Option<Spanned<String>>,
    spin_us: Option<Spanned<u32>>,
    docker_plugin: Option<PathBuf>,
    docker_state: Option<PathBuf>,
    #[serde(default)]
    parents: BTreeMap<String, RawParent>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParent {
    bclim: Option<i32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: Spanned<String>,
    parent: Spanned<String>,
    mode: Option<Spanned<String>>,
    netns: Option<Spanned<String>>,
    ifname: Option<String>,
    mac: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    #[serde(default)]
    flags: Vec<Spanned<String>>,
    bcqueuelen: Option<u32>,
    #[serde(default)]
    macaddr: Vec<Spanned<String>>,
    kind: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<String>>,
    path: Option<PathBuf>,
    #[serde(default)]
    trust_guest_mac: bool,
    #[serde(default)]
    persist: bool,
}

/// A configuration that parsed and passed every check that needs no machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub control: Option<PathBuf>,
    /// Members of this group may use the control socket too (`run --control-group`).
    pub control_group: Option<String>,
    /// The scheduling every worker asks for itself (`run --worker-priority`, which overrides
    /// it). Read at start only: a reload that changes it applies nothing until a restart.
    pub worker_priority: Option<WorkerPriority>,
    /// How long each worker polls after activity before sleeping, µs (`run --spin-us`, which
    /// overrides it). Read at start only, like `worker_priority`.
    pub spin_us: Option<u32>,
    /// Serve the Docker network driver on this socket (`run --docker-plugin`).
    pub docker_plugin: Option<PathBuf>,
    /// The Docker driver's state file (`run --docker-state`).
    pub docker_state: Option<PathBuf>,
    /// Parent → bclim.
    pub bclim: BTreeMap<String, i32>,
    pub ports: Vec<ConfigPort>,
}

/// One port of a configuration, with where its keys were written (for messages).
#[derive(Clone, Debug)]
pub struct ConfigPort {
    pub spec: LinkSpec,
    name_at: Range<usize>,
    mtu_at: Option<Range<usize>>,
    netns_at: Option<Range<usize>>,
    parent_at: Range<usize>,
}

impl PartialEq for ConfigPort {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for ConfigPort {}

/// A configuration error: where, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Turns byte offsets into `FILE:LINE:COL` errors.
struct Source<'a> {
    file: String,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, at: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = at.map_or(0, |r| r.start).min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            message: format!("cannot read it: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Checks the syntax, the schema and every rule that needs no machine.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let src = Source {
            file: file.to_string(),
            text,
        };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| src.error(e.span(), e.message().trim().to_string()))?;
        let mut ports = Vec::with_capacity(raw.ports.len());
        let mut names = BTreeSet::new();
        for p in raw.ports {
            let port = convert(&src, p)?;
            PortSpec::from(&port.spec)
                .check_kind(&port.spec.name)
                .map_err(|e| src.error(Some(port.name_at.clone()), format!("ports: {e}")))?;
            if !names.insert(port.spec.name.clone()) {
                let at = Some(port.name_at.clone());
                return Err(src.error(
                    at,
                    format!(
                        "ports.name: a port named {} is already defined",
                        port.spec.name
                    ),
                ));
            }
            ports.push(port);
        }
        let worker_priority = raw
            .worker_priority
            .map(|w| {
                let at = w.span();
                w.into_inner()
                    .parse::<WorkerPriority>()
                    .map_err(|e| src.error(Some(at), format!("worker_priority: {e}")))
            })
            .transpose()?;
        let spin_us = raw
            .spin_us
            .map(|s| {
                let at = s.span();
                let us = s.into_inner();
                if us > MAX_SPIN_US {
                    return Err(src.error(
                        Some(at),
                        format!("spin_us: {us} is more than {MAX_SPIN_US} (10 ms)"),
                    ));
                }
                Ok(us)
            })
            .transpose()?;
        let config = Config {
            control: raw.control,
            control_group: raw.control_group,
            docker_plugin: raw.docker_plugin,
            docker_state: raw.docker_state,
            worker_priority,
            spin_us,
            bclim: raw
                .parents
                .into_iter()
                .filter_map(|(k, v)| v.bclim.map(|b| (k, b)))
                .collect(),
            ports,
        };
        config.check_tables(&src, None)?;
        Ok(config)
    }

    /// The per-parent rules (duplicate MACs, passthru alone, MTU floor, source lists), with the
    /// parents' real MACs and MTUs when `machine` gives them.
    fn check_tables(
        &self,
        src: &Source<'_>,
        machine: Option<&BTreeMap<String, ParentConfig>>,
    ) -> Result<(), ConfigError> {
        let parents: BTreeSet<&str> = self
            .ports
            .iter()
            .map(|p| p.spec.parent.as_deref().unwrap_or(""))
            .collect();
        for parent in parents {
            let pconfig = match machine.and_then(|m| m.get(parent)) {
                Some(c) => c.clone(),
                // Without the machine: a parent MAC no port can have, the largest MTU.
                None => {
                    ParentConfig::new(parent, MacAddr([0x02, 0, 0, 0, 0, 0]), u32::from(u16::MAX))
                }
            };
            let ports: Vec<&ConfigPort> = self
                .ports
                .iter()
                .filter(|p| p.spec.parent.as_deref() == Some(parent))
                .collect();
            let configs: Vec<PortConfig> = ports
                .iter()
                .map(|p| PortConfig {
                    up: true,
                    ..PortSpec::from(&p.spec).to_config(parent)
                })
                .collect();
            if let Err(e) = PortTable::build(pconfig, configs) {
                let culprit = e
                    .port()
                    .and_then(|n| ports.iter().find(|p| p.spec.name == n))
                    .or(ports.first());
                let at = culprit.map(|p| match &e {
                    crate::forward::TableError::Mtu { .. } => {
                        p.mtu_at.clone().unwrap_or(p.name_at.clone())
                    }
                    _ => p.name_at.clone(),
                });
                return Err(src.error(at, format!("parent {parent}: {e}")));
            }
        }
        Ok(())
    }

    /// The checks that read the machine (never change it): every parent exists and can take
    /// ports, every namespace exists, MTUs fit the parents' and MACs are not the parents'.
    pub fn check_machine(&self, file: &str, text: &str) -> Result<(), ConfigError> {
        let src = Source {
            file: file.to_string(),
            text,
        };
        let mut nl = Netlink::open().map_err(|e| src.error(None, e.to_string()))?;
        let mut parents = BTreeMap::new();
        for p in &self.ports {
            let parent = p.spec.parent.as_deref().unwrap_or_default();
            if !parents.contains_key(parent) {
                let opts = crate::control::plan::ParentOptions::default();
                let (_, c) =
                    crate::control::plan::check_parent(&mut nl, parent, opts).map_err(|e| {
                        src.error(Some(p.parent_at.clone()), format!("ports.parent: {e}"))
                    })?;
                parents.insert(parent.to_string(), c);
            }
            if let Some(ns) = &p.spec.netns {
                crate::net::Netns::open(ns)
                    .map_err(|e| src.error(p.netns_at.clone(), format!("ports.netns: {e}")))?;
            }
        }
        self.check_tables(&src, Some(&parents))
    }
}

fn convert(src: &Source<'_>, p: RawPort) -> Result<ConfigPort, ConfigError> {
    let mode = match &p.mode {
        None => None,
        Some(m) => Some(
            m.get_ref()
                .parse::<Mode>()
                .map_err(|e| src.error(Some(m.span()), format!("ports.mode: {e}")))?,
        ),
    };
    let mac = |m: &Spanned<String>, key: &str| {
        m.get_ref()
            .parse::<MacAddr>()
            .map_err(|e| src.error(Some(m.span()), format!("{key}: {e}")))
    };
    let address = p.mac.as_ref().map(|m| mac(m, "ports.mac")).transpose()?;
    let macaddr = p
        .macaddr
        .iter()
        .map(|m| mac(m, "ports.macaddr"))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut nopromisc, mut nodst) = (false, false);
    for f in &p.flags {
        match f.get_ref().as_str() {
            "nopromisc" => nopromisc = true,
            "nodst" => nodst = true,
            other => {
                return Err(src.error(
                    Some(f.span()),
                    format!("ports.flags: unknown flag {other:?}; flags are nopromisc and nodst"),
                ));
            }
        }
    }
    let cidrs = |v: &[Spanned<String>], key: &str| {
        v.iter()
            .map(|c| {
                c.get_ref()
                    .parse::<Cidr>()
                    .map_err(|e| src.error(Some(c.span()), format!("{key}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let (addresses, routes) = (
        cidrs(&p.addresses, "ports.addresses")?,
        cidrs(&p.routes, "ports.routes")?,
    );
    let kind = match &p.kind {
        None => PortKind::Tap,
        Some(k) => k
            .get_ref()
            .parse()
            .map_err(|e| src.error(Some(k.span()), format!("ports.kind: {e}")))?,
    };
    // The parent's MTU is not known yet (a file may be checked off the machine): the one rule
    // (`forward::check_mtu`) under no parent's bound now, for the key's line and column; with the
    // parent's MTU when the table is built.
    if let Some(m) = &p.mtu
        && check_mtu(p.name.get_ref(), *m.get_ref(), u32::MAX).is_err()
    {
        return Err(src.error(
            Some(m.span()),
            format!("ports.mtu: {} is below {MIN_MTU}", m.get_ref()),
        ));
    }
    Ok(ConfigPort {
        name_at: p.name.span(),
        mtu_at: p.mtu.as_ref().map(Spanned::span),
        netns_at: p.netns.as_ref().map(Spanned::span),
        parent_at: p.parent.span(),
        spec: LinkSpec {
            name: p.name.into_inner(),
            parent: Some(p.parent.into_inner()),
            mode,
            address,
            mtu: p.mtu.map(Spanned::into_inner),
            netns: p.netns.map(Spanned::into_inner),
            ifname: p.ifname,
            owner: None,
            nopromisc,
            nodst,
            bcqueuelen: p.bcqueuelen,
            bclim: None,
            macaddr,
            kind,
            addresses,
            routes,
            path: p.path,
            trust_guest_mac: p.trust_guest_mac,
            persist: p.persist,
        },
    })
}

/// What a reload must do to go from `old` to `new`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub removed: Vec<String>,
    pub added: Vec<LinkSpec>,
    /// Ports whose settings changed: they are re-created (removed, then added).
    pub changed: Vec<LinkSpec>,
    pub unchanged: usize,
}

/// The difference between two configurations, by port name; untouched ports are left alone.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    for o in &old.ports {
        if !new.ports.iter().any(|n| n.spec.name == o.spec.name) {
            d.removed.push(o.spec.name.clone());
        }
    }
    for n in &new.ports {
        match old.ports.iter().find(|o| o.spec.name == n.spec.name) {
            None => d.added.push(n.spec.clone()),
            Some(o) if o.spec != n.spec => d.changed.push(n.spec.clone()),
            Some(_) => d.unchanged += 1,
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
control = "/tmp/u.sock"
worker_priority = "fifo:2"
spin_us = 40

[parents.eth0]
bclim = 2

[[ports]]
name = "c1"
parent = "eth0"
mode = "vepa"
netns = "web1"
ifname = "eth1"
mac = "02:00:00:00:00:01"
mtu = 1400

[[ports]]
name = "s1"
parent = "eth0"
mode = "source"
flags = ["nodst"]
macaddr = ["02:00:00:00:00:99"]
"#;

    fn err(text: &str) -> String {
        Config::parse("u.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file() {
        let c = Config::parse("u.toml", GOOD).unwrap();
        assert_eq!(c.control.as_deref(), Some(Path::new("/tmp/u.sock")));
        assert_eq!(c.bclim.get("eth0"), Some(&2));
        assert_eq!(c.worker_priority, Some(WorkerPriority::Fifo(2)));
        assert_eq!(c.spin_us, Some(40));
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].spec.ifname.as_deref(), Some("eth1"));
        let s = &c.ports[1].spec;
        assert!(s.nodst && s.mode == Some(Mode::Source) && s.macaddr.len() == 1);
        let host = "[[ports]]\nname = \"shim0\"\nparent = \"eth0\"\nkind = \"host\"\naddresses = [\"192.0.2.100/32\"]\nroutes = [\"192.0.2.0/24\"]\n";
        let c = Config::parse("h.toml", host).unwrap();
        let s = &c.ports[0].spec;
        assert_eq!(s.kind, PortKind::Host);
        assert_eq!(s.addresses, vec!["192.0.2.100/32".parse().unwrap()]);
        assert_eq!(s.routes, vec!["192.0.2.0/24".parse().unwrap()]);
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let cases = [
            (
                "control = \"/x\"\nworker_priority = \"fifo:0\"\n",
                "u.toml:2:19: worker_priority: worker priority \"fifo:0\": expected loaded[:N] \
                 (nice N under load, else normal; the default is loaded:-10), nice[:N] (N in \
                 -20..=19, default -10), normal or fifo[:P] (P in 1..=99, default 1)",
            ),
            (
                "spin_us = 10001\n",
                "u.toml:1:11: spin_us: 10001 is more than 10000 (10 ms)",
            ),
            ("[[ports]\nname = \"c1\"", "u.toml:1:"),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\ncolour = \"red\"\n",
                "u.toml:4:1: unknown field `colour`",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\nmode = \"bridged\"\n",
                "u.toml:4:8: ports.mode: unknown mode \"bridged\"",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\nmac = \"02:00\"\n",
                "u.toml:4:7: ports.mac:",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\nmtu = 40\n",
                "u.toml:4:7: ports.mtu: 40 is below 68",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\nflags = [\"fast\"]\n",
                "u.toml:4:10: ports.flags: unknown flag \"fast\"",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\nmac = \"02:00:00:00:00:01\"\n[[ports]]\nname = \"c2\"\nparent = \"eth0\"\nmac = \"02:00:00:00:00:01\"\n",
                "u.toml:6:8: parent eth0: ports c1 and c2 cannot both be up with MAC 02:00:00:00:00:01",
            ),
            (
                "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\n[[ports]]\nname = \"c1\"\nparent = \"eth1\"\n",
                "u.toml:5:8: ports.name: a port named c1 is already defined",
            ),
            (
                "[[ports]]\nname = \"t\"\nparent = \"eth0\"\nmode = \"passthru\"\n[[ports]]\nname = \"c2\"\nparent = \"eth0\"\n",
                "passthru port t must be the parent's only port",
            ),
            ("[[ports]]\nname = \"c1\"\n", "missing field `parent`"),
            (
                "[[ports]]\nname = \"h\"\nparent = \"eth0\"\nkind = \"host\"\nnetns = \"x\"\n",
                "u.toml:2:8: ports: --port \"h\": a host port stays in the engine's namespace",
            ),
            (
                "[[ports]]\nname = \"h\"\nparent = \"eth0\"\nkind = \"host\"\nroutes = [\"10.0.0.0/33\"]\n",
                "u.toml:5:11: ports.routes: \"10.0.0.0/33\": the prefix length must be 0..=32",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}\nwant {want:?}\ngot  {e}");
        }
    }

    #[test]
    fn persist_is_a_tap_ports_boolean() {
        let tap = "[[ports]]\nname = \"c1\"\nparent = \"eth0\"\npersist = true\n";
        assert!(Config::parse("u.toml", tap).unwrap().ports[0].spec.persist);
        let host = format!("{tap}kind = \"host\"\n");
        let e = Config::parse("u.toml", &host).unwrap_err().to_string();
        assert!(e.contains("persist is for TAP ports"), "{e}");
        // Making a port persistent re-creates it (no in-place change).
        let plain = Config::parse("a", &tap.replace("persist = true\n", "")).unwrap();
        let persistent = Config::parse("a", tap).unwrap();
        assert_eq!(diff(&plain, &persistent).changed.len(), 1);
    }

    #[test]
    fn vm_ports_and_their_keys() {
        let vm = "[[ports]]\nname = \"vm2\"\nparent = \"eth0\"\nkind = \"stream\"\n\
                  path = \"/run/umacvlan/vm2.sock\"\ntrust_guest_mac = true\n";
        let c = Config::parse("u.toml", vm).unwrap();
        let s = &c.ports[0].spec;
        assert_eq!(s.kind, PortKind::Stream);
        assert_eq!(s.path.as_deref(), Some(Path::new("/run/umacvlan/vm2.sock")));
        assert!(s.trust_guest_mac);
        for (bad, want) in [
            (
                vm.replace("kind = \"stream\"", "kind = \"vm\""),
                "u.toml:4:8: ports.kind: unknown kind",
            ),
            (
                vm.replace("path = \"/run/umacvlan/vm2.sock\"\n", ""),
                "u.toml:2:8: ports: --port \"vm2\": kind=stream needs path=",
            ),
            (
                vm.replace("kind = \"stream\"", "kind = \"tap\""),
                "path= is for kind=stream only",
            ),
        ] {
            let e = Config::parse("u.toml", &bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // Changing a port's kind re-creates it (no in-place change).
        let tap = Config::parse(
            "a",
            &vm.replace(
                "kind = \"stream\"\npath = \"/run/umacvlan/vm2.sock\"\ntrust_guest_mac = true\n",
                "",
            ),
        )
        .unwrap();
        assert_eq!(diff(&tap, &c).changed.len(), 1);
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let old = Config::parse("a", GOOD).unwrap();
        let new_text = GOOD
            .replace("mtu = 1400", "mtu = 1300")
            .replace("name = \"s1\"", "name = \"s2\"");
        let new = Config::parse("b", &new_text).unwrap();
        let d = diff(&old, &new);
        assert_eq!(d.removed, vec!["s1".to_string()]);
        assert_eq!(
            d.added.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["s2"]
        );
        assert_eq!(
            d.changed
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["c1"]
        );
        assert_eq!(
            diff(&old, &old),
            Diff {
                unchanged: 2,
                ..Diff::default()
            }
        );
    }
}
