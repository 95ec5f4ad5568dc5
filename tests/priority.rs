//! `run --worker-priority` (root): the worker thread, and only it, takes the asked scheduling
//! (read back from `/proc/PID/task/TID/stat`: field 19 nice, 40 rt_priority, 41 policy); a
//! refused `SCHED_FIFO` falls back to nice -10 with exactly one warning, and is reported in
//! `stats -j` and the start-up log; traffic still crosses the engine.
//!
//! The refusals are made deterministic two ways: a cgroup v1 `cpu` child with real-time group
//! scheduling and no budget (`cpu.rt_runtime_us` = 0: EPERM even to root, while nice -10 still
//! works), and CAP_SYS_NICE out of the bounding set with `RLIMIT_RTPRIO` 0 (`prlimit`,
//! `setpriv` from util-linux: then nice -10 is refused too, unless `RLIMIT_NICE` allows it).

// The engine helpers only (the parity harness is unused here).
#[allow(unused_imports, unused_macros)]
mod common;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::engine::{BIN, Engine, Topo, ping, topo};
use umacvlan::net::testutil::try_ip;
use umacvlan::net::testutil::wait_until;

/// (tid, comm, fields) of every thread of `pid`; `fields[n]` is proc(5)'s field n (1-based; 1
/// and 2, pid and comm, hold placeholders).
fn threads(pid: u32) -> Vec<(u32, String, Vec<String>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let tid: u32 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let open = stat.find('(').unwrap();
        let close = stat.rfind(')').unwrap();
        let comm = stat[open + 1..close].to_string();
        let mut fields = vec![String::new(), tid.to_string(), comm.clone()];
        fields.extend(stat[close + 2..].split_whitespace().map(str::to_string));
        out.push((tid, comm, fields));
    }
    out
}

/// (policy, rt_priority, nice): proc(5)'s fields 41, 40 and 19.
type Sched = (i64, i64, i64);

/// One thread's [`Sched`].
fn sched(fields: &[String]) -> Sched {
    let n = |i: usize| fields[i].parse::<i64>().unwrap();
    (n(41), n(40), n(19))
}

/// The engine's worker threads on p0 (`umv-p0-I`, `Worker::spawn`) and its main thread.
fn workers_and_main(pid: u32) -> (Vec<Sched>, Sched) {
    let all = threads(pid);
    let workers: Vec<_> = all
        .iter()
        .filter(|(_, comm, _)| comm.starts_with("umv-p0-"))
        .map(|(_, _, f)| sched(f))
        .collect();
    assert!(!workers.is_empty(), "no worker thread: {all:?}");
    let main = all
        .iter()
        .find(|(tid, _, _)| *tid == pid)
        .map(|(_, _, f)| sched(f))
        .expect("the main thread");
    (workers, main)
}

fn priority_of(t: &Topo) -> String {
    t.stats()["parents"][0]["worker_priority"]
        .as_str()
        .expect("worker_priority in stats -j")
        .to_string()
}

/// The engine's log lines that contain `what`.
fn lines_with(e: &Engine, what: &str) -> Vec<String> {
    e.log_text()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_string)
        .collect()
}

/// `umacvlan run ARGS` with port c0 in kid 0, started by `sh -c PREFIX exec ...` (so that
/// PREFIX can move the shell into a cgroup first) with `wrap` before the binary; waits for c0.
fn start_wrapped(t: &Topo, prefix: &str, wrap: &[&str], args: &[&str]) -> Engine {
    let log =
        std::env::temp_dir().join(format!("umv-{}-{}.log", std::process::id(), t.host.name()));
    let port = format!("name=c0,netns={}", t.kid(0));
    let mut argv = vec!["ip", "netns", "exec", t.host.name()];
    argv.extend(wrap);
    argv.extend([BIN, "run", "--parent", "p0", "--port", &port]);
    argv.extend(args);
    let script = format!("{prefix} exec \"$@\"");
    let child = Command::new("sh")
        .args(["-c", &script, "sh"])
        .args(&argv)
        .env("UMACVLAN_CONTROL", t.socket())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawn umacvlan");
    let mut e = Engine {
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_err() {
        assert!(
            e.running() && Instant::now() < deadline,
            "c0 never appeared: {}",
            e.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    e
}

fn forwards(t: &Topo) {
    t.up(0, "192.0.2.1/24");
    // Frames to c0 before the engine saw it up would be `unknown_destination`.
    wait_until("c0 forwarding", || {
        t.stats()["ports"][0]["forwarding"] == true
    });
    ping(t.wire.name(), "192.0.2.1", 3).expect("a ping from the wire through c0");
}

#[test]
fn fifo_applies_to_the_worker_thread_only() {
    let t = topo("pf", 1);
    let e = start_with_priority(&t, "fifo:2");
    let (workers, main) = workers_and_main(e.pid());
    assert_eq!(workers, vec![(1, 2, 0)], "SCHED_FIFO, rt_priority 2");
    assert_eq!(main.0, 0, "the daemon's main thread stays SCHED_OTHER");
    // Every other thread too (steering, signals, watchers, servers).
    for (_, comm, f) in threads(e.pid()) {
        if !comm.starts_with("umv-p0-") {
            assert_eq!(sched(&f).0, 0, "thread {comm}: {f:?}");
        }
    }
    assert_eq!(priority_of(&t), "fifo:2");
    assert_eq!(
        lines_with(&e, "worker priority fifo:2").len(),
        1,
        "{}",
        e.log_text()
    );
    assert!(lines_with(&e, "refused").is_empty(), "{}", e.log_text());
    forwards(&t);
}

#[test]
fn nice_applies_to_the_worker_thread_only() {
    let t = topo("pn", 1);
    let e = start_with_priority(&t, "nice:-5");
    let (workers, main) = workers_and_main(e.pid());
    assert_eq!(workers, vec![(0, 0, -5)], "SCHED_OTHER at nice -5");
    assert_eq!((main.0, main.2), (0, 0), "the main thread is untouched");
    assert_eq!(priority_of(&t), "nice:-5");
}

/// Small frames to `dst` from the wire, flat out: trafgen (netsniff-ng) on every CPU, as the
/// bench's contended row, which outruns a worker; killed when dropped.
struct Flood(std::process::Child);

impl Flood {
    fn start(wire: &str, dst: &str) -> Flood {
        let bytes = |m: &str| -> String {
            let b: Vec<String> = m.split(':').map(|x| format!("0x{x}")).collect();
            b.join(", ")
        };
        let packet = format!(
            "{{ {}, {}, c16(0x88b5), fill(0x00, 46) }}",
            bytes(dst),
            bytes("02:00:00:00:09:09")
        );
        use std::os::unix::process::CommandExt;
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let child = Command::new("ip")
            .args(["netns", "exec", wire, "trafgen", "-o", "wire0", "-P"])
            .arg(cpus.to_string())
            .arg(packet)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("trafgen (apt-get install netsniff-ng)");
        Flood(child)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // trafgen forks one sender per CPU, all in the group the child leads; on SIGINT the
        // parent reaps them and exits.
        use nix::sys::signal::{Signal, killpg};
        let Ok(pid) = i32::try_from(self.0.id()) else {
            return;
        };
        let group = nix::unistd::Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A wire flood must not keep the worker in its ring: it still reads its ports (a ping's replies
/// come back through c0's TAP) and still switches to V3. Before the ring budget, a flood that
/// outran the worker kept it in the V2 ring for as long as it lasted.
#[test]
fn a_wire_flood_does_not_starve_the_ports() {
    let t = topo("pw", 1);
    let c0 = "02:00:00:00:00:c1";
    let _e = start_with_mac(&t, c0);
    forwards(&t);
    let _flood = Flood::start(t.wire.name(), c0);
    wait_until("V3 under the flood", || ring_mode(&t) == "v3");
    // The ring drops what the worker cannot take, pings included: some must come back.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            t.wire.name(),
            "ping",
            "-c",
            "20",
            "-i",
            "0.05",
        ])
        .args(["-W", "1", "192.0.2.1"])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bytes from"),
        "no reply during the flood: {text}"
    );
}

/// The engine with one bridge port, c0, and `--worker-priority priority`.
fn start_with_priority(t: &Topo, priority: &str) -> Engine {
    let port = t.port(0, "bridge");
    let args = [&port[..], &["--worker-priority".into(), priority.into()]].concat();
    t.start(&args, &[(0, "c0")])
}

/// The engine with one bridge port, c0, of MAC `mac` (what a flood is sent to).
fn start_with_mac(t: &Topo, mac: &str) -> Engine {
    let port = [
        "--port".to_string(),
        format!("name=c0,mode=bridge,netns={},mac={mac}", t.kid(0)),
    ];
    t.start(&port, &[(0, "c0")])
}

/// The parent's ring mode now (`stats -j`: `v2` or `v3`).
fn ring_mode(t: &Topo) -> String {
    t.stats()["parents"][0]["ring_mode"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_default_takes_nice_minus_10_under_load_only_for_the_workers_only() {
    let t = topo("p0", 1);
    let c0 = "02:00:00:00:00:c0";
    let e = start_with_mac(&t, c0);
    assert_eq!(priority_of(&t), "loaded:-10");
    assert!(lines_with(&e, "refused").is_empty(), "{}", e.log_text());
    wait_until("the worker reads its V2 ring", || ring_mode(&t) == "v2");
    let nice_now = || workers_and_main(e.pid()).0;
    assert_eq!(nice_now(), vec![(0, 0, 0)], "sparse: normal priority");
    // A flood from the wire (small frames back to back): the worker moves to V3 and nice -10.
    let flood = Flood::start(t.wire.name(), c0);
    wait_until("the worker at nice -10 on V3 under the flood", || {
        ring_mode(&t) == "v3" && nice_now() == vec![(0, 0, -10)]
    });
    let (_, main) = workers_and_main(e.pid());
    assert_eq!((main.0, main.2), (0, 0), "the main thread is untouched");
    for (_, comm, f) in threads(e.pid()) {
        if !comm.starts_with("umv-p0-") {
            assert_eq!(sched(&f).2, 0, "thread {comm} keeps nice 0: {f:?}");
        }
    }
    drop(flood);
    wait_until("back to normal priority on V2 once the flood ends", || {
        ring_mode(&t) == "v2" && nice_now() == vec![(0, 0, 0)]
    });
    forwards(&t);
}

#[test]
fn normal_changes_nothing() {
    let t = topo("pz", 1);
    let e = start_with_priority(&t, "normal");
    let (workers, _) = workers_and_main(e.pid());
    assert_eq!(workers, vec![(0, 0, 0)]);
    assert_eq!(priority_of(&t), "normal");
}

/// A cgroup v1 `cpu` child (new ones have `cpu.rt_runtime_us` = 0), removed on drop.
struct RtLessCgroup(PathBuf);

impl RtLessCgroup {
    /// `None` when this kernel has no real-time group scheduling under a v1 `cpu` hierarchy.
    fn new(tag: &str) -> Option<RtLessCgroup> {
        let root = PathBuf::from("/sys/fs/cgroup/cpu");
        if !root.join("cpu.rt_runtime_us").exists() {
            return None;
        }
        let dir = root.join(format!("umv-{}-{tag}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let g = RtLessCgroup(dir);
        let budget = std::fs::read_to_string(g.0.join("cpu.rt_runtime_us")).unwrap();
        assert_eq!(budget.trim(), "0", "a new cgroup's real-time budget");
        Some(g)
    }
}

impl Drop for RtLessCgroup {
    fn drop(&mut self) {
        // The engine (dropped before) may take a moment to leave it.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn fifo_refused_by_a_cgroup_without_rt_budget_falls_back_to_nice_once() {
    let t = topo("pc", 1);
    // A test that cannot run fails: it never passes silently.
    let cg = RtLessCgroup::new("pc").expect(
        "this test needs real-time group scheduling under a cgroup v1 `cpu` hierarchy \
         (/sys/fs/cgroup/cpu/cpu.rt_runtime_us), as on this project's machines",
    );
    let procs = cg.0.join("cgroup.procs");
    let prefix = format!("echo $$ > {} &&", procs.display());
    // Two workers: still one warning per engine.
    let args = ["--worker-priority", "fifo:1", "--workers", "2"];
    let e = start_wrapped(&t, &prefix, &[], &args);
    let (workers, main) = workers_and_main(e.pid());
    assert_eq!(
        workers,
        vec![(0, 0, -10); 2],
        "nice -10 instead, SCHED_OTHER"
    );
    assert_eq!((main.0, main.2), (0, 0));
    let warned = lines_with(&e, "SCHED_FIFO was refused");
    assert_eq!(warned.len(), 1, "{}", e.log_text());
    let w = &warned[0];
    for part in [
        "worker priority fifo:1 asked",
        "EPERM",
        "CAP_SYS_NICE held",
        "nice:-10",
    ] {
        assert!(w.contains(part), "{part:?} not in {w}");
    }
    // `ip netns exec` remounts /sys, which hides /sys/fs/cgroup from the engine: then it says
    // what EPERM with CAP_SYS_NICE held means instead of quoting the budget.
    assert!(
        w.contains("cpu.rt_runtime_us is 0")
            || w.contains("EPERM means real-time group scheduling left this cgroup no budget"),
        "{w}"
    );
    let applied = "nice:-10 (fifo:1 refused: EPERM)";
    assert_eq!(priority_of(&t), applied);
    assert_eq!(
        lines_with(&e, &format!("worker priority {applied}")).len(),
        1,
        "the start-up line: {}",
        e.log_text()
    );
    forwards(&t);
    drop(e);
    drop(cg);
}

#[test]
fn fifo_refused_without_cap_sys_nice_is_said_and_still_forwards() {
    let t = topo("pp", 1);
    let wrap = [
        "prlimit",
        "--rtprio=0",
        "setpriv",
        "--bounding-set",
        "-sys_nice",
        "--inh-caps",
        "-sys_nice",
        "--",
    ];
    let e = start_wrapped(&t, "", &wrap, &["--worker-priority", "fifo:1"]);
    let (workers, _) = workers_and_main(e.pid());
    let warned = lines_with(&e, "SCHED_FIFO was refused");
    assert_eq!(warned.len(), 1, "{}", e.log_text());
    assert!(
        warned[0].contains("EPERM") && warned[0].contains("no CAP_SYS_NICE"),
        "{}",
        warned[0]
    );
    // Nice -10 needs CAP_SYS_NICE too, unless RLIMIT_NICE allows it: either way, what applied
    // is what the thread has and what stats says.
    let nice_limit = Command::new("prlimit")
        .args(["--nice", "--output", "SOFT", "--noheadings"])
        .output()
        .unwrap();
    let nice_limit: u32 = String::from_utf8_lossy(&nice_limit.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if nice_limit >= 30 {
        assert_eq!(workers, vec![(0, 0, -10)]);
        assert_eq!(priority_of(&t), "nice:-10 (fifo:1 refused: EPERM)");
    } else {
        assert_eq!(workers, vec![(0, 0, 0)]);
        assert_eq!(
            priority_of(&t),
            "normal (fifo:1 refused: EPERM; nice:-10 refused: EACCES)"
        );
        assert!(warned[0].contains("the workers run at normal priority"));
    }
    forwards(&t);
}

#[test]
fn a_bad_value_exits_2_naming_the_forms() {
    for bad in ["fifo:0", "rt", "nice:-30"] {
        let out = Command::new(BIN)
            .args(["run", "--no-control", "--worker-priority", bad])
            .env_remove("UMACVLAN_CONTROL")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("nice[:N] (N in -20..=19, default -10), normal or fifo[:P]"),
            "{bad}: {err}"
        );
    }
}
