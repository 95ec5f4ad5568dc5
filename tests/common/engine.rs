//! The engine run as a process on the standard topology (`testutil::topology`): start it with
//! `umacvlan run` in the host namespace, wait for its TAPs, ping through it, stop or kill it.
//! Shared by the dataplane, crash and parent-fault tests.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use umacvlan::net::testutil::{Topology, ip, ip_json, topology, try_ip};

pub const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");

/// The standard topology (see `testutil::topology`).
pub struct Topo(pub Topology);

impl std::ops::Deref for Topo {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.0
    }
}

pub fn topo(tag: &str, children: usize) -> Topo {
    Topo(topology(tag, children))
}

impl Topo {
    /// `umacvlan run ARGS` inside the host namespace; `--parent p0` unless ARGS name a parent
    /// or a configuration file.
    pub fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.host.name(), BIN, "run"]);
        c.env("UMACVLAN_CONTROL", self.socket());
        if !args.iter().any(|a| a == "--parent" || a == "--config") {
            c.args(["--parent", "p0"]);
        }
        c.args(args);
        c
    }

    pub fn port(&self, i: usize, mode: &str) -> [String; 2] {
        [
            "--port".into(),
            format!("name=c{i},mode={mode},netns={}", self.kid(i)),
        ]
    }

    /// Runs the engine until it fails (for bad input).
    pub fn run_fails(&self, args: &[String]) -> Output {
        let mut c = self.command(args);
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("umacvlan run {args:?} did not exit: it accepted bad input");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Starts the engine and waits until every TAP exists where it belongs.
    pub fn start(&self, args: &[String], ports: &[(usize, &str)]) -> Engine {
        let log = std::env::temp_dir().join(format!(
            "umv-{}-{}.log",
            std::process::id(),
            self.host.name()
        ));
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn umacvlan");
        let e = Engine {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, name) in ports {
            while try_ip(&["-n", self.kid(*i), "link", "show", name]).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "port {name} never appeared: {}",
                    e.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        e
    }

    /// `umacvlan stats -j` from the running engine.
    pub fn stats(&self) -> serde_json::Value {
        stats_json(self.host.name(), &self.socket())
    }

    /// `umacvlan ARGS` against the running engine, which must answer within 5 s (a hung engine
    /// fails the test instead of hanging it): stdout on success, stderr on failure.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new("timeout")
            .args(["5", "ip", "netns", "exec", self.host.name(), BIN])
            .args(args)
            .env("UMACVLAN_CONTROL", self.socket())
            .output()
            .unwrap();
        assert_ne!(
            o.status.code(),
            Some(124),
            "umacvlan {args:?}: no answer in 5 s"
        );
        match o.status.success() {
            true => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
        }
    }

    pub fn up(&self, i: usize, addr: &str) {
        let (ns, dev) = (self.kid(i), format!("c{i}"));
        ip(&["-n", ns, "link", "set", &dev, "up"]);
        ip(&["-n", ns, "addr", "add", addr, "dev", &dev]);
    }
}

pub struct Engine {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Engine {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and the counters it printed.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn ping(ns: &str, to: &str, count: u32) -> Result<String, String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "1",
            to,
        ])
        .output()
        .expect("run ping (apt-get install iputils-ping)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.contains(" 0% packet loss") {
        Ok(text)
    } else {
        Err(text)
    }
}

pub fn tun_devices(ns: &str) -> usize {
    ip_json(&["-n", ns, "link", "show", "type", "tun"])
        .as_array()
        .map_or(0, Vec::len)
}

/// The counters line of one port: (rx_packets, rx_bytes, tx_packets, tx_bytes, drops).
pub fn counters_of<'a>(report: &'a str, port: &str) -> (u64, u64, u64, u64, &'a str) {
    let line = report
        .lines()
        .find(|l| l.split_whitespace().next() == Some(port))
        .unwrap_or_else(|| panic!("no counters for {port} in:\n{report}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| f[i].parse::<u64>().unwrap();
    (
        n(2),
        n(3),
        n(4),
        n(5),
        line.split("  ").last().unwrap_or(""),
    )
}

pub fn has_flag(ns: &str, dev: &str, flag: &str) -> bool {
    ip_json(&["-n", ns, "link", "show", dev])[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Re-creates the wire: the parent `p0` and its peer, as `topology` made them.
pub fn recreate_wire(t: &Topo) {
    let (h, w) = (t.host.name(), t.wire.name());
    ip(&[
        "-n", h, "link", "add", "p0", "type", "veth", "peer", "name", "wire0", "netns", w,
    ]);
    ip(&["-n", h, "link", "set", "p0", "up"]);
    ip(&["-n", w, "link", "set", "wire0", "up"]);
    ip(&["-n", w, "addr", "add", "192.0.2.254/24", "dev", "wire0"]);
}

/// Runs `umacvlan ARGS` in the namespace `ns` against the engine at `socket`, asserts that it
/// succeeded (the message says `what`, then its stderr), and returns its output.
pub fn ctl_ok(ns: &str, socket: &std::path::Path, args: &[&str], what: &str) -> Output {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, BIN])
        .args(args)
        .env("UMACVLAN_CONTROL", socket)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// `umacvlan stats -j`, run in the namespace `ns` against the engine at `socket`.
pub fn stats_json(ns: &str, socket: &std::path::Path) -> serde_json::Value {
    let o = ctl_ok(ns, socket, &["stats", "-j"], "stats -j");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// CPU time (user + system, in clock ticks) the process has used so far.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
