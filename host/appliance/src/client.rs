//! A small client of the appliance's API over its Unix socket, for `etee demo`, the
//! end-to-end tests and the benchmark (medical software would use any HTTP client that
//! speaks over a Unix socket, e.g. `curl --unix-socket`).

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use std::io;
use std::path::Path;
use tokio::net::UnixStream;

/// A whole answer. `Debug` shows the body's length only: it may be unsealed content or a
/// KGSS key.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One kept-alive connection to the appliance's socket.
pub struct UnixClient<B = Full<Bytes>> {
    sender: SendRequest<B>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<B> UnixClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let stream = UnixStream::connect(path).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends a request; the answer's body is left to the caller (to stream it).
    pub async fn send(&mut self, request: Request<B>) -> io::Result<Response<Incoming>> {
        self.sender.ready().await.map_err(other)?;
        self.sender.send_request(request).await.map_err(other)
    }
}

impl UnixClient<Full<Bytes>> {
    /// Sends `method path` with `body` and reads the whole answer. `accept_json` asks for
    /// JSON answers where the API offers a choice.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        accept_json: bool,
    ) -> io::Result<Answer> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "appliance");
        if accept_json {
            request = request.header(hyper::header::ACCEPT, "application/json");
        }
        let request = request.body(Full::new(body.into())).map_err(other)?;
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(other)?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}
