//! CMS sealing and unsealing (spec §1, §2): SignedData ∘ EnvelopedData ∘ SignedData.
//!
//! Both directions stream: [`seal::seal`] reads the plaintext once and writes the three
//! layers as it goes; [`unseal::unseal`] parses the outer layer, decrypts the middle one
//! and verifies the inner one in a single pass, holding only small structures in memory.

pub mod algorithms;
pub mod hashing;
pub mod seal;
pub mod signer;
pub mod timestamp;
pub mod unseal;

pub use seal::{seal, Kek, Recipient, SealError, SealOptions};
pub use unseal::{
    addressees, unseal, unseal_to_vec, AddresseeRef, Addressees, ExpectedSigner, Sender,
    UnsealError, UnsealOptions, Unsealed,
};

/// Size of the primitive OCTET STRING chunks in our BER output (as the official library).
pub const CHUNK: usize = 1000;

/// Limit on any one structure held in memory while unsealing (certificate sets,
/// SignerInfos, RecipientInfos): far above real messages, far below memory trouble.
pub const MAX_STRUCTURE: u64 = 4 * 1024 * 1024;

/// Elements taken from one CMS CertificateSet (a message layer's, an ETK's, a timestamp
/// token's): a signer's path has a few certificates and an ETK four or five, but a set
/// of small certificates within [`MAX_STRUCTURE`] can hold thousands, each parsed,
/// fingerprinted and offered to path building.
pub const MAX_CERTIFICATES: usize = 64;

/// The elements of a CMS CertificateSet, refused as a whole
/// ([`BerErrorKind::TooMany`](crate::ber::BerErrorKind::TooMany)) before any is parsed
/// when there are more than [`MAX_CERTIFICATES`].
pub(crate) fn certificate_set<'a>(
    set: &crate::ber::slice::Tlv<'a>,
) -> Result<Vec<crate::ber::slice::Tlv<'a>>, crate::ber::BerError> {
    let mut elements = Vec::new();
    for element in set.children() {
        if elements.len() == MAX_CERTIFICATES {
            return Err(set.err(crate::ber::BerErrorKind::TooMany {
                limit: MAX_CERTIFICATES as u64,
            }));
        }
        elements.push(element?);
    }
    Ok(elements)
}
