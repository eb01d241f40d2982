//! The platform's configuration (TOML):
//!
//! ```toml
//! [platform]
//! listen = "127.0.0.1:8443"
//! store = "/var/lib/etee/platform.redb"     # or "postgres://user@host/db"
//! tls_certificate = "server-chain.pem"      # the server's certificate chain, leaf first
//! tls_key = "server-key.pem"                # its private key (PEM, PKCS#8 or RSA)
//! # optional:
//! client_ca = ["ca.pem"]                    # client certificates must chain to these (without:
//!                                           # no caller is known: KGSS, KeyDepot writes refused)
//! # optional, with these defaults:
//! crl = []                                  # the CAs' revocation lists (DER or PEM)
//! revocation = "optional"                   # none | optional | mandatory (optional with crl or ocsp)
//! crl_check_seconds = 60                    # the crl files are read again when they change
//! ocsp = "auto"                             # (default none) ask OCSP: each certificate's responder, or "http://…"
//! max_body_bytes = 1048576
//! handshake_timeout_ms = 10000              # timeouts: 100 to 86400000 (a day)
//! request_timeout_ms = 30000
//! max_connections = 1024                    # 1 to 65536
//! max_connections_per_peer = 256           # per IP address (default: a quarter; at most the above)
//! max_concurrent_work = 64                  # store/KGSS/KeyDepot operations at once
//! queue_timeout_ms = 2000                   # wait for a turn, then 503 / SOA-02001
//! max_requests_per_caller = 32              # one caller's requests at once (certificate or address)
//! store_connections = 8                     # PostgreSQL: connections for requests (3 more for /ready)
//! max_keys_per_holder = 1000                # KeyDepot keys one holder may register (1 to 1000000)
//! environment = "Test"                      # SOA faults' Environment
//! status_access = "any"                     # /ready and /metrics: "any", "loopback" or "certificate"
//!
//! [kgss]                                    # optional: serve KGSS
//! hsm = "kgss-hsm.toml"                     # etee HSM configuration of KGSS's token
//! wrapping_key = "kgss-wrap"                # CKA_ID of its AES wrapping key (default)
//! ```
//!
//! Relative paths are relative to the configuration file's directory.

use crate::{PlatformError, Result};
use etee_services::revocation::RevocationConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone)]
pub struct PlatformConfig {
    pub listen: SocketAddr,
    /// A file path (embedded store) or a `postgres://` URL.
    pub store: String,
    pub tls_certificate: PathBuf,
    pub tls_key: PathBuf,
    pub client_ca: Vec<PathBuf>,
    /// Revocation lists for callers' certificates, sealed requests and ETKs.
    pub revocation: RevocationConfig,
    pub limits: Limits,
    pub environment: etee_services::soap::Environment,
    /// Who may read `/ready` and `/metrics`.
    pub status_access: StatusAccess,
    pub kgss: Option<KgssConfig>,
}

/// Who may read the platform's status (`GET /ready`, `GET /metrics`); `/health` and
/// `/openapi.json` answer anyone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusAccess {
    /// Any TLS client (load balancers probe without a certificate).
    #[default]
    Any,
    /// Clients connecting from a loopback address (a scraper or probe on the host).
    Loopback,
    /// Clients presenting a certificate of the platform's CA.
    Certificate,
}

impl StatusAccess {
    /// Whether a client from `peer` (unknown: `None`), `certified` or not, may read the
    /// status.
    pub fn allows(self, peer: Option<std::net::IpAddr>, certified: bool) -> bool {
        match self {
            Self::Any => true,
            // A dual-stack socket sees 127.0.0.1 as ::ffff:127.0.0.1.
            Self::Loopback => peer.is_some_and(|p| p.to_canonical().is_loopback()),
            Self::Certificate => certified,
        }
    }
}

impl std::fmt::Debug for PlatformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformConfig")
            .field("listen", &self.listen)
            .field("store", &redacted_store(&self.store))
            .field("tls_certificate", &self.tls_certificate)
            .field("tls_key", &self.tls_key)
            .field("client_ca", &self.client_ca)
            .field("limits", &self.limits)
            .field("environment", &self.environment)
            .field("status_access", &self.status_access)
            .field("kgss", &self.kgss)
            .finish()
    }
}

/// The store's location with the passwords of a `postgres://` URL hidden: the one of
/// `user:password@` and the values of the `password` and `sslpassword` parameters (any
/// case, percent-encoded or not). Where a URL could be read two ways (an `@` in the
/// password, or after `?`), what either reading takes for a password is hidden: the URL's
/// authority, and the PostgreSQL driver's credentials (up to the first `@`).
pub fn redacted_store(store: &str) -> String {
    let Some((scheme, rest)) = store.split_once("://") else {
        return store.to_owned();
    };
    let offset = scheme.len() + 3;
    let mut secret: Vec<std::ops::Range<usize>> = Vec::new();
    let mut password_of = |userinfo: &str| {
        if let Some(colon) = userinfo.find(':') {
            secret.push(offset + colon + 1..offset + userinfo.len());
        }
    };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if let Some(at) = authority.rfind('@') {
        password_of(&rest[..at]);
    }
    if let Some(at) = rest.find('@') {
        password_of(&rest[..at]);
    }
    // Parameters: `key=value` after a `?` or a `&`, wherever they are.
    for (start, _) in rest.match_indices(['?', '&']) {
        let param = &rest[start + 1..];
        let param = &param[..param.find('&').unwrap_or(param.len())];
        if let Some((key, value)) = param.split_once('=') {
            let key = percent_decoded(key).to_ascii_lowercase();
            if key == "password" || key == "sslpassword" {
                let from = offset + start + 1 + key_len(param);
                secret.push(from..from + value.len());
            }
        }
    }
    secret.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(store.len());
    let mut at = 0;
    for r in secret {
        if r.end <= at {
            continue;
        }
        let start = r.start.max(at);
        out.push_str(&store[at..start]);
        out.push_str("***");
        at = r.end;
    }
    out.push_str(&store[at..]);
    out
}

/// The length of `key=` in `key=value`.
fn key_len(param: &str) -> usize {
    param.find('=').map_or(param.len(), |i| i + 1)
}

/// `%XX` escapes decoded (as the PostgreSQL driver reads parameter names); others kept.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A warning when the store is a PostgreSQL server on another machine reached without
/// `sslmode=require`: its connections could then go in clear (access attributes, audit
/// events, wrapped keys), or to a server whose certificate nobody checked.
pub fn store_transport_warning(store: &str) -> Option<String> {
    let (scheme, rest) = store.split_once("://")?;
    if !scheme.starts_with("postgres") {
        return None;
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    if query.split('&').any(|p| p == "sslmode=require") {
        return None;
    }
    let authority = location.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.split(':').next().unwrap_or(""),
    };
    let host = query
        .split('&')
        .find_map(|p| p.strip_prefix("host="))
        .unwrap_or(host);
    let local = host.is_empty()
        || host.starts_with('/')
        || host.starts_with("%2F")
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!local).then(|| {
        format!(
            "store: PostgreSQL on {host} without sslmode=require: the connection may go in \
             clear, and the server's certificate is not checked (add ?sslmode=require, and \
             sslrootcert=PATH for a private CA)"
        )
    })
}

impl PlatformConfig {
    /// A warning when callers are known (`client_ca`) but no revocation is checked
    /// (neither `crl` nor `ocsp`, or `revocation = "none"`): a revoked caller's
    /// certificate, a revoked signer of a KGSS request and a revoked holder's ETK are then
    /// all accepted.
    pub fn revocation_warning(&self) -> Option<String> {
        let none = self.revocation.effective_policy().ok()
            == Some(etee_formats::revocation::RevocationPolicy::None);
        (none && !self.client_ca.is_empty()).then(|| {
            "no revocation checking (neither crl nor ocsp in [platform], or revocation = \
             \"none\"): revoked certificates are accepted — a revoked caller is served, a \
             revoked institution's KGSS requests and KeyDepot registrations are granted, and \
             its ETK is registered; give crl = [\"…\"] (the CAs' lists, kept fresh by `etee \
             crl fetch`) and/or ocsp = \"auto\" (see docs/revocation.md)"
                .to_string()
        })
    }
}

/// KeyDepot keys one holder may register by default ([`Limits::max_keys_per_holder`]).
pub const DEFAULT_MAX_KEYS_PER_HOLDER: usize = 1000;

/// The highest `max_keys_per_holder`: a holder's listing is one answer.
pub const MAX_KEYS_PER_HOLDER_LIMIT: usize = 1_000_000;

/// The most connections a server may be configured for: a bound on descriptors, and on the
/// shutdown's drain (which waits for every permit).
pub const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// The range of the timeouts in milliseconds (`handshake_timeout_ms`, `request_timeout_ms`).
pub use etee_hsm::config::TIMEOUT_MS_RANGE;

/// `value`, the setting `key`, when within `range`; else an error naming the key, the
/// value and the range (the file is added by [`PlatformConfig::load`]).
fn in_range<T>(key: &str, value: T, range: impl RangeBounds<T>) -> Result<T>
where
    T: PartialOrd + std::fmt::Display,
{
    etee_hsm::config::in_range(key, value, range).map_err(PlatformError::Config)
}

/// `max_requests_per_caller` when not configured (then lowered to half the work limit
/// when above it).
pub const DEFAULT_REQUESTS_PER_CALLER: usize = 32;

/// The most `store_connections` may be.
pub const MAX_STORE_CONNECTIONS: usize = 1024;

/// The most `max_concurrent_work` may be: each is a thread of tokio's blocking pool,
/// which has 512, and `/ready`'s checks need some too.
pub const MAX_CONCURRENT_WORK_LIMIT: usize = 500;

/// The `[kgss]` table.
#[derive(Clone, Debug)]
pub struct KgssConfig {
    /// The `etee` HSM configuration of KGSS's token.
    pub hsm: PathBuf,
    pub wrapping_key: String,
}

/// Bounds on what one caller can make the platform do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body accepted (SOAP envelope or JSON).
    pub max_body_bytes: usize,
    /// Time for a client to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a client to send a request (headers and body) and for the answer to be
    /// made; also the idle time allowed between requests on a kept-alive connection.
    pub request_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one IP address may hold at once, so that a peer stalling its
    /// connections (in the TLS handshake, or sending slowly) cannot take every one of
    /// `max_connections`.
    pub max_connections_per_peer: usize,
    /// Blocking operations (store, KGSS, KeyDepot) under way at once, counting those whose
    /// request was abandoned ([`crate::work`]).
    pub max_concurrent_work: usize,
    /// How long a request waits for a turn of blocking work, or for a place in its
    /// caller's share, before it is refused as busy.
    pub queue_timeout: Duration,
    /// Requests of one caller (client certificate, else address) answered at once
    /// ([`crate::share`]); `None`: [`DEFAULT_REQUESTS_PER_CALLER`], lowered to half the
    /// work limit when above it (an explicit value is kept).
    pub max_requests_per_caller: Option<usize>,
    /// PostgreSQL: the pool's connections for requests (it has `READY_CHECKS` more, for `/ready`);
    /// the work limit is at most this.
    pub store_connections: usize,
    /// KeyDepot keys one holder (identifier type and value) may have registered; one more
    /// is refused (409 `KEYDEPOT_TOO_MANY_KEYS`). Bounds what one authenticated caller can
    /// store, and the length of a holder's listing.
    pub max_keys_per_holder: usize,
    /// How often the server forgets KGSS's expired replay digests
    /// ([`crate::server::start`]). Not a configuration key: tests shorten it.
    pub replay_purge_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_peer: 256,
            max_concurrent_work: 64,
            queue_timeout: Duration::from_secs(2),
            max_requests_per_caller: None,
            store_connections: etee_store::DEFAULT_POOL_SIZE,
            max_keys_per_holder: DEFAULT_MAX_KEYS_PER_HOLDER,
            replay_purge_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    platform: Table,
    kgss: Option<KgssTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KgssTable {
    hsm: PathBuf,
    wrapping_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    listen: Option<String>,
    store: String,
    tls_certificate: PathBuf,
    tls_key: PathBuf,
    #[serde(default)]
    client_ca: Vec<PathBuf>,
    #[serde(default)]
    crl: Vec<PathBuf>,
    revocation: Option<String>,
    crl_check_seconds: Option<u64>,
    ocsp: Option<String>,
    max_body_bytes: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    max_concurrent_work: Option<usize>,
    queue_timeout_ms: Option<u64>,
    max_requests_per_caller: Option<usize>,
    store_connections: Option<usize>,
    max_keys_per_holder: Option<usize>,
    environment: Option<String>,
    #[serde(default)]
    status_access: StatusAccess,
}

impl PlatformConfig {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            etee_hsm::config::read_config_text(path).map_err(|source| PlatformError::File {
                path: path.display().to_string(),
                source,
            })?;
        let config =
            Self::from_toml(&text, &etee_hsm::config::config_dir(path)).map_err(|e| match e {
                PlatformError::Config(why) => {
                    PlatformError::Config(format!("{}: {why}", path.display()))
                }
                other => other,
            })?;
        // A database password in the store's URL makes the file a secret like a PIN file.
        if redacted_store(&config.store) != config.store {
            if let Some(w) = etee_hsm::config::permission_warning_for(
                "platform configuration (its store URL holds a password)",
                path,
            ) {
                etee_hsm::warn_operator(&w);
            }
        }
        Ok(config)
    }

    /// Parses a configuration; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| PlatformError::Config(etee_hsm::config::toml_error(text, &e)))?;
        let File { platform: t, kgss } = file;
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen = t.listen.as_deref().unwrap_or("127.0.0.1:8443");
        let listen = listen
            .parse()
            .map_err(|e| PlatformError::Config(format!("listen {listen:?}: {e}")))?;
        let defaults = Limits::default();
        let timeout = |key: &str, ms: Option<u64>, default: Duration| {
            etee_hsm::config::timeout_ms(key, ms, default).map_err(PlatformError::Config)
        };
        let max_connections = in_range(
            "max_connections",
            t.max_connections.unwrap_or(defaults.max_connections),
            1..=MAX_CONNECTIONS_LIMIT,
        )?;
        let limits = Limits {
            max_body_bytes: in_range(
                "max_body_bytes",
                t.max_body_bytes.unwrap_or(defaults.max_body_bytes),
                1..,
            )?,
            handshake_timeout: timeout(
                "handshake_timeout_ms",
                t.handshake_timeout_ms,
                defaults.handshake_timeout,
            )?,
            request_timeout: timeout(
                "request_timeout_ms",
                t.request_timeout_ms,
                defaults.request_timeout,
            )?,
            max_connections,
            // Default: a quarter of the listener's connections.
            max_connections_per_peer: in_range(
                "max_connections_per_peer",
                t.max_connections_per_peer
                    .unwrap_or((max_connections / 4).max(1)),
                1..=max_connections,
            )
            .map_err(|e| match e {
                PlatformError::Config(why) => {
                    PlatformError::Config(format!("{why} (max_connections)"))
                }
                other => other,
            })?,
            max_concurrent_work: in_range(
                "max_concurrent_work",
                t.max_concurrent_work
                    .unwrap_or(defaults.max_concurrent_work),
                1..=MAX_CONCURRENT_WORK_LIMIT,
            )?,
            queue_timeout: t
                .queue_timeout_ms
                .map_or(defaults.queue_timeout, Duration::from_millis),
            max_requests_per_caller: t
                .max_requests_per_caller
                // No more than connections: a caller cannot have more requests at once
                // (and a count past tokio's semaphore limit would fail every request).
                .map(|n| in_range("max_requests_per_caller", n, 1..=MAX_CONNECTIONS_LIMIT))
                .transpose()?,
            store_connections: in_range(
                "store_connections",
                t.store_connections.unwrap_or(defaults.store_connections),
                1..=MAX_STORE_CONNECTIONS,
            )?,
            max_keys_per_holder: in_range(
                "max_keys_per_holder",
                t.max_keys_per_holder
                    .unwrap_or(defaults.max_keys_per_holder),
                1..=MAX_KEYS_PER_HOLDER_LIMIT,
            )?,
            replay_purge_interval: defaults.replay_purge_interval,
        };
        if limits.queue_timeout.saturating_mul(2) >= limits.request_timeout {
            // A request may wait twice (its caller's share, then a turn of work): a busy
            // platform must answer 503 before its request time runs out (504).
            return Err(PlatformError::Config(format!(
                "queue_timeout_ms ({}) must be less than half of request_timeout_ms ({})",
                limits.queue_timeout.as_millis(),
                limits.request_timeout.as_millis()
            )));
        }
        if t.status_access == StatusAccess::Certificate && t.client_ca.is_empty() {
            return Err(PlatformError::Config(
                "status_access = \"certificate\" needs client_ca: without it no client presents \
                 a certificate"
                    .into(),
            ));
        }
        let environment = match t.environment.as_deref() {
            None => etee_services::soap::Environment::Test,
            Some(name) => etee_services::soap::Environment::from_name(name).ok_or_else(|| {
                PlatformError::Config(format!("environment {name:?}: not an SOA environment"))
            })?,
        };
        let revocation = RevocationConfig::from_keys(
            t.crl.into_iter().map(&rel).collect(),
            t.revocation.as_deref(),
            t.crl_check_seconds,
            t.ocsp.as_deref(),
        )
        .map_err(PlatformError::Config)?;
        if !revocation.crl.is_empty() && t.client_ca.is_empty() {
            return Err(PlatformError::Config(
                "crl needs client_ca: the lists are of the CAs callers' certificates chain to"
                    .into(),
            ));
        }
        let store = if t.store.starts_with("postgres://") || t.store.starts_with("postgresql://") {
            t.store
        } else {
            rel(PathBuf::from(t.store)).display().to_string()
        };
        Ok(Self {
            listen,
            store,
            tls_certificate: rel(t.tls_certificate),
            tls_key: rel(t.tls_key),
            client_ca: t.client_ca.into_iter().map(rel).collect(),
            revocation,
            limits,
            environment,
            status_access: t.status_access,
            kgss: kgss.map(|k| KgssConfig {
                hsm: rel(k.hsm),
                wrapping_key: k
                    .wrapping_key
                    .unwrap_or_else(|| etee_hsm::config::KGSS_WRAP_ID.to_owned()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults_and_relative_paths() {
        let c = PlatformConfig::from_toml(
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"/k.pem\"\n",
            Path::new("/etc/etee"),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.store, "/etc/etee/p.redb");
        assert_eq!(c.tls_certificate, Path::new("/etc/etee/s.pem"));
        assert_eq!(c.tls_key, Path::new("/k.pem"));
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
        assert_eq!(c.limits.max_concurrent_work, 64);
        assert_eq!(c.limits.queue_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_requests_per_caller, None);
        assert_eq!(c.limits.max_keys_per_holder, 1000);
    }

    /// The configuration shown in docs/platform.md is accepted, and the values it gives
    /// as defaults are the defaults.
    #[test]
    fn the_configuration_in_the_docs_parses_with_the_defaults_it_states() {
        let doc = include_str!("../../../docs/platform.md");
        let start = doc.find("```toml\n").expect("a TOML block") + "```toml\n".len();
        let block = &doc[start..start + doc[start..].find("```").expect("its end")];
        let c = PlatformConfig::from_toml(block, Path::new("/etc/etee")).unwrap();
        let d = Limits::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.limits.max_body_bytes, d.max_body_bytes);
        assert_eq!(c.limits.handshake_timeout, d.handshake_timeout);
        assert_eq!(c.limits.request_timeout, d.request_timeout);
        assert_eq!(c.limits.max_connections, d.max_connections);
        assert_eq!(
            c.limits.max_connections_per_peer,
            d.max_connections_per_peer
        );
        assert_eq!(c.limits.max_concurrent_work, d.max_concurrent_work);
        assert_eq!(c.limits.queue_timeout, d.queue_timeout);
        assert_eq!(
            c.limits.max_requests_per_caller,
            Some(DEFAULT_REQUESTS_PER_CALLER)
        );
        assert_eq!(c.limits.store_connections, d.store_connections);
        assert_eq!(c.limits.max_keys_per_holder, d.max_keys_per_holder);
        assert_eq!(c.status_access, StatusAccess::Any);
        assert_eq!(c.revocation, RevocationConfig::default());
        assert_eq!(c.kgss.expect("[kgss]").wrapping_key, "kgss-wrap");
    }

    #[test]
    fn status_access_follows_the_setting() {
        let local = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let remote = Some(std::net::IpAddr::from([192, 0, 2, 7]));
        let v6_local = Some(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        assert!(StatusAccess::Any.allows(remote, false));
        assert!(StatusAccess::Loopback.allows(local, false));
        assert!(StatusAccess::Loopback.allows(v6_local, false));
        let mapped = "::ffff:127.0.0.1".parse::<std::net::IpAddr>().ok();
        assert!(StatusAccess::Loopback.allows(mapped, false));
        assert!(!StatusAccess::Loopback.allows(remote, true));
        assert!(!StatusAccess::Loopback.allows(None, true));
        assert!(StatusAccess::Certificate.allows(remote, true));
        assert!(!StatusAccess::Certificate.allows(local, false));
        let base =
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"k.pem\"\n";
        let c = PlatformConfig::from_toml(base, Path::new("/")).unwrap();
        assert_eq!(c.status_access, StatusAccess::Any);
        let c = PlatformConfig::from_toml(
            &format!("{base}status_access = \"loopback\"\n"),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(c.status_access, StatusAccess::Loopback);
        assert!(PlatformConfig::from_toml(
            &format!("{base}status_access = \"lan\"\n"),
            Path::new("/")
        )
        .is_err());
        let certificate = format!("{base}status_access = \"certificate\"\n");
        let e = PlatformConfig::from_toml(&certificate, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs client_ca"), "{e}");
        let with_ca = certificate.replace("tls_key", "client_ca = [\"ca.pem\"]\ntls_key");
        assert!(PlatformConfig::from_toml(&with_ca, Path::new("/")).is_ok());
    }

    #[test]
    fn revocation_lists_need_the_callers_ca_and_a_sound_policy() {
        let base =
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"k.pem\"\n";
        let c = PlatformConfig::from_toml(base, Path::new("/")).unwrap();
        assert_eq!(c.revocation, RevocationConfig::default());
        let with_ca = format!("{base}client_ca = [\"ca.pem\"]\n");
        let c = PlatformConfig::from_toml(
            &format!("{with_ca}crl = [\"ca.crl\"]\ncrl_check_seconds = 5\n"),
            Path::new("/etc/etee"),
        )
        .unwrap();
        assert_eq!(c.revocation.crl, vec![PathBuf::from("/etc/etee/ca.crl")]);
        assert_eq!(c.revocation.policy, None);
        assert_eq!(c.revocation.check_every, Duration::from_secs(5));
        for (text, says) in [
            (format!("{base}crl = [\"ca.crl\"]\n"), "needs client_ca"),
            (
                format!("{with_ca}revocation = \"mandatory\"\n"),
                "needs the CAs' lists",
            ),
            (
                format!("{with_ca}revocation = \"maybe\"\n"),
                "none, optional or mandatory",
            ),
            (
                format!("{with_ca}crl = [\"c\"]\nrevocation = \"none\"\n"),
                "would not be used",
            ),
            (format!("{with_ca}crl_check_seconds = 0\n"), "at least 1"),
        ] {
            let e = PlatformConfig::from_toml(&text, Path::new("/"))
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"))
                .to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_bound_on_blocking_work_is_checked() {
        let base =
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"k.pem\"\n";
        let with =
            |extra: &str| PlatformConfig::from_toml(&format!("{base}{extra}"), Path::new("/"));
        let c = with("max_concurrent_work = 8\nqueue_timeout_ms = 250\n").unwrap();
        assert_eq!(c.limits.max_concurrent_work, 8);
        assert_eq!(c.limits.queue_timeout, Duration::from_millis(250));
        for (extra, says) in [
            (
                "max_concurrent_work = 0\n",
                "max_concurrent_work = 0: 1 to 500",
            ),
            (
                "max_concurrent_work = 501\n",
                "max_concurrent_work = 501: 1 to 500",
            ),
            (
                "max_requests_per_caller = 0\n",
                "max_requests_per_caller = 0: 1 to 65536",
            ),
            (
                "max_requests_per_caller = 9223372036854775807\n",
                "max_requests_per_caller = 9223372036854775807: 1 to 65536",
            ),
            (
                "store_connections = 1025\n",
                "store_connections = 1025: 1 to 1024",
            ),
            (
                "queue_timeout_ms = 2500\nrequest_timeout_ms = 5000\n",
                "must be less than half of request_timeout_ms",
            ),
        ] {
            let e = with(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn a_remote_store_without_required_tls_is_warned_about() {
        for (store, warned) in [
            ("/var/lib/etee/platform.redb", false),
            ("postgres://etee@127.0.0.1:5432/etee", false),
            ("postgres://etee@localhost/etee", false),
            ("postgres://etee@[::1]:5432/etee", false),
            ("postgresql://etee@%2Fvar%2Frun%2Fpostgresql/etee", false),
            ("postgres://etee@db.example:5432/etee", true),
            ("postgres://etee@10.0.0.5/etee?sslmode=prefer", true),
            ("postgres://etee@db.example/etee?sslmode=require", false),
            (
                "postgres://etee@db.example/etee?sslmode=require&sslrootcert=/etc/ca.pem",
                false,
            ),
            ("postgres:///etee?host=db.example", true),
            ("postgres:///etee?host=/var/run/postgresql", false),
        ] {
            assert_eq!(store_transport_warning(store).is_some(), warned, "{store}");
        }
    }

    /// Known callers without revocation checking: warned of; with a list, or without
    /// known callers (nothing to check), not.
    #[test]
    fn no_revocation_checking_is_warned_about() {
        let base = "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\n\
                    tls_key = \"k.pem\"\n";
        let warning = |extra: &str| {
            PlatformConfig::from_toml(&format!("{base}{extra}"), Path::new("/"))
                .unwrap()
                .revocation_warning()
        };
        let w = warning("client_ca = [\"ca.pem\"]\n").expect("warned");
        assert!(w.contains("revoked certificates are accepted") && w.contains("ocsp = \"auto\""));
        assert!(warning("client_ca = [\"ca.pem\"]\nrevocation = \"none\"\n").is_some());
        assert_eq!(
            warning("client_ca = [\"ca.pem\"]\ncrl = [\"ca.crl\"]\n"),
            None
        );
        assert_eq!(warning("client_ca = [\"ca.pem\"]\nocsp = \"auto\"\n"), None);
        assert_eq!(warning(""), None);
    }

    #[test]
    fn a_store_password_stays_out_of_debug() {
        for (url, shown) in [
            (
                "postgres://etee:s3cr%40t@db:5432/etee",
                "postgres://etee:***@db:5432/etee",
            ),
            (
                "postgresql://etee@db/etee?sslmode=disable",
                "postgresql://etee@db/etee?sslmode=disable",
            ),
            ("postgres://db/etee?user=a@b", "postgres://db/etee?user=a@b"),
            ("/var/lib/etee/platform.redb", "/var/lib/etee/platform.redb"),
            // A password as a parameter: any case, percent-encoded names too.
            (
                "postgres://etee@127.0.0.1:1/etee?password=hunter2",
                "postgres://etee@127.0.0.1:1/etee?password=***",
            ),
            (
                "postgresql://db/etee?sslmode=require&PassWord=hunter2&sslrootcert=/ca.pem",
                "postgresql://db/etee?sslmode=require&PassWord=***&sslrootcert=/ca.pem",
            ),
            (
                "postgres://db/etee?sslpassword=hunter2",
                "postgres://db/etee?sslpassword=***",
            ),
            (
                "postgres://db/etee?pass%77ord=hunter2",
                "postgres://db/etee?pass%77ord=***",
            ),
            (
                "postgres://db/etee?password=hunter2@x&sslpassword=",
                "postgres://db/etee?password=***&sslpassword=***",
            ),
            // An `@` in the password: both readings' passwords hidden.
            (
                "postgres://etee:hun@ter2@db/etee",
                "postgres://etee:***@db/etee",
            ),
            (
                "postgres://etee:s3cr%40t@db:5432/etee?password=hunter2",
                "postgres://etee:***@db:5432/etee?password=***",
            ),
        ] {
            assert_eq!(redacted_store(url), shown);
        }
        let text = "[platform]\nstore = \"postgres://etee:hunter2@db/etee\"\n\
                    tls_certificate = \"c\"\ntls_key = \"k\"\n";
        let c = PlatformConfig::from_toml(text, Path::new("/")).unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("etee:***@db"),
            "{debug}"
        );
        let text = "[platform]\nstore = \"postgres://etee@db/etee?password=hunter2\"\n\
                    tls_certificate = \"c\"\ntls_key = \"k\"\n";
        let c = PlatformConfig::from_toml(text, Path::new("/")).unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("?password=***"),
            "{debug}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let base = Path::new("/");
        for text in [
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\nlisten = \"nowhere\"\n",
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\ncolour = 1\n",
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\nenvironment = \"Mars\"\n",
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\nmax_connections = 0\n",
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\nmax_keys_per_holder = 0\n",
            "[platform]\nstore = \"s\"\ntls_certificate = \"c\"\ntls_key = \"k\"\nmax_connections = 4294967296\n",
        ] {
            assert!(PlatformConfig::from_toml(text, base).is_err(), "{text}");
        }
    }

    /// Values that would make the platform useless are refused at load, each naming its
    /// key and allowed range; the edges of the ranges are accepted.
    #[test]
    fn values_out_of_their_range_are_refused_naming_the_key() {
        let base =
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"k.pem\"\n";
        let with =
            |extra: &str| PlatformConfig::from_toml(&format!("{base}{extra}"), Path::new("/"));
        for (extra, says) in [
            (
                "handshake_timeout_ms = 0\n",
                "handshake_timeout_ms = 0: 100 to 86400000",
            ),
            (
                "request_timeout_ms = 0\n",
                "request_timeout_ms = 0: 100 to 86400000",
            ),
            (
                "handshake_timeout_ms = 86400001\n",
                "handshake_timeout_ms = 86400001: 100 to 86400000",
            ),
            ("max_body_bytes = 0\n", "max_body_bytes = 0: at least 1"),
            ("max_connections = 0\n", "max_connections = 0: 1 to 65536"),
            (
                "max_connections = 4294967296\n",
                "max_connections = 4294967296: 1 to 65536",
            ),
            (
                "max_connections_per_peer = 0\n",
                "max_connections_per_peer = 0: 1 to 1024 (max_connections)",
            ),
            (
                "max_connections = 8\nmax_connections_per_peer = 9\n",
                "max_connections_per_peer = 9: 1 to 8 (max_connections)",
            ),
            (
                "store_connections = 0\n",
                "store_connections = 0: 1 to 1024",
            ),
        ] {
            let e = with(extra)
                .err()
                .unwrap_or_else(|| panic!("accepted: {extra}"))
                .to_string();
            assert!(e.contains(says), "{extra}→ {e}");
        }
        let c = with(
            "handshake_timeout_ms = 100\nrequest_timeout_ms = 86400000\nmax_body_bytes = 1\n\
             max_connections = 8\nmax_connections_per_peer = 8\nqueue_timeout_ms = 0\n",
        )
        .unwrap();
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(100));
        assert_eq!(c.limits.request_timeout, Duration::from_secs(86_400));
        assert_eq!(c.limits.max_connections_per_peer, 8);
        assert_eq!(c.limits.queue_timeout, Duration::ZERO);
    }

    /// Through [`PlatformConfig::load`], a refused value names the file too.
    #[test]
    fn a_refused_value_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("platform.toml");
        std::fs::write(
            &path,
            "[platform]\nstore = \"p.redb\"\ntls_certificate = \"s.pem\"\ntls_key = \"k.pem\"\n\
             request_timeout_ms = 0\n",
        )
        .unwrap();
        let e = PlatformConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("request_timeout_ms = 0: 100 to 86400000"),
            "{e}"
        );
    }
}
