//! Arbitrary bytes as the REST (ETKDepot) and KeyDepot JSON bodies; what reads is written
//! and read back, and the proofs are checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::services::services_json(data));
