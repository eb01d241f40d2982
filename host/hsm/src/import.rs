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
use crate::pool::{Conn, SessionPool};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use etee_formats::cert::Certificate;
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
    /// When the token holds another authentication key: retire it (rename it to
    /// `authentication-retired-<its certificate's serial>`, CKA_SIGN off, kept for the
    /// record) and import the keystore's (default: no, the keystore's is skipped). For a
    /// renewed eHealth keystore.
    pub replace_authentication: bool,
    /// Import although the keystore's certificates name another holder than the token's
    /// authentication certificate (default: refused whole, before anything is written).
    pub allow_other_holder: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            ca_certificates: true,
            authentication: true,
            replace_authentication: false,
            allow_other_holder: false,
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
    /// The id the previous authentication key was retired to
    /// ([`ImportOptions::replace_authentication`]).
    pub retired_authentication: Option<String>,
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
    // A token holds the keys of one holder: another holder's keystore is refused whole,
    // before anything is written (its ETK keys would otherwise join this token's).
    let token_holder = match options.allow_other_holder {
        true => None,
        false => pool.run(|conn| stored_certificate(conn, AUTHENTICATION_ID))?,
    };
    if let Some(token_holder) = &token_holder {
        let foreign = keystore
            .entries()
            .iter()
            .filter_map(|e| e.cert.as_ref())
            .find(|c| !same_holder(token_holder, c));
        if let Some(foreign) = foreign {
            return Err(HsmError::Invalid(format!(
                "the keystore belongs to another holder ({}) than the token's authentication \
                 key ({}): a token holds the keys of one holder; import it into that \
                 holder's token (or, for one holder's keystores issued under different \
                 names, allow it with `--allow-other-holder`)",
                foreign.subject_string(),
                token_holder.subject_string()
            )));
        }
    }
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
        let replace = options.replace_authentication && role == KeyRole::Authentication;
        let outcome = pool.run(move |conn| {
            let rsa = PKey::private_key_from_pkcs8(&pkcs8)?.rsa()?;
            // Already there?
            let existing = conn.find_all(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(job_id.as_bytes().to_vec()),
            ])?;
            let mut retired = None;
            if let Some(&h) = existing.first() {
                let modulus = crate::keys::bytes_attr(conn.session(), h, AttributeType::Modulus)?;
                if modulus.as_deref() == Some(rsa.n().to_vec().as_slice()) {
                    if let Some(c) = &cert {
                        store_certificate(conn, &job_id, &label, c)?;
                    }
                    return Ok((true, None));
                }
                if !replace {
                    return Err(HsmError::KeyExists(job_id.clone()));
                }
                ensure_renewal(conn, &job_id, cert.as_ref())?;
                retired = Some(retire(conn, &job_id)?);
            }
            let created = create_key_objects(conn, role, &job_id, &label, cert.as_ref(), &rsa);
            match (created, retired) {
                (Ok(()), retired) => Ok((false, retired)),
                (Err(e), Some(retired)) => {
                    // Put the previous key back rather than leave no authentication key.
                    if let Err(undo) = rename_key(conn, &retired, &job_id, true) {
                        return Err(HsmError::Invalid(format!(
                            "importing the new authentication key failed ({e}), and \
                             restoring the previous one from {retired:?} failed too \
                             ({undo}): rename it back with the HSM's tools"
                        )));
                    }
                    Err(e)
                }
                (Err(e), None) => Err(e),
            }
        });
        let already_present = match outcome {
            Ok((present, retired)) => {
                if retired.is_some() {
                    report.retired_authentication = retired;
                }
                Ok(present)
            }
            Err(e) => Err(e),
        };
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
            Err(e) => return Err(partly_done(&report, e)),
        };
        if options.ca_certificates && !entry.chain.is_empty() {
            let chain = entry.chain.clone();
            report.ca_certificates_added += pool
                .run(move |conn| store_chain(conn, &chain))
                .map_err(|e| partly_done(&report, e))?;
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

/// Creates the private and public key objects (and the certificate) of an imported key;
/// on failure, destroys what it created, so that nothing half-imported stays.
fn create_key_objects(
    conn: &mut Conn<'_>,
    role: KeyRole,
    id: &str,
    label: &str,
    cert: Option<&Certificate>,
    rsa: &openssl::rsa::Rsa<openssl::pkey::Private>,
) -> Result<()> {
    let subject = cert.map(|c| c.subject_der().to_vec());
    let mut template = private_import_template(
        role,
        id.as_bytes(),
        label.as_bytes(),
        subject.as_deref(),
        rsa,
    )?;
    let created = conn.session().create_object(&template);
    wipe_template(&mut template);
    let private = created.ctx("importing a private key")?;
    let mut public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Modulus(rsa.n().to_vec()),
        Attribute::PublicExponent(rsa.e().to_vec()),
    ];
    public.extend(public_template(role, id.as_bytes(), label.as_bytes()));
    let rest = conn
        .session()
        .create_object(&public)
        .ctx("importing a public key")
        .and_then(|public| match cert {
            Some(c) => store_certificate(conn, id, label, c)
                .map(|_| ())
                .inspect_err(|_| {
                    let _ = conn.session().destroy_object(public);
                }),
            None => Ok(()),
        });
    if rest.is_err() {
        let _ = conn.session().destroy_object(private);
    }
    conn.forget_handles();
    rest
}

/// Moves the authentication key `id` aside: renamed to `authentication-retired-<serial of
/// its certificate>` (or of a digest of its modulus when it has none), with CKA_SIGN off,
/// so that nothing signs with it any more; returns the new id.
fn retire(conn: &mut Conn<'_>, id: &str) -> Result<String> {
    let certs = conn.find_all(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::Id(id.as_bytes().to_vec()),
    ])?;
    let serial = match certs.first() {
        Some(&h) => crate::keys::bytes_attr(conn.session(), h, AttributeType::Value)?
            .and_then(|der| Certificate::from_der(&der).ok())
            .map(|c| c.serial_decimal()),
        None => None,
    };
    let serial = match serial {
        Some(s) => s,
        None => {
            let private = conn.find_all(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.as_bytes().to_vec()),
            ])?;
            let modulus = match private.first() {
                Some(&h) => crate::keys::bytes_attr(conn.session(), h, AttributeType::Modulus)?,
                None => None,
            };
            hex::encode(&openssl::sha::sha256(&modulus.unwrap_or_default())[..8])
        }
    };
    let retired = format!("{id}-retired-{serial}");
    crate::keys::ensure_id_free(conn, &retired)?;
    if let Err(e) = rename_key(conn, id, &retired, false) {
        // Put back what was renamed: a key split across two ids serves no one.
        return Err(match rename_key(conn, &retired, id, true) {
            Ok(()) => e,
            Err(undo) => HsmError::Invalid(format!(
                "retiring key {id:?} failed ({e}), and putting back what was already renamed \
                 failed too ({undo}): its objects are split between {id:?} and {retired:?}; \
                 rename them back with the HSM's tools"
            )),
        });
    }
    Ok(retired)
}

/// Renames the key objects and certificates with CKA_ID `from` to `to` (CKA_ID and
/// CKA_LABEL) and sets CKA_SIGN of the private key to `sign`.
fn rename_key(conn: &mut Conn<'_>, from: &str, to: &str, sign: bool) -> Result<()> {
    let rename = [
        Attribute::Id(to.as_bytes().to_vec()),
        Attribute::Label(to.as_bytes().to_vec()),
    ];
    for class in [
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::CERTIFICATE,
    ] {
        for h in conn.find_all(&[
            Attribute::Class(class),
            Attribute::Id(from.as_bytes().to_vec()),
        ])? {
            let mut update = rename.to_vec();
            if class == ObjectClass::PRIVATE_KEY {
                update.push(Attribute::Sign(sign));
            }
            conn.session()
                .update_attributes(h, &update)
                .ctx("renaming a key")?;
        }
    }
    conn.forget_handles();
    Ok(())
}

/// A replacement authentication key must come with its certificate, valid longer than the
/// token's: importing an older keystore by mistake must not retire a good key.
fn ensure_renewal(conn: &mut Conn<'_>, id: &str, new: Option<&Certificate>) -> Result<()> {
    let new = new.ok_or_else(|| {
        HsmError::Invalid(
            "the keystore's authentication key has no certificate: it cannot replace the \
             token's"
                .into(),
        )
    })?;
    match stored_certificate(conn, id)? {
        Some(current) if new.not_after() <= current.not_after() => Err(HsmError::Invalid(format!(
            "the keystore's authentication certificate ({}, valid until {}) is not newer than \
             the token's ({}, valid until {}): not replaced",
            new.subject_string(),
            etee_formats::rfc3339(new.not_after()),
            current.subject_string(),
            etee_formats::rfc3339(current.not_after())
        ))),
        _ => Ok(()),
    }
}

/// `error`, stopping an import that already changed the token: what it changed is said
/// (a new run imports the rest: keys already there are found as such).
fn partly_done(report: &ImportReport, error: HsmError) -> HsmError {
    let imported: Vec<&str> = report
        .keys
        .iter()
        .filter(|k| !k.already_present)
        .map(|k| k.id.as_str())
        .collect();
    if imported.is_empty() && report.retired_authentication.is_none() {
        return error;
    }
    let retired = report
        .retired_authentication
        .as_ref()
        .map(|r| format!("; the previous authentication key was retired as {r:?}"))
        .unwrap_or_default();
    HsmError::Invalid(format!(
        "{error}. Before that, the import had put these keys in the token: {imported:?}\
         {retired}; running it again imports the rest"
    ))
}

/// The certificate the token stores under CKA_ID `id`, if it has a readable one.
fn stored_certificate(conn: &mut Conn<'_>, id: &str) -> Result<Option<Certificate>> {
    let found = conn.find_all(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::Id(id.as_bytes().to_vec()),
    ])?;
    Ok(match found.first() {
        Some(&h) => crate::keys::bytes_attr(conn.session(), h, AttributeType::Value)?
            .and_then(|der| Certificate::from_der(&der).ok()),
        None => None,
    })
}

/// Whether two certificates name the same holder: an eHealth identity (type, value and
/// application id, spec §3.3) in common, or the same subject when either has none. A
/// renewed certificate keeps its holder's identities; another institution's does not.
fn same_holder(a: &Certificate, b: &Certificate) -> bool {
    use etee_formats::identity::identities;
    let (ia, ib) = (identities(a), identities(b));
    if ia.is_empty() || ib.is_empty() {
        return a.subject_string() == b.subject_string();
    }
    ia.iter().any(|x| ib.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, already_present: bool) -> ImportedKey {
        ImportedKey {
            alias: id.into(),
            id: id.into(),
            role: KeyRole::Etk,
            subject: None,
            serial: None,
            bits: 2048,
            already_present,
        }
    }

    /// An import stopped by an error says what it had already put in the token; one that
    /// changed nothing gives the error as it is.
    #[test]
    fn a_failed_import_says_what_it_changed() {
        let failed = || HsmError::Invalid("the token refused".into());
        let mut report = ImportReport::default();
        report.keys.push(key("111", true));
        assert_eq!(
            partly_done(&report, failed()).to_string(),
            failed().to_string()
        );
        report.keys.push(key("222", false));
        report.retired_authentication = Some("authentication-retired-9".into());
        let text = partly_done(&report, failed()).to_string();
        assert!(
            text.contains("the token refused")
                && text.contains("[\"222\"]")
                && !text.contains("111")
                && text.contains("authentication-retired-9"),
            "{text}"
        );
    }
}
