//! Fuzz target: `umacvlan::fuzzing::control_request` (see src/fuzzing.rs for what it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umacvlan::fuzzing::control_request(data));
