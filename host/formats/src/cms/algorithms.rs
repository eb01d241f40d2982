//! Digest, signature and cipher algorithms as they appear in messages.

use crate::ber::slice::{parse_exact, Tlv};
use crate::ber::{tag, BerError};
use crate::oid;
use openssl::hash::Hasher;
use openssl::symm::Cipher;

pub use crate::digest::Digest;

/// Parses an AlgorithmIdentifier: (OID content octets, parameters if any).
pub fn algorithm_identifier<'a>(t: &Tlv<'a>) -> Result<(&'a [u8], Option<Tlv<'a>>), BerError> {
    let mut s = t.seq()?;
    let id = s.next(tag::OID)?.content;
    let params = if s.has_more()? { Some(s.any()?) } else { None };
    Ok((id, params))
}

/// Parses the DER of an AlgorithmIdentifier.
pub fn algorithm_identifier_der(der: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), BerError> {
    let t = parse_exact(der)?;
    let (id, params) = algorithm_identifier(&t)?;
    Ok((id.to_vec(), params.map(|p| p.raw.to_vec())))
}

/// Several running digests over the same bytes: a SignedData's content is hashed with
/// every algorithm its `digestAlgorithms` announces, before the SignerInfo says which
/// one it used.
pub struct MultiHasher {
    hashers: Vec<(Digest, Hasher)>,
}

impl MultiHasher {
    pub fn new(algs: &[Digest]) -> Self {
        let mut hashers = Vec::new();
        for &a in algs {
            if hashers.iter().all(|(d, _)| *d != a) {
                if let Ok(h) = Hasher::new(a.md()) {
                    hashers.push((a, h));
                }
            }
        }
        Self { hashers }
    }
    pub fn update(&mut self, data: &[u8]) {
        for (_, h) in &mut self.hashers {
            // Hasher::update only fails on an OpenSSL internal error.
            let _ = h.update(data);
        }
    }
    pub fn finish(mut self) -> Vec<(Digest, Vec<u8>)> {
        self.hashers
            .iter_mut()
            .filter_map(|(d, h)| h.finish().ok().map(|v| (*d, v.to_vec())))
            .collect()
    }
}

/// Content-encryption algorithms we can decrypt; only AES-128-CBC is authorised by policy.
pub fn content_cipher(o: &[u8]) -> Option<Cipher> {
    const CAMELLIA_128: &[u8] = &[
        0x2a, 0x83, 0x08, 0x8c, 0x9a, 0x4b, 0x3d, 0x01, 0x01, 0x01, 0x02,
    ];
    const CAMELLIA_192: &[u8] = &[
        0x2a, 0x83, 0x08, 0x8c, 0x9a, 0x4b, 0x3d, 0x01, 0x01, 0x01, 0x03,
    ];
    const CAMELLIA_256: &[u8] = &[
        0x2a, 0x83, 0x08, 0x8c, 0x9a, 0x4b, 0x3d, 0x01, 0x01, 0x01, 0x04,
    ];
    const AES192_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x16];
    const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    const DES_EDE3_CBC: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x03, 0x07];
    Some(match o {
        x if x == oid::AES128_CBC => Cipher::aes_128_cbc(),
        AES192_CBC => Cipher::aes_192_cbc(),
        AES256_CBC => Cipher::aes_256_cbc(),
        CAMELLIA_128 => Cipher::camellia_128_cbc(),
        CAMELLIA_192 => Cipher::camellia_192_cbc(),
        CAMELLIA_256 => Cipher::camellia_256_cbc(),
        DES_EDE3_CBC => Cipher::des_ede3_cbc(),
        _ => return None,
    })
}
