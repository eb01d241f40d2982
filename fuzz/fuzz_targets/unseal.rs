//! Arbitrary bytes as a sealed message, opened with a key ring and with a KEK.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::unseal(data));
