//! umacvlan-bench: the same namespace lab for the kernel's macvlan, umacvlan and (when
//! installed) Open vSwitch's userspace datapath and vde_switch, measured in one run with the same
//! generators; prints medians, ratios to the kernel and the goals.
//!
//! ```text
//! cargo build --release && cargo run --release -p umacvlan-bench -- --all
//! ```

mod lab;
mod modes;
mod paced;
mod relay;
mod traffic;
mod trafgen;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use lab::{Arm, C1_ADDR, C1_MAC, C2_ADDR, Lab, WIRE_ADDR};

static STOP: AtomicBool = AtomicBool::new(false);

/// Benchmark the kernel's macvlan against umacvlan (and OVS / vde_switch when installed) in one
/// run, on the same namespace lab, and print medians with ratios to the kernel.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Run every arm: kernel, kernel-observed (when tcpdump is installed), umacvlan,
    /// umacvlan-observed, and ovs / vde when installed (else reported as not run).
    #[arg(long)]
    all: bool,
    /// Arms to run, comma-separated: kernel, kernel-observed (the kernel's macvlan with tcpdump
    /// capturing c1 throughout), umacvlan, umacvlan-observed (the same engine with a 1 s scrape
    /// of /metrics and a capture of every frame running throughout), ovs, vde, and umacvlan-v2,
    /// umacvlan-v3, umacvlan-auto (the engine with that `--ring`), umacvlan-fifo (the engine with
    /// `--worker-priority fifo`; contended test only, left out without it), relay (a minimal
    /// ring→TAP relay in the benchmark itself, c1 only: the RTT floor; rtt test only, left out
    /// without it). The kernel is always run (the ratios are against it).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kernel,umacvlan,umacvlan-fifo,relay"
    )]
    arms: Vec<String>,
    /// Tests to run, comma-separated: capacity, zeroloss, cost, contended (trafgen, with the
    /// generator's calibration into a sink each repetition), tcp, rtt, and pps (the built-in
    /// sendmmsg blaster, which the kernel's path outruns: no calibration).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "capacity,zeroloss,cost,contended,tcp,rtt"
    )]
    only: Vec<String>,
    /// CPUs to use, e.g. `0-1` or `0,2-5` (default: every CPU this process may use). trafgen
    /// runs on the first; the engine's threads are pinned to the others (capacity, zero-loss,
    /// cost); the contended test runs trafgen on all of them, the engine unpinned.
    #[arg(long)]
    cpus: Option<String>,
    /// Fixed offered rates (frames/s, at most two) of the cost test.
    #[arg(long, value_delimiter = ',', default_value = "100000,300000")]
    rates: Vec<f64>,
    /// Seconds per trafgen trial (capacity, each zero-loss step, each cost rate, contended).
    /// Default 2, --quick 0.3.
    #[arg(long)]
    trial: Option<f64>,
    /// Binary-search steps of the zero-loss test after the flat-out trial. Default 6, --quick 1.
    #[arg(long)]
    search_steps: Option<u32>,
    /// Loss a zero-loss trial may show (fraction of the offered frames: the VM's noise).
    #[arg(long, default_value_t = 0.001)]
    loss_tolerance: f64,
    /// Seconds per built-in pps and TCP test (TCP rounds up to whole seconds). Default 5,
    /// --quick 1.
    #[arg(long)]
    duration: Option<f64>,
    /// Repetitions; the table shows medians. Default 3, --quick 1.
    #[arg(long)]
    reps: Option<u32>,
    /// UDP round trips per RTT test. Default 2000, --quick 300.
    #[arg(long)]
    rtt_count: Option<u32>,
    /// CI smoke: 1 repetition, about 1 s per test.
    #[arg(long)]
    quick: bool,
    /// Print JSON (every sample, medians, ratios) instead of the table.
    #[arg(long)]
    json: bool,
    /// The umacvlan binary. Default: `umacvlan` next to this binary (target/release).
    #[arg(long)]
    umacvlan: Option<PathBuf>,
    /// TCP generator: iperf3 (default when installed) or own.
    #[arg(long)]
    tcp: Option<String>,
    /// Children per parent in the kernel and umacvlan labs (at least 2: c1 and c2 carry the
    /// traffic; the others, up and idle in the host namespace, fill the port table). With more
    /// than 2 the umacvlan arm also reports its start time and memory.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(2..=4094))]
    ports: u16,
    /// Bytes the observed arms' captures keep per frame (`capture -s`, `tcpdump -s`). Default:
    /// all of it (262144), as both do by default; 128 keeps the headers, what "where did my
    /// frame go" needs.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=262_144))]
    capture_snaplen: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

/// One row of the table.
#[derive(Debug)]
struct Metric {
    id: &'static str,
    label: String,
    unit: &'static str,
    better: Better,
    /// The goal as a ratio to the kernel (>= for Higher, <= for Lower), for `goal_arm`; None:
    /// reported without a goal.
    goal: Option<f64>,
    /// The arm the goal is for (the others are shown with their ratios only).
    goal_arm: &'static str,
    group: &'static str,
    /// The calibration row an arm's value is checked against: at 95 % of the generator's own
    /// ceiling or above, the arm is generator-bound and its ratio only a bound.
    calib: Option<&'static str>,
}

/// The share of the generator's ceiling from which an arm counts as generator-bound.
const GENERATOR_BOUND: f64 = 0.95;

/// The cost rows' ids, one per `--rates` entry.
const COST_IDS: [&str; 2] = ["cost_1", "cost_2"];

fn metrics(rates: &[f64]) -> Vec<Metric> {
    let m = |id, label: &str, unit, better, goal, group| Metric {
        id,
        label: label.to_string(),
        unit,
        better,
        goal,
        goal_arm: "umacvlan",
        group,
        calib: None,
    };
    let hi = Better::Higher;
    let lo = Better::Lower;
    let mut v = vec![
        m(
            "calib_1",
            "generator into a sink, 1 CPU",
            "Mpps",
            hi,
            None,
            "calib",
        ),
        m(
            "calib_all",
            "generator into a sink, every CPU",
            "Mpps",
            hi,
            None,
            "calib",
        ),
        Metric {
            calib: Some("calib_1"),
            ..m(
                "capacity",
                "capacity: gen 1 CPU, worker the other",
                "Mpps",
                hi,
                None,
                "capacity",
            )
        },
        Metric {
            calib: Some("calib_1"),
            ..m(
                "zeroloss",
                "zero-loss throughput (RFC 2544)",
                "Mpps",
                hi,
                Some(0.8),
                "zeroloss",
            )
        },
    ];
    for (id, r) in COST_IDS.iter().zip(rates) {
        v.push(m(
            id,
            &format!("CPU per delivered frame at {:.0} kpps", r / 1e3),
            "us",
            lo,
            Some(1.3),
            "cost",
        ));
    }
    v.extend([
        Metric {
            calib: Some("calib_all"),
            ..m(
                "contended",
                "contended: gen on every CPU",
                "Mpps",
                hi,
                Some(0.5),
                "contended",
            )
        },
        Metric {
            calib: Some("calib_all"),
            goal_arm: "umacvlan-fifo",
            ..m(
                "contended_prio",
                "contended, --worker-priority fifo",
                "Mpps",
                hi,
                Some(0.8),
                "contended",
            )
        },
        m(
            "pps_wire_c1",
            "64-byte frames wire->c1 (built-in blaster)",
            "Mpps",
            hi,
            None,
            "pps",
        ),
        m(
            "tcp_c1_wire_1",
            "TCP c1->wire, 1 stream",
            "Gbit/s",
            hi,
            Some(0.9),
            "tcp",
        ),
        m(
            "tcp_c1_wire_4",
            "TCP c1->wire, 4 streams",
            "Gbit/s",
            hi,
            None,
            "tcp",
        ),
        m(
            "tcp_wire_c1_1",
            "TCP wire->c1, 1 stream",
            "Gbit/s",
            hi,
            Some(0.9),
            "tcp",
        ),
        m(
            "tcp_wire_c1_4",
            "TCP wire->c1, 4 streams",
            "Gbit/s",
            hi,
            None,
            "tcp",
        ),
        m(
            "tcp_c1_c2_1",
            "TCP c1->c2 (bridge), 1 stream",
            "Gbit/s",
            hi,
            Some(0.9),
            "tcp",
        ),
        m(
            "tcp_c1_c2_4",
            "TCP c1->c2 (bridge), 4 streams",
            "Gbit/s",
            hi,
            None,
            "tcp",
        ),
        m(
            "rtt_wire_c1_p50",
            "UDP RTT wire<->c1, median",
            "us",
            lo,
            None,
            "rtt",
        ),
        m(
            "rtt_wire_c1_p99",
            "UDP RTT wire<->c1, p99",
            "us",
            lo,
            None,
            "rtt",
        ),
        m(
            "rtt_c1_c2_p50",
            "UDP RTT c1<->c2, median",
            "us",
            lo,
            None,
            "rtt",
        ),
        m(
            "rtt_c1_c2_p99",
            "UDP RTT c1<->c2, p99",
            "us",
            lo,
            None,
            "rtt",
        ),
    ]);
    v
}

/// Samples per arm per metric id.
type Samples = BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>;

fn main() -> ExitCode {
    // Before any thread: every thread inherits the blocked set; one thread waits for them.
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        eprintln!("umacvlan-bench: block signals: {e}");
        return ExitCode::from(1);
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("umacvlan-bench: {sig}: stopping, removing the labs");
        }
        STOP.store(true, Ordering::SeqCst);
    });
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("umacvlan-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

struct Plan {
    arms: Vec<Arm>,
    skipped: Vec<(Arm, String)>,
    groups: Vec<String>,
    dur: Duration,
    reps: u32,
    rtt_count: u32,
    iperf3: bool,
    umacvlan: PathBuf,
    /// Idle children beyond c1 and c2.
    extra_ports: usize,
    /// `--capture-snaplen`.
    capture_snaplen: Option<u32>,
    cpus: modes::Cpus,
    rates: Vec<f64>,
    trial: Duration,
    search_steps: u32,
    loss_tolerance: f64,
}

/// The groups that run trafgen (and so the calibration).
const TRAFGEN_GROUPS: [&str; 4] = ["capacity", "zeroloss", "cost", "contended"];
/// Every group, in the order a repetition runs them.
const GROUPS: [&str; 8] = [
    "calib",
    "capacity",
    "zeroloss",
    "cost",
    "contended",
    "pps",
    "tcp",
    "rtt",
];

fn plan(a: &Args) -> Result<Plan> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root: it creates network namespaces (run it with sudo)");
    }
    let umacvlan = match &a.umacvlan {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("umacvlan"),
    };
    let wanted: Vec<Arm> = if a.all {
        Arm::ALL.to_vec()
    } else {
        let mut v = vec![Arm::Kernel];
        for s in &a.arms {
            let arm = Arm::parse(s.trim())?;
            if !v.contains(&arm) {
                v.push(arm);
            }
        }
        v
    };
    let mut arms = Vec::new();
    let mut skipped = Vec::new();
    let has = |g: &str| a.only.iter().any(|o| o.trim() == g);
    for arm in wanted.into_iter().filter(|&a| {
        (a != Arm::UmacvlanFifo || has("contended")) && (a != Arm::Relay || has("rtt"))
    }) {
        match arm.missing(&umacvlan) {
            None => arms.push(arm),
            // umacvlan itself is the point: refuse rather than skip.
            Some(why) if arm.is_umacvlan() => bail!("{why}"),
            Some(why) => skipped.push((arm, why)),
        }
    }
    let mut groups: Vec<String> = Vec::new();
    for g in &a.only {
        let g = g.trim();
        if !GROUPS[1..].contains(&g) {
            bail!("unknown test {g:?} in --only ({})", GROUPS[1..].join(", "));
        }
        groups.push(g.to_string());
    }
    if groups.iter().any(|g| TRAFGEN_GROUPS.contains(&g.as_str())) {
        if let Some(why) = trafgen::missing() {
            bail!(
                "{why}; or leave {} out of --only",
                TRAFGEN_GROUPS.join(", ")
            );
        }
        groups.push("calib".into());
    }
    if !(1..=COST_IDS.len()).contains(&a.rates.len()) || a.rates.iter().any(|r| *r < 1.0) {
        bail!("--rates takes one or two rates of at least 1 frame/s");
    }
    if !(0.0..0.5).contains(&a.loss_tolerance) {
        bail!("--loss-tolerance must be in [0, 0.5)");
    }
    let trial = a.trial.unwrap_or(if a.quick { 0.3 } else { 2.0 });
    if !(0.1..=600.0).contains(&trial) {
        bail!("--trial must be between 0.1 and 600 seconds");
    }
    let have_iperf3 = lab::which("iperf3").is_some();
    let iperf3 = match a.tcp.as_deref() {
        None => have_iperf3,
        Some("iperf3") if have_iperf3 => true,
        Some("iperf3") => bail!("iperf3 is not installed (apt-get install iperf3, or --tcp own)"),
        Some("own") => false,
        Some(t) => bail!("unknown --tcp {t:?} (iperf3, own)"),
    };
    let dur = a.duration.unwrap_or(if a.quick { 1.0 } else { 5.0 });
    if !(0.1..=3600.0).contains(&dur) {
        bail!("--duration must be between 0.1 and 3600 seconds");
    }
    Ok(Plan {
        arms,
        skipped,
        groups,
        dur: Duration::from_secs_f64(dur),
        reps: a.reps.unwrap_or(if a.quick { 1 } else { 3 }).max(1),
        rtt_count: a
            .rtt_count
            .unwrap_or(if a.quick { 300 } else { 2000 })
            .max(10),
        iperf3,
        umacvlan,
        extra_ports: usize::from(a.ports) - 2,
        capture_snaplen: a.capture_snaplen,
        cpus: modes::Cpus::parse(a.cpus.as_deref())?,
        rates: a.rates.clone(),
        trial: Duration::from_secs_f64(trial),
        search_steps: a.search_steps.unwrap_or(if a.quick { 1 } else { 6 }),
        loss_tolerance: a.loss_tolerance,
    })
}

fn run(a: Args) -> Result<ExitCode> {
    let p = plan(&a)?;
    let swept = lab::sweep_stale();
    if !swept.is_empty() {
        eprintln!(
            "umacvlan-bench: removed stale namespaces {}",
            swept.join(" ")
        );
    }
    let mut labs: Vec<Lab> = Vec::new();
    let mut skipped = p.skipped.clone();
    for &arm in &p.arms {
        if STOP.load(Ordering::SeqCst) {
            return Ok(ExitCode::from(130));
        }
        eprintln!("umacvlan-bench: building the {} lab", arm.name());
        let extra = match arm {
            a if a.is_kernel() || a.is_umacvlan() => p.extra_ports,
            _ => 0,
        };
        match Lab::build(arm, &p.umacvlan, extra, p.capture_snaplen) {
            Ok(l) => labs.push(l),
            Err(e) if arm == Arm::Kernel || arm.is_umacvlan() => {
                return Err(e.context(format!("building the {} lab", arm.name())));
            }
            Err(e) => {
                eprintln!("umacvlan-bench: {} arm not run: {e:#}", arm.name());
                skipped.push((arm, format!("setup failed: {e:#}")));
            }
        }
    }
    let mut samples: Samples = BTreeMap::new();
    let mut extra: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let scale = scale_report(&labs, p.extra_ports)?;
    if let Some((text, json)) = &scale {
        eprint!("{text}");
        extra.insert("scale".into(), json.clone());
    }
    for lab in &labs {
        if lab.arm.is_umacvlan() && p.groups.iter().any(|g| g == "contended") {
            let applied = lab.engine_priority(&p.umacvlan)?;
            eprintln!(
                "umacvlan-bench: {} workers run with priority {applied}",
                lab.arm.name()
            );
            extra.insert(
                format!("worker_priority/{}", lab.arm.name()),
                applied.into(),
            );
        }
    }
    extra.insert(
        "cpus".into(),
        serde_json::json!({"all": p.cpus.all, "generator": p.cpus.generator(),
            "engine": p.cpus.engine()}),
    );
    for rep in 0..p.reps {
        extra.insert(format!("loadavg/rep{}", rep + 1), loadavg().into());
        for group in GROUPS {
            if !p.groups.iter().any(|g| g == group) {
                continue;
            }
            for lab in &mut labs {
                // The calibration runs in the kernel lab's wire namespace, once per repetition;
                // the fifo arm exists for the contended test only.
                if (group == "calib" && lab.arm != Arm::Kernel)
                    || (lab.arm == Arm::UmacvlanFifo && group != "contended")
                    || (lab.arm == Arm::Relay && group != "rtt")
                {
                    continue;
                }
                if STOP.load(Ordering::SeqCst) {
                    drop(labs);
                    return Ok(ExitCode::from(130));
                }
                lab.check_alive()
                    .with_context(|| format!("the {} arm", lab.arm.name()))?;
                let arm = lab.arm.name();
                let ceiling = samples
                    .get("kernel")
                    .and_then(|k| k.get("calib_1"))
                    .and_then(|v| v.last())
                    .map_or(0.0, |m| m * 1e6);
                let got = measure(lab, group, &p, &mut extra, rep, ceiling)
                    .with_context(|| format!("{group} test, {arm} arm, rep {}", rep + 1))?;
                let shown: Vec<String> = got.iter().map(|(k, v)| format!("{k}={v:.3}")).collect();
                eprintln!("  rep {}/{} {arm:9} {}", rep + 1, p.reps, shown.join(" "));
                for (id, v) in got {
                    samples
                        .entry(arm)
                        .or_default()
                        .entry(id)
                        .or_default()
                        .push(v);
                }
            }
        }
    }
    // Tear down (keeping the engine's counters for the JSON), then check nothing is left.
    let mut engine_report = None;
    let scrapes: Option<u64> = labs.iter().find_map(|l| l.scrapes());
    let (mut capture_report, mut tcpdump_report) = (None, None);
    for mut l in labs {
        for e in l.teardown() {
            eprintln!("umacvlan-bench: {e}");
        }
        match l.arm {
            Arm::Umacvlan => engine_report = l.engine_report.take(),
            Arm::UmacvlanObserved => capture_report = l.capture_report.take(),
            Arm::KernelObserved => tcpdump_report = l.capture_report.take(),
            _ => {}
        }
    }
    let snap = p
        .capture_snaplen
        .map_or(String::new(), |n| format!(" -s {n}"));
    if let Some(n) = scrapes {
        extra.insert(
            "observed".into(),
            serde_json::json!({
                "metrics_scrapes": n,
                "capture": format!("umacvlan capture parent -w /dev/null{snap}"),
                "capture_report": capture_report,
            }),
        );
    }
    if tcpdump_report.is_some() {
        extra.insert(
            "kernel_observed".into(),
            serde_json::json!({
                "capture": format!("tcpdump -i c1 -n -w /dev/null{snap} (in c1's namespace)"),
                "capture_report": tcpdump_report,
            }),
        );
    }
    let left = lab::existing(&format!("{}{}-", lab::PREFIX, std::process::id()));
    if !left.is_empty() {
        bail!("namespaces left behind: {}", left.join(" "));
    }
    let arms: Vec<&'static str> = Arm::KNOWN
        .iter()
        .filter(|a| samples.contains_key(a.name()))
        .map(|a| a.name())
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(
                &p,
                &arms,
                &samples,
                &skipped,
                extra,
                engine_report
            ))?
        );
    } else {
        print!("{}", table(&p, &arms, &samples, &skipped, &extra));
        for (key, arm, what) in [
            ("kernel_observed", Arm::KernelObserved, "tcpdump"),
            ("observed", Arm::UmacvlanObserved, "capture"),
        ] {
            if let Some(said) = extra.get(key).and_then(|o| o["capture_report"].as_str()) {
                println!("\n{}, its {what} at the end: {said}", arm.name());
            }
        }
        if let Some((text, _)) = scale {
            print!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With extra ports: how long the engine took to create them all and what it holds in memory,
/// measured right after start (None with only c1 and c2).
fn scale_report(labs: &[Lab], extra: usize) -> Result<Option<(String, serde_json::Value)>> {
    let Some(lab) = labs.iter().find(|l| l.arm == Arm::Umacvlan) else {
        return Ok(None);
    };
    let Some(start) = lab.startup.filter(|_| extra > 0) else {
        return Ok(None);
    };
    let m = lab.engine_memory()?;
    let ports = extra + 2;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let without_ring = m.rss_kib.saturating_sub(m.ring_kib);
    let text = format!(
        "\nscale: {ports} ports started in {:.2} s (goal <= 2 s for 1000); resident {:.1} MiB \
         without the ring (goal <= 64 MiB for 1000 ports; {:.1} MiB anonymous), ring pages \
         resident {:.1} MiB\n",
        start.as_secs_f64(),
        mib(without_ring),
        mib(m.anon_kib),
        mib(m.ring_kib),
    );
    let json = serde_json::json!({
        "ports": ports,
        "start_s": start.as_secs_f64(),
        "rss_without_ring_kib": without_ring,
        "rss_kib": m.rss_kib,
        "anon_kib": m.anon_kib,
        "ring_rss_kib": m.ring_kib,
    });
    Ok(Some((text, json)))
}

/// Run one test group on one arm; returns (metric id, value) pairs.
fn measure(
    lab: &mut Lab,
    group: &str,
    p: &Plan,
    extra: &mut BTreeMap<String, serde_json::Value>,
    rep: u32,
    ceiling: f64,
) -> Result<Vec<(&'static str, f64)>> {
    let arm = lab.arm.name();
    let mut detail = |what: &str, v: serde_json::Value| {
        extra.insert(format!("{what}/{arm}/rep{}", rep + 1), v);
    };
    let gen_cpus = p.cpus.generator();
    Ok(match group {
        "calib" => {
            let one = modes::trial(lab, modes::Target::Sink, &gen_cpus, None, p.trial)?;
            let all = modes::trial(lab, modes::Target::Sink, &p.cpus.all, None, p.trial)?;
            detail(
                "calib",
                serde_json::json!({"one_cpu": one.json(), "every_cpu": all.json()}),
            );
            vec![
                ("calib_1", one.offered / 1e6),
                ("calib_all", all.offered / 1e6),
            ]
        }
        "capacity" => {
            let _pin = modes::Pinned::new(lab, &p.cpus.engine(), &p.cpus.all)?;
            let t = modes::trial(lab, modes::Target::C1, &gen_cpus, None, p.trial)?;
            detail("capacity", t.json());
            vec![("capacity", t.delivered / 1e6)]
        }
        "zeroloss" => {
            let _pin = modes::Pinned::new(lab, &p.cpus.engine(), &p.cpus.all)?;
            let z = modes::zero_loss(
                lab,
                &gen_cpus,
                ceiling,
                p.search_steps,
                p.loss_tolerance,
                p.trial,
                &STOP,
            )?;
            let trials: Vec<serde_json::Value> = z
                .trials
                .iter()
                .map(|(asked, t)| serde_json::json!({"asked_pps": asked, "trial": t.json()}))
                .collect();
            detail("zeroloss", trials.into());
            vec![("zeroloss", z.rate / 1e6)]
        }
        "cost" => {
            let _pin = modes::Pinned::new(lab, &p.cpus.engine(), &p.cpus.all)?;
            let mut v = Vec::new();
            for (id, &rate) in COST_IDS.iter().zip(&p.rates) {
                let t = modes::trial(lab, modes::Target::C1, &gen_cpus, Some(rate), p.trial)?;
                detail(&format!("cost_{rate:.0}"), t.json());
                v.push((*id, t.cost_us()));
            }
            v
        }
        "contended" => {
            let t = modes::trial(lab, modes::Target::C1, &p.cpus.all, None, p.trial)?;
            detail("contended", t.json());
            let mpps = t.delivered / 1e6;
            match lab.arm {
                // The kernel is the reference of both contended rows.
                Arm::Kernel => vec![("contended", mpps), ("contended_prio", mpps)],
                Arm::UmacvlanFifo => vec![("contended_prio", mpps)],
                _ => vec![("contended", mpps)],
            }
        }
        "pps" => {
            let r = traffic::pps(&lab.wire, lab.wire_mac, &lab.c1, "c1", C1_MAC, p.dur, &STOP)?;
            detail(
                "pps",
                serde_json::json!({"sent_pps": r.sent, "received_pps": r.received,
                    "counting_socket_drops": r.rx_socket_drops}),
            );
            vec![("pps_wire_c1", r.received / 1e6)]
        }
        "tcp" => {
            let mut v = Vec::new();
            let wire = lab.ns_name("wire");
            let c1 = lab.ns_name("c1");
            let c2 = lab.ns_name("c2");
            let cases: [(&'static str, &str, std::net::Ipv4Addr, &str, u32); 6] = [
                ("tcp_c1_wire_1", &wire, WIRE_ADDR, &c1, 1),
                ("tcp_c1_wire_4", &wire, WIRE_ADDR, &c1, 4),
                ("tcp_wire_c1_1", &c1, C1_ADDR, &wire, 1),
                ("tcp_wire_c1_4", &c1, C1_ADDR, &wire, 4),
                ("tcp_c1_c2_1", &c2, C2_ADDR, &c1, 1),
                ("tcp_c1_c2_4", &c2, C2_ADDR, &c1, 4),
            ];
            for (id, server, addr, client, streams) in cases {
                if STOP.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                let g = if p.iperf3 {
                    let secs = (p.dur.as_secs() + u64::from(p.dur.subsec_nanos() > 0)).max(1);
                    traffic::iperf3(server, addr, client, secs, streams)?
                } else {
                    let ns = |n: &str| -> &umacvlan::net::Netns {
                        match n.rsplit('-').next() {
                            Some("wire") => &lab.wire,
                            Some("c1") => &lab.c1,
                            _ => &lab.c2,
                        }
                    };
                    traffic::own_tcp(ns(server), addr, ns(client), p.dur, streams)?
                };
                v.push((id, g));
            }
            v
        }
        "rtt" => {
            let a = traffic::rtt(&lab.c1, C1_ADDR, &lab.wire, p.rtt_count, &STOP)?;
            if lab.arm == Arm::Relay {
                return Ok(vec![
                    ("rtt_wire_c1_p50", a.median_us),
                    ("rtt_wire_c1_p99", a.p99_us),
                ]);
            }
            let b = traffic::rtt(&lab.c2, C2_ADDR, &lab.c1, p.rtt_count, &STOP)?;
            if a.lost + b.lost > 0 {
                detail(
                    "rtt",
                    serde_json::json!({"lost_wire_c1": a.lost, "lost_c1_c2": b.lost}),
                );
            }
            vec![
                ("rtt_wire_c1_p50", a.median_us),
                ("rtt_wire_c1_p99", a.p99_us),
                ("rtt_c1_c2_p50", b.median_us),
                ("rtt_c1_c2_p99", b.p99_us),
            ]
        }
        _ => unreachable!("groups are checked in plan()"),
    })
}

/// `/proc/loadavg`'s first three fields: how loaded the (shared) machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn med(samples: &Samples, arm: &str, id: &str) -> Option<f64> {
    samples
        .get(arm)?
        .get(id)
        .filter(|v| !v.is_empty())
        .map(|v| median(v))
}

/// An arm's ratio to the kernel, and what the generator lets it say.
#[derive(Debug, Clone, Copy)]
enum Ratio {
    /// Neither arm reached the generator's ceiling.
    Exact(f64),
    /// The arm is generator-bound, the kernel is not: the arm could do more.
    AtLeast(f64),
    /// The kernel is generator-bound, the arm is not: the kernel could do more.
    AtMost(f64),
    /// Both are generator-bound: the ratio says nothing.
    Unknown(f64),
}

impl Ratio {
    fn value(self) -> f64 {
        match self {
            Ratio::Exact(r) | Ratio::AtLeast(r) | Ratio::AtMost(r) | Ratio::Unknown(r) => r,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Ratio::Exact(_) => "exact",
            Ratio::AtLeast(_) => "at_least",
            Ratio::AtMost(_) => "at_most",
            Ratio::Unknown(_) => "unknown",
        }
    }

    fn text(self) -> String {
        match self {
            Ratio::Exact(r) => format!("{r:.2}x"),
            Ratio::AtLeast(r) => format!(">={r:.2}x"),
            Ratio::AtMost(r) => format!("<={r:.2}x"),
            Ratio::Unknown(r) => format!("?{r:.2}x"),
        }
    }
}

/// Whether `arm` is generator-bound for `m`: in most repetitions its value reached
/// [`GENERATOR_BOUND`] of that repetition's calibration (each repetition calibrates first, and
/// the machine's load moves both together); by the medians when the repetitions do not pair up.
fn generator_bound(samples: &Samples, m: &Metric, arm: &str) -> bool {
    let Some(c) = m.calib else {
        return false;
    };
    let series = |a: &str, id: &str| samples.get(a).and_then(|s| s.get(id));
    match (series(arm, m.id), series("kernel", c)) {
        (Some(v), Some(cal)) if v.len() == cal.len() && !v.is_empty() => {
            let hits = v
                .iter()
                .zip(cal)
                .filter(|(x, g)| **x >= GENERATOR_BOUND * **g)
                .count();
            2 * hits > v.len()
        }
        _ => med(samples, arm, m.id)
            .zip(med(samples, "kernel", c))
            .is_some_and(|(x, g)| x >= GENERATOR_BOUND * g),
    }
}

fn ratio(samples: &Samples, m: &Metric, arm: &str) -> Option<Ratio> {
    let r = med(samples, arm, m.id)? / med(samples, "kernel", m.id)?;
    Some(
        match (
            generator_bound(samples, m, "kernel"),
            generator_bound(samples, m, arm),
        ) {
            (false, false) => Ratio::Exact(r),
            (true, false) => Ratio::AtMost(r),
            (false, true) => Ratio::AtLeast(r),
            (true, true) => Ratio::Unknown(r),
        },
    )
}

/// The verdict on `m`'s goal for its goal arm: met, NOT met, or why it cannot be said.
fn verdict(samples: &Samples, m: &Metric) -> Option<&'static str> {
    let goal = m.goal?;
    let r = ratio(samples, m, m.goal_arm)?;
    let meets = |r: f64| match m.better {
        Better::Higher => r >= goal,
        Better::Lower => r <= goal,
    };
    Some(match r {
        Ratio::Exact(r) => {
            if meets(r) {
                "met"
            } else {
                "NOT met"
            }
        }
        Ratio::AtLeast(r) if meets(r) => "met",
        Ratio::AtMost(r) if !meets(r) => "NOT met",
        _ => "unknown (generator-bound)",
    })
}

/// The issue's second goal: every figure at least this many times better than Open vSwitch's
/// userspace datapath on the same harness.
const OVS_LEAD: f64 = 5.0;

/// How many times better `ours` is than `theirs` for `m` (higher throughput, lower latency).
fn lead_over(m: &Metric, ours: f64, theirs: f64) -> f64 {
    match m.better {
        Better::Higher => ours / theirs,
        Better::Lower => theirs / ours,
    }
}

fn goal_text(m: &Metric) -> String {
    match (m.goal, m.better) {
        (None, _) => "-".into(),
        (Some(g), Better::Higher) => format!("{} >= {g:.1}x", m.goal_arm),
        (Some(g), Better::Lower) => format!("{} <= {g:.1}x", m.goal_arm),
    }
}

fn fmt_val(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("kernel {}, {cpus} CPUs", kernel.trim())
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn table(
    p: &Plan,
    arms: &[&str],
    samples: &Samples,
    skipped: &[(Arm, String)],
    extra: &BTreeMap<String, serde_json::Value>,
) -> String {
    let others: Vec<&str> = arms.iter().copied().filter(|a| *a != "kernel").collect();
    let mut header = vec!["metric".to_string(), "unit".into(), "kernel".into()];
    for a in &others {
        header.push((*a).to_string());
        header.push(format!("{a}/kernel"));
        if *a == Arm::UmacvlanObserved.name() {
            header.push(format!("{a}/umacvlan"));
        }
    }
    header.extend(["goal".to_string(), "met".into()]);
    let ovs = arms.contains(&"ovs");
    if ovs {
        header.extend(["umacvlan vs ovs".to_string(), "goal".into(), "met".into()]);
    }
    let mut rows = vec![header];
    let cell = |m: &Metric, arm: &str| -> String {
        med(samples, arm, m.id).map_or("-".into(), |v| {
            let star = if generator_bound(samples, m, arm) {
                "*"
            } else {
                ""
            };
            format!("{}{star}", fmt_val(v))
        })
    };
    for m in metrics(&p.rates)
        .iter()
        .filter(|m| p.groups.iter().any(|g| g == m.group))
    {
        let mut row = vec![m.label.clone(), m.unit.to_string(), cell(m, "kernel")];
        for a in &others {
            row.push(cell(m, a));
            row.push(ratio(samples, m, a).map_or("-".into(), Ratio::text));
            if *a == Arm::UmacvlanObserved.name() {
                let u = med(samples, "umacvlan", m.id)
                    .zip(med(samples, a, m.id))
                    .map(|(u, v)| v / u);
                row.push(u.map_or("-".into(), |r| format!("{r:.2}x")));
            }
        }
        row.push(goal_text(m));
        row.push(verdict(samples, m).unwrap_or("-").into());
        if ovs {
            let lead = med(samples, "umacvlan", m.id)
                .zip(med(samples, "ovs", m.id))
                .map(|(u, o)| lead_over(m, u, o));
            row.push(lead.map_or("-".into(), |r| format!("{r:.2}x")));
            row.push(format!(">= {OVS_LEAD:.1}x"));
            row.push(
                lead.map_or("-", |r| if r >= OVS_LEAD { "met" } else { "NOT met" })
                    .into(),
            );
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!(
        "umacvlan-bench {}: {}; medians of {} rep(s); trafgen trials of {:.1} s; {:.0} s per \
         built-in pps/TCP test, {} UDP round trips per RTT test; TCP by {}\n",
        today(),
        machine(),
        p.reps,
        p.trial.as_secs_f64(),
        p.dur.as_secs_f64(),
        p.rtt_count,
        if p.iperf3 {
            "iperf3"
        } else {
            "the built-in sender"
        },
    );
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                if c == 0 {
                    format!("{s:<w$}", w = widths[c])
                } else {
                    format!("{s:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    if let Some((u, floor, met)) = rtt_floor(samples) {
        out.push_str(&format!(
            "RTT goal: umacvlan's median wire<->c1 {u:.1} us <= the minimal relay's {floor:.1} us \
             + {RTT_FLOOR_SLACK_US:.0} us: {}\n",
            if met { "met" } else { "NOT met" }
        ));
    }
    if p.groups.iter().any(|g| g == "calib") {
        out.push_str(&notes(p, arms, extra));
    }
    for (arm, why) in skipped {
        out.push_str(&format!("{}: not run: {why}\n", arm.name()));
    }
    out
}

/// How far above the minimal relay's RTT median umacvlan's may be (issue #17).
const RTT_FLOOR_SLACK_US: f64 = 3.0;

/// umacvlan's and the relay's median RTT wire<->c1, and whether the goal is met.
fn rtt_floor(samples: &Samples) -> Option<(f64, f64, bool)> {
    let u = med(samples, "umacvlan", "rtt_wire_c1_p50")?;
    let floor = med(samples, "relay", "rtt_wire_c1_p50")?;
    Some((u, floor, u <= floor + RTT_FLOOR_SLACK_US))
}

/// What the trafgen rows need beside them: the bound marks, the CPUs, the priority that
/// applied, the cost's split, the machine's load.
fn notes(p: &Plan, arms: &[&str], extra: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = format!(
        "* generator-bound: at >= {:.0} % of the generator's own ceiling into a sink (the \
         calibration rows, same CPUs) in most repetitions, each against its own calibration; a \
         ratio against such an arm is a bound (>= / <=), `?` when both are.\nCPUs {:?}: trafgen on {:?}, engine threads pinned to {:?} (capacity, \
         zero-loss, cost); contended: trafgen on all of {:?}, engine unpinned. Zero-loss: loss \
         <= {} of the offered frames, {} search steps.\n",
        GENERATOR_BOUND * 100.0,
        p.cpus.all,
        p.cpus.generator(),
        p.cpus.engine(),
        p.cpus.all,
        p.loss_tolerance,
        p.search_steps,
    );
    if p.cpus.all.len() <= 2 {
        out.push_str(
            "With 2 CPUs or fewer the engine has one CPU for its worker and the child's receive \
             path its TAP writes run; the softirq work of the sender's frames runs on the \
             generator's CPU in both arms (the kernel's whole forwarding; umacvlan's copy into \
             its ring): the contended row measures the scheduler's share.\n",
        );
    }
    for a in arms {
        if let Some(pr) = extra.get(&format!("worker_priority/{a}")) {
            out.push_str(&format!("{a}: workers ran with priority {pr}\n"));
        }
    }
    for l in limits(p, arms, extra) {
        out.push_str(&format!("{l}\n"));
    }
    for rate in &p.rates {
        for a in arms {
            let parts: Vec<[f64; 3]> = (1..=p.reps)
                .filter_map(|r| extra.get(&format!("cost_{rate:.0}/{a}/rep{r}")))
                .map(|t| {
                    let per = |k: &str| {
                        let frames = t["delivered_pps"].as_f64().unwrap_or(0.0)
                            * t["secs"].as_f64().unwrap_or(0.0);
                        t[k].as_f64().unwrap_or(0.0) / frames * 1e6
                    };
                    [
                        per("generator_cpu_s"),
                        per("engine_cpu_s"),
                        per("ksoftirqd_cpu_s"),
                    ]
                })
                .collect();
            if parts.is_empty() {
                continue;
            }
            let m = |i: usize| median(&parts.iter().map(|x| x[i]).collect::<Vec<_>>());
            let field = |k: &str| -> Vec<f64> {
                (1..=p.reps)
                    .filter_map(|r| extra.get(&format!("cost_{rate:.0}/{a}/rep{r}")))
                    .filter_map(|t| t[k].as_f64())
                    .collect()
            };
            let (loss, offered) = (field("loss"), field("offered_pps"));
            let busy: Vec<f64> = field("machine_busy_cpu_s")
                .iter()
                .zip(field("secs"))
                .map(|(b, s)| b / s)
                .collect();
            let offered = median(&offered);
            // The paced sender falls short when the machine has no CPU left for it.
            let short = if offered < GENERATOR_BOUND * rate {
                " (the rate asked was NOT reached: compare per-frame costs at equal rates only)"
            } else {
                ""
            };
            out.push_str(&format!(
                "cost at {:.0} kpps, {a}: generator {:.2} + engine {:.2} + ksoftirqd {:.2} us \
                 per delivered frame (medians), {:.0} kpps offered{short}, loss {:.2} %, machine \
                 busy {:.2} CPUs\n",
                rate / 1e3,
                m(0),
                m(1),
                m(2),
                offered / 1e3,
                median(&loss) * 100.0,
                median(&busy),
            ));
        }
    }
    let loads: Vec<String> = (1..=p.reps)
        .filter_map(|r| {
            extra
                .get(&format!("loadavg/rep{r}"))?
                .as_str()
                .map(String::from)
        })
        .collect();
    out.push_str(&format!(
        "load average at the start of each repetition: {}\n",
        loads.join(" | ")
    ));
    out
}

/// Which CPU was the limit of one arm's capacity or zero-loss trials.
struct Limit {
    /// "capacity" or "zeroloss" (its highest passing trial).
    test: &'static str,
    arm: String,
    /// Shares (0 to 1) of their CPUs that the generator and the engine used, medians over the
    /// repetitions.
    generator: f64,
    engine: f64,
}

impl Limit {
    fn verdict(&self) -> &'static str {
        let busy = |x: f64| x >= GENERATOR_BOUND;
        match (busy(self.generator), busy(self.engine)) {
            (true, true) => "both CPUs were busy",
            (true, false) => "the generator's CPU was the limit",
            (false, true) => "the engine's CPU was the limit",
            (false, false) => "neither CPU was busy: frames were lost with CPU to spare",
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "test": self.test, "arm": self.arm, "generator_cpu_share": self.generator,
            "engine_cpu_share": self.engine, "verdict": self.verdict(),
        })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.test {
            "zeroloss" => "zero-loss (its highest passing trial)",
            _ => "capacity",
        };
        write!(
            f,
            "{what}, {}: the generator used {:.0} % of its CPU, the engine {:.0} % of its (medians): \
             {}",
            self.arm,
            self.generator * 100.0,
            self.engine * 100.0,
            self.verdict()
        )
    }
}

/// Which CPU was the limit of the capacity and zero-loss trials: one per arm and test. From the
/// tasks' own CPU time (`/proc/<pid>/stat`): the generator's processes (which this kernel also
/// charges the softirq work done in their context: the kernel's forwarding, the copy into
/// umacvlan's ring) and the engine's threads. (`/proc/stat`'s per-CPU lines were tried and are
/// not usable on this VM: over 1 s windows a CPU's busy and idle ticks summed to 40 to 100 %
/// while the worker pinned to it alone used 70 to 90 %.)
fn limits(p: &Plan, arms: &[&str], extra: &BTreeMap<String, serde_json::Value>) -> Vec<Limit> {
    // Share (0 to 1) of `cpus` CPUs that field `k` of trial `t` used over its window.
    let share = |t: &serde_json::Value, k: &str, cpus: usize| -> Option<f64> {
        let secs = t["secs"].as_f64().filter(|s| *s > 0.0)?;
        Some(t[k].as_f64()? / secs / cpus as f64)
    };
    let offered = |t: &serde_json::Value| t["offered_pps"].as_f64().unwrap_or(0.0);
    let (gen_cpus, engine_cpus) = (p.cpus.generator().len(), p.cpus.engine().len());
    let mut out = Vec::new();
    for a in arms {
        for test in ["capacity", "zeroloss"] {
            let shares: Vec<(f64, f64)> = (1..=p.reps)
                .filter_map(|r| extra.get(&format!("{test}/{a}/rep{r}")))
                .filter_map(|v| match test {
                    "zeroloss" => v
                        .as_array()?
                        .iter()
                        .map(|x| &x["trial"])
                        .filter(|t| t["loss"].as_f64().is_some_and(|l| l <= p.loss_tolerance))
                        .max_by(|x, y| offered(x).total_cmp(&offered(y))),
                    _ => Some(v),
                })
                .filter_map(|t| {
                    let g = share(t, "generator_cpu_s", gen_cpus)?;
                    Some((g, share(t, "engine_cpu_s", engine_cpus)?))
                })
                .collect();
            if shares.is_empty() {
                continue;
            }
            out.push(Limit {
                test,
                arm: (*a).to_string(),
                generator: median(&shares.iter().map(|s| s.0).collect::<Vec<_>>()),
                engine: median(&shares.iter().map(|s| s.1).collect::<Vec<_>>()),
            });
        }
    }
    out
}

fn json(
    p: &Plan,
    arms: &[&str],
    samples: &Samples,
    skipped: &[(Arm, String)],
    extra: BTreeMap<String, serde_json::Value>,
    engine_report: Option<String>,
) -> serde_json::Value {
    use serde_json::json;
    let metrics: Vec<serde_json::Value> = metrics(&p.rates)
        .iter()
        .filter(|m| p.groups.iter().any(|g| g == m.group))
        .map(|m| {
            let mut per_arm = serde_json::Map::new();
            for a in arms {
                let v = med(samples, a, m.id);
                let r = ratio(samples, m, a);
                let to_umacvlan = med(samples, "umacvlan", m.id).zip(v).map(|(u, v)| v / u);
                per_arm.insert(
                    (*a).to_string(),
                    json!({
                        "median": v,
                        "samples": samples.get(a).and_then(|s| s.get(m.id)),
                        "ratio_to_kernel": r.map(Ratio::value),
                        "ratio_kind": r.map(Ratio::kind),
                        "generator_bound": generator_bound(samples, m, a),
                        "ratio_to_umacvlan": to_umacvlan,
                    }),
                );
            }
            let lead = med(samples, "umacvlan", m.id)
                .zip(med(samples, "ovs", m.id))
                .map(|(u, o)| lead_over(m, u, o));
            json!({
                "id": m.id,
                "label": m.label,
                "unit": m.unit,
                "better": if m.better == Better::Higher { "higher" } else { "lower" },
                "goal": goal_text(m),
                "goal_arm": m.goal_arm,
                "verdict": verdict(samples, m),
                "umacvlan_lead_over_ovs": lead,
                "ovs_lead_goal_met": lead.map(|r| r >= OVS_LEAD),
                "arms": per_arm,
            })
        })
        .collect();
    json!({
        "date": today(),
        "machine": machine(),
        "reps": p.reps,
        "duration_s": p.dur.as_secs_f64(),
        "trial_s": p.trial.as_secs_f64(),
        "rtt_count": p.rtt_count,
        "tcp_generator": if p.iperf3 { "iperf3" } else { "own" },
        "arms": arms,
        "not_run": skipped.iter().map(|(a, w)| json!({"arm": a.name(), "why": w})).collect::<Vec<_>>(),
        "metrics": metrics,
        "rtt_floor": rtt_floor(samples).map(|(u, floor, met)| json!({
            "umacvlan_median_us": u, "relay_median_us": floor,
            "slack_us": RTT_FLOOR_SLACK_US, "met": met,
        })),
        "limits": limits(p, arms, &extra).iter().map(Limit::json).collect::<Vec<_>>(),
        "details": extra,
        "umacvlan_counters": engine_report,
    })
}
