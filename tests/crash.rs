//! Crash safety (root): the engine SIGKILLed 100 times at random points — while starting, while
//! forwarding a ping flood, and during a reload (SIGHUP with a changed configuration) — and
//! restarted each time. After every kill no TAP of ours is left in any namespace of the test;
//! every restart replaces the dead engine's control socket file, answers on it, and forwards
//! again (a ping from the wire through it). Then `umacvlan lab` is killed at random points and the
//! next lab must remove every namespace the dead ones left.
//!
//! The random points come from a seeded generator: the seed is printed, and
//! `UMACVLAN_CRASH_SEED=N` replays a run.

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{BIN, Engine, Topo, ping, topo, tun_devices};
use umacvlan::net::testutil::{ip, wait_until};

const KILLS: usize = 100;
const LAB_KILLS: usize = 5;

/// xorshift64*: small, seedable, and good enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration in `0..max_ms` milliseconds, with microsecond resolution.
    fn delay(&mut self, max_ms: u64) -> Duration {
        Duration::from_micros(self.next() % (max_ms * 1000))
    }
}

fn seed() -> u64 {
    let seed = std::env::var("UMACVLAN_CRASH_SEED").map_or_else(
        |_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            u64::try_from(nanos & u128::from(u64::MAX)).unwrap()
        },
        |s| s.parse().expect("UMACVLAN_CRASH_SEED must be a number"),
    );
    eprintln!("crash test seed: {seed} (replay with UMACVLAN_CRASH_SEED={seed})");
    seed | 1
}

/// The configuration the engine runs; `alt` is the one a reload switches to (c1 changes mode and
/// MTU in place, c2 is added: a new TAP moved into its namespace).
fn config(t: &Topo, alt: bool) -> String {
    let port = |name: &str, kid: usize, mode: &str, extra: &str| {
        format!(
            "[[ports]]\nname = \"{name}\"\nparent = \"p0\"\nmode = \"{mode}\"\nnetns = \"{}\"\n\
             mac = \"02:00:00:00:0c:0{kid}\"\n{extra}\n",
            t.kid(kid)
        )
    };
    let mut s = port("c0", 0, "bridge", "");
    if alt {
        s += &port("c1", 1, "vepa", "mtu = 1400");
        s += &port("c2", 2, "private", "");
    } else {
        s += &port("c1", 1, "bridge", "");
    }
    s
}

/// No TAP of ours in the host or any child namespace (the kernel deletes a non-persistent TAP
/// when the dead engine's fds close).
fn assert_no_taps(t: &Topo, i: usize, what: &str) {
    let spaces: Vec<&str> = std::iter::once(t.host.name())
        .chain(t.kids.iter().map(|k| k.name()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: usize = spaces.iter().map(|ns| tun_devices(ns)).sum();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kill {i} ({what}): {left} TAP(s) survived the engine"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the engine, brings c0 up and checks that it forwards (ping from the wire) and that the
/// control socket answers.
fn start_and_check(t: &Topo, args: &[String], i: usize) -> Engine {
    let e = t.start(args, &[(0, "c0"), (1, "c1")]);
    t.up(0, "192.0.2.1/24");
    let mut tries = 0;
    while let Err(out) = ping(t.wire.name(), "192.0.2.1", 1) {
        tries += 1;
        assert!(
            tries < 20,
            "after kill {i}: the restarted engine does not forward:\n{out}\n{}",
            e.log_text()
        );
    }
    let out = Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "link", "show", "c0"])
        .env("UMACVLAN_CONTROL", t.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "after kill {i}: the control socket does not answer: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        e.log_text()
    );
    e
}

/// A ping flood from the wire to c0 (stopped on drop).
struct Flood(Child);

impl Flood {
    fn start(t: &Topo) -> Flood {
        let child = Command::new("ip")
            .args(["netns", "exec", t.wire.name(), "ping", "-q", "-i", "0.002"])
            .args(["-c", "100000", "192.0.2.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run ping (apt-get install iputils-ping)");
        Flood(child)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_at_random_points_leaves_nothing_and_the_restart_forwards() {
    let started = Instant::now();
    let mut rng = Rng(seed());
    let t = topo("crash", 3);
    let file = std::env::temp_dir().join(format!("{}.toml", t.host.name()));
    let _cleanup = RemoveOnDrop(vec![file.clone(), t.socket()]);
    std::fs::write(&file, config(&t, false)).unwrap();
    let args = vec!["--config".to_string(), file.display().to_string()];
    let mut e = start_and_check(&t, &args, 0);
    let (mut phases, mut stale_sockets) = ([0usize; 3], 0);
    for i in 1..=KILLS {
        let phase = (rng.next() % 3) as usize;
        phases[phase] += 1;
        let what = ["startup", "forwarding", "reload"][phase];
        match phase {
            0 => {
                // A fresh engine killed somewhere in its start: ring, TAPs, moves, socket.
                e.kill9();
                let fresh = t.start(&args, &[]);
                std::thread::sleep(rng.delay(60));
                fresh.kill9();
            }
            1 => {
                let flood = Flood::start(&t);
                std::thread::sleep(rng.delay(100));
                e.kill9();
                drop(flood);
            }
            _ => {
                let alt = rng.next().is_multiple_of(2);
                std::fs::write(&file, config(&t, alt)).unwrap();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(
                        i32::try_from(e.child.as_ref().unwrap().id()).unwrap(),
                    ),
                    nix::sys::signal::SIGHUP,
                )
                .unwrap();
                std::thread::sleep(rng.delay(30));
                e.kill9();
            }
        }
        assert_no_taps(&t, i, what);
        stale_sockets += usize::from(t.socket().exists());
        e = start_and_check(&t, &args, i);
    }
    let (status, _) = e.stop();
    assert!(status.success());
    assert!(
        stale_sockets > 0,
        "no kill ever left a socket file behind: the stale-socket path went untested"
    );
    eprintln!(
        "{KILLS} kills (startup {}, forwarding {}, reload {}), {stale_sockets} stale control \
         sockets replaced, in {:.1} s",
        phases[0],
        phases[1],
        phases[2],
        started.elapsed().as_secs_f64()
    );
    kill_labs_then_check_the_next_lab_sweeps(&mut rng);
}

/// Paths removed when the test ends, however it ends.
struct RemoveOnDrop(Vec<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn lab_namespaces_of(pid: u32) -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("umvlab-{pid}-")))
        .map(str::to_string)
        .collect()
}

fn kill_labs_then_check_the_next_lab_sweeps(rng: &mut Rng) {
    // Each lab sweeps what the labs before it left, so every lab's stderr is kept.
    let (mut left, mut said) = (Vec::new(), String::new());
    for _ in 0..LAB_KILLS {
        let lab = Command::new(BIN)
            .arg("lab")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(rng.delay(2500));
        let pid = lab.id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        let out = lab.wait_with_output().unwrap();
        said += &String::from_utf8_lossy(&out.stderr);
        left.extend(lab_namespaces_of(pid));
    }
    let out = Command::new(BIN).arg("lab").output().unwrap();
    said += &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the next lab failed:\n{said}");
    eprintln!(
        "{LAB_KILLS} labs killed, {} namespaces left behind by them, all removed",
        left.len()
    );
    assert!(
        !left.is_empty(),
        "no killed lab left anything: the sweep went untested"
    );
    let all = ip(&["netns", "list"]);
    for name in &left {
        assert!(
            !all.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} is still there after the next lab:\n{said}"
        );
        assert!(
            said.contains(&format!("removed {name},")),
            "no lab said it removed {name}:\n{said}"
        );
    }
    wait_until("the last lab's namespaces to go", || {
        ip(&["netns", "list"])
            .lines()
            .all(|l| !l.starts_with("umvlab-"))
    });
}
