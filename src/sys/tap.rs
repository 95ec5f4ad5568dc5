//! `Tap`: one child port, a TAP device whose only fd the engine owns
//! (docs/performance.md#how-the-engine-sets-up-its-sockets).
//!
//! * The name is checked (the kernel's `dev_valid_name` rules, plus no `%d` templates) before any
//!   syscall.
//! * `/dev/net/tun` is opened `O_RDWR | O_CLOEXEC | O_NONBLOCK`.
//! * `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL` (and `IFF_MULTI_QUEUE`
//!   with several workers: one fd, a queue, per worker; see [`Tap::create_queues`]). `IFF_TUN_EXCL` makes the
//!   kernel refuse (`EBUSY`) *any* existing device of that name, instead of attaching to an
//!   existing persistent TAP or failing with a vague `EINVAL` for a non-TUN device; both surface
//!   as [`TapError::NameInUse`]. A port's TAP is not persistent unless asked
//!   ([`Tap::set_persist`]): the device disappears when the `Tap` (its only fd) is dropped, even
//!   if the engine crashes. A persistent port's TAP is always multi-queue, so that an engine
//!   with any number of workers can attach to it again ([`Tap::adopt`]).
//! * The kernel's name is read back from the `ifreq`.
//! * `TUNSETVNETHDRSZ 10`: every read and write starts with a `virtio_net_hdr`, the same layout
//!   the parent ring delivers, so ring frames can be written as they are.
//! * `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)`: the child's stack may
//!   hand the engine partial-checksum frames and 64 KiB TCP super-frames. Never the UDP tunnel
//!   bits: the parent's packet socket cannot express them.
//!
//! The fd stays attached to its device when someone moves the device to another namespace or
//! renames it: [`Tap::device`] (`TUNGETIFF`) gives its current name and [`Tap::device_netns`]
//! (`TUNGETDEVNETNS`) its current namespace; both fail once the device is gone.
//!
//! Not done here: raising `txqueuelen` (a netlink job; the default 1000 tail-drops with no
//! backpressure) and moving the device to the child's namespace.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `IFNAMSIZ`: names are at most 15 bytes plus the NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// `struct ifreq` with the `ifr_flags` member of its union, padded to the full union size.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Flags passed to `TUNSETIFF`.
const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL;
/// `TUNSETOFFLOAD` argument.
const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Why a [`Tap`] could not be created; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid TAP name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("TAP {name}: cannot open /dev/net/tun")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: a network device with this name already exists in this namespace")]
    NameInUse {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: TUNSETIFF failed")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: TUNSETVNETHDRSZ 10 failed")]
    VnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: TUNSETOFFLOAD failed")]
    Offload {
        name: String,
        #[source]
        source: io::Error,
    },
    /// An existing device that a persistent port cannot take over (see [`Tap::adopt`]).
    #[error("{name} exists and cannot be adopted: {reason}")]
    NotAdoptable { name: String, reason: String },
    #[error("TAP {name}: TUNGETIFF failed")]
    GetIff {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// What `TUNGETIFF` says of the device a TAP fd is attached to, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapDevice {
    /// Its current name (someone may have renamed it).
    pub name: String,
    /// `IFF_*` flags: `IFF_TAP`, `IFF_PERSIST`, `IFF_MULTI_QUEUE`, ...
    pub flags: libc::c_int,
}

impl TapDevice {
    pub fn persistent(&self) -> bool {
        self.flags & libc::IFF_PERSIST != 0
    }

    pub fn multi_queue(&self) -> bool {
        self.flags & libc::IFF_MULTI_QUEUE != 0
    }
}

/// Checks `name` against the kernel's `dev_valid_name` and the engine's own rule (no templates).
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() >= IFNAMSIZ {
        return Err("longer than 15 bytes (IFNAMSIZ - 1)");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are reserved");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.contains('/') || name.contains(':') {
        return Err("contains '/' or ':'");
    }
    if name.chars().any(char::is_whitespace) {
        return Err("contains whitespace");
    }
    if name.contains('%') {
        return Err("contains '%' (kernel name templates are not allowed)");
    }
    Ok(())
}

/// [`validate_name`] as a [`TapError`].
fn check_name(name: &str) -> Result<(), TapError> {
    validate_name(name).map_err(|reason| TapError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// A failed attach to an existing device, said as such.
fn adopt_error(e: TapError, name: &str) -> TapError {
    match e {
        // EBUSY without IFF_TUN_EXCL: a single-queue TAP that someone holds.
        TapError::NameInUse { .. } => TapError::NotAdoptable {
            name: name.to_owned(),
            reason: "it is a single-queue TAP that another program holds (EBUSY)".to_owned(),
        },
        e => e,
    }
}

/// A TAP device with a virtio-net header on every frame; it exists as long as this value does
/// (or, persistent, until it is deleted).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the TAP `name` in the calling thread's network namespace. See the module docs.
    pub fn create(name: &str) -> Result<Tap, TapError> {
        let mut queues = Tap::create_queues(name, 1)?;
        Ok(queues.remove(0))
    }

    /// Creates the TAP `name` with `n` queues, one fd each (`n` > 1: `IFF_MULTI_QUEUE`, so each
    /// worker thread reads and writes its own queue; the kernel picks the queue of a frame the
    /// child sends by its flow hash, so a flow stays on one queue and in order). The device
    /// exists while any of the returned values does. `n` 0 is taken as 1.
    pub fn create_queues(name: &str, n: usize) -> Result<Vec<Tap>, TapError> {
        Tap::create_with(name, n, n > 1)
    }

    /// Like [`Tap::create_queues`], always `IFF_MULTI_QUEUE` (even with one queue): what a
    /// persistent TAP is made as, so that an engine with any number of workers can adopt it.
    pub fn create_multi_queue(name: &str, n: usize) -> Result<Vec<Tap>, TapError> {
        Tap::create_with(name, n, true)
    }

    fn create_with(name: &str, n: usize, multi: bool) -> Result<Vec<Tap>, TapError> {
        check_name(name)?;
        let multi = if multi { libc::IFF_MULTI_QUEUE } else { 0 };
        // IFF_TUN_EXCL on the first queue only: the others attach to the device it created (its
        // name as the kernel returned it).
        let first = Tap::open_queue(name, TAP_FLAGS | multi)?;
        Tap::more_queues(first, n, multi)
    }

    /// Attaches `n` queues to the existing **persistent** TAP `name` in the calling thread's
    /// namespace (`TUNSETIFF` by name resolves there), as a restarted engine takes its
    /// persistent port back. Refused ([`TapError::NotAdoptable`]), with no queue left attached:
    /// a device that is not a TAP, a TAP that is not persistent (someone else's), a single-queue
    /// TAP when `n` > 1, and a single-queue TAP someone holds. The device's name, MAC, MTU,
    /// state and addresses are left as they are; its vnet header size and offloads are set as
    /// for a new TAP.
    pub fn adopt(name: &str, n: usize) -> Result<Vec<Tap>, TapError> {
        check_name(name)?;
        let attach = TAP_FLAGS & !libc::IFF_TUN_EXCL;
        let refuse = |reason: &str| TapError::NotAdoptable {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        // A persistent port's TAP is multi-queue; one made by `ip tuntap add` is not.
        let first = match Tap::open_queue(name, attach | libc::IFF_MULTI_QUEUE) {
            Err(TapError::SetIff { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                match Tap::open_queue(name, attach) {
                    Ok(_) if n > 1 => {
                        return Err(refuse(&format!(
                            "a single-queue TAP takes one queue, and this engine has {n} workers (run it with --workers 1, or let the engine make the TAP)"
                        )));
                    }
                    Ok(t) => t,
                    Err(TapError::SetIff { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        return Err(refuse("it is not a TAP device"));
                    }
                    Err(e) => return Err(adopt_error(e, name)),
                }
            }
            Err(e) => return Err(adopt_error(e, name)),
            Ok(t) => t,
        };
        let dev = first.device().map_err(|source| TapError::GetIff {
            name: name.to_owned(),
            source,
        })?;
        if !dev.persistent() {
            // Dropping `first` detaches the queue just attached: the owner's device is untouched.
            return Err(refuse(
                "it is a TAP that is not persistent (another program's)",
            ));
        }
        let multi = dev.flags & libc::IFF_MULTI_QUEUE;
        Tap::more_queues(first, n, multi)
    }

    /// `first` and `n` - 1 more queues of its device, with the device's header size and
    /// offloads set.
    fn more_queues(first: Tap, n: usize, multi: libc::c_int) -> Result<Vec<Tap>, TapError> {
        let attach = (TAP_FLAGS & !libc::IFF_TUN_EXCL) | multi;
        let mut queues = Vec::with_capacity(n.max(1));
        for _ in 1..n {
            queues.push(Tap::open_queue(&first.name, attach)?);
        }
        queues.insert(0, first);
        // The header size and the offloads belong to the device: set once, through any queue.
        let tap = &queues[0];
        let hdr_sz = libc::c_int::try_from(crate::wire::vnet::VNET_HDR_LEN).expect("10 bytes");
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `hdr_sz` is a live local.
        let rc = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_sz as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(TapError::VnetHdrSize {
                name: tap.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_* bits),
        // not as a pointer: no memory is accessed.
        let rc = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(TAP_OFFLOADS),
            )
        };
        if rc < 0 {
            return Err(TapError::Offload {
                name: tap.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(queues)
    }

    /// Opens `/dev/net/tun` and binds it to the device `name` with `flags` (`TUNSETIFF`),
    /// creating the device or, without `IFF_TUN_EXCL`, attaching one more queue to it.
    fn open_queue(name: &str, flags: libc::c_int) -> Result<Tap, TapError> {
        let owned = || name.to_owned();
        // std always adds O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open {
                name: owned(),
                source,
            })?;

        let mut ifr = IfReqFlags {
            name: [0; IFNAMSIZ],
            // `ifr_flags` is a C short the kernel reads as 16 bits (IFF_TUN_EXCL is 0x8000).
            flags: u16::try_from(flags)
                .expect("the TAP flags fit in 16 bits")
                .cast_signed(),
            _pad: [0; 22],
        };
        ifr.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes back one `struct ifreq` through the pointer; `ifr`
        // is a live, exclusively borrowed `repr(C)` value of exactly that size (pinned in a test),
        // with a NUL-terminated name (validated shorter than IFNAMSIZ).
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut IfReqFlags,
            )
        };
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY | libc::EEXIST) => TapError::NameInUse {
                    name: owned(),
                    source,
                },
                _ => TapError::SetIff {
                    name: owned(),
                    source,
                },
            });
        }
        let len = ifr.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&ifr.name[..len]).into_owned();
        Ok(Tap { file, name })
    }

    /// The device name the kernel gave the TAP when it was made or adopted (see
    /// [`Tap::device`] for its name now).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device this fd is attached to as it is now (`TUNGETIFF`), wherever it was moved and
    /// whatever it was renamed to. Fails (`EBADFD`) once the device is gone: deleted, or
    /// destroyed with its namespace.
    pub fn device(&self) -> io::Result<TapDevice> {
        let mut ifr = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes one `struct ifreq` through the pointer; `ifr` is a live,
        // exclusively borrowed `repr(C)` value of exactly that size (pinned in a test).
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNGETIFF,
                &mut ifr as *mut IfReqFlags,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = ifr.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        Ok(TapDevice {
            name: String::from_utf8_lossy(&ifr.name[..len]).into_owned(),
            flags: libc::c_int::from(ifr.flags.cast_unsigned()),
        })
    }

    /// The network namespace the device is in now (`TUNGETDEVNETNS`, Linux 5.2), as an fd of
    /// nsfs; the fd's own socket stays in the namespace it was opened in.
    pub fn device_netns(&self) -> io::Result<OwnedFd> {
        // SAFETY: TUNGETDEVNETNS takes no argument and accesses no memory of ours; it returns a
        // new file descriptor (O_CLOEXEC) or -1.
        let fd = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETDEVNETNS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Makes the device persistent or not (`TUNSETPERSIST`). A persistent TAP outlives its
    /// fds; one made non-persistent again goes when its last fd closes.
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value (0 or 1), not as a pointer: no
        // memory is accessed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(on),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The TAP's ifindex, looked up by name in the **calling thread's** network namespace. Valid
    /// only while the TAP is still in the namespace it was created in (the engine's): after it
    /// moves to a child namespace the name resolves there, or to another device here.
    pub fn ifindex(&self) -> io::Result<u32> {
        nix::net::if_::if_nametoindex(self.name.as_str()).map_err(io::Error::from)
    }

    /// Reads one frame the child sent: a 10-byte vnet header, then the frame. Non-blocking
    /// (`WouldBlock` when nothing is queued). A short buffer truncates **silently**: use
    /// 65 536 + 10 + 4 bytes or more.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Delivers one frame to the child: `buf` is a 10-byte vnet header, then the frame. The
    /// child's receive path runs inside this call. Fails with EIO while the device is down.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Like [`Tap::write`], one frame gathered from `iov` (e.g. vnet header, MACs, tag, rest).
    pub fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(iov)
    }

    /// Sets the device's carrier (`TUNSETCARRIER`): off makes the child see the link down.
    pub fn set_carrier(&self, on: bool) -> io::Result<()> {
        let carrier = libc::c_int::from(on);
        // SAFETY: TUNSETCARRIER reads one `int` through the pointer; `carrier` is a live local.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETCARRIER,
                &carrier as *const libc::c_int,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn ioctl_constants_and_layouts_match_the_uapi() {
        // include/uapi/linux/if_tun.h: _IOW('T', n, int).
        assert_eq!(i128::from(libc::TUNSETIFF), 0x4004_54ca);
        assert_eq!(i128::from(libc::TUNSETOFFLOAD), 0x4004_54d0);
        assert_eq!(i128::from(libc::TUNSETVNETHDRSZ), 0x4004_54d8);
        assert_eq!(i128::from(libc::TUNSETCARRIER), 0x4004_54e2);
        assert_eq!(i128::from(libc::TUNSETPERSIST), 0x4004_54cb);
        assert_eq!(i128::from(libc::TUNGETIFF), 0x8004_54d2);
        // _IO('T', 227): no argument.
        assert_eq!(i128::from(libc::TUNGETDEVNETNS), 0x54e3);
        assert_eq!(libc::IFF_PERSIST, 0x0800);
        assert_eq!(libc::IFF_MULTI_QUEUE, 0x0100);
        assert_eq!(libc::IFF_TAP, 0x0002);
        assert_eq!(libc::IFF_NO_PI, 0x1000);
        assert_eq!(libc::IFF_VNET_HDR, 0x4000);
        assert_eq!(libc::IFF_TUN_EXCL, 0x8000);
        assert_eq!(TAP_OFFLOADS, 0x0f);
        assert_eq!(IFNAMSIZ, 16);
        assert_eq!(size_of::<IfReqFlags>(), size_of::<libc::ifreq>());
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), IFNAMSIZ);
        // TAP_FLAGS must survive the cast to the c_short ifr_flags field.
        assert!(u16::try_from(TAP_FLAGS).is_ok(), "ifr_flags holds 16 bits");
    }

    #[test]
    fn names_are_validated_before_any_syscall() {
        for ok in ["umv0", "a", "x-y_z.1", "123456789012345"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "tap%d",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be invalid");
            match Tap::create(bad) {
                Err(TapError::InvalidName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
            }
        }
    }

    /// Root tests: everything inside a private network namespace (see `sys::testns`).
    mod root {
        use std::time::{Duration, Instant};

        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

        use super::super::super::testns::{
            NetNs, SRC_MAC, collect, ifindex, udp_flow_frame, udp_frame,
        };
        use super::super::super::{RingConfig, RxRing, TxSocket};
        use super::*;
        use crate::wire::vnet::{F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr};

        const WAIT: Duration = Duration::from_secs(3);

        fn csum_hdr() -> VnetHdr {
            VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: 34,
                csum_offset: 6,
                ..VnetHdr::NONE
            }
        }

        /// Reads frames from the TAP until one carries `marker`; returns it with its vnet header.
        fn read_until(tap: &Tap, marker: &[u8]) -> Vec<u8> {
            let deadline = Instant::now() + WAIT;
            let mut buf = vec![0u8; 65536 + VNET_HDR_LEN + 4];
            loop {
                match tap.read(&mut buf) {
                    Ok(n) => {
                        let got = &buf[..n];
                        if got.get(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12) == Some(&SRC_MAC[..])
                            && got.ends_with(marker)
                        {
                            return got.to_vec();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(
                            Instant::now() < deadline,
                            "nothing with the marker read from the TAP"
                        );
                        let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
                        poll(&mut fds, PollTimeout::from(20u8)).expect("poll on the TAP");
                    }
                    Err(e) => panic!("TAP read: {e}"),
                }
            }
        }

        #[test]
        fn frames_cross_the_tap_in_both_directions_with_vnet_headers() {
            let ns = NetNs::new();
            ns.run(|| {
                let tap = Tap::create("umvt0").expect("create TAP");
                assert_eq!(tap.name(), "umvt0");
                assert_eq!(tap.ifindex().expect("ifindex"), ifindex("umvt0"));
                // Down: the kernel refuses writes.
                let frame = udp_frame(None, b"umv-to-child");
                let msg = [&csum_hdr().to_bytes()[..], &frame].concat();
                let err = tap.write(&msg).expect_err("write to a down TAP");
                assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
                ns.ip(&["link", "set", "dev", "umvt0", "up"]);

                // Engine → child: a write with a vnet header is received by the TAP netdev.
                let idx = tap.ifindex().expect("ifindex");
                let mut ring = RxRing::open(idx, RingConfig::DEFAULT).expect("ring on the TAP");
                assert_eq!(tap.write(&msg).expect("write"), msg.len());
                let seen = collect(&mut ring, WAIT, |s| {
                    s.iter().any(|f| f.has_marker(b"umv-to-child"))
                });
                let f = seen
                    .iter()
                    .find(|f| f.has_marker(b"umv-to-child"))
                    .unwrap_or_else(|| panic!("the TAP write never reached the netdev: {seen:?}"));
                assert_eq!(f.frame, frame);
                assert_eq!(
                    VnetHdr::parse(&f.vnet),
                    Some(csum_hdr()),
                    "partial csum kept"
                );

                // Child → engine: a packet socket sending on the TAP netdev; the read starts with
                // a vnet header. TUN_F_CSUM is on, so the checksum stays partial.
                let tx = TxSocket::open(idx).expect("tx on the TAP");
                let back = udp_frame(None, b"umv-from-child");
                tx.send(&[&csum_hdr().to_bytes()[..], &back].concat())
                    .expect("send");
                let got = read_until(&tap, b"umv-from-child");
                assert_eq!(&got[VNET_HDR_LEN..], &back[..]);
                assert_eq!(
                    VnetHdr::parse(&got),
                    Some(csum_hdr()),
                    "TAP offloads are set"
                );

                // Gathered write.
                let v = VnetHdr::NONE.to_bytes();
                let g = udp_frame(None, b"umv-gathered");
                let n = tap
                    .write_vectored(&[
                        IoSlice::new(&v),
                        IoSlice::new(&g[..14]),
                        IoSlice::new(&g[14..]),
                    ])
                    .expect("writev");
                assert_eq!(n, VNET_HDR_LEN + g.len());
                let seen = collect(&mut ring, WAIT, |s| {
                    s.iter().any(|f| f.has_marker(b"umv-gathered"))
                });
                assert!(
                    seen.iter()
                        .any(|f| f.has_marker(b"umv-gathered") && f.frame == g)
                );
            });
        }

        #[test]
        fn a_multi_queue_tap_spreads_flows_over_its_queues() {
            let ns = NetNs::new();
            ns.run(|| {
                let queues = Tap::create_queues("umvmq", 2).expect("create");
                assert_eq!(queues.len(), 2);
                assert!(queues.iter().all(|q| q.name() == "umvmq"));
                let detail = ns.ip_output(&["-d", "link", "show", "dev", "umvmq"]);
                assert!(detail.contains("multi_queue"), "{detail}");
                ns.ip(&["link", "set", "dev", "umvmq", "up"]);
                // Child → engine: 32 flows sent on the netdev; each lands whole on one queue.
                let tx = TxSocket::open(ifindex("umvmq")).expect("tx on the TAP");
                let none = VnetHdr::NONE.to_bytes();
                const FLOWS: u16 = 32;
                for flow in 0..FLOWS {
                    for _ in 0..2 {
                        let f = udp_flow_frame(flow, b"umv-mq");
                        tx.send(&[&none[..], &f].concat()).expect("send");
                    }
                }
                let mut flows = vec![std::collections::BTreeMap::new(); 2];
                let deadline = Instant::now() + WAIT;
                let mut buf = vec![0u8; 65536 + VNET_HDR_LEN + 4];
                while flows.iter().map(|m| m.values().sum::<u32>()).sum::<u32>()
                    < u32::from(FLOWS) * 2
                {
                    assert!(Instant::now() < deadline, "frames missing: {flows:?}");
                    for (q, seen) in queues.iter().zip(&mut flows) {
                        while let Ok(n) = q.read(&mut buf) {
                            let f = &buf[VNET_HDR_LEN..n];
                            if f.get(6..12) == Some(&SRC_MAC[..]) && f.ends_with(b"umv-mq") {
                                *seen.entry(f[34..36].to_vec()).or_insert(0u32) += 1;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(
                    flows[0].keys().all(|k| !flows[1].contains_key(k)),
                    "a flow was split across queues: {flows:?}"
                );
                assert!(
                    !flows[0].is_empty() && !flows[1].is_empty(),
                    "32 flows all on one queue: {flows:?}"
                );
                // The device lives while any queue does.
                let mut queues = queues;
                queues.pop();
                assert!(nix::net::if_::if_nametoindex("umvmq").is_ok());
                drop(queues);
                let deadline = Instant::now() + WAIT;
                while nix::net::if_::if_nametoindex("umvmq").is_ok() {
                    assert!(Instant::now() < deadline, "the TAP outlived its queues");
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }

        #[test]
        fn tap_disappears_when_dropped_and_the_name_is_free_again() {
            let ns = NetNs::new();
            ns.run(|| {
                let tap = Tap::create("umvgone").expect("create");
                assert!(tap.ifindex().is_ok());
                drop(tap);
                let deadline = Instant::now() + WAIT;
                while nix::net::if_::if_nametoindex("umvgone").is_ok() {
                    assert!(Instant::now() < deadline, "the TAP outlived its fd");
                    std::thread::sleep(Duration::from_millis(10));
                }
                let again = Tap::create("umvgone").expect("the name is free once the TAP is gone");
                assert_eq!(again.name(), "umvgone");
            });
        }

        #[test]
        fn an_existing_name_is_name_in_use() {
            let ns = NetNs::new();
            ns.veth("umvveth", "umvpeer");
            ns.run(|| {
                let first = Tap::create("umvdup").expect("create");
                match Tap::create("umvdup") {
                    Err(TapError::NameInUse { name, source }) => {
                        assert_eq!(name, "umvdup");
                        assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
                    }
                    other => panic!("second TAP with the same name: {other:?}"),
                }
                // A device that is not a TAP at all (without IFF_TUN_EXCL: EINVAL).
                match Tap::create("umvveth") {
                    Err(TapError::NameInUse { name, .. }) => assert_eq!(name, "umvveth"),
                    other => panic!("TAP over an existing veth name: {other:?}"),
                }
                // A persistent TAP nobody holds (without IFF_TUN_EXCL we would silently attach).
                ns.ip(&["tuntap", "add", "dev", "umvpers", "mode", "tap"]);
                match Tap::create("umvpers") {
                    Err(TapError::NameInUse { name, .. }) => assert_eq!(name, "umvpers"),
                    other => panic!("TAP over an existing persistent TAP: {other:?}"),
                }
                assert!(first.ifindex().is_ok(), "the first TAP is untouched");
            });
        }

        /// The inode of the namespace an nsfs fd refers to.
        fn inode(fd: &impl AsFd) -> u64 {
            nix::sys::stat::fstat(fd).expect("fstat").st_ino
        }

        #[test]
        fn the_fd_follows_its_device_across_a_move_and_a_rename() {
            let (a, b) = (NetNs::new(), NetNs::new());
            let b_inode = b.run(|| inode(&File::open("/proc/thread-self/ns/net").unwrap()));
            let (tap, a_inode) = a.run(|| {
                let tap = Tap::create("umvmove").expect("create");
                let here = inode(&File::open("/proc/thread-self/ns/net").unwrap());
                (tap, here)
            });
            assert_eq!(inode(&tap.device_netns().expect("TUNGETDEVNETNS")), a_inode);
            assert!(!tap.device().unwrap().persistent());
            // libnetwork's AddInterface: move, rename.
            a.ip(&["link", "set", "umvmove", "netns", &b.name]);
            b.ip(&["link", "set", "umvmove", "name", "eth0"]);
            let dev = tap.device().expect("still attached after the move");
            assert_eq!(dev.name, "eth0");
            assert_eq!(inode(&tap.device_netns().unwrap()), b_inode);
            assert_eq!(tap.name(), "umvmove", "the name it was made with");
            // The namespace goes: the kernel deletes the TAP, the fd is detached.
            drop(b);
            let deadline = Instant::now() + WAIT;
            while tap.device().is_ok() {
                assert!(Instant::now() < deadline, "the TAP outlived its namespace");
                std::thread::sleep(Duration::from_millis(10));
            }
            let e = tap.device_netns().expect_err("no device, no namespace");
            assert_eq!(e.raw_os_error(), Some(libc::EBADFD), "{e}");
        }

        #[test]
        fn a_persistent_tap_outlives_its_fds_and_is_adopted_with_all_its_queues() {
            let ns = NetNs::new();
            ns.veth("umvveth", "umvpeer");
            ns.run(|| {
                let queues = Tap::create_multi_queue("umvpst", 1).expect("create");
                queues[0].set_persist(true).expect("TUNSETPERSIST");
                assert!(queues[0].device().unwrap().persistent());
                assert!(queues[0].device().unwrap().multi_queue());
                let index = queues[0].ifindex().unwrap();
                drop(queues);
                std::thread::sleep(Duration::from_millis(50));
                assert_eq!(ifindex("umvpst"), index, "a persistent TAP stays");
                // Another engine, with two workers: two queues of the same device.
                let adopted = Tap::adopt("umvpst", 2).expect("adopt");
                assert_eq!(adopted.len(), 2);
                assert!(adopted.iter().all(|q| q.device().unwrap().name == "umvpst"));
                assert_eq!(ifindex("umvpst"), index, "the same device");
                // Not persistent any more: it goes with its last fd.
                adopted[0].set_persist(false).unwrap();
                drop(adopted);
                let deadline = Instant::now() + WAIT;
                while nix::net::if_::if_nametoindex("umvpst").is_ok() {
                    assert!(Instant::now() < deadline, "the TAP outlived its fds");
                    std::thread::sleep(Duration::from_millis(10));
                }
                // What cannot be adopted, with the reason.
                let refused = |name: &str, n: usize| match Tap::adopt(name, n) {
                    Err(TapError::NotAdoptable { reason, .. }) => reason,
                    other => panic!("adopting {name}: {other:?}"),
                };
                assert!(refused("umvveth", 1).contains("not a TAP"));
                let mine = Tap::create("umvmine").expect("create");
                assert!(refused("umvmine", 1).contains("another program holds"));
                let mq = Tap::create_queues("umvmq2", 2).expect("create");
                assert!(refused("umvmq2", 2).contains("not persistent"));
                assert_eq!(mine.device().unwrap().name, "umvmine", "untouched");
                drop(mq);
                ns.ip(&["tuntap", "add", "dev", "umvsq", "mode", "tap"]);
                assert!(refused("umvsq", 2).contains("single-queue TAP takes one queue"));
                let one = Tap::adopt("umvsq", 1).expect("one queue of a single-queue TAP");
                assert!(one[0].device().unwrap().persistent());
            });
        }

        #[test]
        fn carrier_can_be_switched_off_and_on() {
            let ns = NetNs::new();
            ns.run(|| {
                let tap = Tap::create("umvcar").expect("create");
                ns.ip(&["link", "set", "dev", "umvcar", "up"]);
                tap.set_carrier(false).expect("carrier off");
                let off = ns.ip_output(&["-o", "link", "show", "dev", "umvcar"]);
                assert!(off.contains("NO-CARRIER"), "{off}");
                tap.set_carrier(true).expect("carrier on");
                let on = ns.ip_output(&["-o", "link", "show", "dev", "umvcar"]);
                assert!(
                    !on.contains("NO-CARRIER") && on.contains("LOWER_UP"),
                    "{on}"
                );
            });
        }
    }
}
