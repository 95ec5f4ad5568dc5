//! The generator the engine cannot outrun: trafgen (netsniff-ng), which sends from a TPACKET TX
//! ring with the qdisc bypassed (its default; `-q` would put the qdisc back), one forked process
//! per CPU (`-P`). What a trial measures comes from counters, not from the generator's word: the
//! wire device's TX counters (offered), the child's RX counter
//! (delivered), and CPU time from /proc (the generator's processes, the engine, `ksoftirqd`).
//!
//! trafgen forks its senders and pins the i-th to CPU i; the bench re-pins them to the CPUs it
//! was given (`--cpus`). Its parent does not forward signals to the senders, so it runs in its
//! own process group and the whole group is interrupted.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use umacvlan::wire::mac::MacAddr;

use crate::lab::{self, ns_command};
use crate::traffic::ETH_P_BENCH;

/// Whether trafgen is installed (else why not).
pub fn missing() -> Option<String> {
    lab::which("trafgen")
        .is_none()
        .then(|| "trafgen is not installed (apt-get install netsniff-ng)".to_string())
}

/// A 60-byte frame (64 on a real wire) from `src` to `dst` in trafgen's packet syntax.
fn packet(src: MacAddr, dst: MacAddr) -> String {
    let bytes: Vec<String> = dst
        .0
        .iter()
        .chain(src.0.iter())
        .map(|b| format!("{b:#04x}"))
        .collect();
    format!(
        "{{ {}, c16({ETH_P_BENCH:#06x}), fill(0x00, 46) }}",
        bytes.join(", ")
    )
}

/// CPU time (utime + stime, s) and process group of a task, from `/proc/<pid>/stat`.
fn stat_of(path: &str) -> Option<(f64, i32)> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks / clk_tck(), f.get(2)?.parse().ok()?))
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU time (s) of thread `tid` of process `pid`.
pub fn cpu_of_task(pid: u32, tid: i32) -> f64 {
    stat_of(&format!("/proc/{pid}/task/{tid}/stat")).map_or(0.0, |(t, _)| t)
}

/// CPU time (s) of process `pid`, all its threads.
pub fn cpu_of(pid: i32) -> f64 {
    stat_of(&format!("/proc/{pid}/stat")).map_or(0.0, |(t, _)| t)
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes of group `pgid`.
fn group(pgid: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| stat_of(&format!("/proc/{p}/stat")).is_some_and(|(_, g)| g == pgid))
        .collect()
}

/// The `ksoftirqd/N` threads: softirq work the kernel defers out of the sender's context.
pub fn ksoftirqd() -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// Busy CPU time of the whole machine (s): every /proc/stat column but idle and iowait.
pub fn machine_busy() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest, guest_nice are inside user/nice)
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / clk_tck()
}

/// Pin every thread of process `pid` to `cpus`.
pub fn pin_process(pid: i32, cpus: &[usize]) -> Result<()> {
    let set = cpu_set(cpus)?;
    for tid in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Some(t) = tid.file_name().to_str().and_then(|t| t.parse().ok()) {
            sched_setaffinity(Pid::from_raw(t), &set)
                .with_context(|| format!("pinning task {t} to CPUs {cpus:?}"))?;
        }
    }
    Ok(())
}

fn cpu_set(cpus: &[usize]) -> Result<CpuSet> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).with_context(|| format!("CPU {c}"))?;
    }
    Ok(set)
}

/// A running trafgen.
pub struct Trafgen {
    child: Child,
    pgid: i32,
}

impl Trafgen {
    /// trafgen in namespace `ns` on `dev`, one sender per CPU of `cpus` (pinned there),
    /// sending 60-byte frames `src` → `dst` as fast as it can. (Its pacing, `-b`, is not used:
    /// it sends each second's frames in one burst; [`crate::paced`] paces instead.)
    pub fn start(
        ns: &str,
        dev: &str,
        src: MacAddr,
        dst: MacAddr,
        cpus: &[usize],
    ) -> Result<Trafgen> {
        if let Some(why) = missing() {
            bail!("{why}");
        }
        let mut c = ns_command(ns, "trafgen");
        c.args(["-C", "-o", dev, "-P", &cpus.len().to_string()]);
        c.arg(packet(src, dst))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().context("start trafgen")?;
        let pgid = i32::try_from(child.id()).context("pid")?;
        let mut g = Trafgen { child, pgid };
        // Wait for the senders (the group's members besides the parent), then pin them.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let senders: BTreeSet<i32> = group(pgid).into_iter().filter(|&p| p != pgid).collect();
            if senders.len() >= cpus.len() {
                for (p, &cpu) in senders.iter().zip(cpus) {
                    sched_setaffinity(Pid::from_raw(*p), &cpu_set(&[cpu])?)
                        .context("pinning a trafgen sender")?;
                }
                sched_setaffinity(Pid::from_raw(pgid), &cpu_set(cpus)?)
                    .context("pinning trafgen")?;
                return Ok(g);
            }
            if let Ok(Some(st)) = g.child.try_wait() {
                let (out, err) = g.output();
                bail!("trafgen exited at start ({st}): {out} {err}");
            }
            if Instant::now() > deadline {
                bail!("trafgen's senders did not start within 5 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU time (s) of the generator's processes so far (its senders do the sending, and the
    /// kernel's forwarding in their softirqs is charged to them).
    pub fn cpu(&self) -> f64 {
        group(self.pgid).into_iter().map(cpu_of).sum()
    }

    fn output(&mut self) -> (String, String) {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (out, err)
    }

    /// Interrupt it; returns the frames it says it sent (its own accounting).
    pub fn stop(mut self) -> Result<u64> {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
                self.child.wait()?;
                bail!("trafgen did not stop on SIGINT within 5 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let (out, err) = self.output();
        let text = format!("{out}\n{err}");
        text.lines()
            .find_map(|l| l.trim().strip_suffix("packets outgoing"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("trafgen did not say what it sent: {}", text.trim()))
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One device's packet counters, from `ip -s -j link show` in its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkCounters {
    pub tx_packets: u64,
    pub tx_dropped: u64,
    pub rx_packets: u64,
}

pub fn link_counters(ns: &str, dev: &str) -> Result<LinkCounters> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-s", "-j", "link", "show", "dev", dev])
        .output()
        .context("run ip -s link show")?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -s link show {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let s = &v[0]["stats64"];
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    Ok(LinkCounters {
        tx_packets: n(&s["tx"]["packets"]),
        tx_dropped: n(&s["tx"]["dropped"]),
        rx_packets: n(&s["rx"]["packets"]),
    })
}
