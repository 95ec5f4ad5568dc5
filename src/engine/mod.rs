//! The data plane: one worker that moves frames between the parent's ring and the ports' TAPs,
//! carrying out `decide()`'s verdicts and counting every outcome.

pub mod counters;
pub mod forward;
pub mod run;
pub mod worker;
