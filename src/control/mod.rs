//! The control plane: the daemon that runs the engine's parents and ports and changes them while
//! they forward (`daemon`), the checks before anything is created (`plan`), the watchers that
//! follow each port in its namespace (`watch`), the configuration file (`config`), port specs
//! ([`spec`]), `trace` ([`trace`]), metrics, counters as text and systemd (`metrics`, `report`,
//! `service`), the Docker network driver ([`docker`]); and its wire: the protocol ([`proto`]) between `umacvlan` commands and a running
//! engine, the daemon's socket server (`server`) and the commands' client ([`client`]).

pub mod client;
#[doc(hidden)]
pub mod config;
pub(crate) mod daemon;
pub mod docker;
pub(crate) mod http;
pub mod metrics;
pub(crate) mod plan;
pub mod proto;
pub(crate) mod report;
pub(crate) mod server;
pub(crate) mod service;
pub mod spec;
pub mod trace;
pub(crate) mod watch;

pub use client::{ClientError, request};
pub use server::{ControlServer, ServeError, ServeOptions, serve, serve_into, serve_with};

/// A request waiting for its answer: the socket server hands these to the daemon's control
/// loop, which applies the request and sends the response back on `reply`. A streaming request
/// ([`proto::Request::is_stream`]) may send many responses; the stream ends when the daemon
/// drops `reply`. `closed` disconnects when the client is gone (the server drops its end): a
/// stream's producer selects on it to stop. `raw`, given for a binary follow stream only, takes
/// everything after the stream's first response: chunks of frame records, then the end
/// ([`Chunk::end`](crate::engine::record::Chunk::end)); the server writes them as they are.
#[derive(Debug)]
pub struct Call {
    pub request: proto::Request,
    pub reply: crossbeam_channel::Sender<proto::Response>,
    pub closed: crossbeam_channel::Receiver<()>,
    pub raw: Option<crossbeam_channel::Sender<crate::engine::record::Chunk>>,
}

#[cfg(test)]
mod tests;
