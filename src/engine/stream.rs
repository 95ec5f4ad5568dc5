//! A stream port: a VM connected over a Unix socket with QEMU's stream framing (`-netdev
//! stream`, QEMU ≥ 7.2): every frame is preceded by its length, 32 bits big-endian; there is no
//! virtio-net header.
//!
//! The engine listens; one peer at a time. A new peer takes the place of one that is gone (QEMU
//! reconnects after a restart, or with `reconnect=`); while the current peer is connected a
//! newcomer is refused (closed at once), so a stray connection cannot take a running VM's place.
//! The worker sees one fd: an epoll of its own holding the listener and the connection, readable
//! when either is.
//!
//! Reading takes exactly the bytes of one frame at a time (length, then body), so nothing waits
//! in a buffer of ours while the socket looks idle to the worker's epoll. A length of 0..13 is
//! handed over as the runt it is; a length above [`MAX_FRAME`] cannot be resynchronised after:
//! counted as `oversize`, and the peer is disconnected; a peer that goes away in the middle of a
//! frame leaves it `truncated`.
//!
//! Writing: from any thread, one frame (length and body) per `sendmsg` under a lock, so frames
//! never interleave. A frame with offload state (a TCP super-frame, a partial checksum) is
//! completed in software first ([`crate::offload`]). A send that only goes part way is finished
//! within `FINISH_WITHIN` (200 ms) or the peer is disconnected (its framing would be broken).
//! Without a peer a write fails with `NotConnected`: the copy is counted as `no_peer`.
//!
//! [`crate::offload`]: crate::wire::offload

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{MsgFlags, sendmsg};

use crate::forward::DropReason;
use crate::wire::offload;
use crate::wire::vnet::{VNET_HDR_LEN, VnetHdr};

/// The largest frame a peer may announce (QEMU sends at most 69 632 bytes, `NET_BUFSIZE`, and
/// without offloads an Ethernet frame is far shorter).
pub const MAX_FRAME: usize = 65_536;
/// How long a partly sent frame may take to finish before the peer is dropped.
const FINISH_WITHIN: Duration = Duration::from_millis(200);
/// The socket's send buffer: room for many frames before the peer must read.
const SNDBUF: usize = 4 << 20;

/// What one read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// A frame of this length (vnet header included) is in the buffer.
    Frame(usize),
    /// Nothing more for now.
    Empty,
    /// A frame that cannot be forwarded: `len` bytes of it were read, counted as `reason`.
    Refused { len: usize, reason: DropReason },
}

/// Why a stream port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream port {name}: {path} exists and is not a socket; refusing to replace it")]
    NotASocket { name: String, path: PathBuf },
    #[error("stream port {name}: {path} is in use (a process accepts connections on it)")]
    InUse { name: String, path: PathBuf },
    #[error("stream port {name}: {what} {path}")]
    Io {
        name: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Checks that `path` can be listened on, changing nothing: it does not exist, or it is a stale
/// socket nobody accepts on (which [`StreamPort::listen`] will replace).
pub fn check_path(name: &str, path: &Path) -> Result<(), StreamError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StreamError::Io {
                name: name.into(),
                what: "cannot inspect",
                path: path.into(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(StreamError::NotASocket {
            name: name.into(),
            path: path.into(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(StreamError::InUse {
            name: name.into(),
            path: path.into(),
        }),
        Err(_) => Ok(()),
    }
}

/// The reading side: the connection and the frame being read.
#[derive(Debug, Default)]
struct Reader {
    conn: Option<UnixStream>,
    /// Bytes of the length prefix read so far.
    head: [u8; 4],
    have_head: usize,
    /// The current frame's body, between reads (the caller's buffer changes from read to read).
    body: Vec<u8>,
    /// Bytes of it read so far.
    have_body: usize,
}

impl Reader {
    fn want(&self) -> usize {
        u32::from_be_bytes(self.head) as usize
    }

    fn reset(&mut self) {
        (self.have_head, self.have_body) = (0, 0);
    }
}

/// The writing side: a handle on the same connection, and a buffer for completed offloads.
#[derive(Debug, Default)]
struct Writer {
    conn: Option<UnixStream>,
    scratch: Vec<u8>,
}

/// One stream port. `Send + Sync`: the worker reads, any thread may write.
#[derive(Debug)]
pub struct StreamPort {
    name: String,
    path: PathBuf,
    listener: UnixListener,
    poll: Epoll,
    rx: Mutex<Reader>,
    tx: Mutex<Writer>,
}

const TOKEN_LISTENER: u64 = 0;
const TOKEN_CONN: u64 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these values inconsistent beyond one frame.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamPort {
    /// Listens on `path` (its directory is created; a stale socket there is replaced). Call
    /// [`check_path`] first to refuse a path in use.
    pub fn listen(name: &str, path: &Path) -> Result<StreamPort, StreamError> {
        let io = |what, source| StreamError::Io {
            name: name.into(),
            what,
            path: path.into(),
            source,
        };
        check_path(name, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io("cannot remove the stale socket", e));
            }
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(|e| io("cannot listen on", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("cannot set non-blocking", e))?;
        let poll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| io("cannot create an epoll for", e.into()))?;
        poll.add(
            &listener,
            EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LISTENER),
        )
        .map_err(|e| io("cannot poll", e.into()))?;
        tracing::info!(port = name, path = %path.display(), "stream port listening");
        Ok(StreamPort {
            name: name.into(),
            path: path.into(),
            listener,
            poll,
            rx: Mutex::new(Reader {
                body: vec![0; MAX_FRAME],
                ..Reader::default()
            }),
            tx: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a peer is connected.
    pub fn connected(&self) -> bool {
        lock(&self.tx).conn.is_some()
    }

    /// Takes a waiting peer, if any, when there is none; refuses it otherwise.
    fn accept(&self, rx: &mut Reader) -> bool {
        let conn = match self.listener.accept() {
            Ok((c, _)) => c,
            Err(e) => {
                if e.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!(port = %self.name, "accepting a peer failed: {e}");
                }
                return false;
            }
        };
        if rx.conn.is_some() {
            tracing::warn!(port = %self.name, "refusing a second peer: one is connected");
            return false;
        }
        let setup = || -> io::Result<UnixStream> {
            conn.set_nonblocking(true)?;
            nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::SndBufForce, &SNDBUF)?;
            self.poll
                .add(&conn, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_CONN))?;
            conn.try_clone()
        };
        let writer = match setup() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(port = %self.name, "setting up a peer failed: {e}");
                return false;
            }
        };
        tracing::info!(port = %self.name, "peer connected");
        rx.conn = Some(conn);
        rx.reset();
        lock(&self.tx).conn = Some(writer);
        true
    }

    fn disconnect(&self, rx: &mut Reader) {
        if let Some(c) = rx.conn.take() {
            let _ = self.poll.delete(&c);
        }
        rx.reset();
        lock(&self.tx).conn = None;
    }

    /// Reads the next frame into `buf` behind a zero virtio-net header (a stream carries none).
    /// `buf` must hold `VNET_HDR_LEN + MAX_FRAME` bytes.
    pub fn read(&self, buf: &mut [u8]) -> Recv {
        let mut rx = lock(&self.rx);
        loop {
            if rx.conn.is_none() && !self.accept(&mut rx) {
                return Recv::Empty;
            }
            match self.read_frame(&mut rx, buf) {
                Some(r) => return r,
                // The peer went away, or is idle: a new one may be waiting.
                None if self.accept(&mut rx) => {}
                None => return Recv::Empty,
            }
        }
    }

    /// One step of the current connection; `None`: nothing more from it now (idle or gone).
    fn read_frame(&self, rx: &mut Reader, buf: &mut [u8]) -> Option<Recv> {
        loop {
            let want = rx.want();
            let full = rx.have_head == 4;
            if full && rx.have_body == want {
                // The whole body is here (or it is empty).
                buf[..VNET_HDR_LEN].copy_from_slice(&VnetHdr::NONE.to_bytes());
                buf[VNET_HDR_LEN..VNET_HDR_LEN + want].copy_from_slice(&rx.body[..want]);
                rx.reset();
                return Some(Recv::Frame(VNET_HDR_LEN + want));
            }
            let Reader {
                conn,
                head,
                have_head,
                body,
                have_body,
            } = &mut *rx;
            let conn = conn.as_ref()?;
            let target = if full {
                &mut body[*have_body..want]
            } else {
                &mut head[*have_head..]
            };
            let got = match (&mut &*conn).read(target) {
                Ok(0) => {
                    let partial = rx.have_head > 0;
                    let len = rx.have_body;
                    tracing::info!(port = %self.name, "peer disconnected");
                    self.disconnect(rx);
                    return partial.then_some(Recv::Refused {
                        len,
                        reason: DropReason::Truncated,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(port = %self.name, "reading from the peer failed: {e}");
                    let len = rx.have_body;
                    let partial = rx.have_head > 0;
                    self.disconnect(rx);
                    return partial.then_some(Recv::Refused {
                        len,
                        reason: DropReason::Truncated,
                    });
                }
            };
            if full {
                rx.have_body += got;
            } else {
                rx.have_head += got;
                if rx.have_head == 4 && rx.want() > MAX_FRAME.min(buf.len() - VNET_HDR_LEN) {
                    tracing::warn!(
                        port = %self.name,
                        len = rx.want(),
                        "the peer announced a frame longer than {MAX_FRAME} bytes: disconnecting"
                    );
                    self.disconnect(rx);
                    return Some(Recv::Refused {
                        len: 0,
                        reason: DropReason::Oversize,
                    });
                }
            }
        }
    }

    /// Sends one frame (virtio-net header first, gathered from `iov`) to the peer, completing
    /// its offloads in software. Fails with `NotConnected` when there is no peer.
    pub fn write_frame(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut tx = lock(&self.tx);
        let Writer { conn, scratch } = &mut *tx;
        let Some(c) = conn.as_ref() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        // Flatten: the frame may come in pieces (a VLAN tag put back, a rewritten MAC).
        let mut flat = std::mem::take(scratch);
        flat.clear();
        iov.iter().for_each(|s| flat.extend_from_slice(s));
        let result = match flat.split_at_checked(VNET_HDR_LEN) {
            None => Err(io::Error::new(io::ErrorKind::InvalidData, "no vnet header")),
            Some((h, frame)) => {
                let hdr = VnetHdr::parse(h).unwrap_or_default();
                let mut seg = Vec::new();
                offload::complete(&hdr, frame, &mut seg, &mut |f| send_frame(c, f))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                    .and_then(|r| r)
            }
        };
        *scratch = flat;
        match result {
            Ok(()) => Ok(iov.iter().map(|s| s.len()).sum()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(e),
            Err(e) => {
                tracing::info!(port = %self.name, "the peer is gone ({e})");
                *conn = None;
                Err(io::ErrorKind::NotConnected.into())
            }
        }
    }
}

/// Sends the length and the frame with one `sendmsg`; a send that goes only part way is
/// finished (the stream's framing depends on it) or fails.
fn send_frame(c: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(io::Error::other)?
        .to_be_bytes();
    let total = 4 + frame.len();
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    let mut sent = 0;
    let deadline = Instant::now() + FINISH_WITHIN;
    while sent < total {
        let (a, b) = if sent < 4 {
            (&len[sent..], frame)
        } else {
            (&[][..], &frame[sent - 4..])
        };
        match sendmsg::<()>(
            c.as_raw_fd(),
            &[IoSlice::new(a), IoSlice::new(b)],
            &[],
            flags,
            None,
        ) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EAGAIN) if sent == 0 => {
                // Nothing of it left: the peer is slow, the frame is lost, framing intact.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "a frame stayed half sent",
                    ));
                }
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX).max(1);
                let mut fds = [PollFd::new(c.as_fd(), PollFlags::POLLOUT)];
                poll(&mut fds, PollTimeout::from(ms))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl AsFd for StreamPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poll.0.as_fd()
    }
}

impl Drop for StreamPort {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(port = %self.name, "removing {} failed: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const BUF: usize = VNET_HDR_LEN + MAX_FRAME;

    /// A directory of the test's own, removed on drop (after the port, declared before it).
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A port listening in a fresh directory (created by `listen`).
    fn port(tag: &str) -> (StreamPort, PathBuf, Dir) {
        let dir = std::env::temp_dir().join(format!("umv-stream-{}-{tag}", std::process::id()));
        let path = dir.join("p.sock");
        (StreamPort::listen("vm", &path).unwrap(), path, Dir(dir))
    }

    fn framed(f: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(f.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(f);
        v
    }

    /// Reads until a frame or a refusal, waiting a little for the peer's bytes.
    fn next(p: &StreamPort, buf: &mut [u8]) -> Recv {
        for _ in 0..200 {
            match p.read(buf) {
                Recv::Empty => std::thread::sleep(Duration::from_millis(5)),
                r => return r,
            }
        }
        Recv::Empty
    }

    #[test]
    fn frames_cross_both_ways_in_pieces_and_whole() {
        let (p, _path, _dir) = port("both");
        let mut peer = UnixStream::connect(p.path()).unwrap();
        let mut buf = vec![0u8; BUF];
        let f = [7u8; 60];
        let bytes = framed(&f);
        // Split inside the length and inside the body.
        peer.write_all(&bytes[..2]).unwrap();
        assert_eq!(
            next(&p, &mut buf),
            Recv::Empty,
            "half a length is nothing yet"
        );
        peer.write_all(&bytes[2..30]).unwrap();
        assert_eq!(p.read(&mut buf), Recv::Empty);
        peer.write_all(&bytes[30..]).unwrap();
        assert_eq!(next(&p, &mut buf), Recv::Frame(VNET_HDR_LEN + 60));
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 60], &f);
        // To the peer: the header is stripped, the length put in front.
        let out = [IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(&f)];
        p.write_frame(&out).unwrap();
        let mut got = vec![0u8; 64];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, bytes);
    }

    #[test]
    fn no_peer_means_not_connected_and_a_new_peer_replaces_only_a_gone_one() {
        let (p, _path, _dir) = port("reconnect");
        let out = [IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(&[1; 60])];
        let e = p.write_frame(&out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        let mut buf = vec![0u8; BUF];
        let mut old = UnixStream::connect(p.path()).unwrap();
        assert_eq!(p.read(&mut buf), Recv::Empty);
        assert!(p.connected());
        // A second peer while the first is connected: refused (closed), the first keeps going.
        let mut stray = UnixStream::connect(p.path()).unwrap();
        assert_eq!(next(&p, &mut buf), Recv::Empty);
        assert_eq!(stray.read(&mut [0u8; 1]).unwrap(), 0, "the stray is closed");
        old.write_all(&framed(&[2; 60])).unwrap();
        assert_eq!(next(&p, &mut buf), Recv::Frame(VNET_HDR_LEN + 60));
        // The first goes away: the next peer takes its place.
        drop(old);
        let mut new = UnixStream::connect(p.path()).unwrap();
        new.write_all(&framed(&[3; 60])).unwrap();
        assert_eq!(next(&p, &mut buf), Recv::Frame(VNET_HDR_LEN + 60));
        p.write_frame(&out).unwrap();
        let mut got = vec![0u8; 64];
        new.read_exact(&mut got).unwrap();
        drop(new);
        assert_eq!(next(&p, &mut buf), Recv::Empty);
        assert!(!p.connected(), "the peer's close is seen");
    }

    #[test]
    fn bad_lengths_are_refused_and_counted_never_a_panic() {
        let (p, _path, _dir) = port("bad");
        let mut buf = vec![0u8; BUF];
        let mut peer = UnixStream::connect(p.path()).unwrap();
        // Length 0: an empty frame, handed on as the runt it is; the stream stays in step.
        peer.write_all(&framed(&[])).unwrap();
        assert_eq!(next(&p, &mut buf), Recv::Frame(VNET_HDR_LEN));
        // Too long: refused, and the peer is dropped (no way to find the next frame).
        peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert_eq!(
            next(&p, &mut buf),
            Recv::Refused {
                len: 0,
                reason: DropReason::Oversize
            }
        );
        assert!(!p.connected());
        // Cut short by the peer's close: truncated.
        let mut peer = UnixStream::connect(p.path()).unwrap();
        peer.write_all(&framed(&[3; 100])[..50]).unwrap();
        drop(peer);
        assert_eq!(
            next(&p, &mut buf),
            Recv::Refused {
                len: 46,
                reason: DropReason::Truncated
            }
        );
    }

    #[test]
    fn a_live_socket_is_refused_a_stale_one_replaced_and_the_file_removed() {
        let (p, path, _dir) = port("stale");
        let e = StreamPort::listen("other", &path).unwrap_err();
        assert!(matches!(e, StreamError::InUse { .. }), "{e}");
        drop(p);
        assert!(!path.exists(), "removed on drop");
        // A socket file nobody listens on (a crashed engine's) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let q = StreamPort::listen("again", &path).unwrap();
        drop(q);
        assert!(!path.exists(), "removed on drop");
        std::fs::write(&path, b"not a socket").unwrap();
        let e = StreamPort::listen("file", &path).unwrap_err();
        assert!(matches!(e, StreamError::NotASocket { .. }), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
