//! `run --worker-priority` (config `worker_priority`): the scheduling every worker thread asks
//! for itself when it starts, so that it belongs to that thread only (not the daemon, the
//! observers or any other thread).
//!
//! `fifo:P` is `SCHED_FIFO` at priority P. The kernel refuses it (EPERM) without CAP_SYS_NICE
//! (or a large enough `RLIMIT_RTPRIO`), and, with real-time group scheduling, in a cgroup with no
//! real-time budget (`cpu.rt_runtime_us` = 0) even to root: the worker then takes nice
//! [`WorkerPriority::DEFAULT_NICE`] instead, and the engine says so once, never silently. What
//! each parent's workers run with is in `umacvlan stats -j` (`worker_priority`) and in the line
//! that logs the parent's opening. The trade-off: docs/performance.md#worker-priority.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::{caps, sched};

/// The scheduling a worker asks for. The default is `loaded:-10` ([`WorkerPriority::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPriority {
    /// No change: whatever the engine was started with (`SCHED_OTHER`, nice 0 usually).
    Normal,
    /// This nice value while the worker reads a V3 ring (under load with `--ring auto`; always
    /// with `--ring v3`), normal priority while it reads a V2 ring (sparse traffic).
    Loaded(i8),
    /// `SCHED_OTHER` at this nice value (-20..=19).
    Nice(i8),
    /// `SCHED_FIFO` at this priority (1..=99).
    Fifo(u8),
}

/// `loaded:-10`: nice -10 while loaded, normal priority otherwise. The kernel's macvlan
/// forwards in softirq context, which runs before any task; a worker at a normal task's weight
/// gets one fair share beside the applications it serves and falls behind its ring whenever they
/// keep the CPUs busy (umacvlan-bench's contended row: 0.28x the kernel's pps at nice 0, 0.51x at
/// nice -10; Open vSwitch's `ovs-ctl` starts `ovs-vswitchd` at nice -10 for the same reason). But
/// a heavier worker is also one the scheduler places away from the applications it wakes: a
/// request-response round trip took about 20 µs longer at nice -10 (the wake-ups cross vCPUs).
/// So the worker takes nice -10 only while its traffic loads it (the ring-mode policy's verdict,
/// [`super::adaptive`]), where wake-up latency no longer matters
/// (docs/performance.md#worker-priority).
impl Default for WorkerPriority {
    fn default() -> WorkerPriority {
        WorkerPriority::Loaded(WorkerPriority::DEFAULT_NICE)
    }
}

impl WorkerPriority {
    /// `nice` and `loaded` alone, and what a refused `fifo` falls back to.
    pub const DEFAULT_NICE: i8 = -10;
    /// `fifo` alone.
    pub const DEFAULT_FIFO: u8 = 1;
    /// The accepted forms, for messages.
    pub const FORMS: &'static str = "loaded[:N] (nice N under load, else normal; the default is \
                                     loaded:-10), nice[:N] (N in -20..=19, default -10), normal \
                                     or fifo[:P] (P in 1..=99, default 1)";

    /// Whether asking for it needs CAP_SYS_NICE: `fifo`, or a nice value below 0.
    pub fn needs_sys_nice(self) -> bool {
        match self {
            WorkerPriority::Normal => false,
            WorkerPriority::Nice(n) | WorkerPriority::Loaded(n) => n < 0,
            WorkerPriority::Fifo(_) => true,
        }
    }

    /// Applies it to the calling thread and returns what was applied, e.g. `fifo:1`, or
    /// `nice:-10 (fifo:1 refused: EPERM)`, and for `loaded` the [`Boost`] the worker raises and
    /// lowers as its load changes (none when the kernel refused its nice value: tried here once,
    /// then put back). A refusal is logged as one warning per engine: the first worker to meet it
    /// sets `warned`.
    pub fn apply(self, warned: &AtomicBool) -> (String, Option<Boost>) {
        match self {
            WorkerPriority::Loaded(n) => {
                let tried = sched::set_nice(i32::from(n)).and_then(|()| sched::set_nice(0));
                match tried {
                    Ok(()) => (self.to_string(), Some(Boost { nice: n, on: false })),
                    Err(e) => {
                        warn_once(
                            warned,
                            format_args!(
                                "worker priority {self} asked, but setpriority refused nice {n}: \
                                 {} ({}); the workers run at normal priority under load too",
                                errno(&e),
                                nice_hint()
                            ),
                        );
                        (format!("normal ({self} refused: {})", errno(&e)), None)
                    }
                }
            }
            other => (other.apply_fixed(warned), None),
        }
    }

    /// [`WorkerPriority::apply`] of the forms that do not change with the load.
    fn apply_fixed(self, warned: &AtomicBool) -> String {
        match self {
            WorkerPriority::Normal | WorkerPriority::Loaded(_) => self.to_string(),
            WorkerPriority::Nice(n) => match sched::set_nice(i32::from(n)) {
                Ok(()) => self.to_string(),
                Err(e) => {
                    warn_once(
                        warned,
                        format_args!(
                            "worker priority {self} asked, but setpriority refused it: {} ({}); \
                             the workers run at normal priority instead",
                            errno(&e),
                            nice_hint()
                        ),
                    );
                    format!("normal ({self} refused: {})", errno(&e))
                }
            },
            WorkerPriority::Fifo(p) => {
                let Err(e) = sched::set_fifo(i32::from(p)) else {
                    return self.to_string();
                };
                let why = fifo_hint(p);
                let fallback = WorkerPriority::Nice(WorkerPriority::DEFAULT_NICE);
                match sched::set_nice(i32::from(WorkerPriority::DEFAULT_NICE)) {
                    Ok(()) => {
                        warn_once(
                            warned,
                            format_args!(
                                "worker priority {self} asked, but SCHED_FIFO was refused: {} \
                                 ({why}); the workers run at {fallback} (SCHED_OTHER) instead",
                                errno(&e)
                            ),
                        );
                        format!("{fallback} ({self} refused: {})", errno(&e))
                    }
                    Err(e2) => {
                        warn_once(
                            warned,
                            format_args!(
                                "worker priority {self} asked, but SCHED_FIFO was refused: {} \
                                 ({why}), and so was the fallback {fallback}: {} ({}); the \
                                 workers run at normal priority instead",
                                errno(&e),
                                errno(&e2),
                                nice_hint()
                            ),
                        );
                        format!(
                            "normal ({self} refused: {}; {fallback} refused: {})",
                            errno(&e),
                            errno(&e2)
                        )
                    }
                }
            }
        }
    }
}

/// `loaded:N`'s nice value, raised while the worker reads a V3 ring and lowered while it reads
/// V2 ([`Boost::set`]: a system call only when that changes).
#[derive(Debug)]
pub struct Boost {
    nice: i8,
    on: bool,
}

impl Boost {
    /// The worker now reads a V3 ring (`loaded`) or a V2 ring.
    pub fn set(&mut self, loaded: bool) {
        if loaded == self.on {
            return;
        }
        let nice = if loaded { i32::from(self.nice) } else { 0 };
        match sched::set_nice(nice) {
            Ok(()) => self.on = loaded,
            // Allowed at start (`apply` tried it), so only a capability lost since.
            Err(e) => tracing::debug!("setting the worker's nice to {nice} failed: {e}"),
        }
    }
}

fn warn_once(warned: &AtomicBool, message: fmt::Arguments<'_>) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}");
    }
}

/// `EPERM`, or the error's text when it carries no errno.
fn errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

/// Whether the calling thread holds CAP_SYS_NICE, as words for a message.
fn sys_nice_held() -> &'static str {
    match caps::effective_has(caps::CAP_SYS_NICE) {
        Ok(true) => "CAP_SYS_NICE held",
        Ok(false) => "no CAP_SYS_NICE",
        Err(_) => "CAP_SYS_NICE unknown",
    }
}

/// Why `SCHED_FIFO` at `p` may have been refused: what the thread holds and may take, and its
/// cgroup's real-time budget when the kernel has one to read.
fn fifo_hint(p: u8) -> String {
    let mut hint = sys_nice_held().to_string();
    match sched::rtprio_limit() {
        Ok(u64::MAX) => hint.push_str(", RLIMIT_RTPRIO unlimited"),
        Ok(l) => hint.push_str(&format!(
            ", RLIMIT_RTPRIO {l}{}",
            if l < u64::from(p) {
                " (below the priority)"
            } else {
                ""
            }
        )),
        Err(_) => {}
    }
    match sched::cgroup_rt_runtime() {
        Some((file, 0)) => hint.push_str(&format!(
            "; the cgroup has no real-time budget: {} is 0",
            file.display()
        )),
        Some((file, v)) => hint.push_str(&format!("; {} is {v}", file.display())),
        None => hint.push_str(
            "; no cgroup cpu.rt_runtime_us to read (with CAP_SYS_NICE held, EPERM means real-time \
             group scheduling left this cgroup no budget)",
        ),
    }
    hint
}

fn nice_hint() -> String {
    format!(
        "{}; a nice value below 0 needs it or RLIMIT_NICE",
        sys_nice_held()
    )
}

impl fmt::Display for WorkerPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerPriority::Normal => write!(f, "normal"),
            WorkerPriority::Loaded(n) => write!(f, "loaded:{n}"),
            WorkerPriority::Nice(n) => write!(f, "nice:{n}"),
            WorkerPriority::Fifo(p) => write!(f, "fifo:{p}"),
        }
    }
}

impl FromStr for WorkerPriority {
    type Err = String;

    fn from_str(s: &str) -> Result<WorkerPriority, String> {
        let bad = || format!("worker priority {s:?}: expected {}", WorkerPriority::FORMS);
        let (kind, value) = match s.split_once(':') {
            Some((k, v)) => (k, Some(v)),
            None => (s, None),
        };
        let nice = |v: Option<&str>| match v {
            None => Ok(WorkerPriority::DEFAULT_NICE),
            Some(v) => v
                .parse::<i8>()
                .ok()
                .filter(|n| (-20..=19).contains(n))
                .ok_or_else(bad),
        };
        match (kind, value) {
            ("normal", None) => Ok(WorkerPriority::Normal),
            ("nice", v) => nice(v).map(WorkerPriority::Nice),
            ("loaded", v) => nice(v).map(WorkerPriority::Loaded),
            ("fifo", None) => Ok(WorkerPriority::Fifo(WorkerPriority::DEFAULT_FIFO)),
            ("fifo", Some(v)) => match v.parse::<u8>() {
                Ok(p) if (1..=99).contains(&p) => Ok(WorkerPriority::Fifo(p)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms_and_refuses_the_rest() {
        let ok = [
            ("normal", WorkerPriority::Normal),
            ("nice", WorkerPriority::Nice(-10)),
            ("nice:-20", WorkerPriority::Nice(-20)),
            ("nice:19", WorkerPriority::Nice(19)),
            ("nice:0", WorkerPriority::Nice(0)),
            ("loaded", WorkerPriority::Loaded(-10)),
            ("loaded:-5", WorkerPriority::Loaded(-5)),
            ("fifo", WorkerPriority::Fifo(1)),
            ("fifo:1", WorkerPriority::Fifo(1)),
            ("fifo:99", WorkerPriority::Fifo(99)),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<WorkerPriority>(), Ok(want), "{s}");
        }
        // Display is the canonical form, which parses back.
        for (_, p) in ok {
            assert_eq!(p.to_string().parse::<WorkerPriority>(), Ok(p));
        }
        assert_eq!(WorkerPriority::Fifo(2).to_string(), "fifo:2");
        assert_eq!(WorkerPriority::Nice(-5).to_string(), "nice:-5");
        assert_eq!(WorkerPriority::default().to_string(), "loaded:-10");
        for bad in [
            "",
            "rt",
            "FIFO",
            "fifo:0",
            "fifo:100",
            "fifo:",
            "fifo:x",
            "nice:-21",
            "nice:20",
            "nice:",
            "normal:1",
            "fifo:1:2",
            " fifo",
            "nice:+",
            "loaded:",
            "loaded:-21",
        ] {
            let e = bad.parse::<WorkerPriority>().unwrap_err();
            assert!(
                e.contains("loaded[:N]") && e.contains("nice[:N]") && e.contains("fifo[:P]"),
                "{bad:?}: {e}"
            );
        }
        assert!(!WorkerPriority::Normal.needs_sys_nice());
        assert!(!WorkerPriority::Nice(0).needs_sys_nice());
        assert!(!WorkerPriority::Nice(5).needs_sys_nice());
        assert!(WorkerPriority::Nice(-1).needs_sys_nice());
        assert!(WorkerPriority::Loaded(-10).needs_sys_nice());
        assert!(WorkerPriority::default().needs_sys_nice());
        assert!(WorkerPriority::Fifo(1).needs_sys_nice());
    }

    #[test]
    fn normal_and_a_higher_nice_apply_without_privilege() {
        let warned = AtomicBool::new(false);
        let got = std::thread::spawn(move || {
            (
                WorkerPriority::Normal.apply(&warned).0,
                WorkerPriority::Nice(3).apply(&warned).0,
                warned.load(Ordering::Relaxed),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got, ("normal".into(), "nice:3".into(), false));
    }
}
