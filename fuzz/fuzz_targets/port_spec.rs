//! Fuzz target: `umacvlan::fuzzing::port_spec` (see src/fuzzing.rs for what it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umacvlan::fuzzing::port_spec(data));
