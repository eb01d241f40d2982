//! ETEE formats: BER/CMS sealing and unsealing as the official eHealth libraries do it.
//!
//! Pure code: bytes (or streams) in, bytes (or streams) out. Private-key operations go
//! through [`keys::PrivateKeyOps`], so keys may live in a keystore file or in an HSM.
#![forbid(unsafe_code)]

pub mod ber;
pub mod cert;
pub mod cms;
pub mod digest;
pub mod etk;
pub mod identity;
pub mod keys;
pub mod keystore;
pub mod oid;
pub mod trust;
pub mod verdict;
