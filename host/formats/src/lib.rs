//! ETEE formats: BER/CMS sealing and unsealing as the official eHealth libraries do it.
#![forbid(unsafe_code)]

pub mod ber;
