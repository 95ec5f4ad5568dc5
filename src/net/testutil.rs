//! Test helpers for root tests (unit and integration): named namespaces that delete themselves,
//! `ip` runners, and the root check. Not part of the stable API.
//!
//! Names are `umv-<pid>-<tag>-<n>`, so [`sweep_dead`] can remove what a crashed run left behind.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::Netns;

/// Panic unless running as root: a root test must never pass silently without root. (In `sys`,
/// so that `sys`'s own root tests, below this layer, share it.)
pub use crate::sys::require_root;

/// A named network namespace (`/run/netns/umv-<pid>-<tag>-<n>`), deleted on drop. Drop panics if
/// the deletion fails, unless the thread is already panicking (then it only prints).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
    ns: Option<Netns>,
}

/// Create a fresh namespace for a test (checks for root first).
pub fn netns(tag: &str) -> NetnsGuard {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    require_root();
    let name = format!(
        "umv-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Netns::add(&name).unwrap_or_else(|e| panic!("create netns {name}: {e:#?}"));
    NetnsGuard { name, ns: Some(ns) }
}

impl NetnsGuard {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        self.ns.as_ref().expect("namespace is open until drop")
    }
}

impl std::ops::Deref for NetnsGuard {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        self.netns()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Close our fd first so that the namespace (and its devices) can go away at once.
        drop(self.ns.take());
        let Err(e) = Netns::delete(&self.name) else {
            return;
        };
        let msg = format!("cleanup of netns {} failed: {e}", self.name);
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// Run `ip ARGS`, return stdout; `Err` carries the command and its stderr.
pub fn try_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run `ip ARGS`, return stdout; panic with ip's stderr on failure.
pub fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Run `ip -j ARGS` and parse its JSON.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let text = ip(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip {all:?}: bad JSON ({e}): {text}"))
}

/// Delete `umv-<pid>-*` namespaces whose process is gone (left by a crashed test run). Returns
/// the names removed.
pub fn sweep_dead() -> Vec<String> {
    super::netns::sweep_orphans("umv-")
}

/// The standard engine test topology: a wire namespace (`wire0`, 192.0.2.254/24) on a veth whose
/// other end, `p0` (the parent, up), is in a host namespace, and `children` empty namespaces.
/// Dropping it removes them all.
#[derive(Debug)]
pub struct Topology {
    pub kids: Vec<NetnsGuard>,
    pub host: NetnsGuard,
    pub wire: NetnsGuard,
}

/// Builds a [`Topology`]; `tag` goes into every namespace's name.
pub fn topology(tag: &str, children: usize) -> Topology {
    require_root();
    let wire = netns(&format!("{tag}w"));
    let host = netns(&format!("{tag}h"));
    let kids = (0..children)
        .map(|i| netns(&format!("{tag}c{i}")))
        .collect();
    let (h, w) = (host.name(), wire.name());
    ip(&[
        "-n", h, "link", "add", "p0", "type", "veth", "peer", "name", "wire0", "netns", w,
    ]);
    ip(&["-n", h, "link", "set", "p0", "up"]);
    ip(&["-n", w, "link", "set", "wire0", "up"]);
    ip(&["-n", w, "addr", "add", "192.0.2.254/24", "dev", "wire0"]);
    Topology { kids, host, wire }
}

impl Topology {
    pub fn kid(&self, i: usize) -> &str {
        self.kids[i].name()
    }

    /// A control socket path of its own (tests run engines in parallel).
    pub fn socket(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}.sock", self.host.name()))
    }
}

/// Waits until `cond` holds; panics naming `what` after 10 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
