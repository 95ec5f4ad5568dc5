//! The control socket against hostile and careless clients, with a fake daemon answering the
//! calls. No root needed: every socket lives in its own temporary directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{self, ClientError};
use super::proto::*;
use super::server::{ServeError, ServeOptions, serve, serve_with};
use super::{Call, ControlServer};

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("umv-ctl-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
    /// A socket path in a subdirectory that does not exist yet.
    fn sock(&self) -> PathBuf {
        self.0.join("run").join("umacvlan.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn view(name: &str) -> LinkView {
    LinkView {
        name: name.into(),
        ifindex: Some(7),
        address: "02:00:00:00:00:01".parse().unwrap(),
        mtu: 1500,
        parent: "eth0".into(),
        netns: None,
        ifname: None,
        owner: None,
        up: true,
        lower_up: true,
        forwarding: true,
        refused: None,
        promisc: false,
        allmulti: false,
        mode: crate::forward::Mode::Bridge,
        nopromisc: false,
        nodst: false,
        bcqueuelen: 1000,
        usedbcqueuelen: 1000,
        bclim: 1,
        macaddr: vec![],
        stats: LinkStats::default(),
        kind: Default::default(),
        path: None,
        trust_guest_mac: false,
        persist: false,
    }
}

/// The fake daemon: show answers one link named after the filter, del of `slow` never answers,
/// del of `drop` drops the reply, other dels succeed, everything else is `invalid-argument`.
fn fake_daemon(calls: crossbeam_channel::Receiver<Call>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut n = 0;
        let mut parked = Vec::new();
        for call in calls {
            n += 1;
            let resp = match &call.request {
                Request::LinkShow(f) => Response::Ok {
                    reply: Reply::Links {
                        links: vec![view(f.name.as_deref().unwrap_or("all"))],
                    },
                },
                Request::LinkDel(d) if d.name == "slow" => {
                    parked.push(call);
                    continue;
                }
                Request::LinkDel(d) if d.name == "drop" => continue,
                Request::LinkDel(_) => Response::Ok { reply: Reply::Done },
                Request::Follow(f) if f.target != "nothing" => {
                    fake_follow(f.clone(), call);
                    continue;
                }
                _ => Response::Error {
                    error: ControlError::new(ErrorKind::InvalidArgument, "not here"),
                },
            };
            let _ = call.reply.send(resp);
        }
        n
    })
}

/// Targets whose fake follow stream saw its client go (`closed` disconnected).
static FOLLOW_CLOSED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn frame(n: u64) -> ObservedFrame {
    ObservedFrame {
        time_ns: n,
        parent: "p0".into(),
        from: "parent".into(),
        src: None,
        dst: None,
        vlan: None,
        len: 60,
        receivers: vec!["c0".into()],
        failed: vec![],
        to_wire: false,
        reason: None,
        rule: None,
        bytes: None,
    }
}

/// A follow stream: `following`, then an observation every 10 ms until `count` or the client
/// is gone, then `follow-end` (lost = 0).
fn fake_follow(f: FollowRequest, call: Call) {
    std::thread::spawn(move || {
        let ok = |reply| Response::Ok { reply };
        let _ = call.reply.send(ok(Reply::Following { interfaces: vec![] }));
        let mut seen = 0;
        while seen < f.count.unwrap_or(u64::MAX) {
            crossbeam_channel::select! {
                recv(call.closed) -> _ => {
                    FOLLOW_CLOSED.lock().unwrap().push(f.target.clone());
                    return;
                }
                default(Duration::from_millis(10)) => {
                    let frame = frame(seen);
                    if call.reply.send(ok(Reply::Observation { frame })).is_err() {
                        return;
                    }
                    seen += 1;
                }
            }
        }
        let _ = call.reply.send(ok(Reply::FollowEnd { seen, lost: 0 }));
    });
}

fn start(
    tag: &str,
    opts: ServeOptions,
) -> (TempDir, ControlServer, std::thread::JoinHandle<usize>) {
    let dir = TempDir::new(tag);
    let (server, calls) = serve_with(&dir.sock(), opts).expect("serve");
    let daemon = fake_daemon(calls);
    (dir, server, daemon)
}

/// Sends raw bytes, reads one response line (None: the server closed without answering).
fn raw(path: &Path, bytes: &[u8]) -> Option<Response> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    (!line.is_empty()).then(|| serde_json::from_str(&line).expect(&line))
}

fn error_of(r: Option<Response>) -> ControlError {
    match r {
        Some(Response::Error { error }) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn show(path: &Path, name: &str) -> Vec<LinkView> {
    match client::request(
        path,
        Request::LinkShow(LinkFilter {
            name: Some(name.into()),
        }),
    ) {
        Ok(Reply::Links { links }) => links,
        other => panic!("{other:?}"),
    }
}

#[test]
fn control_serves_requests_in_order_on_one_connection() {
    let (dir, _server, _d) = start("order", ServeOptions::default());
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    let mut lines = String::new();
    for n in ["a", "b", "c"] {
        lines.push_str(&format!(
            "{{\"version\":1,\"request\":{{\"cmd\":\"link-show\",\"name\":\"{n}\"}}}}\n"
        ));
    }
    lines.push_str("\n{garbage\n");
    lines.push_str(r#"{"version":1,"request":{"cmd":"link-del","name":"x"}}"#);
    lines.push('\n');
    s.write_all(lines.as_bytes()).unwrap();
    let mut r = BufReader::new(&s);
    for n in ["a", "b", "c"] {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["reply"]["links"][0]["name"], n);
    }
    // Garbage is answered and the connection lives on; the blank line was skipped.
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["error"]["kind"], "bad-request", "{l}");
    l.clear();
    r.read_line(&mut l).unwrap();
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    assert_eq!(v["reply"]["kind"], "done", "{l}");
}

#[test]
fn control_refuses_bad_requests_with_serde_messages() {
    let (dir, _server, _d) = start("bad", ServeOptions::default());
    let p = dir.sock();
    let e = error_of(raw(&p, b"not json at all\n"));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("not JSON"), "{e}");
    let e = error_of(raw(
        &p,
        b"{\"version\":1,\"request\":{\"cmd\":\"link-explode\"}}\n",
    ));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("link-explode"), "{e}");
    let e = error_of(raw(
        &p,
        b"{\"version\":1,\"request\":{\"cmd\":\"link-show\",\"colour\":\"red\"}}\n",
    ));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("colour"), "{e}");
    let e = error_of(raw(
        &p,
        b"{\"version\":7,\"request\":{\"cmd\":\"teleport\"}}\n",
    ));
    assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
    assert!(
        e.message.contains('7') && e.message.contains("version 1"),
        "{e}"
    );
    let e = error_of(raw(&p, b"\xff\xfe\x00binary\n"));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    // The daemon still answers.
    assert_eq!(show(&p, "after")[0].name, "after");
}

#[test]
fn control_truncated_and_oversized_requests() {
    let (dir, _server, _d) = start("trunc", ServeOptions::default());
    let p = dir.sock();
    // No newline, then the client closes its side: refused, not waited for.
    let mut s = UnixStream::connect(&p).unwrap();
    s.write_all(br#"{"version":1,"request":{"cmd":"link-sh"#)
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("without a newline"), "{out}");
    // Half a request, then gone entirely.
    let _ = UnixStream::connect(&p).unwrap().write_all(b"{\"vers");
    // One byte too many: refused and closed.
    let s = UnixStream::connect(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut big = vec![b'a'; MAX_REQUEST + 1];
        big.push(b'\n');
        let _ = w.write_all(&big);
    });
    let mut r = BufReader::new(&s);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    let e = match serde_json::from_str::<Response>(&l).unwrap() {
        Response::Error { error } => error,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("longer than 65536"), "{e}");
    l.clear();
    assert_eq!(r.read_line(&mut l).unwrap_or(0), 0, "closed after: {l}");
    writer.join().unwrap();
    // Exactly the limit is fine (and then bad JSON, but read whole).
    let mut ok = vec![b' '; MAX_REQUEST - 2];
    ok.extend_from_slice(b"{}\n");
    let e = error_of(raw(&p, &ok));
    assert!(e.message.contains("missing field `version`"), "{e}");
    assert_eq!(show(&p, "still")[0].name, "still");
}

#[test]
fn control_silent_and_slow_clients_do_not_block_others() {
    let opts = ServeOptions {
        reply_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let (dir, _server, _d) = start("silent", opts);
    let p = dir.sock();
    let _silent = UnixStream::connect(&p).unwrap();
    let mut half = UnixStream::connect(&p).unwrap();
    half.write_all(b"{\"version\":1,").unwrap();
    // A request the daemon never answers times out as `internal` ...
    let slow = std::thread::spawn({
        let p = p.clone();
        move || {
            client::request(
                &p,
                Request::LinkDel(LinkName {
                    name: "slow".into(),
                }),
            )
        }
    });
    // ... while others are served at once.
    assert_eq!(show(&p, "quick")[0].name, "quick");
    match slow.join().unwrap() {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::Internal);
            assert!(e.message.contains("did not answer"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match client::request(
        &p,
        Request::LinkDel(LinkName {
            name: "drop".into(),
        }),
    ) {
        Err(ClientError::Daemon(e)) => assert!(e.message.contains("without answering"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn control_many_concurrent_clients() {
    let (dir, _server, _d) = start("many", ServeOptions::default());
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let p = dir.sock();
            std::thread::spawn(move || {
                for j in 0..5 {
                    let name = format!("c{i}-{j}");
                    assert_eq!(show(&p, &name)[0].name, name);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn control_socket_file_lifecycle() {
    let dir = TempDir::new("life");
    let p = dir.sock();
    // A stale socket (bound, then its owner gone) is replaced.
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&p).unwrap());
    assert!(p.exists());
    let (server, calls) = serve(&p).expect("stale socket replaced");
    let _d = fake_daemon(calls);
    let meta = std::fs::metadata(&p).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dmode = std::fs::metadata(p.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dmode & 0o777, 0o755);
    // A live one is not.
    match serve(&p) {
        Err(e @ ServeError::InUse { .. }) => {
            let m = e.to_string();
            assert!(m.contains("another umacvlan engine is listening on"), "{m}");
            assert!(m.contains(&format!("pid {}", std::process::id())), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(show(&p, "alive")[0].name, "alive");
    drop(server);
    assert!(!p.exists(), "socket file removed on drop");
    match client::request(&p, Request::Reload(Empty {})) {
        Err(e @ ClientError::NotListening { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("no umacvlan engine is listening on") && m.contains("--control PATH"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Not a socket: never removed.
    std::fs::write(&p, b"precious").unwrap();
    match serve(&p) {
        Err(e @ ServeError::NotASocket { .. }) => assert!(e.to_string().contains("not a socket")),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
}

#[test]
fn control_drop_leaves_a_replaced_file_alone() {
    let dir = TempDir::new("replaced");
    let p = dir.sock();
    let (server, calls) = serve(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"someone else's").unwrap();
    drop(server);
    assert_eq!(std::fs::read(&p).unwrap(), b"someone else's");
    // Every sender is gone once the server is: the daemon's loop ends.
    assert!(calls.recv_timeout(Duration::from_secs(5)).is_err());
}

#[test]
fn control_drop_closes_open_connections() {
    let (dir, server, daemon) = start("close", ServeOptions::default());
    let s = UnixStream::connect(dir.sock()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(show(&dir.sock(), "x").len(), 1);
    drop(server);
    let mut buf = [0u8; 16];
    assert_eq!((&s).read(&mut buf).unwrap(), 0);
    assert_eq!(daemon.join().unwrap(), 1, "the daemon's loop ended");
}

#[test]
fn control_client_maps_daemon_errors() {
    let (dir, _server, _d) = start("errs", ServeOptions::default());
    match client::request(&dir.sock(), Request::Reload(Empty {})) {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert_eq!(e.to_string(), "not here");
        }
        other => panic!("{other:?}"),
    }
}

fn follow(target: &str, count: Option<u64>) -> Request {
    Request::Follow(FollowRequest {
        target: target.into(),
        count,
        ..FollowRequest::default()
    })
}

#[test]
fn control_streams_until_count_then_serves_the_next_request() {
    let (dir, _server, _d) = start("stream", ServeOptions::default());
    let mut frames = Vec::new();
    let end = client::stream(
        &dir.sock(),
        follow("c0", Some(5)),
        |_| {},
        |r| {
            if let Reply::Observation { frame } = r {
                frames.push(frame.time_ns);
            }
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(frames, [0, 1, 2, 3, 4]);
    assert_eq!(end, Some(Reply::FollowEnd { seen: 5, lost: 0 }));
    // On one connection: the stream, then an ordinary request.
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(
        b"{\"version\":1,\"request\":{\"cmd\":\"follow\",\"target\":\"x\",\"count\":2}}\n\
          {\"version\":1,\"request\":{\"cmd\":\"link-show\",\"name\":\"after\"}}\n",
    )
    .unwrap();
    let mut r = BufReader::new(&s);
    let kinds: Vec<String> = (0..5)
        .map(|_| {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            v["reply"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "following",
            "observation",
            "observation",
            "follow-end",
            "links"
        ]
    );
    // A refused stream is one error line.
    match client::stream(&dir.sock(), follow("nothing", None), |_| {}, |_| Ok(true)) {
        Err(ClientError::Daemon(e)) => assert_eq!(e.kind, ErrorKind::InvalidArgument),
        other => panic!("{other:?}"),
    }
}

#[test]
fn control_stream_stops_when_the_client_disconnects() {
    let (dir, _server, _d) = start("hangup", ServeOptions::default());
    // A client that reads two observations and goes away.
    let mut n = 0;
    let end = client::stream(
        &dir.sock(),
        follow("leaver", None),
        |_| {},
        |r| {
            n += usize::from(matches!(r, Reply::Observation { .. }));
            Ok(n < 2)
        },
    )
    .unwrap();
    assert_eq!(end, None);
    // A client that sends the request and closes without reading anything.
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(b"{\"version\":1,\"request\":{\"cmd\":\"follow\",\"target\":\"silent\"}}\n")
        .unwrap();
    drop(s);
    let stopped = |t: &str| FOLLOW_CLOSED.lock().unwrap().iter().any(|x| x == t);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(stopped("leaver") && stopped("silent")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the streams did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The server still answers.
    assert_eq!(show(&dir.sock(), "still")[0].name, "still");
}
