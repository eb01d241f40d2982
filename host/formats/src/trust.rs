//! Trust anchors and certificate path checks at a chosen time, so that verdicts are
//! reproducible (`--at`) and old messages are judged at their signing time as the official
//! library does; with revocation lists ([`crate::revocation`]), the path's certificates are
//! also looked up in them ([`TrustAnchors::check`]).

use crate::cert::{same_name, Certificate};
use crate::revocation::{CertStatus, Evidence, Revocation, RevocationPolicy};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509StoreContext, X509};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Paths remembered per anchor set, keyed by a SHA-256 of the fingerprints of the leaf and
/// the offered intermediates, in order: a fixed size per entry, however many certificates
/// a message offers. Bounded: cleared past [`PATH_CACHE_LIMIT`] entries.
type PathCache = Mutex<HashMap<[u8; 32], CachedPath>>;

/// What a path check ignoring time found.
#[derive(Clone)]
enum CachedPath {
    /// No path to an anchor.
    None,
    /// A path, leaf first.
    Found(Vec<Certificate>),
    /// A path with a certificate our parser rejects: always check in full.
    Opaque,
}

/// Entries kept by the path cache of a [`TrustAnchors`].
pub const PATH_CACHE_LIMIT: usize = 1024;

/// The certificates a receiver trusts as roots (and, like the official trust store,
/// intermediate CAs it chooses to trust directly). Cheap to clone.
#[derive(Clone, Default)]
pub struct TrustAnchors {
    certs: Arc<Vec<Certificate>>,
    /// Where paths were found ignoring time: a sender's certificates recur in every
    /// message, and building a path costs more than the rest of a small unseal.
    paths: Arc<PathCache>,
    /// The CAs' revocation lists and how they are used (not checked by default).
    revocation: Revocation,
}

/// A path to an anchor at a given time, as [`TrustAnchors::path_at`] found it.
enum PathAt {
    None,
    /// The remembered path, valid at that time.
    Cached(Vec<Certificate>),
    /// Found anew at that time (DER, leaf first).
    Found(Vec<Vec<u8>>),
}

/// What [`TrustAnchors::check`] found for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathCheck {
    /// It chains to an anchor, and revocation (when checked) found nothing against it.
    Trusted,
    /// No path to an anchor at that time.
    Untrusted,
    /// A certificate on the path is revoked.
    Revoked,
    /// The policy is mandatory and no current list gives the status of a certificate on
    /// the path.
    StatusUnknown,
}

impl fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchors")
            .field(
                "anchors",
                &self
                    .certs
                    .iter()
                    .map(|c| c.subject_string())
                    .collect::<Vec<_>>(),
            )
            .field("revocation", &self.revocation)
            .finish()
    }
}

impl TrustAnchors {
    pub fn new(certs: Vec<Certificate>) -> Self {
        Self {
            certs: Arc::new(certs),
            paths: Arc::default(),
            revocation: Revocation::default(),
        }
    }

    /// The same anchors, checking revocation with these lists.
    pub fn with_revocation(mut self, revocation: Revocation) -> Self {
        self.revocation = revocation;
        self
    }
    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    /// A store for one check: the verification time lives in the store's parameters
    /// (`None`: validity periods are not checked). Cheap, since the anchors' parsed
    /// certificates (and decoded keys) are shared.
    fn store(&self, at: Option<i64>) -> Result<X509Store, openssl::error::ErrorStack> {
        let mut builder = X509StoreBuilder::new()?;
        for c in self.certs.iter() {
            if let Some(x) = c.x509() {
                // Duplicates are harmless; an anchor OpenSSL rejects just does not count.
                let _ = builder.add_cert(x.clone());
            }
        }
        let mut param = X509VerifyParam::new()?;
        // Anchors that are not self-signed count as anchors, as in a Java trust store.
        let mut flags = X509VerifyFlags::PARTIAL_CHAIN;
        match at {
            Some(t) => param.set_time(t as _),
            None => flags |= X509VerifyFlags::NO_CHECK_TIME,
        }
        param.set_flags(flags)?;
        builder.set_param(&param)?;
        Ok(builder.build())
    }

    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Whether `leaf` chains to an anchor at time `at` (unix seconds), using `extra` as
    /// untrusted intermediates. Revocation is not checked here: see [`TrustAnchors::check`].
    pub fn verify(&self, leaf: &Certificate, extra: &[Certificate], at: i64) -> bool {
        !matches!(self.path_at(leaf, extra, at), PathAt::None)
    }

    /// The path from `leaf` to an anchor valid at `at`. The path found ignoring time is
    /// remembered; at a given time every certificate on it must be within its validity
    /// period, as OpenSSL checks. Otherwise (or when a path certificate is one we could not
    /// read) a full check at that time decides: another path may exist.
    fn path_at(&self, leaf: &Certificate, extra: &[Certificate], at: i64) -> PathAt {
        match self.cached_path(leaf, extra) {
            CachedPath::None => PathAt::None,
            CachedPath::Found(path)
                if path
                    .iter()
                    .all(|c| c.valid_at(at) == crate::cert::Validity::Valid) =>
            {
                PathAt::Cached(path)
            }
            _ => match self.path(leaf, extra, Some(at)) {
                None => PathAt::None,
                Some(ders) => PathAt::Found(ders),
            },
        }
    }

    /// Whether `leaf` chains to an anchor at `at` (as [`TrustAnchors::verify`]) and, under
    /// the revocation policy, whether the lists or OCSP revoke a certificate on that path
    /// at `revoked_at` (the evaluation time: see [`crate::revocation`]).
    pub fn check(
        &self,
        leaf: &Certificate,
        extra: &[Certificate],
        at: i64,
        revoked_at: i64,
    ) -> PathCheck {
        self.check_with(leaf, extra, at, revoked_at, &Evidence::default())
    }

    /// [`TrustAnchors::check`] with what a message brings for it (its OCSP answers and
    /// lists), used first.
    pub fn check_with(
        &self,
        leaf: &Certificate,
        extra: &[Certificate],
        at: i64,
        revoked_at: i64,
        evidence: &Evidence,
    ) -> PathCheck {
        let policy = self.revocation.policy();
        let path = match self.path_at(leaf, extra, at) {
            PathAt::None => return PathCheck::Untrusted,
            _ if policy == RevocationPolicy::None => return PathCheck::Trusted,
            PathAt::Cached(path) => Some(path),
            PathAt::Found(ders) => ders
                .iter()
                .map(|d| Certificate::from_der(d).ok())
                .collect::<Option<Vec<_>>>(),
        };
        let status = match path {
            Some(path) => {
                self.revocation
                    .path_status(&self.up_to_a_root(path), revoked_at, evidence)
            }
            // A certificate on the path that we cannot read: nothing to look up.
            None => CertStatus::Unknown,
        };
        match (status, policy) {
            (CertStatus::Revoked, _) => PathCheck::Revoked,
            (CertStatus::Unknown, RevocationPolicy::Mandatory) => PathCheck::StatusUnknown,
            _ => PathCheck::Trusted,
        }
    }

    /// `path` (leaf first) continued above its last certificate through the anchors that
    /// issued it, up to a self-signed one. OpenSSL stops a path at the first trusted
    /// certificate, but an anchor that is an intermediate CA (trusted directly, as in a
    /// Java trust store) can itself be revoked by its issuer's list.
    fn up_to_a_root(&self, mut path: Vec<Certificate>) -> Vec<Certificate> {
        let Some(last) = path.last().cloned() else {
            return path;
        };
        let pool = self
            .certs
            .iter()
            .filter(|a| !path.contains(a))
            .cloned()
            .collect();
        path.extend(issuers_of(&last, pool));
        path
    }

    fn cached_path(&self, leaf: &Certificate, extra: &[Certificate]) -> CachedPath {
        let mut key = openssl::sha::Sha256::new();
        for c in std::iter::once(leaf).chain(extra) {
            key.update(&openssl::sha::sha256(c.der()));
        }
        let key = key.finish();
        if let Some(hit) = self.paths.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        let path = match self.path(leaf, extra, None) {
            None => CachedPath::None,
            Some(ders) => match ders
                .iter()
                .map(|d| Certificate::from_der(d).ok())
                .collect::<Option<Vec<_>>>()
            {
                Some(certs) => CachedPath::Found(certs),
                None => CachedPath::Opaque,
            },
        };
        if let Ok(mut m) = self.paths.lock() {
            if m.len() >= PATH_CACHE_LIMIT {
                m.clear();
            }
            m.insert(key, path.clone());
        }
        path
    }

    /// The verified path from `leaf` to an anchor (DER, leaf first), checked at `at`, or
    /// ignoring validity periods when `at` is `None`.
    pub fn path(
        &self,
        leaf: &Certificate,
        extra: &[Certificate],
        at: Option<i64>,
    ) -> Option<Vec<Vec<u8>>> {
        let leaf = leaf.x509()?;
        if self.certs.is_empty() {
            return None;
        }
        let store = self.store(at).ok()?;
        let mut chain: Stack<X509> = Stack::new().ok()?;
        for c in extra {
            if let Some(x) = c.x509() {
                chain.push(x.clone()).ok()?;
            }
        }
        let mut ctx = X509StoreContext::new().ok()?;
        ctx.init(&store, leaf, &chain, |c| {
            if !c.verify_cert()? {
                return Ok(None);
            }
            Ok(c.chain()
                .map(|p| p.iter().filter_map(|x| x.to_der().ok()).collect()))
        })
        .ok()
        .flatten()
    }
}

/// A certificate signer's path, leaf first: its certificate, then the issuers found among
/// its chain and `anchors` ([`issuers_of`]). `None` for a key-id signer (no certificate).
pub fn signer_path(
    signer: &crate::keys::SignerRef,
    anchors: &[Certificate],
) -> Option<Vec<Certificate>> {
    let crate::keys::SignerRef::Certificate { cert, chain } = signer else {
        return None;
    };
    let pool = chain.iter().chain(anchors).cloned().collect();
    let mut path = vec![cert.clone()];
    path.extend(issuers_of(cert, pool));
    Some(path)
}

/// The certificates of `pool` that issued `start`, the one that issued that, and so on,
/// in that order: each bears the name of the one below's issuer and its key verifies the
/// one below; each is used once. It stops at a self-issued certificate, or where none of
/// `pool` issued the last one.
pub fn issuers_of(start: &Certificate, mut pool: Vec<Certificate>) -> Vec<Certificate> {
    let issued = |child: &Certificate, parent: &Certificate| match (child.x509(), parent.x509()) {
        (Some(c), Some(p)) => {
            same_name(c.issuer_name(), p.subject_name())
                && parent.public_key().is_ok_and(|k| child.is_signed_by(&k))
        }
        _ => false,
    };
    let mut issuers = Vec::new();
    let mut below = start.clone();
    while let Some(b) = below.x509() {
        if same_name(b.subject_name(), b.issuer_name()) {
            break;
        }
        let Some(i) = pool.iter().position(|c| issued(&below, c)) else {
            break;
        };
        let parent = pool.swap_remove(i);
        below = parent.clone();
        issuers.push(parent);
    }
    issuers
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_testpki::{InstitutionSpec, TestPki, Validity};

    fn cert(x: &openssl::x509::X509) -> Certificate {
        Certificate::from_der(&x.to_der().unwrap()).unwrap()
    }

    #[test]
    fn cached_paths_still_honour_validity_at_each_time() {
        let pki = TestPki::generate("trust").unwrap();
        let inst = pki
            .institution(
                &InstitutionSpec::new("NIHII", "12345678", "T")
                    .with_auth_validity(Validity::days_around_now(1, 10)),
            )
            .unwrap();
        let leaf = cert(&inst.auth.cert);
        let anchors = TrustAnchors::new(vec![cert(&pki.root.cert)]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        // The first call builds and caches the path; the others hit the cache.
        assert!(anchors.verify(&leaf, &[], now));
        assert!(anchors.verify(&leaf, &[], now + 5 * day));
        assert!(
            !anchors.verify(&leaf, &[], now + 20 * day),
            "expired leaf accepted from the cache"
        );
        assert!(
            !anchors.verify(&leaf, &[], now - 3 * day),
            "not-yet-valid leaf accepted from the cache"
        );
        let other = TestPki::generate("other").unwrap();
        let stranger = TrustAnchors::new(vec![cert(&other.root.cert)]);
        assert!(!stranger.verify(&leaf, &[], now));
        assert!(!stranger.verify(&leaf, &[], now));
        assert!(!TrustAnchors::default().verify(&leaf, &[], now));
    }
}
