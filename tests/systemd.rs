//! Running under systemd (root): the real binary with `NOTIFY_SOCKET` pointing at a datagram
//! socket this test binds, as systemd would for Type=notify. READY=1 comes only once the ports
//! exist, STATUS= carries the port count and follows changes, WATCHDOG=1 comes at half the
//! `WATCHDOG_USEC` period, RELOADING=1 and READY=1 frame a SIGHUP reload, STOPPING=1 the end.
//! The shipped unit files pass `systemd-analyze verify` (when it is installed).
//!
//! A wedged worker (no heartbeat) stopping the pings is checked by `service::tests` on the
//! health rule itself: a real worker cannot be wedged from outside without a test hook.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use umacvlan::net::testutil::{require_root, topology, try_ip};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

/// The engine and the socket it notifies; killed and removed on drop.
struct Notified {
    engine: Child,
    socket: UnixDatagram,
    paths: Vec<PathBuf>,
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.engine.kill();
        let _ = self.engine.wait();
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Notified {
    /// The next message, within `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one satisfies `want` (returned last); panics after 10 s.
    fn until(&self, what: &str, want: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.next(Duration::from_millis(200)) {
                let done = want(&m);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {what} within 10 s; got {seen:?}");
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(i32::try_from(self.engine.id()).unwrap()), sig).unwrap();
    }
}

fn status_of(m: &str) -> Option<&str> {
    m.lines().find_map(|l| l.strip_prefix("STATUS="))
}

#[test]
fn notify_ready_status_watchdog_and_reload() {
    require_root();
    let t = topology("sd", 2);
    let dir = std::env::temp_dir();
    let sock = dir.join(format!("{}.notify", t.host.name()));
    let config = dir.join(format!("{}.toml", t.host.name()));
    let port = |name: &str, ns: &str| {
        format!("[[ports]]\nname = \"{name}\"\nparent = \"p0\"\nnetns = \"{ns}\"\n")
    };
    std::fs::write(&config, port("c0", t.kid(0))).unwrap();
    let _ = std::fs::remove_file(&sock);
    let socket = UnixDatagram::bind(&sock).unwrap();
    let engine = Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "run", "--config"])
        .arg(&config)
        .env("UMACVLAN_CONTROL", t.socket())
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "600000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n = Notified {
        engine,
        socket,
        paths: vec![sock.clone(), config.clone()],
    };
    let ready = n.until("READY=1", |m| m.lines().any(|l| l == "READY=1"));
    // The port exists the moment READY=1 arrives, and nothing else came first.
    assert!(
        try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok(),
        "READY=1 before port c0 existed"
    );
    assert_eq!(ready.len(), 1, "messages before READY=1: {ready:?}");
    let status = status_of(&ready[0]).expect("STATUS= with READY=1");
    assert_eq!(status, "1 port (0 forwarding) on 1 parent");

    // The watchdog: every 300 ms (half of 600 ms) while the worker is healthy.
    let start = Instant::now();
    let mut pings = Vec::new();
    while start.elapsed() < Duration::from_millis(2000) {
        if let Some(m) = n.next(Duration::from_millis(100)) {
            assert_eq!(m, "WATCHDOG=1", "only pings while nothing changes");
            pings.push(start.elapsed());
        }
    }
    assert!(
        (5..=8).contains(&pings.len()),
        "expected about 6 pings in 2 s at 300 ms: {pings:?}"
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(200) && gap <= Duration::from_millis(600),
            "pings {pings:?}"
        );
    }

    // A port comes up: STATUS= follows.
    try_ip(&["-n", t.kid(0), "link", "set", "c0", "up"]).unwrap();
    let seen = n.until("STATUS= with c0 forwarding", |m| {
        status_of(m) == Some("1 port (1 forwarding) on 1 parent")
    });
    assert!(
        seen.iter()
            .all(|m| m == "WATCHDOG=1" || status_of(m).is_some())
    );

    // SIGHUP with a second port in the file: RELOADING=1, then READY=1 with the new count.
    let text = port("c0", t.kid(0)) + &port("c1", t.kid(1));
    std::fs::write(&config, text).unwrap();
    n.signal(Signal::SIGHUP);
    let seen = n.until("RELOADING=1", |m| m.starts_with("RELOADING=1"));
    let reloading = seen.last().unwrap();
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1");
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading}");
    let seen = n.until("READY=1 after the reload", |m| m.starts_with("READY=1"));
    let ready = seen.last().unwrap();
    assert_eq!(status_of(ready), Some("2 ports (1 forwarding) on 1 parent"));
    assert!(try_ip(&["-n", t.kid(1), "link", "show", "c1"]).is_ok());

    n.signal(Signal::SIGTERM);
    n.until("STOPPING=1", |m| m == "STOPPING=1");
}

/// The shipped units, with ExecStart pointing at this build, pass `systemd-analyze verify`.
#[test]
fn the_unit_files_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: unit files not verified");
        return;
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("umv-{}-units", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    for unit in ["umacvlan.service", "umacvlan@.service"] {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        assert!(text.contains("/usr/local/bin/umacvlan"), "{unit}");
        let path = dir.join(unit);
        std::fs::write(&path, text.replace("/usr/local/bin/umacvlan", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{unit}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
