//! What a holder sends KeyDepot to register a key born in its HSM (`etee keys attest`,
//! and `POST /v1/keydepot/keys` of the appliance).
//!
//! Every private-key use goes through the custody core (policy check, audit record): the
//! proof of possession is signed by the registered key itself, the attestation statement by
//! the token's authentication key, whose certificate names the holder.

use etee_formats::ber::slice::parse_exact;
use etee_formats::ber::tag;
use etee_formats::keys::{KeyId, PrivateKeyOps, SignerRef};
use etee_hsm::{CustodyKeys, KeyClass};
use etee_services::keydepot::{
    self, AttestationStatement, KeyAttributes, KeyInfo, KeyUse, RegisterKeyRequest,
    SignedAttestation, TokenInfo,
};

/// Why a registration request could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyDepotError(pub String);

fn hsm_error(e: etee_hsm::HsmError) -> KeyDepotError {
    KeyDepotError(format!("HSM: {e}"))
}

/// The RFC 5280 §4.2.1.2 (method 1) key identifier: SHA-1 of the subjectPublicKey bits.
pub fn key_identifier(spki: &[u8]) -> Result<Vec<u8>, KeyDepotError> {
    let bad = |e: &dyn std::fmt::Display| KeyDepotError(format!("the public key: {e}"));
    let spki = parse_exact(spki).map_err(|e| bad(&e))?;
    let mut fields = spki.seq().map_err(|e| bad(&e))?;
    fields.any().map_err(|e| bad(&e))?;
    let bits = fields.next(tag::BIT_STRING).map_err(|e| bad(&e))?;
    let bits = bits.octets().map_err(|e| bad(&e))?;
    let key = bits.get(1..).ok_or_else(|| bad(&"empty BIT STRING"))?;
    Ok(openssl::sha::sha1(key).to_vec())
}

/// Builds the registration request for key `key` of the token behind `custody`: every
/// signature is made through the core under `custody`'s client id.
pub fn registration_request(
    custody: &CustodyKeys,
    key: &str,
    label: Option<String>,
) -> Result<RegisterKeyRequest, KeyDepotError> {
    let hsm = custody.hsm();
    let inventory = hsm.list().map_err(hsm_error)?;
    let info = inventory
        .keys
        .iter()
        .find(|k| k.id == key && k.class == KeyClass::PrivateKey)
        .ok_or_else(|| KeyDepotError(format!("the token has no private key {key:?}")))?;
    if info.sign != Some(true) {
        return Err(KeyDepotError(format!(
            "key {key:?} cannot sign, so it cannot prove possession (KeyDepot registers \
             signing keys: generate one with a profile whose role is authentication)"
        )));
    }
    let spki = hsm.public_key_der(key).map_err(hsm_error)?;
    let key_id =
        keydepot::KeyId::new(key_identifier(&spki)?).map_err(|e| KeyDepotError(e.to_string()))?;
    let sign = |with: &KeyId, message: &[u8]| {
        custody
            .sign_pss_sha256(with, &openssl::sha::sha256(message))
            .map_err(|e| KeyDepotError(format!("signing with {:?}: {e}", with.0)))
    };
    let proof = sign(
        &KeyId(key.to_string()),
        &keydepot::pop_challenge(&key_id, &spki),
    )?;

    // Unknown attributes count against the key: an attestation claims only what the token
    // reported.
    let attributes = KeyAttributes {
        sensitive: info.sensitive == Some(true),
        extractable: info.extractable != Some(false),
        never_extractable: info.never_extractable == Some(true),
        local: info.local == Some(true),
    };
    let token = &inventory.token;
    let statement = AttestationStatement::new(
        key_id.clone(),
        &spki,
        TokenInfo {
            label: token.label.clone(),
            serial: token.serial.clone(),
            manufacturer: token.manufacturer.clone(),
            model: token.model.clone(),
        },
        attributes,
        etee_formats::unix_now(),
    );
    let signer = custody.signing_key().map_err(hsm_error)?;
    let SignerRef::Certificate { cert, chain } = &signer.signer else {
        return Err(KeyDepotError(
            "the authentication key has no certificate in the token".into(),
        ));
    };
    let bytes = statement
        .to_be_signed()
        .map_err(|e| KeyDepotError(e.to_string()))?;
    let b64 = |der: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let attestation = SignedAttestation {
        signature: sign(&signer.key, &bytes)?,
        statement: bytes,
        x5c: std::iter::once(cert)
            .chain(chain)
            .map(|c| b64(c.der()))
            .collect(),
    };
    Ok(RegisterKeyRequest {
        key_id,
        public_key: spki,
        proof_of_possession: proof,
        info: KeyInfo {
            label,
            key_use: Some(KeyUse::Sig),
            ..KeyInfo::default()
        },
        // Only a key generated in the token and unable to leave it is attested; another
        // (imported from a keystore) is registered without a statement it cannot make.
        attestation: attributes.is_attestable().then_some(attestation),
    })
}
