//! KeyDepot REST (spec §6): JSON bodies, the registration proof of possession and the HSM
//! attestation statement.
//!
//! **All of this is etee's own design.** The real KeyDepot endpoints, bodies, key-id format
//! and "attestation object" were not found (§10); only the use of a key id as the CMS
//! subjectKeyIdentifier (LIB220 `WEB_AUTHN` policy) is known. So:
//! - a [`KeyId`] is the SKI bytes, the key's RFC 5280 method-1 identifier
//!   ([`KeyId::of_public_key`]); JSON carries it as base64url without padding (URL-safe,
//!   it appears in paths), while LIB220 APIs take standard base64 ([`KeyId::to_lib_string`]);
//! - registration proves possession of the private key by signing [`pop_challenge`], which
//!   names the registering holder;
//! - an HSM attestation is a canonical-JSON [`AttestationStatement`] signed by the holder's
//!   eHealth authentication key, with that certificate's chain ([`SignedAttestation`]).
//!
//! Signatures (both proofs): RSA keys (≥ 2048 bits) sign with RSASSA-PSS, SHA-256, MGF1-SHA-256,
//! salt 32 bytes; EC keys sign with ECDSA (DER signature) with SHA-256, SHA-384 or SHA-512
//! for P-256, P-384 and P-521 respectively.

use crate::error::Error;
use crate::etkdepot::rest::IdentifierJson;
use crate::etkdepot::Identifier;
use crate::json::{self, b64, b64url, rfc3339};
use base64::Engine as _;
use etee_formats::ber::slice::parse_exact;
use etee_formats::ber::tag;
use etee_formats::cert::{key_usage, Certificate};
use etee_formats::identity::{canonical_type, identities, normalize_value, Identity};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef, Private, Public};
use openssl::rsa::Padding;
use openssl::sha::sha256;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

pub use crate::etkdepot::jwks::KeyUse;

/// Longest accepted key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// A KeyDepot key id: the subjectKeyIdentifier bytes used in CMS (1..=64 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Vec<u8>);

impl KeyId {
    pub fn new(bytes: Vec<u8>) -> Result<Self, Error> {
        if bytes.is_empty() || bytes.len() > MAX_KEY_ID_LEN {
            return Err(Error::Content(format!(
                "key id must have 1 to {MAX_KEY_ID_LEN} bytes"
            )));
        }
        Ok(KeyId(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// base64url without padding, as in JSON and URLs.
    pub fn to_url_string(&self) -> String {
        b64url::encode(&self.0)
    }
    pub fn from_url_string(s: &str) -> Result<Self, Error> {
        KeyId::new(b64url::decode(s).map_err(|e| Error::Content(format!("key id: {e}")))?)
    }
    /// Standard base64, the keyId string of LIB220 (`SigningCredential.create(keyId, ..)`).
    pub fn to_lib_string(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }
    pub fn from_lib_string(s: &str) -> Result<Self, Error> {
        KeyId::new(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| Error::Content(format!("key id: {e}")))?,
        )
    }

    /// The id of a key: its RFC 5280 §4.2.1.2 method-1 key identifier, SHA-1 of the
    /// subjectPublicKey BIT STRING's bits (unused-bits octet excluded) of the DER
    /// SubjectPublicKeyInfo — what a certificate of the key would carry as its SKI. KeyDepot
    /// accepts no other id, so nobody can take the id of another's key.
    pub fn of_public_key(spki_der: &[u8]) -> Result<Self, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::Key(format!("the public key: {e}"));
        let spki = parse_exact(spki_der).map_err(|e| bad(&e))?;
        let mut fields = spki.seq().map_err(|e| bad(&e))?;
        fields.any().map_err(|e| bad(&e))?;
        let bits = fields.next(tag::BIT_STRING).map_err(|e| bad(&e))?;
        let bits = bits.octets().map_err(|e| bad(&e))?;
        let key = bits.get(1..).ok_or_else(|| bad(&"empty BIT STRING"))?;
        KeyId::new(openssl::sha::sha1(key).to_vec())
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_url_string())
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeyId::from_url_string(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Free information attached to a key (registration and "add info").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<KeyUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// Other string properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Most free properties a key's information may hold (after "add info" too).
pub const MAX_PROPERTIES: usize = 32;
/// Longest property name, in bytes.
pub const MAX_PROPERTY_NAME: usize = 64;
/// Longest property value, in bytes.
pub const MAX_PROPERTY_VALUE: usize = 1024;
/// Longest `label` and `applicationId`, in bytes.
pub const MAX_LABEL: usize = 256;
/// Most certificates in an attestation's `x5c` (each link costs a signature check).
pub const MAX_X5C: usize = 4;

impl KeyInfo {
    /// Whether the information is within KeyDepot's bounds (`MAX_*` above): the store keeps
    /// it for ever and serves it to anyone.
    pub fn check_limits(&self) -> Result<(), Error> {
        let too_long = |what: &str, len: usize, max: usize| {
            Err(Error::Content(format!(
                "{what} has {len} bytes, at most {max}"
            )))
        };
        for (what, v) in [
            ("label", &self.label),
            ("applicationId", &self.application_id),
        ] {
            if let Some(v) = v.as_ref().filter(|v| v.len() > MAX_LABEL) {
                return too_long(what, v.len(), MAX_LABEL);
            }
        }
        if self.properties.len() > MAX_PROPERTIES {
            return Err(Error::Content(format!(
                "{} properties, at most {MAX_PROPERTIES}",
                self.properties.len()
            )));
        }
        for (k, v) in &self.properties {
            if k.len() > MAX_PROPERTY_NAME {
                return too_long("a property name", k.len(), MAX_PROPERTY_NAME);
            }
            if v.len() > MAX_PROPERTY_VALUE {
                return too_long(&format!("property {k:?}"), v.len(), MAX_PROPERTY_VALUE);
            }
        }
        Ok(())
    }

    /// "Add info": fields of `other` that are set replace those of `self`.
    pub fn merge(&mut self, other: &KeyInfo) {
        if other.label.is_some() {
            self.label.clone_from(&other.label);
        }
        if other.key_use.is_some() {
            self.key_use = other.key_use;
        }
        if other.application_id.is_some() {
            self.application_id.clone_from(&other.application_id);
        }
        self.properties
            .extend(other.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// `POST /keys`: register a public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterKeyRequest {
    pub key_id: KeyId,
    /// DER SubjectPublicKeyInfo, standard base64.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// Signature over [`pop_challenge`] (naming the registering holder) by the private key.
    #[serde(with = "b64")]
    pub proof_of_possession: Vec<u8>,
    #[serde(default)]
    pub info: KeyInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<SignedAttestation>,
}

impl RegisterKeyRequest {
    /// Parses and checks the key is usable (see [`parse_public_key`]); does not verify proofs.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        let r: Self = json::parse(input)?;
        parse_public_key(&r.public_key)?;
        Ok(r)
    }
    pub fn to_json(&self) -> Vec<u8> {
        json::to_vec(self)
    }
    /// Whether the request is within KeyDepot's bounds: its information
    /// ([`KeyInfo::check_limits`]) and at most [`MAX_X5C`] certificates of attestation.
    pub fn check_limits(&self) -> Result<(), Error> {
        self.info.check_limits()?;
        match &self.attestation {
            Some(a) if a.x5c.len() > MAX_X5C => Err(Error::Content(format!(
                "the attestation's x5c has {} certificates, at most {MAX_X5C}",
                a.x5c.len()
            ))),
            _ => Ok(()),
        }
    }
    /// Verifies the proof of possession, made for a registration by `holder`.
    pub fn verify_proof_of_possession(&self, holder: &Identity) -> Result<(), Error> {
        let msg = pop_challenge(&self.key_id, &self.public_key, holder);
        verify_signature(
            &parse_public_key(&self.public_key)?,
            &msg,
            &self.proof_of_possession,
        )
    }
}

/// The holder of keys, as KeyDepot knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderInfo {
    pub identifiers: Vec<IdentifierJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Whether a key may still be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
}

/// One registered key (`GET /keys/{keyId}`, elements of the list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub key_id: KeyId,
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    pub holder: HolderInfo,
    #[serde(default)]
    pub info: KeyInfo,
    /// Whether a valid HSM attestation was given at registration.
    pub attested: bool,
    pub status: KeyStatus,
    #[serde(with = "rfc3339")]
    pub created_at: i64,
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterKeyResponse {
    pub key: KeyRecord,
}

/// `GET /holders/{type}/{value}/keys`: a person's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyListResponse {
    pub holder: HolderInfo,
    pub keys: Vec<KeyRecord>,
}

/// `PATCH /keys/{keyId}/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddInfoRequest {
    pub info: KeyInfo,
}

macro_rules! json_codec {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn parse(input: &[u8]) -> Result<Self, Error> {
                json::parse(input)
            }
            pub fn to_json(&self) -> Vec<u8> {
                json::to_vec(self)
            }
        }
    )*};
}
json_codec!(
    HolderInfo,
    KeyRecord,
    RegisterKeyResponse,
    KeyListResponse,
    AddInfoRequest
);

fn key_err(e: impl std::fmt::Display) -> Error {
    Error::Key(e.to_string())
}

/// Parses a DER SubjectPublicKeyInfo and requires a key etee accepts: RSA ≥ 2048 bits, or
/// EC on P-256, P-384 or P-521.
pub fn parse_public_key(spki_der: &[u8]) -> Result<PKey<Public>, Error> {
    let key = PKey::public_key_from_der(spki_der).map_err(key_err)?;
    signature_digest(&key)?;
    Ok(key)
}

/// The digest of the signature scheme for this key (see the module doc).
fn signature_digest<T: HasPublic>(key: &PKeyRef<T>) -> Result<MessageDigest, Error> {
    match key.id() {
        Id::RSA if key.bits() >= 2048 => Ok(MessageDigest::sha256()),
        Id::RSA => Err(key_err("RSA keys must have at least 2048 bits")),
        Id::EC => {
            let nid = key.ec_key().map_err(key_err)?.group().curve_name();
            match nid {
                Some(Nid::X9_62_PRIME256V1) => Ok(MessageDigest::sha256()),
                Some(Nid::SECP384R1) => Ok(MessageDigest::sha384()),
                Some(Nid::SECP521R1) => Ok(MessageDigest::sha512()),
                _ => Err(key_err("EC keys must be on P-256, P-384 or P-521")),
            }
        }
        _ => Err(key_err("only RSA and EC keys are accepted")),
    }
}

/// Domain separation tag of the registration proof of possession. Version 2 names the
/// holder: a version-1 proof did not, so anyone holding a registration body (printed by
/// `etee keys attest`, or refused once) could send it first as their own, without its
/// attestation, and take the key.
pub const POP_DOMAIN: &[u8] = b"etee-keydepot-register-v2\0";

/// The bytes a key holder signs to register a key:
/// `"etee-keydepot-register-v2\0" || u32-big-endian(len(keyId)) || keyId || SHA-256(SPKI DER)
/// || u32-big-endian(len(holder)) || holder`, where `holder` is `TYPE=VALUE` of the
/// registering caller's identity (its TLS client certificate's first, as KeyDepot takes
/// it), its type canonical (`HUB` is `EHP`) and its value zero-padded; the application id
/// is not part of it, as KeyDepot does not compare it.
///
/// Binding the key id and the exact public key stops a proof being replayed for another
/// key id or key, the holder for another caller; the tag stops it being confused with any
/// other etee signature.
pub fn pop_challenge(key_id: &KeyId, spki_der: &[u8], holder: &Identity) -> Vec<u8> {
    let id = key_id.as_bytes();
    let (holder_type, holder_value) = holder_key(&holder.id_type, &holder.value);
    let holder = format!("{holder_type}={holder_value}");
    let mut m = Vec::with_capacity(POP_DOMAIN.len() + 8 + id.len() + 32 + holder.len());
    m.extend_from_slice(POP_DOMAIN);
    m.extend_from_slice(&(id.len() as u32).to_be_bytes());
    m.extend_from_slice(id);
    m.extend_from_slice(&sha256(spki_der));
    m.extend_from_slice(&(holder.len() as u32).to_be_bytes());
    m.extend_from_slice(holder.as_bytes());
    m
}

/// Signs with a software key using the scheme of the module doc (clients, tests).
pub fn sign(key: &PKey<Private>, msg: &[u8]) -> Result<Vec<u8>, Error> {
    let md = signature_digest(key)?;
    let mut s = Signer::new(md, key).map_err(key_err)?;
    if key.id() == Id::RSA {
        s.set_rsa_padding(Padding::PKCS1_PSS).map_err(key_err)?;
        s.set_rsa_mgf1_md(md).map_err(key_err)?;
        s.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))
            .map_err(key_err)?;
    }
    s.update(msg).map_err(key_err)?;
    s.sign_to_vec().map_err(key_err)
}

/// Verifies a signature made with the scheme of the module doc.
pub fn verify_signature(key: &PKey<Public>, msg: &[u8], sig: &[u8]) -> Result<(), Error> {
    let md = signature_digest(key)?;
    let mut v = Verifier::new(md, key).map_err(key_err)?;
    if key.id() == Id::RSA {
        v.set_rsa_padding(Padding::PKCS1_PSS).map_err(key_err)?;
        v.set_rsa_mgf1_md(md).map_err(key_err)?;
        v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32))
            .map_err(key_err)?;
    }
    v.update(msg).map_err(key_err)?;
    // OpenSSL reports a malformed signature as an error, a wrong one as false: both fail.
    match v.verify(sig) {
        Ok(true) => Ok(()),
        _ => Err(Error::Verification("signature does not verify".into())),
    }
}

/// The `format` of etee's attestation statement.
pub const ATTESTATION_FORMAT: &str = "etee-hsm-attestation-v1";

/// The token (HSM slot) that holds the key, as PKCS#11 `CK_TOKEN_INFO` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenInfo {
    pub label: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
}

/// The PKCS#11 attributes of the private key that make it non-exportable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyAttributes {
    pub sensitive: bool,
    pub extractable: bool,
    pub never_extractable: bool,
    /// Generated on the token (`CKA_LOCAL`).
    pub local: bool,
}

impl KeyAttributes {
    /// Sensitive, not extractable and never extractable: the key cannot have left the HSM.
    pub fn is_non_exportable(&self) -> bool {
        self.sensitive && !self.extractable && self.never_extractable
    }

    /// What an attestation states: generated in the HSM (`CKA_LOCAL`) and unable to leave
    /// it. A key imported into a token (from a `.p12`, say) existed outside it once.
    pub fn is_attestable(&self) -> bool {
        self.local && self.is_non_exportable()
    }
}

/// etee's HSM attestation statement (etee's own format, not WebAuthn). Signed as its
/// canonical JSON ([`json::canonical`]: sorted keys, no whitespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationStatement {
    /// Always [`ATTESTATION_FORMAT`].
    pub format: String,
    pub key_id: KeyId,
    /// SHA-256 of the attested key's DER SubjectPublicKeyInfo, base64url.
    #[serde(with = "b64url")]
    pub spki_sha256: Vec<u8>,
    pub token: TokenInfo,
    pub attributes: KeyAttributes,
    #[serde(with = "rfc3339")]
    pub issued_at: i64,
}

impl AttestationStatement {
    /// A statement about the key `spki_der` with id `key_id`.
    pub fn new(
        key_id: KeyId,
        spki_der: &[u8],
        token: TokenInfo,
        attributes: KeyAttributes,
        issued_at: i64,
    ) -> Self {
        AttestationStatement {
            format: ATTESTATION_FORMAT.into(),
            key_id,
            spki_sha256: sha256(spki_der).to_vec(),
            token,
            attributes,
            issued_at,
        }
    }

    /// The bytes to sign: the canonical JSON of the statement.
    pub fn to_be_signed(&self) -> Result<Vec<u8>, Error> {
        json::canonical(self)
    }
}

/// A signed attestation: the exact signed bytes, the signature, and the signer's certificate
/// chain (`x5c`, standard base64 DER, signer first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedAttestation {
    /// Canonical JSON of an [`AttestationStatement`], standard base64.
    #[serde(with = "b64")]
    pub statement: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    pub x5c: Vec<String>,
}

/// What a verified attestation establishes; the caller still validates `chain` against its
/// trust anchors (`etee_formats::trust`) and applies its policy to `statement.attributes`.
#[derive(Clone, Debug)]
pub struct VerifiedAttestation {
    pub statement: AttestationStatement,
    pub signer: Certificate,
    /// The certificates after the signer.
    pub chain: Vec<Certificate>,
}

impl SignedAttestation {
    /// Signs a statement with a software key (tests, software holders); HSM holders sign
    /// [`AttestationStatement::to_be_signed`] themselves.
    pub fn sign(
        statement: &AttestationStatement,
        key: &PKey<Private>,
        signer: &Certificate,
        chain: &[Certificate],
    ) -> Result<Self, Error> {
        let bytes = statement.to_be_signed()?;
        Ok(SignedAttestation {
            signature: sign(key, &bytes)?,
            statement: bytes,
            x5c: std::iter::once(signer)
                .chain(chain)
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c.der()))
                .collect(),
        })
    }

    /// Verifies: at most [`MAX_X5C`] certificates; the chain links (each certificate signed
    /// by the next); the signer may sign
    /// (keyUsage digitalSignature); the signature over the statement bytes; the statement is
    /// canonical, of etee's format, about `key_id` and `spki_der`, says the key is
    /// non-exportable; and the signer's certificate names `holder` (type and zero-padded
    /// value; the application id is not compared).
    pub fn verify(
        &self,
        key_id: &KeyId,
        spki_der: &[u8],
        holder: &Identifier,
    ) -> Result<VerifiedAttestation, Error> {
        let fail = |m: &str| Err(Error::Verification(format!("attestation: {m}")));
        if self.x5c.len() > MAX_X5C {
            return fail("x5c has too many certificates");
        }
        let mut certs = Vec::with_capacity(self.x5c.len());
        for c in &self.x5c {
            let der = base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .map_err(|e| Error::Json(format!("x5c: {e}")))?;
            certs.push(Certificate::from_der(&der).map_err(key_err)?);
        }
        let Some(signer) = certs.first().cloned() else {
            return fail("no signer certificate");
        };
        for pair in certs.windows(2) {
            let issuer_key = pair[1].public_key().map_err(key_err)?;
            if !pair[0].is_signed_by(&issuer_key) {
                return fail("x5c is not a chain");
            }
        }
        if !signer.allows_any(key_usage::DIGITAL_SIGNATURE) {
            return fail("signer certificate may not sign");
        }
        let signer_key = signer.public_key().map_err(key_err)?;
        verify_signature(&signer_key, &self.statement, &self.signature)?;
        let statement: AttestationStatement = json::parse(&self.statement)?;
        if statement.to_be_signed()? != self.statement {
            return fail("statement is not canonical JSON");
        }
        if statement.format != ATTESTATION_FORMAT {
            return fail("unknown format");
        }
        if statement.key_id != *key_id {
            return fail("statement is about another key id");
        }
        if statement.spki_sha256 != sha256(spki_der) {
            return fail("statement is about another public key");
        }
        if !statement.attributes.is_non_exportable() {
            return fail("key is exportable");
        }
        if !statement.attributes.local {
            return fail("key was not generated in the HSM (CKA_LOCAL is false: imported)");
        }
        let want = holder_key(&holder.id_type, &holder.value);
        if !identities(&signer)
            .iter()
            .any(|i| holder_key(&i.id_type, &i.value) == want)
        {
            return fail("signer is not the key holder");
        }
        Ok(VerifiedAttestation {
            statement,
            signer,
            chain: certs[1..].to_vec(),
        })
    }

    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        json::parse(input)
    }
    pub fn to_json(&self) -> Vec<u8> {
        json::to_vec(self)
    }
}

/// (TYPE, value) compared after normalisation when the type is known: the canonical type
/// (`HUB` is `EHP`) and the zero-padded value.
fn holder_key(id_type: &str, value: &str) -> (String, String) {
    let t = id_type.trim();
    let t = canonical_type(t).map_or_else(|| t.to_ascii_uppercase(), str::to_owned);
    let v = normalize_value(&t, value).unwrap_or_else(|_| value.trim().to_owned());
    (t, v)
}
