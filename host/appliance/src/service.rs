//! What the appliance does for a caller: seal, unseal, ETK lookups, KGSS and KeyDepot
//! operations. Every private-key use is made through the custody core under the caller's
//! client id (see [`crate::policy`]); the protocol clients of `etee-protocol` reach the
//! platform.
//!
//! Bodies are [`Read`]ers and results go to spools ([`crate::spool`]): these functions
//! block (HSM calls, CMS processing) and run on tokio's blocking pool; the platform calls
//! they need are made from there with the runtime's handle.

use crate::config::{ApplianceConfig, Operation};
use crate::keydepot::KeyDepotError;
use crate::metrics::{Metrics, Snapshot};
use crate::policy::{custody_policy, Client, Clients, Peer, Refusal, Slot, APPLIANCE_CLIENT};
use crate::spool::{SpoolReader, SpoolWriter};
use crate::ApplianceError;
use etee_formats::cert::Certificate;
use etee_formats::cms::{self, Kek, Recipient, SealOptions, UnsealOptions, Unsealed};
use etee_formats::etk::Etk;
use etee_formats::keys::{KeyError, KeyRing, SignerRef, SigningKey};
use etee_formats::ocsp::{NotVouched, RevocationValues};
use etee_formats::trust::TrustAnchors;
use etee_hsm::{CustodyHandle, CustodyKeys, HsmToken};
use etee_protocol::{EtkCache, KeyDepotClient, KeyReply, KgssCaller, KgssClient, ProtocolError};
use etee_services::etkdepot::Identifier;
use etee_services::kgss::Credential;
use etee_services::lifetime::{OwnCertificate, Role};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Largest message head read to learn whom a message is for (see [`cms::addressees`]).
const MAX_HEAD: usize = 8 << 20;

/// KGSS's ETK identifier (spec §5.1).
fn kgss_identifier() -> Identifier {
    Identifier::new(
        etee_services::kgss::KGSS_ETK_TYPE,
        etee_services::kgss::KGSS_ETK_VALUE,
        Some(etee_services::kgss::KGSS_ETK_APPLICATION_ID),
    )
}

/// Why an operation failed; each maps to one HTTP status and code in the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the custody core refused: {0}")]
    CustodyRefused(String),
    /// The custody core's rate budget for the caller's key uses is spent for now.
    #[error("the custody core refused: its rate budget for this client is spent; retry after {retry_after_ms} ms")]
    CustodyRateLimited { retry_after_ms: u64 },
    #[error("the HSM is unavailable: {0}")]
    HsmUnavailable(String),
    #[error("unknown recipient: {0}")]
    UnknownRecipient(String),
    #[error("KGSS refused access to the key: {0}")]
    KgssAccessDenied(String),
    #[error("KGSS does not know the key: {0}")]
    KgssUnknownKey(String),
    #[error("the platform: {0}")]
    Platform(String),
    #[error("the platform refused: {0}")]
    PlatformRefused(String),
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the content is {len} bytes, more than a JSON answer carries ({max}); ask for the raw content")]
    ContentTooLargeForJson { len: u64, max: u64 },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// What the caller asked for exists already (a key KeyDepot has registered, or had
    /// registered: a deleted key's id is retired for ever).
    #[error("{0}")]
    Conflict(String),
    /// KeyDepot holds as many keys of this holder as it takes (its
    /// `max_keys_per_holder`): delete one to register another.
    #[error("{0}")]
    TooManyKeys(String),
    /// Any other conflict KeyDepot reports for a registration (its code in the detail).
    #[error("{0}")]
    KeyDepotConflict(String),
    /// The custody audit file cannot be read from here.
    #[error("{0}")]
    AuditUnreadable(String),
    #[error("client {client:?} already has {limit} operations running (its max_concurrent); retry later")]
    Busy { client: String, limit: usize },
    #[error("I/O: {0}")]
    Io(String),
    /// The answer was not ready within `request_timeout_ms` of the request's headers and
    /// its body was still arriving: the caller's side was slow.
    #[error("the request was not answered within request_timeout_ms ({timeout_ms} ms): its body was still arriving; the connection is closed")]
    RequestTimeout { timeout_ms: u64 },
    /// The whole request arrived, but the work on it (the platform, the HSM) was not done
    /// within `request_timeout_ms` of its headers: the appliance's side was slow.
    #[error("the request arrived whole, but the work on it (the platform, the HSM) was not done within request_timeout_ms ({timeout_ms} ms); the connection is closed, and work under way may still end")]
    WorkTimeout { timeout_ms: u64 },
    /// With an OCSP responder configured, the institution's own certificate is not
    /// vouched for: nothing is sealed, as the official sealer does.
    #[error("not sealed: {text}")]
    OwnCertificate { text: String, why: NotVouched },
}

impl ServiceError {
    /// The code the API reports (`title` of the problem).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "APPLIANCE_BAD_REQUEST",
            Self::Refused(Refusal::UnknownCaller(_)) => "APPLIANCE_UNKNOWN_CLIENT",
            Self::Refused(Refusal::NotAllowed { .. }) => "APPLIANCE_OPERATION_NOT_ALLOWED",
            Self::CustodyRefused(_) => "CUSTODY_REFUSED",
            Self::CustodyRateLimited { .. } => "CUSTODY_RATE_LIMITED",
            Self::HsmUnavailable(_) => "HSM_UNAVAILABLE",
            Self::UnknownRecipient(_) => "UNKNOWN_RECIPIENT",
            Self::KgssAccessDenied(_) => "KGSS_ACCESS_DENIED",
            Self::KgssUnknownKey(_) => "KGSS_UNKNOWN_KEY",
            Self::Platform(_) => "PLATFORM_UNAVAILABLE",
            Self::PlatformRefused(_) => "PLATFORM_REFUSED",
            Self::TooLarge(_) => "APPLIANCE_BODY_TOO_LARGE",
            Self::ContentTooLargeForJson { .. } => "APPLIANCE_CONTENT_TOO_LARGE_FOR_JSON",
            Self::NotFound(_) => "APPLIANCE_NOT_FOUND",
            Self::MethodNotAllowed(_) => "APPLIANCE_METHOD_NOT_ALLOWED",
            Self::Conflict(_) => "KEYDEPOT_KEY_EXISTS",
            Self::TooManyKeys(_) => "KEYDEPOT_TOO_MANY_KEYS",
            Self::KeyDepotConflict(_) => "KEYDEPOT_CONFLICT",
            Self::AuditUnreadable(_) => "AUDIT_UNREADABLE",
            Self::Busy { .. } => "APPLIANCE_BUSY",
            Self::Io(_) => "APPLIANCE_IO",
            Self::RequestTimeout { .. } => "APPLIANCE_REQUEST_TIMEOUT",
            Self::WorkTimeout { .. } => "APPLIANCE_WORK_TIMEOUT",
            Self::OwnCertificate { why, .. } => match why {
                NotVouched::NotGood => "OWN_CERTIFICATE_NOT_GOOD",
                NotVouched::NoAnswer => "OCSP_UNAVAILABLE",
                NotVouched::Misconfigured => "OCSP_MISCONFIGURED",
            },
        }
    }

    /// A key operation's failure: refusals by the core are the caller's problem, the rest
    /// the HSM's.
    pub(crate) fn from_key(e: KeyError) -> Self {
        match e {
            KeyError::Refused(r) => Self::CustodyRefused(r),
            KeyError::RateLimited { retry_after_ms } => Self::CustodyRateLimited { retry_after_ms },
            other => Self::HsmUnavailable(other.to_string()),
        }
    }

    /// KeyDepot's refusals of what the caller asked for are the caller's (400, 404); a
    /// proof or attestation it does not accept is the appliance's (it made them: 502).
    pub(crate) fn from_keydepot(e: ProtocolError) -> Self {
        use ProtocolError as P;
        match e {
            P::NotFound | P::UnknownKey => Self::NotFound(e.to_string()),
            P::AccessDenied(_) | P::NotAuthenticated(_) => Self::PlatformRefused(e.to_string()),
            P::KeyDepot { status: 400, .. } => Self::BadRequest(e.to_string()),
            P::KeyDepot { status: 404, .. } => Self::NotFound(e.to_string()),
            P::Key(k) => Self::from_key(k),
            other => Self::Platform(other.to_string()),
        }
    }

    /// [`Self::from_keydepot`] for a registration, where a 409 is told apart by KeyDepot's
    /// code: the key id is taken (registered, or retired by a deletion), the holder has as
    /// many keys as KeyDepot takes, or another conflict.
    fn from_keydepot_registration(e: ProtocolError) -> Self {
        match &e {
            ProtocolError::KeyDepot {
                status: 409, code, ..
            } => match code.as_str() {
                "KEYDEPOT_DUPLICATE_KEY_ID" => Self::Conflict(e.to_string()),
                "KEYDEPOT_TOO_MANY_KEYS" => Self::TooManyKeys(e.to_string()),
                _ => Self::KeyDepotConflict(e.to_string()),
            },
            _ => Self::from_keydepot(e),
        }
    }

    fn from_protocol(e: ProtocolError) -> Self {
        match e {
            ProtocolError::AccessDenied(_) => Self::KgssAccessDenied(e.to_string()),
            ProtocolError::UnknownKey => Self::KgssUnknownKey(e.to_string()),
            ProtocolError::NotFound
            | ProtocolError::NoValidEtk { .. }
            | ProtocolError::EtkExpired { .. }
            | ProtocolError::EtkInvalid { .. } => Self::UnknownRecipient(e.to_string()),
            ProtocolError::InvalidRequest(r) => Self::BadRequest(r),
            ProtocolError::Key(k) => Self::from_key(k),
            other => Self::Platform(other.to_string()),
        }
    }

    fn from_io(e: io::Error) -> Self {
        if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<TooLarge>()) {
            return Self::TooLarge(t.0);
        }
        match e.get_ref().and_then(|i| i.downcast_ref::<BodyUnreadable>()) {
            Some(b) => Self::BadRequest(b.to_string()),
            None => Self::Io(e.to_string()),
        }
    }
}

/// The marker error of [`Limited`].
#[derive(Debug, thiserror::Error)]
#[error("the body is larger than {0} bytes")]
struct TooLarge(u64);

/// The other marker error of [`Limited`]: the request body itself could not be read (cut
/// short, a broken chunked encoding), the caller's fault rather than the appliance's.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read (cut short or badly framed): {0}")]
struct BodyUnreadable(String);

/// A reader that fails once more than `max` bytes came through.
pub struct Limited<R> {
    inner: R,
    max: u64,
    seen: u64,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, max: u64) -> Self {
        Self {
            inner,
            max,
            seen: 0,
        }
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => e,
            kind => io::Error::new(kind, BodyUnreadable(e.to_string())),
        })?;
        self.seen += n as u64;
        if self.seen > self.max {
            return Err(io::Error::other(TooLarge(self.max)));
        }
        Ok(n)
    }
}

/// Keeps a copy of what is read, up to a bound, so that a message's head can be read
/// twice (once to learn its addressees, once to unseal); and the error of the body, if
/// reading it failed, which [`cms::addressees`] reports only as a malformed message.
struct Recording<'a, R> {
    inner: &'a mut R,
    copy: Vec<u8>,
    error: Option<io::Error>,
}

impl<'a, R: Read> Recording<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        Self {
            inner,
            copy: Vec::new(),
            error: None,
        }
    }
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.copy.len() >= MAX_HEAD {
            return Err(io::Error::other("the message head is too large"));
        }
        let room = (MAX_HEAD - self.copy.len()).min(buf.len());
        let n = match self.inner.read(&mut buf[..room]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let told = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                return Err(told);
            }
        };
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// What to seal for.
#[derive(Clone, Debug, Default)]
pub struct SealRequest {
    /// Known recipients, by identifier.
    pub to: Vec<Identifier>,
    /// Unknown recipients: a KGSS key is made for these readers.
    pub allowed: Vec<Credential>,
    pub excluded: Vec<Credential>,
}

/// A sealed message in its spool.
#[derive(Debug)]
pub struct Sealed {
    pub message: SpoolReader,
    /// The recipients' ETK holders (subjects of their encryption certificates).
    pub recipients: Vec<String>,
    /// The KGSS key id, when sealed for unknown recipients.
    pub kgss_key_id: Option<Vec<u8>>,
    pub content_len: u64,
}

/// An unsealed message: the verdict, and the content only when the verdict is clean.
#[derive(Debug)]
pub struct Opened {
    pub unsealed: Unsealed,
    /// [`crate::report::unseal_report`] of `unsealed`, made on the blocking pool: it reads
    /// the sender's certificate, which the message's author chose.
    pub report: serde_json::Value,
    pub content: Option<SpoolReader>,
    /// The KGSS key id used, for a message opened with a KGSS key.
    pub kgss_key_id: Option<Vec<u8>>,
    /// Bytes of the body read: the sealed message and anything after it.
    pub message_len: u64,
}

/// A KGSS key handed to a caller.
pub struct KgssKey {
    pub id: Vec<u8>,
    pub key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KgssKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KgssKey(id {})", hex::encode(&self.id))
    }
}

/// How long `/health` and `/metrics` wait for the custody core's audit head.
pub const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The custody core over the token of `hsm_config` with the appliance's rules for
/// `clients` ([`custody_policy`]), speaking for the appliance itself: what `etee serve`
/// runs in process, and what `etee custody serve --appliance` serves to it.
pub fn open_custody_core(
    hsm_config: &etee_hsm::Config,
    clients: &Clients,
) -> crate::Result<CustodyKeys> {
    let mut custody = hsm_config.custody.clone();
    custody.client = APPLIANCE_CLIENT.into();
    let hsm = CustodyKeys::open_token(&hsm_config.hsm, &custody)?;
    let token = HsmToken::new(&hsm)?;
    let policy = custody_policy(&token, clients, hsm_config.custody.budget)
        .map_err(|e| ApplianceError::Config(e.to_string()))?;
    Ok(CustodyKeys::with_policy(hsm, token, policy, &custody)?)
}

/// An admitted caller ([`Appliance::admit`]): the client, and its slot until dropped.
#[derive(Debug)]
pub struct Admitted {
    pub client: Arc<Client>,
    slot: Arc<Slot>,
}

impl Admitted {
    /// The slot, for blocking work to hold: it is given back when the last holder ends,
    /// so work that goes on after its request was abandoned still counts.
    pub(crate) fn slot(&self) -> Arc<Slot> {
        self.slot.clone()
    }
}

impl std::ops::Deref for Admitted {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A caller's keys, through the custody core under its client id.
struct CallerKeys {
    signer: SigningKey,
    ring: KeyRing,
}

/// The protocol clients.
pub struct PlatformClients {
    pub etks: EtkCache,
    pub kgss: KgssClient,
    pub keydepot: Option<KeyDepotClient>,
}

/// The appliance: the custody core in front of the institution's token, the callers,
/// the platform clients.
pub struct Appliance {
    config: ApplianceConfig,
    /// In this process, or `etee custody serve` behind its socket, which alone holds the
    /// PIN (`[custody] mode = "process"`; that server must run with this appliance's
    /// policy: `etee custody serve --appliance FILE`).
    custody: CustodyHandle,
    clients: Clients,
    keys: HashMap<String, CallerKeys>,
    anchors: TrustAnchors,
    /// Anchors of trusted time-stamping authorities (`tsa_trust`).
    tsa_anchors: TrustAnchors,
    /// Reads the revocation lists' files again when they change, while the appliance
    /// lives (none without `crl`).
    _crl_following: Option<etee_services::revocation::Following>,
    platform: PlatformClients,
    own_etk: tokio::sync::OnceCell<Arc<Etk>>,
    /// The custody core's audit file, from the HSM configuration read at start.
    audit_file: std::path::PathBuf,
    /// The institution's authentication and newest ETK certificates, and the HTTPS
    /// listener's: warned about before they end, their end dates in `/metrics`.
    own_certificates: Vec<OwnCertificate>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Appliance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliance")
            .field("custody", &self.custody)
            .field("clients", &self.clients)
            .finish()
    }
}

/// The certificates whose end stops the appliance: the authentication key's (it signs),
/// the newest of the token's ETK certificates (senders seal to it; older ones are kept
/// only to read old messages), and the HTTPS listener's.
fn own_certificates(
    config: &ApplianceConfig,
    signing_key: &SigningKey,
    ring: &KeyRing,
) -> crate::Result<Vec<OwnCertificate>> {
    let mut certs = OwnCertificate::of_keys(signing_key, ring);
    if let Some(api) = &config.tls {
        let chain = etee_services::tls_files::certificates("tls_certificate", &api.certificate)
            .map_err(|e| ApplianceError::Config(e.to_string()))?;
        let leaf = chain
            .first()
            .map(|der| Certificate::from_der(der))
            .transpose();
        match leaf {
            Ok(Some(leaf)) => certs.push(OwnCertificate::of(Role::Tls, &leaf)),
            Ok(None) => {}
            Err(e) => {
                return Err(ApplianceError::Config(format!(
                    "tls_certificate {}: {e}",
                    api.certificate.display()
                )))
            }
        }
    }
    Ok(certs)
}

impl Appliance {
    /// Opens the custody core with the appliance's policy — in this process (logging in to
    /// the token), or connecting to `etee custody serve` (`[custody] mode = "process"`;
    /// only the token's certificates are read here, without a PIN) —, loads the callers'
    /// keys, and builds the platform clients (which authenticate with the token's
    /// authentication key).
    pub fn open(config: ApplianceConfig) -> crate::Result<Self> {
        // Small bodies never reach the spool directory: check it now rather than at the
        // first large message.
        crate::spool::check_dir(&config.spool_dir).map_err(|e| {
            ApplianceError::Config(format!(
                "spool_dir {}: {e} (bodies past 64 KiB are spooled there)",
                config.spool_dir.display()
            ))
        })?;
        let mut hsm_config = etee_hsm::Config::load(&config.hsm)?;
        for warning in config.warnings(&hsm_config.custody) {
            tracing::warn!("{warning}");
        }
        let clients = Clients::new(&config.clients);
        let custody = match hsm_config.custody.mode {
            etee_hsm::CustodyMode::Process => {
                hsm_config.custody.client = APPLIANCE_CLIENT.into();
                CustodyHandle::open(&hsm_config)?
            }
            etee_hsm::CustodyMode::InProcess => {
                CustodyHandle::InProcess(open_custody_core(&hsm_config, &clients)?)
            }
        };
        let mut keys = HashMap::new();
        for c in clients.iter() {
            let handle = custody.for_client(&c.name)?;
            keys.insert(
                c.name.clone(),
                CallerKeys {
                    signer: handle.signing_key()?,
                    ring: handle.key_ring()?,
                },
            );
        }
        let (anchors, crl_following) = config
            .revocation
            .start(crate::anchors("trust", &config.trust)?)
            .map_err(|e| ApplianceError::Config(e.to_string()))?;
        let signing_key = custody.signing_key()?;
        let own_certificates = own_certificates(&config, &signing_key, &custody.key_ring()?)?;
        let platform = crate::platform_clients(&config, &signing_key, &anchors)?;
        let own_etk = tokio::sync::OnceCell::new();
        if let Some(path) = &config.etk {
            let der = std::fs::read(path)
                .map_err(|e| ApplianceError::Config(format!("etk {}: {e}", path.display())))?;
            let etk = Etk::parse(&der)
                .map_err(|e| ApplianceError::Config(format!("etk {}: {e}", path.display())))?;
            let _ = own_etk.set(Arc::new(etk));
        }
        let tsa_anchors = crate::anchors("tsa_trust", &config.tsa_trust)?;
        Ok(Self {
            config,
            custody,
            clients,
            keys,
            anchors,
            tsa_anchors,
            _crl_following: crl_following,
            platform,
            own_etk,
            audit_file: hsm_config.custody.audit_file.clone(),
            own_certificates,
            metrics: Metrics::default(),
        })
    }

    /// The institution's own certificates (authentication, newest ETK, HTTPS listener).
    pub fn own_certificates(&self) -> &[OwnCertificate] {
        &self.own_certificates
    }

    pub fn config(&self) -> &ApplianceConfig {
        &self.config
    }

    /// The trust anchors, with the revocation lists in use.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The custody core as `client` uses it (for measuring the core's own rate beside
    /// the API's in the benchmark); only when it runs in this process.
    pub fn custody_for(&self, client: &str) -> crate::Result<CustodyKeys> {
        let core = self.custody.in_process().ok_or_else(|| {
            ApplianceError::Config("the custody core runs in another process".into())
        })?;
        Ok(core.for_client(client)?)
    }

    /// The caller `peer` is, if it may ask for `operation`.
    pub fn authorise(&self, peer: &Peer, operation: Operation) -> Result<Arc<Client>, Refusal> {
        self.clients.authorise(peer, operation)
    }

    /// [`Self::authorise`], then [`Self::take_slot`].
    pub async fn admit(&self, peer: &Peer, operation: Operation) -> Result<Admitted, ServiceError> {
        self.take_slot(self.authorise(peer, operation)?).await
    }

    /// One of `client`'s `max_concurrent` slots, waited for up to the configured
    /// `queue_timeout` ([`ServiceError::Busy`] after it): what each API operation holds
    /// while it runs, so that one client's operations, and what they hold, stay bounded.
    /// Handlers take it after the checks that need no work (a declared length, a query),
    /// so that a request that can never succeed gets its 4xx rather than a 429.
    pub async fn take_slot(&self, client: Arc<Client>) -> Result<Admitted, ServiceError> {
        let slot = client
            .slot(self.config.limits.queue_timeout)
            .await
            .ok_or_else(|| ServiceError::Busy {
                client: client.name.clone(),
                limit: client.max_concurrent(),
            })?;
        Ok(Admitted {
            client,
            slot: Arc::new(slot),
        })
    }

    fn keys_of(&self, client: &Client) -> Result<&CallerKeys, ServiceError> {
        self.keys
            .get(&client.name)
            .ok_or_else(|| ServiceError::Refused(Refusal::UnknownCaller(client.name.clone())))
    }

    /// The counters and gauges of `/metrics`.
    pub fn snapshot(&self) -> Snapshot {
        let etks = self.platform.etks.stats();
        Snapshot {
            etk_cache_hits: etks.hits,
            etk_cache_misses: etks.misses,
            custody_audit_syncs: self.custody.in_process().map(CustodyKeys::audit_syncs),
            custody_audit_sequence: self
                .custody
                .audit_head()
                .map(|h| h.next_sequence.saturating_sub(1)),
        }
    }

    /// [`Self::snapshot`] off the async workers (asking the custody core for its head may
    /// block: a socket round trip to the custody process, or the audit file's lock), and
    /// given at most [`SNAPSHOT_WAIT`]: a custody core that does not answer in time shows
    /// as unavailable, and `/health` and `/metrics` stay answerable whatever it does.
    pub async fn snapshot_bounded(self: &Arc<Self>) -> Snapshot {
        let app = self.clone();
        let task = tokio::task::spawn_blocking(move || app.snapshot());
        match tokio::time::timeout(SNAPSHOT_WAIT, task).await {
            Ok(Ok(snapshot)) => snapshot,
            _ => {
                let etks = self.platform.etks.stats();
                Snapshot {
                    etk_cache_hits: etks.hits,
                    etk_cache_misses: etks.misses,
                    custody_audit_syncs: None,
                    custody_audit_sequence: None,
                }
            }
        }
    }

    /// The custody audit chain's anchor, `NEXT_SEQUENCE:HEAD` (what `etee audit verify
    /// --expect-head` checks), off the async workers and within [`SNAPSHOT_WAIT`]; `None`
    /// when the custody core does not answer in time.
    pub async fn audit_anchor(self: &Arc<Self>) -> Option<String> {
        let app = self.clone();
        let task = tokio::task::spawn_blocking(move || app.custody.audit_head());
        match tokio::time::timeout(SNAPSHOT_WAIT, task).await {
            Ok(Ok(Some(h))) => Some(h.anchor().to_string()),
            _ => None,
        }
    }

    /// The custody core's audit file (as configured when the appliance started).
    pub fn audit_file(&self) -> std::path::PathBuf {
        self.audit_file.clone()
    }

    /// The valid ETKs of `id` (cached; the MatchingEtk rule of spec §4.1 applied).
    pub async fn etks(&self, id: &Identifier) -> Result<Vec<Arc<Etk>>, ServiceError> {
        let normalized = id
            .normalized()
            .map_err(|e| ServiceError::BadRequest(format!("identifier: {e}")))?;
        match self.platform.etks.get(&normalized).await {
            Ok(etks) if !etks.is_empty() => Ok(etks.into_iter().map(Arc::new).collect()),
            Ok(_) => Err(ServiceError::UnknownRecipient(format!(
                "{}: no valid ETK",
                describe(&normalized)
            ))),
            Err(e) => Err(match ServiceError::from_protocol(e) {
                ServiceError::UnknownRecipient(why) => {
                    ServiceError::UnknownRecipient(format!("{}: {why}", describe(&normalized)))
                }
                other => other,
            }),
        }
    }

    /// The institution's own ETK: configured, or looked up by the identity of the
    /// authentication certificate (the one whose key is in the token).
    async fn own_etk(&self, keys: &CallerKeys) -> Result<Arc<Etk>, ServiceError> {
        self.own_etk
            .get_or_try_init(|| async {
                let SignerRef::Certificate { cert, .. } = &keys.signer.signer else {
                    return Err(ServiceError::BadRequest(
                        "the token's signing key has no certificate".into(),
                    ));
                };
                let identity = etee_formats::identity::identities(cert)
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        ServiceError::BadRequest(
                            "the authentication certificate names no eHealth identity".into(),
                        )
                    })?;
                let candidates = self.etks(&Identifier::from(identity)).await?;
                candidates
                    .into_iter()
                    .find(|etk| {
                        let c = etk.encryption_cert();
                        !keys
                            .ring
                            .candidates_by_serial(c.issuer_der(), c.serial())
                            .is_empty()
                    })
                    .ok_or_else(|| {
                        ServiceError::UnknownRecipient(
                            "ETKDepot has no ETK of this institution whose key is in the token"
                                .into(),
                        )
                    })
            })
            .await
            .cloned()
    }

    /// `client` as KGSS sees it: the institution, signing with its authentication key
    /// under the client's id, answered to its own ETK.
    async fn kgss_caller(&self, client: &Client) -> Result<KgssCaller, ServiceError> {
        let keys = self.keys_of(client)?;
        let own = self.own_etk(keys).await?;
        Ok(KgssCaller {
            signer: keys.signer.clone(),
            own_etk: own.der().to_vec(),
            ring: keys.ring.clone(),
            anchors: self.anchors.clone(),
        })
    }

    async fn kgss_etk(&self) -> Result<Arc<Etk>, ServiceError> {
        self.etks(&kgss_identifier())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ServiceError::UnknownRecipient("KGSS".into()))
    }

    /// A new KGSS key for `allowed` (minus `excluded`) readers, held by this institution
    /// (`POST /v1/kgss/keys`): as for a seal, none is made unless the institution's own
    /// certificate is vouched for, with an OCSP responder configured.
    pub async fn kgss_new_key(
        &self,
        client: &Admitted,
        allowed: Vec<Credential>,
        excluded: Vec<Credential>,
    ) -> Result<KgssKey, ServiceError> {
        self.own_certificate_values(client, client.slot()).await?;
        self.new_kgss_key(client, allowed, excluded).await
    }

    /// [`Self::kgss_new_key`] without the check of the institution's own certificate (a
    /// seal has made it).
    async fn new_kgss_key(
        &self,
        client: &Client,
        allowed: Vec<Credential>,
        excluded: Vec<Credential>,
    ) -> Result<KgssKey, ServiceError> {
        if allowed.is_empty() {
            return Err(ServiceError::BadRequest(
                "a KGSS key needs at least one allowed reader".into(),
            ));
        }
        let caller = self.kgss_caller(client).await?;
        let kgss = self.kgss_etk().await?;
        let key = self
            .platform
            .kgss
            .new_key(&caller, &kgss, allowed, excluded)
            .await
            .map_err(ServiceError::from_protocol)?;
        Ok(KgssKey {
            id: key.id.clone(),
            key: key.key.clone(),
        })
    }

    /// The KGSS key `key_id`, if KGSS finds this institution among its readers.
    pub async fn kgss_get_key(
        &self,
        client: &Client,
        key_id: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        let caller = self.kgss_caller(client).await?;
        let kgss = self.kgss_etk().await?;
        self.platform
            .kgss
            .get_key(&caller, &kgss, key_id, KeyReply::Etk)
            .await
            .map_err(ServiceError::from_protocol)
    }

    /// Deletes a KGSS key this institution holds.
    pub async fn kgss_delete(&self, key_id: &[u8]) -> Result<(), ServiceError> {
        self.platform
            .kgss
            .delete_key(key_id)
            .await
            .map_err(ServiceError::from_protocol)
    }

    /// The KeyDepot client (there is none without a REST endpoint).
    pub fn keydepot(&self) -> Result<&KeyDepotClient, ServiceError> {
        self.platform
            .keydepot
            .as_ref()
            .ok_or_else(|| ServiceError::Platform("no KeyDepot (REST) endpoint".into()))
    }

    /// Registers the key `key` of the token in KeyDepot, with its proof of possession and
    /// the token's attestation, both signed through the custody core for `client`.
    pub async fn keydepot_register(
        self: &Arc<Self>,
        client: &Admitted,
        key: String,
        label: Option<String>,
    ) -> Result<etee_services::keydepot::RegisterKeyResponse, ServiceError> {
        let custody = self
            .custody
            .for_client(&client.name)
            .map_err(|e| ServiceError::HsmUnavailable(e.to_string()))?;
        let slot = client.slot();
        let request = blocking(move || {
            let _slot = slot;
            crate::keydepot::registration_request(&custody, &key, label).map_err(|e| match e {
                KeyDepotError::Invalid(why) => ServiceError::BadRequest(why),
                KeyDepotError::Refused(why) => ServiceError::CustodyRefused(why),
                KeyDepotError::RateLimited { retry_after_ms } => {
                    ServiceError::CustodyRateLimited { retry_after_ms }
                }
                KeyDepotError::Unavailable(why) => ServiceError::HsmUnavailable(why),
            })
        })
        .await?;
        self.keydepot()?
            .register(&request)
            .await
            .map_err(ServiceError::from_keydepot_registration)
    }

    /// The institution's own certificate: nothing is sealed (nor a KGSS key made) when the
    /// revocation lists (`crl`) revoke it or one of its issuers, since every receiver
    /// holding them would report `OUTER_CERTIFICATE_REVOKED`; with an OCSP responder
    /// configured, the official sealer's rule: its answers travel in the message, and
    /// nothing is sealed unless they say good. `None` without a responder. On the blocking
    /// pool (the responder is asked synchronously), holding `slot`.
    async fn own_certificate_values(
        &self,
        client: &Client,
        slot: Arc<Slot>,
    ) -> Result<Option<RevocationValues>, ServiceError> {
        let signer = self.keys_of(client)?.signer.clone();
        let anchors = self.anchors.clone();
        blocking(move || {
            let _slot = slot;
            anchors
                .revocation()
                .sealing_values(&signer.signer, anchors.certs(), etee_formats::unix_now())
                .map_err(|e| ServiceError::OwnCertificate {
                    why: e.kind(),
                    text: e.to_string(),
                })
        })
        .await
    }

    /// Seals `body` for `request`: ETKs looked up first, a KGSS key made for readers, then
    /// sign → encrypt → sign with the caller's view of the authentication key, into a spool.
    ///
    /// `max_sealed`: the largest sealed message the caller can take (a JSON answer's
    /// `max_json_content_bytes`), else [`ServiceError::ContentTooLargeForJson`].
    ///
    /// A KGSS key is made only once nothing foreseeable can refuse the seal: recipients
    /// found, the institution's own certificate vouched for, and the whole body read (into
    /// a spool: a body cut short, too large, or too large for `max_sealed` is refused
    /// first). Should the seal fail after all (the custody core or the token refusing a
    /// signature, a sealed message just over `max_sealed`), the key is deleted again, as
    /// far as KGSS lets it (a warning names a key that could not be).
    pub async fn seal(
        self: &Arc<Self>,
        client: &Admitted,
        request: SealRequest,
        body: impl Read + Send + 'static,
        max_sealed: Option<u64>,
    ) -> Result<Sealed, ServiceError> {
        if request.to.is_empty() && request.allowed.is_empty() {
            return Err(ServiceError::BadRequest(
                "no recipient: give `to` (known recipients) and/or `allow` (readers for a KGSS \
                 key)"
                    .into(),
            ));
        }
        let mut recipients = Vec::new();
        let mut names = Vec::new();
        for id in &request.to {
            for etk in self.etks(id).await? {
                // Two identifiers of the same holder (or the same one written twice) give
                // the same ETK: one recipient info for it.
                let cert = etk.encryption_cert();
                let known =
                    |r: &Recipient| matches!(r, Recipient::Certificate(c) if c.der() == cert.der());
                if recipients.iter().any(known) {
                    continue;
                }
                names.push(cert.subject_string());
                recipients.push(Recipient::Certificate(cert.clone()));
            }
        }
        let revocation_values = self.own_certificate_values(client, client.slot()).await?;
        let spool_dir = self.config.spool_dir.clone();
        let max = self.config.limits.max_body_bytes;
        let body: Box<dyn Read + Send> = if request.allowed.is_empty() {
            Box::new(body)
        } else {
            // The whole content first, so that a body that cannot be sealed leaves no KGSS
            // key behind.
            let slot = client.slot();
            let dir = spool_dir.clone();
            let content = blocking(move || {
                let _slot = slot;
                let mut input = Limited::new(body, max);
                let mut spool = SpoolWriter::new(&dir);
                io::copy(&mut input, &mut spool).map_err(ServiceError::from_io)?;
                spool.finish().map_err(ServiceError::from_io)
            })
            .await?;
            // A sealed message is always longer than its content.
            if let Some(max_sealed) = max_sealed.filter(|&m| content.len() >= m) {
                return Err(ServiceError::ContentTooLargeForJson {
                    len: content.len(),
                    max: max_sealed,
                });
            }
            Box::new(content)
        };
        let kek = if request.allowed.is_empty() {
            None
        } else {
            let key = self
                .new_kgss_key(client, request.allowed, request.excluded)
                .await?;
            match Kek::new(&key.key, &key.id) {
                Ok(kek) => Some(kek),
                Err(e) => {
                    self.forget_kgss_key(&key.id).await;
                    return Err(ServiceError::Platform(format!("KGSS key: {e}")));
                }
            }
        };
        let kgss_key_id = kek.as_ref().map(|k| k.id().to_vec());
        let signer = self.keys_of(client)?.signer.clone();
        let slot = client.slot();
        let sealed = blocking(move || {
            let _slot = slot;
            let mut input = Limited::new(body, max);
            let mut spool = SpoolWriter::new(&spool_dir);
            let n = cms::seal(
                &signer,
                &recipients,
                kek.as_ref(),
                &mut input,
                &mut spool,
                &SealOptions {
                    revocation_values,
                    ..Default::default()
                },
            )
            .map_err(|e| match e {
                cms::SealError::Key(k) => ServiceError::from_key(k),
                cms::SealError::Io(io) => ServiceError::from_io(io),
                other => ServiceError::Io(other.to_string()),
            })?;
            let spool = spool.finish().map_err(ServiceError::from_io)?;
            if let Some(max_sealed) = max_sealed.filter(|&m| spool.len() > m) {
                return Err(ServiceError::ContentTooLargeForJson {
                    len: spool.len(),
                    max: max_sealed,
                });
            }
            Ok((spool, n))
        })
        .await;
        let (spool, content_len) = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                if let Some(id) = &kgss_key_id {
                    self.forget_kgss_key(id).await;
                }
                return Err(e);
            }
        };
        Ok(Sealed {
            message: spool,
            recipients: names,
            kgss_key_id,
            content_len,
        })
    }

    /// Deletes a KGSS key made for a seal that then failed, so that no key nobody can use
    /// stays at KGSS; a key that cannot be deleted is named in a warning (for `DELETE
    /// /v1/kgss/keys/{keyId}` or the platform's operator).
    async fn forget_kgss_key(&self, key_id: &[u8]) {
        use base64::Engine;
        if let Err(e) = self.kgss_delete(key_id).await {
            let key_id = base64::engine::general_purpose::STANDARD.encode(key_id);
            let error = etee_services::log::LogSafe(&e);
            tracing::warn!(%key_id, %error, "a seal failed after its KGSS key was made, and the key could not be deleted");
        }
    }

    /// Unseals `body`: with the ETK keys in the token when the message names one of them,
    /// else with the KGSS key it names (fetched under the caller's identity); the content
    /// waits in a spool and is handed out only with a clean verdict.
    pub async fn unseal(
        self: &Arc<Self>,
        client: &Admitted,
        body: impl Read + Send + 'static,
    ) -> Result<Opened, ServiceError> {
        let this = self.clone();
        let slot = client.slot();
        let client = client.client.clone();
        let handle = tokio::runtime::Handle::current();
        blocking(move || {
            let _slot = slot;
            let keys = this.keys_of(&client)?;
            let mut input = Limited::new(body, this.config.limits.max_body_bytes);
            let mut head = Recording::new(&mut input);
            let addressees = cms::addressees(&mut head);
            // A body cut short (or too large) within the head is the caller's error (400,
            // 413), as it is further on: never a verdict on a message it did not send.
            if let Some(e) = head.error {
                return Err(ServiceError::from_io(e));
            }
            let head = head.copy;
            let mut options = UnsealOptions {
                anchors: this.anchors.clone(),
                tsa_anchors: this.tsa_anchors.clone(),
                ..UnsealOptions::default()
            };
            let mut kgss_key_id = None;
            if let Ok(a) = &addressees {
                if !a.has_key_in(&keys.ring) {
                    if let Some(id) = a.kek_ids.first() {
                        let key = handle.block_on(this.kgss_get_key(&client, id))?;
                        options.kek = Some(key);
                        kgss_key_id = Some(id.clone());
                    }
                }
            }
            let mut spool = SpoolWriter::new(&this.config.spool_dir);
            let unsealed = cms::unseal(
                io::Cursor::new(head).chain(&mut input),
                &mut spool,
                &keys.ring,
                &options,
            )
            .map_err(|e| match e {
                cms::UnsealError::Input(io) => ServiceError::from_io(io),
                cms::UnsealError::Output(io) => ServiceError::Io(io.to_string()),
                // The custody core refused, or it or the token is unavailable: 403 / 503,
                // never a verdict on the message.
                cms::UnsealError::Key(k) => ServiceError::from_key(k),
            })?;
            // Bytes after the message are ignored, as `etee unseal` ignores them in a
            // file; but the body is read to its end, so that one cut short is refused
            // (400) wherever it stops, even after a complete message.
            io::copy(&mut input, &mut io::sink()).map_err(ServiceError::from_io)?;
            let content = if unsealed.verdict.is_clean() {
                Some(spool.finish().map_err(ServiceError::from_io)?)
            } else {
                None
            };
            Ok(Opened {
                report: crate::report::unseal_report(&unsealed),
                unsealed,
                content,
                kgss_key_id,
                message_len: input.seen(),
            })
        })
        .await
    }
}

fn describe(id: &Identifier) -> String {
    match &id.application_id {
        Some(app) => format!("{} {} ({app})", id.id_type, id.value),
        None => format!("{} {}", id.id_type, id.value),
    }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Io(format!("worker: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keydepot(status: u16, code: &str) -> ProtocolError {
        ProtocolError::KeyDepot {
            status,
            code: code.into(),
            message: "why".into(),
        }
    }

    /// A registration's 409 keeps KeyDepot's reason: a taken (or retired) key id, a
    /// holder with as many keys as KeyDepot takes, or another conflict, each its own code
    /// (all three were `KEYDEPOT_KEY_EXISTS`).
    #[test]
    fn keydepot_conflicts_keep_their_reason() {
        let code = |status, platform_code| {
            ServiceError::from_keydepot_registration(keydepot(status, platform_code)).code()
        };
        assert_eq!(
            code(409, "KEYDEPOT_DUPLICATE_KEY_ID"),
            "KEYDEPOT_KEY_EXISTS"
        );
        assert_eq!(
            code(409, "KEYDEPOT_TOO_MANY_KEYS"),
            "KEYDEPOT_TOO_MANY_KEYS"
        );
        assert_eq!(code(409, "KEYDEPOT_CONFLICT"), "KEYDEPOT_CONFLICT");
        assert_eq!(code(409, "KEYDEPOT_SOMETHING_NEW"), "KEYDEPOT_CONFLICT");
        let detail =
            ServiceError::from_keydepot_registration(keydepot(409, "KEYDEPOT_SOMETHING_NEW"));
        assert!(
            detail.to_string().contains("KEYDEPOT_SOMETHING_NEW"),
            "{detail}"
        );
        // Not a conflict: as for the other KeyDepot routes.
        assert_eq!(
            code(400, "KEYDEPOT_INVALID_REQUEST"),
            "APPLIANCE_BAD_REQUEST"
        );
        assert_eq!(
            code(422, "KEYDEPOT_INVALID_PROOF_OF_POSSESSION"),
            "PLATFORM_UNAVAILABLE"
        );
    }
}
