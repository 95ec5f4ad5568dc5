//! The command's end of the control socket: one request, one response.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{ControlError, Envelope, Reply, Request, Response, VERSION};
use super::server::{Line, read_line};
use crate::engine::record::{FrameRecord, MAX_RECORD};

/// The longest response line a client reads (a `link show` of every port fits many times over).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// How long a client waits for its answer (the daemon itself gives up after 10 s).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no umacvlan engine is listening on {} (start one with `umacvlan run ...` or pass --control PATH)",
        path.display()
    )]
    NotListening { path: PathBuf },
    #[error(
        "permission denied connecting to {} (the control socket is root's: run as root)",
        path.display()
    )]
    PermissionDenied { path: PathBuf },
    #[error("talking to the engine on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The answer was not a response line this build understands.
    #[error("the engine on {} answered something unexpected: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(ControlError),
}

impl ClientError {
    /// An I/O failure on the connection to the engine at `path`.
    fn io(path: &Path) -> impl Fn(io::Error) -> ClientError + Copy + '_ {
        move |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An answer from the engine at `path` that this build does not understand.
    fn protocol(path: &Path) -> impl Fn(String) -> ClientError + Copy + '_ {
        move |message| ClientError::Protocol {
            path: path.to_path_buf(),
            message,
        }
    }
}

/// Sends `r` to the engine listening on `path` and returns its reply.
pub fn request(path: &Path, r: Request) -> Result<Reply, ClientError> {
    request_timeout(path, r, TIMEOUT)
}

/// Connects to the engine and sends one request line. `read_timeout` bounds every later read
/// (`None`: a stream, which may be quiet for long). The send's own result is returned apart:
/// a daemon that refuses the peer answers at once and closes, so the caller reads its answer
/// even if the write failed.
fn connect_and_send(
    path: &Path,
    r: Request,
    read_timeout: Option<Duration>,
) -> Result<(UnixStream, io::Result<()>), ClientError> {
    let io_err = ClientError::io(path);
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotListening {
            path: path.to_path_buf(),
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: path.to_path_buf(),
        },
        _ => io_err(e),
    })?;
    stream.set_read_timeout(read_timeout).map_err(io_err)?;
    stream
        .set_write_timeout(Some(read_timeout.unwrap_or(TIMEOUT)))
        .map_err(io_err)?;
    let env = Envelope {
        version: VERSION,
        request: r,
    };
    let mut line = serde_json::to_string(&env).map_err(|e| io_err(io::Error::other(e)))?;
    line.push('\n');
    let sent = stream.write_all(line.as_bytes());
    Ok((stream, sent))
}

/// [`request`] with another timeout for connecting, sending and reading the answer.
pub fn request_timeout(path: &Path, r: Request, timeout: Duration) -> Result<Reply, ClientError> {
    let io_err = ClientError::io(path);
    let (stream, sent) = connect_and_send(path, r, Some(timeout))?;
    let mut reader = BufReader::new(&stream);
    let protocol = ClientError::protocol(path);
    let answer = match read_line(&mut reader, MAX_RESPONSE) {
        Ok(Line::Complete(l)) => l,
        Ok(Line::TooLong) => {
            return Err(protocol(format!(
                "a response longer than {MAX_RESPONSE} bytes"
            )));
        }
        Ok(Line::Eof(_)) => {
            sent.map_err(io_err)?;
            return Err(protocol(
                "it closed the connection without answering".into(),
            ));
        }
        Err(e) => {
            sent.map_err(io_err)?;
            return Err(io_err(e));
        }
    };
    match serde_json::from_slice::<Response>(&answer) {
        Ok(Response::Ok { reply }) => Ok(reply),
        Ok(Response::Error { error }) => Err(ClientError::Daemon(error)),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// Reads one response line of a stream: its reply, the daemon's error, or why there is none.
/// `sent` is the request's own send: when the engine closed without answering, its error says
/// more.
fn read_reply(
    reader: &mut impl BufRead,
    path: &Path,
    sent: &io::Result<()>,
) -> Result<Reply, ClientError> {
    let io_err = ClientError::io(path);
    let protocol = ClientError::protocol(path);
    let send_failed = || {
        sent.as_ref()
            .err()
            .map(|e| io_err(io::Error::new(e.kind(), e.to_string())))
    };
    let answer = match read_line(reader, MAX_RESPONSE) {
        Ok(Line::Complete(l)) => l,
        Ok(Line::TooLong) => {
            return Err(protocol(format!(
                "a response longer than {MAX_RESPONSE} bytes"
            )));
        }
        Ok(Line::Eof(_)) => {
            return Err(send_failed()
                .unwrap_or_else(|| protocol("it closed the connection mid-stream".into())));
        }
        Err(e) => return Err(send_failed().unwrap_or_else(|| io_err(e))),
    };
    match serde_json::from_slice::<Response>(&answer) {
        Ok(Response::Ok { reply }) => Ok(reply),
        Ok(Response::Error { error }) => Err(ClientError::Daemon(error)),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// Sends a streaming request ([`Request::is_stream`]) and calls `each` with every reply until
/// the engine ends the stream (returned: its last reply, normally `follow-end`) or `each`
/// returns `Ok(false)` (then `None`: the connection is closed, which stops the engine's side).
/// `opened` gets the connection once the request is sent: shutting down its writing side
/// (`Shutdown::Write`) asks the engine to end the stream early, with its `follow-end`.
pub fn stream(
    path: &Path,
    r: Request,
    opened: impl FnOnce(&UnixStream),
    mut each: impl FnMut(&Reply) -> io::Result<bool>,
) -> Result<Option<Reply>, ClientError> {
    let (stream, sent) = connect_and_send(path, r, None)?;
    opened(&stream);
    let mut reader = BufReader::new(&stream);
    loop {
        let reply = read_reply(&mut reader, path, &sent)?;
        if matches!(reply, Reply::FollowEnd { .. }) {
            return Ok(Some(reply));
        }
        if !each(&reply).map_err(ClientError::io(path))? {
            return Ok(None);
        }
    }
}

/// How much of a binary follow stream a client reads at once.
const FRAMES_BUFFER: usize = 1024 * 1024;

/// A binary follow stream (a `follow` request with `binary`, see [`crate::engine::record`]): `start`
/// gets the first reply (`following`), `each` every frame record and whether more bytes are
/// already buffered (when not, the caller should flush its output). Returns the `follow-end`
/// reply, or `None` when a callback returned `Ok(false)` (the connection is closed). `opened`
/// is as for [`stream`].
pub fn follow_frames(
    path: &Path,
    r: Request,
    opened: impl FnOnce(&UnixStream),
    start: impl FnOnce(&Reply) -> io::Result<bool>,
    mut each: impl FnMut(&FrameRecord<'_>, bool) -> io::Result<bool>,
) -> Result<Option<Reply>, ClientError> {
    let io_err = ClientError::io(path);
    let protocol = ClientError::protocol(path);
    let (stream, sent) = connect_and_send(path, r, None)?;
    opened(&stream);
    let mut reader = BufReader::with_capacity(FRAMES_BUFFER, &stream);
    if !start(&read_reply(&mut reader, path, &sent)?).map_err(io_err)? {
        return Ok(None);
    }
    let mut scratch = Vec::new();
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => protocol("it closed the connection mid-stream".into()),
            _ => io_err(e),
        })?;
        let n = u32::from_le_bytes(len) as usize;
        if n == 0 {
            return read_reply(&mut reader, path, &sent).map(Some);
        }
        if n > MAX_RECORD {
            return Err(protocol(format!("a frame record of {n} bytes")));
        }
        // Straight from the read buffer when the whole record is there, else through `scratch`.
        let buffered = reader.fill_buf().map_err(io_err)?;
        let go_on = if buffered.len() >= n {
            let r = FrameRecord::decode(&buffered[..n]).map_err(|e| protocol(e.to_string()))?;
            let more = buffered.len() > n;
            let go_on = each(&r, more).map_err(io_err)?;
            drop(r);
            reader.consume(n);
            go_on
        } else {
            scratch.resize(n, 0);
            reader.read_exact(&mut scratch).map_err(io_err)?;
            let r = FrameRecord::decode(&scratch).map_err(|e| protocol(e.to_string()))?;
            each(&r, !reader.buffer().is_empty()).map_err(io_err)?
        };
        if !go_on {
            return Ok(None);
        }
    }
}
