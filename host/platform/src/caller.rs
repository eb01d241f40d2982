//! Who is calling: the holder of the TLS client certificate (verified by rustls against
//! the platform's CA during the handshake), with the identities of its DN (spec §3.3).

use etee_formats::identity::{identities, Identity};
use etee_formats::trust::TrustAnchors;
use etee_services::revocation::PresentedChain;
use std::sync::Arc;

/// The authenticated caller of one connection.
#[derive(Debug)]
pub struct Caller {
    /// Its certificate (`leaf`) and the CAs above it it presented, for the revocation
    /// check of each request.
    pub presented: Arc<PresentedChain>,
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
        let presented = PresentedChain::parse(chain)?;
        let identities = identities(&presented.leaf);
        // The leaf is readable, so the chain has an end.
        let valid_until = etee_formats::cert::chain_valid_until(chain, now)
            .unwrap_or_else(|| presented.leaf.not_after());
        Some(Self {
            presented: Arc::new(presented),
            identities,
            valid_until,
        })
    }

    /// Whether the presented chain is still within its validity at `now` (Unix seconds;
    /// notAfter itself included, as RFC 5280 has it).
    pub fn is_valid_at(&self, now: i64) -> bool {
        now <= self.valid_until
    }

    /// Why the revocation sources in use refuse the caller's certificate at `now`, if
    /// they do ([`PresentedChain::refusal`], the appliance's rule for its callers too).
    /// The lists can change while a connection is kept alive, so each request asks.
    pub fn revocation_refusal(&self, anchors: &TrustAnchors, now: i64) -> Option<&'static str> {
        self.presented.refusal(anchors, now)
    }

    /// [`Caller::revocation_refusal`] from async code (off the async workers when it may
    /// ask an OCSP responder: [`PresentedChain::refusal_off_workers`]).
    pub async fn revocation_refusal_async(
        &self,
        anchors: &TrustAnchors,
        now: i64,
    ) -> Option<&'static str> {
        self.presented.refusal_off_workers(anchors, now).await
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
    use etee_formats::cert::Certificate;
    use etee_formats::revocation::RevocationPolicy;
    use etee_testpki::{InstitutionSpec, TestPki, Validity};

    /// What the lists say of a caller under each policy, and a caller whose path the
    /// anchors do not give: refused only under the mandatory policy.
    #[test]
    fn a_caller_is_refused_as_its_ca_list_and_the_policy_say() {
        use etee_formats::revocation::Revocation;
        let pki = TestPki::generate("caller-revocation").unwrap();
        let stranger = TestPki::generate("caller-revocation, elsewhere").unwrap();
        let now = crate::unix_now();
        let issue = |pki: &TestPki, value: &str| {
            pki.institution(&InstitutionSpec::new("NIHII-HOSPITAL", value, "Caller"))
                .unwrap()
        };
        let (revoked, good, foreign) = (
            issue(&pki, "71000436"),
            issue(&pki, "71000535"),
            issue(&stranger, "71000634"),
        );
        let caller = |i: &etee_testpki::Institution| {
            Caller::from_chain(&[i.auth.cert.to_der().unwrap()]).unwrap()
        };
        let list = pki
            .crl(
                &[(revoked.auth.cert.serial_number(), now - 60)],
                1,
                now - 120,
                now + 3600,
            )
            .unwrap()
            .to_der()
            .unwrap();
        let root = Certificate::from_der(&pki.root.cert.to_der().unwrap()).unwrap();
        let anchors = |policy| {
            TrustAnchors::new(vec![root.clone()])
                .with_revocation(Revocation::new(std::slice::from_ref(&list), policy).unwrap())
        };
        for policy in [RevocationPolicy::Optional, RevocationPolicy::Mandatory] {
            let a = anchors(policy);
            assert_eq!(
                caller(&revoked).revocation_refusal(&a, now),
                Some("revoked (by its CA's list or OCSP responder)")
            );
            assert_eq!(caller(&good).revocation_refusal(&a, now), None);
        }
        for policy in [RevocationPolicy::Optional, RevocationPolicy::Mandatory] {
            assert!(caller(&foreign)
                .revocation_refusal(&anchors(policy), now)
                .is_some_and(|why| why.contains("no path")));
        }
        let none = TrustAnchors::new(vec![root.clone()]);
        assert_eq!(caller(&revoked).revocation_refusal(&none, now), None);
    }

    /// Of a presented chain only the certificates that issued the one below are kept, in
    /// issuing order whatever the order presented; a decoy under an issuer's name is not.
    #[test]
    fn a_presented_chain_keeps_only_its_issuers() {
        let pki = TestPki::generate("caller-chain").unwrap();
        let intermediate = pki.subordinate("caller-chain").unwrap();
        let decoy = pki.subordinate("caller-chain").unwrap();
        let leaf = intermediate
            .institution(&InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Leaf"))
            .unwrap();
        let der = |x: &openssl::x509::X509| x.to_der().unwrap();
        let caller = Caller::from_chain(&[
            der(&leaf.auth.cert),
            der(&pki.root.cert),
            der(&decoy.root.cert),
            der(&intermediate.root.cert),
        ])
        .unwrap();
        let kept: Vec<Vec<u8>> = caller
            .presented
            .issuers
            .iter()
            .map(|c| c.der().to_vec())
            .collect();
        assert_eq!(
            kept,
            vec![der(&intermediate.root.cert), der(&pki.root.cert)],
            "the decoy (same name, another key) was kept, or the order is wrong"
        );
    }

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
