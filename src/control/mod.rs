//! The control plane's wire: the protocol ([`proto`]) between `umacvlan` commands and a running
//! engine, the daemon's socket server ([`server`]) and the commands' client ([`client`]).

pub mod client;
pub mod proto;
pub mod server;

pub use client::{ClientError, request};
pub use server::{ControlServer, ServeError, ServeOptions, serve, serve_into, serve_with};

/// A request waiting for its answer: the socket server hands these to the daemon's control
/// loop, which applies the request and sends the response back on `reply`.
#[derive(Debug)]
pub struct Call {
    pub request: proto::Request,
    pub reply: crossbeam_channel::Sender<proto::Response>,
}

#[cfg(test)]
mod tests;
