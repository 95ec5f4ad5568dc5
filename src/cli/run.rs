//! `umacvlan run`: the engine in the foreground.

use std::process::ExitCode;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use super::Failure;
use std::path::PathBuf;

use crate::control::config::{Config, MAX_SPIN_US};
use crate::control::daemon::{Daemon, EngineOptions};
use crate::control::docker::{DockerPlugin, PluginOptions};
use crate::control::metrics::MetricsServer;
use crate::control::plan::{ParentOptions, plan};
use crate::control::proto;
use crate::control::service::Service;
use crate::control::spec::PortSpec;
use crate::control::{Call, ServeOptions, serve_into};
use crate::engine::priority::WorkerPriority;
use crate::sys::caps::{self, CapSet};
use crate::sys::ring::{RingConfig, RingVersion};

/// Run the engine: macvlan ports on PARENT, as TAPs in their namespaces.
///
/// Each --port becomes a TAP named N, or DEV with ifname=DEV (non-persistent: it vanishes when
/// the engine exits or dies; with persist it stays, and an existing persistent TAP is adopted), in the namespace NS (a name from `ip netns add`, or a path such as
/// /proc/PID/ns/net) or in the engine's own namespace, with
/// the given MAC (default: stable, derived from the parent's and the port's names; passthru takes
/// the parent's), admin-down like a fresh `ip link add ... type macvlan`. Bring it up where it
/// lives (`ip -n NS link set N up`) and the engine starts forwarding to it.
///
/// A VM's port: `kind=attach` uses the existing netdev N (the TAP a hypervisor opened; it must
/// exist, and is never deleted), `kind=stream,path=SOCKET` listens for QEMU's `-netdev stream`.
/// Their guest MAC (`mac=`) is pinned: other sources are dropped as mac_spoof unless
/// `trust_guest_mac`.
///
/// The mode defaults to bridge, like Docker, CNI and netavark (`ip link add` defaults to vepa).
/// With --config FILE the ports come from a TOML file instead (see `umacvlan config check`);
/// SIGHUP re-reads it and applies only the difference. With no --port (--parent alone, which is
/// checked and opened at once, or nothing), the engine starts with no port and `umacvlan link
/// add` adds ports while it runs. Logs go to stderr (RUST_LOG=debug for
/// more); SIGINT or SIGTERM stops the engine cleanly and prints every port's counters. Exit
/// status: 0 stopped cleanly, 1 failed while running, 2 bad input (nothing was created).
///
/// Example:
///
///   ip netns add ns1
///   umacvlan run --parent eth0 --port name=c1,mode=bridge,netns=ns1
///   ip -n ns1 link set c1 up      # in another shell
///   umacvlan run --parent eth0 --port name=vm2,kind=stream,path=/run/umacvlan/vm2.sock
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// The parent interface (an Ethernet device in the engine's namespace). LOWER.VID (eth0.100)
    /// names an 802.1Q sub-interface: a real one if it exists, else the engine emulates it on
    /// LOWER (frames tagged VID are its own, its ports' frames leave tagged; no 8021q needed).
    #[arg(long, value_name = "P")]
    parent: Option<String>,
    /// A port: name=N[,mode=M][,netns=NS][,mac=MAC][,mtu=N][,flag=nopromisc|nodst]
    /// [,bcqueuelen=N][,source=MAC+MAC..][,ifname=DEV][,kind=tap|attach|stream][,path=SOCKET]
    /// [,trust_guest_mac]. Repeat for more ports.
    #[arg(long = "port", value_name = "SPEC")]
    ports: Vec<String>,
    /// bclim: a multicast group joined by more than N up ports (and broadcast) goes through the
    /// broadcast queue, whose length is the largest bcqueuelen of any port; a negative N queues
    /// nothing. Parent-wide, like the kernel's IFLA_MACVLAN_BC_CUTOFF.
    #[arg(long, value_name = "N", default_value_t = crate::forward::DEFAULT_BC_CUTOFF, allow_negative_numbers = true)]
    bclim: i32,
    /// Take parents and ports from this TOML file (SIGHUP or `umacvlan reload` re-reads it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["parent", "ports"])]
    config: Option<PathBuf>,
    /// Serve the control socket here (`umacvlan link`, `reload`, live `trace` talk to it).
    /// Default: the config file's `control`, else /run/umacvlan/umacvlan.sock. Root only (0600).
    #[arg(long, value_name = "PATH", env = "UMACVLAN_CONTROL")]
    control: Option<PathBuf>,
    /// Serve no control socket. With a command-line port list (no --config) the engine then
    /// also gives up CAP_SYS_ADMIN after start-up: nothing can ask it to enter a namespace again.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,
    /// Let members of GROUP (a name or a number) use the control socket too: the socket file
    /// becomes root:GROUP, mode 0660 (default: root only, 0600). Default: the config file's
    /// `control_group`.
    #[arg(long, value_name = "GROUP", conflicts_with = "no_control")]
    control_group: Option<String>,
    /// Receive ring kind: v3 hands over blocks (cheapest under load, but a lone frame waits up
    /// to the 1 ms block timer), v2 hands over every frame at once (lowest latency, one wake-up
    /// per frame), auto has both and reads v2 while traffic is sparse, v3 while it is loaded
    /// (one worker only). Default: auto with one worker, v3 with several.
    #[arg(long, value_name = "v2|v3|auto", env = "UMACVLAN_RING", value_parser = parse_ring)]
    ring: Option<RingKind>,
    /// Receive ring: bytes per block (default 262144), a multiple of the page size that caps the
    /// largest frame, GSO super-frames included (larger ones are counted as truncated). A v2
    /// ring's blocks are cut into 2048-byte slots; a frame larger than a slot waits whole in the
    /// ring socket's receive queue (up to the ring's size). With auto, for both rings.
    #[arg(long, value_name = "BYTES")]
    ring_block_size: Option<u32>,
    /// Receive ring: number of blocks (default 64). Memory per parent = blocks x block size
    /// (16 MiB by default), for each ring (auto has two), plus for v2 a receive queue of frames
    /// larger than a slot of at most as much again.
    #[arg(long, value_name = "N")]
    ring_blocks: Option<u32>,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR:PORT/metrics, e.g.
    /// 127.0.0.1:9578. Off by default. Bind to 127.0.0.1 unless you mean to expose the counters
    /// to the network: there is no authentication. See `umacvlan stats` for the same numbers.
    #[arg(long, value_name = "ADDR:PORT", env = "UMACVLAN_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Stop (exit status 1) when a parent disappears. Default: its ports lose carrier and wait;
    /// when an interface of that name appears again, they forward through it again.
    #[arg(long)]
    exit_on_parent_loss: bool,
    /// Forwarding threads per parent (pinned to a CPU each when the machine has more CPUs than
    /// workers), each with its own receive ring (a
    /// PACKET_FANOUT hash group: a flow always meets the same thread, so it stays in order) and
    /// its own queue of every TAP (IFF_MULTI_QUEUE). Ring memory grows with it. The default, 1,
    /// is what measured best on 2-CPU machines (docs/performance.md).
    #[arg(long, value_name = "N", env = "UMACVLAN_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=MAX_WORKERS))]
    workers: u16,
    /// The scheduling each worker thread asks for itself (only the workers: not the daemon or
    /// any other thread): loaded[:N] (nice N while its traffic loads it, i.e. while it reads a
    /// V3 ring, normal priority while traffic is sparse), nice[:N] (always; N in -20..=19,
    /// default -10), normal (no change) or fifo[:P] (SCHED_FIFO at priority P in 1..=99,
    /// default 1). Without this option or the config file's `worker_priority`: loaded:-10. The
    /// kernel's macvlan forwards in softirq, ahead of every task, and a worker at normal weight
    /// falls behind when applications keep the CPUs busy; under sparse traffic a heavier worker
    /// only lengthens round trips. A refused nice leaves the worker at normal priority, a
    /// refused fifo (no CAP_SYS_NICE, or a cgroup with no real-time budget) falls back to nice
    /// -10, each with one warning; `umacvlan stats -j` shows what applied. A fifo worker can
    /// take a whole CPU under a flood and starve normal tasks on it: see
    /// docs/performance.md#worker-priority. With loaded, fifo or a nice below 0, the engine
    /// keeps CAP_SYS_NICE.
    #[arg(long, value_name = "loaded[:N]|nice[:N]|normal|fifo[:P]", value_parser = parse_priority)]
    worker_priority: Option<WorkerPriority>,
    /// Opt-in adaptive busy-polling: after forwarding something, each worker keeps polling its
    /// ring and ports for up to N microseconds before it sleeps again (0, the default: it always
    /// sleeps). Lower latency for a CPU that spins while traffic flows; an idle engine still
    /// uses no CPU. Worth it only where the worker has a CPU to itself; never with
    /// --worker-priority fifo (docs/performance.md#adaptive-spin). Default: the config file's
    /// `spin_us`.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_SPIN_US)))]
    spin_us: Option<u32>,
    /// Serve the Docker network driver (libnetwork's remote driver protocol) on this socket:
    /// Docker finds it by its file name in /run/docker/plugins, so PATH
    /// /run/docker/plugins/NAME.sock is `docker network create -d NAME` (default
    /// /run/docker/plugins/umacvlan.sock: `-d umacvlan`). Start the engine before dockerd.
    /// Default: the config file's `docker_plugin`, else off.
    #[arg(long, value_name = "PATH", num_args = 0..=1,
          default_missing_value = crate::control::docker::DEFAULT_SOCKET)]
    docker_plugin: Option<PathBuf>,
    /// Where the Docker driver keeps its networks and endpoints (default
    /// /var/lib/umacvlan/docker.json, or the config file's `docker_state`).
    #[arg(long, value_name = "FILE")]
    docker_state: Option<PathBuf>,
}

/// The most workers per parent: a TAP has at most 256 queues (the kernel's MAX_TAP_QUEUES); 64
/// leaves room and is more CPUs than any parent needs.
const MAX_WORKERS: i64 = 64;

/// What a signal asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signalled {
    Stop,
    Reload,
}

/// Blocks SIGINT and SIGTERM (and SIGHUP when `reload`) in the calling thread, and so in every
/// thread it spawns later, and returns a channel that says which arrived.
pub fn signals(reload: bool) -> anyhow::Result<crossbeam_channel::Receiver<Signalled>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if reload {
        set.add(Signal::SIGHUP);
    }
    set.thread_block()?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("umacvlan-signals".into())
        .spawn(move || {
            crate::sys::caps::settle_or_warn();
            while let Ok(sig) = set.wait() {
                let what = if sig == Signal::SIGHUP {
                    Signalled::Reload
                } else {
                    Signalled::Stop
                };
                tracing::info!(
                    "{sig}: {}",
                    if what == Signalled::Stop {
                        "stopping"
                    } else {
                        "reloading"
                    }
                );
                if tx.send(what).is_err() || what == Signalled::Stop {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// What the command line asks for, checked: nothing is created yet.
enum Checked {
    Config(PathBuf, Config),
    Ports(Box<crate::control::plan::Plan>),
    /// No ports yet: `umacvlan link add` brings them.
    Empty,
}

/// The capabilities `run` needs while it sets up, and those it keeps (see
/// docs/guide.md#least-privilege): CAP_NET_ADMIN (TAPs, netlink) and CAP_NET_RAW (the rings)
/// always; CAP_SYS_ADMIN (setns) and CAP_SYS_PTRACE (opening another process's /proc/PID/ns/net, a
/// CNI netns path) while ports may still be added into namespaces, i.e. unless `--no-control`
/// without `--config`; during setup only, CAP_CHOWN for a control group and CAP_NET_BIND_SERVICE
/// for a metrics port below 1024; CAP_SYS_NICE for good when the workers' `priority` needs it
/// (`fifo`, or a nice below 0: a worker started later, for a port added or a parent back, asks
/// for it too, and inherits the daemon's set). The Docker driver (`docker`) adopts TAPs in
/// containers' namespaces: it keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE too.
fn capabilities(a: &RunArgs, priority: WorkerPriority, docker: bool) -> (CapSet, CapSet) {
    let keep = CapSet::of(&[caps::CAP_NET_ADMIN, caps::CAP_NET_RAW])
        .with(caps::CAP_SYS_NICE, priority.needs_sys_nice());
    let runtime_netns = !a.no_control || a.config.is_some() || docker;
    let final_set = keep
        .with(caps::CAP_SYS_ADMIN, runtime_netns)
        .with(caps::CAP_SYS_PTRACE, runtime_netns);
    let low_port = a.metrics_listen.is_some_and(|m| m.port() < 1024);
    let setup = final_set
        .with(caps::CAP_SYS_ADMIN, true)
        .with(caps::CAP_SYS_PTRACE, true)
        .with(
            caps::CAP_CHOWN,
            a.control_group.is_some() || a.config.is_some(),
        )
        .with(caps::CAP_NET_BIND_SERVICE, low_port);
    (setup, final_set)
}

/// A group by name or number.
fn group(g: &str) -> Result<nix::unistd::Gid, Failure> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid),
        Ok(None) => Err(Failure::usage(anyhow::anyhow!(
            "control group {g:?}: no such group"
        ))),
        Err(e) => Err(Failure::usage(anyhow::anyhow!(
            "control group {g:?}: cannot look it up: {e}"
        ))),
    }
}

pub fn run(a: RunArgs) -> Result<ExitCode, Failure> {
    // The configuration file is read first (parsing it starts no thread): its worker_priority
    // decides whether CAP_SYS_NICE is kept.
    let config = match &a.config {
        Some(path) => {
            let (file, text) = (path.display().to_string(), read(path)?);
            let config = Config::parse(&file, &text).map_err(Failure::usage)?;
            Some((file, text, config))
        }
        None => None,
    };
    let priority = a
        .worker_priority
        .or_else(|| config.as_ref().and_then(|(_, _, c)| c.worker_priority))
        .unwrap_or_default();
    let spin_us = a
        .spin_us
        .or_else(|| config.as_ref().and_then(|(_, _, c)| c.spin_us))
        .unwrap_or(0);
    // Before any thread exists, so that every thread starts without the capabilities the
    // engine never needs (capabilities are per thread).
    let docker = docker_options(&a, config.as_ref().map(|(_, _, c)| c));
    let (setup_caps, final_caps) = capabilities(&a, priority, docker.is_some());
    caps::restrict(setup_caps, final_caps)
        .map_err(|e| anyhow::anyhow!("dropping capabilities: {e}"))?;
    // Then, still before any thread (checks spawn some): every thread inherits the mask, so a
    // signal can only be taken by the one thread that waits for it.
    let signals = signals(a.config.is_some())?;
    let default = match a.workers {
        1 => RingKind::Auto,
        _ => RingKind::V3,
    };
    let (ring, per_frame) = match a.ring.unwrap_or(default) {
        RingKind::V2 => (ring_config(&a, RingVersion::V2)?, None),
        RingKind::V3 => (ring_config(&a, RingVersion::V3)?, None),
        RingKind::Auto if a.workers > 1 => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--ring auto works with one worker per parent only (--workers {}): its two \
                 rings share one fanout group, which cannot also spread flows over workers",
                a.workers
            )));
        }
        RingKind::Auto => (
            ring_config(&a, RingVersion::V3)?,
            Some(ring_config(&a, RingVersion::V2)?),
        ),
    };
    let service = Service::from_env().map_err(|e| {
        Failure::usage(anyhow::anyhow!("NOTIFY_SOCKET: cannot notify systemd: {e}"))
    })?;
    let mut socket = a.control.clone();
    let mut control_group = a.control_group.clone();
    let checked = match (&a.config, config, &a.parent) {
        (Some(path), Some((file, text, config)), _) => {
            config.check_machine(&file, &text).map_err(Failure::usage)?;
            socket = socket.or_else(|| config.control.clone());
            control_group = control_group.or_else(|| config.control_group.clone());
            Checked::Config(path.clone(), config)
        }
        (_, _, Some(_)) if a.ports.is_empty() && a.no_control && docker.is_none() => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--no-control and no --port: nothing could ever add a port to this engine"
            )));
        }
        (_, _, Some(parent)) => {
            let specs = a
                .ports
                .iter()
                .map(|s| s.parse::<PortSpec>().map(|p| (s.clone(), p)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::usage)?;
            let opts = ParentOptions { bc_cutoff: a.bclim };
            Checked::Ports(Box::new(
                plan(parent, opts, &specs).map_err(Failure::usage)?,
            ))
        }
        (_, _, None) if a.ports.is_empty() => Checked::Empty,
        (_, _, None) => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--port needs --parent (the interface the ports hang off)"
            )));
        }
    };
    // Claim the control socket before creating anything: a second engine stops here.
    let socket = socket.unwrap_or_else(|| proto::DEFAULT_SOCKET.into());
    let serve = ServeOptions {
        allowed_group: control_group.as_deref().map(group).transpose()?,
        ..ServeOptions::default()
    };
    // One channel for every request the daemon serves: the control socket's and the metrics
    // server's calls arrive on the same receiver, one at a time, each with its own reply sender.
    let (calls_tx, calls) = crossbeam_channel::bounded::<Call>(16);
    let server = match a.no_control {
        true => None,
        false => Some(
            serve_into(&socket, serve, calls_tx.clone())
                .map_err(|e| Failure::usage(anyhow::Error::from(e)))?,
        ),
    };
    let metrics = match a.metrics_listen {
        Some(addr) => Some(MetricsServer::start(addr, calls_tx.clone()).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "--metrics-listen {addr}: cannot listen: {e}"
            ))
        })?),
        None => None,
    };
    // The Docker driver's socket and state too, before anything is created. Its thread adopts
    // the ports of running containers through the daemon: those requests wait on the channel
    // until the daemon below serves it.
    let plugin = match &docker {
        Some(opts) => Some(DockerPlugin::start(opts, calls_tx.clone()).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "--docker-plugin {}: {e}",
                opts.socket.display()
            ))
        })?),
        None => None,
    };
    let opts = EngineOptions {
        ring,
        per_frame,
        workers: usize::from(a.workers),
        priority,
        spin_us,
    };
    let daemon = match checked {
        Checked::Config(path, config) => Daemon::from_config(&path, config, opts),
        Checked::Ports(plan) => Daemon::start(*plan, opts),
        Checked::Empty => Daemon::new(opts),
    };
    let mut daemon = match daemon {
        Ok(d) => d,
        Err(e) => {
            // Unblocks a Docker driver still adopting its ports (its requests fail at once).
            drop(calls);
            drop(plugin);
            return Err(e.into());
        }
    };
    // Only the servers hold senders now: with none, the daemon sees a closed channel.
    drop(calls_tx);
    daemon.exit_on_parent_loss = a.exit_on_parent_loss;
    daemon.service = service;
    if let Some(m) = &metrics {
        tracing::info!(metrics = %format!("http://{}/metrics", m.local_addr()), "serving metrics");
    }
    if let Some(p) = &plugin {
        tracing::info!(socket = %p.path().display(), driver = %p.driver_name(), "serving the Docker network driver");
    }
    match &server {
        Some(s) => tracing::info!(control = %s.path().display(), "umacvlan: ready"),
        None => tracing::info!("umacvlan: ready (no control socket)"),
    }
    // Set up: this thread keeps only what it needs from now on (threads it spawns inherit that).
    caps::settle().map_err(|e| anyhow::anyhow!("dropping capabilities: {e}"))?;
    // The rings are open and every configured port exists: tell systemd (Type=notify).
    daemon.notify_ready();
    let result = loop {
        match daemon.run_until(&signals, Some(&calls)) {
            Ok(Some(Signalled::Reload)) => match daemon.reload() {
                Ok(r) => {
                    tracing::info!(added = ?r.added, removed = ?r.removed, changed = ?r.changed, "reloaded")
                }
                Err(e) => tracing::error!("reload refused, nothing changed: {e}"),
            },
            Ok(_) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Some(s) = &daemon.service {
        s.stopping();
    }
    // Requests still queued are dropped unanswered: their callers see a closed reply channel
    // at once instead of waiting for a timeout.
    drop(calls);
    print!("{}", daemon.shutdown()?);
    drop(plugin);
    drop(server);
    drop(metrics);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The Docker driver's socket and state, from the command line or the configuration file.
fn docker_options(a: &RunArgs, config: Option<&Config>) -> Option<PluginOptions> {
    let socket = a
        .docker_plugin
        .clone()
        .or_else(|| config.and_then(|c| c.docker_plugin.clone()))?;
    let state = a
        .docker_state
        .clone()
        .or_else(|| config.and_then(|c| c.docker_state.clone()))
        .unwrap_or_else(|| crate::control::docker::state::DEFAULT_STATE.into());
    Some(PluginOptions { socket, state })
}

/// `--ring`: one ring of either kind, or both steered by load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingKind {
    V2,
    V3,
    Auto,
}

fn parse_priority(s: &str) -> Result<WorkerPriority, String> {
    s.parse()
}

fn parse_ring(s: &str) -> Result<RingKind, String> {
    match s {
        "v2" => Ok(RingKind::V2),
        "v3" => Ok(RingKind::V3),
        "auto" => Ok(RingKind::Auto),
        _ => Err(format!("{s:?}: expected v2, v3 or auto")),
    }
}

/// A ring of `version` with the geometry of `--ring-block-size`/`--ring-blocks`, each defaulting
/// to that version's own, checked.
fn ring_config(a: &RunArgs, version: RingVersion) -> Result<RingConfig, Failure> {
    let base = match version {
        RingVersion::V2 => RingConfig::V2,
        RingVersion::V3 => RingConfig::DEFAULT,
    };
    let ring = RingConfig {
        block_size: a.ring_block_size.unwrap_or(base.block_size),
        block_nr: a.ring_blocks.unwrap_or(base.block_nr),
        ..base
    };
    ring.validate()
        .map_err(|e| Failure::usage(anyhow::anyhow!("--ring-block-size/--ring-blocks: {e}")))?;
    Ok(ring)
}

fn read(path: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("{}: cannot read it: {e}", path.display())))
}
