//! Clients of the ETEE platform services: ETKDepot (SOAP and REST), KGSS (SOAP and REST)
//! and KeyDepot (REST), over HTTPS with rustls, where the client's TLS key may stay in the
//! HSM; and a checking ETK cache.
//!
//! The messages are `etee_services`'s and the sealing `etee_formats::cms`'s: this crate is
//! the transport and the protocol decisions around them (what is retried, which ETK may be
//! used, whose answer a key may come from).
//!
//! | module | what |
//! |---|---|
//! | [`tls`] | [`TlsIdentity`] (client authentication through `PrivateKeyOps`), [`tls::client_config`] |
//! | [`http`] | [`HttpClient`]: kept-alive connections, timeouts, bounded retries (spec §7), bounded answers |
//! | [`etkdepot`] | [`EtkDepotClient`]: one lookup → [`EtkAnswer`] (found, matching, not found) |
//! | [`etk_cache`] | [`EtkCache`]: checked (§3.2), chosen (§4.1) and cached ETKs |
//! | [`kgss`] | [`KgssClient`]: `GetNewKey`, `GetKey` (reply to the ETK or with a one-off KEK), delete |
//! | [`keydepot`] | [`KeyDepotClient`]: register, get, list, add info, attestation, holder, delete |
//! | [`error`] | [`ProtocolError`] |
//!
//! [`Endpoints`] says where the services are (the eHealth presets, or a local platform) and
//! [`PlatformClients`] builds every client from it:
//!
//! ```no_run
//! # async fn demo(roots: Vec<rustls::pki_types::CertificateDer<'static>>) -> etee_protocol::Result<()> {
//! use etee_protocol::{Endpoints, Flavour, PlatformClients};
//! let tls = etee_protocol::tls::client_config(&roots, None)?;
//! let clients = PlatformClients::new(&Endpoints::acceptance(Flavour::Rest), tls)?;
//! let kgss_etk = clients.etk_depot.get_etk(&etee_protocol::kgss_identifier()).await?;
//! # let _ = kgss_etk; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod error;
pub mod etk_cache;
pub mod etkdepot;
pub mod http;
pub mod keydepot;
pub mod kgss;
pub mod tls;

pub use error::{ProtocolError, Result};
pub use etk_cache::{CacheStats, EtkCache};
pub use etkdepot::{EtkAnswer, EtkDepotClient};
pub use http::{HttpClient, HttpConfig};
pub use keydepot::KeyDepotClient;
pub use kgss::{KeyReply, KgssCaller, KgssClient, NewKey};
pub use tls::TlsIdentity;

use etee_services::etkdepot::Identifier;
use std::sync::Arc;
use std::time::Duration;

/// Which protocol a service is spoken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavour {
    Soap,
    Rest,
}

/// Where the platform services are, and how to talk to them.
///
/// The SOAP services are at `{soap_base}/EtkDepot/v1` and `{soap_base}/Kgss/v1`; the REST
/// ones at `{rest_base}/etee/v1/...` (spec §4.2's base path `/etee/v1` is part of the
/// paths, so the eHealth REST base is the bare host, as for a local platform).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub soap_base: Option<String>,
    pub rest_base: Option<String>,
    /// The flavour of ETKDepot and KGSS (KeyDepot is REST only).
    pub flavour: Flavour,
    /// Sending a request and reading its answer, per attempt.
    pub timeout: Duration,
    /// TCP and TLS handshake, per attempt.
    pub connect_timeout: Duration,
    /// Attempts after the first (see [`http`] for what is retried).
    pub retries: u32,
}

/// eHealth's acceptance SOAP base (spec §4.1, §5.1).
pub const ACCEPTANCE_SOAP: &str = "https://services-acpt.ehealth.fgov.be";
/// eHealth's acceptance REST base (spec §4.2).
pub const ACCEPTANCE_REST: &str = "https://api-acpt.ehealth.fgov.be";
/// eHealth's production SOAP base.
pub const PRODUCTION_SOAP: &str = "https://services.ehealth.fgov.be";
/// eHealth's production REST base.
pub const PRODUCTION_REST: &str = "https://api.ehealth.fgov.be";

impl Endpoints {
    fn with(soap: &str, rest: &str, flavour: Flavour) -> Self {
        let defaults = HttpConfig::default();
        Self {
            soap_base: Some(soap.to_owned()),
            rest_base: Some(rest.to_owned()),
            flavour,
            timeout: defaults.timeout,
            connect_timeout: defaults.connect_timeout,
            retries: defaults.retries,
        }
    }

    /// A local platform (`etee platform serve`) serving SOAP and REST at `base`.
    pub fn local(base: &str, flavour: Flavour) -> Self {
        Self::with(base, base, flavour)
    }

    /// eHealth's acceptance environment.
    pub fn acceptance(flavour: Flavour) -> Self {
        Self::with(ACCEPTANCE_SOAP, ACCEPTANCE_REST, flavour)
    }

    /// eHealth's production environment.
    pub fn production(flavour: Flavour) -> Self {
        Self::with(PRODUCTION_SOAP, PRODUCTION_REST, flavour)
    }

    /// The HTTP settings these endpoints ask for.
    pub fn http_config(&self) -> HttpConfig {
        HttpConfig {
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            retries: self.retries,
            ..HttpConfig::default()
        }
    }
}

/// The lookup of KGSS's ETK (spec §3.4): `CBE` / `0809394427` / `KGSS`.
pub fn kgss_identifier() -> Identifier {
    use etee_services::kgss::{KGSS_ETK_APPLICATION_ID, KGSS_ETK_TYPE, KGSS_ETK_VALUE};
    Identifier::new(KGSS_ETK_TYPE, KGSS_ETK_VALUE, Some(KGSS_ETK_APPLICATION_ID))
}

/// Every client of one platform, sharing one TLS configuration.
#[derive(Clone, Debug)]
pub struct PlatformClients {
    pub etk_depot: EtkDepotClient,
    pub kgss: KgssClient,
    /// KeyDepot, when there is a REST endpoint.
    pub key_depot: Option<KeyDepotClient>,
}

impl PlatformClients {
    /// The clients of `endpoints`; `tls` carries the roots and, for the writes that need
    /// one (KeyDepot, KGSS deletion), the client identity.
    pub fn new(endpoints: &Endpoints, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let config = endpoints.http_config();
        let client = |base: &Option<String>| {
            base.as_deref()
                .map(|b| HttpClient::new(b, tls.clone(), config.clone()))
                .transpose()
        };
        let soap = client(&endpoints.soap_base)?;
        let rest = client(&endpoints.rest_base)?;
        let depot_http = match endpoints.flavour {
            Flavour::Soap => soap.clone(),
            Flavour::Rest => rest.clone(),
        }
        .ok_or_else(|| ProtocolError::Endpoint(format!("no {:?} endpoint", endpoints.flavour)))?;
        Ok(Self {
            etk_depot: EtkDepotClient::new(depot_http, endpoints.flavour),
            kgss: KgssClient::new(endpoints.flavour, soap, rest.clone())?,
            key_depot: rest.map(KeyDepotClient::new),
        })
    }

    /// A cache over this platform's ETKDepot, checking chains against `anchors`.
    pub fn etk_cache(&self, anchors: etee_formats::trust::TrustAnchors) -> EtkCache {
        EtkCache::new(self.etk_depot.clone(), anchors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let a = Endpoints::acceptance(Flavour::Soap);
        assert_eq!(
            a.soap_base.as_deref(),
            Some("https://services-acpt.ehealth.fgov.be")
        );
        assert_eq!(
            a.rest_base.as_deref(),
            Some("https://api-acpt.ehealth.fgov.be")
        );
        assert_eq!(a.retries, 2);
        let p = Endpoints::production(Flavour::Rest);
        assert_eq!(
            p.soap_base.as_deref(),
            Some("https://services.ehealth.fgov.be")
        );
        assert_eq!(p.rest_base.as_deref(), Some("https://api.ehealth.fgov.be"));
        let l = Endpoints::local("https://127.0.0.1:8443", Flavour::Rest);
        assert_eq!(l.soap_base, l.rest_base);
        assert_eq!(
            kgss_identifier(),
            Identifier::new("CBE", "0809394427", Some("KGSS"))
        );
    }
}
