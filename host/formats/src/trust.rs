//! Trust anchors and certificate path checks at a chosen time, so that verdicts are
//! reproducible (`--at`) and old messages are judged at their signing time as the official
//! library does.

use crate::cert::Certificate;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509StoreContext, X509};

/// The certificates a receiver trusts as roots (and, like the official trust store,
/// intermediate CAs it chooses to trust directly).
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    certs: Vec<Certificate>,
}

impl TrustAnchors {
    pub fn new(certs: Vec<Certificate>) -> Self {
        Self { certs }
    }
    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Whether `leaf` chains to an anchor at time `at` (unix seconds), using `extra` as
    /// untrusted intermediates. Revocation is not checked here (OCSP policy NONE).
    pub fn verify(&self, leaf: &Certificate, extra: &[Certificate], at: i64) -> bool {
        self.try_verify(leaf, extra, at).unwrap_or(false)
    }

    fn try_verify(&self, leaf: &Certificate, extra: &[Certificate], at: i64) -> Result<bool, openssl::error::ErrorStack> {
        if self.certs.is_empty() {
            return Ok(false);
        }
        let mut builder = X509StoreBuilder::new()?;
        for c in &self.certs {
            // Duplicates are harmless; an anchor OpenSSL cannot add just does not count.
            let _ = builder.add_cert(c.x509().clone());
        }
        let mut param = X509VerifyParam::new()?;
        param.set_time(at as _);
        // Trust anchors that are not self-signed count as anchors, as in a Java trust store.
        param.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
        builder.set_param(&param)?;
        let store = builder.build();
        let mut chain: Stack<X509> = Stack::new()?;
        for c in extra {
            chain.push(c.x509().clone())?;
        }
        let mut ctx = X509StoreContext::new()?;
        ctx.init(&store, leaf.x509(), &chain, |c| c.verify_cert())
    }
}
