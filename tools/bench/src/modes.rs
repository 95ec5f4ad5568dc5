//! The modes the generator cannot fake (issue #17): every number here is a trial of a
//! generator (trafgen flat out, [`crate::trafgen`]; the paced sender at a fixed rate,
//! [`crate::paced`]) measured from the devices' counters and /proc.
//!
//! * calibration: trafgen into a sink (a veth whose far end has no receiver for the frames)
//!   on one CPU and on every CPU: the generator's own ceiling; an arm that reaches 95 % of it is
//!   generator-bound.
//! * capacity: trafgen on the first CPU, the engine's threads pinned to the others.
//! * zero-loss: the highest rate with no loss (RFC 2544 §26.1, with a loss tolerance for the
//!   VM's noise): trafgen flat out first, then a binary search on the paced rate, the generator
//!   on the first CPU, the engine on the others.
//! * cost: CPU time per delivered frame at fixed paced rates (generator + engine +
//!   `ksoftirqd`), same pinning.
//! * contended: trafgen on every CPU, the engine unpinned.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::lab::{self, C1_MAC, Lab};
use crate::paced::Paced;
use crate::trafgen::{self, Trafgen, link_counters};

/// The CPUs given to the bench (`--cpus`): the generator's (the first), the engine's (the
/// others; the first too when there is only one).
#[derive(Debug, Clone)]
pub struct Cpus {
    pub all: Vec<usize>,
}

impl Cpus {
    /// `0-3,6`-style list; empty: the CPUs this process may run on.
    pub fn parse(list: Option<&str>) -> Result<Cpus> {
        let mut all = Vec::new();
        match list {
            Some(l) => {
                for part in l.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (a, b) = part.split_once('-').unwrap_or((part, part));
                    let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                    if a > b {
                        bail!("--cpus: {part:?} is not a range");
                    }
                    all.extend(a..=b);
                }
            }
            None => {
                let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
                all.extend(
                    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)),
                );
            }
        }
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            bail!("--cpus: no CPU");
        }
        Ok(Cpus { all })
    }

    pub fn generator(&self) -> Vec<usize> {
        vec![self.all[0]]
    }

    pub fn engine(&self) -> Vec<usize> {
        if self.all.len() > 1 {
            self.all[1..].to_vec()
        } else {
            self.all.clone()
        }
    }
}

/// Where a trial sends: through the arm to c1, or into the sink.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    C1,
    Sink,
}

/// One trial's outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trial {
    /// Frames/s the generator put on the wire (the wire device's TX, dropped included).
    pub offered: f64,
    /// Frames/s that reached c1 (its RX counter); 0 for the sink.
    pub delivered: f64,
    /// Frames offered and not delivered over the whole trial, including its drain.
    pub lost: i64,
    /// `lost` as a fraction of what was offered.
    pub loss: f64,
    /// CPU seconds over the measured window: the generator's processes, the engine, the
    /// ksoftirqd threads; and the whole machine's busy time (other tenants included).
    pub gen_cpu: f64,
    pub engine_cpu: f64,
    pub softirqd_cpu: f64,
    pub machine_busy: f64,
    pub secs: f64,
    /// What the generator itself says it sent (trafgen: its exit report; the paced sender: its
    /// count).
    pub gen_reported: u64,
}

impl Trial {
    /// CPU µs per delivered frame: generator + engine + ksoftirqd.
    pub fn cost_us(&self) -> f64 {
        let frames = self.delivered * self.secs;
        if frames <= 0.0 {
            return f64::NAN;
        }
        (self.gen_cpu + self.engine_cpu + self.softirqd_cpu) / frames * 1e6
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "offered_pps": self.offered, "delivered_pps": self.delivered,
            "lost": self.lost, "loss": self.loss, "secs": self.secs,
            "generator_cpu_s": self.gen_cpu, "engine_cpu_s": self.engine_cpu,
            "ksoftirqd_cpu_s": self.softirqd_cpu, "machine_busy_cpu_s": self.machine_busy,
            "cost_us_per_delivered": self.cost_us(), "generator_reported_sent": self.gen_reported,
        })
    }
}

/// Before the measured window starts: let the generator and the forwarder settle.
const WARMUP: Duration = Duration::from_millis(300);
/// After the generator stops: let the last frames cross (the V3 ring's 1 ms timer and more).
const DRAIN: Duration = Duration::from_millis(200);

/// The generator of a trial: trafgen flat out, or the paced sender at a fixed rate.
enum Generator {
    Trafgen(Trafgen),
    Paced(Paced),
}

impl Generator {
    fn cpu(&self) -> f64 {
        match self {
            Generator::Trafgen(g) => g.cpu(),
            Generator::Paced(g) => g.cpu(),
        }
    }

    /// Stops it; the frames it says it sent.
    fn stop(self) -> Result<u64> {
        match self {
            Generator::Trafgen(g) => g.stop(),
            Generator::Paced(g) => Ok(g.stop()),
        }
    }
}

/// The counters a trial reads at the start and the end of its window.
struct Snap {
    at: Instant,
    offered: u64,
    delivered: u64,
    gen_cpu: f64,
    engine_cpu: f64,
    softirqd_cpu: f64,
    machine_busy: f64,
}

/// One trial on `lab` for `dur`: trafgen on `gen_cpus` flat out (`rate` None), or the paced
/// sender on the first of them at `rate`.
pub fn trial(
    lab: &Lab,
    target: Target,
    gen_cpus: &[usize],
    rate: Option<f64>,
    dur: Duration,
) -> Result<Trial> {
    let wire = lab.ns_name("wire");
    let c1 = lab.ns_name("c1");
    let (dev, rx_ns, rx_dev) = match target {
        Target::C1 => ("wire0", c1.as_str(), "c1"),
        Target::Sink => (lab::SINK, wire.as_str(), lab::SINK_PEER),
    };
    let softirqd = trafgen::ksoftirqd();
    let engine = lab.engine_pid();
    let count = |dev_ns: &str, d: &str| link_counters(dev_ns, d);
    let tx0 = count(&wire, dev)?;
    let rx0 = count(rx_ns, rx_dev)?;
    let g = match rate {
        None => Generator::Trafgen(Trafgen::start(&wire, dev, lab.wire_mac, C1_MAC, gen_cpus)?),
        Some(r) => {
            let ifindex = lab.wire_ifindex(dev)?;
            Generator::Paced(Paced::start(
                &lab.wire,
                ifindex,
                lab.wire_mac,
                C1_MAC,
                gen_cpus[0],
                r,
            )?)
        }
    };
    std::thread::sleep(WARMUP);
    let snap = |g: &Generator| -> Result<Snap> {
        let tx = count(&wire, dev)?;
        let rx = count(rx_ns, rx_dev)?;
        Ok(Snap {
            at: Instant::now(),
            offered: tx.tx_packets + tx.tx_dropped,
            delivered: rx.rx_packets,
            gen_cpu: g.cpu(),
            engine_cpu: engine.map_or(0.0, trafgen::cpu_of),
            softirqd_cpu: softirqd.iter().copied().map(trafgen::cpu_of).sum(),
            machine_busy: trafgen::machine_busy(),
        })
    };
    let a = snap(&g)?;
    std::thread::sleep(dur);
    let b = snap(&g)?;
    let reported = g.stop()?;
    std::thread::sleep(DRAIN);
    let tx1 = count(&wire, dev)?;
    let rx1 = count(rx_ns, rx_dev)?;
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let offered_all = (tx1.tx_packets + tx1.tx_dropped) - (tx0.tx_packets + tx0.tx_dropped);
    let delivered_all = rx1.rx_packets - rx0.rx_packets;
    let lost = match target {
        Target::C1 => {
            i64::try_from(offered_all).unwrap_or(i64::MAX)
                - i64::try_from(delivered_all).unwrap_or(i64::MAX)
        }
        Target::Sink => 0,
    };
    Ok(Trial {
        offered: (b.offered - a.offered) as f64 / secs,
        delivered: match target {
            Target::C1 => (b.delivered - a.delivered) as f64 / secs,
            Target::Sink => 0.0,
        },
        lost,
        loss: if offered_all == 0 {
            0.0
        } else {
            lost as f64 / offered_all as f64
        },
        gen_cpu: b.gen_cpu - a.gen_cpu,
        engine_cpu: b.engine_cpu - a.engine_cpu,
        softirqd_cpu: b.softirqd_cpu - a.softirqd_cpu,
        machine_busy: b.machine_busy - a.machine_busy,
        secs,
        gen_reported: reported,
    })
}

/// Pins the engine's threads (if the arm has an engine) to `cpus` for as long as it lives;
/// unpins them to `all` on drop.
pub struct Pinned<'a> {
    lab: &'a Lab,
    all: Vec<usize>,
}

impl<'a> Pinned<'a> {
    pub fn new(lab: &'a Lab, cpus: &[usize], all: &[usize]) -> Result<Pinned<'a>> {
        if let Some(pid) = lab.engine_pid() {
            trafgen::pin_process(pid, cpus)?;
        }
        Ok(Pinned {
            lab,
            all: all.to_vec(),
        })
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.lab.engine_pid()
            && let Err(e) = trafgen::pin_process(pid, &self.all)
        {
            eprintln!("umacvlan-bench: unpinning the engine: {e:#}");
        }
    }
}

/// The zero-loss search's outcome.
#[derive(Debug, Clone)]
pub struct ZeroLoss {
    /// The highest offered rate (frames/s, as measured) that lost at most the tolerance.
    pub rate: f64,
    /// Every trial: (asked rate or None for flat out, outcome).
    pub trials: Vec<(Option<f64>, Trial)>,
}

/// RFC 2544 throughput by binary search on the paced rate between 0 and the generator's
/// ceiling `ceiling` (frames/s): first flat out (if that loses nothing, the generator is the
/// bound), then `steps` halvings of the interval.
pub fn zero_loss(
    lab: &Lab,
    gen_cpus: &[usize],
    ceiling: f64,
    steps: u32,
    tolerance: f64,
    dur: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<ZeroLoss> {
    let mut trials = Vec::new();
    let flat = trial(lab, Target::C1, gen_cpus, None, dur)?;
    let (flat_loss, flat_offered) = (flat.loss, flat.offered);
    trials.push((None, flat));
    if flat_loss <= tolerance {
        return Ok(ZeroLoss {
            rate: flat_offered,
            trials,
        });
    }
    let (mut lo, mut hi) = (0.0, ceiling.max(flat_offered));
    let mut best = 0.0;
    for _ in 0..steps {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted");
        }
        let mid = f64::midpoint(lo, hi);
        let t = trial(lab, Target::C1, gen_cpus, Some(mid), dur)?;
        if t.loss <= tolerance {
            lo = mid;
            best = f64::max(best, t.offered);
        } else {
            hi = mid;
        }
        trials.push((Some(mid), t));
    }
    Ok(ZeroLoss { rate: best, trials })
}
