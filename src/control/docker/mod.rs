//! The Docker front door: a network driver speaking libnetwork's remote driver protocol (Docker's
//! "legacy" plugins), served by the engine daemon itself (`umacvlan run --docker-plugin`), so
//! that `docker network create -d umacvlan -o parent=eth0 ...` gives what `-d macvlan` gives.
//!
//! Docker finds the driver by the socket's file name in `/run/docker/plugins/` (`umacvlan.sock`
//! is `-d umacvlan`) and POSTs JSON to `/METHOD` on it, one call per connection. The calls
//! ([`proto`]) become the engine's own `link add`/`link del` requests, sent on the same channel
//! the control socket feeds, so the daemon applies them as it applies `umacvlan link add`
//! ([`driver`]); networks and endpoints are persisted ([`state`]) because Docker never repeats
//! `CreateNetwork` or `Join`.
//!
//! An endpoint's port is a TAP named `umv` + the endpoint ID's first 12 characters, created in
//! the engine's namespace at `Join`; Docker moves it into the container and renames it `eth0`;
//! the engine follows it there.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::control::Call;
use crate::control::http::{HttpError, read_request, respond, stop_accepting};
use crate::control::plan::{ParentOptions, check_parent};
use crate::control::proto::{ControlError, Reply, Request, Response};
use crate::control::server::{ask, claim, ident, remove_if_same};
use crate::net::{Netlink, Netns};
use crate::wire::mac::MacAddr;

pub mod driver;
pub mod proto;
pub mod state;

use driver::{Driver, Engine, Place};
use state::Store;

/// Where `run --docker-plugin` listens unless given a path: the driver is `-d umacvlan`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/umacvlan.sock";
/// The content type of every answer (Docker does not check it).
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";
/// The largest request read (Docker's bodies are a few hundred bytes).
const MAX_REQUEST: usize = 256 * 1024;
/// How long a connection may take to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for the engine (Docker itself waits much longer).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(20);

/// The engine as the driver reaches it from the plugin's thread: requests on the daemon's call
/// channel, and read-only netlink for the checks.
#[derive(Debug)]
struct Daemon {
    calls: Sender<Call>,
}

impl Engine for Daemon {
    fn request(&mut self, request: Request) -> Result<Reply, ControlError> {
        match ask(&self.calls, request, ENGINE_TIMEOUT) {
            Response::Ok { reply } => Ok(reply),
            Response::Error { error } => Err(error),
        }
    }

    fn check_parent(&mut self, name: &str) -> Result<(), String> {
        let mut nl = Netlink::open().map_err(|e| e.to_string())?;
        let opts = ParentOptions {
            bc_cutoff: crate::forward::DEFAULT_BC_CUTOFF,
        };
        check_parent(&mut nl, name, opts)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn find_device(
        &mut self,
        sandbox: Option<&str>,
        mac: MacAddr,
        src_name: &str,
    ) -> Option<Place> {
        let is_ours = |l: &crate::net::netlink::LinkInfo| {
            l.kind.as_deref() == Some("tun") && l.mac == Some(mac)
        };
        if let Some(path) = sandbox
            && let Ok(ns) = Netns::open(path)
            && let Ok(mut nl) = Netlink::open_in(&ns)
            && let Ok(links) = nl.links()
            && let Some(l) = links.into_iter().find(is_ours)
        {
            return Some(Place {
                netns: Some(path.to_string()),
                ifname: l.name,
            });
        }
        let mut nl = Netlink::open().ok()?;
        let l = nl.link_by_name(src_name).ok()??;
        is_ours(&l).then_some(Place {
            netns: None,
            ifname: l.name,
        })
    }
}

/// The driver's socket and state file (`run --docker-plugin [PATH] --docker-state FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOptions {
    pub socket: PathBuf,
    pub state: PathBuf,
}

/// The serving plugin. Dropping it stops it and removes its socket file.
#[derive(Debug)]
pub struct DockerPlugin {
    path: PathBuf,
    ident: (u64, u64),
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DockerPlugin {
    /// Loads the state, claims the socket (root only, 0600) and serves on a thread of its own,
    /// which first restores every network's host port and adopts every joined endpoint's TAP
    /// (their requests wait on `calls` until the daemon serves it).
    pub fn start(opts: &PluginOptions, calls: Sender<Call>) -> anyhow::Result<DockerPlugin> {
        let store = Store::load(&opts.state).map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = opts.socket.clone();
        let listener = claim(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let ident = ident(&path)?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let mut driver = Driver {
            engine: Daemon { calls },
            store,
        };
        let thread = {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("umacvlan-docker".into())
                .spawn(move || {
                    crate::sys::caps::settle_or_warn();
                    for line in driver.restore() {
                        tracing::warn!("docker: not restored: {line}");
                    }
                    serve(&listener, &stop, &mut driver);
                })?
        };
        Ok(DockerPlugin {
            path,
            ident,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver name Docker knows it by (`-d NAME`): the socket's file name without `.sock`.
    pub fn driver_name(&self) -> String {
        driver_name(&self.path)
    }
}

/// `-d NAME` for a socket at `path` (`/run/docker/plugins/NAME.sock`).
pub fn driver_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Drop for DockerPlugin {
    fn drop(&mut self) {
        stop_accepting(&self.stop, &*self.listener, self.thread.take());
        remove_if_same(&self.path, self.ident);
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool, driver: &mut Driver<Daemon>) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                if let Err(e) = serve_one(stream, driver) {
                    tracing::debug!("docker plugin: {e}");
                }
            }
            Err(e) => {
                tracing::warn!("docker plugin: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One connection: one call, one answer, then close (Docker's client reconnects).
fn serve_one(mut stream: UnixStream, driver: &mut Driver<Daemon>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let req = match read_request(&mut stream, MAX_REQUEST, Instant::now() + IO_TIMEOUT) {
        Ok(r) => r,
        Err(HttpError::Status(code, msg)) => {
            let body = serde_json::json!({ "Err": msg }).to_string();
            return respond(&mut stream, code, CONTENT_TYPE, "", &body);
        }
        Err(HttpError::Io(e)) => return Err(e),
    };
    let answer = match req.method.as_str() {
        "POST" => driver.call(&req.path, &req.body),
        m => driver::Answer {
            status: 405,
            body: serde_json::json!({ "Err": format!("{m}: the plugin protocol is POST only") }),
        },
    };
    tracing::debug!(method = %req.path, status = answer.status, "docker plugin call");
    respond(
        &mut stream,
        answer.status,
        CONTENT_TYPE,
        "",
        &answer.body.to_string(),
    )
}

#[cfg(test)]
mod tests;
