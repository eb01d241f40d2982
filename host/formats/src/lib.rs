//! ETEE formats: BER/CMS sealing and unsealing as the official eHealth libraries do it.
#![forbid(unsafe_code)]

pub mod ber;
pub mod cert;
pub mod keys;
pub mod verdict;
pub mod oid;
pub mod trust;
