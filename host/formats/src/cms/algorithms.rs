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

/// RFC 3394 AES key wrap (`wrap`) or unwrap of `input` under `kek` (16, 24 or 32 bytes),
/// through an EVP context, which wipes its key schedule when freed (the low-level
/// `AES_KEY` would stay in memory, and its first round key is the KEK itself). `None`
/// for another KEK length, a length RFC 3394 does not allow, or an integrity failure.
pub(crate) fn aes_key_wrap(
    kek: &[u8],
    input: &[u8],
    wrap: bool,
) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::{CipherCtx, CipherCtxFlags};
    let cipher = match kek.len() {
        16 => Cipher::aes_128_wrap(),
        24 => Cipher::aes_192_wrap(),
        32 => Cipher::aes_256_wrap(),
        _ => return None,
    };
    let expected = if wrap {
        input.len() + 8
    } else {
        if input.len() < 24 || !input.len().is_multiple_of(8) {
            return None;
        }
        input.len() - 8
    };
    let mut ctx = CipherCtx::new().ok()?;
    ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
    if wrap {
        ctx.encrypt_init(Some(cipher), Some(kek), None).ok()?;
    } else {
        ctx.decrypt_init(Some(cipher), Some(kek), None).ok()?;
    }
    // Room for what the context may write (the input's length, 8 more and a block).
    let mut out = zeroize::Zeroizing::new(vec![0u8; input.len() + 8 + 16]);
    let n = ctx.cipher_update(input, Some(&mut out[..])).ok()?;
    let m = ctx.cipher_final(&mut out[n..]).ok()?;
    (n + m == expected).then(|| {
        out.truncate(n + m);
        out
    })
}
