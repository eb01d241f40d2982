//! PKCS#12 (RFC 7292) reading and writing, for keystores with several private keys.
//!
//! Structure: `PFX { version 3, authSafe ContentInfo(data), macData }`; the authSafe's
//! octets are an `AuthenticatedSafe`, a SEQUENCE of ContentInfos (`data` or PBE
//! `encryptedData`), each holding SafeContents, a SEQUENCE of SafeBags. Only password
//! integrity and privacy modes exist in practice; the public-key modes are refused.
//! eHealth's Java tooling writes BER with indefinite lengths and 1000-byte chunks, which
//! the slice parser reads like DER.

use super::pbe::{self, Budget, Digest, Password, Scheme};
use super::KeystoreError;
use crate::ber::slice::{oid_to_string, parse_exact, Tlv};
use crate::ber::{tag, write};
use crate::cert::{decode_string, same_name};
use crate::oid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::fmt;
use zeroize::Zeroizing;

const ENCRYPTED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x06];
const FRIENDLY_NAME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x14];
const LOCAL_KEY_ID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x15];
const X509_CERTIFICATE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x16, 0x01];
// Bag types, 1.2.840.113549.1.12.10.1.n.
const KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x01,
];
const SHROUDED_KEY_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x02,
];
const CERT_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x03,
];
const SAFE_CONTENTS_BAG: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x0a, 0x01, 0x06,
];

/// Nesting of safeContentsBags we follow; real files have none.
const MAX_BAG_NESTING: usize = 4;
/// Longest certificate chain we build (loops in hostile files end here).
const MAX_CHAIN: usize = 16;
/// The most keys a keystore may hold: an institution's authentication key and its ETK
/// keys of many years. Each key is compared with every certificate, so the two bounds keep
/// a hostile file from costing hours.
pub const MAX_KEYS: usize = 256;
/// The most certificates a keystore may hold (its keys' chains).
pub const MAX_CERTIFICATES: usize = 1024;
/// The issuers of one name tried, by their signature, at each step of a chain: a file of
/// many decoys sharing an issuer's name costs a few checks a step, not one each.
const MAX_ISSUER_CANDIDATES: usize = 8;
/// Iterations the writer uses, for the PBE schemes and the MAC (Java keytool's default).
pub const WRITE_ITERATIONS: u64 = 10_000;

/// A private key bag: PKCS#8 PrivateKeyInfo DER, decrypted, in a buffer wiped on drop.
pub struct KeyBag {
    pub friendly_name: Option<String>,
    pub local_key_id: Option<Vec<u8>>,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl KeyBag {
    /// The PKCS#8 PrivateKeyInfo DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn private_key(&self) -> Result<PKey<Private>, KeystoreError> {
        PKey::private_key_from_pkcs8(&self.pkcs8).map_err(|e| {
            KeystoreError::Malformed(format!("private key {:?}: {e}", self.friendly_name))
        })
    }
}

impl fmt::Debug for KeyBag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBag")
            .field("friendly_name", &self.friendly_name)
            .field(
                "local_key_id",
                &self.local_key_id.as_deref().map(hex::encode),
            )
            .finish_non_exhaustive()
    }
}

/// An X.509 certificate bag.
#[derive(Clone)]
pub struct CertBag {
    pub friendly_name: Option<String>,
    pub local_key_id: Option<Vec<u8>>,
    pub der: Vec<u8>,
}

impl fmt::Debug for CertBag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBag")
            .field("friendly_name", &self.friendly_name)
            .field(
                "local_key_id",
                &self.local_key_id.as_deref().map(hex::encode),
            )
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// Everything a PFX holds, decrypted, in file order.
#[derive(Debug, Default)]
pub struct PfxContents {
    pub keys: Vec<KeyBag>,
    pub certs: Vec<CertBag>,
}

/// One private key with its certificate chain: what the writer takes and
/// [`PfxContents::entries`] gives back.
pub struct PfxEntry {
    /// The friendlyName; empty if a read key bag had none.
    pub alias: String,
    pub key: PKey<Private>,
    /// The key's certificate first, then its issuers; empty if there is no certificate.
    pub chain: Vec<X509>,
}

impl fmt::Debug for PfxEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subjects: Vec<String> = self
            .chain
            .iter()
            .map(|c| {
                crate::cert::Certificate::from_der(&c.to_der().unwrap_or_default())
                    .map(|c| c.subject_string())
                    .unwrap_or_default()
            })
            .collect();
        f.debug_struct("PfxEntry")
            .field("alias", &self.alias)
            .field("chain", &subjects)
            .finish_non_exhaustive()
    }
}

/// Which algorithms [`write_pfx`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) for keys and certificates, HMAC-SHA256 MAC.
    /// What OpenSSL 3 and Java 17+ write by default.
    Modern,
    /// pbeWithSHAAnd3-KeyTripleDES-CBC keys, pbeWithSHAAnd40BitRC2-CBC certificates,
    /// HMAC-SHA1 MAC: what older Java and eHealth's tooling read and write.
    Legacy,
}

impl Profile {
    fn key_scheme(self) -> Scheme {
        match self {
            Self::Modern => Scheme::Pbes2Aes256,
            Self::Legacy => Scheme::Pkcs12TripleDes,
        }
    }
    fn cert_scheme(self) -> Scheme {
        match self {
            Self::Modern => Scheme::Pbes2Aes256,
            Self::Legacy => Scheme::Pkcs12Rc2_40,
        }
    }
    fn mac_digest(self) -> Digest {
        match self {
            Self::Modern => Digest::Sha256,
            Self::Legacy => Digest::Sha1,
        }
    }
}

/// Reads a PFX: checks the MAC, then decrypts every bag.
pub fn read_pfx(der: &[u8], password: &str) -> Result<PfxContents, KeystoreError> {
    let mut budget = Budget::new();
    let top = parse_exact(der)?.expect(tag::SEQUENCE)?;
    let mut pfx = top.seq()?;
    let version = pfx.next(tag::INTEGER)?;
    if version.small_int()? != 3 {
        return Err(KeystoreError::Malformed("PFX version is not 3".into()));
    }
    let (content_type, content) = content_info(&pfx.next(tag::SEQUENCE)?)?;
    if content_type != oid::DATA {
        // signedData here is the public-key integrity mode.
        return Err(KeystoreError::UnsupportedAlgorithm(oid_to_string(
            content_type,
        )));
    }
    let auth_safe = data_octets(content)?;
    let mac_data = pfx.optional(tag::SEQUENCE)?;
    pfx.finish()?;

    let mut password = Password::new(password);
    let authenticated = match mac_data {
        Some(mac_data) => {
            let mut ok = verify_mac(&mac_data, &auth_safe, &password, &mut budget)?;
            if !ok {
                if let Some(alt) = password.empty_alternative() {
                    ok = verify_mac(&mac_data, &auth_safe, &alt, &mut budget)?;
                    password = alt;
                }
            }
            if !ok {
                return Err(KeystoreError::WrongPasswordOrCorrupt);
            }
            true
        }
        None => false,
    };

    let mut reader = Reader {
        password: &password,
        budget,
        authenticated,
        out: PfxContents::default(),
    };
    let infos = parse_exact(&auth_safe)?.expect(tag::SEQUENCE)?;
    for info in infos.children() {
        let (content_type, content) = content_info(&info?)?;
        match content_type {
            oid::DATA => reader.safe_contents(&data_octets(content)?, 0)?,
            ENCRYPTED_DATA => {
                let plain = reader.encrypted_data(content)?;
                reader.decrypted(|r| r.safe_contents(&plain, 0))?;
            }
            // envelopedData (public-key privacy mode) and anything else.
            other => return Err(KeystoreError::UnsupportedAlgorithm(oid_to_string(other))),
        }
    }
    Ok(reader.out)
}

/// `ContentInfo ::= SEQUENCE { contentType OID, content [0] EXPLICIT ANY OPTIONAL }`.
fn content_info<'a>(t: &Tlv<'a>) -> Result<(&'a [u8], Option<Tlv<'a>>), KeystoreError> {
    let mut s = t.expect(tag::SEQUENCE)?.seq()?;
    let content_type = s.next(tag::OID)?.content;
    let content = match s.optional(tag::ctx_cons(0))? {
        Some(explicit) => {
            let mut e = explicit.seq()?;
            let inner = e.any()?;
            e.finish()?;
            Some(inner)
        }
        None => None,
    };
    s.finish()?;
    Ok((content_type, content))
}

/// The octets of a `data` content: an OCTET STRING, possibly chunked. Wiped on drop, as a
/// plain SafeContents may hold unencrypted keyBags.
fn data_octets(content: Option<Tlv<'_>>) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let t = content
        .ok_or_else(|| KeystoreError::Malformed("data ContentInfo without content".into()))?;
    if t.tag != tag::OCTET_STRING && t.tag != tag::OCTET_STRING_CONSTRUCTED {
        return Err(KeystoreError::Malformed(
            "data content is not an OCTET STRING".into(),
        ));
    }
    Ok(Zeroizing::new(t.octets()?.into_owned()))
}

/// `MacData ::= SEQUENCE { mac DigestInfo, macSalt OCTET STRING, iterations INTEGER DEFAULT 1 }`.
fn verify_mac(
    mac_data: &Tlv<'_>,
    auth_safe: &[u8],
    password: &Password,
    budget: &mut Budget,
) -> Result<bool, KeystoreError> {
    let mut m = mac_data.seq()?;
    let mut digest_info = m.next(tag::SEQUENCE)?.seq()?;
    let mut alg = digest_info.next(tag::SEQUENCE)?.seq()?;
    let alg_id = alg.next(tag::OID)?.content;
    let digest = Digest::from_oid(alg_id)
        .ok_or_else(|| KeystoreError::UnsupportedAlgorithm(oid_to_string(alg_id)))?;
    // Parameters: absent or NULL. Checked so that no byte of the file is left unverified.
    if let Some(params) = alg.optional(tag::NULL)? {
        if !params.content.is_empty() {
            return Err(KeystoreError::Malformed(
                "MAC digest parameters are not NULL".into(),
            ));
        }
    }
    alg.finish()?;
    let expected = digest_info.next(tag::OCTET_STRING)?.content;
    let salt = m.next(tag::OCTET_STRING)?.content;
    let iterations = match m.optional(tag::INTEGER)? {
        Some(t) => pbe::iterations(&t)?,
        None => 1,
    };
    let actual = pbe::mac(digest, password, salt, iterations, auth_safe, budget)?;
    // memcmp::eq wants equal lengths; the length is not secret.
    Ok(actual.len() == expected.len() && openssl::memcmp::eq(&actual, expected))
}

struct Reader<'p> {
    password: &'p Password,
    budget: Budget,
    /// Whether a MAC vouched for the content: if not, garbage after decryption means a
    /// wrong password rather than a malformed file.
    authenticated: bool,
    out: PfxContents,
}

impl Reader<'_> {
    /// Runs a parse of decrypted bytes, blaming the password for failures when no MAC
    /// vouched for the file.
    fn decrypted(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), KeystoreError>,
    ) -> Result<(), KeystoreError> {
        let authenticated = self.authenticated;
        f(self).map_err(|e| match e {
            KeystoreError::Encoding(_) | KeystoreError::Malformed(_) if !authenticated => {
                KeystoreError::WrongPasswordOrCorrupt
            }
            e => e,
        })
    }

    /// `EncryptedData ::= SEQUENCE { version, EncryptedContentInfo { contentType,
    /// contentEncryptionAlgorithm, encryptedContent [0] IMPLICIT OCTET STRING OPTIONAL } }`.
    fn encrypted_data(
        &mut self,
        content: Option<Tlv<'_>>,
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let t = content
            .ok_or_else(|| KeystoreError::Malformed("encryptedData without content".into()))?;
        let mut ed = t.expect(tag::SEQUENCE)?.seq()?;
        ed.next(tag::INTEGER)?;
        let mut eci = ed.next(tag::SEQUENCE)?.seq()?;
        eci.next(tag::OID)?;
        let alg = eci.next(tag::SEQUENCE)?;
        let ciphertext = match eci.optional(tag::ctx_prim(0))? {
            Some(t) => t.octets()?,
            None => eci
                .optional(tag::ctx_cons(0))?
                .ok_or_else(|| {
                    KeystoreError::Malformed("encryptedData without encryptedContent".into())
                })?
                .octets()?,
        };
        pbe::decrypt(&alg, &ciphertext, self.password, &mut self.budget)
    }

    /// `SafeContents ::= SEQUENCE OF SafeBag`.
    fn safe_contents(&mut self, der: &[u8], depth: usize) -> Result<(), KeystoreError> {
        if depth > MAX_BAG_NESTING {
            return Err(KeystoreError::Malformed(
                "safeContentsBags nested too deep".into(),
            ));
        }
        let bags = parse_exact(der)?.expect(tag::SEQUENCE)?;
        for bag in bags.children() {
            self.safe_bag(&bag?, depth)?;
        }
        Ok(())
    }

    /// `SafeBag ::= SEQUENCE { bagId OID, bagValue [0] EXPLICIT ANY, bagAttributes SET OPTIONAL }`.
    fn safe_bag(&mut self, bag: &Tlv<'_>, depth: usize) -> Result<(), KeystoreError> {
        let mut b = bag.expect(tag::SEQUENCE)?.seq()?;
        let bag_id = b.next(tag::OID)?.content;
        let mut explicit = b.next(tag::ctx_cons(0))?.seq()?;
        let value = explicit.any()?;
        explicit.finish()?;
        let (friendly_name, local_key_id) = match b.optional(tag::SET)? {
            Some(set) => attributes(&set)?,
            None => (None, None),
        };
        b.finish()?;
        if matches!(bag_id, KEY_BAG | SHROUDED_KEY_BAG) && self.out.keys.len() == MAX_KEYS {
            return Err(KeystoreError::Malformed(format!(
                "more than {MAX_KEYS} keys: not a keystore of one holder"
            )));
        }
        match bag_id {
            KEY_BAG => {
                let pkcs8 = Zeroizing::new(value.expect(tag::SEQUENCE)?.raw.to_vec());
                self.out.keys.push(KeyBag {
                    friendly_name,
                    local_key_id,
                    pkcs8,
                });
            }
            SHROUDED_KEY_BAG => {
                // EncryptedPrivateKeyInfo ::= SEQUENCE { AlgorithmIdentifier, OCTET STRING }
                let mut epki = value.expect(tag::SEQUENCE)?.seq()?;
                let alg = epki.next(tag::SEQUENCE)?;
                let ciphertext = epki.any()?.expect(tag::OCTET_STRING)?.content;
                let pkcs8 = pbe::decrypt(&alg, ciphertext, self.password, &mut self.budget)?;
                self.decrypted(|_| {
                    parse_exact(&pkcs8)?.expect(tag::SEQUENCE)?;
                    Ok(())
                })?;
                self.out.keys.push(KeyBag {
                    friendly_name,
                    local_key_id,
                    pkcs8,
                });
            }
            CERT_BAG => {
                // CertBag ::= SEQUENCE { certId OID, certValue [0] EXPLICIT OCTET STRING }
                let mut c = value.expect(tag::SEQUENCE)?.seq()?;
                let cert_id = c.next(tag::OID)?.content;
                let mut cv = c.next(tag::ctx_cons(0))?.seq()?;
                let octets = cv.any()?;
                if cert_id == X509_CERTIFICATE {
                    if self.out.certs.len() == MAX_CERTIFICATES {
                        return Err(KeystoreError::Malformed(format!(
                            "more than {MAX_CERTIFICATES} certificates: not a keystore of \
                             one holder"
                        )));
                    }
                    if octets.tag != tag::OCTET_STRING
                        && octets.tag != tag::OCTET_STRING_CONSTRUCTED
                    {
                        return Err(KeystoreError::Malformed(
                            "certificate bag value is not an OCTET STRING".into(),
                        ));
                    }
                    let der = octets.octets()?.into_owned();
                    self.out.certs.push(CertBag {
                        friendly_name,
                        local_key_id,
                        der,
                    });
                }
                // SDSI certificates are ignored.
            }
            SAFE_CONTENTS_BAG => {
                let raw = value.raw.to_vec();
                self.safe_contents(&raw, depth + 1)?;
            }
            // crlBag, secretBag and unknown bags hold nothing a key provider needs.
            _ => {}
        }
        Ok(())
    }
}

/// Reads friendlyName and localKeyId from bag attributes; others are ignored.
fn attributes(set: &Tlv<'_>) -> Result<(Option<String>, Option<Vec<u8>>), KeystoreError> {
    let (mut name, mut key_id) = (None, None);
    for attr in set.children() {
        let mut a = attr?.expect(tag::SEQUENCE)?.seq()?;
        let id = a.next(tag::OID)?.content;
        let values = a.next(tag::SET)?;
        let Some(first) = values.children().next().transpose()? else {
            continue;
        };
        match id {
            FRIENDLY_NAME => name = Some(decode_string(&first)),
            LOCAL_KEY_ID => key_id = Some(first.expect(tag::OCTET_STRING)?.content.to_vec()),
            _ => {}
        }
    }
    Ok((name, key_id))
}

impl PfxContents {
    /// Pairs every key with its certificate and builds the chain above it from the other
    /// certificates, in key-bag order.
    ///
    /// A key's certificate is one holding its public key, preferring the one whose
    /// localKeyId matches (a renewed certificate may share the key); the chain follows
    /// issuer names, as Java's KeyStore does, preferring an issuer whose key verifies the
    /// signature when two CA certificates share a name.
    pub fn entries(&self) -> Result<Vec<PfxEntry>, KeystoreError> {
        let certs = self
            .certs
            .iter()
            .map(|c| {
                X509::from_der(&c.der)
                    .map_err(|e| KeystoreError::Malformed(format!("certificate bag: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(self.keys.len());
        for bag in &self.keys {
            let key = bag.private_key()?;
            let holders: Vec<usize> = (0..certs.len())
                .filter(|&i| certs[i].public_key().is_ok_and(|p| p.public_eq(&key)))
                .collect();
            let by_id = holders.iter().copied().find(|&i| {
                bag.local_key_id.is_some() && self.certs[i].local_key_id == bag.local_key_id
            });
            let chain = by_id
                .or(holders.first().copied())
                .map(|leaf| build_chain(leaf, &certs))
                .unwrap_or_default();
            out.push(PfxEntry {
                alias: bag.friendly_name.clone().unwrap_or_default(),
                key,
                chain,
            });
        }
        Ok(out)
    }
}

fn build_chain(leaf: usize, certs: &[X509]) -> Vec<X509> {
    let mut used = vec![leaf];
    let mut chain = vec![certs[leaf].clone()];
    while chain.len() < MAX_CHAIN {
        let last = &chain[chain.len() - 1];
        if same_name(last.subject_name(), last.issuer_name()) {
            break; // self-signed: the root
        }
        let candidates: Vec<usize> = (0..certs.len())
            .filter(|i| {
                !used.contains(i) && same_name(certs[*i].subject_name(), last.issuer_name())
            })
            .take(MAX_ISSUER_CANDIDATES)
            .collect();
        let signer = candidates.iter().copied().find(|&i| {
            certs[i]
                .public_key()
                .is_ok_and(|k| last.verify(&k).unwrap_or(false))
        });
        let Some(next) = signer.or(candidates.first().copied()) else {
            break;
        };
        used.push(next);
        chain.push(certs[next].clone());
    }
    chain
}

/// Writes a PFX holding `entries`, each key with friendlyName = alias and a localKeyId
/// (SHA-1 of its certificate) linking it to its certificate. CA certificates shared by
/// several chains are stored once. Layout as OpenSSL writes it: an encrypted SafeContents
/// of certificates, then a plain SafeContents of shrouded keys.
pub fn write_pfx(
    entries: &[PfxEntry],
    password: &str,
    profile: Profile,
) -> Result<Vec<u8>, KeystoreError> {
    let password = Password::new(password);
    let mut key_bags = Vec::new();
    let mut cert_bags = Vec::new();
    let mut stored: Vec<Vec<u8>> = Vec::new();
    let mut aliases: Vec<String> = Vec::new();
    for entry in entries {
        // Java compares aliases case-insensitively: two that differ only in case collide.
        let lower = entry.alias.to_lowercase();
        if entry.alias.is_empty() || aliases.contains(&lower) {
            return Err(KeystoreError::InvalidEntry(format!(
                "empty or duplicate alias {:?}",
                entry.alias
            )));
        }
        aliases.push(lower);
        let mut local_key_id = None;
        if let Some(leaf) = entry.chain.first() {
            if !leaf.public_key()?.public_eq(&entry.key) {
                return Err(KeystoreError::InvalidEntry(format!(
                    "certificate of {:?} does not match its key",
                    entry.alias
                )));
            }
            local_key_id = Some(openssl::sha::sha1(&leaf.to_der()?).to_vec());
        }
        let attrs = bag_attributes(&entry.alias, local_key_id.as_deref());
        let pkcs8 = Zeroizing::new(entry.key.private_key_to_pkcs8()?);
        let (alg, ciphertext) =
            pbe::encrypt(profile.key_scheme(), &pkcs8, &password, WRITE_ITERATIONS)?;
        let epki = write::seq(&[&alg, &write::octets(&ciphertext)]);
        key_bags.push(safe_bag(SHROUDED_KEY_BAG, &epki, Some(&attrs)));
        for (i, cert) in entry.chain.iter().enumerate() {
            let der = cert.to_der()?;
            let cert_bag = write::seq(&[
                &oid::der(X509_CERTIFICATE),
                &write::cons(tag::ctx_cons(0), &[&write::octets(&der)]),
            ]);
            if i == 0 {
                cert_bags.push(safe_bag(CERT_BAG, &cert_bag, Some(&attrs)));
            } else if !stored.contains(&der) {
                cert_bags.push(safe_bag(CERT_BAG, &cert_bag, None));
            }
            stored.push(der);
        }
    }

    let mut infos: Vec<Vec<u8>> = Vec::new();
    if !cert_bags.is_empty() {
        let plain = Zeroizing::new(write::seq(&refs(&cert_bags)));
        let (alg, ciphertext) =
            pbe::encrypt(profile.cert_scheme(), &plain, &password, WRITE_ITERATIONS)?;
        let eci = write::seq(&[
            &oid::der(oid::DATA),
            &alg,
            &write::tlv(tag::ctx_prim(0), &ciphertext),
        ]);
        let encrypted_data = write::seq(&[&write::small_uint(0), &eci]);
        infos.push(write::seq(&[
            &oid::der(ENCRYPTED_DATA),
            &write::cons(tag::ctx_cons(0), &[&encrypted_data]),
        ]));
    }
    let keys = write::seq(&refs(&key_bags));
    infos.push(data_content_info(&keys));
    let auth_safe = write::seq(&refs(&infos));

    let digest = profile.mac_digest();
    let mut salt = vec![0u8; pbe::SALT_LEN];
    openssl::rand::rand_bytes(&mut salt)?;
    let mac = pbe::mac(
        digest,
        &password,
        &salt,
        WRITE_ITERATIONS,
        &auth_safe,
        &mut Budget::new(),
    )?;
    let digest_alg = write::seq(&[&oid::der(digest.oid()), &[tag::NULL, 0]]);
    let mac_data = write::seq(&[
        &write::seq(&[&digest_alg, &write::octets(&mac)]),
        &write::octets(&salt),
        &write::small_uint(WRITE_ITERATIONS),
    ]);
    Ok(write::seq(&[
        &write::small_uint(3),
        &data_content_info(&auth_safe),
        &mac_data,
    ]))
}

fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
    v.iter().map(Vec::as_slice).collect()
}

/// `ContentInfo { data, [0] EXPLICIT OCTET STRING }`.
fn data_content_info(octets: &[u8]) -> Vec<u8> {
    write::seq(&[
        &oid::der(oid::DATA),
        &write::cons(tag::ctx_cons(0), &[&write::octets(octets)]),
    ])
}

fn safe_bag(bag_id: &[u8], value: &[u8], attrs: Option<&[u8]>) -> Vec<u8> {
    let explicit = write::cons(tag::ctx_cons(0), &[value]);
    match attrs {
        Some(a) => write::seq(&[&oid::der(bag_id), &explicit, a]),
        None => write::seq(&[&oid::der(bag_id), &explicit]),
    }
}

/// The bag attributes SET: friendlyName (BMPString) and, if given, localKeyId.
fn bag_attributes(alias: &str, local_key_id: Option<&[u8]>) -> Vec<u8> {
    let bmp: Vec<u8> = alias.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let attr =
        |id: &[u8], value: Vec<u8>| write::seq(&[&oid::der(id), &write::set_of(vec![value])]);
    let mut attrs = vec![attr(FRIENDLY_NAME, write::tlv(tag::BMP_STRING, &bmp))];
    if let Some(id) = local_key_id {
        attrs.push(attr(LOCAL_KEY_ID, write::octets(id)));
    }
    write::set_of(attrs)
}
