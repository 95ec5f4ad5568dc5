//! Least privilege: the capabilities the engine keeps, and dropping the rest.
//!
//! Capabilities belong to each *thread*, and a new thread starts with its creator's. So
//! [`restrict`] runs first thing in `umacvlan run`, before any thread exists: every thread the
//! engine ever has then starts with at most the setup set. The set to keep for good (the final
//! set) is recorded at the same time; [`settle`] moves the calling thread to it (permitted,
//! effective, bounding), and every long-lived thread calls it once it no longer needs more: the
//! main thread after setup, each worker at start, each namespace watcher after its `setns`.
//! Threads spawned after the main thread settled inherit the final set.
//!
//! Raw calls: `capget`/`capset` (libc has no wrapper) and `prctl(PR_CAPBSET_DROP)` /
//! `prctl(PR_CAP_AMBIENT)`; `PR_SET_NO_NEW_PRIVS` goes through nix.

use std::io;
use std::sync::OnceLock;

/// Capability numbers (`linux/capability.h`).
pub const CAP_CHOWN: u8 = 0;
pub const CAP_SETPCAP: u8 = 8;
pub const CAP_NET_BIND_SERVICE: u8 = 10;
pub const CAP_NET_ADMIN: u8 = 12;
pub const CAP_NET_RAW: u8 = 13;
pub const CAP_SYS_PTRACE: u8 = 19;
pub const CAP_SYS_ADMIN: u8 = 21;
pub const CAP_SYS_NICE: u8 = 23;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets as two 32-bit halves.
const VERSION_3: u32 = 0x2008_0522;

/// A set of capabilities, bit `n` = capability `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn of(caps: &[u8]) -> CapSet {
        CapSet(caps.iter().fold(0, |s, c| s | (1u64 << c)))
    }
    pub fn with(self, cap: u8, on: bool) -> CapSet {
        CapSet(if on { self.0 | (1u64 << cap) } else { self.0 })
    }
    pub fn has(self, cap: u8) -> bool {
        self.0 & (1u64 << cap) != 0
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets.
fn get() -> io::Result<(CapSet, CapSet)> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: `hdr` and `data` are live, writable and laid out as capget(2) expects for version
    // 3 (a header and two data structs); pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | (u64::from(hi) << 32));
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Whether the calling thread holds `cap` in its effective set.
pub fn effective_has(cap: u8) -> io::Result<bool> {
    get().map(|(effective, _)| effective.has(cap))
}

/// Sets the calling thread's effective and permitted sets to `set`; inheritable to nothing.
fn set(set: CapSet) -> io::Result<()> {
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    // The kernel takes a 64-bit set as two 32-bit words, low first.
    let lo = u32::try_from(set.0 & 0xffff_ffff).expect("masked to 32 bits");
    let hi = u32::try_from(set.0 >> 32).expect("the high half of 64 bits");
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: `hdr` and `data` are live and laid out as capset(2) expects for version 3; the
    // kernel only reads `data`; pid 0 is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability this kernel knows.
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Removes every capability outside `keep` from the calling thread's bounding set (needs
/// CAP_SETPCAP in the effective set).
fn drop_bounding(keep: CapSet) -> io::Result<()> {
    for cap in (0..=last_cap()).filter(|c| !keep.has(*c)) {
        // SAFETY: PR_CAPBSET_DROP takes the capability number as its only argument (the other
        // arguments are unused); no memory is passed.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        // EINVAL: a capability this kernel does not know; nothing to drop.
        if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn clear_ambient() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointer; the remaining arguments must be 0.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The set every thread settles on, once [`restrict`] recorded it.
static FINAL: OnceLock<CapSet> = OnceLock::new();

/// Moves the calling thread to `target` ∩ what it has: bounding set first (while CAP_SETPCAP may
/// still be effective), then ambient cleared, then effective = permitted = target, inheritable
/// empty. Without CAP_SETPCAP (not root) the bounding set is left alone.
fn apply(target: CapSet) -> io::Result<CapSet> {
    let (effective, permitted) = get()?;
    let target = CapSet(target.0 & permitted.0);
    if effective.has(CAP_SETPCAP) {
        drop_bounding(target)?;
    }
    clear_ambient()?;
    set(target)?;
    Ok(target)
}

/// First thing in `run`, before any thread exists: keeps only `setup` (plus CAP_SETPCAP until
/// [`settle`], so each thread can still shrink its bounding set), records `final_set` for
/// [`settle`], and sets PR_SET_NO_NEW_PRIVS (no exec can gain privileges again).
pub fn restrict(setup: CapSet, final_set: CapSet) -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;
    apply(setup.with(CAP_SETPCAP, true))?;
    let _ = FINAL.set(final_set);
    Ok(())
}

/// Moves the calling thread to the final set, if [`restrict`] recorded one (a no-op otherwise,
/// e.g. in the lab's in-process engine).
pub fn settle() -> io::Result<()> {
    match FINAL.get() {
        Some(f) => apply(*f).map(drop),
        None => Ok(()),
    }
}

/// [`settle`], logging a failure: for threads that cannot return an error.
pub fn settle_or_warn() {
    if let Err(e) = settle() {
        tracing::warn!("dropping capabilities in this thread failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_the_header_layout() {
        let s = CapSet::of(&[CAP_NET_ADMIN, CAP_NET_RAW]);
        assert_eq!(s.0, (1 << 12) | (1 << 13));
        assert!(s.has(CAP_NET_RAW) && !s.has(CAP_SYS_ADMIN));
        assert!(s.with(CAP_SYS_ADMIN, true).has(CAP_SYS_ADMIN));
        assert_eq!(s.with(CAP_SYS_ADMIN, false), s);
        assert_eq!(std::mem::size_of::<Header>(), 8);
        assert_eq!(std::mem::size_of::<Data>(), 12);
        // Reading our own sets works as any user.
        let (eff, perm) = get().unwrap();
        assert_eq!(eff.0 & !perm.0, 0, "effective is within permitted");
    }

    #[test]
    fn a_thread_drops_to_a_set_and_stays_there() {
        // On a thread of its own: capabilities are per thread, so the test runner keeps its.
        let keep = CapSet::of(&[CAP_NET_RAW]);
        let (after, bounding) = std::thread::spawn(move || {
            let got = apply(keep).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let bnd = status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            (got, bnd)
        })
        .join()
        .unwrap();
        let (_, perm) = get().unwrap();
        assert_eq!(after.0, keep.0 & perm.0);
        if perm.has(CAP_SETPCAP) {
            assert_eq!(bounding, keep.0, "bounding set as root");
        }
    }
}
