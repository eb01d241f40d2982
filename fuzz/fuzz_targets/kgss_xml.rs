//! Arbitrary bytes as an inner (sealed) KGSS content document; what reads is written and
//! read back, and the access rule is evaluated over what a request names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::services::kgss_xml(data));
