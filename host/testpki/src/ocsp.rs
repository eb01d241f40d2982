//! OCSP answers (RFC 6960) of the test PKI's CA, made to order: good, revoked or unknown,
//! with chosen times and nonce, signed by the CA or by a delegated responder, so that
//! tests can give a receiver every kind of answer. The encoding is written here byte by
//! byte (DER), independently of the parser under test.

use crate::{Error, Issued, KeyUsageSpec, TestPki};
use openssl::hash::{hash, MessageDigest};
use openssl::sign::Signer;
use openssl::x509::extension::ExtendedKeyUsage;
use openssl::x509::X509Ref;

/// What an answer says of the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    /// Revoked at that time (unix seconds).
    Revoked(i64),
    Unknown,
}

/// One answer's content.
#[derive(Clone)]
pub struct OcspAnswer<'a> {
    pub status: OcspStatus,
    pub this_update: i64,
    pub next_update: Option<i64>,
    pub produced_at: i64,
    /// Put in the response's extensions (id-pkix-ocsp-nonce, value an OCTET STRING).
    pub nonce: Option<Vec<u8>>,
    /// A delegated responder that signs (its certificate travels in the answer); the CA
    /// itself when `None`.
    pub signer: Option<&'a Issued>,
}

impl OcspAnswer<'_> {
    /// A current answer: produced and updated at `now`, next update an hour later.
    pub fn at(status: OcspStatus, now: i64) -> Self {
        Self {
            status,
            this_update: now,
            next_update: Some(now + 3600),
            produced_at: now,
            nonce: None,
            signer: None,
        }
    }
}

impl TestPki {
    /// A delegated OCSP responder of this CA: an end-entity certificate with
    /// extendedKeyUsage id-kp-OCSPSigning, issued by the root. One RSA-2048 key.
    pub fn ocsp_responder(&self) -> Result<Issued, Error> {
        self.ocsp_signer(true)
    }

    /// A certificate of this CA that looks like a responder but is not authorised
    /// (no id-kp-OCSPSigning): its answers must be refused.
    pub fn ocsp_impostor(&self) -> Result<Issued, Error> {
        self.ocsp_signer(false)
    }

    fn ocsp_signer(&self, authorised: bool) -> Result<Issued, Error> {
        let mut eku = ExtendedKeyUsage::new();
        if authorised {
            eku.other("OCSPSigning");
        } else {
            eku.client_auth();
        }
        self.delegated_signer(
            "etee Test OCSP responder",
            KeyUsageSpec {
                critical: true,
                digital_signature: true,
                ..KeyUsageSpec::default()
            },
            Some(eku.build()?),
        )
    }

    /// A successful OCSPResponse (DER) about `cert` (issued by this PKI's root), with a
    /// SHA-1 CertID, signed with SHA-256 and RSA.
    pub fn ocsp_response(&self, cert: &X509Ref, answer: &OcspAnswer<'_>) -> Result<Vec<u8>, Error> {
        Ok(ocsp_successful(&self.ocsp_basic(cert, answer)?))
    }

    /// The BasicOCSPResponse (DER) of [`TestPki::ocsp_response`], as a message's
    /// revocationValues carry it.
    pub fn ocsp_basic(&self, cert: &X509Ref, answer: &OcspAnswer<'_>) -> Result<Vec<u8>, Error> {
        let cert_id = self.ocsp_cert_id(&cert.serial_number().to_bn()?.to_vec())?;
        self.ocsp_basic_for(&[(cert_id, answer.status)], answer)
    }

    /// The SHA-1 CertID (DER) of this root's certificate with serial number `serial`
    /// (big-endian magnitude).
    pub fn ocsp_cert_id(&self, serial: &[u8]) -> Result<Vec<u8>, Error> {
        let issuer = &self.root.cert;
        let sha1 =
            |d: &[u8]| -> Result<Vec<u8>, Error> { Ok(hash(MessageDigest::sha1(), d)?.to_vec()) };
        let key_bits = issuer.public_key()?.rsa()?.public_key_to_der_pkcs1()?;
        Ok(seq(&[
            &seq(&[&tlv(0x06, OID_SHA1), &tlv(0x05, &[])]),
            &tlv(0x04, &sha1(&issuer.subject_name().to_der()?)?),
            &tlv(0x04, &sha1(&key_bits)?),
            &integer(serial),
        ]))
    }

    /// A BasicOCSPResponse (DER) with one SingleResponse per `(CertID DER, status)` (the
    /// CertIDs as a request gave them), and the times, nonce and signer of `answer` (its
    /// `status` is not used).
    pub fn ocsp_basic_for(
        &self,
        singles: &[(Vec<u8>, OcspStatus)],
        answer: &OcspAnswer<'_>,
    ) -> Result<Vec<u8>, Error> {
        let mut responses = Vec::new();
        for (cert_id, status) in singles {
            let status = match status {
                OcspStatus::Good => tlv(0x80, &[]),
                OcspStatus::Revoked(at) => tlv(0xa1, &time(*at)?),
                OcspStatus::Unknown => tlv(0x82, &[]),
            };
            let mut single = vec![cert_id.clone(), status, time(answer.this_update)?];
            if let Some(next) = answer.next_update {
                single.push(tlv(0xa0, &time(next)?));
            }
            let single: Vec<&[u8]> = single.iter().map(|v| v.as_slice()).collect();
            responses.push(seq(&single));
        }
        let responses: Vec<&[u8]> = responses.iter().map(|v| v.as_slice()).collect();
        let signer = answer.signer.unwrap_or(&self.root);
        let mut data = vec![
            tlv(0xa1, &signer.cert.subject_name().to_der()?),
            time(answer.produced_at)?,
            seq(&responses),
        ];
        if let Some(nonce) = &answer.nonce {
            let ext = seq(&[&tlv(0x06, OID_OCSP_NONCE), &tlv(0x04, &tlv(0x04, nonce))]);
            data.push(tlv(0xa1, &seq(&[&ext])));
        }
        let data: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let tbs = seq(&data);
        let mut signing = Signer::new(MessageDigest::sha256(), &signer.key)?;
        signing.update(&tbs)?;
        let mut signature = vec![0u8];
        signature.extend(signing.sign_to_vec()?);
        let sig_alg = seq(&[&tlv(0x06, OID_SHA256_WITH_RSA), &tlv(0x05, &[])]);
        let mut basic = vec![tbs, sig_alg, tlv(0x03, &signature)];
        if answer.signer.is_some() {
            basic.push(tlv(0xa0, &seq(&[&signer.cert.to_der()?])));
        }
        let basic: Vec<&[u8]> = basic.iter().map(|v| v.as_slice()).collect();
        Ok(seq(&basic))
    }
}

/// A successful OCSPResponse (DER) carrying `basic` (a BasicOCSPResponse).
pub fn ocsp_successful(basic: &[u8]) -> Vec<u8> {
    seq(&[
        &tlv(0x0a, &[0]),
        &tlv(0xa0, &seq(&[&tlv(0x06, OID_OCSP_BASIC), &tlv(0x04, basic)])),
    ])
}

/// An unsuccessful OCSPResponse (DER): `status` 1 malformedRequest, 2 internalError,
/// 3 tryLater, 5 sigRequired or 6 unauthorized (RFC 6960 §4.2.1).
pub fn ocsp_unsuccessful(status: u8) -> Vec<u8> {
    seq(&[&tlv(0x0a, &[status])])
}

const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const OID_OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn integer(magnitude: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = magnitude.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    tlv(0x02, &content)
}

/// GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time(unix: i64) -> Result<Vec<u8>, Error> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| Error::InvalidSpec(format!("time {unix}: {e}")))?;
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Ok(tlv(0x18, text.as_bytes()))
}
