//! Which keys `etee keys destroy` may destroy: decided from the token's inventory before
//! the custody core is asked ([`crate::CustodyKeys::destroy_key`]).
//!
//! Refused: the active authentication key (the service could no longer sign; a renewed
//! keystore retires it first) and wrapping keys (every secret wrapped under them, such as
//! KGSS's stored keys, would be lost for good). Allowed: retired authentication keys,
//! other signing keys (e.g. KeyDepot keys) and ETK keys — the last with a warning, since
//! messages sealed for that ETK can then no longer be opened. Destroyed are the key, its
//! public key and its certificates: the objects with its CKA_ID.

use crate::error::{HsmError, Result};
use crate::list::{Inventory, KeyClass, KeyInfo};
use etee_formats::keystore::ehealth::AUTHENTICATION_ALIAS;

/// What a destruction would remove.
#[derive(Debug)]
pub struct DestroyPlan {
    /// The CKA_ID as `keys list` shows it (hex when it is not text).
    pub id: String,
    /// The CKA_ID itself.
    pub id_bytes: Vec<u8>,
    /// The key (with its certificate, when the token has one under the same id).
    pub key: KeyInfo,
    /// What the operator must know before going on.
    pub warning: Option<String>,
}

/// The plan for destroying the key `id` of `inventory`, or why it is refused.
pub fn destroy_plan(inventory: &Inventory, id: &str) -> Result<DestroyPlan> {
    let with_id: Vec<&KeyInfo> = inventory.keys.iter().filter(|k| k.id == id).collect();
    if with_id.is_empty() {
        return Err(HsmError::NotFound {
            what: "key with CKA_ID",
            id: id.into(),
        });
    }
    if id == AUTHENTICATION_ALIAS {
        return Err(HsmError::Invalid(format!(
            "{id:?} is the active authentication key: the service signs with it. Import the \
             renewed keystore with `etee keys import --replace-authentication` first; the old \
             key is then kept as `authentication-retired-<serial>`, which may be destroyed"
        )));
    }
    // A wrapping key under the same id (tokens filled by other tools may have one) is
    // refused as well: the id names both.
    if with_id.iter().any(|k| k.class == KeyClass::SecretKey) {
        return Err(HsmError::Invalid(format!(
            "{id:?} is a wrapping key: every secret wrapped under it (KGSS's stored keys) \
             would be lost for good; etee does not destroy wrapping keys"
        )));
    }
    let key = with_id[0].clone();
    let id_bytes = hex::decode(&key.id_hex)
        .map_err(|_| HsmError::Invalid(format!("key {id:?}: its CKA_ID is not readable")))?;
    let warning = (key.decrypt == Some(true)).then(|| {
        let serial = key
            .certificate
            .as_ref()
            .map(|c| format!(" (certificate serial {}, {})", c.serial, c.subject))
            .unwrap_or_default();
        format!(
            "{id:?} is an ETK decryption key{serial}: messages sealed for it can no longer be \
             opened once it is destroyed (eHealth expects old ETK keys to be kept)"
        )
    });
    Ok(DestroyPlan {
        id: id.into(),
        id_bytes,
        key,
        warning,
    })
}
