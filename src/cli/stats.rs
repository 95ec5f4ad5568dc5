//! `umacvlan stats`: every port's and parent's counters from the running engine, once or
//! every few seconds with rates.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use clap::Args;
use serde::Serialize;

use super::{ControlArg, Failure, daemon_failure};
use crate::control::client;
use crate::control::proto::{Empty, Reply, Request, StatsView};

/// Show the running engine's counters per port and parent, with drops and rates.
///
/// One line per port: its parent, mode, state (forwarding: in the forwarding table; down:
/// admin-down; up: admin-up but held out of the table, e.g. its MAC is refused), packets and
/// bytes received (delivered to the port by the engine) and transmitted (sent by the port), and
/// its three largest drop reasons. Then one line per parent (rx: from the wire, tx: to the
/// wire), the kernel's counters of its AF_PACKET ring (packets, drops, freezes) and its
/// broadcast queue (length in use; depth, always 0: umacvlan delivers queued frames at once).
///
/// --watch SECS samples every SECS seconds (fractions allowed) and adds rates computed from the
/// last two samples: packets/s and bits/s each way. On a terminal the view is redrawn in place;
/// piped, each sample is a block after a timestamp line. -j prints the engine's StatsView as
/// JSON; with --watch, one JSON object per line per sample, with `time` and `rates` (null in
/// the first).
///
/// Examples:
///
///   umacvlan stats
///   umacvlan stats --watch 1
///   umacvlan stats --watch 5 -c 12 > five-minutes.txt
///   umacvlan stats -j | jq '.parents[] | {name, ring_drops, drops}'
///   umacvlan stats -j --watch 2 | jq -c '.rates.ports.c1'
///
/// Exit status: 0 done, 1 no engine (or it went away while watching), 2 bad arguments.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct StatsArgs {
    /// JSON output (the protocol's StatsView).
    #[arg(short = 'j', long = "json")]
    json: bool,
    /// Sample every SECS seconds, with rates, until interrupted (or --count samples).
    #[arg(short = 'w', long = "watch", value_name = "SECS")]
    watch: Option<f64>,
    /// With --watch: stop after N samples.
    #[arg(short = 'c', long = "count", value_name = "N", requires = "watch")]
    count: Option<u64>,
    #[command(flatten)]
    control: ControlArg,
}

/// Rates in one direction pair, from two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rate {
    pub rx_packets_per_sec: f64,
    pub rx_bits_per_sec: f64,
    pub tx_packets_per_sec: f64,
    pub tx_bits_per_sec: f64,
}

/// Rates of every port and parent present in both samples, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Seconds between the two samples.
    pub interval: f64,
    pub ports: BTreeMap<String, Rate>,
    pub parents: BTreeMap<String, Rate>,
}

/// One `--watch -j` line.
#[derive(Debug, Serialize)]
struct Sample<'a> {
    time: String,
    #[serde(flatten)]
    stats: &'a StatsView,
    rates: Option<&'a Rates>,
}

/// (rx packets, rx bytes, tx packets, tx bytes)
type Totals = (u64, u64, u64, u64);

fn rate(old: Totals, new: Totals, secs: f64) -> Rate {
    // A counter that went back (a port deleted and re-added) counts from zero.
    let d = |a: u64, b: u64| if b >= a { (b - a) as f64 } else { b as f64 } / secs;
    Rate {
        rx_packets_per_sec: d(old.0, new.0),
        rx_bits_per_sec: d(old.1, new.1) * 8.0,
        tx_packets_per_sec: d(old.2, new.2),
        tx_bits_per_sec: d(old.3, new.3) * 8.0,
    }
}

/// Rates from two samples `interval` apart.
pub fn rates(old: &StatsView, new: &StatsView, interval: Duration) -> Rates {
    let secs = interval.as_secs_f64().max(1e-9);
    let port = |p: &crate::control::proto::LinkView| {
        let s = &p.stats;
        (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes)
    };
    let parent = |p: &crate::control::proto::ParentView| {
        (p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes)
    };
    Rates {
        interval: secs,
        ports: new
            .ports
            .iter()
            .filter_map(|n| {
                let o = old.ports.iter().find(|o| o.name == n.name)?;
                Some((n.name.clone(), rate(port(o), port(n), secs)))
            })
            .collect(),
        parents: new
            .parents
            .iter()
            .filter_map(|n| {
                let o = old.parents.iter().find(|o| o.name == n.name)?;
                Some((n.name.clone(), rate(parent(o), parent(n), secs)))
            })
            .collect(),
    }
}

/// The three largest drop counters, largest first (`reason=n ...`), `-` for none.
pub fn top_drops(drops: &BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = drops.iter().filter(|(_, n)| **n > 0).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut s: Vec<String> = v.iter().take(3).map(|(r, n)| format!("{r}={n}")).collect();
    if v.len() > 3 {
        s.push(format!("(+{} more)", v.len() - 3));
    }
    s.join(" ")
}

/// A rate with an SI prefix: `0`, `12.5`, `1.2k`, `34.6M`.
pub fn si(v: f64) -> String {
    let (v, p) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    if p.is_empty() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{p}")
    }
}

fn state(p: &crate::control::proto::LinkView) -> &'static str {
    match (p.forwarding, p.up) {
        (true, _) => "forwarding",
        (false, false) => "down",
        (false, true) => "up",
    }
}

fn rate_cells(r: Option<&Rate>) -> [String; 4] {
    match r {
        Some(r) => [
            si(r.rx_packets_per_sec),
            si(r.rx_bits_per_sec),
            si(r.tx_packets_per_sec),
            si(r.tx_bits_per_sec),
        ],
        None => ["-".into(), "-".into(), "-".into(), "-".into()],
    }
}

/// Left-aligned text columns, then right-aligned number columns, then the drops.
fn table(head: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let last = head.len() - 1;
    let mut s = String::new();
    let line = |s: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            if i == last {
                out.push_str(c);
            } else if i < left {
                let _ = write!(out, "{c:<w$}", w = widths[i]);
            } else {
                let _ = write!(out, "{c:>w$}", w = widths[i]);
            }
        }
        let _ = writeln!(s, "{}", out.trim_end());
    };
    line(&mut s, &mut head.iter().copied());
    for r in rows {
        line(&mut s, &mut r.iter().map(String::as_str));
    }
    s
}

/// The readable view of one sample; with `rates`, four rate columns more.
pub fn render(stats: &StatsView, rates: Option<&Rates>) -> String {
    let with_rates = rates.is_some();
    let rate_head = ["rx_pkt/s", "rx_bit/s", "tx_pkt/s", "tx_bit/s"];
    let mut head = vec![
        "port",
        "parent",
        "mode",
        "state",
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
    ];
    if with_rates {
        head.extend(rate_head);
    }
    head.push("top drops");
    let rows: Vec<Vec<String>> = stats
        .ports
        .iter()
        .map(|p| {
            let s = &p.stats;
            // Who made the port (a Docker network and endpoint, a CNI container), as a
            // parent's row names its VID.
            let name = match &p.owner {
                Some(o) => format!("{} ({o})", p.name),
                None => p.name.clone(),
            };
            let mut r = vec![
                name,
                p.parent.clone(),
                p.mode.name().to_string(),
                state(p).into(),
                s.rx_packets.to_string(),
                s.rx_bytes.to_string(),
                s.tx_packets.to_string(),
                s.tx_bytes.to_string(),
            ];
            if let Some(rt) = rates {
                r.extend(rate_cells(rt.ports.get(&p.name)));
            }
            r.push(top_drops(&s.drops));
            r
        })
        .collect();
    let mut out = if stats.ports.is_empty() {
        "no ports\n".to_string()
    } else {
        table(&head, 4, &rows)
    };
    if stats.parents.is_empty() {
        return out;
    }
    out.push('\n');
    let mut head = vec![
        "parent",
        "ports",
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
    ];
    if with_rates {
        head.extend(rate_head);
    }
    head.push("top drops");
    let rows: Vec<Vec<String>> = stats
        .parents
        .iter()
        .map(|p| {
            let name = match &p.vlan {
                Some(v) => format!("{} (VID {} on {})", p.name, v.vid, v.lower),
                None => p.name.clone(),
            };
            let mut r = vec![
                name,
                p.ports.to_string(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
            ];
            if let Some(rt) = rates {
                r.extend(rate_cells(rt.parents.get(&p.name)));
            }
            r.push(top_drops(&p.drops));
            r
        })
        .collect();
    out.push_str(&table(&head, 1, &rows));
    for p in &stats.parents {
        let _ = writeln!(
            out,
            "ring of {} (kernel): packets {} drops {} freezes {}; broadcast queue: length {} depth {}",
            p.name,
            p.ring_packets,
            p.ring_drops,
            p.ring_freezes,
            p.bcqueuelen_used,
            p.broadcast_queue_depth
        );
        if p.ring == "auto" {
            let _ = writeln!(
                out,
                "ring of {}: auto, reading {} now, {} mode switches, {} failed",
                p.name, p.ring_mode, p.ring_mode_switches, p.ring_steer_failures
            );
        }
    }
    out
}

/// `SystemTime` as RFC 3339 UTC with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (
        i64::try_from(secs / 86_400).unwrap_or(i64::MAX),
        secs % 86_400,
    );
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn fetch(a: &StatsArgs) -> Result<StatsView, Failure> {
    match client::request(&a.control.path, Request::Stats(Empty {})).map_err(daemon_failure)? {
        Reply::Stats { stats } => Ok(stats),
        other => Err(anyhow!("the engine answered stats with {other:?}").into()),
    }
}

/// Writes to stdout; a closed pipe (`| head`) ends the command quietly.
fn emit(s: &str) -> Result<bool, Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::from(e).context("writing to stdout").into()),
    }
}

pub fn run(a: StatsArgs) -> Result<ExitCode, Failure> {
    let Some(every) = a.watch else {
        let stats = fetch(&a)?;
        let out = if a.json {
            format!(
                "{}\n",
                serde_json::to_string(&stats).context("rendering JSON")?
            )
        } else {
            render(&stats, None)
        };
        emit(&out)?;
        return Ok(ExitCode::SUCCESS);
    };
    if !(every.is_finite() && every > 0.0) {
        return Err(Failure::usage(anyhow!(
            "--watch {every}: give a positive number of seconds"
        )));
    }
    let every = Duration::from_secs_f64(every);
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, StatsView)> = None;
    let mut taken = 0u64;
    loop {
        let stats = fetch(&a)?;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let r = prev.as_ref().map(|(t, old)| rates(old, &stats, now - *t));
        let time = timestamp(wall);
        let out = if a.json {
            let line = Sample {
                time,
                stats: &stats,
                rates: r.as_ref(),
            };
            format!(
                "{}\n",
                serde_json::to_string(&line).context("rendering JSON")?
            )
        } else if tty {
            format!(
                "\x1b[H\x1b[2J{time}  every {}s (Ctrl-C to stop)\n\n{}",
                every.as_secs_f64(),
                render(&stats, r.as_ref())
            )
        } else {
            format!("--- {time}\n{}\n", render(&stats, r.as_ref()))
        };
        if !emit(&out)? {
            return Ok(ExitCode::SUCCESS);
        }
        taken += 1;
        if a.count.is_some_and(|c| taken >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        prev = Some((now, stats));
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests;
