//! The ETEE platform services as network services: ETKDepot (SOAP and REST), KGSS and
//! KeyDepot, served over TLS on real sockets, with storage behind [`etee_store::Store`].
//!
//! | module       | what                                                              |
//! |--------------|-------------------------------------------------------------------|
//! | [`config`]   | the platform's TOML configuration and its defaults                 |
//! | [`tls`]      | rustls server configuration, optional client certificates          |
//! | [`server`]   | the accept loop: TLS handshake, HTTP/1.1, limits and timeouts      |
//! | [`audit`]    | the audit chain of KGSS and KeyDepot actions, in the store         |
//! | [`caller`]   | who is calling: identities from the TLS client certificate         |
//! | [`etkdepot`] | ETKDepot: the lookup rules, SOAP `GetEtk`, REST `/etee/v1/etks`, JWKS |
//! | [`kgss`]     | KGSS: `GetNewKey`, `GetKey`, delete; reader conditions; key wrapping |
//! | [`keydepot`] | KeyDepot: registration (proof of possession, attestation), reads, info, delete |
//! | [`client`]   | a small HTTPS client (tests, load client)                           |
//! | [`load`]     | a bounded load driver (loopback only): rate, p50/p99, errors        |
//! | [`routes`]   | the HTTP routes and how errors become SOA faults / problem details |
//!
//! The services' logic is synchronous (the store is) and runs on tokio's blocking pool;
//! the async side only moves bytes.
#![forbid(unsafe_code)]

pub mod audit;
pub mod caller;
pub mod client;
pub mod config;
pub mod etkdepot;
pub mod keydepot;
pub mod kgss;
pub mod load;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod share;
pub mod tls;
pub mod work;

use std::sync::Arc;

pub use config::PlatformConfig;

/// What the services share: the store, the configuration, the CA that callers'
/// certificates chain to, and KGSS (when this platform runs it).
pub struct Platform {
    pub store: Arc<dyn etee_store::Store>,
    pub config: PlatformConfig,
    /// The platform's CA (`client_ca`) and its revocation lists (`crl`), for callers'
    /// certificates, the signatures of sealed requests and ETKs.
    pub anchors: etee_formats::trust::TrustAnchors,
    pub kgss: Option<kgss::Kgss>,
    /// The bound on blocking work, from `config.limits`.
    pub work: work::WorkLimit,
    /// Requests by service and status ([`metrics`]).
    pub requests: etee_services::metrics::Requests,
    /// Each caller's share of the requests answered at once, from `config.limits`.
    pub shares: Arc<share::Shares>,
    /// `GET /ready`'s store checks, outside the work limit.
    pub(crate) readiness: routes::Readiness,
    /// Reads the revocation lists' files again when they change (none without `crl`).
    crl_following: Option<etee_services::revocation::Following>,
    /// KGSS's authentication and newest ETK certificates, and the TLS server's: warned
    /// about before they end, their end dates in `/metrics`.
    pub own_certificates: Vec<etee_services::lifetime::OwnCertificate>,
}

impl Platform {
    /// Opens the store, reads the CA certificates of `config` and, when it has a `[kgss]`
    /// table, opens KGSS's token through the custody core.
    pub fn open(config: PlatformConfig) -> Result<Self> {
        // The TLS files are checked before KGSS logs in to its token and before the store
        // is opened (an embedded store would be created by a start that then fails).
        tls::server_config(&config.tls_certificate, &config.tls_key, &config.client_ca)?;
        let (anchors, crl_following) = config
            .revocation
            .start(anchors(&config.client_ca)?)
            .map_err(|e| PlatformError::Config(e.to_string()))?;
        let kgss = match &config.kgss {
            None => None,
            Some(k) => Some(
                kgss::Kgss::from_hsm(&k.hsm, &k.wrapping_key, anchors.clone()).map_err(|e| {
                    PlatformError::Config(format!("[kgss] {}: {e}", k.hsm.display()))
                })?,
            ),
        };
        let warnings = [
            config::store_transport_warning(&config.store),
            config.revocation_warning(),
        ];
        for warning in warnings.into_iter().flatten() {
            tracing::warn!("{warning}");
        }
        // Beyond the requests' connections, one for each of `/ready`'s checks.
        let store = etee_store::open_with(
            &config.store,
            config.limits.store_connections + routes::READY_CHECKS,
        )
        .map_err(|e| {
            PlatformError::Config(format!(
                "store {}: {e}",
                config::redacted_store(&config.store)
            ))
        })?;
        let mut platform = Self::new(store, config, anchors, kgss);
        platform.crl_following = crl_following;
        Ok(platform)
    }

    /// A platform over an opened store (and KGSS); the bound on its blocking work comes
    /// from `config.limits`.
    pub fn new(
        store: Arc<dyn etee_store::Store>,
        config: PlatformConfig,
        anchors: etee_formats::trust::TrustAnchors,
        kgss: Option<kgss::Kgss>,
    ) -> Self {
        // Turns beyond the store's own bound (a PostgreSQL pool) would wait inside the
        // store, out of reach of the queue timeout, instead of being refused as busy.
        // Connections of the pool are left to `/ready`'s checks.
        let mut max_work = config.limits.max_concurrent_work;
        let store_bound = store
            .concurrency()
            .map(|n| n.saturating_sub(routes::READY_CHECKS).max(1));
        if let Some(store_bound) = store_bound.filter(|&n| n < max_work) {
            tracing::info!(
                "max_concurrent_work = {max_work} lowered to {store_bound}: the {} store's \
                 connections for requests (store_connections)",
                store.backend_name()
            );
            max_work = store_bound;
        }
        let work = work::WorkLimit::new(max_work, config.limits.queue_timeout);
        // By default a caller's share stays below the work limit, so that one caller
        // cannot take it all; a configured value is kept (with a warning when it allows
        // that).
        let per_caller = match config.limits.max_requests_per_caller {
            Some(n) => {
                if n >= max_work {
                    tracing::warn!(
                        "max_requests_per_caller = {n} is not below the work limit \
                         ({max_work}): one caller can take every turn"
                    );
                }
                n
            }
            None => config::DEFAULT_REQUESTS_PER_CALLER.min((max_work / 2).max(1)),
        };
        let shares = share::Shares::new(per_caller, config.limits.queue_timeout);
        let own_certificates = own_certificates(&config, kgss.as_ref());
        Self {
            store,
            config,
            anchors,
            kgss,
            work,
            requests: Default::default(),
            shares,
            readiness: routes::Readiness::default(),
            crl_following: None,
            own_certificates,
        }
    }
}

/// The certificates whose end stops the platform: KGSS's authentication certificate (it
/// signs the answers) and newest ETK certificate (callers seal their requests to it), and
/// the TLS server's (a file [`Platform::open`] has checked; one that cannot be read here
/// is left out).
fn own_certificates(
    config: &PlatformConfig,
    kgss: Option<&kgss::Kgss>,
) -> Vec<etee_services::lifetime::OwnCertificate> {
    use etee_services::lifetime::{OwnCertificate, Role};
    let mut certs = kgss
        .map(|kgss| OwnCertificate::of_keys(&kgss.signer, &kgss.ring))
        .unwrap_or_default();
    let tls = tls::certificates("tls_certificate", &config.tls_certificate).ok();
    if let Some(leaf) = tls
        .as_deref()
        .and_then(|chain| chain.first())
        .and_then(|der| etee_formats::cert::Certificate::from_der(der).ok())
    {
        certs.push(OwnCertificate::of(Role::Tls, &leaf));
    }
    certs
}

/// The certificates of PEM files (the setting `client_ca`) as trust anchors.
pub fn anchors(files: &[std::path::PathBuf]) -> Result<etee_formats::trust::TrustAnchors> {
    let mut certs = Vec::new();
    for path in files {
        for der in tls::certificates("client_ca", path)? {
            certs.push(
                etee_formats::cert::Certificate::from_der(&der).map_err(|e| {
                    PlatformError::Tls(format!("client_ca {}: {e}", path.display()))
                })?,
            );
        }
    }
    Ok(etee_formats::trust::TrustAnchors::new(certs))
}

/// Errors of setting up or running the platform (not of single requests: those are
/// answered, see [`routes`]).
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("store: {0}")]
    Store(#[from] etee_store::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = PlatformError> = std::result::Result<T, E>;

/// Seconds since the Unix epoch (the formats crate's clock).
pub use etee_formats::unix_now;
