//! A run of length-prefixed request frames into one custody core.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::custody::custody(data));
