//! The daemon's end of the control socket: accepts connections, reads request lines, hands each
//! valid request to the daemon as a [`Call`] and writes its response back.
//!
//! Everything here is defensive: a line longer than [`MAX_REQUEST`], bad JSON, an unknown
//! command or field, another protocol version, a client that disconnects mid-line or sends
//! nothing, are answered (where there is someone to answer) and never reach the daemon, crash it
//! or hold up other clients. Each connection has its own thread (at most
//! [`ServeOptions::max_connections`] at once), its own read and write timeouts, and requests on
//! one connection are answered in order.
//!
//! Who may talk to it: the socket file is root's, mode 0600, and every peer's credentials
//! (`SO_PEERCRED`) are checked: root always; with [`ServeOptions::allowed_group`] also members of
//! that group (its primary group, or a supplementary one as `/proc/PID/status` lists it), and
//! then the file is root:GROUP, mode 0660.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::socket::{UnixCredentials, getsockopt, sockopt};
use nix::unistd::Gid;

use super::Call;
use super::proto::{ControlError, Envelope, ErrorKind, MAX_REQUEST, Request, Response, VERSION};
use crate::engine::record::Chunk;

/// How the server behaves; [`Default`] is what [`serve`] uses.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Besides root, peers in this group may use the socket (the file becomes root:GROUP 0660).
    /// `None` (default): root only, file 0600.
    pub allowed_group: Option<Gid>,
    /// How long a request waits for the daemon's answer before the client gets `internal`.
    pub reply_timeout: Duration,
    /// A connection idle this long between requests (or stalled this long mid-line) is closed.
    pub idle_timeout: Duration,
    /// A client that does not read its answer for this long is dropped.
    pub write_timeout: Duration,
    /// Connections served at once; one more is answered with an error and closed.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            allowed_group: None,
            reply_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another umacvlan engine is listening on {}{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { path: PathBuf, pid: Option<i32> },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The listening control socket. Dropping it stops accepting, closes every open connection and
/// removes the socket file (if the file at that path is still the one it created).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// The bound socket file's (device, inode).
    ident: (u64, u64),
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<(u64, UnixStream)>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(2) (EINVAL on a shut-down listening socket).
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        if let Ok(conns) = self.conns.lock() {
            for (_, c) in conns.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        remove_if_same(&self.path, self.ident);
    }
}

/// Listens on `path` with the default [`ServeOptions`]; see [`serve_with`].
pub fn serve(path: &Path) -> Result<(ControlServer, Receiver<Call>), ServeError> {
    serve_with(path, ServeOptions::default())
}

/// Listens on `path`: creates its directory (0755) if missing, refuses if another engine answers
/// there, replaces a stale socket file, binds, restricts the file (0600, or 0660 with
/// `allowed_group`), and serves on background threads. Valid requests arrive on the returned
/// channel; the daemon answers each on its `reply` sender.
pub fn serve_with(
    path: &Path,
    opts: ServeOptions,
) -> Result<(ControlServer, Receiver<Call>), ServeError> {
    let (tx, rx) = crossbeam_channel::bounded(16);
    serve_into(path, opts, tx).map(|s| (s, rx))
}

/// [`serve_with`], delivering requests into a channel the caller made. Other producers (the
/// metrics server) can hold clones of the same sender, so the daemon serves them all from one
/// receiver, one request at a time.
pub fn serve_into(
    path: &Path,
    opts: ServeOptions,
    tx: Sender<Call>,
) -> Result<ControlServer, ServeError> {
    let listener = claim(path)?;
    let mode = if opts.allowed_group.is_some() {
        0o660
    } else {
        0o600
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))?;
    if let Some(g) = opts.allowed_group {
        nix::unistd::chown(path, None, Some(g))
            .map_err(|e| io_err("setting the group of", path)(e.into()))?;
    }
    let ident = ident(path)?;
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let listener = Arc::clone(&listener);
        let stop = Arc::clone(&stop);
        let conns = Arc::clone(&conns);
        std::thread::Builder::new()
            .name("umacvlan-control".into())
            .spawn(move || {
                crate::sys::caps::settle_or_warn();
                accept_loop(&listener, &stop, &conns, &tx, &opts)
            })
            .map_err(io_err("starting the accept thread for", path))?
    };
    Ok(ControlServer {
        path: path.to_path_buf(),
        ident,
        listener,
        stop,
        conns,
        acceptor: Some(acceptor),
    })
}

/// Binds a Unix socket at `path` for the engine: creates its directory (0755) if missing,
/// refuses if something answers there already, replaces a stale socket file, never any other
/// file.
pub(crate) fn claim(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err("creating the directory of", path))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(s) => {
                let pid = getsockopt(&s, sockopt::PeerCredentials)
                    .ok()
                    .map(|c| c.pid());
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                    pid,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing a stale control socket");
                fs::remove_file(path).map_err(io_err("removing the stale socket", path))?;
            }
            Err(e) => return Err(io_err("probing the existing socket", path)(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", path)(e)),
    }
    UnixListener::bind(path).map_err(io_err("binding", path))
}

/// The (device, inode) of the socket file at `path`: [`remove_if_same`] removes only that one.
pub(crate) fn ident(path: &Path) -> Result<(u64, u64), ServeError> {
    let m = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    Ok((m.dev(), m.ino()))
}

/// Removes the socket file at `path` if it is still the one of `ident` (a newer engine's is
/// left alone).
pub(crate) fn remove_if_same(path: &Path, ident: (u64, u64)) {
    if let Ok(m) = fs::symlink_metadata(path)
        && (m.dev(), m.ino()) == ident
    {
        let _ = fs::remove_file(path);
    }
}

type Conns = Arc<Mutex<Vec<(u64, UnixStream)>>>;

fn accept_loop(
    listener: &UnixListener,
    stop: &AtomicBool,
    conns: &Conns,
    calls: &Sender<Call>,
    opts: &ServeOptions,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut next_id = 0u64;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                // EMFILE and friends: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_write_timeout(Some(opts.write_timeout));
        if let Err(msg) = admit(&stream, opts.allowed_group) {
            tracing::warn!("control socket: {msg}");
            let _ = write_response(&mut stream, &error(ErrorKind::PermissionDenied, msg));
            continue;
        }
        if live.load(Ordering::SeqCst) >= opts.max_connections {
            let msg = format!(
                "too many control connections ({}); try again",
                opts.max_connections
            );
            let _ = write_response(&mut stream, &error(ErrorKind::Internal, msg));
            continue;
        }
        next_id += 1;
        let id = next_id;
        if let Ok(c) = stream.try_clone()
            && let Ok(mut v) = conns.lock()
        {
            v.push((id, c));
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (live2, conns2, calls, opts2) = (
            Arc::clone(&live),
            Arc::clone(conns),
            calls.clone(),
            opts.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("umacvlan-control-{id}"))
            .spawn(move || {
                serve_connection(stream, &calls, &opts2);
                if let Ok(mut v) = conns2.lock() {
                    v.retain(|(i, _)| *i != id);
                }
                live2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!("control socket: cannot start a connection thread: {e}");
            live.fetch_sub(1, Ordering::SeqCst);
            if let Ok(mut v) = conns.lock() {
                v.retain(|(i, _)| *i != id);
            }
        }
    }
}

/// Root always; members of `group` when given.
fn admit(stream: &UnixStream, group: Option<Gid>) -> Result<(), String> {
    let cred = getsockopt(stream, sockopt::PeerCredentials)
        .map_err(|e| format!("refusing a peer whose credentials cannot be read: {e}"))?;
    if peer_allowed(&cred, group, supplementary_groups) {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} (pid {}) may not use the control socket (root only{})",
            cred.uid(),
            cred.pid(),
            group.map(|g| format!(", or group {g}")).unwrap_or_default()
        ))
    }
}

/// The peer-credential rule, with the supplementary-group lookup passed in (for tests).
pub fn peer_allowed(
    cred: &UnixCredentials,
    group: Option<Gid>,
    supplementary: impl Fn(i32) -> Vec<u32>,
) -> bool {
    if cred.uid() == 0 {
        return true;
    }
    match group {
        None => false,
        Some(g) => cred.gid() == g.as_raw() || supplementary(cred.pid()).contains(&g.as_raw()),
    }
}

/// The `Groups:` line of `/proc/PID/status`.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        error: ControlError::new(kind, message),
    }
}

fn write_response(w: &mut impl Write, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_string(r).map_err(io::Error::other)?;
    line.push('\n');
    w.write_all(line.as_bytes())?;
    w.flush()
}

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete line, without its newline.
    Complete(Vec<u8>),
    /// Longer than the limit: the rest was not read.
    TooLong,
    /// End of input after these bytes (empty: a clean close between requests).
    Eof(Vec<u8>),
}

/// Reads one newline-terminated line of at most `max` bytes (newline excluded).
pub(crate) fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Line::Complete(buf))
    } else if buf.len() > max {
        Ok(Line::TooLong)
    } else {
        Ok(Line::Eof(buf))
    }
}

/// Parses one request line: the version is checked first, so that a client of another version
/// learns that rather than about a command this build does not know.
pub fn parse_request(line: &[u8]) -> Result<Envelope, ControlError> {
    let bad = |m: String| ControlError::new(ErrorKind::BadRequest, m);
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let version = match v.get("version") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(_) => return Err(bad("version must be a number".into())),
        None if v.is_object() => return Err(bad("missing field `version`".into())),
        None => return Err(bad("a request is a JSON object".into())),
    };
    if version != Some(u64::from(VERSION)) {
        return Err(ControlError::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "protocol version {} is not supported: this engine speaks version {VERSION}",
                v["version"]
            ),
        ));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

fn serve_connection(stream: UnixStream, calls: &Sender<Call>, opts: &ServeOptions) {
    let _ = stream.set_read_timeout(Some(opts.idle_timeout));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader, MAX_REQUEST) {
            Ok(l) => l,
            // Idle too long, reset, or shut down by the server's Drop.
            Err(_) => return,
        };
        let line = match line {
            Line::Complete(l) => l,
            Line::Eof(l) if l.iter().all(u8::is_ascii_whitespace) => return,
            Line::Eof(_) => {
                let e = error(ErrorKind::BadRequest, "the request ended without a newline");
                let _ = write_response(&mut writer, &e);
                return;
            }
            Line::TooLong => {
                let e = error(
                    ErrorKind::BadRequest,
                    format!("request line longer than {MAX_REQUEST} bytes"),
                );
                let _ = write_response(&mut writer, &e);
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let response = match parse_request(&line) {
            Ok(env) if env.request.is_stream() => {
                if serve_stream(env, calls, opts.reply_timeout, &mut writer).is_err() {
                    return;
                }
                continue;
            }
            Ok(env) => dispatch(env, calls, opts.reply_timeout),
            Err(e) => Response::Error { error: e },
        };
        if write_response(&mut writer, &response).is_err() {
            return;
        }
    }
}

/// Responses a stream may have waiting for a slow client; the engine counts what it cannot
/// hand over as lost.
const STREAM_BACKLOG: usize = 256;
/// How often a quiet stream checks whether its client is still there.
const HANGUP_POLL: Duration = Duration::from_millis(200);

/// Whether the peer has closed (or shut down its sending side): a zero-byte peek.
fn hung_up(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut b = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut b,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0) | Err(nix::errno::Errno::ECONNRESET)
    )
}

/// A streaming request: writes every response the engine sends until it drops its end (Ok), or
/// until the client is gone (Err: the connection is closed). Leaving drops `closed`'s sender
/// and the reply receiver, which tells the engine to stop. A binary follow stream's body comes
/// on a channel of its own ([`Call::raw`]) and is written as it is.
fn serve_stream(
    env: Envelope,
    calls: &Sender<Call>,
    timeout: Duration,
    writer: &mut UnixStream,
) -> io::Result<()> {
    let (tx, rx) = crossbeam_channel::bounded(STREAM_BACKLOG);
    let (closed_tx, closed) = crossbeam_channel::bounded::<()>(0);
    let binary = matches!(&env.request, Request::Follow(f) if f.binary);
    let (raw_tx, raw_rx) = crossbeam_channel::bounded::<Chunk>(STREAM_BACKLOG);
    let first = send_call(
        Call {
            request: env.request,
            reply: tx,
            closed,
            raw: binary.then_some(raw_tx),
        },
        &rx,
        calls,
        timeout,
    );
    let failed = matches!(first, Response::Error { .. });
    write_response(writer, &first)?;
    if failed {
        return Ok(());
    }
    if binary {
        drop(rx);
        bulk_send_buffer(writer);
        return yielding(|| relay(&raw_rx, writer, closed_tx, |w, c| w.write_all(c.bytes())));
    }
    yielding(|| relay(&rx, writer, closed_tx, write_response))
}

/// Runs a stream's `relay` on a thread of its own at the lowest CPU priority, so that writing
/// what a follower asked for never takes a CPU from forwarding; this connection's thread keeps
/// its priority for the requests that come after the stream (raising it back would need
/// CAP_SYS_NICE).
fn yielding(relay: impl FnOnce() -> io::Result<()> + Send) -> io::Result<()> {
    std::thread::scope(|s| {
        let writer = std::thread::Builder::new()
            .name("umacvlan-stream".into())
            .spawn_scoped(s, || {
                if let Err(e) = crate::sys::yield_cpu_to_forwarding() {
                    tracing::debug!("control stream: could not lower its priority: {e}");
                }
                relay()
            })?;
        writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the stream's writer panicked")))
    })
}

/// The send buffer of a binary stream's connection: room for many chunks, so that the writing
/// thread and the client do not wake each other for every one.
const BULK_SNDBUF: usize = 4 * 1024 * 1024;

/// Raises the connection's send buffer to [`BULK_SNDBUF`] (past `net.core.wmem_max` when the
/// engine may: CAP_NET_ADMIN); the default stays when neither works.
fn bulk_send_buffer(s: &UnixStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(s, sockopt::SndBufForce, &BULK_SNDBUF).is_err() {
        let _ = setsockopt(s, sockopt::SndBuf, &BULK_SNDBUF);
    }
}

/// Writes what `rx` brings until its sender is gone. Every [`HANGUP_POLL`], busy or quiet, it
/// looks whether the client has shut down its sending side: a client that ends a stream early
/// (`capture` on Ctrl-C) does that and keeps reading. The engine is then told to stop
/// (`closed` is dropped) and ends the stream as it would at its count, with `follow-end` and
/// what was lost, which is still written; a client that is gone altogether makes a write fail.
fn relay<T>(
    rx: &Receiver<T>,
    writer: &mut UnixStream,
    closed: Sender<()>,
    mut write: impl FnMut(&mut UnixStream, &T) -> io::Result<()>,
) -> io::Result<()> {
    let mut closed = Some(closed);
    let mut looked = Instant::now();
    loop {
        match rx.recv_timeout(HANGUP_POLL) {
            Ok(r) => write(writer, &r)?,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if closed.is_some() && looked.elapsed() >= HANGUP_POLL {
            looked = Instant::now();
            if hung_up(writer) {
                closed = None;
            }
        }
    }
}

fn dispatch(env: Envelope, calls: &Sender<Call>, timeout: Duration) -> Response {
    ask(calls, env.request, timeout)
}

/// Hands a request that is not a stream to the engine and waits (up to `timeout`) for its
/// answer: what the control socket does with each line, for the engine's other front ends.
pub(crate) fn ask(calls: &Sender<Call>, request: Request, timeout: Duration) -> Response {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (_closed_tx, closed) = crossbeam_channel::bounded::<()>(0);
    let call = Call {
        request,
        reply: tx,
        closed,
        raw: None,
    };
    send_call(call, &rx, calls, timeout)
}

/// Hands `call` to the engine and waits for its (first) response.
fn send_call(
    call: Call,
    rx: &Receiver<Response>,
    calls: &Sender<Call>,
    timeout: Duration,
) -> Response {
    let deadline = Instant::now() + timeout;
    let late = || {
        error(
            ErrorKind::Internal,
            format!(
                "the engine did not answer within {} s",
                timeout.as_secs_f64()
            ),
        )
    };
    match calls.send_deadline(call, deadline) {
        Ok(()) => {}
        Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => return late(),
        Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
            return error(ErrorKind::Internal, "the engine is shutting down");
        }
    }
    match rx.recv_deadline(deadline) {
        Ok(r) => r,
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => late(),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => error(
            ErrorKind::Internal,
            "the engine dropped the request without answering",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let mut r = io::Cursor::new(b"abc\ndef".to_vec());
        assert_eq!(
            read_line(&mut r, 8).unwrap(),
            Line::Complete(b"abc".to_vec())
        );
        assert_eq!(read_line(&mut r, 8).unwrap(), Line::Eof(b"def".to_vec()));
        assert_eq!(read_line(&mut r, 8).unwrap(), Line::Eof(vec![]));
        let mut r = io::Cursor::new(b"123456789\n".to_vec());
        assert_eq!(read_line(&mut r, 8).unwrap(), Line::TooLong);
        let mut r = io::Cursor::new(b"12345678\n".to_vec());
        assert_eq!(
            read_line(&mut r, 8).unwrap(),
            Line::Complete(b"12345678".to_vec())
        );
    }

    #[test]
    fn version_is_checked_before_the_command() {
        let e = parse_request(br#"{"version":2,"request":{"cmd":"warp"}}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
        assert!(
            e.message.contains('2') && e.message.contains("version 1"),
            "{e}"
        );
        let e = parse_request(br#"{"version":1,"request":{"cmd":"warp"}}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("warp"), "{e}");
        let e = parse_request(b"[1,2]").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = parse_request(b"{nope").unwrap_err();
        assert!(e.message.starts_with("not JSON"), "{e}");
        assert!(parse_request(br#"{"version":1,"request":{"cmd":"reload"}}"#).is_ok());
    }

    #[test]
    fn peers_root_or_the_allowed_group() {
        let cred = |uid, gid| {
            let mut c = libc::ucred {
                pid: 1,
                uid: 0,
                gid: 0,
            };
            c.uid = uid;
            c.gid = gid;
            UnixCredentials::from(c)
        };
        let none = |_| Vec::new();
        assert!(peer_allowed(&cred(0, 0), None, none));
        assert!(!peer_allowed(&cred(1000, 1000), None, none));
        let g = Some(Gid::from_raw(50));
        assert!(peer_allowed(&cred(1000, 50), g, none));
        assert!(!peer_allowed(&cred(1000, 1000), g, none));
        assert!(peer_allowed(&cred(1000, 1000), g, |_| vec![4, 50]));
    }
}
