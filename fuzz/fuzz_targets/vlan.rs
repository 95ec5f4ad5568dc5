//! Fuzz target: `umacvlan::fuzzing::vlan` (see src/fuzzing.rs for what it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umacvlan::fuzzing::vlan(data));
