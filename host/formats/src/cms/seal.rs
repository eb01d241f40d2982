//! Sealing: inner SignedData → EnvelopedData → outer SignedData, streamed (spec §1–§2).
//!
//! The plaintext is read once. Each layer is a `Write` stage feeding the next:
//! `InnerContent` hashes and frames the plaintext, `Encryptor` encrypts the inner layer
//! and frames the ciphertext, `OuterContent` hashes and frames the middle layer into the
//! output. Recipient infos precede the ciphertext, which is fine: the content key is chosen
//! first. Signatures come last in each SignedData, after their content has gone by.

use super::algorithms::Digest;
use super::hashing::OffloadHasher;
use super::{signer, CHUNK};
use crate::ber::tag;
use crate::ber::write::{cons, octets, push_tlv, seq, set_of, small_uint, tlv, uint, BerWriter};
use crate::cert::{Certificate, KeyAlgorithm};
use crate::keys::{KeyError, SignerRef, SigningKey};
use crate::ocsp::RevocationValues;
use crate::oid;
use openssl::encrypt::Encrypter;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::symm::{Cipher, Crypter, Mode};
use std::fmt;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// A known recipient.
#[derive(Clone)]
pub enum Recipient {
    /// The encryption certificate of the recipient's ETK: KTRI by issuer and serial.
    Certificate(Certificate),
    /// A KeyDepot/WEB_AUTHN public key: KTRI v2 by subjectKeyIdentifier.
    KeyId {
        ski: Vec<u8>,
        public_key: PKey<Public>,
    },
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificate(c) => write!(f, "Recipient({})", c.subject_string()),
            Self::KeyId { ski, .. } => write!(f, "Recipient(key id {})", hex::encode(ski)),
        }
    }
}

/// An unknown recipient's key: the AES key KGSS released and its identifier.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<Vec<u8>>,
    id: Vec<u8>,
}

impl Kek {
    /// A KEK of 16, 24 or 32 bytes (KGSS hands out 16) and its raw key identifier.
    pub fn new(key: &[u8], id: &[u8]) -> Result<Self, SealError> {
        if ![16, 24, 32].contains(&key.len()) {
            return Err(SealError::BadKek(key.len()));
        }
        Ok(Self {
            key: Zeroizing::new(key.to_vec()),
            id: id.to_vec(),
        })
    }
    pub fn id(&self) -> &[u8] {
        &self.id
    }
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek(id {})", hex::encode(&self.id))
    }
}

/// Sealing options.
#[derive(Clone, Debug, Default)]
pub struct SealOptions {
    /// signingTime of both layers (unix seconds); the current time when `None`.
    pub signing_time: Option<i64>,
    /// The signer's OCSP answers, embedded in the outer SignerInfo (where the certificates
    /// are) as revocationValues, as the official library does under an OCSP policy other
    /// than NONE (spec §1.2, §1.6).
    pub revocation_values: Option<RevocationValues>,
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("no recipient: give at least one ETK or a KEK")]
    NoRecipient,
    #[error("recipient {0} does not have an RSA key (only RSA key transport is defined by ETEE)")]
    UnsupportedRecipientKey(String),
    #[error("a KEK must be 16, 24 or 32 bytes, not {0}")]
    BadKek(usize),
    #[error("signing failed: {0}")]
    Key(#[from] KeyError),
    #[error("crypto library failure: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// Seals `input` from `signer` for `recipients` and/or `kek`, writing BER to `output`.
/// Returns the number of plaintext bytes sealed.
pub fn seal<R: Read, W: Write>(
    signer: &SigningKey,
    recipients: &[Recipient],
    kek: Option<&Kek>,
    mut input: R,
    output: W,
    opts: &SealOptions,
) -> Result<u64, SealError> {
    if recipients.is_empty() && kek.is_none() {
        return Err(SealError::NoRecipient);
    }
    let signing_time = opts.signing_time.unwrap_or_else(crate::unix_now);
    let mut cek = Zeroizing::new([0u8; 16]);
    openssl::rand::rand_bytes(&mut cek[..])?;
    let mut iv = [0u8; 16];
    openssl::rand::rand_bytes(&mut iv)?;
    let recipient_infos = recipient_infos(recipients, kek, &cek)?;

    // Outer layer header, up to its content.
    let mut out = BerWriter::new(output);
    open_signed_data(&mut out, signer_version(signer))?;
    let mut outer = OuterContent::new(out);

    // Middle layer header, up to the ciphertext.
    let mut middle = BerWriter::new(&mut outer);
    middle.open(tag::SEQUENCE)?;
    middle.raw(&oid::der(oid::ENVELOPED_DATA))?;
    middle.open(tag::ctx_cons(0))?;
    middle.open(tag::SEQUENCE)?;
    middle.raw(&small_uint(enveloped_data_version(recipients, kek)))?;
    middle.raw(&recipient_infos)?;
    middle.open(tag::SEQUENCE)?;
    middle.raw(&oid::der(oid::DATA))?;
    middle.raw(&seq(&[&oid::der(oid::AES128_CBC), &octets(&iv)]))?;
    middle.open(tag::ctx_cons(0))?;
    let mut enc = Encryptor::new(middle.get_mut(), &cek, &iv)?;

    // Inner layer, streamed through the encryptor.
    let mut inner = BerWriter::new(&mut enc);
    open_signed_data(&mut inner, signer_version(signer))?;
    let mut content = InnerContent::new(inner.get_mut());
    let total = copy_large(&mut input, &mut content)?;
    let inner_digest = content.finish()?;
    close_signed_data(
        &mut inner,
        signer,
        &inner_digest,
        signing_time,
        Layer::Inner,
    )?;
    enc.finish()?;

    // Close the middle layer: [0] encryptedContent, EncryptedContentInfo, EnvelopedData, [0], ContentInfo.
    for _ in 0..5 {
        middle.close()?;
    }
    let (out, outer_digest) = outer.finish()?;
    let mut out = out;
    close_signed_data(
        &mut out,
        signer,
        &outer_digest,
        signing_time,
        Layer::Outer(opts.revocation_values.as_ref()),
    )?;
    out.flush()?;
    Ok(total)
}

/// Copies `input` to `out` in blocks of 256 KiB, however small the source's reads
/// (pipes give 64 KiB, some readers less): every stage below pays per call.
fn copy_large<R: Read, W: Write>(input: &mut R, out: &mut W) -> io::Result<u64> {
    const LARGE: usize = 256 * 1024;
    // A small block first: most messages are small, and zeroing 256 KiB would cost more
    // than sealing one. Only a source that fills it gets the large block. Plaintext:
    // wiped when dropped.
    let mut buf = super::PlainBuf::new(16 * 1024);
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.filled(filled);
        out.write_all(&buf[..filled])?;
        total += filled as u64;
        if filled < buf.len() {
            // The source ended.
            return Ok(total);
        }
        if buf.len() < LARGE {
            buf = super::PlainBuf::new(LARGE);
        }
    }
}

fn signer_version(signer: &SigningKey) -> u64 {
    match signer.signer {
        SignerRef::Certificate { .. } => 1,
        SignerRef::KeyId(_) => 3,
    }
}

/// `ContentInfo { signedData, [0] SignedData { version, digestAlgorithms, encapContentInfo { data, [0] OCTET STRING (constructed …`
fn open_signed_data<W: Write>(w: &mut BerWriter<W>, version: u64) -> io::Result<()> {
    w.open(tag::SEQUENCE)?;
    w.raw(&oid::der(oid::SIGNED_DATA))?;
    w.open(tag::ctx_cons(0))?;
    w.open(tag::SEQUENCE)?;
    w.raw(&small_uint(version))?;
    w.raw(&set_of(vec![oid::ALG_SHA256.to_vec()]))?;
    w.open(tag::SEQUENCE)?;
    w.raw(&oid::der(oid::DATA))?;
    w.open(tag::ctx_cons(0))?;
    w.open(tag::OCTET_STRING_CONSTRUCTED)
}

/// Which signed layer is closed.
enum Layer<'a> {
    Inner,
    /// The outer layer, which alone carries the certificates and, when given, the
    /// revocation values.
    Outer(Option<&'a RevocationValues>),
}

/// Closes the content, writes certificates (outer layer) and the SignerInfo.
fn close_signed_data<W: Write>(
    w: &mut BerWriter<W>,
    signer: &SigningKey,
    digest: &[u8; 32],
    signing_time: i64,
    layer: Layer<'_>,
) -> Result<(), SealError> {
    w.close()?; // OCTET STRING
    w.close()?; // [0]
    w.close()?; // EncapsulatedContentInfo
    if matches!(layer, Layer::Outer(_)) {
        if let SignerRef::Certificate { cert, chain } = &signer.signer {
            let mut certs: Vec<&[u8]> = vec![cert.der()];
            for c in chain {
                if !certs.contains(&c.der()) {
                    certs.push(c.der());
                }
            }
            w.raw(&cons(tag::ctx_cons(0), &certs))?;
        }
    }
    let revocation = match layer {
        Layer::Outer(values) => values,
        Layer::Inner => None,
    };
    let signer_info = signer::build(signer, digest, signing_time, revocation)?;
    w.raw(&tlv(tag::SET, &signer_info))?;
    w.close()?; // SignedData
    w.close()?; // [0]
    w.close()?; // ContentInfo
    Ok(())
}

/// The EnvelopedData version (RFC 5652 §6.1; no originatorInfo, no unprotectedAttrs, no
/// pwri or ori here): 0 when every recipient info is version 0 (KTRIs by issuer and
/// serial), else 2: a KTRI by subjectKeyIdentifier is version 2, a KEKRecipientInfo
/// version 4. The official library writes 2 with a KEK (spec §2).
fn enveloped_data_version(recipients: &[Recipient], kek: Option<&Kek>) -> u64 {
    let all_v0 = recipients
        .iter()
        .all(|r| matches!(r, Recipient::Certificate(_)));
    if all_v0 && kek.is_none() {
        0
    } else {
        2
    }
}

/// `AlgorithmIdentifier { id-aes192-wrap (2.16.840.1.101.3.4.1.25) }`, parameters absent.
const ALG_AES192_WRAP: &[u8] = &[
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x19,
];
/// `AlgorithmIdentifier { id-aes256-wrap (2.16.840.1.101.3.4.1.45) }`, parameters absent.
const ALG_AES256_WRAP: &[u8] = &[
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2d,
];

/// The key-encryption algorithm of a KEKRecipientInfo for a KEK of `len` bytes: the
/// RFC 3394 AES key wrap of that key size (RFC 3565 §2.3.2), parameters absent, as
/// BouncyCastle's `JceKEKRecipientInfoGenerator` labels it.
fn kek_wrap_algorithm(len: usize) -> Result<&'static [u8], SealError> {
    match len {
        16 => Ok(oid::ALG_AES128_WRAP),
        24 => Ok(ALG_AES192_WRAP),
        32 => Ok(ALG_AES256_WRAP),
        other => Err(SealError::BadKek(other)),
    }
}

fn recipient_infos(
    recipients: &[Recipient],
    kek: Option<&Kek>,
    cek: &[u8; 16],
) -> Result<Vec<u8>, SealError> {
    let mut infos = Vec::new();
    for r in recipients {
        let (version, rid, key, name) = match r {
            Recipient::Certificate(c) => {
                if c.key_algorithm() != KeyAlgorithm::Rsa {
                    return Err(SealError::UnsupportedRecipientKey(c.subject_string()));
                }
                (
                    0,
                    seq(&[c.issuer_der(), &uint(c.serial())]),
                    c.public_key()?,
                    c.subject_string(),
                )
            }
            Recipient::KeyId { ski, public_key } => {
                (2, tlv(0x80, ski), public_key.clone(), hex::encode(ski))
            }
        };
        if key.rsa().is_err() {
            return Err(SealError::UnsupportedRecipientKey(name));
        }
        let mut encrypter = Encrypter::new(&key)?;
        encrypter.set_rsa_padding(Padding::PKCS1)?;
        let mut wrapped = vec![0u8; encrypter.encrypt_len(cek)?];
        let n = encrypter.encrypt(cek, &mut wrapped)?;
        wrapped.truncate(n);
        infos.push(seq(&[
            &small_uint(version),
            &rid,
            oid::ALG_RSA_ENCRYPTION,
            &octets(&wrapped),
        ]));
    }
    if let Some(kek) = kek {
        let wrapped = super::algorithms::aes_key_wrap(kek.key(), cek, true)
            .ok_or(SealError::BadKek(kek.key().len()))?;
        let mut body = Vec::new();
        body.extend_from_slice(&small_uint(4));
        body.extend_from_slice(&seq(&[&octets(kek.id())]));
        body.extend_from_slice(kek_wrap_algorithm(kek.key().len())?);
        body.extend_from_slice(&octets(&wrapped));
        let mut kekri = Vec::new();
        push_tlv(&mut kekri, tag::ctx_cons(2), &body);
        infos.push(kekri);
    }
    Ok(set_of(infos))
}

/// Frames bytes as primitive OCTET STRING chunks of [`CHUNK`] bytes.
/// Both buffers are wiped when dropped: the inner layer's are plaintext.
struct Chunker {
    buf: Zeroizing<Vec<u8>>,
    /// Reused output buffer: a fresh large allocation per write would page-fault anew.
    framed: Zeroizing<Vec<u8>>,
}

impl Chunker {
    fn new() -> Self {
        Self {
            buf: Zeroizing::new(Vec::with_capacity(CHUNK)),
            framed: Zeroizing::new(Vec::new()),
        }
    }

    /// Appends `data`, writing every full chunk to `out`.
    fn push<W: Write>(&mut self, out: &mut W, mut data: &[u8]) -> io::Result<()> {
        self.framed.clear();
        while !data.is_empty() {
            if self.buf.is_empty() && data.len() >= CHUNK {
                frame(&mut self.framed, &data[..CHUNK]);
                data = &data[CHUNK..];
                continue;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                frame(&mut self.framed, &self.buf);
                self.buf.clear();
            }
        }
        if !self.framed.is_empty() {
            out.write_all(&self.framed)?;
        }
        Ok(())
    }

    fn flush<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.framed.clear();
            frame(&mut self.framed, &self.buf);
            self.buf.clear();
            out.write_all(&self.framed)?;
        }
        Ok(())
    }
}

fn frame(out: &mut Vec<u8>, chunk: &[u8]) {
    push_tlv(out, tag::OCTET_STRING, chunk);
}

/// The inner layer's eContent: hashes the plaintext and frames it.
struct InnerContent<'a, W: Write> {
    out: &'a mut W,
    hasher: OffloadHasher,
    chunker: Chunker,
}

impl<'a, W: Write> InnerContent<'a, W> {
    fn new(out: &'a mut W) -> Self {
        Self {
            out,
            hasher: OffloadHasher::new(&[Digest::Sha256]),
            chunker: Chunker::new(),
        }
    }
    fn finish(mut self) -> io::Result<[u8; 32]> {
        self.chunker.flush(self.out)?;
        finish_sha256(self.hasher)
    }
}

impl<W: Write> Write for InnerContent<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.chunker.push(self.out, data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn finish_sha256(h: OffloadHasher) -> io::Result<[u8; 32]> {
    h.finish_sha256()
        .ok_or_else(|| io::Error::other("content digest unavailable"))
}

/// AES-128-CBC over the inner layer, framing the ciphertext as encryptedContent chunks.
struct Encryptor<'a, W: Write> {
    out: &'a mut W,
    crypter: Crypter,
    chunker: Chunker,
    buf: Vec<u8>,
}

impl<'a, W: Write> Encryptor<'a, W> {
    fn new(out: &'a mut W, key: &[u8; 16], iv: &[u8; 16]) -> Result<Self, SealError> {
        let mut crypter = Crypter::new(Cipher::aes_128_cbc(), Mode::Encrypt, key, Some(iv))?;
        crypter.pad(true);
        Ok(Self {
            out,
            crypter,
            chunker: Chunker::new(),
            buf: Vec::new(),
        })
    }
    fn finish(mut self) -> Result<(), SealError> {
        self.buf.resize(32, 0);
        let n = self.crypter.finalize(&mut self.buf)?;
        let tail = self.buf[..n].to_vec();
        self.chunker.push(self.out, &tail)?;
        self.chunker.flush(self.out)?;
        Ok(())
    }
}

impl<W: Write> Write for Encryptor<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.resize(data.len() + 16, 0);
        let n = self
            .crypter
            .update(data, &mut self.buf)
            .map_err(io::Error::other)?;
        let (buf, chunker, out) = (&self.buf, &mut self.chunker, &mut self.out);
        chunker.push(out, &buf[..n])?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The outer layer's eContent: hashes the middle layer and frames it into the output.
struct OuterContent<W: Write> {
    out: BerWriter<W>,
    hasher: OffloadHasher,
    chunker: Chunker,
}

impl<W: Write> OuterContent<W> {
    fn new(out: BerWriter<W>) -> Self {
        Self {
            out,
            hasher: OffloadHasher::new(&[Digest::Sha256]),
            chunker: Chunker::new(),
        }
    }
    fn finish(mut self) -> io::Result<(BerWriter<W>, [u8; 32])> {
        self.chunker.flush(self.out.get_mut())?;
        let d = finish_sha256(self.hasher)?;
        Ok((self.out, d))
    }
}

impl<W: Write> Write for OuterContent<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.chunker.push(self.out.get_mut(), data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_algorithm_follows_the_kek_length() {
        let oid_of = |alg: &[u8]| alg[4..].to_vec();
        assert_eq!(kek_wrap_algorithm(16).unwrap(), oid::ALG_AES128_WRAP);
        assert_eq!(oid_of(kek_wrap_algorithm(16).unwrap()), oid::AES128_WRAP);
        // 2.16.840.1.101.3.4.1.25 and .45.
        assert_eq!(
            oid_of(kek_wrap_algorithm(24).unwrap()),
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 25]
        );
        assert_eq!(
            oid_of(kek_wrap_algorithm(32).unwrap()),
            [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 45]
        );
        assert!(matches!(kek_wrap_algorithm(20), Err(SealError::BadKek(20))));
    }

    #[test]
    fn enveloped_data_version_per_rfc_5652() {
        let key = PKey::public_key_from_der(
            &openssl::rsa::Rsa::generate(1024)
                .unwrap()
                .public_key_to_der()
                .unwrap(),
        )
        .unwrap();
        let by_ski = Recipient::KeyId {
            ski: b"k".to_vec(),
            public_key: key,
        };
        let kek = Kek::new(&[7; 16], b"id").unwrap();
        assert_eq!(enveloped_data_version(&[], Some(&kek)), 2);
        assert_eq!(
            enveloped_data_version(std::slice::from_ref(&by_ski), None),
            2
        );
        assert_eq!(enveloped_data_version(&[by_ski], Some(&kek)), 2);
    }
}
