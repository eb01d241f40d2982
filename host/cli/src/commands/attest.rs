//! `etee keys attest`: what a holder sends KeyDepot to register a key born in its HSM
//! (the request is built by `etee_appliance::keydepot`, which the appliance's API uses too).

use crate::CliError;
use etee_hsm::{Config, CustodyHandle};
use etee_services::keydepot::RegisterKeyRequest;

/// Builds the registration request for key `key` of the token of `config`, through its
/// custody core wherever it runs (`[custody] mode`).
pub fn registration_request(
    config: &Config,
    key: &str,
    label: Option<String>,
) -> Result<RegisterKeyRequest, CliError> {
    let custody = CustodyHandle::open(config)?;
    let request = etee_appliance::keydepot::registration_request(&custody, key, label)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    // The request leaves the attestation out for a key that cannot have one; this command
    // is asked for one.
    if request.attestation.is_none() {
        return Err(CliError::Usage(format!(
            "key {key:?} cannot be attested: it was not generated in the token (CKA_LOCAL is \
             false: imported from a keystore) or it could leave it (extractable or not \
             sensitive); register it without an attestation through the appliance, or \
             generate a key in the token (`etee keys generate`)"
        )));
    }
    Ok(request)
}
