//! The accept loop: for each TCP connection a task that does the TLS handshake (bounded in
//! time), learns the caller from the client certificate, and serves HTTP/1.1 requests with
//! the routes, each bounded in time; a semaphore bounds the connections served at once.

use crate::caller::{Caller, MaybeCaller};
use crate::config::Limits;
use axum::Router;
use etee_formats::trust::TrustAnchors;
use etee_services::connections::{address_peer, PerPeer};
use etee_services::log::{LogSafe, Throttle};
use etee_services::soap::Environment;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// Serves `routes` on `listener` until `shutdown` completes; connections under way are
/// then given `limits.request_timeout` to finish.
/// Callers' certificates are checked against the revocation lists of `anchors` at each
/// request; `environment` goes in the SOAP fault of a SOAP request that timed out.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    routes: Router,
    limits: Limits,
    anchors: TrustAnchors,
    environment: Environment,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    // Bounded (the configuration checks it too), so that the drain below can ask for
    // every permit at once.
    let capacity = limits
        .max_connections
        .clamp(1, crate::config::MAX_CONNECTIONS_LIMIT);
    let permits = Arc::new(Semaphore::new(capacity));
    let per_peer = PerPeer::new(limits.max_connections_per_peer);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer_ip = address_peer(peer.ip());
        let Some(peer_slot) = per_peer.take(peer_ip, &peer_ip) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        let anchors = anchors.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _peer_slot = peer_slot;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            let chain = tls.get_ref().1.peer_certificates();
            let caller = MaybeCaller(chain.and_then(Caller::from_chain).map(Arc::new));
            let share_key = crate::share::CallerKey::of(
                chain.and_then(|c| c.first()).map(|c| c.as_ref()),
                peer.ip(),
            );
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let (arrived, mut request) = etee_services::body::Watched::wrap(request);
                    // A certificate that expired while the connection was kept alive no
                    // longer authenticates: this request is served as anonymous (routes
                    // that need a caller refuse it) and the connection ends with it, so
                    // that the client's next handshake meets the verifier again.
                    let now = crate::unix_now();
                    let expired = caller.0.as_ref().is_some_and(|c| !c.is_valid_at(now));
                    let (caller, anchors, share_key) =
                        (caller.clone(), anchors.clone(), share_key.clone());
                    let mut routes = routes.clone();
                    async move {
                        // Likewise a certificate revoked since (or before) the handshake:
                        // the lists are re-read while the platform runs, OCSP answers
                        // expire.
                        let refusal = match &caller.0 {
                            Some(c) if !expired => c.revocation_refusal_async(&anchors, now).await,
                            _ => None,
                        };
                        if let Some(why) = refusal {
                            static REFUSED: Throttle = Throttle::new();
                            if let Some(held_back) = REFUSED.allow(now) {
                                let subject = caller
                                    .0
                                    .as_ref()
                                    .map(|c| c.presented.leaf.subject_string())
                                    .unwrap_or_default();
                                // A revoked certificate in use is worth an operator's look.
                                tracing::warn!(
                                    held_back,
                                    "a client certificate is {why}: {}; the request is \
                                     served without a caller and the connection closed",
                                    LogSafe(subject)
                                );
                            }
                        } else if expired {
                            tracing::info!(
                                "a client certificate expired during its connection: the \
                                 request is served without a caller and the connection closed"
                            );
                        }
                        let without_caller = expired || refusal.is_some();
                        request.extensions_mut().insert(if without_caller {
                            MaybeCaller(None)
                        } else {
                            caller.clone()
                        });
                        request.extensions_mut().insert(share_key.clone());
                        request
                            .extensions_mut()
                            .insert(crate::caller::PeerAddr(peer.ip()));
                        let soap = crate::routes::is_soap(request.uri().path());
                        let mut response = match tokio::time::timeout(
                            limits.request_timeout,
                            routes.call(request),
                        )
                        .await
                        {
                            Ok(response) => response,
                            Err(_) => Ok(crate::routes::timeout_response(
                                soap.then_some(environment),
                                arrived.load(std::sync::atomic::Ordering::Acquire),
                            )),
                        };
                        if without_caller {
                            if let Ok(r) = &mut response {
                                r.headers_mut().insert(
                                    axum::http::header::CONNECTION,
                                    axum::http::HeaderValue::from_static("close"),
                                );
                            }
                        }
                        response
                    }
                },
            );
            // A peer that stops reading its answers would hold its slot for ever: a write
            // that makes no progress for `request_timeout` ends the connection.
            let mut io = tokio_io_timeout::TimeoutStream::new(tls);
            io.set_write_timeout(Some(limits.request_timeout));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.request_timeout)
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
        });
    }
    // Stop: no new connections; those under way finish their request.
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(
        limits.request_timeout,
        permits.acquire_many(capacity as u32),
    )
    .await;
    Ok(())
}

/// Forgets the replay digests expired at `now`; a failure is a warning (the next turn tries
/// again, and an expired digest refuses nothing meanwhile).
fn purge_replays_once(store: &dyn etee_store::Store, now: i64) {
    match store.purge_expired(now) {
        Ok(0) => {}
        Ok(n) => tracing::debug!("forgot {n} expired KGSS request digests"),
        Err(e) => tracing::warn!("purging KGSS's expired request digests: {e}"),
    }
}

/// KGSS's replay table would otherwise grow for ever: a thread of its own (the store is
/// synchronous) purges it every `every` until the sender it returns is dropped.
fn purge_replays(
    store: Arc<dyn etee_store::Store>,
    every: std::time::Duration,
) -> std::io::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("etee-replay-purge".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                purge_replays_once(store.as_ref(), crate::unix_now());
            }
        })?;
    Ok((stop, thread))
}

/// A platform serving on a socket, started by [`start`].
pub struct Running {
    /// Where it listens (the real port when the configuration asked for port 0).
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The replay purge: ends when the sender is dropped.
    purge: (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
    /// The daily look at the platform's own certificates.
    certificate_warnings: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets the requests under way finish, stops the replay purge, and
    /// returns.
    pub async fn stop(self) -> std::io::Result<()> {
        self.certificate_warnings.abort();
        let _ = self.stop.send(());
        let served = self
            .task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let (purge_stop, purge) = self.purge;
        drop(purge_stop);
        // A purge under way finishes first (one store transaction).
        let _ = tokio::task::spawn_blocking(move || purge.join()).await;
        served
    }
}

/// Binds `platform.config.listen` and serves the platform's routes on it (in a task of the
/// current tokio runtime); purges KGSS's expired replay digests every
/// `limits.replay_purge_interval` (on a thread of its own) until [`Running::stop`].
pub async fn start(platform: Arc<crate::Platform>) -> crate::Result<Running> {
    let c = &platform.config;
    let tls = crate::tls::server_config(&c.tls_certificate, &c.tls_key, &c.client_ca)?;
    let listener = TcpListener::bind(c.listen)
        .await
        .map_err(|e| crate::PlatformError::Config(format!("listen {}: {e}", c.listen)))?;
    let addr = listener.local_addr()?;
    let limits = c.limits;
    let routes = crate::routes::router(platform.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let anchors = platform.anchors.clone();
    let environment = c.environment;
    let purge = purge_replays(platform.store.clone(), limits.replay_purge_interval)?;
    let task = tokio::spawn(serve(
        listener,
        tls,
        routes,
        limits,
        anchors,
        environment,
        async {
            let _ = stopped.await;
        },
    ));
    let certificates = platform.clone();
    let certificate_warnings = tokio::spawn(async move {
        etee_services::lifetime::warn_daily(&certificates.own_certificates).await
    });
    Ok(Running {
        addr,
        stop,
        task,
        purge,
        certificate_warnings,
    })
}

/// `etee platform serve`: opens the store, serves until SIGTERM or SIGINT, then stops
/// cleanly (requests under way are answered).
pub fn run(config: crate::PlatformConfig) -> crate::Result<()> {
    let platform = Arc::new(crate::Platform::open(config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("etee-platform")
        .build()?;
    let served = runtime.block_on(async {
        let running = start(platform.clone()).await?;
        eprintln!("etee platform: serving on https://{}", running.addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("etee platform: stopping (answering the requests under way)");
        running.stop().await?;
        Ok(())
    });
    // The runtime and its tasks go first, so that the platform's last reference is this
    // one, dropped outside the runtime: dropping a PostgreSQL store closes its pooled
    // connections with the blocking client, which runs a runtime of its own and panics
    // on a runtime's thread (a second panic, for the next connection, aborted the
    // process: SIGABRT after SIGTERM).
    drop(runtime);
    drop(platform);
    served
}
