//! Which keys `etee keys destroy` may destroy: decided from the token's inventory before
//! the custody core is asked ([`crate::CustodyKeys::destroy_key`]).
//!
//! Refused: the active authentication key (the service could no longer sign; a renewed
//! keystore retires it first) and wrapping keys (every secret wrapped under them, such as
//! KGSS's stored keys, would be lost for good). Allowed: retired authentication keys,
//! other signing keys (e.g. KeyDepot keys) and ETK keys — the last with a warning, since
//! messages sealed for that ETK can then no longer be opened.

use crate::error::{HsmError, Result};
use crate::list::{Inventory, KeyClass, KeyInfo};
use etee_formats::keystore::ehealth::AUTHENTICATION_ALIAS;

/// What a destruction would remove.
#[derive(Debug)]
pub struct DestroyPlan {
    /// The CKA_ID.
    pub id: String,
    /// The key (with its certificate, when the token has one under the same id).
    pub key: KeyInfo,
    /// What the operator must know before going on.
    pub warning: Option<String>,
}

/// The plan for destroying the key `id` of `inventory`, or why it is refused.
pub fn destroy_plan(inventory: &Inventory, id: &str) -> Result<DestroyPlan> {
    let key = inventory
        .keys
        .iter()
        .find(|k| k.id == id)
        .cloned()
        .ok_or_else(|| HsmError::NotFound {
            what: "key with CKA_ID",
            id: id.into(),
        })?;
    if id == AUTHENTICATION_ALIAS {
        return Err(HsmError::Invalid(format!(
            "{id:?} is the active authentication key: the service signs with it. Import the \
             renewed keystore with `etee keys import --replace-authentication` first; the old \
             key is then kept as `authentication-retired-<serial>`, which may be destroyed"
        )));
    }
    if key.class == KeyClass::SecretKey {
        return Err(HsmError::Invalid(format!(
            "{id:?} is a wrapping key: every secret wrapped under it (KGSS's stored keys) \
             would be lost for good; etee does not destroy wrapping keys"
        )));
    }
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
        key,
        warning,
    })
}
