//! The accept loop: for each TCP connection a task that does the TLS handshake (bounded in
//! time), learns the caller from the client certificate, and serves HTTP/1.1 requests with
//! the routes, each bounded in time; a semaphore bounds the connections served at once.

use crate::caller::{Caller, MaybeCaller};
use crate::config::Limits;
use axum::Router;
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
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    routes: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (tcp, _) = tokio::select! {
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let routes = routes.clone();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
            let caller = MaybeCaller(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(Caller::from_chain)
                    .map(Arc::new),
            );
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(caller.clone());
                    let mut routes = routes.clone();
                    async move {
                        match tokio::time::timeout(limits.request_timeout, routes.call(request))
                            .await
                        {
                            Ok(response) => response,
                            Err(_) => Ok(crate::routes::timeout_response()),
                        }
                    }
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.request_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tls), service);
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
        permits.acquire_many(limits.max_connections as u32),
    )
    .await;
    Ok(())
}
