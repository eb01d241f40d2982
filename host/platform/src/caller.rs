//! Who is calling: the holder of the TLS client certificate (verified by rustls against
//! the platform's CA during the handshake), with the identities of its DN (spec §3.3).

use etee_formats::cert::Certificate;
use etee_formats::identity::{identities, Identity};
use std::sync::Arc;

/// The authenticated caller of one connection.
#[derive(Debug)]
pub struct Caller {
    pub certificate: Certificate,
    pub identities: Vec<Identity>,
    /// The earliest notAfter (Unix seconds) of the chain the client presented. rustls checks
    /// the chain once, at the handshake; a kept-alive connection outlives that check, so
    /// each request compares the time with this ([`Caller::is_valid_at`]).
    pub valid_until: i64,
}

/// What the routes see: the caller, if the client presented a certificate.
#[derive(Clone, Debug, Default)]
pub struct MaybeCaller(pub Option<Arc<Caller>>);

impl Caller {
    /// The caller behind a verified client certificate chain (leaf first). A leaf our
    /// parser cannot read gives no caller: the routes that need one refuse the request.
    pub fn from_chain(chain: &[impl AsRef<[u8]>]) -> Option<Self> {
        let certificate = Certificate::from_der(chain.first()?.as_ref()).ok()?;
        let identities = identities(&certificate);
        // The rest of the chain was verified too; a certificate we cannot parse here
        // does not shorten the period (the leaf's bound always applies).
        let valid_until = chain[1..]
            .iter()
            .filter_map(|c| Certificate::from_der(c.as_ref()).ok())
            .map(|c| c.not_after())
            .fold(certificate.not_after(), i64::min);
        Some(Self {
            certificate,
            identities,
            valid_until,
        })
    }

    /// Whether the presented chain is still within its validity at `now` (Unix seconds;
    /// notAfter itself included, as RFC 5280 has it).
    pub fn is_valid_at(&self, now: i64) -> bool {
        now <= self.valid_until
    }
}

/// An identity's value as the platform stores and compares it: zero-padded as its type
/// requires (spec §3.4); a value of an unknown type as written.
pub fn stored_value(identity: &Identity) -> String {
    etee_formats::identity::normalize_value(&identity.id_type, &identity.value)
        .unwrap_or_else(|_| identity.value.clone())
}

/// An identity's type as the platform stores and compares it: the canonical name of spec
/// §3.4 (any case; `HUB` is `EHP`); an unknown type as written.
pub fn stored_type(identity: &Identity) -> String {
    etee_formats::identity::canonical_type(&identity.id_type)
        .map(str::to_owned)
        .unwrap_or_else(|| identity.id_type.clone())
}

/// An identity as the store keeps it: [`stored_type`] and [`stored_value`].
pub fn store_identifier(identity: &Identity) -> etee_store::Identifier {
    etee_store::Identifier::new(
        &stored_type(identity),
        &stored_value(identity),
        identity.application_id.as_deref(),
    )
}
