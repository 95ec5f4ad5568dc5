//! The control plane's wire: the protocol ([`proto`]) between `umacvlan` commands and a running
//! engine.

pub mod proto;

/// A request waiting for its answer: the socket server hands these to the daemon's control
/// loop, which applies the request and sends the response back on `reply`.
#[derive(Debug)]
pub struct Call {
    pub request: proto::Request,
    pub reply: crossbeam_channel::Sender<proto::Response>,
}
