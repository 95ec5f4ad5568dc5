//! `umacvlan lab` end to end (root): the built binary builds its lab, probes it, prints the
//! matrix and the counters, exits 0 when every cell matches the rules, and leaves no namespace
//! behind; a killed `--keep` lab is swept by the next run.
//!
//! The labs run one at a time (two shared cores; and the sweep test must not race another lab).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use umacvlan::net::testutil::require_root;

static SERIAL: Mutex<()> = Mutex::new(());

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_umacvlan"))
}

/// The lab namespaces of process `pid` still present.
fn lab_namespaces(pid: u32) -> Vec<String> {
    let prefix = format!("umvlab-{pid}-");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs `umacvlan lab ARGS` to completion; returns its pid and output.
fn run_lab(args: &[&str]) -> (u32, Output) {
    let child = bin()
        .arg("lab")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn umacvlan lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for umacvlan lab");
    (pid, out)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a lab and checks everything a finished lab must show.
fn lab_passes(args: &[&str], modes: [&str; 3]) -> String {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let (pid, out) = run_lab(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let all = format!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "umacvlan lab {args:?} exited with {}; a cell differs from the rules or the lab failed:\n{all}",
        out.status
    );
    // The matrix: both tables, every node as a row, the verdict.
    assert!(stdout.contains("Unicast UDP"), "{all}");
    assert!(stdout.contains("Broadcast UDP to 192.0.2.255"), "{all}");
    for row in ["wire", "c1", "c2", "c3"] {
        let rows = stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{row} ")))
            .count();
        // Once in the node list, once in each table.
        assert!(rows >= 3, "row {row} missing:\n{all}");
    }
    assert!(
        stdout.contains("All 24 cells match the forwarding rules."),
        "{all}"
    );
    assert!(
        !stdout.contains("!! YES") && !stdout.contains("!! NO"),
        "{all}"
    );
    // The counters: a line per port (with its mode), the parent, the ring.
    assert!(stdout.contains("Engine counters:"), "{all}");
    for (i, m) in modes.iter().enumerate() {
        let port = format!("c{}", i + 1);
        assert!(
            stdout.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 6
                    && f[0] == port
                    && f[1] == *m
                    && f[2].parse::<u64>().is_ok_and(|n| n > 0)
            }),
            "no counters line for {port} ({m}) with packets received:\n{all}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("eth0") && l.contains("parent")),
        "{all}"
    );
    assert!(stdout.contains("ring of eth0 (kernel): packets="), "{all}");
    // Nothing left behind.
    assert_eq!(lab_namespaces(pid), Vec::<String>::new(), "{all}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the lab took {:?}",
        started.elapsed()
    );
    stdout
}

#[test]
fn default_lab_matches_the_rules_and_cleans_up() {
    let out = lab_passes(&[], ["bridge", "bridge", "vepa"]);
    // Bridge siblings talk; the vepa child only reaches the wire (no switch to reflect).
    let c1 = out
        .lines()
        .find(|l| l.trim_start().starts_with("c1 ") && l.contains("no (arp)"))
        .unwrap_or_else(|| panic!("c1's unicast row:\n{out}"));
    assert!(c1.contains("yes"), "{c1}");
}

#[test]
fn bridge_vepa_private_lab_matches_the_rules() {
    lab_passes(
        &["--modes", "bridge,vepa,private"],
        ["bridge", "vepa", "private"],
    );
}

#[test]
fn hairpin_lab_matches_the_rules() {
    let out = lab_passes(
        &["--modes", "vepa,vepa,private", "--hairpin"],
        ["vepa", "vepa", "private"],
    );
    assert!(out.contains("hairpin on"), "{out}");
}

#[test]
fn bad_modes_are_refused_before_anything_is_built() {
    for (modes, says) in [
        ("bridge,vepa", "three"),
        ("passthru,bridge,bridge", "passthru"),
        ("bridge,vepa,bogus", "bogus"),
    ] {
        let (pid, out) = run_lab(&["--modes", modes]);
        assert_eq!(out.status.code(), Some(2), "{modes}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(says),
            "{modes}: {}",
            text(&out.stderr)
        );
        assert_eq!(lab_namespaces(pid), Vec::<String>::new());
    }
}

/// Kills the child when the test fails before it does.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_killed_keep_lab_is_swept_by_the_next_run() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = KillOnDrop(Some(
        bin()
            .args(["lab", "--keep"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn umacvlan lab --keep"),
    ));
    let c = child.0.as_mut().unwrap();
    let pid = c.id();
    let mut seen = String::new();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("--keep lab ended before it said it stays up:\n{seen}"))
            .expect("read the lab's stdout");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("Press Ctrl-C") {
            break;
        }
    }
    assert!(seen.contains("ip netns exec umvlab-"), "{seen}");
    assert!(seen.contains("tcpdump"), "{seen}");
    // SIGKILL: no cleanup can run.
    let mut c = child.0.take().unwrap();
    c.kill().expect("SIGKILL the lab");
    c.wait().expect("reap the lab");
    let left = lab_namespaces(pid);
    assert_eq!(
        left.len(),
        5,
        "a SIGKILLed lab should leave its 5 namespaces: {left:?}"
    );

    let (next, out) = run_lab(&[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", text(&out.stdout));
    assert_eq!(
        lab_namespaces(pid),
        Vec::<String>::new(),
        "the next lab did not sweep the stale ones; stderr:\n{stderr}"
    );
    for name in &left {
        assert!(
            stderr.contains(name.as_str()),
            "{name} not reported:\n{stderr}"
        );
    }
    assert_eq!(lab_namespaces(next), Vec::<String>::new());
}
