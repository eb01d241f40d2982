//! Keys in the token: templates, generation, certificates beside keys, CSRs.
//!
//! Every private key is `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and not
//! `CKA_EXTRACTABLE`, with `CKA_ALLOWED_MECHANISMS` limited to what its role needs:
//!
//! | role | CKA_SIGN | CKA_DECRYPT | CKA_ALLOWED_MECHANISMS |
//! |---|---|---|---|
//! | authentication | true | false | `CKM_RSA_PKCS_PSS`, `CKM_SHA256_RSA_PKCS_PSS` |
//! | ETK | false | true | `CKM_RSA_PKCS` |
//!
//! `CKA_UNWRAP`, `CKA_DERIVE`, `CKA_SIGN_RECOVER` are false.
//!
//! A wrapping key (role `wrapping`, built-in profile `kgss-wrap`) is an AES secret key
//! (`CKM_AES_KEY_GEN`), equally `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and not
//! `CKA_EXTRACTABLE`, with `CKA_WRAP` and `CKA_UNWRAP` true, `CKA_ENCRYPT`, `CKA_DECRYPT`,
//! `CKA_SIGN`, `CKA_VERIFY`, `CKA_DERIVE` false and `CKA_ALLOWED_MECHANISMS` =
//! `CKM_AES_KEY_WRAP`. Secrets are wrapped with `C_WrapKey` (SoftHSM 2.6 does not offer
//! `CKM_AES_KEY_WRAP` to `C_Encrypt`), so each one passes through a short-lived session
//! object (`wrap_aes_kw`, `unwrap_aes_kw`).
//!
//! Ids follow the eHealth alias
//! convention: CKA_ID `authentication` for the authentication key, the decimal serial of
//! the ETK certificate for an ETK key. Certificates are `CKO_CERTIFICATE` objects with the
//! same CKA_ID as their key; CA certificates get CKA_ID `ca-<first 8 bytes of SHA-256>`.

use crate::config::{KeyProfile, KeyRole};
use crate::error::{CkContext, HsmError, Result};
use crate::pool::{Conn, SessionPool};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use etee_formats::ber::{tag, write};
use etee_formats::cert::Certificate;
use etee_formats::oid;
use openssl::bn::BigNum;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde::Serialize;

/// The prefix of provisional ETK ids, until the ETK certificate is installed.
pub const PENDING_ETK_PREFIX: &str = "etk-pending-";
/// The authentication key's CKA_ID.
pub const AUTHENTICATION_ID: &str = etee_formats::keystore::ehealth::AUTHENTICATION_ALIAS;

/// A key pair (or, for a wrapping key, a secret key) just generated in the token.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratedKey {
    pub id: String,
    pub label: String,
    pub role: KeyRole,
    /// RSA modulus or AES key size.
    pub bits: u32,
    /// SubjectPublicKeyInfo DER, hex (for registration tools); empty for a wrapping key,
    /// which has no public half.
    pub public_key_hex: String,
}

impl GeneratedKey {
    /// The SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        hex::decode(&self.public_key_hex).unwrap_or_default()
    }
}

/// The private key template for `role` (without key material).
pub(crate) fn private_template(
    role: KeyRole,
    id: &[u8],
    label: &[u8],
    mechanisms: Vec<MechanismType>,
) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(role == KeyRole::Authentication),
        Attribute::SignRecover(false),
        Attribute::Decrypt(role == KeyRole::Etk),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(mechanisms),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// The public key template for `role` (without key material).
pub(crate) fn public_template(role: KeyRole, id: &[u8], label: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(role == KeyRole::Authentication),
        Attribute::VerifyRecover(false),
        Attribute::Encrypt(role == KeyRole::Etk),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ]
}

/// Generates a key in the token following `profile`: an RSA key pair, or an AES secret key
/// for a wrapping key.
pub fn generate(pool: &SessionPool, profile: &KeyProfile) -> Result<GeneratedKey> {
    if profile.role == KeyRole::Wrapping {
        return generate_wrapping(pool, profile);
    }
    let id = match &profile.id {
        Some(id) => id.clone(),
        None => {
            let mut r = [0u8; 8];
            openssl::rand::rand_bytes(&mut r)?;
            format!("{PENDING_ETK_PREFIX}{}", hex::encode(r))
        }
    };
    let label = profile.label.clone().unwrap_or_else(|| id.clone());
    let role = profile.role;
    let bits = profile.bits;
    let mechanisms = profile.mechanism_types();
    pool.run(move |conn| {
        ensure_id_free(conn, &id)?;
        let mut public = public_template(role, id.as_bytes(), label.as_bytes());
        public.push(Attribute::ModulusBits(
            Ulong::try_from(bits as usize).ctx("bits")?,
        ));
        public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
        let private = private_template(role, id.as_bytes(), label.as_bytes(), mechanisms.clone());
        let (_, private_handle) = conn
            .session()
            .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
            .ctx("generating an RSA key pair")?;
        conn.forget_handles();
        let spki = public_key_der(conn.session(), private_handle)?;
        Ok(GeneratedKey {
            id: id.clone(),
            label: label.clone(),
            role,
            bits,
            public_key_hex: hex::encode(spki),
        })
    })
}

/// The template of a wrapping key (without key material): see the module doc.
pub(crate) fn wrapping_template(
    id: &[u8],
    label: &[u8],
    bytes: usize,
    mechanisms: Vec<MechanismType>,
) -> Result<Vec<Attribute>> {
    Ok(vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::try_from(bytes).ctx("key size")?),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(mechanisms),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.to_vec()),
    ])
}

/// Generates the AES wrapping key of `profile` (which has an id: checked by the config).
fn generate_wrapping(pool: &SessionPool, profile: &KeyProfile) -> Result<GeneratedKey> {
    let id = profile
        .id
        .clone()
        .ok_or_else(|| HsmError::Config(format!("profile {:?}: no id", profile.name)))?;
    let label = profile.label.clone().unwrap_or_else(|| id.clone());
    let bits = profile.bits;
    let template = wrapping_template(
        id.as_bytes(),
        label.as_bytes(),
        bits as usize / 8,
        profile.mechanism_types(),
    )?;
    pool.run(|conn| {
        ensure_id_free(conn, &id)?;
        conn.session()
            .generate_key(&Mechanism::AesKeyGen, &template)
            .ctx("generating an AES wrapping key")?;
        conn.forget_handles();
        Ok(GeneratedKey {
            id: id.clone(),
            label: label.clone(),
            role: KeyRole::Wrapping,
            bits,
            public_key_hex: String::new(),
        })
    })
}

/// The attributes of the short-lived session objects that carry a secret into `C_WrapKey`
/// or out of `C_UnwrapKey`: AES, not on the token, readable (that is their purpose), good
/// for nothing else.
fn transit_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

/// AES key wrap (RFC 3394) of `secret` with the wrapping key `id`: the secret becomes a
/// session object, `C_WrapKey` wraps it, and the object is destroyed whatever happened (a
/// failed `C_DestroyObject` fails the call; the object dies with its session at the latest).
pub(crate) fn wrap_aes_kw(conn: &mut Conn<'_>, id: &[u8], secret: &[u8]) -> Result<Vec<u8>> {
    let wrapping_key = conn.find_object(ObjectClass::SECRET_KEY, id)?;
    let mut template = transit_template();
    template.push(Attribute::Value(secret.to_vec()));
    let created = conn.session().create_object(&template);
    wipe_template(&mut template);
    let transit = created.ctx("creating the session key to wrap")?;
    let wrapped = conn
        .session()
        .wrap_key(&Mechanism::AesKeyWrap, wrapping_key, transit)
        .ctx("wrapping (CKM_AES_KEY_WRAP)");
    let destroyed = conn
        .session()
        .destroy_object(transit)
        .ctx("destroying the session key after wrapping");
    let wrapped = wrapped?;
    destroyed?;
    Ok(wrapped)
}

/// The inverse of [`wrap_aes_kw`]: `C_UnwrapKey` into a session object, its CKA_VALUE read
/// into a wiped buffer, the object destroyed whatever happened. Failures that may depend on
/// the blob (integrity check, length) become [`HsmError::UnwrapFailed`], which the pool does
/// not retry.
pub(crate) fn unwrap_aes_kw(
    conn: &mut Conn<'_>,
    id: &[u8],
    wrapped: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let wrapping_key = conn.find_object(ObjectClass::SECRET_KEY, id)?;
    let transit = conn
        .session()
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            wrapping_key,
            wrapped,
            &transit_template(),
        )
        .map_err(unwrap_error)?;
    let value = conn
        .session()
        .get_attributes(transit, &[AttributeType::Value])
        .ctx("reading the unwrapped secret")
        .map(|attrs| {
            attrs.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(zeroize::Zeroizing::new(v)),
                _ => None,
            })
        });
    let destroyed = conn
        .session()
        .destroy_object(transit)
        .ctx("destroying the session key after unwrapping");
    let value = value?.ok_or_else(|| HsmError::Invalid("the unwrapped key has no value".into()))?;
    destroyed?;
    Ok(value)
}

/// Passes on the failures that cannot depend on the blob (so that the pool may recover and
/// retry); every other one is final, with its return value kept for the audit record.
fn unwrap_error(e: cryptoki::error::Error) -> HsmError {
    use cryptoki::error::RvError::*;
    let e = HsmError::ck(e, "unwrapping (CKM_AES_KEY_WRAP)");
    match e.rv() {
        Some(
            SessionHandleInvalid
            | SessionClosed
            | CryptokiNotInitialized
            | UserNotLoggedIn
            | KeyHandleInvalid
            | ObjectHandleInvalid
            | TokenNotPresent
            | DeviceRemoved,
        )
        | None => e,
        Some(rv) => HsmError::UnwrapFailed(rv),
    }
}

/// Reads attributes that may be present; absent or sensitive ones are left out.
pub(crate) fn attributes(
    session: &Session,
    object: ObjectHandle,
    types: &[AttributeType],
) -> Result<Vec<Attribute>> {
    session
        .get_attributes(object, types)
        .ctx("reading attributes")
}

pub(crate) fn bytes_attr(
    session: &Session,
    object: ObjectHandle,
    t: AttributeType,
) -> Result<Option<Vec<u8>>> {
    Ok(attributes(session, object, &[t])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(v)
            | Attribute::Label(v)
            | Attribute::Value(v)
            | Attribute::Modulus(v)
            | Attribute::PublicExponent(v)
            | Attribute::Subject(v) => Some(v),
            _ => None,
        }))
}

/// The SubjectPublicKeyInfo DER of an RSA key object (public or private: CKA_MODULUS
/// and CKA_PUBLIC_EXPONENT are public attributes).
pub(crate) fn public_key_der(session: &Session, key: ObjectHandle) -> Result<Vec<u8>> {
    let attrs = attributes(
        session,
        key,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    let (n, e) = n
        .zip(e)
        .ok_or_else(|| HsmError::Invalid("the key has no RSA modulus or exponent".into()))?;
    let rsa = Rsa::from_public_components(BigNum::from_slice(&n)?, BigNum::from_slice(&e)?)?;
    Ok(PKey::from_rsa(rsa)?.public_key_to_der()?)
}

/// RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) over a SHA-256 digest, in the token.
pub(crate) fn sign_pss(conn: &mut Conn<'_>, id: &[u8], digest: &[u8; 32]) -> Result<Vec<u8>> {
    let key = conn.find_object(ObjectClass::PRIVATE_KEY, id)?;
    let mechanism = Mechanism::RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: Ulong::try_from(32usize).ctx("salt length")?,
    });
    conn.session()
        .sign(&mechanism, key, digest)
        .ctx("signing (CKM_RSA_PKCS_PSS)")
}

/// RSA PKCS#1 v1.5 decryption (`CKM_RSA_PKCS`) with the private key `id`. Failures that
/// could depend on the ciphertext come back as one opaque error (see
/// [`crate::ops::decrypt_error`]).
pub(crate) fn decrypt_pkcs1v15(
    conn: &mut Conn<'_>,
    id: &[u8],
    blob: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let key = conn.find_object(ObjectClass::PRIVATE_KEY, id)?;
    conn.session()
        .decrypt(&Mechanism::RsaPkcs, key, blob)
        .map(zeroize::Zeroizing::new)
        .map_err(crate::ops::decrypt_error)
}

/// The CKA_ID of a CA certificate.
pub(crate) fn ca_id(der: &[u8]) -> String {
    format!("ca-{}", hex::encode(&openssl::sha::sha256(der)[..8]))
}

/// Stores `cert` under `id`, unless a certificate with that id and the same DER is there
/// already (a different one is an error).
pub(crate) fn store_certificate(
    conn: &mut Conn<'_>,
    id: &str,
    label: &str,
    cert: &Certificate,
) -> Result<bool> {
    let existing = conn.find_all(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::Id(id.as_bytes().to_vec()),
    ])?;
    if let Some(&h) = existing.first() {
        if bytes_attr(conn.session(), h, AttributeType::Value)?.as_deref() == Some(cert.der()) {
            return Ok(false);
        }
        return Err(HsmError::Certificate(format!(
            "another certificate with CKA_ID {id:?} is already in the token"
        )));
    }
    let template = vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Subject(cert.subject_der().to_vec()),
        Attribute::Issuer(cert.issuer_der().to_vec()),
        Attribute::SerialNumber(write::uint(cert.serial())),
        Attribute::Value(cert.der().to_vec()),
    ];
    conn.session()
        .create_object(&template)
        .ctx("storing a certificate")?;
    Ok(true)
}

/// Stores CA certificates (skipping those already there); returns how many were added.
pub(crate) fn store_chain(conn: &mut Conn<'_>, chain: &[Certificate]) -> Result<usize> {
    let mut added = 0;
    for c in chain {
        let label = format!("CA {}", c.subject_string());
        let label: String = label.chars().take(96).collect();
        if store_certificate(conn, &ca_id(c.der()), &label, c)? {
            added += 1;
        }
    }
    Ok(added)
}

/// Fails with [`HsmError::KeyExists`] when a private or secret key already carries CKA_ID
/// `id`.
pub(crate) fn ensure_id_free(conn: &Conn<'_>, id: &str) -> Result<()> {
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
        let template = [
            Attribute::Class(class),
            Attribute::Id(id.as_bytes().to_vec()),
        ];
        if !conn.find_all(&template)?.is_empty() {
            return Err(HsmError::KeyExists(id.to_string()));
        }
    }
    Ok(())
}

/// Destroys the certificates, public keys and private key with CKA_ID `id`, the private
/// key last (a failure on the way leaves the key in place, which the outcome then says);
/// how many objects there were. Secret (wrapping) keys are never destroyed here.
/// [`HsmError::NotFound`] when there is none.
/// The custody attributes of the key `id` (a private key, else a secret key) as the token
/// reports them: sensitive, extractable, never extractable, generated in the token.
pub(crate) fn custody_attributes(
    conn: &mut Conn<'_>,
    id: &[u8],
    wrapping: bool,
) -> Result<[Option<bool>; 4]> {
    let class = if wrapping {
        ObjectClass::SECRET_KEY
    } else {
        ObjectClass::PRIVATE_KEY
    };
    let key = conn.find_object(class, id)?;
    let attrs = attributes(
        conn.session(),
        key,
        &[
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Local,
        ],
    )?;
    let mut facts = [None; 4];
    for a in attrs {
        match a {
            Attribute::Sensitive(b) => facts[0] = Some(b),
            Attribute::Extractable(b) => facts[1] = Some(b),
            Attribute::NeverExtractable(b) => facts[2] = Some(b),
            Attribute::Local(b) => facts[3] = Some(b),
            _ => {}
        }
    }
    Ok(facts)
}

pub(crate) fn destroy_with_id(conn: &mut Conn<'_>, id: &[u8]) -> Result<usize> {
    let mut destroyed = 0;
    let mut result = Ok(());
    'classes: for class in [
        ObjectClass::CERTIFICATE,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::PRIVATE_KEY,
    ] {
        let handles = match conn.find_all(&[Attribute::Class(class), Attribute::Id(id.to_vec())]) {
            Ok(h) => h,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        for h in handles {
            if let Err(e) = conn.session().destroy_object(h).ctx("destroying an object") {
                result = Err(e);
                break 'classes;
            }
            destroyed += 1;
        }
    }
    // Handles of destroyed objects must not be used again, whatever happened.
    conn.forget_handles();
    result?;
    if destroyed == 0 {
        return Err(HsmError::NotFound {
            what: "object with CKA_ID",
            id: String::from_utf8_lossy(id).into_owned(),
        });
    }
    Ok(destroyed)
}

/// Every certificate in the token, with its CKA_ID.
pub(crate) fn all_certificates(conn: &Conn<'_>) -> Result<Vec<(Vec<u8>, Certificate)>> {
    let handles = conn.find_all(&[Attribute::Class(ObjectClass::CERTIFICATE)])?;
    read_certificates(conn.session(), handles)
}

/// The CKA_ID and certificate of each of `handles` (certificate objects); values that do
/// not parse are left out.
pub(crate) fn read_certificates(
    session: &Session,
    handles: Vec<ObjectHandle>,
) -> Result<Vec<(Vec<u8>, Certificate)>> {
    let mut out = Vec::new();
    for h in handles {
        let attrs = attributes(session, h, &[AttributeType::Id, AttributeType::Value])?;
        let (mut id, mut der) = (Vec::new(), None);
        for a in attrs {
            match a {
                Attribute::Id(v) => id = v,
                Attribute::Value(v) => der = Some(v),
                _ => {}
            }
        }
        if let Some(cert) = der.and_then(|d| Certificate::from_der(&d).ok()) {
            out.push((id, cert));
        }
    }
    Ok(out)
}

/// The issuers of `leaf` among `certs`, issuer first, as far as they go.
pub(crate) fn chain_for(leaf: &Certificate, certs: &[Certificate]) -> Vec<Certificate> {
    let mut chain: Vec<Certificate> = Vec::new();
    let mut current = leaf.clone();
    while chain.len() < 8 && current.issuer_der() != current.subject_der() {
        let Some(issuer) = certs.iter().find(|c| {
            c.subject_der() == current.issuer_der()
                && c.der() != current.der()
                && !chain.iter().any(|x| x.der() == c.der())
        }) else {
            break;
        };
        chain.push(issuer.clone());
        current = issuer.clone();
    }
    chain
}

/// Installs the certificate of a key generated in the token (and its CA chain). For an
/// ETK key the key is renamed to the certificate's decimal serial (CKA_ID and CKA_LABEL of
/// the private and public key objects), as the eHealth convention wants. Returns the
/// key's final id.
///
/// The certificate is stored first and the private key renamed last, so a failure on the
/// way leaves the key under a name the operator still knows; a retry, with the pending id
/// or the serial, finds the key by its public key and completes what is missing.
pub fn install_certificate(
    pool: &SessionPool,
    key_id: &str,
    cert: &Certificate,
    chain: &[Certificate],
) -> Result<String> {
    let key_id = key_id.to_string();
    let cert = cert.clone();
    let chain = chain.to_vec();
    pool.run(move |conn| {
        let cert_spki = cert
            .public_key()
            .and_then(|k| k.public_key_to_der())
            .map_err(|e| HsmError::Certificate(e.to_string()))?;
        let (private, current) = match conn.find_object(ObjectClass::PRIVATE_KEY, key_id.as_bytes())
        {
            Ok(h) => (h, key_id.clone()),
            // An earlier install that stopped half way may have renamed the key already.
            Err(HsmError::NotFound { .. }) => match key_for_spki(conn, &cert_spki)? {
                Some(found) => found,
                None => {
                    return Err(HsmError::NotFound {
                        what: "private key",
                        id: key_id.clone(),
                    })
                }
            },
            Err(e) => return Err(e),
        };
        let key_spki = public_key_der(conn.session(), private)?;
        if key_spki != cert_spki {
            return Err(HsmError::Certificate(format!(
                "the certificate ({}) is not for key {key_id:?}",
                cert.subject_string()
            )));
        }
        let decrypt = attributes(conn.session(), private, &[AttributeType::Decrypt])?
            .into_iter()
            .any(|a| matches!(a, Attribute::Decrypt(true)));
        let id = if decrypt {
            cert.serial_decimal()
        } else {
            current.clone()
        };
        if id != current {
            ensure_id_free(conn, &id)?;
        }
        store_certificate(conn, &id, &id, &cert)?;
        store_chain(conn, &chain)?;
        let rename = [
            Attribute::Id(id.as_bytes().to_vec()),
            Attribute::Label(id.as_bytes().to_vec()),
        ];
        // Public keys under the name given or the key's current one (a retry after the
        // private key was renamed but not its public key), then the private key.
        let mut objects = Vec::new();
        for old in [&key_id, &current] {
            if *old != id {
                for o in conn.find_all(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(old.as_bytes().to_vec()),
                ])? {
                    // Only the public half of this key: the name given may be another's.
                    let same = public_key_der(conn.session(), o).is_ok_and(|d| d == cert_spki);
                    if same && !objects.contains(&o) {
                        objects.push(o);
                    }
                }
            }
        }
        if current != id {
            objects.push(private);
        }
        for o in objects {
            conn.session()
                .update_attributes(o, &rename)
                .ctx("renaming the key to its certificate serial")?;
        }
        conn.forget_handles();
        Ok(id)
    })
}

/// The private key (and its CKA_ID) whose public key is `spki`, if the token has one.
fn key_for_spki(conn: &Conn<'_>, spki: &[u8]) -> Result<Option<(ObjectHandle, String)>> {
    for h in conn.find_all(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])? {
        // Keys that are not RSA (none here today) have no modulus: not the one sought.
        let Ok(der) = public_key_der(conn.session(), h) else {
            continue;
        };
        if der == spki {
            let id = bytes_attr(conn.session(), h, AttributeType::Id)?.unwrap_or_default();
            return Ok(Some((h, String::from_utf8_lossy(&id).into_owned())));
        }
    }
    Ok(None)
}

/// A PKCS#10 CertificationRequest for the key `key_id`, signed in the token with
/// RSASSA-PSS SHA-256 (the only signature an authentication key is allowed). `subject`
/// is the DER of an X.509 Name (see [`subject_der`]).
///
/// ETK keys cannot sign (decryption only), so only authentication keys get a CSR; an ETK
/// key is registered with its public key ([`GeneratedKey::public_key_der`]).
pub fn csr(pool: &SessionPool, key_id: &str, subject: &[u8]) -> Result<Vec<u8>> {
    let key_id = key_id.to_string();
    let subject = subject.to_vec();
    pool.run(move |conn| {
        let private = conn.find_object(ObjectClass::PRIVATE_KEY, key_id.as_bytes())?;
        let spki = public_key_der(conn.session(), private)?;
        let info = csr_info(&subject, &spki);
        let signature = sign_pss(conn, key_id.as_bytes(), &openssl::sha::sha256(&info))?;
        Ok(csr_with_signature(&info, &signature))
    })
}

/// The CertificationRequestInfo to sign for a CSR: `{ version 0, subject, subjectPKInfo,
/// attributes [0] {} }` (`subject` a DER Name, `spki` a DER SubjectPublicKeyInfo).
pub fn csr_info(subject: &[u8], spki: &[u8]) -> Vec<u8> {
    write::seq(&[
        &write::small_uint(0),
        subject,
        spki,
        &write::tlv(tag::ctx_cons(0), &[]),
    ])
}

/// The DER CSR from [`csr_info`] and its RSASSA-PSS SHA-256 signature (made wherever the
/// key is: the token directly, or through the custody core).
pub fn csr_with_signature(info: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(signature);
    write::seq(&[
        info,
        oid::ALG_RSASSA_PSS_SHA256,
        &write::tlv(tag::BIT_STRING, &bits),
    ])
}

/// The DER of an X.509 Name from `(attribute, value)` pairs in order, e.g.
/// `[("C", "BE"), ("O", "Federal Government"), ("CN", "...")]`.
pub fn subject_der(rdns: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut b = openssl::x509::X509NameBuilder::new()?;
    for (k, v) in rdns {
        // Checked apart so that the error names the attribute (OpenSSL's is a raw stack).
        if openssl::asn1::Asn1Object::from_str(k).is_err() {
            return Err(HsmError::Invalid(format!(
                "subject attribute {k:?} is unknown: use a name such as C, ST, L, O, OU, CN, \
                 serialNumber, emailAddress, or a dotted OID"
            )));
        }
        b.append_entry_by_text(k, v).map_err(|e| {
            let why = e
                .errors()
                .iter()
                .find_map(|e| e.reason())
                .unwrap_or("refused by OpenSSL");
            let hint = if k.eq_ignore_ascii_case("C") || k.eq_ignore_ascii_case("countryName") {
                " (a country is two letters, e.g. BE)"
            } else {
                ""
            };
            HsmError::Invalid(format!(
                "subject attribute {k}={v:?} is not accepted: {why}{hint}"
            ))
        })?;
    }
    Ok(b.build().to_der()?)
}

/// RSA private key object template with key material, for import.
pub(crate) fn private_import_template(
    role: KeyRole,
    id: &[u8],
    label: &[u8],
    subject: Option<&[u8]>,
    rsa: &Rsa<openssl::pkey::Private>,
) -> Result<Vec<Attribute>> {
    // Every component is there before any is copied: an early return must not drop a
    // half-built template with the private exponent in it, unwiped.
    let (Some(p), Some(q), Some(dmp1), Some(dmq1), Some(iqmp)) =
        (rsa.p(), rsa.q(), rsa.dmp1(), rsa.dmq1(), rsa.iqmp())
    else {
        return Err(HsmError::Invalid("the RSA key lacks CRT components".into()));
    };
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
    ];
    t.extend(private_template(role, id, label, role_mechanisms(role)));
    if let Some(s) = subject {
        t.push(Attribute::Subject(s.to_vec()));
    }
    t.extend([
        Attribute::Modulus(rsa.n().to_vec()),
        Attribute::PublicExponent(rsa.e().to_vec()),
        Attribute::PrivateExponent(rsa.d().to_vec()),
        Attribute::Prime1(p.to_vec()),
        Attribute::Prime2(q.to_vec()),
        Attribute::Exponent1(dmp1.to_vec()),
        Attribute::Exponent2(dmq1.to_vec()),
        Attribute::Coefficient(iqmp.to_vec()),
    ]);
    Ok(t)
}

/// Overwrites the key material held in a template (RSA private components, CKA_VALUE).
pub(crate) fn wipe_template(template: &mut [Attribute]) {
    use zeroize::Zeroize;
    for a in template.iter_mut() {
        match a {
            Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v)
            | Attribute::Value(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// The full allowed-mechanism set of a role (imports use it).
pub(crate) fn role_mechanisms(role: KeyRole) -> Vec<MechanismType> {
    role.permitted_mechanisms().to_vec()
}

#[cfg(test)]
mod tests {
    use super::subject_der;

    #[test]
    fn bad_subjects_name_the_attribute() {
        assert!(subject_der(&[("C", "BE"), ("O", "Federal Government"), ("CN", "x")]).is_ok());
        assert!(subject_der(&[("2.5.4.5", "123")]).is_ok());
        let e = subject_der(&[("C", "BE"), ("XX", "foo")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"XX\" is unknown"), "{e}");
        assert!(!e.contains("error:"), "no raw OpenSSL stack: {e}");
        let e = subject_der(&[("C", "BEL")]).unwrap_err().to_string();
        assert!(
            e.contains("C=\"BEL\" is not accepted") && e.contains("two letters"),
            "{e}"
        );
        assert!(!e.contains("error:"), "no raw OpenSSL stack: {e}");
    }
}
