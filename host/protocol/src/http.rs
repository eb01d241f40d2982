//! HTTPS exchanges with one endpoint: rustls + hyper 1 (HTTP/1.1), a few kept-alive
//! connections, timeouts, and bounded retries.
//!
//! Why its own client rather than a general-purpose one: the client certificate may be a
//! key in the HSM ([`crate::tls::TlsIdentity`]), answers must be bounded (a hostile or
//! broken server must not exhaust memory), and what may be retried is a protocol question
//! (spec §7), not a transport one:
//!
//! - connection failures (DNS, TCP, TLS handshake, or a kept-alive connection found closed
//!   before the request was written): nothing was sent, any request may go again;
//! - HTTP 502, 503, 504 (a gateway or the service said it did not serve the request, or,
//!   504 from `etee platform`, that its work ran out of time: as after the SOAP fault
//!   SOA-02001 it answers then, the work may still have ended, and a retried `GetNewKey`
//!   may leave a key nobody was told of);
//! - SOAP faults whose SOA code is retryable (SOA-00001, 01001, 01002, 02001).
//!
//! Anything else, a timeout while waiting for the answer in particular, is not retried: the
//! request may have been served.
//!
//! A request that must not be carried out twice ([`Repeat::Once`]: a KeyDepot registration
//! or deletion, a KGSS deletion) is retried only when the service cannot have carried it
//! out: nothing was sent, HTTP 503 (a refusal before any work: the platform's busy answer,
//! a gateway without a backend), a SOAP fault refusing the caller (SOA-01001, 01002) or a
//! busy fault (SOA-02001 with `Retry-After`, as the platform sends it when it refuses work).
//! After 502, 504 or another retryable fault it answers [`ProtocolError::OutcomeUnknown`].
//! `GetNewKey` is sent as [`Repeat::Safe`] on purpose: a retry after an unknown outcome
//! may leave a key nobody was told of, readable by its readers but used for nothing, which
//! is what the caller's own retry would leave too. Retries wait `backoff × 2^n`, or the server's
//! `Retry-After` (seconds, at most [`MAX_RETRY_AFTER`]) when that is longer, and stop
//! after `retries`.
//! Requests are rebuilt for each attempt by the caller's closure, since a KGSS request is
//! sealed with a signing time and the platform refuses a replayed one.

use crate::error::{ProtocolError, Result};
use etee_services::soap::{Fault, SoaCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Timeouts, retries and limits of an [`HttpClient`].
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// TCP connection and TLS handshake, per attempt.
    pub connect_timeout: Duration,
    /// Sending the request and reading the whole answer, per attempt.
    pub timeout: Duration,
    /// Attempts after the first one (see the module documentation for when).
    pub retries: u32,
    /// The first wait between attempts; doubled each time.
    pub backoff: Duration,
    /// Kept-alive connections held for reuse.
    pub max_idle: usize,
    /// The largest answer body accepted.
    pub max_body: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            retries: 2,
            backoff: Duration::from_millis(100),
            max_idle: 4,
            max_body: 8 * 1024 * 1024,
        }
    }
}

/// One request, relative to the endpoint's base path.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// Path (and query) appended to the base URL's path, starting with `/`.
    pub path: String,
    pub content_type: Option<&'static str>,
    pub soap_action: bool,
    pub body: Bytes,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            content_type: None,
            soap_action: false,
            body: Bytes::new(),
        }
    }

    pub fn delete(path: impl Into<String>) -> Self {
        Self {
            method: Method::DELETE,
            ..Self::get(path)
        }
    }

    /// A JSON body sent with `method`.
    pub fn json(method: Method, path: impl Into<String>, body: Vec<u8>) -> Self {
        Self {
            method,
            path: path.into(),
            content_type: Some("application/json"),
            soap_action: false,
            body: body.into(),
        }
    }

    /// A SOAP 1.1 envelope (`POST`, `text/xml`, empty `SOAPAction`).
    pub fn soap(path: impl Into<String>, envelope: Vec<u8>) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            content_type: Some(etee_services::soap::CONTENT_TYPE),
            soap_action: true,
            body: envelope.into(),
        }
    }
}

/// A whole answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    /// `Retry-After` in seconds, when the server said when to retry (a busy 503).
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// The longest `Retry-After` honoured: a server asking for more gets this (the caller
/// waits for its answer meanwhile).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How long to wait before the next attempt: the backoff, or the server's `Retry-After`
/// (bounded by [`MAX_RETRY_AFTER`]) when that is longer (pure).
pub fn retry_wait(backoff: Duration, retry_after: Option<Duration>) -> Duration {
    backoff.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// A `Retry-After` value in seconds (the HTTP-date form is not used by the platform and
/// is ignored).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().map(Duration::from_secs)
}

impl Response {
    /// Whether the body is declared as JSON (plain or problem).
    pub fn is_json(&self) -> bool {
        let ct = self.content_type.to_ascii_lowercase();
        ct.starts_with("application/json") || ct.starts_with("application/problem+json")
    }

    /// The SOAP fault this answer carries, if it is one.
    pub fn fault(&self) -> Option<Fault> {
        if self.status != etee_services::soap::FAULT_HTTP_STATUS {
            return None;
        }
        Fault::parse(&self.body).ok()
    }
}

/// Why an answer should be asked for again, if it should (spec §7; pure).
pub fn retry_reason(response: &Response) -> Option<String> {
    match retry_decision(response, Repeat::Safe) {
        Retry::Again(reason) => Some(reason),
        Retry::No | Retry::OutcomeUnknown(_) => None,
    }
}

/// Whether a request may be carried out twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Reads, and requests whose repetition is harmless: every retryable answer is retried.
    Safe,
    /// A request that must not be carried out twice: retried only when the service cannot
    /// have carried it out (see the module documentation).
    Once,
}

/// What to do after an answer (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The answer stands.
    No,
    /// Ask again, for this reason.
    Again(String),
    /// Not again, and the answer does not say whether the request was carried out.
    OutcomeUnknown(String),
}

/// [`Retry`] for `response` to a request of kind `repeat`.
pub fn retry_decision(response: &Response, repeat: Repeat) -> Retry {
    let (reason, refused_before_work) = match response.status {
        502..=504 => (format!("HTTP {}", response.status), response.status == 503),
        _ => {
            let Some(code) = response.fault().and_then(|f| f.soa_code()) else {
                return Retry::No;
            };
            if !code.is_retryable() {
                return Retry::No;
            }
            let refused = match code {
                SoaCode::NotAuthenticated | SoaCode::NotAuthorized => true,
                SoaCode::ServiceUnavailable => response.retry_after.is_some(),
                _ => false,
            };
            (format!("SOAP fault {}", SoaCode::code(code)), refused)
        }
    };
    match repeat {
        Repeat::Safe => Retry::Again(reason),
        Repeat::Once if refused_before_work => Retry::Again(reason),
        Repeat::Once => Retry::OutcomeUnknown(reason),
    }
}

/// The parts of a base URL `https://host[:port][/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
    /// Without a trailing `/`; empty for the root.
    pub prefix: String,
}

impl BaseUrl {
    /// Parses a base URL; only `https` is accepted, without query or fragment.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| ProtocolError::Endpoint(format!("{url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.query().is_some() || url.contains('#') {
            return Err(bad("a base URL has no query or fragment"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(443),
            prefix,
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// An HTTPS client of one endpoint. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: BaseUrl,
    authority: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    config: HttpConfig,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.inner.base)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// How one attempt ended.
enum Attempt {
    Answered(Response),
    /// Nothing was sent; may be retried.
    NotSent(ProtocolError),
    Failed(ProtocolError),
}

impl HttpClient {
    /// A client of `base_url` (`https://host[:port][/prefix]`) with the TLS configuration
    /// `tls` (roots, optional client identity).
    pub fn new(base_url: &str, tls: Arc<ClientConfig>, config: HttpConfig) -> Result<Self> {
        let base = BaseUrl::parse(base_url)?;
        let server_name = ServerName::try_from(base.host.clone())
            .map_err(|e| ProtocolError::Endpoint(format!("{base_url:?}: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                authority: base.authority(),
                base,
                server_name,
                connector: TlsConnector::from(tls),
                config,
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The endpoint.
    pub fn base(&self) -> &BaseUrl {
        &self.inner.base
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// Sends an idempotent request (the same bytes on every attempt).
    pub async fn send(&self, request: Request) -> Result<Response> {
        self.send_repeating(request, Repeat::Safe).await
    }

    /// Sends a request that must not be carried out twice ([`Repeat::Once`]).
    pub async fn send_once(&self, request: Request) -> Result<Response> {
        self.send_repeating(request, Repeat::Once).await
    }

    async fn send_repeating(&self, request: Request, repeat: Repeat) -> Result<Response> {
        self.send_with_repeat(
            || {
                let r = request.clone();
                async move { Ok(r) }
            },
            repeat,
        )
        .await
    }

    /// Sends the request `build` makes, building it afresh for each attempt. Returns the
    /// last answer, whatever its status, or the failure; see the module documentation for
    /// what is retried.
    pub async fn send_with<F, Fut>(&self, build: F) -> Result<Response>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Request>>,
    {
        self.send_with_repeat(build, Repeat::Safe).await
    }

    /// [`Self::send_with`] for a request of kind `repeat`.
    pub async fn send_with_repeat<F, Fut>(&self, mut build: F, repeat: Repeat) -> Result<Response>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Request>>,
    {
        let config = &self.inner.config;
        let mut attempt: u32 = 0;
        loop {
            let request = build().await?;
            let (reason, retry_after, last) = match self.attempt(request).await {
                Attempt::Answered(response) => match retry_decision(&response, repeat) {
                    Retry::Again(reason) => (reason, response.retry_after, Ok(response)),
                    Retry::No => return Ok(response),
                    Retry::OutcomeUnknown(reason) => {
                        return Err(ProtocolError::OutcomeUnknown { reason })
                    }
                },
                Attempt::NotSent(e) => (e.to_string(), None, Err(e)),
                Attempt::Failed(e) => return Err(e),
            };
            if attempt >= config.retries {
                return last;
            }
            let backoff = config.backoff.saturating_mul(1u32 << attempt.min(16));
            let wait = retry_wait(backoff, retry_after);
            attempt += 1;
            tracing::debug!(
                base = ?self.inner.base,
                attempt,
                "retrying in {wait:?} after {reason}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: a kept-alive connection if one is usable, else a new one.
    async fn attempt(&self, request: Request) -> Attempt {
        let mut request = Some(self.hyper_request(&request));
        loop {
            let Some(req) = request.take() else {
                return Attempt::Failed(ProtocolError::Io("request lost".into()));
            };
            let req = match req {
                Ok(r) => r,
                Err(e) => return Attempt::Failed(e),
            };
            let (mut sender, reused) = match self.idle_connection() {
                Some(s) => (s, true),
                None => match self.connect().await {
                    Ok(s) => (s, false),
                    Err(e) => return Attempt::NotSent(e),
                },
            };
            let timeout = self.inner.config.timeout;
            let exchange = async {
                let response = match sender.try_send_request(req).await {
                    Ok(r) => r,
                    Err(mut e) => {
                        return Err(match e.take_message() {
                            Some(unsent) => Err(unsent),
                            None => Ok(ProtocolError::Io(e.into_error().to_string())),
                        })
                    }
                };
                self.read(response).await.map_err(Ok)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Err(_) => {
                    return Attempt::Failed(ProtocolError::Timeout {
                        what: "request",
                        after: timeout,
                    })
                }
                Ok(Ok(response)) => {
                    self.put_back(sender);
                    return Attempt::Answered(response);
                }
                // A kept-alive connection closed under us before the request was written:
                // try again on another one.
                Ok(Err(Err(unsent))) if reused => request = Some(Ok(unsent)),
                Ok(Err(Err(_))) => {
                    return Attempt::NotSent(ProtocolError::Connect {
                        endpoint: self.inner.authority.clone(),
                        reason: "the connection closed before the request was sent".into(),
                    })
                }
                Ok(Err(Ok(e))) => return Attempt::Failed(e),
            }
        }
    }

    fn hyper_request(&self, r: &Request) -> Result<hyper::Request<Full<Bytes>>> {
        let path = format!("{}{}", self.inner.base.prefix, r.path);
        let mut builder = hyper::Request::builder()
            .method(r.method.clone())
            .uri(path)
            .header(hyper::header::HOST, &self.inner.authority)
            .header(
                hyper::header::ACCEPT,
                "application/json, application/problem+json, text/xml",
            );
        if let Some(ct) = r.content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        if r.soap_action {
            builder = builder.header("SOAPAction", "\"\"");
        }
        builder
            .body(Full::new(r.body.clone()))
            .map_err(|e| ProtocolError::InvalidRequest(e.to_string()))
    }

    async fn read(&self, response: hyper::Response<hyper::body::Incoming>) -> Result<Response> {
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
            .and_then(parse_retry_after);
        let limit = self.inner.config.max_body;
        let body = match Limited::new(response.into_body(), limit).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProtocolError::TooLarge { limit })
            }
            Err(e) => return Err(ProtocolError::Io(format!("reading the answer: {e}"))),
        };
        Ok(Response {
            status,
            content_type,
            retry_after,
            body,
        })
    }

    fn idle_connection(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.inner.config.max_idle {
            idle.push(sender);
        }
    }

    /// DNS, TCP, TLS and the HTTP/1.1 handshake, within the connect timeout.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let after = self.inner.config.connect_timeout;
        match tokio::time::timeout(after, self.connect_unbounded()).await {
            Ok(r) => r,
            Err(_) => Err(ProtocolError::Timeout {
                what: "connect",
                after,
            }),
        }
    }

    async fn connect_unbounded(&self) -> Result<SendRequest<Full<Bytes>>> {
        let inner = &self.inner;
        let failed = |reason: String| ProtocolError::Connect {
            endpoint: inner.authority.clone(),
            reason,
        };
        let addrs = tokio::net::lookup_host((inner.base.host.as_str(), inner.base.port))
            .await
            .map_err(|e| failed(format!("resolving: {e}")))?;
        let mut last = failed("no address".into());
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = failed(format!("{addr}: {e}")),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let tls = inner
            .connector
            .connect(inner.server_name.clone(), tcp)
            .await
            .map_err(|e| match crate::tls::key_failure(&e) {
                Some(key) => ProtocolError::Key(key),
                None => failed(format!("TLS handshake: {e}")),
            })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// Percent-encodes a query value or path segment (everything but RFC 3986 unreserved).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use etee_services::soap::Fault;

    fn answer(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "text/xml".into(),
            retry_after: None,
            body: body.into(),
        }
    }

    #[test]
    fn a_server_asking_for_a_longer_wait_gets_it_within_a_bound() {
        let ms = Duration::from_millis;
        assert_eq!(parse_retry_after(" 1 "), Some(Duration::from_secs(1)));
        for bad in [
            "",
            "-1",
            "1.5",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "99999999999999999999",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
        assert_eq!(retry_wait(ms(100), None), ms(100));
        assert_eq!(retry_wait(ms(100), Some(ms(1000))), ms(1000));
        assert_eq!(retry_wait(ms(400), Some(ms(0))), ms(400));
        assert_eq!(
            retry_wait(ms(100), Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn base_urls() {
        let b = BaseUrl::parse("https://services-acpt.ehealth.fgov.be").unwrap();
        assert_eq!((b.port, b.prefix.as_str()), (443, ""));
        assert_eq!(b.authority(), "services-acpt.ehealth.fgov.be");
        let b = BaseUrl::parse("https://127.0.0.1:8443/platform/").unwrap();
        assert_eq!(
            b,
            BaseUrl {
                host: "127.0.0.1".into(),
                port: 8443,
                prefix: "/platform".into()
            }
        );
        assert_eq!(b.authority(), "127.0.0.1:8443");
        let b = BaseUrl::parse("https://[::1]:9/").unwrap();
        assert_eq!((b.host.as_str(), b.authority()), ("::1", "[::1]:9".into()));
        for bad in ["http://x", "x", "https://x/?q=1", "https://x/#f", ""] {
            assert!(
                matches!(BaseUrl::parse(bad), Err(ProtocolError::Endpoint(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn what_is_retried() {
        let fault = |c| Fault::from_code(c, None).to_xml();
        for c in ["SOA-00001", "SOA-01001", "SOA-01002", "SOA-02001"] {
            let code = SoaCode::from_code(c).unwrap();
            assert!(retry_reason(&answer(500, fault(code))).is_some(), "{c}");
        }
        assert!(retry_reason(&answer(500, fault(SoaCode::MalformedMessage))).is_none());
        assert!(retry_reason(&answer(500, b"<not xml".to_vec())).is_none());
        for s in [502, 503, 504] {
            assert!(retry_reason(&answer(s, vec![])).is_some());
        }
        for s in [200, 400, 404, 409, 500] {
            assert!(retry_reason(&answer(s, vec![])).is_none());
        }
        // A fault answered with 200 is not a fault.
        assert!(retry_reason(&answer(200, fault(SoaCode::ServiceUnavailable))).is_none());
    }

    /// A request that must not be carried out twice is asked again only after answers
    /// that say it was not carried out; after the others its outcome is unknown.
    #[test]
    fn what_is_retried_of_a_request_not_to_be_done_twice() {
        let fault = |c: &str| Fault::from_code(SoaCode::from_code(c).unwrap(), None).to_xml();
        let once = |r: &Response| retry_decision(r, Repeat::Once);
        let busy = |mut r: Response| {
            r.retry_after = Some(Duration::from_secs(1));
            r
        };
        assert!(matches!(once(&answer(503, vec![])), Retry::Again(_)));
        for s in [502, 504] {
            assert_eq!(
                once(&answer(s, vec![])),
                Retry::OutcomeUnknown(format!("HTTP {s}"))
            );
            assert_eq!(
                retry_decision(&answer(s, vec![]), Repeat::Safe),
                Retry::Again(format!("HTTP {s}"))
            );
        }
        for c in ["SOA-01001", "SOA-01002"] {
            assert!(
                matches!(once(&answer(500, fault(c))), Retry::Again(_)),
                "{c}"
            );
        }
        // The platform's busy fault carries Retry-After; its timeout fault does not.
        assert!(matches!(
            once(&busy(answer(500, fault("SOA-02001")))),
            Retry::Again(_)
        ));
        for c in ["SOA-02001", "SOA-00001"] {
            assert!(
                matches!(once(&answer(500, fault(c))), Retry::OutcomeUnknown(_)),
                "{c}"
            );
        }
        for r in [
            answer(200, vec![]),
            answer(404, vec![]),
            answer(500, fault("SOA-03001")),
        ] {
            assert_eq!(once(&r), Retry::No);
        }
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode_component("NIHII-PHARMACY"), "NIHII-PHARMACY");
        assert_eq!(encode_component("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
