//! The little HTTP/1.1 the engine serves (metrics over TCP, the Docker plugin over a Unix
//! socket): one request per connection, read with `httparse` under a size limit and a deadline,
//! a body only by `Content-Length`, and every answer with `Connection: close`.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

/// A request as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpRequest {
    pub method: String,
    /// The path, without any query.
    pub path: String,
    pub body: Vec<u8>,
}

/// Why no request was read: an answer to give (status, text), or nobody left to give it to.
#[derive(Debug)]
pub(crate) enum HttpError {
    Status(u16, String),
    Io(io::Error),
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> HttpError {
        HttpError::Io(e)
    }
}

/// The reason phrase of the statuses the engine answers with.
fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    }
}

/// Reads one request of at most `max` bytes (head and body) before `deadline`.
pub(crate) fn read_request(
    stream: &mut impl Read,
    max: usize,
    deadline: Instant,
) -> Result<HttpRequest, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<(String, String, usize, usize)> = None;
    loop {
        if head.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| {
                            std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .ok_or_else(|| HttpError::Status(400, "bad Content-Length".into()))
                        })
                        .transpose()?
                        .unwrap_or(0);
                    if n.saturating_add(len) > max {
                        return Err(HttpError::Status(413, "request too large".into()));
                    }
                    let path = req.path.unwrap_or_default();
                    let path = path.split('?').next().unwrap_or_default().to_string();
                    head = Some((req.method.unwrap_or_default().to_string(), path, n, len));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HttpError::Status(431, "too many headers".into()));
                }
                Err(e) => return Err(HttpError::Status(400, format!("bad request: {e}"))),
            }
        }
        if let Some((method, path, start, len)) = &head
            && buf.len() >= start + len
        {
            return Ok(HttpRequest {
                method: method.clone(),
                path: path.clone(),
                body: buf[*start..start + len].to_vec(),
            });
        }
        if head.is_none() && buf.len() >= max {
            return Err(HttpError::Status(431, "request too large".into()));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow").into());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a whole request",
            )
            .into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes one answer and flushes; `extra` is more header lines, each ending in `\r\n`.
pub(crate) fn respond(
    w: &mut impl Write,
    code: u16,
    content_type: &str,
    extra: &str,
    body: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        status_text(code),
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

/// Stops a server's thread blocked in accept(2): sets `stop`, shuts the listening socket down
/// (the blocked accept then fails with EINVAL and the thread sees `stop`) and joins it.
pub(crate) fn stop_accepting(
    stop: &AtomicBool,
    listener: &impl AsRawFd,
    thread: Option<JoinHandle<()>>,
) {
    stop.store(true, Ordering::SeqCst);
    let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    if let Some(h) = thread {
        let _ = h.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn read(bytes: &[u8], max: usize) -> Result<HttpRequest, HttpError> {
        read_request(
            &mut io::Cursor::new(bytes.to_vec()),
            max,
            Instant::now() + Duration::from_secs(5),
        )
    }

    #[test]
    fn a_request_with_a_body_and_no_content_type() {
        let r = read(
            b"POST /NetworkDriver.Leave HTTP/1.1\r\nHost: plugin\r\nContent-Length: 5\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n{}\n\n\nextra",
            8192,
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/NetworkDriver.Leave");
        assert_eq!(r.body, b"{}\n\n\n");
        let r = read(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", 8192).unwrap();
        assert_eq!((r.path.as_str(), r.body.len()), ("/metrics", 0));
    }

    #[test]
    fn bad_or_large_requests_get_a_status() {
        let status = |r| match r {
            Err(HttpError::Status(c, _)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(read(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 99)),
            400
        );
        assert_eq!(
            status(read(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n", 99)),
            413
        );
        assert_eq!(status(read(b"\x01\x02 / HTTP/1.1\r\n\r\n", 99)), 400);
        assert!(matches!(
            read(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n{", 99),
            Err(HttpError::Io(_))
        ));
    }
}
