//! The data plane and the engine around it: workers that move frames between a parent's ring
//! and the ports' TAPs carrying out `decide()`'s verdicts (forward.rs, worker.rs), the checks
//! that run before anything is created (plan.rs), the watchers that follow each port in its
//! namespace (watch.rs), and the daemon that adds, removes and changes ports while it forwards
//! (daemon.rs).

pub mod adaptive;
pub mod admit;
pub mod counters;
pub mod daemon;
pub mod dev;
pub mod forward;
pub mod observe;
pub mod plan;
pub mod stream;
pub mod watch;
pub mod worker;
