//! The etee appliance: what medical software calls to seal and unseal eHealth messages
//! without knowing CMS, PKCS#11, KGSS or ETKDepot (`etee serve`).
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML configuration and its defaults |
//! | [`policy`] | who may call (Unix uid, TLS certificate), for what; the custody core's rules per caller |
//! | [`service`] | seal, unseal, ETK lookups, KGSS and KeyDepot operations, through the custody core |
//! | [`keydepot`] | registration requests for keys born in the token (proof of possession, attestation) |
//! | [`spool`] | encrypted, anonymous spool files: large bodies in bounded memory |
//! | [`api`] | the HTTP/JSON routes (OpenAPI in `docs/openapi/appliance.json`) |
//! | [`server`] | the listeners: HTTPS with client certificates, and a Unix socket |
//! | [`report`] | verdicts and audit records as JSON |
//! | [`client`] | a client of the API over its Unix socket (`etee demo`, tests, benchmark) |
//! | [`metrics`] | Prometheus counters |
//!
//! The protocol clients (ETKDepot, KGSS, KeyDepot, the ETK cache) are `etee-protocol`'s;
//! the platform is reached with TLS client authentication by the institution's
//! authentication key, used in the HSM through the custody core.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod keydepot;
pub mod metrics;
pub mod policy;
pub mod report;
pub mod server;
pub mod service;
pub mod spool;

pub use config::ApplianceConfig;
pub use service::Appliance;

use etee_formats::keys::SigningKey;
use etee_formats::trust::TrustAnchors;
use rustls::pki_types::CertificateDer;
use std::path::Path;

/// Where system TLS roots are on Debian and Ubuntu (used when `[platform] ca` is empty).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why the appliance could not start or serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplianceError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("HSM: {0}")]
    Hsm(#[from] etee_hsm::HsmError),
    #[error("platform clients: {0}")]
    Protocol(#[from] etee_protocol::ProtocolError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ApplianceError {
    /// The message without the kind prefix (for wrapping with a file name).
    pub fn detail(&self) -> String {
        match self {
            Self::Config(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = ApplianceError> = std::result::Result<T, E>;

/// Every certificate of a PEM file, the setting `key` (named with the file in errors).
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    etee_services::tls_files::certificates(key, path)
        .map_err(|e| ApplianceError::Config(e.to_string()))
}

/// The certificates of PEM files, the setting `key`, as trust anchors.
pub fn anchors(key: &str, files: &[std::path::PathBuf]) -> Result<TrustAnchors> {
    let mut certs = Vec::new();
    for path in files {
        for der in certificates(key, path)? {
            certs.push(
                etee_formats::cert::Certificate::from_der(&der).map_err(|e| {
                    ApplianceError::Config(format!("{key} {}: {e}", path.display()))
                })?,
            );
        }
    }
    Ok(TrustAnchors::new(certs))
}

/// The platform clients of `config`: TLS roots from `[platform] ca` (or the system's),
/// client authentication by `identity` (the token's authentication key through the
/// custody core), ETKs checked against `anchors`.
pub fn platform_clients(
    config: &ApplianceConfig,
    identity: &SigningKey,
    anchors: &TrustAnchors,
) -> Result<service::PlatformClients> {
    let p = &config.platform;
    let mut roots = Vec::new();
    if p.ca.is_empty() {
        roots.extend(certificates(
            "[platform] ca (unset: the system roots)",
            Path::new(SYSTEM_ROOTS),
        )?);
    }
    for path in &p.ca {
        roots.extend(certificates("[platform] ca", path)?);
    }
    let tls = etee_protocol::tls::client_config(
        &roots,
        Some(etee_protocol::TlsIdentity::new(identity)?),
    )?;
    let flavour = match p.protocol {
        config::Protocol::Soap => etee_protocol::Flavour::Soap,
        config::Protocol::Rest => etee_protocol::Flavour::Rest,
    };
    let endpoints = etee_protocol::Endpoints {
        soap_base: Some(p.soap_url.clone()),
        rest_base: Some(p.rest_url.clone()),
        flavour,
        timeout: p.timeout,
        connect_timeout: p.timeout,
        retries: p.retries,
    };
    let clients = etee_protocol::PlatformClients::new(&endpoints, tls)?;
    Ok(service::PlatformClients {
        etks: clients.etk_cache(anchors.clone()).with_ttl(p.etk_cache),
        kgss: clients.kgss,
        keydepot: clients.key_depot,
    })
}
