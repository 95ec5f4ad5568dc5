//! The data plane: workers that move frames between a parent's ring and the ports' TAPs
//! carrying out `decide()`'s verdicts (deliver.rs, worker.rs), their counters, the ports' devices
//! (dev.rs, stream.rs), and the observers that record the frames they carry (observe.rs, in the
//! format of record.rs). The control plane ([`crate::control`]) starts and changes it.

pub(crate) mod adaptive;
pub(crate) mod admit;
pub mod counters;
pub mod deliver;
pub(crate) mod dev;
pub mod observe;
pub(crate) mod priority;
pub mod record;
pub(crate) mod stream;
pub(crate) mod worker;
