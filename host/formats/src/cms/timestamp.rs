//! Signature timestamp tokens (RFC 3161) in the outer SignerInfo's unsigned attributes.
//!
//! The official library verifies them (it never makes them): the token's message imprint
//! must be the hash of the outer signature value, the token must be validly signed, and
//! the TSA must chain to the configured TSA trust store.

use super::algorithms::{algorithm_identifier, Digest};
use super::signer::{self, SignatureCheck, SignerId, SignerInfo};
use crate::ber::slice::parse_exact;
use crate::ber::{tag, BerError};
use crate::cert::{parse_time, Certificate};
use crate::trust::TrustAnchors;
use crate::verdict::Error;

/// id-ct-TSTInfo.
const TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];

/// A checked token: its time, and what was wrong with it, if anything.
pub struct Checked {
    pub gen_time: Option<i64>,
    pub error: Option<Error>,
}

/// Checks one token against the outer `signature` value.
pub fn check(token: &[u8], signature: &[u8], tsa_anchors: &TrustAnchors) -> Checked {
    match parse(token) {
        Err(_) => Checked {
            gen_time: None,
            error: Some(Error::TIMESTAMPTOKEN_INVALID),
        },
        Ok(t) => {
            let gen_time = Some(t.gen_time);
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
            Checked { gen_time, error }
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
        .ok_or_else(|| infos.err(crate::ber::BerErrorKind::BadValue("no signer")))??;
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
    if !is_tst {
        return Err(tst.err(crate::ber::BerErrorKind::BadValue("not a TSTInfo")));
    }
    Ok(Token {
        tst_info,
        certs,
        signer,
        imprint_alg,
        imprint: imprint_value,
        gen_time,
    })
}

/// Verifies the token's signature; returns the TSA certificate when it holds.
fn verify(t: &Token) -> Option<Certificate> {
    let cert = t.certs.iter().find(|c| match &t.signer.sid {
        SignerId::IssuerSerial { issuer, serial } => {
            c.issuer_der() == issuer.as_slice() && c.serial() == serial.as_slice()
        }
        SignerId::SubjectKeyId(ski) => c.subject_key_identifier() == Some(ski.as_slice()),
    })?;
    let digest = Digest::from_oid(&t.signer.digest_alg)?;
    let digests = [(digest, digest.digest(&t.tst_info))];
    let key = cert.public_key().ok()?;
    (signer::verify(&t.signer, &key, &digests, TST_INFO) == SignatureCheck::Valid)
        .then(|| cert.clone())
}
