//! Arbitrary bytes as a SOAP envelope: read as the platform reads requests (ETKDepot,
//! KGSS) and as clients read answers and faults; what reads is written and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::services::soap(data));
