//! Serving calls and looking at the running engine: follow streams, `trace` against the current
//! table, `stats`, and the exit counters.

use std::sync::Arc;

use crossbeam_channel::{Receiver, select};

use super::ports::effective_mac;
use super::{Daemon, err, internal};
use crate::control::Call;
use crate::control::proto::{
    ControlError, ErrorKind, FollowInterface, FollowRequest, MAX_SNAPLEN, ParentView, Reply,
    Request, Response, StatsView, VlanView,
};
use crate::engine::observe::Filter;
use crate::engine::record::{self, Chunk, FrameRecord};
use crate::engine::worker::WorkerGroup;
use crate::sys::ring::RingVersion;

impl Daemon {
    /// Answers one call: streams for `follow`, one response otherwise.
    pub(super) fn call(
        &mut self,
        Call {
            request,
            reply,
            closed,
            raw,
        }: Call,
    ) {
        match request {
            Request::Follow(f) => {
                if let Err(error) = self.follow(f, reply.clone(), closed, raw) {
                    let _ = reply.send(Response::Error { error });
                }
            }
            request => {
                let _ = reply.send(self.handle(request));
            }
        }
    }

    /// Starts a follow stream: registers a sink and hands its frames to the client from a
    /// thread of its own, so the control loop never waits for a slow client: as JSON
    /// `observation`s on `reply`, or (binary) as the workers' chunks of records on `raw`. The
    /// stream ends after `count` frames or when `closed` disconnects (the client is gone); the
    /// sink is then unregistered and workers stop emitting for it.
    fn follow(
        &self,
        f: FollowRequest,
        reply: crossbeam_channel::Sender<Response>,
        closed: Receiver<()>,
        raw: Option<crossbeam_channel::Sender<Chunk>>,
    ) -> Result<(), ControlError> {
        let raw = match (f.binary, raw) {
            (false, _) => None,
            (true, Some(raw)) => Some(raw),
            (true, None) => {
                return Err(err(
                    ErrorKind::BadRequest,
                    "a binary follow stream is served only on the control socket",
                ));
            }
        };
        let t = f.target.as_str();
        let (filter, parents): (Filter, Vec<&String>) = if t == "parent" || t == "drops" {
            let all = self.parents.keys().collect();
            let filter = if t == "drops" {
                Filter::Drops
            } else {
                Filter::All
            };
            (filter, all)
        } else if let Some((name, _)) = self.parents.get_key_value(t) {
            (Filter::Parent(t.to_string()), vec![name])
        } else if let Ok(e) = self.entry(t) {
            (Filter::Port(t.to_string()), vec![&e.parent])
        } else {
            return Err(err(
                ErrorKind::NoSuchLink,
                format!(
                    "nothing named {t} to follow (use parent, a parent's or a port's name, or drops)"
                ),
            ));
        };
        let mut interfaces = Vec::new();
        for p in parents {
            let run = &self.parents[p];
            interfaces.push(FollowInterface {
                name: p.clone(),
                parent: p.clone(),
                kind: "parent".into(),
                mac: run.config.mac,
            });
            for e in self.ports.iter().filter(|e| &e.parent == p) {
                interfaces.push(FollowInterface {
                    name: e.spec.name.clone(),
                    parent: p.clone(),
                    kind: e.spec.mode.name().into(),
                    mac: effective_mac(e),
                });
            }
        }
        let snaplen = match f.with_bytes {
            true => f
                .snaplen
                .filter(|n| *n > 0)
                .unwrap_or(MAX_SNAPLEN)
                .min(MAX_SNAPLEN) as usize,
            false => 0,
        };
        let (sink, rx) = self.observers.register(filter, snaplen, FOLLOW_BACKLOG);
        let _ = reply.send(Response::Ok {
            reply: Reply::Following { interfaces },
        });
        let observers = Arc::clone(&self.observers);
        let count = f.count.unwrap_or(u64::MAX);
        let relay = move || {
            // Decoding and relaying observations yields to the workers.
            if let Err(e) = crate::sys::yield_cpu_to_forwarding() {
                tracing::debug!("follow: could not lower the relay's priority: {e}");
            }
            let mut seen = 0u64;
            'stream: while seen < count {
                select! {
                    recv(rx) -> chunk => {
                        let Ok(mut chunk) = chunk else { break };
                        chunk.keep(count - seen);
                        if let Some(raw) = &raw {
                            seen += chunk.frames();
                            if raw.send(chunk).is_err() {
                                break;
                            }
                            continue;
                        }
                        for r in record::records(chunk.bytes()) {
                            let r = match FrameRecord::decode(r) {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!("follow: a worker's record: {e}");
                                    continue;
                                }
                            };
                            let frame = r.to_observed(snaplen > 0);
                            if reply.send(Response::Ok { reply: Reply::Observation { frame } }).is_err() {
                                break 'stream;
                            }
                            seen += 1;
                        }
                    }
                    recv(closed) -> _ => break,
                }
            }
            observers.unregister(sink.id);
            let lost = sink.lost.load(std::sync::atomic::Ordering::Relaxed);
            let end = Response::Ok {
                reply: Reply::FollowEnd { seen, lost },
            };
            match &raw {
                Some(raw) => {
                    if let Ok(end) = Chunk::end(&end) {
                        let _ = raw.send(end);
                    }
                }
                None => {
                    let _ = reply.send(end);
                }
            }
            if lost > 0 {
                tracing::info!(
                    seen,
                    lost,
                    "a follower ended; it read too slowly for {lost} frames"
                );
            } else {
                tracing::debug!(seen, "follow stream ended");
            }
        };
        std::thread::Builder::new()
            .name("umacvlan-follow".into())
            .spawn(relay)
            .map_err(internal)?;
        Ok(())
    }

    /// `trace` against the current table of the port's parent (or of the named parent).
    pub(super) fn trace(
        &self,
        t: &crate::control::proto::TraceRequest,
    ) -> Result<serde_json::Value, ControlError> {
        let parent = match (&t.parent, self.entry(&t.from)) {
            (Some(p), _) => p.clone(),
            (None, Ok(e)) => e.parent.clone(),
            (None, Err(_)) if self.parents.len() == 1 => {
                self.parents.keys().next().cloned().unwrap_or_default()
            }
            (None, Err(_)) if self.parents.is_empty() => {
                return Err(err(ErrorKind::NoSuchLink, "the engine has no parent yet"));
            }
            (None, Err(_)) => {
                let names: Vec<&str> = self.parents.keys().map(String::as_str).collect();
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the engine has several parents ({}): say which with --parent",
                        names.join(", ")
                    ),
                ));
            }
        };
        let run = self
            .parents
            .get(&parent)
            .ok_or_else(|| err(ErrorKind::NoSuchLink, format!("no parent named {parent}")))?;
        Ok(crate::control::trace::trace_json(
            &run.table,
            &t.from,
            &crate::control::trace::TraceFrame::from(t),
        )?)
    }

    /// `stats`: every port (as `link show`) and every parent's counters, in one snapshot.
    pub fn stats(&self) -> Result<StatsView, ControlError> {
        let parents = self
            .parents
            .iter()
            .map(|(name, run)| {
                let c = &run.counters.total();
                ParentView {
                    name: name.clone(),
                    vlan: run.config.vlan.as_ref().map(|v| VlanView {
                        lower: v.lower.clone(),
                        vid: v.vid,
                    }),
                    rx_packets: c.rx.packets.get(),
                    rx_bytes: c.rx.bytes.get(),
                    tx_packets: c.tx.packets.get(),
                    tx_bytes: c.tx.bytes.get(),
                    drops: c
                        .drops
                        .nonzero()
                        .into_iter()
                        .map(|(r, n)| (r.name().to_string(), n))
                        .collect(),
                    ring_packets: c.ring_packets.get(),
                    ring_drops: c.ring_drops.get(),
                    ring_freezes: c.ring_freezes.get(),
                    ring: self.ring_kind().to_string(),
                    ring_mode: ring_mode(c.ring_v2.get(), self.opts.workers).to_string(),
                    ring_mode_switches: c.ring_mode_switches.get(),
                    ring_steer_failures: c.ring_steer_failures.get(),
                    worker_priority: run
                        .worker
                        .as_ref()
                        .map_or_else(String::new, WorkerGroup::priority),
                    spin_us: self.opts.spin_us,
                    ports: self.ports.iter().filter(|e| e.parent == *name).count(),
                    bcqueuelen_used: run.table.bc_queue_len_used(),
                    // Delivered at once: nothing ever waits (see ParentView).
                    broadcast_queue_depth: 0,
                }
            })
            .collect();
        Ok(StatsView {
            ports: self.link_show(None)?,
            parents,
        })
    }

    /// The receive ring kind every parent runs: `v2`, `v3` or `auto`.
    fn ring_kind(&self) -> &'static str {
        match (self.opts.per_frame, self.opts.ring.version) {
            (Some(_), _) => "auto",
            (None, RingVersion::V2) => "v2",
            (None, RingVersion::V3) => "v3",
        }
    }

    /// Every port's and parent's counters, as `run` prints them on exit.
    pub fn counters_text(&self) -> String {
        let port_totals: Vec<_> = self.ports.iter().map(|e| e.counters.total()).collect();
        let parent_totals: Vec<_> = self.parents.values().map(|r| r.counters.total()).collect();
        let ports: Vec<_> = self
            .ports
            .iter()
            .zip(&port_totals)
            .map(|(e, c)| (e.spec.name.as_str(), e.spec.mode, c))
            .collect();
        let parents: Vec<_> = self
            .parents
            .keys()
            .zip(&parent_totals)
            .map(|(n, c)| (n.as_str(), c))
            .collect();
        crate::control::report::counters_text(&ports, &parents)
    }
}

/// The ring a parent's workers read now, from how many of its `workers` read a V2 ring.
fn ring_mode(v2_workers: u64, workers: usize) -> &'static str {
    match v2_workers {
        0 => "v3",
        n if n == workers as u64 => "v2",
        _ => "mixed",
    }
}

/// Chunks (one per worker batch) a follower may have waiting before the workers count new
/// frames as lost (its bytes in flight are bounded too: [`crate::engine::observe::SINK_BYTES`]).
const FOLLOW_BACKLOG: usize = 4096;

#[cfg(test)]
mod tests {
    use super::ring_mode;

    #[test]
    fn ring_mode_says_which_ring_the_workers_read() {
        assert_eq!(ring_mode(0, 1), "v3");
        assert_eq!(ring_mode(1, 1), "v2");
        assert_eq!(ring_mode(0, 4), "v3");
        assert_eq!(ring_mode(4, 4), "v2");
        assert_eq!(ring_mode(1, 4), "mixed");
        assert_eq!(ring_mode(3, 4), "mixed");
    }
}
