//! The CNI commands. Each returns stdout's text, or the error with the version to print it in.
//!
//! * ADD: the port (engine), then IPAM ADD, then the container side ([`setup::configure`]);
//!   a failure undoes what was done (IPAM DEL, port deleted).
//! * DEL: IPAM DEL, then the port. Idempotent: no engine (its ports died with it), no port, or
//!   no namespace any more is success.
//! * CHECK (0.4.0+): IPAM CHECK, the engine's port (parent, mode, owner, MAC), the container's
//!   device, addresses and routes against `prevResult`.
//! * STATUS (1.1.0): the engine answers and the parent exists, else code 50.
//! * GC (1.1.0): every port this network created whose attachment is not in
//!   `cni.dev/valid-attachments` loses its IPAM lease (IPAM DEL in that attachment's name) and
//!   is deleted.
//! * VERSION: [`SUPPORTED_VERSIONS`].

use std::path::Path;

use serde_json::{Value, json};

use super::conf::{Env, Interface, NetConf, at_least, ips_and_routes, version_of};
use super::ipam::Ipam;
use super::{CniError, SUPPORTED_VERSIONS, code, owner_label, parse_owner, port_name, setup};
use crate::control::client::{ClientError, request};
use crate::control::proto::{ErrorKind, LinkFilter, LinkName, LinkSpec, LinkView, Reply, Request};

/// The version errors are printed in when the configuration has none.
pub const FALLBACK_VERSION: &str = "1.1.0";

/// Runs the command in `env` on the configuration `stdin`.
pub fn dispatch(env: &Env, stdin: &[u8]) -> Result<String, (String, CniError)> {
    let version = version_of(stdin).unwrap_or_else(|| FALLBACK_VERSION.to_string());
    let fail = |e: CniError| (version.clone(), e);
    let command = env.command.as_deref().ok_or_else(|| {
        fail(CniError::new(
            code::INVALID_ENV,
            "required environment variable missing: CNI_COMMAND",
        ))
    })?;
    if command == "VERSION" {
        return Ok(pretty(&json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin).map_err(fail)?;
    let need = |min: &str| {
        if at_least(&conf.version, min) {
            Ok(())
        } else {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("config version does not allow {command}"),
            )
            .with_details(format!("{command} needs cniVersion {min} or later")))
        }
    };
    let call = Call {
        env,
        conf: &conf,
        stdin,
    };
    let done = match command {
        "ADD" => return call.add().map(|v| pretty(&v)).map_err(fail),
        "DEL" => call.del(),
        "CHECK" => need("0.4.0").and_then(|()| call.check()),
        "STATUS" => need("1.1.0").and_then(|()| call.status()),
        "GC" => need("1.1.0").and_then(|()| call.gc()),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "unknown CNI_COMMAND {other:?}; commands are ADD, DEL, CHECK, STATUS, GC and VERSION"
            ),
        )),
    };
    done.map(|()| String::new()).map_err(fail)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON serialises")
}

/// One invocation's inputs.
struct Call<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    stdin: &'a [u8],
}

/// An engine error as a CNI error: no engine is "try again later" (11).
fn engine_err(e: ClientError) -> CniError {
    match e {
        ClientError::NotListening { .. } => CniError::new(code::TRY_AGAIN, e.to_string()),
        _ => CniError::new(code::ENGINE, e.to_string()),
    }
}

/// Whether the error means the port is gone already (no engine, no such port).
fn already_gone(e: &ClientError) -> bool {
    matches!(e, ClientError::NotListening { .. })
        || matches!(e, ClientError::Daemon(d) if d.kind == ErrorKind::NoSuchLink)
}

impl Call<'_> {
    fn socket(&self) -> &Path {
        &self.conf.socket
    }

    fn ipam(&self) -> Option<Ipam<'_>> {
        self.conf.ipam.as_deref().map(|kind| Ipam {
            kind,
            env: self.env,
            stdin: self.stdin,
        })
    }

    fn add(&self) -> Result<Value, CniError> {
        let [container, netns, ifname, _] =
            self.env
                .require(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
        let master = self.conf.master()?;
        let port = port_name(container, ifname);
        let spec = LinkSpec {
            name: port.clone(),
            parent: Some(master),
            mode: Some(self.conf.mode),
            address: self.conf.port_mac(self.env)?,
            mtu: self.conf.mtu,
            netns: Some(netns.to_string()),
            ifname: Some(ifname.to_string()),
            owner: Some(owner_label(&self.conf.name, container, ifname)),
            bcqueuelen: self.conf.bcqueuelen,
            ..LinkSpec::default()
        };
        let view = self
            .links(Request::LinkAdd(spec))
            .map_err(engine_err)?
            .into_iter()
            .next()
            .ok_or_else(|| CniError::new(code::ENGINE, "the engine added no port"))?;
        let iface = Interface {
            name: ifname.to_string(),
            mac: view.address,
            sandbox: netns.to_string(),
        };
        let done = self.after_port(&iface);
        if done.is_err() {
            // Undo: the port (its device leaves the container with it).
            if let Err(e) = self.delete_port(&port, Some(netns), ifname) {
                tracing::warn!("rollback: deleting port {port}: {e}");
            }
        }
        done
    }

    /// ADD once the port exists: IPAM (undone on a later failure) and the container side.
    fn after_port(&self, iface: &Interface) -> Result<Value, CniError> {
        let Some(ipam) = self.ipam() else {
            setup::configure(&iface.sandbox, &iface.name, None)?;
            return Ok(super::conf::result(
                &self.conf.version,
                iface,
                None,
                &self.conf.dns,
            ));
        };
        let r = ipam.exec("ADD", &[])?;
        let applied = ips_and_routes(&r)
            .map_err(|e| CniError::new(code::IPAM, format!("IPAM result: {e}")))
            .and_then(|(ips, routes)| {
                if ips.is_empty() {
                    return Err(CniError::new(
                        code::IPAM,
                        "IPAM plugin returned missing IP config",
                    ));
                }
                setup::configure(&iface.sandbox, &iface.name, Some((&ips, &routes)))
            });
        if let Err(e) = applied {
            if let Err(d) = ipam.exec("DEL", &[]) {
                tracing::warn!("rollback: IPAM DEL: {d}");
            }
            return Err(e);
        }
        Ok(super::conf::result(
            &self.conf.version,
            iface,
            Some(&r),
            &self.conf.dns,
        ))
    }

    fn del(&self) -> Result<(), CniError> {
        let [container, ifname] = self.env.require(["CNI_CONTAINERID", "CNI_IFNAME"])?;
        if let Some(ipam) = self.ipam() {
            ipam.exec("DEL", &[])?;
        }
        let port = port_name(container, ifname);
        self.delete_port(&port, self.env.netns.as_deref(), ifname)
    }

    /// Deletes the engine's port `port` (success if there is no such port or no engine) and
    /// waits until its device `ifname` has left `netns`.
    fn delete_port(&self, port: &str, netns: Option<&str>, ifname: &str) -> Result<(), CniError> {
        let del = Request::LinkDel(LinkName {
            name: port.to_string(),
        });
        match request(self.socket(), del) {
            Ok(_) => netns.map_or(Ok(()), |ns| setup::wait_gone(ns, ifname)),
            Err(e) if already_gone(&e) => Ok(()),
            Err(e) => Err(engine_err(e)),
        }
    }

    /// Sends `r` (link-add or link-show) and returns the ports of the answer.
    fn links(&self, r: Request) -> Result<Vec<LinkView>, ClientError> {
        match request(self.socket(), r)? {
            Reply::Links { links } => Ok(links),
            other => Err(ClientError::Protocol {
                path: self.socket().to_path_buf(),
                message: format!("{other:?} where ports were expected"),
            }),
        }
    }

    /// The engine's view of one port, `None` if it has no such port.
    fn port(&self, name: &str) -> Result<Option<LinkView>, CniError> {
        let show = Request::LinkShow(LinkFilter {
            name: Some(name.to_string()),
        });
        match self.links(show) {
            Ok(links) => Ok(links.into_iter().next()),
            Err(ClientError::Daemon(d)) if d.kind == ErrorKind::NoSuchLink => Ok(None),
            Err(e) => Err(engine_err(e)),
        }
    }

    fn check(&self) -> Result<(), CniError> {
        let [container, netns, ifname, _] =
            self.env
                .require(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])?;
        let prev = self.conf.prev_result.as_ref().ok_or_else(|| {
            CniError::new(code::INVALID_CONFIG, "CHECK: required prevResult missing")
        })?;
        if let Some(ipam) = self.ipam() {
            ipam.exec("CHECK", &[])?;
        }
        let bad = |m: String| CniError::new(code::CHECK, m);
        let iface = prev["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == ifname && i["sandbox"] == netns)
            .ok_or_else(|| {
                bad(format!(
                    "prevResult has no interface {ifname} in sandbox {netns}"
                ))
            })?;
        let mac = iface["mac"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| bad(format!("prevResult: interface {ifname} has no valid mac")))?;
        let iface = Interface {
            name: ifname.to_string(),
            mac,
            sandbox: netns.to_string(),
        };
        let (ips, routes) = ips_and_routes(prev).map_err(|e| bad(format!("prevResult: {e}")))?;
        let port = port_name(container, ifname);
        let view = self
            .port(&port)?
            .ok_or_else(|| bad(format!("the engine has no port {port} for {ifname}")))?;
        let master = self.conf.master()?;
        let owner = owner_label(&self.conf.name, container, ifname);
        let differences = [
            (view.parent != master).then(|| format!("parent {} (config: {master})", view.parent)),
            (view.mode != self.conf.mode)
                .then(|| format!("mode {} (config: {})", view.mode, self.conf.mode)),
            (view.owner.as_deref() != Some(owner.as_str()))
                .then(|| format!("owner {:?} (expected {owner:?})", view.owner)),
            (view.address != mac).then(|| format!("MAC {} (prevResult: {mac})", view.address)),
        ];
        if let Some(d) = differences.into_iter().flatten().next() {
            return Err(bad(format!("port {port}: {d}")));
        }
        setup::check(&iface, &ips, &routes)
    }

    fn status(&self) -> Result<(), CniError> {
        let unavailable = |m: String| CniError::new(code::NOT_AVAILABLE, m);
        let master = self.conf.master().map_err(|e| unavailable(e.msg))?;
        request(self.socket(), Request::LinkShow(LinkFilter::default()))
            .map_err(|e| unavailable(e.to_string()))?;
        let mut nl = crate::net::Netlink::open().map_err(|e| unavailable(e.to_string()))?;
        // The engine's own check: an emulated 802.1Q sub-interface (`eth0.100` with no such
        // device) is available when its lower device is.
        let opts = crate::control::plan::ParentOptions::default();
        match crate::control::plan::check_parent(&mut nl, &master, opts) {
            Ok(_) => Ok(()),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    fn gc(&self) -> Result<(), CniError> {
        // Without the list every port of the network would look stale: refuse.
        let valid = self.conf.valid_attachments.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC: required cni.dev/valid-attachments missing",
            )
        })?;
        let links = match self.links(Request::LinkShow(LinkFilter::default())) {
            Ok(links) => links,
            // No engine: its ports are gone with it; nothing to collect.
            Err(ClientError::NotListening { .. }) => return Ok(()),
            Err(e) => return Err(engine_err(e)),
        };
        let mut failures = Vec::new();
        for l in &links {
            let Some((container, ifname)) = l
                .owner
                .as_deref()
                .and_then(|o| parse_owner(o, &self.conf.name))
            else {
                continue;
            };
            if valid
                .iter()
                .any(|a| a.container_id == container && a.ifname == ifname)
            {
                continue;
            }
            if let Err(e) = self.collect(l, container, ifname) {
                failures.push(format!("{} ({container}/{ifname}): {e}", l.name));
            }
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(
                CniError::new(code::ENGINE, "GC could not remove every stale port")
                    .with_details(failures.join("; ")),
            ),
        }
    }

    /// GC of one stale attachment: its IPAM lease, then its port.
    fn collect(&self, port: &LinkView, container: &str, ifname: &str) -> Result<(), CniError> {
        if let Some(ipam) = self.ipam() {
            let names = [("CNI_CONTAINERID", container), ("CNI_IFNAME", ifname)];
            ipam.exec("DEL", &names)?;
        }
        let device = port.ifname.as_deref().unwrap_or(&port.name);
        self.delete_port(&port.name, port.netns.as_deref(), device)
    }
}
