//! Fuzz target: `umacvlan::fuzzing::frame_decide` (see src/fuzzing.rs for what it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umacvlan::fuzzing::frame_decide(data));
