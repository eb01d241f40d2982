//! The appliance's configuration (TOML), with safe defaults:
//!
//! ```toml
//! [appliance]
//! hsm = "alice-hsm.toml"             # the institution's token: an etee HSM configuration
//! trust = ["ca.pem"]                 # anchors for senders' certificates and for ETKs
//! tsa_trust = ["tsa-ca.pem"]         # anchors for signature timestamps' authorities (default none)
//! crl = ["ca.crl"]                   # the CAs' revocation lists (DER or PEM; default none)
//! revocation = "optional"            # none | optional | mandatory (default: optional with crl or ocsp)
//! crl_check_seconds = 60             # the crl files are read again when they change
//! ocsp = "auto"                      # ask OCSP (default: not): each certificate's responder, or "http://…"
//! socket = "/run/etee/appliance.sock" # the API on a Unix socket (callers known by uid)
//! listen = "127.0.0.1:9443"          # and/or the API over HTTPS (callers known by certificate)
//! tls_certificate = "appliance.pem"  # needed with `listen`: chain, leaf first
//! tls_key = "appliance-key.pem"      #   its key (the API's TLS key, not an eHealth key)
//! client_ca = ["clients-ca.pem"]     #   API callers' certificates chain to these
//! # optional, with these defaults:
//! etk = "alice.etk"                  # the institution's own ETK (default: looked up in ETKDepot)
//! spool_dir = "/var/tmp"             # large bodies are spooled here (default: the temp dir)
//! max_body_bytes = 4294967296        # 4 GiB
//! max_json_content_bytes = 16777216  # content returned inside a JSON answer
//! handshake_timeout_ms = 10000       # timeouts: 100 to 86400000 (a day)
//! header_timeout_ms = 30000          # a request's headers, from a slow sender
//! request_timeout_ms = 600000        # a large message takes time
//! max_connections = 256              # 1 to 65536
//! max_connections_per_peer = 64       # per IP address or uid (default: a quarter; at most the above)
//! queue_timeout_ms = 2000            # a request waits this long for a slot of its client
//! audit_anchor_log_seconds = 3600    # the audit chain's anchor in the log this often (0: never)
//!
//! [platform]                         # where ETKDepot, KGSS and KeyDepot are
//! url = "https://127.0.0.1:8443"     # one base for all (a local platform), or:
//! # soap_url = "https://services-acpt.ehealth.fgov.be"
//! # rest_url = "https://api-acpt.ehealth.fgov.be"
//! # environment = "acceptance"       # or "production": the eHealth URLs of the spec
//! protocol = "soap"                  # or "rest" (KeyDepot and KGSS deletion are REST only)
//! ca = ["ca.pem"]                    # the platform's TLS roots
//! timeout_ms = 10000
//! retries = 2                        # 0 to 10
//! etk_cache_seconds = 3600           # 0: not cached
//!
//! [[client]]                         # who may call the API, and for what
//! name = "his"                       # the custody core's client id (1 to 32 bytes)
//! operations = ["seal", "unseal", "etk", "kgss", "keydepot", "audit"]
//! # deletions are granted on their own: "kgss-delete", "keydepot-delete"
//! unix_uid = 1000                    # a caller on the socket with this uid
//! certificate_sha256 = "hex"         # a caller over HTTPS presenting this certificate
//! max_concurrent = 16                # its operations at once (more wait, then 429)
//! ```
//!
//! Relative paths are relative to the configuration file. Unknown keys are refused.

use crate::{ApplianceError, Result};
use etee_formats::revocation::RevocationPolicy;
use etee_services::revocation::RevocationConfig;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a caller of the API may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Seal for known recipients and/or readers (signs with the authentication key).
    Seal,
    /// Unseal with the ETK keys, or with a KGSS key (decrypts; signs the KGSS request).
    Unseal,
    /// ETK lookups.
    Etk,
    /// KGSS keys: create and get (signs requests, decrypts answers).
    Kgss,
    /// KeyDepot: register (attested) keys of the token, read.
    KeyDepot,
    /// Read the custody core's audit chain.
    Audit,
    /// Delete a KGSS key the institution holds: destructive, so granted on its own.
    #[serde(rename = "kgss-delete")]
    KgssDelete,
    /// Delete a KeyDepot key the institution holds: destructive, so granted on its own.
    #[serde(rename = "keydepot-delete")]
    KeyDepotDelete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Seal => "seal",
            Self::Unseal => "unseal",
            Self::Etk => "etk",
            Self::Kgss => "kgss",
            Self::KeyDepot => "keydepot",
            Self::Audit => "audit",
            Self::KgssDelete => "kgss-delete",
            Self::KeyDepotDelete => "keydepot-delete",
        }
    }

    /// Whether the operation needs the authentication key's signature.
    pub fn signs(self) -> bool {
        matches!(
            self,
            Self::Seal | Self::Unseal | Self::Kgss | Self::KeyDepot
        )
    }

    /// Whether the operation needs the ETK keys' decryption.
    pub fn decrypts(self) -> bool {
        matches!(self, Self::Unseal | Self::Kgss)
    }
}

/// One caller of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub name: String,
    pub operations: BTreeSet<Operation>,
    pub unix_uid: Option<u32>,
    pub certificate_sha256: Option<[u8; 32]>,
    /// How many of its operations run at once; more wait up to
    /// [`Limits::queue_timeout`], then are refused (429).
    pub max_concurrent: usize,
}

/// Default of a client's `max_concurrent`: enough for a busy hospital system, while
/// bounding what one client holds (each unseal may buffer a message head of up to 8 MiB).
pub const DEFAULT_CLIENT_CONCURRENCY: usize = 16;

/// The most a client's `max_concurrent` may be.
pub const MAX_CLIENT_CONCURRENCY: usize = 4096;

/// The most connections the appliance may be configured for: a bound on descriptors, and
/// on the shutdown's drain (which waits for every permit).
pub const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// Bounds on what one caller can make the appliance do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body (a message to seal or to unseal).
    pub max_body_bytes: u64,
    /// Largest content returned inside a JSON answer (larger: ask for the raw content).
    pub max_json_content_bytes: u64,
    pub handshake_timeout: Duration,
    /// Time to send a request's headers (a slow sender is cut off; a large body is not).
    pub header_timeout: Duration,
    /// Time to send a request and receive its answer.
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// Connections one peer (an IP address; a uid on the socket) may hold at once, so
    /// that one peer stalling its connections (in the TLS handshake, or sending headers
    /// slowly) cannot take every one of `max_connections`.
    pub max_connections_per_peer: usize,
    /// How long a request waits for one of its client's `max_concurrent` slots before it
    /// is refused with 429.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 30,
            max_json_content_bytes: 16 << 20,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
            max_connections: 256,
            max_connections_per_peer: 64,
            queue_timeout: Duration::from_secs(2),
        }
    }
}

/// Which wire protocol the appliance speaks to ETKDepot and KGSS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Soap,
    Rest,
}

/// The `[platform]` table.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    pub soap_url: String,
    pub rest_url: String,
    pub protocol: Protocol,
    /// TLS roots of the platform; empty means the system's ([`crate::SYSTEM_ROOTS`]).
    pub ca: Vec<PathBuf>,
    pub timeout: Duration,
    pub retries: u32,
    pub etk_cache: Duration,
}

/// The HTTPS side of the API.
#[derive(Clone, Debug)]
pub struct TlsApi {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ApplianceConfig {
    /// The etee HSM configuration of the institution's token.
    pub hsm: PathBuf,
    pub trust: Vec<PathBuf>,
    /// Anchors of the time-stamping authorities whose signature timestamps hold (none:
    /// every timestamp gives TIMESTAMPTOKEN_TRUST_FAILED, as the official library).
    pub tsa_trust: Vec<PathBuf>,
    /// Revocation lists, re-read when their files change.
    pub revocation: RevocationConfig,
    pub tls: Option<TlsApi>,
    pub socket: Option<PathBuf>,
    pub etk: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub limits: Limits,
    /// How often the custody audit chain's anchor (`NEXT_SEQUENCE:HEAD`) is logged, so
    /// that a log shipped elsewhere keeps heads to check the chain against; `None`: never.
    pub audit_anchor_log: Option<Duration>,
    pub platform: PlatformConfig,
    pub clients: Vec<ClientConfig>,
}

/// The range of the timeouts in milliseconds (`handshake_timeout_ms`, `header_timeout_ms`,
/// `request_timeout_ms`, `[platform] timeout_ms`).
pub use etee_hsm::config::TIMEOUT_MS_RANGE;

/// The most `[platform] retries` may be.
pub const MAX_RETRIES: u32 = 10;

/// Default of `audit_anchor_log_seconds`: an anchor in the log every hour.
pub const DEFAULT_AUDIT_ANCHOR_LOG_SECONDS: u64 = 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    appliance: Table,
    platform: PlatformTable,
    #[serde(default)]
    client: Vec<ClientTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    hsm: PathBuf,
    #[serde(default)]
    trust: Vec<PathBuf>,
    #[serde(default)]
    tsa_trust: Vec<PathBuf>,
    #[serde(default)]
    crl: Vec<PathBuf>,
    revocation: Option<String>,
    crl_check_seconds: Option<u64>,
    ocsp: Option<String>,
    listen: Option<String>,
    tls_certificate: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    client_ca: Vec<PathBuf>,
    socket: Option<PathBuf>,
    etk: Option<PathBuf>,
    spool_dir: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    max_json_content_bytes: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    header_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    queue_timeout_ms: Option<u64>,
    audit_anchor_log_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformTable {
    url: Option<String>,
    soap_url: Option<String>,
    rest_url: Option<String>,
    environment: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    ca: Vec<PathBuf>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    etk_cache_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientTable {
    name: String,
    operations: BTreeSet<Operation>,
    unix_uid: Option<u32>,
    certificate_sha256: Option<String>,
    max_concurrent: Option<usize>,
}

/// The eHealth endpoints of spec §4.1/§4.2/§5.1: (SOAP base, REST base).
fn environment_urls(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "acceptance" => Some((
            "https://services-acpt.ehealth.fgov.be",
            "https://api-acpt.ehealth.fgov.be",
        )),
        "production" => Some((
            "https://services.ehealth.fgov.be",
            "https://api.ehealth.fgov.be",
        )),
        _ => None,
    }
}

fn config_error(message: impl Into<String>) -> ApplianceError {
    ApplianceError::Config(message.into())
}

/// `value`, the setting `key`, when within `range`; else an error naming the key, the
/// value and the range (the file is added by [`ApplianceConfig::load`]).
fn in_range<T>(key: &str, value: T, range: impl RangeBounds<T>) -> Result<T>
where
    T: PartialOrd + std::fmt::Display,
{
    etee_hsm::config::in_range(key, value, range).map_err(config_error)
}

impl ApplianceConfig {
    /// Reads and checks the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = etee_hsm::config::read_config_text(path)
            .map_err(|e| config_error(format!("reading {}: {e}", path.display())))?;
        Self::from_toml(&text, &etee_hsm::config::config_dir(path))
            .map_err(|e| config_error(format!("{}: {}", path.display(), e.detail())))
    }

    /// Parses a configuration; relative paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self> {
        let file: File = toml::from_str(text)
            .map_err(|e| config_error(etee_hsm::config::toml_error(text, &e)))?;
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let t = file.appliance;
        let tls = match (t.listen, t.tls_certificate, t.tls_key) {
            (None, None, None) => None,
            (Some(listen), Some(certificate), Some(key)) => Some(TlsApi {
                listen: listen
                    .parse()
                    .map_err(|e| config_error(format!("listen {listen:?}: {e}")))?,
                certificate: rel(certificate),
                key: rel(key),
                client_ca: t.client_ca.into_iter().map(rel).collect(),
            }),
            _ => {
                return Err(config_error(
                    "listen, tls_certificate and tls_key go together (the HTTPS API)",
                ))
            }
        };
        if let Some(tls) = &tls {
            if tls.client_ca.is_empty() {
                return Err(config_error(
                    "the HTTPS API needs client_ca: its callers are known by their certificates",
                ));
            }
        }
        let socket = t.socket.map(rel);
        if tls.is_none() && socket.is_none() {
            return Err(config_error(
                "no API: give `socket` and/or `listen` (with tls_certificate and tls_key)",
            ));
        }
        let defaults = Limits::default();
        let timeout = |key: &str, ms: Option<u64>, default: Duration| {
            etee_hsm::config::timeout_ms(key, ms, default).map_err(config_error)
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
            max_json_content_bytes: in_range(
                "max_json_content_bytes",
                t.max_json_content_bytes
                    .unwrap_or(defaults.max_json_content_bytes),
                1..,
            )?,
            handshake_timeout: timeout(
                "handshake_timeout_ms",
                t.handshake_timeout_ms,
                defaults.handshake_timeout,
            )?,
            header_timeout: timeout(
                "header_timeout_ms",
                t.header_timeout_ms,
                defaults.header_timeout,
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
            .map_err(|e| config_error(format!("{} (max_connections)", e.detail())))?,
            queue_timeout: t
                .queue_timeout_ms
                .map_or(defaults.queue_timeout, Duration::from_millis),
        };
        if limits.queue_timeout >= limits.request_timeout {
            // A busy client would then never get 429, only the request timeout.
            return Err(config_error(format!(
                "queue_timeout_ms ({}) must be shorter than request_timeout_ms ({})",
                limits.queue_timeout.as_millis(),
                limits.request_timeout.as_millis()
            )));
        }
        let platform = platform_config(file.platform, &rel)?;
        let clients = file
            .client
            .into_iter()
            .map(client_config)
            .collect::<Result<Vec<_>>>()?;
        let mut names = BTreeSet::new();
        // A caller is one client: with two matching it, the first would take every call
        // and the other's operations would silently never apply.
        let mut uids = std::collections::BTreeMap::new();
        let mut certificates = std::collections::BTreeMap::new();
        for c in &clients {
            if !names.insert(c.name.as_str()) {
                return Err(config_error(format!("client {:?} is given twice", c.name)));
            }
            if let Some(first) = c.unix_uid.and_then(|uid| uids.insert(uid, c.name.as_str())) {
                return Err(config_error(format!(
                    "clients {first:?} and {:?} have the same unix_uid = {}: a caller is one \
                     client; give each piece of software its own uid, or merge their \
                     operations into one client",
                    c.name,
                    c.unix_uid.unwrap_or_default()
                )));
            }
            if let Some(first) = c
                .certificate_sha256
                .and_then(|sha| certificates.insert(sha, c.name.as_str()))
            {
                return Err(config_error(format!(
                    "clients {first:?} and {:?} have the same certificate_sha256: a caller is \
                     one client; give each its own certificate, or merge their operations \
                     into one client",
                    c.name
                )));
            }
        }
        if t.trust.is_empty() {
            return Err(config_error(
                "trust: give the CA certificates that senders' certificates and ETKs chain to",
            ));
        }
        let revocation = RevocationConfig::from_keys(
            t.crl.into_iter().map(rel).collect(),
            t.revocation.as_deref(),
            t.crl_check_seconds,
            t.ocsp.as_deref(),
        )
        .map_err(config_error)?;
        Ok(Self {
            hsm: rel(t.hsm),
            trust: t.trust.into_iter().map(rel).collect(),
            tsa_trust: t.tsa_trust.into_iter().map(rel).collect(),
            revocation,
            tls,
            socket,
            etk: t.etk.map(rel),
            spool_dir: t.spool_dir.map(rel).unwrap_or_else(std::env::temp_dir),
            limits,
            audit_anchor_log: match t
                .audit_anchor_log_seconds
                .unwrap_or(DEFAULT_AUDIT_ANCHOR_LOG_SECONDS)
            {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            platform,
            clients,
        })
    }

    /// What is valid in this configuration and its HSM configuration's `[custody]` table
    /// but serves nothing or is not used, each with what to change: logged at start, since
    /// an appliance that refuses every call otherwise looks healthy until the first one.
    pub fn warnings(&self, custody: &etee_hsm::config::CustodyConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.clients.is_empty() {
            out.push(
                "no [[client]]: every API call will be refused (403 APPLIANCE_UNKNOWN_CLIENT); \
                 add a [[client]] with its unix_uid or certificate_sha256 and its operations"
                    .to_string(),
            );
        }
        for c in self.clients.iter().filter(|c| c.operations.is_empty()) {
            out.push(format!(
                "client {:?} has operations = []: each of its calls will be refused \
                 (403 APPLIANCE_OPERATION_NOT_ALLOWED); list what it may do (seal, unseal, \
                 etk, kgss, keydepot, audit, kgss-delete, keydepot-delete) or remove it",
                c.name
            ));
        }
        if self.revocation.effective_policy().ok() == Some(RevocationPolicy::None) {
            out.push(
                "no revocation checking (neither crl nor ocsp in [appliance], or revocation = \
                 \"none\"): revoked certificates are accepted — a revoked sender's message \
                 opens as valid, a revoked recipient's ETK is sealed to, a revoked HTTPS \
                 client is served, and seals go on with a revoked own certificate; give \
                 crl = [\"…\"] (the CAs' lists, kept fresh by `etee crl fetch`) and/or \
                 ocsp = \"auto\" (see docs/revocation.md)"
                    .to_string(),
            );
        }
        if custody.mode == etee_hsm::CustodyMode::InProcess {
            if let Some(socket) = &custody.socket {
                out.push(format!(
                    "{}: [custody] socket = {:?} is not used: without mode = \"process\" the \
                     custody core runs in this appliance, which logs in to the token itself; \
                     add mode = \"process\" to use `etee custody serve` on that socket, or \
                     remove socket",
                    self.hsm.display(),
                    socket.display().to_string()
                ));
            }
        }
        out
    }
}

fn platform_config(p: PlatformTable, rel: &dyn Fn(PathBuf) -> PathBuf) -> Result<PlatformConfig> {
    let (soap_url, rest_url) = match (p.url, p.environment.as_deref()) {
        (Some(url), None) => (
            p.soap_url.unwrap_or_else(|| url.clone()),
            p.rest_url.unwrap_or(url),
        ),
        (None, Some(env)) => {
            let (soap, rest) = environment_urls(env).ok_or_else(|| {
                config_error(format!(
                    "[platform] environment {env:?}: \"acceptance\" or \"production\""
                ))
            })?;
            (
                p.soap_url.unwrap_or_else(|| soap.to_owned()),
                p.rest_url.unwrap_or_else(|| rest.to_owned()),
            )
        }
        (None, None) => match (p.soap_url, p.rest_url) {
            (Some(soap), Some(rest)) => (soap, rest),
            _ => {
                return Err(config_error(
                    "[platform]: give url (one base for all services), environment, or both \
                     soap_url and rest_url",
                ))
            }
        },
        (Some(_), Some(_)) => {
            return Err(config_error(
                "[platform]: url and environment are alternatives",
            ))
        }
    };
    for url in [&soap_url, &rest_url] {
        if !url.starts_with("https://") {
            return Err(config_error(format!(
                "[platform] {url:?}: the platform is reached over https only"
            )));
        }
    }
    Ok(PlatformConfig {
        soap_url,
        rest_url,
        protocol: p.protocol,
        ca: p.ca.into_iter().map(rel).collect(),
        timeout: Duration::from_millis(in_range(
            "[platform] timeout_ms",
            p.timeout_ms.unwrap_or(10_000),
            TIMEOUT_MS_RANGE,
        )?),
        retries: in_range(
            "[platform] retries",
            p.retries.unwrap_or(2),
            0..=MAX_RETRIES,
        )?,
        // 0: not cached (an entry expires as it is made).
        etk_cache: Duration::from_secs(p.etk_cache_seconds.unwrap_or(3600)),
    })
}

fn client_config(c: ClientTable) -> Result<ClientConfig> {
    if c.name.is_empty() || c.name.len() > etee_custody::config::MAX_CLIENT_ID_LEN {
        return Err(config_error(format!(
            "client {:?}: a name of 1 to {} bytes (it is the custody core's client id)",
            c.name,
            etee_custody::config::MAX_CLIENT_ID_LEN
        )));
    }
    if c.name == crate::policy::APPLIANCE_CLIENT {
        return Err(config_error(format!(
            "client {:?}: the name is the appliance's own",
            c.name
        )));
    }
    let certificate_sha256 = match c.certificate_sha256 {
        None => None,
        Some(hex_text) => {
            let bytes = hex::decode(hex_text.replace(':', "")).ok();
            Some(
                bytes
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        config_error(format!(
                            "client {:?}: certificate_sha256 is 32 bytes in hex",
                            c.name
                        ))
                    })?,
            )
        }
    };
    if c.unix_uid.is_none() && certificate_sha256.is_none() {
        return Err(config_error(format!(
            "client {:?}: give unix_uid and/or certificate_sha256 (how the caller is known)",
            c.name
        )));
    }
    let max_concurrent = c.max_concurrent.unwrap_or(DEFAULT_CLIENT_CONCURRENCY);
    if !(1..=MAX_CLIENT_CONCURRENCY).contains(&max_concurrent) {
        return Err(config_error(format!(
            "client {:?}: max_concurrent = {max_concurrent}: 1 to {MAX_CLIENT_CONCURRENCY}",
            c.name
        )));
    }
    Ok(ClientConfig {
        name: c.name,
        operations: c.operations,
        unix_uid: c.unix_uid,
        certificate_sha256,
        max_concurrent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[appliance]\nhsm = \"hsm.toml\"\ntrust = [\"ca.pem\"]\n\
        socket = \"a.sock\"\n[platform]\nurl = \"https://127.0.0.1:8443\"\n";

    /// A configuration that serves nothing, or a custody socket that is not used, is
    /// warned about at start, naming what to change; the docs' example is not.
    #[test]
    fn what_serves_nothing_is_warned_about() {
        let hsm = etee_hsm::Config::from_toml(
            "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"p\"\n",
            Path::new("/etc/etee"),
        )
        .unwrap();
        let custody = hsm.custody;
        let warnings = |text: &str, custody: &etee_hsm::config::CustodyConfig| {
            ApplianceConfig::from_toml(text, Path::new("/etc/etee"))
                .unwrap()
                .warnings(custody)
        };
        // With revocation checked: the warning about its absence has its own test.
        let minimal = &MINIMAL.replace("socket", "crl = [\"ca.crl\"]\nsocket");
        let none = warnings(minimal, &custody);
        assert_eq!(none.len(), 1, "{none:?}");
        assert!(
            none[0].contains("no [[client]]") && none[0].contains("APPLIANCE_UNKNOWN_CLIENT"),
            "{none:?}"
        );
        let idle = minimal.to_owned()
            + "[[client]]\nname = \"his\"\noperations = [\"seal\"]\nunix_uid = 1\n\
               [[client]]\nname = \"idle\"\noperations = []\nunix_uid = 2\n";
        let w = warnings(&idle, &custody);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("\"idle\"") && w[0].contains("operations = []"),
            "{w:?}"
        );
        let serving = minimal.to_owned()
            + "[[client]]\nname = \"his\"\noperations = [\"seal\"]\nunix_uid = 1\n";
        assert!(warnings(&serving, &custody).is_empty());

        let mut unused = custody.clone();
        unused.socket = Some(PathBuf::from("/run/etee-custody/custody.sock"));
        let w = warnings(&serving, &unused);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("/etc/etee/hsm.toml")
                && w[0].contains("custody.sock")
                && w[0].contains("mode = \"process\""),
            "{w:?}"
        );
        let mut process = unused;
        process.mode = etee_hsm::CustodyMode::Process;
        assert!(warnings(&serving, &process).is_empty());
    }

    /// Without crl or ocsp (or with revocation = "none"), revoked certificates are
    /// accepted: said at start, with what to configure (it was silent).
    #[test]
    fn no_revocation_checking_is_warned_about() {
        let hsm = etee_hsm::Config::from_toml(
            "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"p\"\n",
            Path::new("/etc/etee"),
        )
        .unwrap();
        let serving = |revocation: &str| {
            MINIMAL.replace("socket", &format!("{revocation}socket"))
                + "[[client]]\nname = \"his\"\noperations = [\"seal\"]\nunix_uid = 1\n"
        };
        let warnings = |text: &str| {
            ApplianceConfig::from_toml(text, Path::new("/etc/etee"))
                .unwrap()
                .warnings(&hsm.custody)
        };
        for unchecked in ["", "revocation = \"none\"\n"] {
            let w = warnings(&serving(unchecked));
            assert_eq!(w.len(), 1, "{unchecked:?}: {w:?}");
            assert!(
                w[0].contains("revoked certificates are accepted")
                    && w[0].contains("crl = ")
                    && w[0].contains("ocsp = \"auto\""),
                "{w:?}"
            );
        }
        for checked in [
            "crl = [\"ca.crl\"]\n",
            "ocsp = \"auto\"\n",
            "crl = [\"ca.crl\"]\nrevocation = \"mandatory\"\n",
        ] {
            assert!(warnings(&serving(checked)).is_empty(), "{checked:?}");
        }
    }

    /// The example configuration of docs/appliance.md is accepted, and nothing in it is
    /// warned about (revocation checked, clients that can do something).
    #[test]
    fn the_example_in_the_docs_parses() {
        let doc = include_str!("../../../docs/appliance.md");
        let example = &doc[doc.find("### Example").expect("the example")..];
        let start = example.find("```toml\n").expect("a TOML block") + "```toml\n".len();
        let block = &example[start..start + example[start..].find("```").expect("its end")];
        let c = ApplianceConfig::from_toml(block, Path::new("/etc/etee")).unwrap();
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.platform.soap_url, "https://services-acpt.ehealth.fgov.be");
        let hsm = etee_hsm::Config::from_toml(
            "[hsm]\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"p\"\n",
            Path::new("/etc/etee"),
        )
        .unwrap();
        assert_eq!(c.warnings(&hsm.custody), Vec::<String>::new());
    }

    #[test]
    fn minimal_file_gets_defaults_and_relative_paths() {
        let c = ApplianceConfig::from_toml(MINIMAL, Path::new("/etc/etee")).unwrap();
        assert_eq!(c.hsm, Path::new("/etc/etee/hsm.toml"));
        assert_eq!(c.socket.as_deref(), Some(Path::new("/etc/etee/a.sock")));
        assert!(c.tls.is_none());
        assert_eq!(c.platform.soap_url, "https://127.0.0.1:8443");
        assert_eq!(c.platform.rest_url, "https://127.0.0.1:8443");
        assert_eq!(c.platform.protocol, Protocol::Soap);
        assert_eq!(c.platform.retries, 2);
        assert_eq!(c.limits.max_body_bytes, 4 << 30);
        assert!(c.clients.is_empty());
        assert_eq!(c.audit_anchor_log, Some(Duration::from_secs(3600)));
        assert_eq!(c.limits.queue_timeout, Duration::from_secs(2));
        let never = MINIMAL.replace("socket", "audit_anchor_log_seconds = 0\nsocket");
        let c = ApplianceConfig::from_toml(&never, Path::new("/etc/etee")).unwrap();
        assert_eq!(c.audit_anchor_log, None);
        assert_eq!(c.revocation, RevocationConfig::default());
        let lists = MINIMAL.replace(
            "socket",
            "crl = [\"ca.crl\"]\nrevocation = \"mandatory\"\ncrl_check_seconds = 5\nsocket",
        );
        let c = ApplianceConfig::from_toml(&lists, Path::new("/etc/etee")).unwrap();
        assert_eq!(c.revocation.crl, vec![PathBuf::from("/etc/etee/ca.crl")]);
        assert_eq!(
            c.revocation.policy,
            Some(etee_formats::revocation::RevocationPolicy::Mandatory)
        );
        assert_eq!(c.revocation.check_every, Duration::from_secs(5));
    }

    #[test]
    fn clients_and_environments() {
        let text = "[appliance]\nhsm = \"h\"\ntrust = [\"ca.pem\"]\nsocket = \"s\"\n\
            [platform]\nenvironment = \"acceptance\"\nprotocol = \"rest\"\n\
            [[client]]\nname = \"his\"\noperations = [\"seal\", \"unseal\"]\nunix_uid = 1000\n\
            [[client]]\nname = \"lab\"\noperations = [\"etk\", \"kgss-delete\", \"keydepot-delete\"]\n\
            certificate_sha256 = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n";
        let c = ApplianceConfig::from_toml(text, Path::new("/")).unwrap();
        assert_eq!(c.platform.soap_url, "https://services-acpt.ehealth.fgov.be");
        assert_eq!(c.platform.rest_url, "https://api-acpt.ehealth.fgov.be");
        assert_eq!(c.platform.protocol, Protocol::Rest);
        assert_eq!(c.clients.len(), 2);
        assert!(c.clients[0].operations.contains(&Operation::Unseal));
        assert!(c.clients[1].operations.contains(&Operation::KgssDelete));
        assert!(c.clients[1].operations.contains(&Operation::KeyDepotDelete));
        assert_eq!(Operation::KgssDelete.name(), "kgss-delete");
        assert_eq!(c.clients[1].certificate_sha256.unwrap()[1], 0x11);
        assert_eq!(c.clients[0].max_concurrent, DEFAULT_CLIENT_CONCURRENCY);
        let one = text.replace("unix_uid = 1000\n", "unix_uid = 1000\nmax_concurrent = 1\n");
        let c = ApplianceConfig::from_toml(&one, Path::new("/")).unwrap();
        assert_eq!(c.clients[0].max_concurrent, 1);
    }

    #[test]
    fn mistakes_are_refused_with_a_reason() {
        let base = Path::new("/");
        let platform = "[platform]\nurl = \"https://p\"\n";
        for (text, says) in [
            ("[appliance]\nhsm = \"h\"\ntrust = [\"c\"]\n".to_owned() + platform, "no API"),
            (
                "[appliance]\nhsm = \"h\"\ntrust = [\"c\"]\nlisten = \"127.0.0.1:1\"\nsocket = \"s\"\n"
                    .to_owned()
                    + platform,
                "go together",
            ),
            ("[appliance]\nhsm = \"h\"\nsocket = \"s\"\n".to_owned() + platform, "trust"),
            (
                MINIMAL.replace("https://127.0.0.1:8443", "http://127.0.0.1:8443"),
                "https only",
            ),
            (MINIMAL.to_owned() + "colour = 1\n", "unknown field"),
            (
                MINIMAL.replace("socket", "revocation = \"sometimes\"\nsocket"),
                "none, optional or mandatory",
            ),
            (
                MINIMAL.replace("socket", "revocation = \"mandatory\"\nsocket"),
                "needs the CAs' lists",
            ),
            (
                MINIMAL.replace("socket", "crl = [\"c\"]\nrevocation = \"none\"\nsocket"),
                "would not be used",
            ),
            (
                MINIMAL.replace("socket", "crl_check_seconds = 0\nsocket"),
                "at least 1",
            ),
            (
                MINIMAL.replace("socket", "max_connections = 4294967296\nsocket"),
                "max_connections = 4294967296: 1 to 65536",
            ),
            (
                MINIMAL.replace("socket", "max_connections = 0\nsocket"),
                "max_connections = 0: 1 to 65536",
            ),
            (
                MINIMAL.replace("socket", "queue_timeout_ms = 9000\nrequest_timeout_ms = 9000\nsocket"),
                "must be shorter than request_timeout_ms",
            ),
            (
                MINIMAL.to_owned() + "[[client]]\nname = \"x\"\noperations = [\"seal\"]\n",
                "how the caller is known",
            ),
            (
                MINIMAL.to_owned()
                    + "[[client]]\nname = \"x\"\noperations = [\"fly\"]\nunix_uid = 1\n",
                "unknown variant",
            ),
            (
                MINIMAL.to_owned()
                    + "[[client]]\nname = \"x\"\noperations = []\nunix_uid = 1\n\
                       [[client]]\nname = \"x\"\noperations = []\nunix_uid = 2\n",
                "twice",
            ),
            (
                MINIMAL.to_owned()
                    + "[[client]]\nname = \"x\"\noperations = []\ncertificate_sha256 = \"ab\"\n",
                "32 bytes",
            ),
            (
                MINIMAL.to_owned()
                    + "[[client]]\nname = \"his\"\noperations = [\"seal\"]\nunix_uid = 7\n\
                       [[client]]\nname = \"auditor\"\noperations = [\"audit\"]\nunix_uid = 7\n",
                "clients \"his\" and \"auditor\" have the same unix_uid = 7",
            ),
            (
                MINIMAL.to_owned()
                    + &format!(
                        "[[client]]\nname = \"a\"\noperations = []\nunix_uid = 1\n\
                         certificate_sha256 = \"{sha}\"\n\
                         [[client]]\nname = \"b\"\noperations = []\nunix_uid = 2\n\
                         certificate_sha256 = \"{sha}\"\n",
                        sha = "ab".repeat(32)
                    ),
                "clients \"a\" and \"b\" have the same certificate_sha256",
            ),
            (
                MINIMAL.to_owned()
                    + "[[client]]\nname = \"x\"\noperations = []\nunix_uid = 1\nmax_concurrent = 0\n",
                "max_concurrent = 0: 1 to 4096",
            ),
        ] {
            let e = ApplianceConfig::from_toml(&text, base).unwrap_err().to_string();
            assert!(e.contains(says), "{text}\n→ {e}");
        }
    }

    /// Values that would make the appliance useless are refused at load, each naming its
    /// key and allowed range; the edges of the ranges are accepted.
    #[test]
    fn values_out_of_their_range_are_refused_naming_the_key() {
        let base = Path::new("/");
        let with = |appliance: &str, platform: &str| {
            let text = MINIMAL
                .replace("socket", &format!("{appliance}socket"))
                .replace("[platform]\n", &format!("[platform]\n{platform}"));
            ApplianceConfig::from_toml(&text, base)
        };
        for (appliance, platform, says) in [
            (
                "handshake_timeout_ms = 0\n",
                "",
                "handshake_timeout_ms = 0: 100 to 86400000",
            ),
            (
                "header_timeout_ms = 0\n",
                "",
                "header_timeout_ms = 0: 100 to 86400000",
            ),
            (
                "request_timeout_ms = 0\n",
                "",
                "request_timeout_ms = 0: 100 to 86400000",
            ),
            (
                "request_timeout_ms = 86400001\n",
                "",
                "request_timeout_ms = 86400001: 100 to 86400000",
            ),
            ("max_body_bytes = 0\n", "", "max_body_bytes = 0: at least 1"),
            (
                "max_json_content_bytes = 0\n",
                "",
                "max_json_content_bytes = 0: at least 1",
            ),
            (
                "max_connections_per_peer = 0\n",
                "",
                "max_connections_per_peer = 0: 1 to 256 (max_connections)",
            ),
            (
                "max_connections = 8\nmax_connections_per_peer = 9\n",
                "",
                "max_connections_per_peer = 9: 1 to 8 (max_connections)",
            ),
            (
                "",
                "timeout_ms = 0\n",
                "[platform] timeout_ms = 0: 100 to 86400000",
            ),
            ("", "retries = 99\n", "[platform] retries = 99: 0 to 10"),
        ] {
            let e = with(appliance, platform)
                .err()
                .unwrap_or_else(|| panic!("accepted: {appliance}{platform}"))
                .to_string();
            assert!(e.contains(says), "{appliance}{platform}→ {e}");
        }
        let c = with(
            "handshake_timeout_ms = 100\nheader_timeout_ms = 86400000\n\
             max_json_content_bytes = 1\nmax_connections = 8\nmax_connections_per_peer = 8\n",
            "timeout_ms = 100\nretries = 10\netk_cache_seconds = 0\n",
        )
        .unwrap();
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(100));
        assert_eq!(c.limits.header_timeout, Duration::from_secs(86_400));
        assert_eq!(c.limits.max_json_content_bytes, 1);
        assert_eq!(c.limits.max_connections_per_peer, 8);
        assert_eq!(c.platform.timeout, Duration::from_millis(100));
        assert_eq!(c.platform.retries, 10);
        // 0: ETK lookups are not cached.
        assert_eq!(c.platform.etk_cache, Duration::ZERO);
    }

    /// Through [`ApplianceConfig::load`], a refused value names the file too.
    #[test]
    fn a_refused_value_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance.toml");
        std::fs::write(
            &path,
            MINIMAL.replace("socket", "handshake_timeout_ms = 0\nsocket"),
        )
        .unwrap();
        let e = ApplianceConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("handshake_timeout_ms = 0: 100 to 86400000"),
            "{e}"
        );
    }
}
