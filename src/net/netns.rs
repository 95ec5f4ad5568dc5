//! Network namespaces: an owned fd ([`Netns`]), the `ip netns add/del` file convention, and
//! [`in_netns`], which runs code inside a namespace without moving the caller's thread.
//!
//! `setns(2)` and `unshare(CLONE_NEWNET)` change only the calling *thread*. Everything here that
//! switches namespace does it on a thread it spawns for the purpose and joins, so a panic or an
//! early return can never leave a caller's (or a pooled) thread in the wrong namespace.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::error::{Error, Result, nix_io};

/// Where `ip netns add NAME` puts the file that keeps namespace NAME alive.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// An open network namespace: an fd of `nsfs`, from `/proc/thread-self/ns/net` or
/// `/run/netns/NAME`. The namespace lives at least as long as this value.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// The `ip netns` name, when opened or created by name (for messages).
    name: Option<String>,
}

impl Netns {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        let path = "/proc/thread-self/ns/net";
        let file = File::open(path).map_err(|e| Error::sys(format!("open {path}"), e))?;
        Ok(Netns {
            fd: file.into(),
            name: None,
        })
    }

    /// The namespace `ip netns add NAME` created (`/run/netns/NAME`), or, for a `name` that
    /// starts with `/`, the namespace file at that path (`/proc/PID/ns/net`,
    /// `/var/run/netns/X`: what container runtimes pass to CNI plugins).
    pub fn open(name: &str) -> Result<Netns> {
        let path = match name.strip_prefix('/') {
            Some(_) => PathBuf::from(name),
            None => netns_path(name)?,
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoSuchNetns {
                    name: name.to_string(),
                    path,
                });
            }
            Err(e) => return Err(Error::sys(format!("open {}", path.display()), e)),
        };
        check_is_netns(&file, &path)?;
        Ok(Netns {
            fd: file.into(),
            name: Some(name.to_string()),
        })
    }

    /// Create a new, empty network namespace under `name`, as `ip netns add NAME` does, and
    /// return it opened. Fails with `EEXIST` if the name is taken.
    ///
    /// Steps (iproute2's `netns_add`): make `/run/netns` a shared mount point (bind-mounting it
    /// onto itself first if it is not a mount point yet) so the name is visible from other mount
    /// namespaces; create the empty file `O_EXCL`; on a throwaway thread `unshare(CLONE_NEWNET)` and
    /// bind-mount that thread's `/proc/thread-self/ns/net` onto the file. On failure the file is
    /// removed again.
    pub fn add(name: &str) -> Result<Netns> {
        let path = netns_path(name)?;
        prepare_run_dir()?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
            .map_err(|e| Error::sys(format!("create {}", path.display()), e))?;
        let mounted = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(format!("netns-add-{name}"))
                .spawn_scoped(s, || -> Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::sys("unshare(CLONE_NEWNET) for a new namespace", nix_io(e))
                    })?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| {
                        Error::sys(
                            format!("bind-mount the new namespace onto {}", path.display()),
                            nix_io(e),
                        )
                    })
                })
                .map_err(|e| Error::sys("spawn a thread to create a namespace", e))?
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        if let Err(e) = mounted {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(name)
    }

    /// Remove the name `name`, as `ip netns del NAME` does: lazily unmount `/run/netns/NAME` and
    /// unlink it. The namespace itself goes away once nothing else (fds, processes, mounts) holds
    /// it; devices in it are then destroyed (a veth's peer with it).
    pub fn delete(name: &str) -> Result<()> {
        let path = netns_path(name)?;
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-created name); still remove the file.
            Ok(()) | Err(nix::Error::EINVAL) => {}
            Err(nix::Error::ENOENT) => {
                return Err(Error::NoSuchNetns {
                    name: name.to_string(),
                    path,
                });
            }
            Err(e) => return Err(Error::sys(format!("unmount {}", path.display()), nix_io(e))),
        }
        fs::remove_file(&path).map_err(|e| Error::sys(format!("remove {}", path.display()), e))
    }

    /// The `ip netns` name, if this namespace was opened or created by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A second fd for the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            fd: self
                .fd
                .try_clone()
                .map_err(|e| Error::sys(format!("dup the fd of {self}"), e))?,
            name: self.name.clone(),
        })
    }

    /// The namespace's inode number: two `Netns` are the same namespace iff these are equal.
    pub fn inode(&self) -> Result<u64> {
        let st = nix::sys::stat::fstat(&self.fd)
            .map_err(|e| Error::sys(format!("fstat {self}"), nix_io(e)))?;
        Ok(st.st_ino)
    }
}

impl fmt::Display for Netns {
    /// `netns "NAME"`, or `netns fd N` for unnamed ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "netns {n:?}"),
            None => write!(f, "netns fd {}", self.fd.as_raw_fd()),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<OwnedFd> for Netns {
    /// Adopt an fd that refers to a network namespace (e.g. `/proc/PID/ns/net`).
    fn from(fd: OwnedFd) -> Netns {
        Netns { fd, name: None }
    }
}

/// Where Docker mounts its sandboxes' namespaces (`<exec-root>/netns`, default exec-root).
pub const DOCKER_NETNS_DIR: &str = "/run/docker/netns";

/// How a namespace known only by its inode is shown: its `ip netns` name, else the path of the
/// Docker sandbox mounted on it (`/run/docker/netns/X`), else `net:[INODE]` (as
/// `/proc/PID/ns/net` and `lsns` say).
pub fn describe(inode: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let mounted_on = |dir: &str| {
        fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let path = e.path();
            fs::metadata(&path)
                .is_ok_and(|m| m.ino() == inode && m.dev() == nsfs_dev())
                .then_some(path)
        })
    };
    if let Some(p) = mounted_on(NETNS_RUN_DIR) {
        return p
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    }
    match mounted_on(DOCKER_NETNS_DIR) {
        Some(p) => p.display().to_string(),
        None => format!("net:[{inode}]"),
    }
}

/// The device number of nsfs (the filesystem of every namespace file).
fn nsfs_dev() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/net").map_or(u64::MAX, |m| m.dev())
}

/// Whether anything but this process holds the namespace `inode`: a process in it, or a
/// namespace file mounted on a path (`ip netns add`, a Docker sandbox) in this process's mount
/// namespace. An fd another process holds is not seen.
///
/// The mount table comes first: one file, and a Docker sandbox or `ip netns` name is always
/// mounted, so the walk over every process's `ns/net` runs only for an unnamed namespace.
pub fn held_elsewhere(inode: u64) -> bool {
    if fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|text| mountinfo_has_netns(&text, inode))
    {
        return true;
    }
    let me = std::process::id().to_string();
    let link = format!("net:[{inode}]");
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let pid = e.file_name();
            let pid = pid.to_string_lossy();
            pid.bytes().all(|b| b.is_ascii_digit())
                && pid != me
                && fs::read_link(e.path().join("ns/net"))
                    .is_ok_and(|l| l.as_os_str() == link.as_str())
        })
}

/// Whether a `/proc/PID/mountinfo` text has a namespace file of `inode` mounted (fields: id,
/// parent, dev, root, mount point, ...; an nsfs mount's root is `net:[INODE]`).
fn mountinfo_has_netns(text: &str, inode: u64) -> bool {
    let root = format!("net:[{inode}]");
    text.lines()
        .any(|l| l.split_whitespace().nth(3) == Some(root.as_str()))
}

/// The pid in a namespace name `<prefix><pid>-<role>` (how the tests, the lab and the bench
/// name theirs), if the name has that shape.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, role) = name.strip_prefix(prefix)?.split_once('-')?;
    (!role.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Deletes the namespaces named `<prefix><pid>-<role>` whose process is gone (left by a crash),
/// never this process's own. Returns the names removed, sorted.
pub fn sweep_orphans(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name, prefix) else {
            continue;
        };
        if pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && Netns::delete(&name).is_ok()
        {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// Run `f` on a freshly spawned thread that has entered `netns`, wait for it, and return its
/// result. The caller's thread never changes namespace. A panic in `f` is resumed in the caller.
///
/// Sockets and fds `f` creates stay bound to `netns` after the thread ends, so the usual pattern
/// is `in_netns(&ns, Netlink::open)`. Per-thread views follow the thread too: inside `f`,
/// `/proc/thread-self/net/*` shows `netns` (unlike `/proc/net`, which follows the process). Note
/// that `/sys` does not follow: it shows the namespace that mounted it.
pub fn in_netns<T: Send>(netns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("in-netns".into())
            .spawn_scoped(s, || -> Result<T> {
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys(format!("enter {netns} (setns)"), nix_io(e)))?;
                Ok(f())
            })
            .map_err(|e| Error::sys("spawn a thread to enter a namespace", e))?;
        handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Turns IPv6 off in the calling thread's namespace (defined in `sys`, below both its callers:
/// this module and `sys`'s own root tests).
pub use crate::sys::disable_ipv6_here;

/// [`disable_ipv6_here`] in `netns`.
pub fn disable_ipv6(netns: &Netns) -> std::io::Result<()> {
    in_netns(netns, disable_ipv6_here).map_err(std::io::Error::other)?
}

/// `/run/netns/NAME`, after checking NAME the way `ip netns` would.
fn netns_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::BadNetnsName {
            name: name.to_string(),
        });
    }
    Ok(Path::new(NETNS_RUN_DIR).join(name))
}

/// Refuse a `/run/netns/NAME` that is a plain file (a failed or half-done `add`), with a message
/// that says so instead of a later `setns` EINVAL.
fn check_is_netns(file: &File, path: &Path) -> Result<()> {
    let st = nix::sys::statfs::fstatfs(file)
        .map_err(|e| Error::sys(format!("statfs {}", path.display()), nix_io(e)))?;
    if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(Error::Protocol {
            op: format!("open {}", path.display()),
            detail: "not a network namespace (nothing is mounted on it)".into(),
        });
    }
    Ok(())
}

/// `/run/netns` exists and is a shared mount point, as iproute2 leaves it. Serialised within the
/// process: two threads racing through the bind-onto-itself step would stack two mounts.
fn prepare_run_dir() -> Result<()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    match fs::create_dir(NETNS_RUN_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::sys(format!("create {NETNS_RUN_DIR}"), e)),
    }
    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then retry (as ip does).
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| {
                Error::sys(format!("bind-mount {NETNS_RUN_DIR} onto itself"), nix_io(e))
            })?;
            make_shared()
                .map_err(|e| Error::sys(format!("make {NETNS_RUN_DIR} a shared mount"), nix_io(e)))
        }
        Err(e) => Err(Error::sys(
            format!("make {NETNS_RUN_DIR} a shared mount"),
            nix_io(e),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        for n in ["", ".", "..", "a/b", "/abs", "nul\0"] {
            assert!(
                matches!(netns_path(n), Err(Error::BadNetnsName { .. })),
                "{n:?}"
            );
        }
        assert_eq!(
            netns_path("umv-1-x").unwrap(),
            Path::new("/run/netns/umv-1-x")
        );
    }

    #[test]
    fn open_unknown_name_says_which() {
        let name = format!("umv-{}-does-not-exist", std::process::id());
        let e = Netns::open(&name).unwrap_err();
        assert!(matches!(e, Error::NoSuchNetns { .. }), "{e:?}");
        assert!(e.to_string().contains(&name), "{e}");
    }

    #[test]
    fn open_takes_a_path_and_checks_it_is_a_namespace() {
        let ns = Netns::open("/proc/self/ns/net").unwrap();
        assert_eq!(
            ns.inode().unwrap(),
            Netns::current().unwrap().inode().unwrap()
        );
        let e = Netns::open("/proc/self/status").unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
        let gone = format!("/run/netns/umv-{}-no-such", std::process::id());
        let e = Netns::open(&gone).unwrap_err();
        assert!(matches!(e, Error::NoSuchNetns { .. }), "{e:?}");
    }

    #[test]
    fn mountinfo_names_the_mounted_namespaces() {
        let text = "25 1 0:23 / /run rw,nosuid - tmpfs tmpfs rw\n\
                    612 25 0:4 net:[4026532285] /run/netns/umv-1-w rw shared:5 - nsfs nsfs rw\n\
                    613 25 0:4 net:[4026532999] /run/docker/netns/0a1b2c rw - nsfs nsfs rw\n";
        assert!(mountinfo_has_netns(text, 4_026_532_285));
        assert!(mountinfo_has_netns(text, 4_026_532_999));
        assert!(
            !mountinfo_has_netns(text, 402_653_228),
            "a prefix is not the inode"
        );
        assert!(!mountinfo_has_netns("", 1));
    }

    #[test]
    fn describe_and_held_elsewhere_of_this_namespace() {
        let inode = Netns::current().unwrap().inode().unwrap();
        let shown = describe(inode);
        assert!(
            !shown.is_empty() && (shown.starts_with("net:[") || !shown.contains('/')),
            "{shown}"
        );
        assert_eq!(describe(1), "net:[1]", "no namespace has inode 1");
        // PID 1 (and the test harness) are in some namespace; inode 1 is nobody's.
        assert!(!held_elsewhere(1));
    }

    #[test]
    fn current_is_a_namespace_and_has_no_name() {
        let ns = Netns::current().unwrap();
        assert!(ns.name().is_none());
        assert!(ns.inode().unwrap() > 0);
        assert!(ns.to_string().starts_with("netns fd "));
    }
}
