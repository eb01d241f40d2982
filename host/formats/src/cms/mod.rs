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

/// A work buffer for plaintext, wiped when dropped as far as it was ever filled (the
/// holder says so with [`PlainBuf::filled`]): wiping all of a 32 KiB buffer would cost
/// more than unsealing a small message, and the rest never held anything.
pub(crate) struct PlainBuf {
    buf: Vec<u8>,
    high: usize,
}

impl PlainBuf {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            buf: vec![0; len],
            high: 0,
        }
    }

    /// The first `n` bytes hold (or held) data.
    pub(crate) fn filled(&mut self, n: usize) {
        self.high = self.high.max(n.min(self.buf.len()));
    }

    /// Zeroes what was filled (what `Drop` does).
    fn wipe(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf[..self.high]);
    }
}

impl std::ops::Deref for PlainBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PlainBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod plain_buf_tests {
    use super::PlainBuf;

    #[test]
    fn what_was_filled_is_wiped() {
        let mut b = PlainBuf::new(64);
        b[..10].copy_from_slice(b"plaintext!");
        b.filled(10);
        b.filled(4); // a later, shorter fill does not lower the mark
        b[40] = 7; // never declared filled: not wiped (nothing is there in real use)
        b.wipe();
        assert!(b[..10].iter().all(|&x| x == 0));
        assert_eq!(b[40], 7);
        b.filled(1000); // a mark cannot pass the end
        b.wipe();
        assert!(b.iter().all(|&x| x == 0));
    }
}
