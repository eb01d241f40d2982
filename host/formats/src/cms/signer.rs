//! SignerInfo: building ours, parsing and verifying theirs (spec §1.2, §1.4).

use super::algorithms::{algorithm_identifier, Digest};
use crate::ber::slice::{parse_exact, Tlv};
use crate::ber::write::{cons, octets, push_tlv, seq, set_of, small_uint, tlv, uint};
use crate::ber::{tag, BerError, BerErrorKind};
use crate::cert::parse_time;
use crate::keys::{KeyError, SignerRef, SigningKey};
use crate::ocsp::{RevocationValues, ATTR_REVOCATION_VALUES};
use crate::oid;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;

/// How a SignerInfo names its signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerId {
    IssuerSerial { issuer: Vec<u8>, serial: Vec<u8> },
    SubjectKeyId(Vec<u8>),
}

/// A SignerInfo as found in a message.
#[derive(Clone, Debug)]
pub struct SignerInfo {
    pub sid: SignerId,
    pub digest_alg: Vec<u8>,
    /// The signed attributes re-encoded with the SET tag, as they are signed.
    pub signed_attrs: Option<Vec<u8>>,
    pub signature_alg: Vec<u8>,
    pub signature_params: Option<Vec<u8>>,
    pub signature: Vec<u8>,
    /// Every signingTime value found (more than one is a fault).
    pub signing_times: Vec<i64>,
    pub message_digest: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    /// cmsAlgorithmProtect value (DER), if present.
    pub algorithm_protect: Option<Vec<u8>>,
    /// Set when an attribute could not be understood: verification then fails.
    pub attribute_fault: bool,
    /// The first signature timestamp token (id-aa-signatureTimeStampToken), DER: the one
    /// a receiver checks (any others are read through, not kept).
    pub timestamp: Option<Vec<u8>>,
    /// The OCSP answers and lists of id-aa-ets-revocationValues (unsigned: they are
    /// evidence, each checked on its own signature, and a malformed one is left out).
    pub revocation_values: RevocationValues,
}

impl SignerInfo {
    /// Parses one SignerInfo element.
    pub fn parse(t: &Tlv<'_>) -> Result<Self, BerError> {
        let mut s = t.expect(tag::SEQUENCE)?.seq()?;
        s.next(tag::INTEGER)?;
        let sid_t = s.any()?;
        let sid = match sid_t.tag {
            tag::SEQUENCE => {
                let mut f = sid_t.seq()?;
                let issuer = f.next(tag::SEQUENCE)?.raw.to_vec();
                let serial = f.next(tag::INTEGER)?.uint_bytes()?.to_vec();
                SignerId::IssuerSerial { issuer, serial }
            }
            0x80 => SignerId::SubjectKeyId(sid_t.content.to_vec()),
            found => {
                return Err(sid_t.err(BerErrorKind::UnexpectedTag {
                    expected: tag::SEQUENCE,
                    found,
                }))
            }
        };
        let digest_alg = algorithm_identifier(&s.next(tag::SEQUENCE)?)?.0.to_vec();
        let mut info = SignerInfo {
            sid,
            digest_alg,
            signed_attrs: None,
            signature_alg: Vec::new(),
            signature_params: None,
            signature: Vec::new(),
            signing_times: Vec::new(),
            message_digest: None,
            content_type: None,
            algorithm_protect: None,
            attribute_fault: false,
            timestamp: None,
            revocation_values: RevocationValues::default(),
        };
        if let Some(attrs) = s.optional(tag::ctx_cons(0))? {
            info.read_signed_attrs(&attrs)?;
        }
        let (alg, params) = algorithm_identifier(&s.next(tag::SEQUENCE)?)?;
        info.signature_alg = alg.to_vec();
        info.signature_params = params.map(|p| p.raw.to_vec());
        info.signature = s.next(tag::OCTET_STRING)?.octets()?.into_owned();
        // unsignedAttrs [1]: signature timestamps, and revocation values (used when
        // revocation is checked).
        if let Some(unsigned) = s.optional(tag::ctx_cons(1))? {
            for attr in unsigned.children() {
                let mut a = attr?.seq()?;
                let kind = a.next(tag::OID)?.content;
                if kind == oid::ATTR_SIGNATURE_TIMESTAMP {
                    // Unsigned, so anyone on the way may fill it: the tokens after the
                    // first are read through, not copied (a SET of millions of tiny
                    // values must not cost dozens of bytes of memory each).
                    for v in a.next(tag::SET)?.children() {
                        let v = v?;
                        if info.timestamp.is_none() {
                            info.timestamp = Some(v.raw.to_vec());
                        }
                    }
                } else if kind == ATTR_REVOCATION_VALUES {
                    // Unsigned, so anyone on the way may add one: a malformed value is left
                    // out rather than failing the SignerInfo.
                    let values = a.next(tag::SET).ok();
                    for v in values.iter().flat_map(|set| set.children()).flatten() {
                        if let Ok(values) = RevocationValues::parse(v.raw) {
                            info.revocation_values.add(values);
                        }
                    }
                }
            }
        }
        s.finish()?;
        Ok(info)
    }

    fn read_signed_attrs(&mut self, attrs: &Tlv<'_>) -> Result<(), BerError> {
        // What is signed is the DER SET OF: the same content under the SET tag.
        let mut der = Vec::with_capacity(attrs.content.len() + 6);
        push_tlv(&mut der, tag::SET, attrs.content);
        self.signed_attrs = Some(der);
        for attr in attrs.children() {
            let mut a = attr?.seq()?;
            let kind = a.next(tag::OID)?.content;
            let values = a.next(tag::SET)?;
            // Counted, and the first kept, in place: no copy of what may be a SET of a
            // great many values.
            let (mut count, mut first) = (0usize, None);
            for v in values.children() {
                let v = v?;
                first.get_or_insert(v);
                count += 1;
            }
            match kind {
                k if k == oid::ATTR_SIGNING_TIME => {
                    if count != 1 {
                        self.attribute_fault = true;
                    }
                    for v in values.children() {
                        match parse_time(&v?) {
                            Ok(t) => self.signing_times.push(t),
                            Err(_) => self.attribute_fault = true,
                        }
                    }
                }
                k if k == oid::ATTR_MESSAGE_DIGEST => {
                    if count != 1 || self.message_digest.is_some() {
                        self.attribute_fault = true;
                    }
                    self.message_digest = first.map(|v| v.content.to_vec());
                }
                k if k == oid::ATTR_CONTENT_TYPE => {
                    if count != 1 || self.content_type.is_some() {
                        self.attribute_fault = true;
                    }
                    self.content_type = first.map(|v| v.content.to_vec());
                }
                k if k == oid::ATTR_CMS_ALGORITHM_PROTECT => {
                    self.algorithm_protect = first.map(|v| v.raw.to_vec());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The one signing time, if there is exactly one.
    pub fn signing_time(&self) -> Option<i64> {
        match self.signing_times.as_slice() {
            [t] => Some(*t),
            _ => None,
        }
    }
}

/// The result of checking a signature the way BouncyCastle's verifier does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    /// The signature value is wrong for this key and data.
    Mismatch,
    /// Verification could not be carried out (digest attribute mismatch, unusable
    /// attributes, a key of the wrong type, certificate not valid at the signing time...).
    CouldNotVerify,
    /// Algorithms we (and the official library) cannot run at all, such as GOST: the
    /// algorithm checks report it, the signature check says nothing.
    Unsupported,
}

/// Verifies `si` with `key` against the content digests computed while streaming.
pub fn verify(
    si: &SignerInfo,
    key: &PKey<Public>,
    content_digests: &[(Digest, Vec<u8>)],
    econtent_type: &[u8],
) -> SignatureCheck {
    let Some(digest) = Digest::from_oid(&si.digest_alg) else {
        return SignatureCheck::Unsupported;
    };
    let Some(required) = key_type_of(&si.signature_alg) else {
        return SignatureCheck::Unsupported;
    };
    if key.id() != required && !(required == Id::RSA && key.id() == Id::RSA_PSS) {
        return SignatureCheck::CouldNotVerify;
    }
    let Some(content_digest) = content_digests
        .iter()
        .find(|(d, _)| *d == digest)
        .map(|(_, v)| v)
    else {
        return SignatureCheck::CouldNotVerify;
    };
    let to_verify = match &si.signed_attrs {
        Some(attrs) => {
            if si.attribute_fault
                || si.message_digest.as_deref() != Some(content_digest.as_slice())
                || si.content_type.as_deref() != Some(econtent_type)
                || !algorithm_protect_matches(si)
            {
                return SignatureCheck::CouldNotVerify;
            }
            digest.digest(attrs)
        }
        None => content_digest.clone(),
    };
    match verify_raw(si, key, digest, &to_verify) {
        Some(true) => SignatureCheck::Valid,
        Some(false) => SignatureCheck::Mismatch,
        None => SignatureCheck::CouldNotVerify,
    }
}

/// cmsAlgorithmProtect (RFC 6211), when present, must name the algorithms used.
fn algorithm_protect_matches(si: &SignerInfo) -> bool {
    let Some(value) = &si.algorithm_protect else {
        return true;
    };
    let check = || -> Result<bool, BerError> {
        let t = parse_exact(value)?;
        let mut s = t.seq()?;
        let d = algorithm_identifier(&s.next(tag::SEQUENCE)?)?.0;
        let sig = s.any()?;
        // signatureAlgorithm is [1] IMPLICIT AlgorithmIdentifier.
        let sig_oid = sig.seq()?.next(tag::OID)?.content;
        Ok(d == si.digest_alg.as_slice() && sig_oid == si.signature_alg.as_slice())
    };
    check().unwrap_or(false)
}

/// Verifies the signature value over a digest; `None` when it cannot be attempted.
fn verify_raw(si: &SignerInfo, key: &PKey<Public>, digest: Digest, hashed: &[u8]) -> Option<bool> {
    let mut ctx = PkeyCtx::new(key).ok()?;
    ctx.verify_init().ok()?;
    let alg = si.signature_alg.as_slice();
    if alg == oid::RSASSA_PSS {
        let p = pss_params(si.signature_params.as_deref()).ok()?;
        if p.hash != digest {
            return None;
        }
        ctx.set_rsa_padding(Padding::PKCS1_PSS).ok()?;
        ctx.set_signature_md(digest.md_ref()).ok()?;
        ctx.set_rsa_mgf1_md(p.mgf1.md_ref()).ok()?;
        ctx.set_rsa_pss_saltlen(RsaPssSaltlen::custom(p.salt))
            .ok()?;
    } else if is_rsa_pkcs1(alg) {
        ctx.set_rsa_padding(Padding::PKCS1).ok()?;
        ctx.set_signature_md(digest.md_ref()).ok()?;
    } else {
        // DSA, ECDSA: the key type says how; the digest length is what matters.
        ctx.set_signature_md(digest.md_ref()).ok()?;
    }
    Some(ctx.verify(hashed, &si.signature).unwrap_or(false))
}

/// The key type a signature algorithm needs; `None` for algorithms we do not know.
fn key_type_of(alg: &[u8]) -> Option<Id> {
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const DSA_SHA2: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    if alg == oid::RSASSA_PSS || is_rsa_pkcs1(alg) {
        Some(Id::RSA)
    } else if alg == DSA_SHA1 || alg.starts_with(DSA_SHA2) {
        Some(Id::DSA)
    } else if alg.starts_with(ECDSA) {
        Some(Id::EC)
    } else {
        None
    }
}

fn is_rsa_pkcs1(alg: &[u8]) -> bool {
    [
        oid::RSA_ENCRYPTION,
        oid::SHA1_WITH_RSA,
        oid::SHA224_WITH_RSA,
        oid::SHA256_WITH_RSA,
        oid::SHA384_WITH_RSA,
        oid::SHA512_WITH_RSA,
    ]
    .contains(&alg)
}

struct PssParams {
    hash: Digest,
    mgf1: Digest,
    salt: i32,
}

/// RSASSA-PSS-params with the RFC 4055 defaults (SHA-1, MGF1-SHA-1, salt 20).
fn pss_params(der: Option<&[u8]>) -> Result<PssParams, BerError> {
    let mut p = PssParams {
        hash: Digest::Sha1,
        mgf1: Digest::Sha1,
        salt: 20,
    };
    let Some(der) = der else { return Ok(p) };
    let t = parse_exact(der)?;
    if t.tag == tag::NULL {
        return Ok(p);
    }
    let unknown = || t.err(BerErrorKind::BadValue("PSS parameters"));
    for field in t.expect(tag::SEQUENCE)?.children() {
        let field = field?;
        let inner =
            || -> Result<Tlv<'_>, BerError> { field.children().next().ok_or_else(unknown)? };
        match field.tag {
            0xa0 => {
                p.hash = Digest::from_oid(algorithm_identifier(&inner()?)?.0).ok_or_else(unknown)?
            }
            0xa1 => {
                let (mgf, params) = algorithm_identifier(&inner()?)?;
                if mgf != oid::MGF1 {
                    return Err(unknown());
                }
                let params = params.ok_or_else(unknown)?;
                p.mgf1 = Digest::from_oid(algorithm_identifier(&params)?.0).ok_or_else(unknown)?;
            }
            0xa2 => p.salt = i32::try_from(inner()?.small_int()?).map_err(|_| unknown())?,
            0xa3 => {
                if inner()?.small_int()? != 1 {
                    return Err(unknown());
                }
            }
            _ => return Err(unknown()),
        }
    }
    Ok(p)
}

/// Encodes a time as CMS does: UTCTime for 1950–2049, GeneralizedTime otherwise.
pub fn encode_time(unix: i64) -> Vec<u8> {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d, h, mi, s) = (
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    );
    if (1950..2050).contains(&y) {
        tlv(
            tag::UTC_TIME,
            format!("{:02}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z", y % 100).as_bytes(),
        )
    } else {
        tlv(
            tag::GENERALIZED_TIME,
            format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}Z").as_bytes(),
        )
    }
}

/// The DER SET of signed attributes of the official library with BouncyCastle ≥ 1.54:
/// contentType, signingTime, messageDigest, cmsAlgorithmProtect.
pub fn signed_attributes(content_digest: &[u8], signing_time: i64) -> Vec<u8> {
    let attr = |kind: &[u8], value: Vec<u8>| seq(&[&crate::oid::der(kind), &set_of(vec![value])]);
    let protect = seq(&[
        oid::ALG_SHA256,
        &cons(0xa1, &[&oid::ALG_RSASSA_PSS_SHA256[2..]]),
    ]);
    set_of(vec![
        attr(oid::ATTR_CONTENT_TYPE, crate::oid::der(oid::DATA)),
        attr(oid::ATTR_SIGNING_TIME, encode_time(signing_time)),
        attr(oid::ATTR_MESSAGE_DIGEST, octets(content_digest)),
        attr(oid::ATTR_CMS_ALGORITHM_PROTECT, protect),
    ])
}

/// Builds our SignerInfo: RSA-PSS SHA-256 over the signed attributes, with `revocation`
/// (the signer's OCSP answers) as the unsigned attribute revocationValues when given.
pub fn build(
    signer: &SigningKey,
    content_digest: &[u8; 32],
    signing_time: i64,
    revocation: Option<&RevocationValues>,
) -> Result<Vec<u8>, KeyError> {
    let attrs = signed_attributes(content_digest, signing_time);
    let hashed: [u8; 32] = openssl::hash::hash(MessageDigest::sha256(), &attrs)
        .ok()
        .and_then(|d| d.as_ref().try_into().ok())
        .ok_or_else(|| KeyError::SignFailed {
            key: signer.key.clone(),
            reason: "SHA-256 unavailable".into(),
        })?;
    let signature = signer.ops.sign_pss_sha256(&signer.key, &hashed)?;
    let (version, sid) = match &signer.signer {
        SignerRef::Certificate { cert, .. } => (1, seq(&[cert.issuer_der(), &uint(cert.serial())])),
        SignerRef::KeyId(ski) => (3, tlv(0x80, ski)),
    };
    // The signed attributes travel as [0] IMPLICIT.
    let mut attrs_implicit = attrs;
    attrs_implicit[0] = tag::ctx_cons(0);
    let signature = octets(&signature);
    let version = small_uint(version);
    let mut fields: Vec<&[u8]> = vec![
        &version,
        &sid,
        oid::ALG_SHA256,
        &attrs_implicit,
        oid::ALG_RSASSA_PSS_SHA256,
        &signature,
    ];
    // unsignedAttrs [1] IMPLICIT SET OF Attribute.
    let unsigned = revocation.filter(|r| !r.is_empty()).map(|r| {
        let mut set = set_of(vec![r.attribute()]);
        set[0] = tag::ctx_cons(1);
        set
    });
    if let Some(u) = &unsigned {
        fields.push(u);
    }
    Ok(seq(&fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_attributes_match_the_official_layout() {
        let attrs = signed_attributes(&[0u8; 32], 1_795_438_186);
        let t = parse_exact(&attrs).unwrap();
        let kinds: Vec<Vec<u8>> = t
            .children()
            .map(|a| {
                a.unwrap()
                    .seq()
                    .unwrap()
                    .next(tag::OID)
                    .unwrap()
                    .content
                    .to_vec()
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                oid::ATTR_CONTENT_TYPE.to_vec(),
                oid::ATTR_SIGNING_TIME.to_vec(),
                oid::ATTR_MESSAGE_DIGEST.to_vec(),
                oid::ATTR_CMS_ALGORITHM_PROTECT.to_vec()
            ]
        );
        // signingTime as in the official vector: 170d 3236313132333132343934365a.
        assert!(attrs.windows(15).any(|w| w == b"\x17\x0d261123124946Z"));
        // The cmsAlgorithmProtect value of spec §1.2.
        let protect = hex::decode("3052300d06096086480165030402010500a14106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120").unwrap();
        assert!(attrs
            .windows(protect.len())
            .any(|w| w == protect.as_slice()));
    }

    #[test]
    fn pss_defaults_and_explicit() {
        let p = pss_params(Some(&oid::ALG_RSASSA_PSS_SHA256[13..])).unwrap();
        assert_eq!(
            (p.hash, p.mgf1, p.salt),
            (Digest::Sha256, Digest::Sha256, 32)
        );
        let d = pss_params(None).unwrap();
        assert_eq!((d.hash, d.salt), (Digest::Sha1, 20));
    }
}
