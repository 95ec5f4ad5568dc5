//! The command's end of the control socket: one request, one response.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{ControlError, Envelope, Reply, Request, Response, VERSION};
use super::server::{Line, read_line};

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
    let io_err = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
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
    let io_err = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (stream, sent) = connect_and_send(path, r, Some(timeout))?;
    let mut reader = BufReader::new(&stream);
    let protocol = |message: String| ClientError::Protocol {
        path: path.to_path_buf(),
        message,
    };
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

/// Sends a streaming request ([`Request::is_stream`]) and calls `each` with every reply until
/// the engine ends the stream (returned: its last reply, normally `follow-end`) or `each`
/// returns `Ok(false)` (then `None`: the connection is closed, which stops the engine's side).
pub fn stream(
    path: &Path,
    r: Request,
    mut each: impl FnMut(&Reply) -> io::Result<bool>,
) -> Result<Option<Reply>, ClientError> {
    let io_err = |source: io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let protocol = |message: String| ClientError::Protocol {
        path: path.to_path_buf(),
        message,
    };
    let (stream, sent) = connect_and_send(path, r, None)?;
    let mut reader = BufReader::new(&stream);
    loop {
        let answer = match read_line(&mut reader, MAX_RESPONSE) {
            Ok(Line::Complete(l)) => l,
            Ok(Line::TooLong) => {
                return Err(protocol(format!(
                    "a response longer than {MAX_RESPONSE} bytes"
                )));
            }
            Ok(Line::Eof(_)) => {
                sent.map_err(io_err)?;
                return Err(protocol("it closed the connection mid-stream".into()));
            }
            Err(e) => {
                sent.map_err(io_err)?;
                return Err(io_err(e));
            }
        };
        let reply = match serde_json::from_slice::<Response>(&answer) {
            Ok(Response::Ok { reply }) => reply,
            Ok(Response::Error { error }) => return Err(ClientError::Daemon(error)),
            Err(e) => return Err(protocol(e.to_string())),
        };
        if matches!(reply, Reply::FollowEnd { .. }) {
            return Ok(Some(reply));
        }
        if !each(&reply).map_err(io_err)? {
            return Ok(None);
        }
    }
}
