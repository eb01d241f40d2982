//! What the protocol tests share besides the platform's world (`common`): clients of a
//! world, a key provider that counts its signatures, and small fake TLS servers.
#![allow(dead_code)] // each test file uses a different part

use crate::common::{keystore_of, pki, ring_of, signer_of, World};
use etee_formats::keys::{KeyError, KeyId, PrivateKeyOps, SigningKey};
use etee_protocol::http::HttpConfig;
use etee_protocol::{EtkCache, EtkDepotClient, Flavour, HttpClient, KgssCaller, TlsIdentity};
use etee_testpki::Institution;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The platform's CA, as TLS roots.
pub fn roots() -> Vec<CertificateDer<'static>> {
    vec![CertificateDer::from(pki().pki.root.cert.to_der().unwrap())]
}

/// The base URL of a server on loopback (its certificate names `localhost`).
pub fn base(addr: SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

/// Quick settings for tests: short backoff.
pub fn quick() -> HttpConfig {
    HttpConfig {
        backoff: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(20),
        ..HttpConfig::default()
    }
}

/// An HTTP client of `addr`, with `identity` as TLS client identity if given.
pub fn http(addr: SocketAddr, identity: Option<TlsIdentity>, config: HttpConfig) -> HttpClient {
    let tls = etee_protocol::tls::client_config(&roots(), identity).unwrap();
    HttpClient::new(&base(addr), tls, config).unwrap()
}

pub fn depot(w: &World, flavour: Flavour) -> EtkDepotClient {
    EtkDepotClient::new(http(w.addr, None, quick()), flavour)
}

pub fn cache(w: &World, flavour: Flavour) -> EtkCache {
    EtkCache::new(depot(w, flavour), w.anchors.clone())
}

/// `inst` as a KGSS caller (software keys).
pub fn caller(w: &World, inst: &Institution) -> KgssCaller {
    KgssCaller {
        signer: signer_of(inst),
        own_etk: inst.etk.clone(),
        ring: ring_of(inst),
        anchors: w.anchors.clone(),
    }
}

/// A key provider counting the signatures it makes.
pub struct Counting {
    pub inner: Arc<dyn PrivateKeyOps>,
    pub signatures: AtomicUsize,
}

impl PrivateKeyOps for Counting {
    fn sign_pss_sha256(&self, key: &KeyId, digest: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        self.signatures.fetch_add(1, Ordering::SeqCst);
        self.inner.sign_pss_sha256(key, digest)
    }
    fn decrypt_pkcs1v15(&self, key: &KeyId, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.inner.decrypt_pkcs1v15(key, blob)
    }
}

/// `inst`'s authentication key behind a counting provider, as a TLS identity.
pub fn counted_identity(inst: &Institution) -> (TlsIdentity, Arc<Counting>) {
    let signing = keystore_of(inst).authentication().unwrap();
    let counting = Arc::new(Counting {
        inner: signing.ops.clone(),
        signatures: AtomicUsize::new(0),
    });
    let identity = TlsIdentity::new(&SigningKey {
        ops: counting.clone(),
        ..signing
    })
    .unwrap();
    (identity, counting)
}

// --- Fake servers -------------------------------------------------------------------------

/// The TLS configuration of the platform's server certificate.
pub fn server_tls() -> Arc<rustls::ServerConfig> {
    let p = pki();
    let chain = vec![CertificateDer::from(p.server.cert.to_der().unwrap())];
    let key = PrivateKeyDer::try_from(p.server.key.private_key_to_pkcs8().unwrap()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An answer of a fake server: status, content type, body.
pub type Answer = (u16, String, Vec<u8>);
pub type Handler =
    Arc<dyn Fn(usize, Bytes) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// A fake HTTPS server answering the `n`-th request (from 0) with `handler(n, body)`.
pub struct Fake {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// The request bodies, in order.
    pub bodies: Arc<std::sync::Mutex<Vec<Bytes>>>,
}

pub async fn fake_server(handler: Handler) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls());
    let (r, c, b) = (requests.clone(), connections.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (acceptor, handler, r, b) =
                (acceptor.clone(), handler.clone(), r.clone(), b.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, r, b) = (handler.clone(), r.clone(), b.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            b.lock().unwrap().push(body.clone());
                            let n = r.fetch_add(1, Ordering::SeqCst);
                            let (status, ct, answer) = handler(n, body).await;
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", ct)
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Fake {
        addr,
        requests,
        connections,
        bodies,
    }
}

/// A server that accepts TCP connections and never says anything (not even TLS).
pub async fn mute_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

/// A server that completes the TLS handshake, reads, and never answers.
pub async fn silent_tls_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}
