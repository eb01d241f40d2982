//! What a holder sends KeyDepot to register a key born in its HSM (`etee keys attest`,
//! and `POST /v1/keydepot/keys` of the appliance).
//!
//! Every private-key use goes through the custody core (policy check, audit record): the
//! proof of possession is signed by the registered key itself, the attestation statement by
//! the token's authentication key, whose certificate names the holder. What the statement
//! says of the key (sensitive, never extractable, generated in the token) is asked of the
//! core too (`DescribeKey`), so that it works where the core alone is logged in to the
//! token (`[custody] mode = "process"`); the public key and the token's description are
//! public and read directly.

use etee_custody::{Error as CoreError, KeyKind};
use etee_formats::keys::{KeyError, KeyId, PrivateKeyOps, SignerRef};
use etee_hsm::CustodyHandle;
use etee_services::keydepot::{
    self, AttestationStatement, KeyAttributes, KeyInfo, KeyUse, RegisterKeyRequest,
    SignedAttestation, TokenInfo,
};

/// Why a registration request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyDepotError {
    /// The key asked for cannot be registered: not in the token (or not one the caller may
    /// use), not a signing key, an unreadable public key.
    #[error("{0}")]
    Invalid(String),
    /// The custody core refused a use of the key (locked, no rule).
    #[error("{0}")]
    Refused(String),
    /// The custody core's rate budget is spent for now.
    #[error("the custody core's rate budget is spent; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The token or the custody process failed or could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

fn hsm_error(e: etee_hsm::HsmError) -> KeyDepotError {
    KeyDepotError::Unavailable(format!("HSM: {e}"))
}

/// Builds the registration request for key `key` of the token behind `custody`: every
/// signature is made, and the key's attributes asked, through the core under `custody`'s
/// client id.
pub fn registration_request(
    custody: &CustodyHandle,
    key: &str,
    label: Option<String>,
) -> Result<RegisterKeyRequest, KeyDepotError> {
    let no_such_key = || {
        KeyDepotError::Invalid(format!(
            "the token has no signing key {key:?} for this client (KeyDepot registers signing \
             keys: generate one with a profile whose role is authentication; the custody \
             policy grants a KeyDepot client the token's authentication keys)"
        ))
    };
    let facts = custody.describe_key(key).map_err(|e| match e {
        KeyError::UnknownKey(_) => no_such_key(),
        // Without a rule for the key, the core says nothing about whether it exists; the
        // policy gives KeyDepot's callers every authentication key of the token, so the
        // key is not one KeyDepot could register.
        KeyError::Refused(why) if why == CoreError::PolicyDenied.to_string() => no_such_key(),
        KeyError::Refused(why) => KeyDepotError::Refused(why),
        KeyError::RateLimited { retry_after_ms } => KeyDepotError::RateLimited { retry_after_ms },
        other => {
            KeyDepotError::Unavailable(format!("asking the custody core about {key:?}: {other}"))
        }
    })?;
    if facts.kind != KeyKind::Authentication {
        return Err(KeyDepotError::Invalid(format!(
            "key {key:?} cannot sign, so it cannot prove possession (KeyDepot registers \
             signing keys: generate one with a profile whose role is authentication)"
        )));
    }
    let spki = custody.public_key_der(key).map_err(hsm_error)?;
    let key_id =
        keydepot::KeyId::of_public_key(&spki).map_err(|e| KeyDepotError::Invalid(e.to_string()))?;
    let sign = |with: &KeyId, message: &[u8]| {
        custody
            .sign_pss_sha256(with, &openssl::sha::sha256(message))
            .map_err(|e| {
                let why = format!("signing with {:?}: {e}", with.0);
                match e {
                    KeyError::Refused(_) => KeyDepotError::Refused(why),
                    KeyError::RateLimited { retry_after_ms } => {
                        KeyDepotError::RateLimited { retry_after_ms }
                    }
                    _ => KeyDepotError::Unavailable(why),
                }
            })
    };
    // The holder the proof names: the identity KeyDepot takes from the TLS client
    // certificate, the authentication certificate's first.
    let signer = custody.signing_key().map_err(hsm_error)?;
    let SignerRef::Certificate { cert, chain } = &signer.signer else {
        return Err(KeyDepotError::Unavailable(
            "the authentication key has no certificate in the token".into(),
        ));
    };
    let holder = etee_formats::identity::primary_identity(cert).ok_or_else(|| {
        KeyDepotError::Invalid(
            "the authentication certificate names no eHealth identity: KeyDepot would not \
             know the holder"
                .into(),
        )
    })?;
    let proof = sign(
        &KeyId(key.to_string()),
        &keydepot::pop_challenge(&key_id, &spki, &holder),
    )?;

    // Unknown attributes count against the key: an attestation claims only what the token
    // reported.
    let attributes = KeyAttributes {
        sensitive: facts.sensitive == Some(true),
        extractable: facts.extractable != Some(false),
        never_extractable: facts.never_extractable == Some(true),
        local: facts.local == Some(true),
    };
    let token = custody.token_summary().map_err(hsm_error)?;
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
    let bytes = statement
        .to_be_signed()
        .map_err(|e| KeyDepotError::Invalid(e.to_string()))?;
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
