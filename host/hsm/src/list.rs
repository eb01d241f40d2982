//! What the token holds (`etee keys list`): every private key and every AES secret key
//! (wrapping keys) with its security attributes as PKCS#11 reports them, its certificate,
//! and the CA certificates.

use crate::config::KeyRole;
use crate::error::Result;
use crate::keys::attributes;
use crate::pool::SessionPool;
use crate::token::TokenSummary;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use etee_formats::cert::Certificate;
use serde::Serialize;

/// The token and its objects.
#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    pub token: TokenSummary,
    /// Private keys and secret keys, by id.
    pub keys: Vec<KeyInfo>,
    /// Certificates that belong to no private key (CA chains).
    pub other_certificates: Vec<CertificateInfo>,
}

/// What kind of key object a [`KeyInfo`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyClass {
    /// `CKO_PRIVATE_KEY` (RSA: authentication and ETK keys).
    PrivateKey,
    /// `CKO_SECRET_KEY` (AES: wrapping keys).
    SecretKey,
}

/// The id prefix of an authentication key retired by a renewal (`keys import`).
pub const RETIRED_AUTHENTICATION_PREFIX: &str = "authentication-retired-";

/// One private or secret key. The booleans are `None` when the token does not report them.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// CKA_ID as text (hex when it is not UTF-8).
    pub id: String,
    pub id_hex: String,
    pub label: String,
    pub class: KeyClass,
    /// CKA_KEY_TYPE, e.g. `CKK_RSA`, `CKK_AES`.
    pub key_type: String,
    pub role: Option<KeyRole>,
    /// An authentication key moved aside by a renewal (`authentication-retired-<serial>`,
    /// CKA_SIGN off): its role stays `authentication`, but it no longer signs.
    pub retired: bool,
    /// RSA modulus size; 0 for secret keys (see `key_bits`).
    pub modulus_bits: u32,
    /// The key size whatever the type: RSA modulus bits, or CKA_VALUE_LEN × 8.
    pub key_bits: u32,
    pub sign: Option<bool>,
    pub decrypt: Option<bool>,
    pub wrap: Option<bool>,
    pub unwrap: Option<bool>,
    pub sensitive: Option<bool>,
    pub extractable: Option<bool>,
    pub always_sensitive: Option<bool>,
    pub never_extractable: Option<bool>,
    /// Generated in the token (CKA_LOCAL).
    pub local: Option<bool>,
    pub allowed_mechanisms: Vec<String>,
    pub certificate: Option<CertificateInfo>,
}

/// A certificate object.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    pub id: String,
    pub subject: String,
    pub issuer: String,
    /// Decimal serial number.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl KeyInfo {
    /// The role for people: `authentication (retired)` for a retired key, `?` for a key
    /// whose flags match no role.
    pub fn role_text(&self) -> String {
        match self.role {
            Some(role) if self.retired => format!("{role} (retired)"),
            Some(role) => role.to_string(),
            None => "?".into(),
        }
    }
}

impl CertificateInfo {
    fn new(id: &[u8], c: &Certificate) -> Self {
        Self {
            id: id_text(id),
            subject: c.subject_string(),
            issuer: c.issuer_string(),
            serial: c.serial_decimal(),
            not_before: c.not_before(),
            not_after: c.not_after(),
        }
    }
}

fn id_text(id: &[u8]) -> String {
    match std::str::from_utf8(id) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => hex::encode(id),
    }
}

/// Lists the token.
pub fn inventory(pool: &SessionPool) -> Result<Inventory> {
    let token = pool.token()?;
    let (keys, other) = pool.run(|conn| {
        let mut certs = crate::keys::all_certificates(conn)?;
        let mut keys = Vec::new();
        let private = conn.find_all(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
        let secret = conn.find_all(&[Attribute::Class(ObjectClass::SECRET_KEY)])?;
        let objects = private
            .into_iter()
            .map(|h| (KeyClass::PrivateKey, h))
            .chain(secret.into_iter().map(|h| (KeyClass::SecretKey, h)));
        for (class, h) in objects {
            let modulus_or_len = match class {
                KeyClass::PrivateKey => AttributeType::Modulus,
                KeyClass::SecretKey => AttributeType::ValueLen,
            };
            let attrs = attributes(
                conn.session(),
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::KeyType,
                    modulus_or_len,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Local,
                    AttributeType::AllowedMechanisms,
                ],
            )?;
            let mut k = KeyInfo {
                id: String::new(),
                id_hex: String::new(),
                label: String::new(),
                class,
                key_type: String::new(),
                role: None,
                retired: false,
                modulus_bits: 0,
                key_bits: 0,
                sign: None,
                decrypt: None,
                wrap: None,
                unwrap: None,
                sensitive: None,
                extractable: None,
                always_sensitive: None,
                never_extractable: None,
                local: None,
                allowed_mechanisms: Vec::new(),
                certificate: None,
            };
            let mut id = Vec::new();
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = v,
                    Attribute::Label(v) => k.label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Modulus(v) => {
                        let skip = v.iter().take_while(|&&b| b == 0).count();
                        k.modulus_bits = v
                            .get(skip)
                            .map_or(0, |f| (v.len() - skip) as u32 * 8 - f.leading_zeros());
                    }
                    Attribute::ValueLen(n) => {
                        k.key_bits = u32::try_from(usize::from(n).saturating_mul(8)).unwrap_or(0)
                    }
                    Attribute::KeyType(t) => k.key_type = t.to_string(),
                    Attribute::Sign(b) => k.sign = Some(b),
                    Attribute::Decrypt(b) => k.decrypt = Some(b),
                    Attribute::Wrap(b) => k.wrap = Some(b),
                    Attribute::Unwrap(b) => k.unwrap = Some(b),
                    Attribute::Sensitive(b) => k.sensitive = Some(b),
                    Attribute::Extractable(b) => k.extractable = Some(b),
                    Attribute::AlwaysSensitive(b) => k.always_sensitive = Some(b),
                    Attribute::NeverExtractable(b) => k.never_extractable = Some(b),
                    Attribute::Local(b) => k.local = Some(b),
                    Attribute::AllowedMechanisms(m) => {
                        k.allowed_mechanisms = m.iter().map(|m| m.to_string()).collect()
                    }
                    _ => {}
                }
            }
            k.role = match (class, k.sign, k.decrypt) {
                (KeyClass::PrivateKey, Some(true), _) => Some(KeyRole::Authentication),
                (KeyClass::PrivateKey, _, Some(true)) => Some(KeyRole::Etk),
                (KeyClass::SecretKey, _, _) if k.wrap == Some(true) && k.unwrap == Some(true) => {
                    Some(KeyRole::Wrapping)
                }
                _ => None,
            };
            if class == KeyClass::PrivateKey {
                k.key_bits = k.modulus_bits;
            }
            k.id = id_text(&id);
            // Retiring turns CKA_SIGN off, which would leave it without a role above.
            if class == KeyClass::PrivateKey
                && k.role.is_none()
                && k.id.starts_with(RETIRED_AUTHENTICATION_PREFIX)
            {
                k.role = Some(KeyRole::Authentication);
                k.retired = true;
            }
            k.id_hex = hex::encode(&id);
            if let Some(pos) = certs.iter().position(|(cid, _)| *cid == id) {
                let (cid, c) = certs.remove(pos);
                k.certificate = Some(CertificateInfo::new(&cid, &c));
            }
            keys.push(k);
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        let other = certs
            .iter()
            .map(|(id, c)| CertificateInfo::new(id, c))
            .collect::<Vec<_>>();
        Ok((keys, other))
    })?;
    Ok(Inventory {
        token,
        keys,
        other_certificates: other,
    })
}
