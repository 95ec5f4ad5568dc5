//! The calling thread's scheduling: `SCHED_FIFO`, a nice value, and what may refuse them.
//!
//! Each call affects the calling *thread* only (pid 0 for `sched_setscheduler`, the thread id for
//! `setpriority(PRIO_PROCESS)`), so a worker sets its own priority without touching the daemon's
//! or any other thread's. Raw calls: `sched_setscheduler`, `setpriority`, `getrlimit`.

use std::io;
use std::path::PathBuf;

/// `SCHED_RESET_ON_FORK` (`linux/sched.h`; libc defines it for Android only): a thread the
/// real-time thread starts begins as `SCHED_OTHER` at nice 0 instead of inheriting its policy.
const SCHED_RESET_ON_FORK: libc::c_int = 0x4000_0000;

/// Makes the calling thread `SCHED_FIFO` at `priority` (1..=99), with `SCHED_RESET_ON_FORK`.
/// Needs CAP_SYS_NICE (or an `RLIMIT_RTPRIO` of at least `priority`), and, with real-time group
/// scheduling, a real-time budget in the thread's cgroup: EPERM otherwise.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it; pid 0
    // is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | SCHED_RESET_ON_FORK, &param) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value (-20..=19). Below its current value it needs
/// CAP_SYS_NICE or an `RLIMIT_NICE` of at least `20 - nice`: EACCES otherwise.
pub fn set_nice(nice: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let tid = libc::id_t::try_from(tid).map_err(io::Error::other)?;
    // SAFETY: setpriority reads only its integer arguments. On Linux, PRIO_PROCESS with a thread
    // id sets that one thread's nice value.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The soft `RLIMIT_RTPRIO`: the highest real-time priority a thread may take without
/// CAP_SYS_NICE (`u64::MAX`: unlimited).
pub fn rtprio_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live, writable rlimit that the kernel fills during the call.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut lim) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// The real-time budget of the calling process's cgroup, when the kernel has real-time group
/// scheduling and the cgroup v1 `cpu` controller is mounted under /sys/fs/cgroup: the file read
/// and `cpu.rt_runtime_us` (0: no real-time thread may run there, so `SCHED_FIFO` is refused).
pub fn cgroup_rt_runtime() -> Option<(PathBuf, i64)> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        // ID:CONTROLLERS:PATH; v1's cpu controller is often co-mounted with cpuacct.
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
            let file = PathBuf::from("/sys/fs/cgroup")
                .join(mount)
                .join(rel)
                .join("cpu.rt_runtime_us");
            if let Some(v) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return Some((file, v));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field `n` (1-based, as proc(5) numbers them) of the calling thread's stat.
    fn stat_field(n: usize) -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(n - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn a_thread_sets_its_own_nice_only() {
        // Raising the nice value needs no privilege; on a thread of its own, so that the test
        // runner's threads keep theirs.
        let before = stat_field(19);
        let theirs = std::thread::spawn(|| {
            let was = stat_field(19);
            set_nice(19).unwrap();
            (was, stat_field(19))
        })
        .join()
        .unwrap();
        assert_eq!(theirs.1, 19, "{theirs:?}");
        assert_eq!(stat_field(19), before, "the calling thread's nice only");
        assert!(rtprio_limit().is_ok());
    }
}
