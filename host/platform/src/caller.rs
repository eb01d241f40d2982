//! Who is calling: the holder of the TLS client certificate (verified by rustls against
//! the platform's CA during the handshake), with the identities of its DN (spec §3.3).

use etee_formats::cert::Certificate;
use etee_formats::identity::{identities, Identity};
use etee_formats::revocation::RevocationPolicy;
use etee_formats::trust::{PathCheck, TrustAnchors};
use std::sync::Arc;

/// The authenticated caller of one connection.
#[derive(Debug)]
pub struct Caller {
    pub certificate: Certificate,
    /// The other certificates the client presented (CAs above the leaf), for the
    /// revocation check of each request.
    pub chain: Vec<Certificate>,
    pub identities: Vec<Identity>,
    /// The earliest notAfter (Unix seconds) of the chain the client presented. rustls checks
    /// the chain once, at the handshake; a kept-alive connection outlives that check, so
    /// each request compares the time with this ([`Caller::is_valid_at`]).
    pub valid_until: i64,
}

/// What the routes see: the caller, if the client presented a certificate.
#[derive(Clone, Debug, Default)]
pub struct MaybeCaller(pub Option<Arc<Caller>>);

/// The address the client connects from (a request extension, set per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::IpAddr);

impl Caller {
    /// The caller behind a verified client certificate chain (leaf first). A leaf our
    /// parser cannot read gives no caller: the routes that need one refuse the request.
    pub fn from_chain(chain: &[impl AsRef<[u8]>]) -> Option<Self> {
        Self::from_chain_at(chain, crate::unix_now())
    }

    /// [`Self::from_chain`] at the handshake time `now` (Unix seconds).
    pub fn from_chain_at(chain: &[impl AsRef<[u8]>], now: i64) -> Option<Self> {
        let certificate = Certificate::from_der(chain.first()?.as_ref()).ok()?;
        let identities = identities(&certificate);
        // The leaf is readable, so the chain has an end.
        let valid_until = etee_formats::cert::chain_valid_until(chain, now)
            .unwrap_or_else(|| certificate.not_after());
        let chain = chain[1..]
            .iter()
            .filter_map(|c| Certificate::from_der(c.as_ref()).ok())
            .collect();
        Some(Self {
            certificate,
            chain,
            identities,
            valid_until,
        })
    }

    /// Whether the presented chain is still within its validity at `now` (Unix seconds;
    /// notAfter itself included, as RFC 5280 has it).
    pub fn is_valid_at(&self, now: i64) -> bool {
        now <= self.valid_until
    }

    /// Whether the revocation lists in use (none: never) revoke the caller's certificate or
    /// a CA above it at `now`, or, under the mandatory policy, give no status for one. The
    /// lists can change while a connection is kept alive, so each request asks. A chain
    /// without a path to `anchors` is not judged here: rustls checked it at the handshake.
    pub fn is_revoked_at(&self, anchors: &TrustAnchors, now: i64) -> bool {
        anchors.revocation().policy() != RevocationPolicy::None
            && matches!(
                anchors.check(&self.certificate, &self.chain, now, now),
                PathCheck::Revoked | PathCheck::StatusUnknown
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use etee_testpki::{InstitutionSpec, TestPki, Validity};

    /// The period ends with the earliest notAfter of the leaf and of the certificates
    /// still valid at the handshake; expired extras and unreadable ones do not count.
    #[test]
    fn a_caller_is_valid_until_the_end_of_its_verified_chain() {
        let pki = TestPki::generate("caller-validity").unwrap();
        let now = crate::unix_now();
        let leaf_of = |value: &str, not_after: i64| {
            let spec = InstitutionSpec::new("NIHII-HOSPITAL", value, "Leaf").with_auth_validity(
                Validity {
                    not_before: now - 3600,
                    not_after,
                },
            );
            pki.institution(&spec).unwrap().auth.cert.to_der().unwrap()
        };
        let root = pki.root.cert.to_der().unwrap();
        let root_end = Certificate::from_der(&root).unwrap().not_after();
        let short = leaf_of("71000436", now + 600);
        // An intermediate-like certificate that ends before the leaf.
        let earlier = leaf_of("71000535", now + 300);
        let expired = leaf_of("71000634", now - 60);
        let junk = vec![0x30, 0x03, 0x02, 0x01, 0x01];

        let at = |chain: &[&Vec<u8>]| Caller::from_chain_at(chain, now).unwrap().valid_until;
        assert_eq!(at(&[&short, &root]), now + 600);
        assert_eq!(at(&[&root]), root_end);
        assert_eq!(at(&[&short, &earlier, &root]), now + 300);
        assert_eq!(at(&[&short, &expired, &root]), now + 600);
        assert_eq!(at(&[&short, &junk]), now + 600);
        let caller = Caller::from_chain_at(&[&short], now).unwrap();
        assert!(caller.is_valid_at(now + 600));
        assert!(!caller.is_valid_at(now + 601));
        assert!(Caller::from_chain_at(&[&junk], now).is_none());
    }
}
