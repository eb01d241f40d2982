//! RFC 7517 JWK Sets of a holder's certificates (`GET /etee/v1/pubKeys/cacerts/jwks`, §4.2).
//!
//! Each certificate becomes one JWK:
//! - RSA: `kty=RSA`, `n`, `e` (base64url, big-endian without leading zeros, RFC 7518 §6.3);
//! - EC: `kty=EC`, `crv` (`P-256`, `P-384`, `P-521`), `x`, `y` (base64url, padded to the
//!   field size, RFC 7518 §6.2);
//! - `kid`: base64url (no padding) of SHA-256 over the DER SubjectPublicKeyInfo. This is
//!   etee's choice (the platform's is unknown): stable per key, independent of the
//!   certificate, and recomputable by any client from the key alone;
//! - `x5c`: the certificate (then any chain given), standard base64 DER;
//! - `x5t#S256`: base64url SHA-256 of the certificate DER;
//! - `use`: `enc` or `sig`.

use crate::error::Error;
use crate::json::{self, b64url};
use base64::Engine as _;
use etee_formats::cert::Certificate;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;
use openssl::sha::sha256;
use serde::{Deserialize, Serialize};

/// The `use` parameter (RFC 7517 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyUse {
    Enc,
    Sig,
}

impl KeyUse {
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "enc" => Some(KeyUse::Enc),
            "sig" => Some(KeyUse::Sig),
            _ => None,
        }
    }
}

/// One JSON Web Key (public; only the members etee writes or reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<KeyUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x5c: Vec<String>,
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

/// A JWK Set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

fn key_err(e: impl std::fmt::Display) -> Error {
    Error::Key(e.to_string())
}

/// The `kid` etee gives a key: base64url(SHA-256(DER SubjectPublicKeyInfo)).
pub fn key_id(key: &PKey<Public>) -> Result<String, Error> {
    Ok(b64url::encode(&sha256(
        &key.public_key_to_der().map_err(key_err)?,
    )))
}

fn curve_name(nid: Nid) -> Option<&'static str> {
    match nid {
        Nid::X9_62_PRIME256V1 => Some("P-256"),
        Nid::SECP384R1 => Some("P-384"),
        Nid::SECP521R1 => Some("P-521"),
        _ => None,
    }
}

fn curve_nid(name: &str) -> Option<Nid> {
    match name {
        "P-256" => Some(Nid::X9_62_PRIME256V1),
        "P-384" => Some(Nid::SECP384R1),
        "P-521" => Some(Nid::SECP521R1),
        _ => None,
    }
}

impl Jwk {
    /// The JWK of a certificate's public key, with `x5c` = the certificate then `chain`.
    pub fn from_certificate(
        cert: &Certificate,
        chain: &[Certificate],
        key_use: KeyUse,
    ) -> Result<Self, Error> {
        let key = cert.public_key().map_err(key_err)?;
        let mut jwk = Jwk::from_public_key(&key)?;
        jwk.key_use = Some(key_use);
        jwk.x5c = std::iter::once(cert)
            .chain(chain)
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c.der()))
            .collect();
        jwk.x5t_s256 = Some(b64url::encode(&sha256(cert.der())));
        Ok(jwk)
    }

    /// The bare JWK (`kty`, key members, `kid`) of an RSA or EC (P-256/384/521) key.
    pub fn from_public_key(key: &PKey<Public>) -> Result<Self, Error> {
        let mut jwk = Jwk {
            kty: String::new(),
            key_use: None,
            kid: Some(key_id(key)?),
            n: None,
            e: None,
            crv: None,
            x: None,
            y: None,
            x5c: Vec::new(),
            x5t_s256: None,
        };
        match key.id() {
            Id::RSA => {
                let rsa = key.rsa().map_err(key_err)?;
                jwk.kty = "RSA".into();
                // BigNum::to_vec is big-endian and minimal: exactly RFC 7518's encoding.
                jwk.n = Some(b64url::encode(&rsa.n().to_vec()));
                jwk.e = Some(b64url::encode(&rsa.e().to_vec()));
            }
            Id::EC => {
                let ec = key.ec_key().map_err(key_err)?;
                let group = ec.group();
                let crv = group
                    .curve_name()
                    .and_then(curve_name)
                    .ok_or_else(|| key_err("EC curve other than P-256, P-384, P-521"))?;
                let size = group.degree().div_ceil(8) as i32;
                let mut ctx = BigNumContext::new().map_err(key_err)?;
                let (mut x, mut y) = (
                    BigNum::new().map_err(key_err)?,
                    BigNum::new().map_err(key_err)?,
                );
                ec.public_key()
                    .affine_coordinates_gfp(group, &mut x, &mut y, &mut ctx)
                    .map_err(key_err)?;
                jwk.kty = "EC".into();
                jwk.crv = Some(crv.into());
                jwk.x = Some(b64url::encode(&x.to_vec_padded(size).map_err(key_err)?));
                jwk.y = Some(b64url::encode(&y.to_vec_padded(size).map_err(key_err)?));
            }
            _ => return Err(key_err("only RSA and EC keys have a JWK here")),
        }
        Ok(jwk)
    }

    /// The public key the JWK describes (RSA or EC).
    pub fn public_key(&self) -> Result<PKey<Public>, Error> {
        let field = |v: &Option<String>, name: &str| -> Result<Vec<u8>, Error> {
            let s = v
                .as_deref()
                .ok_or_else(|| Error::Json(format!("JWK without {name}")))?;
            b64url::decode(s).map_err(|e| Error::Json(format!("JWK {name}: {e}")))
        };
        match self.kty.as_str() {
            "RSA" => {
                let n = BigNum::from_slice(&field(&self.n, "n")?).map_err(key_err)?;
                let e = BigNum::from_slice(&field(&self.e, "e")?).map_err(key_err)?;
                let rsa = Rsa::from_public_components(n, e).map_err(key_err)?;
                PKey::from_rsa(rsa).map_err(key_err)
            }
            "EC" => {
                let crv = self.crv.as_deref().unwrap_or_default();
                let nid = curve_nid(crv)
                    .ok_or_else(|| Error::Json(format!("unsupported JWK crv {crv:?}")))?;
                let group = EcGroup::from_curve_name(nid).map_err(key_err)?;
                let size = group.degree().div_ceil(8) as usize;
                let (x, y) = (field(&self.x, "x")?, field(&self.y, "y")?);
                if x.len() != size || y.len() != size {
                    return Err(Error::Json("JWK x/y not of the curve's size".into()));
                }
                let x = BigNum::from_slice(&x).map_err(key_err)?;
                let y = BigNum::from_slice(&y).map_err(key_err)?;
                let ec =
                    EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(key_err)?;
                PKey::from_ec_key(ec).map_err(key_err)
            }
            other => Err(Error::Json(format!("unsupported JWK kty {other:?}"))),
        }
    }

    /// The `x5c` certificates, parsed.
    pub fn certificates(&self) -> Result<Vec<Certificate>, Error> {
        self.x5c
            .iter()
            .map(|c| {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(c.as_bytes())
                    .map_err(|e| Error::Json(format!("x5c: {e}")))?;
                Certificate::from_der(&der).map_err(key_err)
            })
            .collect()
    }

    /// Checks the JWK is self-consistent: the key decodes, and when `x5c` is present its
    /// first certificate holds the same key and matches `x5t#S256`; `kid`, when it has
    /// etee's form, is not checked (other issuers choose theirs).
    pub fn validate(&self) -> Result<(), Error> {
        let key = self.public_key()?;
        let certs = self.certificates()?;
        if let Some(first) = certs.first() {
            let ck = first.public_key().map_err(key_err)?;
            if !ck.public_eq(&key) {
                return Err(Error::Json("x5c certificate holds another key".into()));
            }
            if let Some(t) = &self.x5t_s256 {
                if *t != b64url::encode(&sha256(first.der())) {
                    return Err(Error::Json("x5t#S256 does not match x5c".into()));
                }
            }
        }
        Ok(())
    }
}

impl JwkSet {
    /// One JWK per certificate (each with `x5c` = that certificate).
    pub fn from_certificates(certs: &[Certificate], key_use: KeyUse) -> Result<Self, Error> {
        Ok(JwkSet {
            keys: certs
                .iter()
                .map(|c| Jwk::from_certificate(c, &[], key_use))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        json::to_vec(self)
    }

    /// Parses a JWK Set and [validates](Jwk::validate) every key.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        let set: JwkSet = json::parse(input)?;
        for k in &set.keys {
            k.validate()?;
        }
        Ok(set)
    }
}
