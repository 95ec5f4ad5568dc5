//! The error type shared by everything in [`crate::net`].

use std::io;
use std::path::PathBuf;

/// What went wrong in a netlink or namespace operation. `op` always says what was being done
/// ("set MTU of c1 (ifindex 7) to 9000"); the OS error is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel answered a request with an error (NLMSG_ERROR or an error in NLMSG_DONE).
    /// `extack` is the kernel's extended-ack text (NLMSGERR_ATTR_MSG), when it sent one.
    #[error("{op}{}", match extack { Some(m) => format!(": {m}"), None => String::new() })]
    Kernel {
        op: String,
        extack: Option<String>,
        #[source]
        source: io::Error,
    },
    /// A system call of ours failed (socket, send, recv, open, mount, setns, ...).
    #[error("{op}")]
    Sys {
        op: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer did not parse or was not what the protocol promises.
    #[error("{op}: {detail}")]
    Protocol { op: String, detail: String },
    /// `Netns::open(name)`: there is no `/run/netns/NAME`.
    #[error(
        "no network namespace named {name:?}: {} does not exist (ip netns list shows the known ones)",
        path.display()
    )]
    NoSuchNetns { name: String, path: PathBuf },
    /// A namespace name `ip netns` would refuse (empty, ".", "..", or containing '/' or NUL).
    #[error("{name:?} is not a valid network namespace name")]
    BadNetnsName { name: String },
    /// A device named in a request does not exist in the namespace searched.
    #[error("no network device named {name:?} in {netns}")]
    NoSuchLink { name: String, netns: String },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno behind this error, if there is one (`Kernel` and `Sys`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } | Error::Sys { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel's extended-ack text, if it sent one.
    pub fn extack(&self) -> Option<&str> {
        match self {
            Error::Kernel { extack, .. } => extack.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn sys(op: impl Into<String>, source: impl Into<io::Error>) -> Error {
        Error::Sys {
            op: op.into(),
            source: source.into(),
        }
    }
}

/// `nix::Error` → `io::Error`, for [`Error::sys`].
pub(crate) fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_display_has_op_and_extack_and_errno_in_source() {
        let e = Error::Kernel {
            op: "set MTU of c1 (ifindex 7) to 10".into(),
            extack: Some("mtu less than device minimum".into()),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            e.to_string(),
            "set MTU of c1 (ifindex 7) to 10: mtu less than device minimum"
        );
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert_eq!(e.extack(), Some("mtu less than device minimum"));
        let src = std::error::Error::source(&e).unwrap().to_string();
        assert!(src.contains("Invalid argument"), "{src}");
    }

    #[test]
    fn kernel_error_without_extack() {
        let e = Error::Kernel {
            op: "create veth a".into(),
            extack: None,
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert_eq!(e.to_string(), "create veth a");
        assert_eq!(e.extack(), None);
    }
}
