//! What the token holds (`etee keys list`): every private key with its security
//! attributes as PKCS#11 reports them, its certificate, and the CA certificates.

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
    pub keys: Vec<KeyInfo>,
    /// Certificates that belong to no private key (CA chains).
    pub other_certificates: Vec<CertificateInfo>,
}

/// One private key. The booleans are `None` when the token does not report them.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// CKA_ID as text (hex when it is not UTF-8).
    pub id: String,
    pub id_hex: String,
    pub label: String,
    pub role: Option<KeyRole>,
    pub modulus_bits: u32,
    pub sign: Option<bool>,
    pub decrypt: Option<bool>,
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
        for h in conn.find_all(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])? {
            let attrs = attributes(
                conn.session(),
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::Modulus,
                    AttributeType::Sign,
                    AttributeType::Decrypt,
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
                role: None,
                modulus_bits: 0,
                sign: None,
                decrypt: None,
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
                    Attribute::Sign(b) => k.sign = Some(b),
                    Attribute::Decrypt(b) => k.decrypt = Some(b),
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
            k.role = match (k.sign, k.decrypt) {
                (Some(true), _) => Some(KeyRole::Authentication),
                (_, Some(true)) => Some(KeyRole::Etk),
                _ => None,
            };
            k.id = id_text(&id);
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
