//! Arbitrary bytes through the in-memory and the streaming BER parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::ber(data));
