//! The listeners: HTTPS with client certificates (required, verified against
//! `client_ca`) and a Unix socket (the kernel's peer credentials). Each connection is
//! served HTTP/1.1 with the API's routes; the caller is put in every request as a [`Peer`].
//! A semaphore bounds the connections served at once; stopping lets the requests under way
//! finish.

use crate::config::{Limits, TlsApi};
use crate::policy::Peer;
use crate::{ApplianceError, Result};
use axum::Router;
use etee_formats::cert::Certificate;
use etee_formats::revocation::{Revocation, RevocationPolicy};
use etee_formats::trust::TrustAnchors;
use etee_services::body::Watched;
use etee_services::connections::{address_peer, PerPeer};
use etee_services::log::Throttle;
use etee_services::revocation::PresentedChain;
use etee_services::tls_files::{self, ClientAuth, ServerFiles};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// The socket file's mode: the owner and its group (put the medical software's user in
/// the appliance's group); who may do what is then decided per uid by the configuration.
pub const SOCKET_MODE: u32 = 0o660;

/// The HTTPS API's TLS configuration: the server's chain and key, and client
/// certificates required and verified against `client_ca`. Errors name the setting and its
/// file.
pub fn tls_config(api: &TlsApi) -> Result<Arc<ServerConfig>> {
    if let Some(w) = etee_hsm::config::permission_warning_for("TLS key", &api.key) {
        etee_hsm::warn_operator(&w);
    }
    let client_ca: Vec<&Path> = api.client_ca.iter().map(PathBuf::as_path).collect();
    let files = ServerFiles {
        chain: &api.certificate,
        key: &api.key,
        client_ca: &client_ca,
    };
    tls_files::server_config(files, ClientAuth::Required, &mut |path, certs| {
        if let Some(w) = client_ca_warning(path, certs) {
            etee_hsm::warn_operator(&w);
        }
    })
    .map_err(|e| ApplianceError::Config(e.to_string()))
}

/// [`etee_hsm::config::client_ca_warning`] for the API's callers.
pub fn client_ca_warning(path: &Path, certs: &[CertificateDer<'_>]) -> Option<String> {
    etee_hsm::config::client_ca_warning(path, certs, "API callers'")
}

/// Binds the HTTPS API's address (the setting `listen`, named in the error).
pub async fn bind_tcp(listen: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| ApplianceError::Config(format!("listen {listen}: {e}")))
}

/// SHA-256 of a DER certificate (how the configuration names TLS callers).
pub fn certificate_sha256(der: &CertificateDer<'_>) -> [u8; 32] {
    openssl::sha::sha256(der.as_ref())
}

/// Binds the Unix socket at `path` with [`SOCKET_MODE`]: a stale socket file left by a
/// crash is replaced, a live one (another appliance) or any other file is an error.
pub fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApplianceError::Config(format!(
                "socket {}: exists and is not a socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApplianceError::Config(format!(
                "socket {}: another process is serving on it",
                path.display()
            )));
        }
        std::fs::remove_file(path)?;
    }
    // Never reachable with wider permissions (bound in a private directory first).
    let listener = etee_hsm::remote::bind_restricted(path, SOCKET_MODE)
        .map_err(|e| ApplianceError::Config(format!("socket {}: {e}", path.display())))?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

/// The HTTPS API's callers checked for revocation at each request (a list can change
/// while a connection is kept alive): their chains against `client_ca`, with the
/// appliance's lists (`crl`) and OCSP responder (`ocsp`), under its `revocation` policy.
/// A refused caller is served as unidentified and its connection closed, as the platform
/// does with its own callers.
#[derive(Clone)]
struct CallerRevocation {
    anchors: TrustAnchors,
}

impl CallerRevocation {
    /// `None` under the policy none (no lists, no responder).
    fn new(api: &TlsApi, revocation: &Revocation) -> Result<Option<Self>> {
        if revocation.policy() == RevocationPolicy::None {
            return Ok(None);
        }
        let mut certs = Vec::new();
        for path in &api.client_ca {
            for der in crate::certificates("client_ca", path)? {
                certs.push(Certificate::from_der(&der).map_err(|e| {
                    ApplianceError::Config(format!("client_ca {}: {e}", path.display()))
                })?);
            }
        }
        Ok(Some(Self {
            anchors: TrustAnchors::new(certs).with_revocation(revocation.clone()),
        }))
    }

    /// Why the caller is refused now, if it is ([`PresentedChain::refusal_off_workers`]);
    /// a chain whose leaf does not parse here is refused rather than left unchecked.
    async fn refusal(&self, presented: Option<&Arc<PresentedChain>>) -> Option<&'static str> {
        let Some(presented) = presented else {
            return Some("unreadable here (the TLS layer accepted it)");
        };
        presented
            .refusal_off_workers(&self.anchors, etee_formats::unix_now())
            .await
    }
}

/// An HTTPS caller's revocation check: the appliance's, and the chain it presented.
type CallerCheck = (CallerRevocation, Option<Arc<PresentedChain>>);

/// Serves one connection until it closes or `closing` says stop.
async fn connection<I>(
    io: I,
    peer: Peer,
    valid_until: Option<i64>,
    check: Option<CallerCheck>,
    routes: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (arrived, mut request) = Watched::wrap(request);
            // rustls verified the client's chain at the handshake only. Once a certificate
            // of it has expired, or been revoked, a kept-alive connection no longer
            // identifies a client: this request is served as from an unknown caller, and
            // the connection ends with it so that the next handshake meets the verifier
            // again.
            let expired = valid_until.is_some_and(|t| etee_formats::unix_now() > t);
            let peer = peer.clone();
            let check = check.clone();
            let mut routes = routes.clone();
            async move {
                let refused = match &check {
                    Some((revocation, presented)) if !expired => {
                        revocation.refusal(presented.as_ref()).await
                    }
                    _ => None,
                };
                let unidentified = expired || refused.is_some();
                let peer = match peer {
                    Peer::Tls { addr, .. } if unidentified => {
                        match refused {
                            Some(why) => {
                                static REFUSED: Throttle = Throttle::new();
                                if let Some(held_back) = REFUSED.allow(etee_formats::unix_now()) {
                                    // A revoked certificate in use is worth an operator's look.
                                    tracing::warn!(
                                        %addr,
                                        held_back,
                                        "a client certificate is {why}: the request is served \
                                         as unidentified and the connection closed"
                                    );
                                }
                            }
                            None => tracing::info!(
                                %addr,
                                "a client certificate expired during its connection: the \
                                 request is served as unidentified and the connection closed"
                            ),
                        }
                        Peer::Tls {
                            certificate_sha256: None,
                            addr,
                        }
                    }
                    p => p,
                };
                request.extensions_mut().insert(peer);
                let answer =
                    tokio::time::timeout(limits.request_timeout, routes.call(request)).await;
                match answer {
                    Ok(Ok(mut response)) if unidentified => {
                        response.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        Ok(response)
                    }
                    Ok(response) => response,
                    Err(_) => {
                        use crate::service::ServiceError;
                        let timeout_ms = limits.request_timeout.as_millis() as u64;
                        // Whose slowness it was: a body still arriving is the caller's
                        // (408), work on a whole request is ours or the platform's (504).
                        let late = if arrived.load(Ordering::Acquire) {
                            ServiceError::WorkTimeout { timeout_ms }
                        } else {
                            ServiceError::RequestTimeout { timeout_ms }
                        };
                        tracing::warn!(
                            timeout_ms,
                            code = late.code(),
                            "a request was not answered within request_timeout_ms: {late}"
                        );
                        let mut response = crate::api::problem(&late);
                        // What is left of its body is not read: the connection ends here.
                        response.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        Ok(response)
                    }
                }
            }
        });
    // A peer that stops reading its answers (or pipelines requests and never reads) would
    // hold its connection slot for ever: a write that makes no progress for
    // `header_timeout` ends the connection.
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(limits.header_timeout));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(Box::pin(io)), service);
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection: {e}");
            }
        }
        _ = closing.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request_timeout, connection).await;
        }
    }
}

/// Who holds a connection, for `max_connections_per_peer`: an IP address (whatever its
/// port; an IPv6 address's /64, see [`address_peer`]) or a uid on the socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PeerKey {
    Ip(std::net::IpAddr),
    Uid(u32),
}

/// What a listener accepts.
enum Listener {
    Tls(TcpListener, TlsAcceptor),
    Unix(UnixListener),
}

/// Accepts on `listener` until `stop` says so; connections under way then get
/// `limits.request_timeout` to finish.
async fn accept_loop(
    listener: Listener,
    routes: Router,
    limits: Limits,
    revocation: Option<CallerRevocation>,
    mut stop: watch::Receiver<bool>,
) {
    // Bounded (the configuration checks it too), so that the drain below can ask for
    // every permit at once.
    let capacity = limits
        .max_connections
        .clamp(1, crate::config::MAX_CONNECTIONS_LIMIT);
    let permits = Arc::new(Semaphore::new(capacity));
    let per_peer = PerPeer::new(limits.max_connections_per_peer);
    let (closing_tx, closing_rx) = watch::channel(false);
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let routes = routes.clone();
        let closing = closing_rx.clone();
        match &listener {
            Listener::Tls(tcp, acceptor) => {
                let accepted = tokio::select! {
                    _ = stop.changed() => break,
                    a = tcp.accept() => a,
                };
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let peer_ip = address_peer(addr.ip());
                let Some(peer_slot) = per_peer.take(PeerKey::Ip(peer_ip), &peer_ip) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let revocation = revocation.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _peer_slot = peer_slot;
                    let tls = match tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let chain = tls.get_ref().1.peer_certificates();
                    let certificate_sha256 = chain.and_then(|c| c.first()).map(certificate_sha256);
                    let valid_until = chain.and_then(|c| {
                        etee_formats::cert::chain_valid_until(c, etee_formats::unix_now())
                    });
                    let check = revocation.map(|r| {
                        let presented = chain.and_then(PresentedChain::parse).map(Arc::new);
                        (r, presented)
                    });
                    let peer = Peer::Tls {
                        certificate_sha256,
                        addr,
                    };
                    connection(tls, peer, valid_until, check, routes, limits, closing).await;
                });
            }
            Listener::Unix(unix) => {
                let accepted = tokio::select! {
                    _ = stop.changed() => break,
                    a = unix.accept() => a,
                };
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let cred = match stream.peer_cred() {
                    Ok(cred) => cred,
                    Err(e) => {
                        tracing::warn!("peer credentials: {e}");
                        continue;
                    }
                };
                let uid = cred.uid();
                let peer = Peer::Unix {
                    uid,
                    pid: cred.pid(),
                };
                let Some(peer_slot) = per_peer.take(PeerKey::Uid(uid), &format!("uid {uid}"))
                else {
                    continue;
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let _peer_slot = peer_slot;
                    connection(stream, peer, None, None, routes, limits, closing).await;
                });
            }
        }
    }
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(
        limits.request_timeout,
        permits.acquire_many(capacity as u32),
    )
    .await;
}

/// The appliance serving: where it listens, and how to stop it.
pub struct Running {
    /// The HTTPS address (the real port when the configuration asked for port 0).
    pub addr: Option<std::net::SocketAddr>,
    pub socket: Option<PathBuf>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets the requests under way finish, removes the socket file.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the configured listeners and serves the API on them (tasks of the current
/// runtime).
pub async fn start(app: Arc<crate::Appliance>) -> Result<Running> {
    let config = app.config().clone();
    let routes = crate::api::router(app.clone());
    let limits = config.limits;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut addr = None;
    if let Some(api) = &config.tls {
        let tls = tls_config(api)?;
        let revocation = CallerRevocation::new(api, app.anchors().revocation())?;
        let tcp = bind_tcp(api.listen).await?;
        addr = Some(tcp.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(
            Listener::Tls(tcp, TlsAcceptor::from(tls)),
            routes.clone(),
            limits,
            revocation,
            stopped.clone(),
        )));
    }
    if let Some(every) = config.audit_anchor_log {
        tasks.push(tokio::spawn(log_audit_anchors(
            app.clone(),
            every,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(warn_of_certificate_ends(
        app.clone(),
        stopped.clone(),
    )));
    if let Some(path) = &config.socket {
        let unix = bind_unix(path)?;
        tasks.push(tokio::spawn(accept_loop(
            Listener::Unix(unix),
            routes.clone(),
            limits,
            None,
            stopped.clone(),
        )));
    }
    Ok(Running {
        addr,
        socket: config.socket.clone(),
        stop,
        tasks,
    })
}

/// Logs the custody audit chain's anchor at start and then every `every`, until `stop`:
/// shipped with the logs to another system, the anchors are the heads kept elsewhere that
/// `etee audit verify --expect-head` checks the chain against.
async fn log_audit_anchors(
    app: Arc<crate::Appliance>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        match app.audit_anchor().await {
            // An idle chain is not logged again.
            Some(anchor) if last.as_ref() != Some(&anchor) => {
                tracing::info!(
                    anchor = %anchor,
                    "custody audit chain anchor (keep it elsewhere; `etee audit verify \
                     --expect-head ANCHOR` checks the chain still holds it)"
                );
                last = Some(anchor);
            }
            Some(_) => {}
            None => tracing::warn!("custody audit chain anchor: the custody core did not answer"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Warns of the institution's own certificates nearing their end (or past it) at start and
/// then once a day, until `stop` ([`etee_services::lifetime`]).
async fn warn_of_certificate_ends(app: Arc<crate::Appliance>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.changed() => {}
        _ = etee_services::lifetime::warn_daily(app.own_certificates()) => {}
    }
}

/// `etee serve`: opens the appliance, serves until SIGTERM or SIGINT, then stops cleanly.
pub fn run(config: crate::ApplianceConfig) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("etee-appliance")
        .build()?;
    // The HTTPS API's files are checked before the token is logged in to: a mistake in
    // them must not cost a login (each one on the audit chain, a wrong PIN counted).
    if let Some(api) = &config.tls {
        tls_config(api)?;
    }
    runtime.block_on(async {
        // Opening logs in to the token and builds the platform clients: blocking work.
        let app = tokio::task::spawn_blocking(move || crate::Appliance::open(config))
            .await
            .map_err(|e| ApplianceError::Config(e.to_string()))??;
        let app = Arc::new(app);
        let running = start(app).await?;
        if let Some(addr) = running.addr {
            eprintln!("etee serve: HTTPS API on https://{addr}");
        }
        if let Some(path) = &running.socket {
            eprintln!("etee serve: API on unix:{}", path.display());
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("etee serve: stopping (answering the requests under way)");
        running.stop().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    /// The HTTPS API's files in `dir`: `chain.pem` (a TLS server certificate and its root),
    /// `key.pem` (its key), `other-key.pem` (another server's key), `ca.pem` (the root) and
    /// `leaf.pem` (the server certificate alone).
    fn tls_files(dir: &Path) -> TlsApi {
        let pki = etee_testpki::TestPki::generate("appliance-tls").unwrap();
        let server = pki.tls_server(&["localhost"]).unwrap();
        let other = pki.tls_server(&["localhost"]).unwrap();
        let pem = |certs: &[&openssl::x509::X509]| {
            certs
                .iter()
                .flat_map(|c| c.to_pem().unwrap())
                .collect::<Vec<u8>>()
        };
        std::fs::write(dir.join("chain.pem"), pem(&[&server.cert, &pki.root.cert])).unwrap();
        std::fs::write(dir.join("leaf.pem"), pem(&[&server.cert])).unwrap();
        std::fs::write(dir.join("ca.pem"), pem(&[&pki.root.cert])).unwrap();
        for (name, key) in [("key.pem", &server.key), ("other-key.pem", &other.key)] {
            let path = dir.join(name);
            std::fs::write(&path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        TlsApi {
            listen: "127.0.0.1:0".parse().unwrap(),
            certificate: dir.join("chain.pem"),
            key: dir.join("key.pem"),
            client_ca: vec![dir.join("ca.pem")],
        }
    }

    /// A TLS file that is missing, or a key that is not the certificate's, is reported
    /// with the setting and the file(s).
    #[test]
    fn tls_file_errors_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let api = tls_files(dir.path());
        tls_config(&api).unwrap();
        let error = |api: &TlsApi| tls_config(api).expect_err("refused").to_string();
        let mismatched = TlsApi {
            key: dir.path().join("other-key.pem"),
            ..api.clone()
        };
        let e = error(&mismatched);
        assert!(
            e.contains(&format!(
                "tls_key {} does not match tls_certificate {}",
                mismatched.key.display(),
                api.certificate.display()
            )),
            "{e}"
        );
        let nope = dir.path().join("nope.pem");
        for (api, says) in [
            (
                TlsApi {
                    certificate: nope.clone(),
                    ..api.clone()
                },
                "tls_certificate",
            ),
            (
                TlsApi {
                    key: nope.clone(),
                    ..api.clone()
                },
                "tls_key",
            ),
            (
                TlsApi {
                    client_ca: vec![nope.clone()],
                    ..api.clone()
                },
                "client_ca",
            ),
        ] {
            let e = error(&api);
            assert!(e.contains(&format!("{says} {}: ", nope.display())), "{e}");
        }
    }

    /// A `client_ca` certificate that is not a CA (a TLS server's) is warned about, a CA
    /// is not.
    #[test]
    fn a_client_ca_that_is_not_a_ca_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let api = tls_files(dir.path());
        let ca = &api.client_ca[0];
        assert_eq!(
            client_ca_warning(ca, &crate::certificates("client_ca", ca).unwrap()),
            None
        );
        let leaf = dir.path().join("leaf.pem");
        let w = client_ca_warning(&leaf, &crate::certificates("client_ca", &leaf).unwrap())
            .expect("a leaf is warned about");
        assert!(
            w.contains(&format!(
                "client_ca {}: not a CA certificate",
                leaf.display()
            )) && w.contains("localhost"),
            "{w}"
        );
        // The chain file: its CA is not named, its leaf is.
        let chain = &api.certificate;
        let w =
            client_ca_warning(chain, &crate::certificates("client_ca", chain).unwrap()).unwrap();
        assert!(!w.contains("Root CA"), "{w}");
        // Taken all the same: a warning, not a refusal.
        tls_config(&TlsApi {
            client_ca: vec![leaf],
            ..api.clone()
        })
        .unwrap();
    }

    /// An address already taken is reported with the setting `listen` and the address.
    #[tokio::test]
    async fn an_address_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind_tcp(addr).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("listen {addr}: ")) && e.contains("in use"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let live = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        let e = bind_unix(&path).unwrap_err().to_string();
        assert!(e.contains("another process"), "{e}");
        drop(live);
        // The file stays after the listener is gone: a stale socket.
        assert!(path.exists());
        let _again = bind_unix(&path).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = bind_unix(&file).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
    }

    /// One peer holds at most `max_connections_per_peer` connections: the next one is
    /// closed at once while the others stall, and served again once one of them ends.
    #[tokio::test]
    async fn a_peer_holds_at_most_its_share_of_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind_unix(&path).unwrap();
        let routes = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let limits = Limits {
            max_connections_per_peer: 2,
            ..Limits::default()
        };
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(accept_loop(
            Listener::Unix(listener),
            routes,
            limits,
            None,
            stop,
        ));
        let ping = |path: PathBuf| async move {
            let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
            // A closed connection may refuse the write or answer nothing.
            let _ = s
                .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
                .await
                .expect("an answer or a close, at once");
            String::from_utf8_lossy(&answer).into_owned()
        };
        // Two stalled connections (this process's uid) ...
        let first = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _second = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ... and the third is closed without an answer.
        assert_eq!(ping(path.clone()).await, "");
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ping(path.clone()).await.ends_with("pong"));
    }

    /// A caller that never finishes its headers is cut off after `header_timeout`; one
    /// that sends a whole request is answered.
    #[tokio::test]
    async fn slow_headers_are_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let routes = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (_closing_tx, closing) = watch::channel(false);
        let peer = Peer::Unix { uid: 1, pid: None };

        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(connection(
            server,
            peer.clone(),
            None,
            None,
            routes.clone(),
            limits,
            closing.clone(),
        ));
        client
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let n = client.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..n])
        );

        let (mut slow, server) = tokio::io::duplex(4096);
        let cut = tokio::spawn(connection(
            server, peer, None, None, routes, limits, closing,
        ));
        slow.write_all(b"GET /ping HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), cut)
            .await
            .expect("the connection was not cut off")
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        drop(client);
        served.await.unwrap();
    }

    /// A request not answered within `request_timeout`: 408 `APPLIANCE_REQUEST_TIMEOUT`
    /// while its body is still coming (the caller's slowness), 504 `APPLIANCE_WORK_TIMEOUT`
    /// once the whole request arrived (the work's: it was 408 too, which blamed the
    /// caller), with the headers of every answer, and the connection closed.
    #[tokio::test]
    async fn a_request_not_answered_in_time_says_whose_slowness() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let routes = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/body",
                axum::routing::post(|body: String| async move { body }),
            )
            .route(
                "/slow-body",
                axum::routing::post(|body: String| async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    body
                }),
            );
        let limits = Limits {
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (_closing_tx, closing) = watch::channel(false);
        let peer = Peer::Unix { uid: 1, pid: None };
        for (request, status, code) in [
            // No body, slow work.
            (
                &b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                "504",
                "appliance_work_timeout",
            ),
            // A whole body (known length, then chunked), slow work.
            (
                &b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"[..],
                "504",
                "appliance_work_timeout",
            ),
            (
                &b"POST /slow-body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n"[..],
                "504",
                "appliance_work_timeout",
            ),
            // A body that stops coming (the connection stays open), known length or chunked.
            (
                &b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello"[..],
                "408",
                "appliance_request_timeout",
            ),
            (
                &b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n"[..],
                "408",
                "appliance_request_timeout",
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(4096);
            let served = tokio::spawn(connection(
                server,
                peer.clone(),
                None,
                None,
                routes.clone(),
                limits,
                closing.clone(),
            ));
            client.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
                .await
                .expect("no answer, or the connection was not closed")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            assert!(
                answer.starts_with(&format!("http/1.1 {status}"))
                    && answer.contains(&format!("\"title\":\"{code}\""))
                    && answer.contains("cache-control: no-store")
                    && answer.contains("content-type: application/problem+json")
                    && answer.contains("connection: close"),
                "{}: {answer}",
                String::from_utf8_lossy(request)
            );
            served.await.unwrap();
        }
    }

    /// A caller that pipelines requests and never reads the answers is cut off once the
    /// answers stop going out for `header_timeout`, instead of holding its slot for ever.
    #[tokio::test]
    async fn a_caller_that_never_reads_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let big = "x".repeat(64 * 1024);
        let routes = Router::new().route(
            "/big",
            axum::routing::get(move || {
                let big = big.clone();
                async move { big }
            }),
        );
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (_closing_tx, closing) = watch::channel(false);
        let peer = Peer::Unix { uid: 1, pid: None };
        // A small pipe: the answers fill it at once.
        let (mut client, server) = tokio::io::duplex(1024);
        let served = tokio::spawn(connection(
            server, peer, None, None, routes, limits, closing,
        ));
        for _ in 0..20 {
            client
                .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection was not cut off")
            .unwrap();
        drop(client);
    }

    /// A route answering whether the request's caller is identified by a certificate, and
    /// a caller that is.
    fn who_is_asking() -> (Router, Peer) {
        let routes = Router::new().route(
            "/who",
            axum::routing::get(|axum::Extension(peer): axum::Extension<Peer>| async move {
                match peer {
                    Peer::Tls {
                        certificate_sha256: Some(_),
                        ..
                    } => "certificate",
                    _ => "nobody",
                }
            }),
        );
        let peer = Peer::Tls {
            certificate_sha256: Some([7; 32]),
            addr: "127.0.0.1:9".parse().unwrap(),
        };
        (routes, peer)
    }

    /// A caller whose certificate is revoked while its connection is kept alive: the
    /// request before the list changed is identified, the one after it on the same
    /// connection is not, and the connection ends with that answer.
    #[tokio::test]
    async fn a_certificate_revoked_during_a_kept_alive_connection_stops_identifying_it() {
        use etee_testpki::{InstitutionSpec, TestPki};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = TestPki::generate("api callers").unwrap();
        let caller = pki
            .institution(&InstitutionSpec::new(
                "NIHII-HOSPITAL",
                "71000436",
                "caller",
            ))
            .unwrap();
        let now = etee_formats::unix_now();
        let crl = |revoked: &[&openssl::asn1::Asn1IntegerRef], number: u64| {
            let revoked: Vec<_> = revoked.iter().map(|s| (*s, now - 60)).collect();
            pki.crl(&revoked, number, now - 60, now + 3600)
                .unwrap()
                .to_der()
                .unwrap()
        };
        let der = |x: &openssl::x509::X509| Certificate::from_der(&x.to_der().unwrap()).unwrap();
        let root = der(&pki.root.cert);
        let revocation = Revocation::new(&[crl(&[], 1)], RevocationPolicy::Optional).unwrap();
        let check = (
            CallerRevocation {
                anchors: TrustAnchors::new(vec![root.clone()]).with_revocation(revocation.clone()),
            },
            Some(Arc::new(PresentedChain {
                leaf: der(&caller.auth.cert),
                issuers: vec![],
            })),
        );
        let (routes, peer) = who_is_asking();
        let (_closing_tx, closing) = watch::channel(false);
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(connection(
            server,
            peer,
            None,
            Some(check),
            routes,
            Limits::default(),
            closing,
        ));
        async fn answer(client: &mut tokio::io::DuplexStream) -> String {
            let mut buf = vec![0u8; 4096];
            client
                .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
        let first = answer(&mut client).await;
        assert!(first.ends_with("certificate"), "{first}");
        revocation
            .replace(&[crl(&[caller.auth.cert.serial_number()], 2)], &[root])
            .unwrap();
        let second = answer(&mut client).await;
        assert!(
            second.ends_with("nobody") && second.to_ascii_lowercase().contains("connection: close"),
            "{second}"
        );
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the connection ended")
            .unwrap();
    }

    /// A client whose certificate has expired since the handshake is no longer identified
    /// by it, and its connection ends with that answer; one still valid is served as usual.
    #[tokio::test]
    async fn an_expired_client_certificate_stops_identifying_its_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (routes, peer) = who_is_asking();
        let (_closing_tx, closing) = watch::channel(false);
        let ask = |valid_until: i64| {
            let (routes, closing, peer) = (routes.clone(), closing.clone(), peer.clone());
            async move {
                let (mut client, server) = tokio::io::duplex(4096);
                let served = tokio::spawn(connection(
                    server,
                    peer,
                    Some(valid_until),
                    None,
                    routes,
                    Limits::default(),
                    closing,
                ));
                client
                    .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut answer = vec![0u8; 1024];
                let n = client.read(&mut answer).await.unwrap();
                drop(client);
                served.await.unwrap();
                String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase()
            }
        };
        let now = etee_formats::unix_now();
        let valid = ask(now + 3600).await;
        assert!(valid.starts_with("http/1.1 200"), "{valid}");
        assert!(valid.ends_with("certificate"), "{valid}");
        assert!(!valid.contains("connection: close"), "{valid}");
        let expired = ask(now - 1).await;
        assert!(expired.ends_with("nobody"), "{expired}");
        assert!(expired.contains("connection: close"), "{expired}");
    }

    /// The period of a presented chain ends with its earliest notAfter (the leaf's or an
    /// intermediate's); certificates that cannot be read do not shorten it.
    #[test]
    fn a_chain_is_valid_until_its_earliest_not_after() {
        use etee_formats::cert::chain_valid_until;
        use etee_testpki::{InstitutionSpec, TestPki, Validity};
        let pki = TestPki::generate("chain-validity").unwrap();
        let now = etee_formats::unix_now();
        let leaf = pki
            .institution(
                &InstitutionSpec::new("NIHII-HOSPITAL", "71000436", "Short").with_auth_validity(
                    Validity {
                        not_before: now - 60,
                        not_after: now + 600,
                    },
                ),
            )
            .unwrap();
        let der = |x: &openssl::x509::X509| CertificateDer::from(x.to_der().unwrap());
        let leaf_der = der(&leaf.auth.cert);
        let root_der = der(&pki.root.cert);
        let root_end = etee_formats::cert::Certificate::from_der(root_der.as_ref())
            .unwrap()
            .not_after();
        assert!(root_end > now + 600);
        let until = chain_valid_until(&[leaf_der.clone(), root_der.clone()], now).unwrap();
        assert!((now + 599..=now + 601).contains(&until), "{until} vs {now}");
        assert_eq!(
            chain_valid_until(std::slice::from_ref(&root_der), now),
            Some(root_end)
        );
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(
            chain_valid_until(&[junk.clone(), root_der.clone()], now),
            Some(root_end)
        );
        assert_eq!(chain_valid_until(std::slice::from_ref(&junk), now), None);
        // An extra certificate that had expired before the handshake is not on the path.
        let expired = pki
            .institution(
                &InstitutionSpec::new("NIHII-HOSPITAL", "71000535", "Old").with_auth_validity(
                    Validity {
                        not_before: now - 7200,
                        not_after: now - 60,
                    },
                ),
            )
            .unwrap();
        let until = chain_valid_until(&[leaf_der, der(&expired.auth.cert), root_der], now);
        assert!(
            until.is_some_and(|t| (now + 599..=now + 601).contains(&t)),
            "{until:?} vs {now}"
        );
    }
}
