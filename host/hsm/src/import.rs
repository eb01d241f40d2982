//! One-time import of an eHealth `.p12` keystore into the token.
//!
//! For each key of the keystore: the private key becomes a `CKO_PRIVATE_KEY` with the
//! template of its role (`CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, restricted mechanisms,
//! see [`crate::keys`]), plus a `CKO_PUBLIC_KEY` and its certificate as `CKO_CERTIFICATE`,
//! all with the same CKA_ID: `authentication` for the authentication key, the decimal
//! serial of the ETK certificate for an ETK key; CKA_LABEL is the keystore alias. CA
//! certificates of the chains are stored once each. The key components pass through this
//! process once, in buffers wiped after the `C_CreateObject`.
//!
//! Imported keys are sensitive and non-extractable from then on, but PKCS#11 reports
//! them honestly as not `CKA_ALWAYS_SENSITIVE` / not `CKA_NEVER_EXTRACTABLE`: they existed
//! outside the token once. Destroy the `.p12` after a successful import.
//!
//! Importing again is harmless: a key already present with the same modulus is reported
//! as such; a different key under the same id is left out and listed in
//! [`ImportReport::skipped`] (some keystores carry two keys whose certificates share a
//! serial number).

use crate::config::KeyRole;
use crate::error::{CkContext, HsmError, Result};
use crate::keys::{
    private_import_template, public_template, store_certificate, store_chain, wipe_template,
    AUTHENTICATION_ID,
};
use crate::pool::SessionPool;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use etee_formats::keystore::{EhealthKeystore, KeyRole as AliasRole};
use openssl::pkey::{Id, PKey};
use serde::Serialize;

/// What to import besides the keys.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Also store the CA certificates of the keystore's chains (default: yes; the
    /// authentication key's chain goes into sealed messages).
    pub ca_certificates: bool,
    /// Import the authentication key (default: yes). Turn it off to add the ETK keys of
    /// another keystore (old keys) to a token that has its authentication key already.
    pub authentication: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            ca_certificates: true,
            authentication: true,
        }
    }
}

/// One key of the keystore, imported (or found already imported).
#[derive(Clone, Debug, Serialize)]
pub struct ImportedKey {
    /// The keystore alias.
    pub alias: String,
    /// CKA_ID in the token.
    pub id: String,
    pub role: KeyRole,
    pub subject: Option<String>,
    pub serial: Option<String>,
    pub bits: u32,
    /// The same key was already in the token; nothing was written.
    pub already_present: bool,
}

/// The outcome of an import.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    pub keys: Vec<ImportedKey>,
    /// Keys left out, with the reason.
    pub skipped: Vec<(String, String)>,
    pub ca_certificates_added: usize,
    /// The keystore's own warnings (alias convention).
    pub warnings: Vec<String>,
}

/// Imports every usable key of `keystore`.
pub fn import_keystore(
    pool: &SessionPool,
    keystore: &EhealthKeystore,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let mut report = ImportReport {
        warnings: keystore.warnings().to_vec(),
        ..Default::default()
    };
    let mut used_ids: Vec<String> = Vec::new();
    for entry in keystore.entries() {
        let role = match entry.role {
            AliasRole::Authentication => KeyRole::Authentication,
            AliasRole::Decryption => KeyRole::Etk,
        };
        if role == KeyRole::Authentication && !options.authentication {
            report.skipped.push((
                entry.alias.clone(),
                "authentication key left out (ImportOptions::authentication)".into(),
            ));
            continue;
        }
        let id = match role {
            KeyRole::Authentication => AUTHENTICATION_ID.to_string(),
            KeyRole::Etk => match entry.serial_decimal() {
                Some(s) => s,
                None => {
                    report.skipped.push((
                        entry.alias.clone(),
                        "no certificate and the alias is not a decimal serial".into(),
                    ));
                    continue;
                }
            },
            // Keystores hold RSA key pairs only; wrapping keys are generated in the token.
            KeyRole::Wrapping => continue,
        };
        if used_ids.contains(&id) {
            report.skipped.push((
                entry.alias.clone(),
                format!("another key of this keystore already takes CKA_ID {id:?}"),
            ));
            continue;
        }
        let pkcs8 = keystore.private_key_der(&entry.key.0)?;
        let key = PKey::private_key_from_pkcs8(&pkcs8)?;
        if !matches!(key.id(), Id::RSA | Id::RSA_PSS) {
            report
                .skipped
                .push((entry.alias.clone(), "not an RSA key".into()));
            continue;
        }
        drop(key);
        used_ids.push(id.clone());
        let label = if entry.alias.is_empty() {
            id.clone()
        } else {
            entry.alias.clone()
        };
        let cert = entry.cert.clone();
        let job_id = id.clone();
        let already_present = pool.run(move |conn| {
            let rsa = PKey::private_key_from_pkcs8(&pkcs8)?.rsa()?;
            // Already there?
            let existing = conn.find_all(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(job_id.as_bytes().to_vec()),
            ])?;
            if let Some(&h) = existing.first() {
                let modulus = crate::keys::bytes_attr(conn.session(), h, AttributeType::Modulus)?;
                if modulus.as_deref() != Some(rsa.n().to_vec().as_slice()) {
                    return Err(HsmError::KeyExists(job_id.clone()));
                }
                if let Some(c) = &cert {
                    store_certificate(conn, &job_id, &label, c)?;
                }
                return Ok(true);
            }
            let subject = cert.as_ref().map(|c| c.subject_der().to_vec());
            let mut template = private_import_template(
                role,
                job_id.as_bytes(),
                label.as_bytes(),
                subject.as_deref(),
                &rsa,
            )?;
            let created = conn.session().create_object(&template);
            wipe_template(&mut template);
            created.ctx("importing a private key")?;
            let mut public = vec![
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(rsa.n().to_vec()),
                Attribute::PublicExponent(rsa.e().to_vec()),
            ];
            public.extend(public_template(role, job_id.as_bytes(), label.as_bytes()));
            conn.session()
                .create_object(&public)
                .ctx("importing a public key")?;
            if let Some(c) = &cert {
                store_certificate(conn, &job_id, &label, c)?;
            }
            conn.forget_handles();
            Ok(false)
        });
        let already_present = match already_present {
            Ok(v) => v,
            Err(HsmError::KeyExists(id)) => {
                used_ids.pop();
                report.skipped.push((
                    entry.alias.clone(),
                    format!("a different key already has CKA_ID {id:?} in the token"),
                ));
                continue;
            }
            Err(e) => return Err(e),
        };
        if options.ca_certificates && !entry.chain.is_empty() {
            let chain = entry.chain.clone();
            report.ca_certificates_added += pool.run(move |conn| store_chain(conn, &chain))?;
        }
        report.keys.push(ImportedKey {
            alias: entry.alias.clone(),
            id,
            role,
            subject: entry.subject(),
            serial: entry.serial_decimal(),
            bits: entry.bits,
            already_present,
        });
    }
    Ok(report)
}
