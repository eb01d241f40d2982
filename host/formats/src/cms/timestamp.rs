//! Signature timestamp tokens (RFC 3161) in the outer SignerInfo's unsigned attributes.
//!
//! The official library verifies them (it never makes them): the token's message imprint
//! must be the hash of the outer signature value, the token must be validly signed, and
//! the TSA must chain to the configured TSA trust store.

use super::algorithms::{algorithm_identifier, Digest};
use super::signer::{self, SignatureCheck, SignerId, SignerInfo};
use crate::ber::slice::{parse_exact, Tlv};
use crate::ber::write::{cons, octets, seq, small_uint, tlv, uint};
use crate::ber::{tag, BerError, BerErrorKind};
use crate::cert::{parse_time, Certificate};
use crate::oid;
use crate::trust::TrustAnchors;
use crate::verdict::Error;

/// id-ct-TSTInfo.
const TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];

/// The outer SignerInfo's signature value of a sealed message held in memory: what a
/// time-stamping authority stamps (the token's imprint is its hash).
pub fn outer_signature(message: &[u8]) -> Result<Vec<u8>, BerError> {
    let outer = OuterSigner::find(message)?;
    Ok(SignerInfo::parse(&outer.signer_info)?.signature)
}

/// Adds an RFC 3161 time-stamp token over the outer signature (see [`outer_signature`])
/// to a sealed message held in memory, as the unsigned attribute
/// id-aa-signatureTimeStampToken of its outer SignerInfo (the ".NET level T" of spec
/// §1.7): no signature changes, so the message still opens as before, and a receiver
/// trusting the authority judges the sender's certificate at the token's time when the
/// message carries no signing time. The token is not checked here; unsealing does.
/// The outer layer must have one SignerInfo; lengths are re-encoded where definite.
pub fn attach(message: &[u8], token: &[u8]) -> Result<Vec<u8>, BerError> {
    parse_exact(token)?.expect(tag::SEQUENCE)?;
    let outer = OuterSigner::find(message)?;
    // A receiver checks the first token only: a second would never be looked at.
    if SignerInfo::parse(&outer.signer_info)?.timestamp.is_some() {
        return Err(outer.signer_info.err(BerErrorKind::BadValue(
            "message (it carries a signature timestamp already)",
        )));
    }
    let attribute = seq(&[
        &oid::der(oid::ATTR_SIGNATURE_TIMESTAMP),
        &tlv(tag::SET, token),
    ]);
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut unsigned_seen = false;
    for field in outer.signer_info.children() {
        let field = field?;
        if field.tag == tag::ctx_cons(1) {
            let mut attrs: Vec<&[u8]> = Vec::new();
            for a in field.children() {
                attrs.push(a?.raw);
            }
            attrs.push(&attribute);
            fields.push(cons(tag::ctx_cons(1), &attrs));
            unsigned_seen = true;
        } else {
            fields.push(field.raw.to_vec());
        }
    }
    if !unsigned_seen {
        fields.push(tlv(tag::ctx_cons(1), &attribute));
    }
    let parts: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    let signer_infos = tlv(tag::SET, &seq(&parts));
    // From the inside out: each enclosing element with its child replaced.
    let mut replaced = signer_infos;
    let mut child = outer.signer_infos;
    for parent in [outer.signed_data, outer.explicit, outer.content_info] {
        replaced = with_child_replaced(&parent, &child, &replaced);
        child = parent;
    }
    Ok(replaced)
}

/// The path to the outer SignerInfo of a message in memory.
struct OuterSigner<'a> {
    content_info: Tlv<'a>,
    explicit: Tlv<'a>,
    signed_data: Tlv<'a>,
    signer_infos: Tlv<'a>,
    signer_info: Tlv<'a>,
}

impl<'a> OuterSigner<'a> {
    fn find(message: &'a [u8]) -> Result<Self, BerError> {
        let content_info = parse_exact(message)?.expect(tag::SEQUENCE)?;
        let mut ci = content_info.seq()?;
        let kind = ci.next(tag::OID)?;
        if kind.content != oid::SIGNED_DATA {
            return Err(kind.err(BerErrorKind::BadValue(
                "outer content type (not SignedData)",
            )));
        }
        let explicit = ci.next(tag::ctx_cons(0))?;
        ci.finish()?;
        let mut e = explicit.seq()?;
        let signed_data = e.next(tag::SEQUENCE)?;
        e.finish()?;
        let mut sd = signed_data.seq()?;
        sd.next(tag::INTEGER)?;
        sd.next(tag::SET)?;
        sd.next(tag::SEQUENCE)?;
        sd.optional(tag::ctx_cons(0))?;
        sd.optional(tag::ctx_cons(1))?;
        let signer_infos = sd.next(tag::SET)?;
        sd.finish()?;
        let mut infos = signer_infos.children();
        let signer_info = match (infos.next(), infos.next()) {
            (Some(si), None) => si?.expect(tag::SEQUENCE)?,
            _ => {
                return Err(signer_infos.err(BerErrorKind::BadValue(
                    "outer signer infos (exactly one expected)",
                )))
            }
        };
        Ok(Self {
            content_info,
            explicit,
            signed_data,
            signer_infos,
            signer_info,
        })
    }
}

/// `parent` encoded again with its child element `old` (a sub-slice of its content)
/// replaced by the bytes `new`: an indefinite length stays so, a definite one is
/// recomputed.
fn with_child_replaced(parent: &Tlv<'_>, old: &Tlv<'_>, new: &[u8]) -> Vec<u8> {
    let start = old.raw.as_ptr() as usize - parent.content.as_ptr() as usize;
    let end = start + old.raw.len();
    let mut content = Vec::with_capacity(parent.content.len() - old.raw.len() + new.len());
    content.extend_from_slice(&parent.content[..start]);
    content.extend_from_slice(new);
    content.extend_from_slice(&parent.content[end..]);
    if parent.indefinite {
        let mut out = vec![parent.tag, 0x80];
        out.extend(content);
        out.extend([0, 0]);
        out
    } else {
        tlv(parent.tag, &content)
    }
}

/// The time-stamp token of what a time-stamping authority answered: a TimeStampResp (RFC
/// 3161 §2.4.2, what `openssl ts -reply` writes and an authority sends over HTTP) whose
/// status grants it, or a bare token (a CMS ContentInfo, `openssl ts -reply -token_out`).
/// A refusal names the authority's status (`2` rejection, `3` waiting, ...).
pub fn token_of_reply(reply: &[u8]) -> Result<Vec<u8>, BerError> {
    let top = parse_exact(reply)?.expect(tag::SEQUENCE)?;
    let mut f = top.seq()?;
    let first = f.any()?;
    if first.tag == tag::OID {
        return Ok(reply.to_vec());
    }
    let status = first.expect(tag::SEQUENCE)?.seq()?.next(tag::INTEGER)?;
    if !matches!(status.small_int()?, 0 | 1) {
        return Err(status.err(BerErrorKind::BadValue(
            "time-stamp reply: the authority did not grant it (PKIStatus not 0 or 1)",
        )));
    }
    let token = f.next(tag::SEQUENCE)?;
    f.finish()?;
    Ok(token.raw.to_vec())
}

/// A TimeStampReq (RFC 3161 §2.4.1) asking an authority to stamp `imprint`, the SHA-256
/// of an outer signature (see [`outer_signature`]), with `nonce` (from [`new_nonce`]) and
/// certReq set: the token must carry the authority's certificate, which its check needs.
/// What `openssl ts -query -sha256 -cert` makes, with a nonce of ours.
pub fn request(imprint: &[u8; 32], nonce: &[u8; 8]) -> Vec<u8> {
    let sha256 = seq(&[&oid::der(oid::SHA256), &[tag::NULL, 0]]);
    seq(&[
        &small_uint(1),
        &seq(&[&sha256, &octets(imprint)]),
        &uint(nonce),
        &[tag::BOOLEAN, 1, 0xff],
    ])
}

/// A request's nonce: 8 random bytes whose first is 0x01..=0x7f, so that they are, as they
/// stand, the DER content of the INTEGER an answering token repeats
/// ([`Checked::nonce`]).
pub fn new_nonce() -> Result<[u8; 8], openssl::error::ErrorStack> {
    let mut nonce = [0u8; 8];
    openssl::rand::rand_bytes(&mut nonce)?;
    nonce[0] = nonce[0] % 0x7f + 1;
    Ok(nonce)
}

/// A checked token: its time, and what was wrong with it, if anything.
pub struct Checked {
    pub gen_time: Option<i64>,
    pub error: Option<Error>,
    /// The nonce the token repeats from its request (the INTEGER's content), if any: an
    /// answer to a request of ours must repeat its nonce, else it was made for another.
    pub nonce: Option<Vec<u8>>,
}

/// Checks one token against the outer `signature` value.
pub fn check(token: &[u8], signature: &[u8], tsa_anchors: &TrustAnchors) -> Checked {
    match parse(token) {
        Err(_) => Checked {
            gen_time: None,
            error: Some(Error::TIMESTAMPTOKEN_INVALID),
            nonce: None,
        },
        Ok(t) => {
            let gen_time = Some(t.gen_time);
            let nonce = t.nonce.clone();
            let error = if t.imprint_alg.map(|d| d.digest(signature)) != Some(t.imprint.clone()) {
                Some(Error::TIMESTAMPTOKEN_DOES_NOT_MATCH_OUTER_SIGNATURE)
            } else {
                match verify(&t) {
                    None => Some(Error::TIMESTAMPTOKEN_INVALID),
                    Some(cert) if !tsa_anchors.verify(&cert, &t.certs, t.gen_time) => {
                        Some(Error::TIMESTAMPTOKEN_TRUST_FAILED)
                    }
                    Some(_) => None,
                }
            };
            Checked {
                gen_time,
                error,
                nonce,
            }
        }
    }
}

struct Token {
    tst_info: Vec<u8>,
    certs: Vec<Certificate>,
    signer: SignerInfo,
    imprint_alg: Option<Digest>,
    imprint: Vec<u8>,
    gen_time: i64,
    nonce: Option<Vec<u8>>,
}

fn parse(token: &[u8]) -> Result<Token, BerError> {
    let ci = parse_exact(token)?;
    let mut ci = ci.seq()?;
    ci.next(tag::OID)?;
    let sd = ci.next(tag::ctx_cons(0))?.seq()?.next(tag::SEQUENCE)?;
    let mut sd = sd.seq()?;
    sd.next(tag::INTEGER)?;
    sd.next(tag::SET)?;
    let mut eci = sd.next(tag::SEQUENCE)?.seq()?;
    let is_tst = eci.next(tag::OID)?.content == TST_INFO;
    let tst_info = eci
        .next(tag::ctx_cons(0))?
        .seq()?
        .any()?
        .octets()?
        .into_owned();
    let mut certs = Vec::new();
    if let Some(set) = sd.optional(tag::ctx_cons(0))? {
        for c in super::certificate_set(&set)? {
            if c.tag == tag::SEQUENCE {
                if let Ok(cert) = Certificate::from_der(c.raw) {
                    certs.push(cert);
                }
            }
        }
    }
    sd.optional(tag::ctx_cons(1))?;
    let infos = sd.next(tag::SET)?;
    let first = infos
        .children()
        .next()
        .ok_or_else(|| infos.err(BerErrorKind::BadValue("no signer")))??;
    let signer = SignerInfo::parse(&first)?;
    let tst = parse_exact(&tst_info)?;
    let mut f = tst.seq()?;
    f.next(tag::INTEGER)?;
    f.next(tag::OID)?;
    let mut imprint = f.next(tag::SEQUENCE)?.seq()?;
    let imprint_alg = Digest::from_oid(algorithm_identifier(&imprint.next(tag::SEQUENCE)?)?.0);
    let imprint_value = imprint.next(tag::OCTET_STRING)?.content.to_vec();
    f.next(tag::INTEGER)?;
    let gen_time = parse_time(&f.next(tag::GENERALIZED_TIME)?)?;
    // accuracy and ordering, both optional, then the request's nonce if it had one; read
    // leniently, as a receiver's verdict never depended on what follows genTime.
    let mut nonce_of = || -> Result<Option<Vec<u8>>, BerError> {
        f.optional(tag::SEQUENCE)?;
        f.optional(tag::BOOLEAN)?;
        Ok(f.optional(tag::INTEGER)?.map(|n| n.content.to_vec()))
    };
    let nonce = nonce_of().ok().flatten();
    if !is_tst {
        return Err(tst.err(BerErrorKind::BadValue("not a TSTInfo")));
    }
    Ok(Token {
        tst_info,
        certs,
        signer,
        imprint_alg,
        imprint: imprint_value,
        gen_time,
        nonce,
    })
}

/// id-aa-signingCertificate (ESS, RFC 2634: SHA-1 certificate hashes).
const ATTR_SIGNING_CERTIFICATE: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x0c,
];
/// id-aa-signingCertificateV2 (RFC 5035: any hash, SHA-256 by default).
const ATTR_SIGNING_CERTIFICATE_V2: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x02, 0x2f,
];

/// Verifies the token as BouncyCastle's `TimeStampToken.validate` does, which the official
/// library relies on: the signer's certificate is in the token, is a time-stamping
/// certificate (one critical extendedKeyUsage, id-kp-timeStamping alone), is the one the
/// token's ESS signing-certificate attribute names by its hash, and the signature holds.
/// Returns the TSA certificate when all of that is so.
fn verify(t: &Token) -> Option<Certificate> {
    let cert = t.certs.iter().find(|c| match &t.signer.sid {
        SignerId::IssuerSerial { issuer, serial } => {
            c.issuer_der() == issuer.as_slice() && c.serial() == serial.as_slice()
        }
        SignerId::SubjectKeyId(ski) => c.subject_key_identifier() == Some(ski.as_slice()),
    })?;
    if !cert.is_timestamping_only() || !names_certificate(&t.signer, cert) {
        return None;
    }
    let digest = Digest::from_oid(&t.signer.digest_alg)?;
    let digests = [(digest, digest.digest(&t.tst_info))];
    let key = cert.public_key().ok()?;
    (signer::verify(&t.signer, &key, &digests, TST_INFO) == SignatureCheck::Valid)
        .then(|| cert.clone())
}

/// Whether the signed attributes carry an ESS signing-certificate attribute (v2 or v1)
/// whose first certificate id is `cert`'s hash (RFC 3161 §2.4.2 requires one; the first
/// id names the signer's own certificate). Its optional issuerSerial, which BouncyCastle
/// also compares, is not: the hash alone names exactly one certificate.
fn names_certificate(si: &SignerInfo, cert: &Certificate) -> bool {
    let Some(attrs) = si.signed_attrs.as_deref() else {
        return false;
    };
    let first_cert_id = || -> Result<Option<(Digest, Vec<u8>)>, BerError> {
        let attrs = parse_exact(attrs)?;
        for attr in attrs.children() {
            let mut a = attr?.seq()?;
            let kind = a.next(tag::OID)?.content;
            let v2 = kind == ATTR_SIGNING_CERTIFICATE_V2;
            if !v2 && kind != ATTR_SIGNING_CERTIFICATE {
                continue;
            }
            let value = a.next(tag::SET)?.seq()?.next(tag::SEQUENCE)?;
            let mut id = value
                .seq()?
                .next(tag::SEQUENCE)?
                .seq()?
                .next(tag::SEQUENCE)?
                .seq()?;
            let hash_alg = if v2 {
                match id.optional(tag::SEQUENCE)? {
                    None => Some(Digest::Sha256),
                    Some(alg) => Digest::from_oid(algorithm_identifier(&alg)?.0),
                }
            } else {
                Some(Digest::Sha1)
            };
            let hash = id.next(tag::OCTET_STRING)?.content.to_vec();
            return Ok(hash_alg.map(|d| (d, hash)));
        }
        Ok(None)
    };
    match first_cert_id() {
        Ok(Some((digest, hash))) => digest.digest(cert.der()) == hash,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply is taken apart by its status: granted (0, or 1 with modifications) gives its
    /// token, any other status is refused, naming it; a bare token is itself.
    #[test]
    fn a_reply_gives_its_token_only_when_granted() {
        let token = seq(&[
            &oid::der(oid::SIGNED_DATA),
            &tlv(tag::ctx_cons(0), &seq(&[])),
        ]);
        assert_eq!(token_of_reply(&token).unwrap(), token);
        for granted in [0, 1] {
            let reply = seq(&[&seq(&[&small_uint(granted)]), &token]);
            assert_eq!(token_of_reply(&reply).unwrap(), token);
        }
        let refused = seq(&[&seq(&[&small_uint(2)])]);
        let e = token_of_reply(&refused).unwrap_err();
        assert!(e.to_string().contains("did not grant"), "{e}");
        // Granted without a token, or with bytes after it: malformed.
        assert!(token_of_reply(&seq(&[&seq(&[&small_uint(0)])])).is_err());
        assert!(token_of_reply(&seq(&[&seq(&[&small_uint(0)]), &token, &token])).is_err());
        assert!(token_of_reply(b"\x04\x01x").is_err());
    }
}
