//! CI smoke of the benchmark (root), two runs one after the other: `umacvlan-bench --quick
//! --json --only pps,tcp,rtt` for the kernel, kernel-observed, umacvlan and umacvlan-observed
//! arms and the minimal relay (RTT only), and the trafgen modes (`--only capacity,zeroloss,cost,contended`) for the kernel,
//! umacvlan and umacvlan-fifo arms. Asserts that every metric has a positive number for every
//! arm, that the observed arms' captures ran to the end and the engine was scraped and compared
//! with plain umacvlan, that the generator was calibrated and every trafgen row says whether it
//! was generator-bound, that the fifo arm reports the priority that applied, and that none of
//! its namespaces (`umvb-PID-*`) is left behind. It asserts nothing about speed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// One benchmark at a time: both would compete for the same 2 CPUs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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

/// Runs `umacvlan-bench --quick --json ARGS`; returns its JSON and stderr, after checking it
/// succeeded and left none of its namespaces behind.
fn quick(args: &[&str]) -> (serde_json::Value, String) {
    umacvlan::net::testutil::require_root();
    let umacvlan = umacvlan_binary();
    let child = Command::new(BENCH)
        .args(["--quick", "--json"])
        .args(args)
        .arg("--umacvlan")
        .arg(&umacvlan)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run umacvlan-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("umacvlan-bench's output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "umacvlan-bench --quick {args:?} failed ({}):\n{stderr}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    let left = leftovers(pid);
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    (v, stderr)
}

#[test]
fn quick_run_reports_every_metric_for_every_arm_and_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (v, stderr) = quick(&[
        "--only",
        "pps,tcp,rtt",
        "--arms",
        "kernel,kernel-observed,umacvlan,umacvlan-observed,relay",
    ]);
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
    // The minimal relay answered the wire<->c1 RTT test, and the floor goal was evaluated.
    let floor = &v["rtt_floor"];
    assert!(
        floor["relay_median_us"]
            .as_f64()
            .is_some_and(|x| x > 0.0 && x.is_finite())
            && floor["met"].is_boolean(),
        "rtt_floor: {floor:#}\n{stderr}"
    );
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
    eprintln!(
        "umacvlan-bench smoke: {} metrics x 4 arms in {:.1} s ({}): {}",
        METRICS.len(),
        t0.elapsed().as_secs_f64(),
        ARMS.join("/"),
        summary.join(", ")
    );
}

/// The trafgen rows and, for each, the arms that must have a number.
const TRAFGEN_ROWS: [(&str, &[&str]); 7] = [
    ("calib_1", &["kernel"]),
    ("calib_all", &["kernel"]),
    ("capacity", &["kernel", "umacvlan"]),
    ("zeroloss", &["kernel", "umacvlan"]),
    ("cost_1", &["kernel", "umacvlan"]),
    ("contended", &["kernel", "umacvlan"]),
    ("contended_prio", &["kernel", "umacvlan-fifo"]),
];

#[test]
fn quick_trafgen_modes_calibrate_flag_and_report_the_priority() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let (v, stderr) = quick(&[
        "--only",
        "capacity,zeroloss,cost,contended",
        "--arms",
        "kernel,umacvlan,umacvlan-fifo",
        "--rates",
        "50000",
    ]);
    let metrics = v["metrics"].as_array().expect("metrics array");
    let mut summary = Vec::new();
    for (id, arms) in TRAFGEN_ROWS {
        let m = metrics
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("metric {id} missing:\n{v:#}"));
        for arm in arms {
            let x = m["arms"][arm]["median"].as_f64();
            assert!(
                x.is_some_and(|x| x > 0.0 && x.is_finite()),
                "{id} for {arm}: {x:?}\n{stderr}"
            );
            assert!(
                m["arms"][arm]["generator_bound"].is_boolean(),
                "{id} for {arm}: no generator_bound\n{m:#}"
            );
            summary.push(format!("{id}/{arm} {:.3}", x.unwrap()));
        }
        if *arms.last().unwrap() != "kernel" {
            let kind = m["arms"][arms[1]]["ratio_kind"].as_str();
            assert!(
                kind.is_some_and(|k| ["exact", "at_least", "at_most", "unknown"].contains(&k)),
                "{id}: ratio kind {kind:?}"
            );
        }
    }
    // Each trafgen trial kept its accounting: offered, delivered, CPU.
    let cost = &v["details"]["cost_50000/umacvlan/rep1"];
    assert!(
        cost["offered_pps"].as_f64().is_some_and(|x| x > 0.0)
            && cost["engine_cpu_s"].as_f64().is_some_and(|x| x > 0.0)
            && cost["generator_reported_sent"]
                .as_u64()
                .is_some_and(|x| x > 0),
        "cost trial: {cost:#}"
    );
    // Capacity and zero-loss say which CPU was their limit, from the tasks' CPU time.
    for (test, arm) in [
        ("capacity", "kernel"),
        ("capacity", "umacvlan"),
        ("zeroloss", "umacvlan"),
    ] {
        let l = v["limits"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["test"] == test && l["arm"] == arm))
            .unwrap_or_else(|| panic!("no limit for {test}/{arm}: {:#}", v["limits"]));
        for k in ["generator_cpu_share", "engine_cpu_share"] {
            let x = l[k].as_f64();
            assert!(
                x.is_some_and(|x| (0.0..=1.1).contains(&x)),
                "{test}/{arm} {k}: {x:?}"
            );
        }
        assert!(
            l["verdict"].as_str().is_some_and(|s| s.contains("CPU")),
            "{l:#}"
        );
    }
    // The fifo arm says what applied: fifo, or the fallback with its reason.
    let pr = v["details"]["worker_priority/umacvlan-fifo"]
        .as_str()
        .unwrap_or("");
    assert!(
        pr.starts_with("fifo:") || pr.contains("fifo:1 refused"),
        "worker priority of the fifo arm: {pr:?}"
    );
    eprintln!(
        "umacvlan-bench trafgen smoke in {:.1} s (priority {pr}): {}",
        t0.elapsed().as_secs_f64(),
        summary.join(", ")
    );
}
