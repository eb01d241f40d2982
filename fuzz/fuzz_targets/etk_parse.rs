//! Arbitrary bytes as an ETK (BER or Base64): parse, then validate what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::etk(data));
