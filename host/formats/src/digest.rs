//! The SHA digests, shared by CMS and the keystore code.

use crate::oid;
use openssl::hash::MessageDigest;

/// The SHA digests: verifying what others signed (even when the policy then refuses the
/// algorithm, as the official library does), PKCS#12 MACs and PBKDF2 PRFs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    pub fn from_oid(o: &[u8]) -> Option<Self> {
        Some(match o {
            x if x == oid::SHA1 => Self::Sha1,
            x if x == oid::SHA224 => Self::Sha224,
            x if x == oid::SHA256 => Self::Sha256,
            x if x == oid::SHA384 => Self::Sha384,
            x if x == oid::SHA512 => Self::Sha512,
            _ => return None,
        })
    }
    pub fn md(self) -> MessageDigest {
        match self {
            Self::Sha1 => MessageDigest::sha1(),
            Self::Sha224 => MessageDigest::sha224(),
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }
    /// The same algorithm for `PkeyCtx` parameters.
    pub fn md_ref(self) -> &'static openssl::md::MdRef {
        use openssl::md::Md;
        match self {
            Self::Sha1 => Md::sha1(),
            Self::Sha224 => Md::sha224(),
            Self::Sha256 => Md::sha256(),
            Self::Sha384 => Md::sha384(),
            Self::Sha512 => Md::sha512(),
        }
    }
    /// One-shot digest.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        openssl::hash::hash(self.md(), data)
            .map(|d| d.to_vec())
            .unwrap_or_default()
    }
}

impl Digest {
    /// The OID's content octets.
    pub fn oid(self) -> &'static [u8] {
        match self {
            Self::Sha1 => oid::SHA1,
            Self::Sha224 => oid::SHA224,
            Self::Sha256 => oid::SHA256,
            Self::Sha384 => oid::SHA384,
            Self::Sha512 => oid::SHA512,
        }
    }
    /// Output size in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
    /// Input block size in bytes.
    pub fn block_len(self) -> usize {
        match self {
            Self::Sha384 | Self::Sha512 => 128,
            _ => 64,
        }
    }
}
