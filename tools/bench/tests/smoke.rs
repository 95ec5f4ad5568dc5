//! CI smoke of the benchmark (root): `umacvlan-bench --quick --json` for the kernel,
//! kernel-observed, umacvlan and umacvlan-observed arms. Asserts that every metric has a positive
//! number for every arm, that the observed arms' captures ran to the end and the engine was
//! scraped and compared with plain umacvlan, and that none of its namespaces (`umvb-PID-*`) is
//! left behind. It asserts nothing about speed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

const BENCH: &str = env!("CARGO_BIN_EXE_umacvlan-bench");

const METRICS: [&str; 11] = [
    "pps_wire_c1",
    "tcp_c1_wire_1",
    "tcp_c1_wire_4",
    "tcp_wire_c1_1",
    "tcp_wire_c1_4",
    "tcp_c1_c2_1",
    "tcp_c1_c2_4",
    "rtt_wire_c1_p50",
    "rtt_wire_c1_p99",
    "rtt_c1_c2_p50",
    "rtt_c1_c2_p99",
];

const ARMS: [&str; 4] = ["kernel", "kernel-observed", "umacvlan", "umacvlan-observed"];

/// The namespaces benchmark process `pid` made (`umvb-PID-...`) that are still there: another
/// benchmark running on the machine at the same time has its own.
fn leftovers(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let prefix = format!("umvb-{pid}-");
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The umacvlan binary the benchmark drives, built (incrementally) from this workspace so that
/// it is never stale: `cargo test -p umacvlan-bench` builds only the library of `umacvlan`.
fn umacvlan_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "umacvlan", "--bin", "umacvlan"])
        .status()
        .expect("run cargo build for the umacvlan binary");
    assert!(
        status.success(),
        "cargo build --release --bin umacvlan failed"
    );
    let bin = PathBuf::from(BENCH)
        .parent()
        .expect("target dir")
        .join("umacvlan");
    assert!(bin.exists(), "no umacvlan binary at {}", bin.display());
    bin
}

#[test]
fn quick_run_reports_every_metric_for_every_arm_and_leaves_nothing() {
    umacvlan::net::testutil::require_root();
    let umacvlan = umacvlan_binary();
    let t0 = Instant::now();
    let child = Command::new(BENCH)
        .args([
            "--quick",
            "--json",
            "--arms",
            "kernel,kernel-observed,umacvlan,umacvlan-observed",
            "--umacvlan",
        ])
        .arg(&umacvlan)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run umacvlan-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("umacvlan-bench's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "umacvlan-bench --quick failed ({}):\n{stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    let metrics = v["metrics"].as_array().expect("metrics array");
    let mut summary = Vec::new();
    for id in METRICS {
        let m = metrics
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("metric {id} missing:\n{v:#}"));
        for arm in ARMS {
            let x = m["arms"][arm]["median"].as_f64();
            assert!(
                x.is_some_and(|x| x > 0.0 && x.is_finite()),
                "{id} for {arm}: {x:?}\n{stderr}"
            );
        }
        let r = m["arms"]["umacvlan-observed"]["ratio_to_umacvlan"].as_f64();
        assert!(
            r.is_some_and(|r| r > 0.0 && r.is_finite()),
            "{id}: observed/umacvlan {r:?}"
        );
        let v: Vec<String> = ARMS
            .iter()
            .map(|a| format!("{:.3}", m["arms"][a]["median"].as_f64().unwrap()))
            .collect();
        summary.push(format!("{id} {}", v.join("/")));
    }
    // The observed arm was observed: its /metrics answered the 1 s scrapes throughout.
    let scrapes = v["details"]["observed"]["metrics_scrapes"].as_u64();
    assert!(
        scrapes.is_some_and(|n| n >= 2),
        "scrapes: {scrapes:?}\n{stderr}"
    );
    // Its capture, stopped with SIGTERM, said what it wrote (and lost, if anything).
    let said = v["details"]["observed"]["capture_report"]
        .as_str()
        .unwrap_or("");
    assert!(
        said.contains("frames captured") && said.contains("interrupted"),
        "the capture's report: {said:?}\n{stderr}"
    );
    // tcpdump, stopped the same way, said what it captured.
    let said = v["details"]["kernel_observed"]["capture_report"]
        .as_str()
        .unwrap_or("");
    assert!(
        said.contains("packets captured"),
        "tcpdump's report: {said:?}\n{stderr}"
    );
    let left = leftovers(pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    eprintln!(
        "umacvlan-bench smoke: {} metrics x 4 arms in {:.1} s ({}): {}",
        METRICS.len(),
        t0.elapsed().as_secs_f64(),
        ARMS.join("/"),
        summary.join(", ")
    );
}
