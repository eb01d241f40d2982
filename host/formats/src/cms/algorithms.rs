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

#[cfg(test)]
mod tests {
    use super::aes_key_wrap;

    /// RFC 3394 §4.1 and §4.3 (128-bit data under a 128- and a 256-bit KEK); other KEK
    /// lengths are refused.
    #[test]
    fn kek_wrap_follows_rfc_3394() {
        let wrap = |kek: &[u8], data: &[u8]| aes_key_wrap(kek, data, true).map(|w| w.to_vec());
        let data = hex::decode("00112233445566778899AABBCCDDEEFF").unwrap();
        let kek128 = hex::decode("000102030405060708090A0B0C0D0E0F").unwrap();
        let kek256 =
            hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
                .unwrap();
        assert_eq!(
            hex::encode_upper(wrap(&kek128, &data).unwrap()),
            "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"
        );
        assert_eq!(
            hex::encode_upper(wrap(&kek256, &data).unwrap()),
            "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"
        );
        assert_eq!(wrap(&[0; 15], &data), None);
        // And back; a changed byte or a length RFC 3394 does not allow gives nothing.
        let mut wrapped = wrap(&kek256, &data).unwrap();
        assert_eq!(
            aes_key_wrap(&kek256, &wrapped, false).unwrap()[..],
            data[..]
        );
        assert!(
            aes_key_wrap(&kek128, &wrapped, false).is_none(),
            "another key"
        );
        wrapped[5] ^= 1;
        assert!(aes_key_wrap(&kek256, &wrapped, false).is_none());
        assert!(aes_key_wrap(&kek256, &wrapped[..16], false).is_none());
        assert!(aes_key_wrap(&kek256, &wrapped[..23], false).is_none());
    }

    /// The unwrap (EVP) opens what the low-level RFC 3394 wrap made, for each AES key
    /// size, and nothing else: a changed byte, another KEK or a bad length give `None`.
    #[test]
    fn kek_unwrap_matches_rfc_3394_and_refuses_the_rest() {
        let unwrap =
            |kek: &[u8], wrapped: &[u8]| aes_key_wrap(kek, wrapped, false).map(|k| k.to_vec());
        let secret = [0x42u8; 16];
        for len in [16, 24, 32] {
            let kek: Vec<u8> = (0..len as u8).collect();
            let key = openssl::aes::AesKey::new_encrypt(&kek).unwrap();
            let mut wrapped = vec![0u8; 24];
            openssl::aes::wrap_key(&key, None, &mut wrapped, &secret).unwrap();
            assert_eq!(unwrap(&kek, &wrapped), Some(secret.to_vec()));
            let mut changed = wrapped.clone();
            changed[5] ^= 1;
            assert_eq!(unwrap(&kek, &changed), None, "{len}");
            let mut other = kek.clone();
            other[0] ^= 1;
            assert_eq!(unwrap(&other, &wrapped), None, "{len}");
            assert_eq!(unwrap(&kek, &wrapped[..16]), None, "{len}");
            assert_eq!(unwrap(&kek[..15], &wrapped), None, "{len}");
        }
    }
}
