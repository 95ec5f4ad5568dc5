//! The control plane's wire: the protocol ([`proto`]) between `umacvlan` commands and a running
//! engine, the daemon's socket server ([`server`]) and the commands' client ([`client`]).

pub mod client;
pub mod proto;
pub mod server;

pub use client::{ClientError, request};
pub use server::{ControlServer, ServeError, ServeOptions, serve, serve_into, serve_with};

/// A request waiting for its answer: the socket server hands these to the daemon's control
/// loop, which applies the request and sends the response back on `reply`. A streaming request
/// ([`proto::Request::is_stream`]) may send many responses; the stream ends when the daemon
/// drops `reply`. `closed` disconnects when the client is gone (the server drops its end): a
/// stream's producer selects on it to stop.
#[derive(Debug)]
pub struct Call {
    pub request: proto::Request,
    pub reply: crossbeam_channel::Sender<proto::Response>,
    pub closed: crossbeam_channel::Receiver<()>,
}

#[cfg(test)]
mod tests;
