//! Running under systemd: the `sd_notify` protocol and the watchdog's health rule.
//!
//! [`Notifier`] sends `READY=1`, `STATUS=...`, `RELOADING=1`, `STOPPING=1` and `WATCHDOG=1` as
//! one datagram each to `$NOTIFY_SOCKET` (a path, or an abstract address written `@name`), the
//! whole protocol libsystemd's `sd_notify` speaks. Without `$NOTIFY_SOCKET` nothing is sent.
//!
//! [`Watchdog`]: with `$WATCHDOG_USEC` set (and `$WATCHDOG_PID` unset or ours), `WATCHDOG=1` is
//! sent every half period, but only while every forwarding worker is alive and its heartbeat
//! (bumped on every loop iteration, at least every 100 ms: the epoll timeout) advanced since the
//! last check. A wedged worker stops the pings and systemd restarts the engine.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The shortest interval between two health checks: a worker's heartbeat advances at least every
/// 100 ms, so a shorter check could call a healthy idle worker wedged.
pub const MIN_CHECK: Duration = Duration::from_millis(250);

/// Where `sd_notify` messages go.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for; `None` when it is unset or empty (not started by
    /// systemd with Type=notify). A bad value is an error.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => {
                let v = v.to_string_lossy().into_owned();
                Notifier::new(&v).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A notifier for `path` (`@name` is an abstract address).
    pub fn new(path: &str) -> io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET={path:?}: neither an absolute path nor @abstract"),
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one message (`KEY=VALUE` lines).
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    /// Sends and logs a failure (systemd going away must not stop forwarding).
    pub fn notify(&self, message: &str) {
        if let Err(e) = self.send(message) {
            tracing::warn!("sd_notify {:?} failed: {e}", message.lines().next());
        }
    }
}

/// The interval of health checks (and pings) systemd asks for: half of `$WATCHDOG_USEC`, at
/// least [`MIN_CHECK`]; `None` without a watchdog or when `$WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ok = std::env::var("WATCHDOG_PID")
        .map_or(true, |p| p.trim().parse::<u32>() == Ok(std::process::id()));
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (pid_ok && usec > 0).then(|| (Duration::from_micros(usec) / 2).max(MIN_CHECK))
}

/// What the engine tells systemd, and its watchdog.
#[derive(Debug)]
pub struct Service {
    notifier: Notifier,
    /// Fires every check interval when systemd runs a watchdog.
    tick: Option<crossbeam_channel::Receiver<std::time::Instant>>,
    watchdog: Watchdog,
    /// The last STATUS= sent.
    status: String,
}

impl Service {
    /// The service `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` describe; `None` outside systemd.
    pub fn from_env() -> io::Result<Option<Service>> {
        Ok(Notifier::from_env()?.map(|notifier| {
            let tick = watchdog_interval().map(|every| {
                tracing::info!(?every, "systemd watchdog: health checks and pings");
                crossbeam_channel::tick(every)
            });
            Service {
                notifier,
                tick,
                watchdog: Watchdog::default(),
                status: String::new(),
            }
        }))
    }

    /// The watchdog's ticks (never, without a watchdog).
    pub fn ticks(&self) -> crossbeam_channel::Receiver<std::time::Instant> {
        self.tick.clone().unwrap_or_else(crossbeam_channel::never)
    }

    /// Everything is up: READY=1 with the status.
    pub fn ready(&mut self, status: String) {
        self.notifier.notify(&format!("READY=1\nSTATUS={status}"));
        self.status = status;
    }

    /// A reload begins (systemd ≥ 253 wants the monotonic time with it).
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
            let (s, ns) = (u64::try_from(t.tv_sec()), u64::try_from(t.tv_nsec()));
            s.unwrap_or(0) * 1_000_000 + ns.unwrap_or(0) / 1000
        });
        self.notifier
            .notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.notifier.notify("STOPPING=1");
    }

    /// STATUS=, when it changed.
    pub fn status(&mut self, status: String) {
        if status != self.status {
            self.notifier.notify(&format!("STATUS={status}"));
            self.status = status;
        }
    }

    /// A watchdog tick: WATCHDOG=1 when every worker is healthy (see [`Watchdog::check`]).
    pub fn check(&mut self, workers: &[(String, bool, u64)]) {
        let wedged = self.watchdog.check(workers);
        if wedged.is_empty() {
            self.notifier.notify("WATCHDOG=1");
        } else {
            tracing::error!(
                ?wedged,
                "forwarding worker(s) made no progress: no watchdog ping"
            );
        }
    }
}

/// The watchdog's memory: each worker's heartbeat at the last check.
#[derive(Debug, Default)]
pub struct Watchdog {
    last: Vec<(String, u64)>,
}

impl Watchdog {
    /// Whether every worker is healthy: alive, and its heartbeat moved since the last check (a
    /// worker seen for the first time counts as healthy). `workers` is (parent, alive,
    /// heartbeat) for every running worker. Returns the names of the wedged ones.
    pub fn check(&mut self, workers: &[(String, bool, u64)]) -> Vec<String> {
        let wedged = workers
            .iter()
            .filter(|(name, alive, beat)| {
                let before = self.last.iter().find(|(n, _)| n == name).map(|(_, b)| *b);
                !alive || before == Some(*beat)
            })
            .map(|(name, _, _)| name.clone())
            .collect();
        self.last = workers.iter().map(|(n, _, b)| (n.clone(), *b)).collect();
        wedged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_whose_heartbeat_stops_is_wedged() {
        let mut w = Watchdog::default();
        let p = |beat, alive| vec![("p0".to_string(), alive, beat)];
        assert!(w.check(&p(5, true)).is_empty(), "first sight: healthy");
        assert!(w.check(&p(9, true)).is_empty(), "advanced: healthy");
        assert_eq!(w.check(&p(9, true)), ["p0"], "stuck: wedged");
        assert!(w.check(&p(10, true)).is_empty(), "moving again: healthy");
        assert_eq!(w.check(&p(11, false)), ["p0"], "its thread ended");
        assert!(w.check(&[]).is_empty(), "no worker, nothing wedged");
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_address() {
        let dir = std::env::temp_dir().join(format!("umv-{}-notify", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        Notifier::new(dir.to_str().unwrap())
            .unwrap()
            .send("READY=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(&dir).unwrap();
        let name = format!("umv-{}-notify-abstract", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("WATCHDOG=1")
            .unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        let e = Notifier::new("relative/path").unwrap_err().to_string();
        assert!(e.contains("neither an absolute path nor @abstract"), "{e}");
    }
}
