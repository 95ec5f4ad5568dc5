//! Prometheus metrics: `umacvlan run --metrics-listen ADDR:PORT` serves `GET /metrics` in the
//! OpenMetrics text format.
//!
//! The server holds no counters of its own. Each scrape sends a [`Request::Stats`] [`Call`] on
//! the same channel the control socket feeds, so the daemon's control loop answers it like any
//! `umacvlan stats`, from one consistent snapshot; a [`Collector`] then turns that snapshot into
//! const metrics (node_exporter's netdev names with an `umacvlan_` prefix). Nothing sits on the
//! forwarding path.
//!
//! HTTP is one thread with `std::net::TcpListener` and `httparse`: one connection at a time,
//! read and write timeouts, a request-size limit, `Connection: close` on every answer, 404 for
//! other paths and 405 for other methods.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::control::Call;
use crate::control::http::{HttpError, read_request, respond, stop_accepting};
use crate::control::proto::{Empty, Reply, Request, Response, StatsView};
use crate::forward::{DropReason, Mode};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The longest request (line and headers) the server reads; longer ones get 431 and are closed.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a connection may take to send its request, and to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the daemon's snapshot before answering 503.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// A snapshot as a [`Collector`]: registered in a fresh [`Registry`] per scrape.
#[derive(Debug)]
struct Snapshot(StatsView);

/// The labels of a port's series.
fn port_labels<'a>(port: &'a str, parent: &'a str, mode: &'a str) -> [(&'static str, &'a str); 3] {
    [("port", port), ("parent", parent), ("mode", mode)]
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        // Port counters, from the port's side as `ip -s link` (receive: delivered to the port).
        type Pick = fn(&crate::control::proto::LinkStats) -> u64;
        let port_counters: [(&str, Option<Unit>, &str, Pick); 4] = [
            (
                "umacvlan_port_receive",
                Some(Unit::Bytes),
                "Bytes the engine delivered to the port",
                |c| c.rx_bytes,
            ),
            (
                "umacvlan_port_receive_packets",
                None,
                "Frames the engine delivered to the port",
                |c| c.rx_packets,
            ),
            (
                "umacvlan_port_transmit",
                Some(Unit::Bytes),
                "Bytes the port sent into the engine",
                |c| c.tx_bytes,
            ),
            (
                "umacvlan_port_transmit_packets",
                None,
                "Frames the port sent into the engine",
                |c| c.tx_packets,
            ),
        ];
        for (name, unit, help, pick) in &port_counters {
            let mut m = enc.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &s.ports {
                let labels = port_labels(&p.name, &p.parent, p.mode.name());
                ConstCounter::new(pick(&p.stats)).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "umacvlan_port_forwarding",
                "1 if the port is in the forwarding table (up, and its MAC not refused), else 0",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in &s.ports {
                let labels = port_labels(&p.name, &p.parent, p.mode.name());
                ConstGauge::new(i64::from(p.forwarding)).encode(m.encode_family(&labels)?)?;
            }
        }
        // Parent counters: receive from the wire, transmit to it.
        type PickParent = fn(&crate::control::proto::ParentView) -> u64;
        let parent_counters: [(&str, Option<Unit>, &str, PickParent); 9] = [
            (
                "umacvlan_parent_receive",
                Some(Unit::Bytes),
                "Bytes the engine read from the parent's ring",
                |p| p.rx_bytes,
            ),
            (
                "umacvlan_parent_receive_packets",
                None,
                "Frames the engine read from the parent's ring",
                |p| p.rx_packets,
            ),
            (
                "umacvlan_parent_transmit",
                Some(Unit::Bytes),
                "Bytes the engine sent to the wire",
                |p| p.tx_bytes,
            ),
            (
                "umacvlan_parent_transmit_packets",
                None,
                "Frames the engine sent to the wire",
                |p| p.tx_packets,
            ),
            (
                "umacvlan_ring_packets",
                None,
                "Frames the kernel queued on the parent's AF_PACKET ring (PACKET_STATISTICS tp_packets)",
                |p| p.ring_packets,
            ),
            (
                "umacvlan_ring_drops",
                None,
                "Frames the kernel dropped because the parent's ring was full (tp_drops)",
                |p| p.ring_drops,
            ),
            (
                "umacvlan_ring_freezes",
                None,
                "Times the kernel froze the parent's ring queue (tp_freeze_q_cnt)",
                |p| p.ring_freezes,
            ),
            (
                "umacvlan_ring_mode_switches",
                None,
                "Switches between the V2 and the V3 receive ring (--ring auto), both ways",
                |p| p.ring_mode_switches,
            ),
            (
                "umacvlan_ring_steer_failures",
                None,
                "Switches between the receive rings that failed (--ring auto; the mode stayed)",
                |p| p.ring_steer_failures,
            ),
        ];
        for (name, unit, help, pick) in &parent_counters {
            let mut m = enc.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &s.parents {
                ConstCounter::new(pick(p)).encode(m.encode_family(&[("parent", &*p.name)])?)?;
            }
        }
        {
            // Every reason for every port and parent, zeros included, so that rate() works
            // from a series' first appearance.
            let mut m = enc.encode_descriptor(
                "umacvlan_drops",
                "Frames dropped, by stable reason; kind=\"port\": frames the port sent and copies \
                 for it that were lost; kind=\"parent\": frames from the wire (port = the parent's name)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            let rows = s
                .ports
                .iter()
                .map(|p| (&p.name, "port", &p.stats.drops))
                .chain(s.parents.iter().map(|p| (&p.name, "parent", &p.drops)));
            for (name, kind, drops) in rows {
                for r in DropReason::ALL {
                    let n = drops.get(r.name()).copied().unwrap_or(0);
                    let labels = [
                        ("port", name.as_str()),
                        ("reason", r.name()),
                        ("kind", kind),
                    ];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        type Gauge = fn(&crate::control::proto::ParentView) -> i64;
        let parent_gauges: [(&str, &str, Gauge); 3] = [
            (
                "umacvlan_ring_reading_v2",
                "1 while the parent's worker reads its TPACKET_V2 ring (--ring v2, or auto in \
                 per-frame mode), 0 while it reads its V3 ring",
                |p| i64::from(p.ring_mode == "v2"),
            ),
            (
                "umacvlan_broadcast_queue_depth",
                "Frames waiting in the broadcast queue: always 0, umacvlan delivers queued \
                 broadcast and multicast frames at once",
                |p| i64::try_from(p.broadcast_queue_depth).unwrap_or(i64::MAX),
            ),
            (
                "umacvlan_broadcast_queue_length",
                "The broadcast queue's length in use (usedbcqueuelen: the largest bcqueuelen of the parent's ports)",
                |p| i64::from(p.bcqueuelen_used),
            ),
        ];
        for (name, help, pick) in &parent_gauges {
            let mut m = enc.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in &s.parents {
                ConstGauge::new(pick(p)).encode(m.encode_family(&[("parent", &*p.name)])?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "umacvlan_parent_vlan",
                "The VID of a parent the engine emulates as an 802.1Q sub-interface of its lower \
                 device (no device of its name exists); no series for a real device",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in &s.parents {
                if let Some(v) = &p.vlan {
                    let labels = [("parent", &*p.name), ("lower", &*v.lower)];
                    ConstGauge::new(i64::from(v.vid)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "umacvlan_ports",
                "Ports by parent and mode (every mode listed, zeros included)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in &s.parents {
                for mode in Mode::ALL {
                    let n = s
                        .ports
                        .iter()
                        .filter(|x| x.parent == p.name && x.mode == mode)
                        .count();
                    let labels = [("parent", &*p.name), ("mode", mode.name())];
                    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                        .encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "umacvlan_build_info",
                "Always 1; the version of the running engine is in the label",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A snapshot in the OpenMetrics text format, `# EOF` included.
pub fn encode(stats: &StatsView) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(stats.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Asks the daemon for a snapshot over `calls`.
pub fn snapshot(calls: &Sender<Call>, timeout: Duration) -> Result<StatsView, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let call = Call {
        request: Request::Stats(Empty {}),
        reply: tx,
        // Not a stream: nothing to stop early.
        closed: crossbeam_channel::never(),
        raw: None,
    };
    calls
        .send_timeout(call, timeout)
        .map_err(|_| "the engine did not take the request".to_string())?;
    match rx.recv_timeout(timeout) {
        Ok(Response::Ok {
            reply: Reply::Stats { stats },
        }) => Ok(stats),
        Ok(Response::Ok { reply }) => Err(format!("unexpected answer {reply:?}")),
        Ok(Response::Error { error }) => Err(error.message),
        Err(_) => Err("the engine did not answer in time".into()),
    }
}

/// The listening metrics server. Dropping it stops it (the thread finishes the connection it
/// is serving, bounded by [`IO_TIMEOUT`]).
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `/metrics` on one thread, asking `calls` for each snapshot.
    pub fn start(addr: SocketAddr, calls: Sender<Call>) -> io::Result<MetricsServer> {
        let listener = Arc::new(TcpListener::bind(addr)?);
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (listener, stop) = (Arc::clone(&listener), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("umacvlan-metrics".into())
                .spawn(move || {
                    crate::sys::caps::settle_or_warn();
                    loop {
                        let accepted = listener.accept();
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        match accepted {
                            Ok((stream, peer)) => {
                                if let Err(e) = serve_one(stream, &calls) {
                                    tracing::debug!(%peer, "metrics: {e}");
                                }
                            }
                            Err(e) => {
                                tracing::warn!("metrics: accept: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                })?
        };
        Ok(MetricsServer {
            addr,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        stop_accepting(&self.stop, &*self.listener, self.thread.take());
    }
}

/// Serves one connection: one request, one answer, then close.
fn serve_one(mut stream: TcpStream, calls: &Sender<Call>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let text = "text/plain; charset=utf-8";
    let req = match read_request(&mut stream, MAX_REQUEST, Instant::now() + IO_TIMEOUT) {
        Ok(r) => r,
        Err(HttpError::Status(code, msg)) => {
            return respond(&mut stream, code, text, "", &format!("{msg}\n"));
        }
        Err(HttpError::Io(e)) => return Err(e),
    };
    if req.path != "/metrics" {
        return respond(&mut stream, 404, text, "", "not found: try /metrics\n");
    }
    if req.method != "GET" {
        return respond(&mut stream, 405, text, "Allow: GET\r\n", "only GET\n");
    }
    match snapshot(calls, SNAPSHOT_TIMEOUT) {
        Ok(stats) => respond(&mut stream, 200, CONTENT_TYPE, "", &encode(&stats)),
        Err(e) => respond(&mut stream, 503, text, "", &format!("{e}\n")),
    }
}

#[cfg(test)]
pub(crate) mod tests;
