//! Least privilege (root): after start-up every thread of the engine holds exactly CAP_NET_ADMIN
//! and CAP_NET_RAW (plus CAP_SYS_ADMIN while ports can still be added into namespaces, and
//! CAP_SYS_NICE while the workers' priority needs it: by default, `loaded:-10`, and with
//! `--worker-priority` fifo or a nice below 0; not with `normal` or a nice of 0 or above), in its
//! permitted, effective and bounding sets, nothing inheritable or ambient, and no_new_privs; it
//! still forwards and still adds ports into namespaces. The control socket is root's (0600) unless
//! `--control-group` opens it to a group (0660, root:GROUP).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};

use umacvlan::net::testutil::{Topology, ip, topology, try_ip, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_umacvlan");
const NET_ADMIN_RAW: u64 = (1 << 12) | (1 << 13);
/// CAP_SYS_ADMIN (setns) and CAP_SYS_PTRACE (opening /proc/PID/ns/net of another process).
const SYS_ADMIN: u64 = (1 << 21) | (1 << 19);
/// CAP_SYS_NICE: kept for the default worker priority (`loaded:-10`), `--worker-priority
/// fifo[:P]` or `nice:N` below 0.
const SYS_NICE: u64 = 1 << 23;

struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(t: &Topology, args: &[&str]) -> Engine {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", t.host.name(), BIN, "run"])
        .args(args);
    // clap counts an environment value as given: --no-control would conflict with it.
    match args.contains(&"--no-control") {
        true => c.env_remove("UMACVLAN_CONTROL"),
        false => c.env("UMACVLAN_CONTROL", t.socket()),
    };
    let child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Engine(child)
}

/// Every thread's capability sets and no_new_privs, as (thread name, field, value).
fn thread_caps(pid: u32) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue; // the thread ended meanwhile
        };
        for line in status.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            let value = match k {
                "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb" => {
                    u64::from_str_radix(v, 16).unwrap()
                }
                "NoNewPrivs" => v.parse().unwrap(),
                _ => continue,
            };
            out.push((comm.trim().to_string(), k.to_string(), value));
        }
    }
    out
}

/// Waits until the engine is set up, then checks every thread holds exactly `want`.
fn assert_caps(pid: u32, want: u64) {
    wait_until("every thread to settle", || {
        thread_caps(pid)
            .iter()
            .all(|(_, k, v)| k != "CapEff" || *v == want)
    });
    let all = thread_caps(pid);
    assert!(all.len() >= 6 * 3, "threads: {all:?}");
    for (thread, k, v) in &all {
        let expected = match k.as_str() {
            "CapInh" | "CapAmb" => 0,
            "NoNewPrivs" => 1,
            _ => want,
        };
        assert_eq!(
            *v, expected,
            "thread {thread} {k} = {v:#x}, want {expected:#x}"
        );
    }
}

fn pings(ns: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "2", "-i", "0.1", "-W", "1", to,
        ])
        .output()
        .expect("ping")
        .status
        .success()
}

#[test]
fn static_engine_keeps_net_admin_net_raw_and_its_default_priority_s_sys_nice_and_forwards() {
    let t = topology("cp", 1);
    let port = format!("name=c0,netns={}", t.kid(0));
    let e = start(&t, &["--no-control", "--parent", "p0", "--port", &port]);
    wait_until("c0", || {
        try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok()
    });
    assert_caps(e.0.id(), NET_ADMIN_RAW | SYS_NICE);
    // The default ring (auto, one worker) has a steering thread: it was among those checked.
    let threads = thread_caps(e.0.id());
    assert!(
        threads.iter().any(|(t, _, _)| t.starts_with("umv-steer-")),
        "no ring steering thread: {threads:?}"
    );
    ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    ip(&["-n", t.kid(0), "addr", "add", "192.0.2.1/24", "dev", "c0"]);
    assert!(
        pings(t.wire.name(), "192.0.2.1"),
        "forwarding without privileges"
    );
}

#[test]
fn a_fifo_worker_priority_also_keeps_sys_nice_and_forwards() {
    let t = topology("cn", 1);
    let port = format!("name=c0,netns={}", t.kid(0));
    let args = ["--no-control", "--parent", "p0", "--port", &port];
    let e = start(&t, &[&args[..], &["--worker-priority", "fifo:2"]].concat());
    wait_until("c0", || {
        try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok()
    });
    assert_caps(e.0.id(), NET_ADMIN_RAW | SYS_NICE);
    ip(&["-n", t.kid(0), "link", "set", "c0", "up"]);
    ip(&["-n", t.kid(0), "addr", "add", "192.0.2.1/24", "dev", "c0"]);
    assert!(
        pings(t.wire.name(), "192.0.2.1"),
        "forwarding as a fifo worker"
    );
    // A nice above 0, or normal, needs no privilege: nothing more is kept.
    for (tag, priority) in [("cm", "nice:5"), ("cz", "normal")] {
        let t = topology(tag, 1);
        let port = format!("name=c0,netns={}", t.kid(0));
        let args = ["--no-control", "--parent", "p0", "--port", &port];
        let e = start(&t, &[&args[..], &["--worker-priority", priority]].concat());
        wait_until("c0", || {
            try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok()
        });
        assert_caps(e.0.id(), NET_ADMIN_RAW);
    }
}

#[test]
fn with_a_control_socket_it_keeps_sys_admin_and_the_socket_is_root_only() {
    let t = topology("cs", 1);
    let e = start(&t, &[]);
    wait_until("the control socket", || t.socket().exists());
    let meta = std::fs::metadata(t.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_caps(e.0.id(), NET_ADMIN_RAW | SYS_ADMIN | SYS_NICE);
    // Entering a namespace at run time still works (that is what CAP_SYS_ADMIN is kept for).
    let out = Command::new("ip")
        .args(["netns", "exec", t.host.name(), BIN, "link", "add", "c0"])
        .args(["parent", "p0", "netns", t.kid(0)])
        .env("UMACVLAN_CONTROL", t.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(try_ip(&["-n", t.kid(0), "link", "show", "c0"]).is_ok());
    assert_caps(e.0.id(), NET_ADMIN_RAW | SYS_ADMIN | SYS_NICE);
}

#[test]
fn control_group_opens_the_socket_to_a_group() {
    let t = topology("cg", 0);
    // Any group other than root's that this machine has.
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    let (name, gid) = groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse::<u32>().ok()?))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a group besides root in /etc/group");
    let _e = start(&t, &["--control-group", &name]);
    wait_until("the control socket", || t.socket().exists());
    let meta = std::fs::metadata(t.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, gid));
    let out = Command::new(BIN)
        .args(["run", "--control-group", "umv-no-such-group-x"])
        .env("UMACVLAN_CONTROL", t.socket().with_extension("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such group"), "{err}");
    assert!(!t.socket().with_extension("other").exists());
}
