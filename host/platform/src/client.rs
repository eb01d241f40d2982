//! A small HTTPS client for the platform's services: one kept-alive HTTP/1.1 connection
//! over rustls, optionally with a client certificate. The tests and the load client use
//! it; it is not the appliance's protocol client.

use crate::{PlatformError, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client configuration trusting `roots`, presenting `identity` (certificate chain
/// and key) when given.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| PlatformError::Tls(e.to_string()))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PlatformError::Tls(e.to_string()))?
        .with_root_certificates(store);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| PlatformError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// An answer: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// `Retry-After`, when the platform said when to retry (a busy 503).
    pub retry_after: Option<String>,
    pub body: Bytes,
}

/// One connection to the platform.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    /// Connects to `addr` and checks its certificate for `server_name`.
    pub async fn open(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| PlatformError::Tls(e.to_string()))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| PlatformError::Tls(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: format!("{server_name}:{}", addr.port()),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer> {
        self.send_bytes(method, path, content_type, Bytes::from(body))
            .await
    }

    /// [`Self::send`] with a shared body: the load client sends the same bytes many times
    /// without copying them.
    pub async fn send_bytes(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if let Some(ct) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, ct);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| PlatformError::Config(e.to_string()))?;
        self.sender
            .ready()
            .await
            .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| PlatformError::Io(std::io::Error::other(e)))?
            .to_bytes();
        Ok(Answer {
            status,
            content_type,
            retry_after,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Answer> {
        self.send("GET", path, None, Vec::new()).await
    }

    /// `POST path` with a SOAP 1.1 envelope.
    pub async fn soap(&mut self, path: &str, envelope: Vec<u8>) -> Result<Answer> {
        self.send("POST", path, Some("text/xml; charset=utf-8"), envelope)
            .await
    }
}
