//! Fuzz target: `umacvlan::fuzzing::config_file` (see src/fuzzing.rs for what it asserts).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umacvlan::fuzzing::config_file(data));
