//! The eHealth keystore convention on top of PKCS#12.
//!
//! - The alias `authentication` (any case) is the authentication key, with its chain: it
//!   signs both layers of sealed messages.
//! - Every other key is an ETK decryption key, named by the decimal serial number of its
//!   ETK encryption certificate. Old keys stay in the keystore so that old messages still
//!   open.

use super::pkcs12::{read_pfx, PfxEntry};
use super::software::SoftwareKeys;
use super::KeystoreError;
use crate::cert::Certificate;
use crate::keys::{DecryptionKey, KeyId, KeyRing, PrivateKeyOps, SignerRef, SigningKey};
use openssl::pkey::Id;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The alias of the authentication key.
pub const AUTHENTICATION_ALIAS: &str = "authentication";
/// Largest keystore file read; real ones are a few KiB.
const MAX_FILE_SIZE: u64 = 16 << 20;

/// The two entries of an institution's eHealth keystore, named by the convention above:
/// the authentication key under [`AUTHENTICATION_ALIAS`] with `auth_chain` (its certificate
/// first), and the ETK key under its encryption certificate's decimal serial. For
/// [`super::write_pfx`] and [`EhealthKeystore::from_entries`].
pub fn ehealth_entries(
    auth_key: openssl::pkey::PKey<openssl::pkey::Private>,
    auth_chain: Vec<openssl::x509::X509>,
    etk_key: openssl::pkey::PKey<openssl::pkey::Private>,
    etk_cert: openssl::x509::X509,
) -> Result<Vec<PfxEntry>, KeystoreError> {
    let serial = etk_cert.serial_number().to_bn()?.to_dec_str()?.to_string();
    Ok(vec![
        PfxEntry {
            alias: AUTHENTICATION_ALIAS.into(),
            key: auth_key,
            chain: auth_chain,
        },
        PfxEntry {
            alias: serial,
            key: etk_key,
            chain: vec![etk_cert],
        },
    ])
}

/// What a key is for, by its alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    Authentication,
    Decryption,
}

/// One private key of an eHealth keystore, without the key material.
#[derive(Clone, Debug)]
pub struct KeystoreEntry {
    /// The alias (friendlyName) as stored.
    pub alias: String,
    /// The key's name in [`EhealthKeystore::provider`]: the alias, made unique when a file
    /// repeats one.
    pub key: KeyId,
    pub role: KeyRole,
    /// The key's own certificate.
    pub cert: Option<Certificate>,
    /// The CA certificates above `cert` found in the keystore, issuer first.
    pub chain: Vec<Certificate>,
    /// The serial number the key answers to: its certificate's, or else the alias read as
    /// a decimal number; `None` when neither exists.
    pub serial: Option<Vec<u8>>,
    /// Key size in bits (RSA modulus).
    pub bits: u32,
}

impl KeystoreEntry {
    /// The certificate's subject, `CN=…, OU=…` order.
    pub fn subject(&self) -> Option<String> {
        self.cert.as_ref().map(Certificate::subject_string)
    }

    pub fn serial_decimal(&self) -> Option<String> {
        self.serial.as_deref().map(crate::cert::decimal)
    }
}

/// An eHealth keystore loaded into memory, its keys served by [`SoftwareKeys`].
#[derive(Debug)]
pub struct EhealthKeystore {
    keys: Arc<SoftwareKeys>,
    entries: Vec<KeystoreEntry>,
    warnings: Vec<String>,
}

impl EhealthKeystore {
    /// Reads a `.p12`: wrong passwords give [`KeystoreError::WrongPasswordOrCorrupt`].
    pub fn load(bytes: &[u8], password: &str) -> Result<Self, KeystoreError> {
        Self::from_entries(read_pfx(bytes, password)?.entries()?)
    }

    pub fn load_file(path: impl AsRef<Path>, password: &str) -> Result<Self, KeystoreError> {
        let mut bytes = Vec::new();
        if !crate::read_at_most(std::fs::File::open(path)?, MAX_FILE_SIZE, &mut bytes)? {
            return Err(KeystoreError::Malformed(format!(
                "keystore larger than {MAX_FILE_SIZE} bytes"
            )));
        }
        Self::load(&bytes, password)
    }

    /// Applies the alias convention to keys already paired with their chains.
    pub fn from_entries(pfx_entries: Vec<PfxEntry>) -> Result<Self, KeystoreError> {
        let mut keys = SoftwareKeys::new();
        let mut entries = Vec::with_capacity(pfx_entries.len());
        let mut warnings = Vec::new();
        for (index, e) in pfx_entries.into_iter().enumerate() {
            let alias = e.alias;
            if alias.is_empty() {
                warnings.push(format!("key #{index} has no alias (friendlyName)"));
            }
            let base = if alias.is_empty() {
                format!("#{index}")
            } else {
                alias.clone()
            };
            let mut key = KeyId(base.clone());
            for n in 2.. {
                if !keys.contains(&key) {
                    break;
                }
                key = KeyId(format!("{base}#{n}"));
            }
            if key.0 != base {
                warnings.push(format!(
                    "alias {base:?} appears more than once; this key is named {key}"
                ));
            }
            let mut certs = e
                .chain
                .iter()
                .map(|c| Ok(Certificate::from_der(&c.to_der()?)?))
                .collect::<Result<Vec<_>, KeystoreError>>()?
                .into_iter();
            let cert = certs.next();
            let chain: Vec<Certificate> = certs.collect();
            let role = if alias.eq_ignore_ascii_case(AUTHENTICATION_ALIAS) {
                KeyRole::Authentication
            } else {
                KeyRole::Decryption
            };
            let alias_serial = decimal_to_magnitude(&alias);
            let serial = match (&cert, role) {
                (Some(c), KeyRole::Decryption) => {
                    if alias_serial.as_deref().is_some_and(|s| s != c.serial()) {
                        warnings.push(format!(
                            "alias {alias:?} differs from its certificate's serial {}; using the certificate's",
                            c.serial_decimal()
                        ));
                    }
                    Some(c.serial().to_vec())
                }
                (Some(c), KeyRole::Authentication) => Some(c.serial().to_vec()),
                (None, KeyRole::Decryption) if alias_serial.is_some() => alias_serial,
                (None, KeyRole::Decryption) => {
                    warnings.push(format!(
                        "key {alias:?} has no certificate and its alias is not a decimal serial: it cannot be used for decryption"
                    ));
                    None
                }
                (None, KeyRole::Authentication) => {
                    warnings.push(format!(
                        "authentication key {alias:?} has no certificate: it cannot sign"
                    ));
                    None
                }
            };
            if role == KeyRole::Authentication
                && entries
                    .iter()
                    .any(|x: &KeystoreEntry| x.role == KeyRole::Authentication)
            {
                warnings.push(format!(
                    "more than one authentication key; {key} is ignored"
                ));
            }
            if !matches!(e.key.id(), Id::RSA | Id::RSA_PSS) {
                warnings.push(format!("key {key} is not an RSA key; ETEE cannot use it"));
            }
            let bits = e.key.bits();
            keys.insert(key.clone(), e.key);
            entries.push(KeystoreEntry {
                alias,
                key,
                role,
                cert,
                chain,
                serial,
                bits,
            });
        }
        Ok(Self {
            keys: Arc::new(keys),
            entries,
            warnings,
        })
    }

    /// The authentication key with its certificate and CA chain, if the keystore has one
    /// with a certificate.
    pub fn authentication(&self) -> Option<SigningKey> {
        let e = self
            .entries
            .iter()
            .find(|e| e.role == KeyRole::Authentication)?;
        Some(SigningKey {
            ops: self.ops(),
            key: e.key.clone(),
            signer: SignerRef::Certificate {
                cert: e.cert.clone()?,
                chain: e.chain.clone(),
            },
        })
    }

    /// Every ETK decryption key that answers to a serial number (old keys too).
    pub fn decryption_keys(&self) -> Vec<DecryptionKey> {
        self.entries
            .iter()
            .filter(|e| e.role == KeyRole::Decryption)
            .filter_map(|e| {
                Some(DecryptionKey {
                    ops: self.ops(),
                    key: e.key.clone(),
                    cert: e.cert.clone(),
                    serial: e.serial.clone()?,
                    ski: None,
                    modulus_bits: e.bits,
                })
            })
            .collect()
    }

    /// [`Self::decryption_keys`] as a [`KeyRing`].
    pub fn key_ring(&self) -> KeyRing {
        let mut ring = KeyRing::new();
        ring.extend(self.decryption_keys());
        ring
    }

    /// Every key, in file order.
    pub fn entries(&self) -> &[KeystoreEntry] {
        &self.entries
    }

    /// What looked wrong while applying the alias convention.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The key provider serving this keystore's keys.
    pub fn provider(&self) -> Arc<SoftwareKeys> {
        self.keys.clone()
    }

    /// A key as unencrypted PKCS#8 DER, for importing it into an HSM. `alias` is matched
    /// exactly, then as a provider key name, then ignoring case.
    pub fn private_key_der(&self, alias: &str) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let entry = self
            .entries
            .iter()
            .find(|e| e.alias == alias)
            .or_else(|| self.entries.iter().find(|e| e.key.0 == alias))
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|e| e.alias.eq_ignore_ascii_case(alias))
            })
            .ok_or_else(|| KeystoreError::UnknownAlias(alias.to_string()))?;
        let key = self
            .keys
            .get(&entry.key)
            .ok_or_else(|| KeystoreError::UnknownAlias(alias.to_string()))?;
        Ok(Zeroizing::new(key.private_key_to_pkcs8()?))
    }

    fn ops(&self) -> Arc<dyn PrivateKeyOps> {
        self.keys.clone()
    }
}

/// A decimal alias as a big-endian magnitude; `None` unless it is all ASCII digits.
fn decimal_to_magnitude(s: &str) -> Option<Vec<u8>> {
    // 100 digits is far beyond any X.509 serial (20 octets is ~49 digits).
    if s.is_empty() || s.len() > 100 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut out: Vec<u8> = Vec::new(); // little-endian while building
    for d in s.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in out.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            out.push(carry as u8);
            carry >>= 8;
        }
    }
    if out.is_empty() {
        out.push(0);
    }
    out.reverse();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_aliases() {
        assert_eq!(
            decimal_to_magnitude("825373489").unwrap(),
            [0x31, 0x32, 0x33, 0x31]
        );
        assert_eq!(decimal_to_magnitude("0").unwrap(), [0]);
        assert_eq!(decimal_to_magnitude("256").unwrap(), [1, 0]);
        let big = "232784750872845143225881750226911779648";
        assert_eq!(
            crate::cert::decimal(&decimal_to_magnitude(big).unwrap()),
            big
        );
        assert!(decimal_to_magnitude("").is_none());
        assert!(decimal_to_magnitude("encryption").is_none());
        assert!(decimal_to_magnitude("12a").is_none());
        assert!(decimal_to_magnitude("-12").is_none());
    }
}
