//! Arbitrary bytes as an OCSP answer, a message's revocationValues or a CRL file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| etee_fuzz::revocation(data));
