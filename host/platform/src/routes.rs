//! The HTTP routes, and the one place where failures become answers: SOA faults (HTTP 500,
//! spec §7) for the SOAP services, RFC 7807 problem details for REST.
//!
//! | method and path                                     | service                                  |
//! |-----------------------------------------------------|------------------------------------------|
//! | `POST /EtkDepot/v1`                                 | ETKDepot SOAP `GetEtk`                   |
//! | `GET /etee/v1/etks`                                 | ETKDepot REST: ETKs of a holder          |
//! | `GET /etee/v1/pubKeys/cacerts/jwks`                 | ETKDepot REST: the holder's keys as JWKS |
//! | `POST /Kgss/v1`                                     | KGSS SOAP `GetNewKey`, `GetKey`          |
//! | `POST /etee/v1/kgss/keys`                           | KGSS REST: a new key (sealed request)    |
//! | `POST /etee/v1/kgss/keys/retrieve`                  | KGSS REST: a key (sealed request)        |
//! | `DELETE /etee/v1/kgss/keys/{keyId}`                 | KGSS REST: the holder deletes a key      |
//! | `POST /etee/v1/keydepot/keys`                       | KeyDepot: register a key (writer)        |
//! | `GET /etee/v1/keydepot/keys/{keyId}`                | KeyDepot: one key                        |
//! | `PATCH /etee/v1/keydepot/keys/{keyId}/info`         | KeyDepot: add info (holder)              |
//! | `DELETE /etee/v1/keydepot/keys/{keyId}`             | KeyDepot: delete a key (holder)          |
//! | `GET /etee/v1/keydepot/keys/{keyId}/attestation`    | KeyDepot: the attestation                |
//! | `GET /etee/v1/keydepot/keys/{keyId}/holder`         | KeyDepot: the key's holder               |
//! | `GET /etee/v1/keydepot/holders/{type}/{value}/keys` | KeyDepot: a holder's keys                |
//! | `GET /health`                                       | liveness                                 |
//! | `GET /ready`                                        | readiness: the store answers             |
//! | `GET /metrics`                                      | Prometheus text ([`crate::metrics`])     |
//! | `GET /openapi.json`                                 | the OpenAPI description of the REST side |
//!
//! KGSS REST bodies are JSON: `{"sealedRequest": base64}` in, `{"keyId": base64,
//! "sealedResponse": base64}` out; the key itself only ever travels sealed. `keyId` in a
//! path is base64url without padding. See `docs/openapi/platform.json`.
//!
//! KeyDepot REST bodies are the JSON of `etee_services::keydepot` (`keyId` base64url without
//! padding, in paths too). Reads are open to any TLS client; writes need a client
//! certificate (401 without). Errors are problems titled `KEYDEPOT_*` (see
//! [`crate::keydepot::KeyDepotError`]).

use crate::etkdepot::{self, LookupError};
use crate::work::WorkError;
use crate::{unix_now, Platform};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use etee_services::etkdepot::jwks::{JwkSet, KeyUse};
use etee_services::etkdepot::rest::{EtkJson, Problem, PROBLEM_CONTENT_TYPE};
use etee_services::etkdepot::{GetEtkRequest, Identifier};
use etee_services::log::{LogSafe, Throttle};
use etee_services::soap::{self, Environment, Fault, SoaCode};
use etee_services::Error as MessageError;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;

const SOAP_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// The OpenAPI description of the REST services (`docs/openapi/platform.json`).
pub const OPENAPI: &str = include_str!("../../../docs/openapi/platform.json");

/// The platform's routes over `platform`.
pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/EtkDepot/v1", post(etkdepot_soap))
        .route("/etee/v1/etks", get(etks_rest))
        .route("/etee/v1/pubKeys/cacerts/jwks", get(jwks_rest))
        .route("/Kgss/v1", post(kgss_soap))
        .route("/etee/v1/kgss/keys", post(kgss_new_key_rest))
        .route("/etee/v1/kgss/keys/retrieve", post(kgss_get_key_rest))
        .route(
            "/etee/v1/kgss/keys/{key_id}",
            axum::routing::delete(kgss_delete_rest),
        )
        .route("/etee/v1/keydepot/keys", post(keydepot_register_rest))
        .route(
            "/etee/v1/keydepot/keys/{key_id}",
            get(keydepot_get_rest).delete(keydepot_delete_rest),
        )
        .route(
            "/etee/v1/keydepot/keys/{key_id}/info",
            axum::routing::patch(keydepot_add_info_rest),
        )
        .route(
            "/etee/v1/keydepot/keys/{key_id}/attestation",
            get(keydepot_attestation_rest),
        )
        .route(
            "/etee/v1/keydepot/keys/{key_id}/holder",
            get(keydepot_holder_rest),
        )
        .route(
            "/etee/v1/keydepot/holders/{id_type}/{value}/keys",
            get(keydepot_list_rest),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { json(OPENAPI.as_bytes().to_vec()) }),
        )
        .fallback(|| async { problem(Problem::new(404, "No such resource", None)) })
        // After the routes: it applies to those registered before it.
        .method_not_allowed_fallback(|| async {
            problem(Problem::new(405, "Method not allowed", None))
        })
        // Outermost last: the metrics count what the shares and the size check refuse.
        .layer(axum::middleware::from_fn_with_state(
            platform.clone(),
            within_share,
        ))
        .layer(axum::middleware::from_fn_with_state(
            platform.clone(),
            refuse_declared_oversize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            platform.clone(),
            crate::metrics::track,
        ))
        .with_state(platform)
}

/// Answers a request only within its caller's share ([`crate::share`]); the platform's
/// own routes (`/health`, `/ready`, `/metrics`, `/openapi.json`) are not counted.
async fn within_share(
    State(platform): State<Arc<Platform>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let key = request
        .extensions()
        .get::<crate::share::CallerKey>()
        .cloned();
    let Some(key) = key.filter(|_| crate::metrics::service_of(path) != "platform") else {
        return next.run(request).await;
    };
    let soap = is_soap(path);
    match platform.shares.enter(key).await {
        // The work the request starts holds the share too (see `WorkLimit::run`).
        Some(share) => crate::share::scope(share, next.run(request)).await,
        None => {
            let busy = WorkError::CallerBusy {
                max: platform.shares.per_caller(),
            };
            if soap {
                work_fault(&platform, &busy)
            } else {
                work_problem(&busy)
            }
        }
    }
}

/// Whether `path` is a SOAP service's: its errors are SOAP faults, not problems.
pub(crate) fn is_soap(path: &str) -> bool {
    matches!(path, "/EtkDepot/v1" | "/Kgss/v1")
}

/// How long a refused body is still read and discarded after the refusal, and how much
/// of it at most: closing on a client still sending resets the connection, which can
/// destroy the answer before the client reads it (RFC 9112 §9.6).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// Reads and drops what comes of `body` within [`LINGER`] and [`LINGER_BYTES`].
async fn discard(mut body: Body) {
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while read <= LINGER_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// Refuses a request whose declared `Content-Length` is over `max_body_bytes` before
/// reading any of its body: waiting for a body that would be refused anyway holds the
/// client until the request timeout. SOAP routes answer the fault of an oversized body
/// (SOA-03001), REST routes 413, and the connection is closed. What the client already
/// sends is discarded for a moment ([`discard`]); one that waits for `100 Continue`
/// sends nothing, and reading would invite the body.
async fn refuse_declared_oversize(
    State(platform): State<Arc<Platform>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = platform.config.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_none_or(|n| n <= limit as u64) {
        return next.run(request).await;
    }
    let e = MessageError::TooLarge {
        what: "request body",
        limit,
    };
    let (parts, body) = request.into_parts();
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        tokio::spawn(discard(body));
    }
    let path = parts.uri.path();
    let mut response = if is_soap(path) {
        message_fault(&platform, &e)
    } else {
        // The services' REST errors are titled with their business code.
        let title = match crate::metrics::service_of(path) {
            "keydepot" => "KEYDEPOT_INVALID_REQUEST",
            "kgss" => kgss_invalid_request(),
            _ => "Invalid request",
        };
        problem(Problem::new(e.http_status(), title, Some(e.to_string())))
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// How long `GET /ready` waits for the store's answer.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a check's result answers `GET /ready` again (probes of several load balancers,
/// or a caller asking in a loop, cost one store read a second).
pub const READY_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this many store calls of checks outstanding: one that hangs keeps its place
/// (and its connection) until it returns, and once this many hang the platform is
/// unready without asking. The PostgreSQL pool has a connection for each.
pub const READY_CHECKS: usize = 3;

/// `GET /ready`'s store checks: outside the work limit, one awaited at a time (probes that
/// arrive meanwhile wait for its answer), a result reused for [`READY_REUSE`] after it
/// came, and at most [`READY_CHECKS`] store calls outstanding (the pool has a connection
/// for each).
#[derive(Debug, Default)]
pub struct Readiness {
    /// The last check: when it ended, and whether the store answered.
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// Store calls of checks that have not returned (abandoned ones included).
    running: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a running check until dropped (also when its store call panics).
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Readiness {
    /// Whether the store answers a read, within [`READY_TIMEOUT`] of the question.
    async fn store_answers(&self, store: &Arc<dyn etee_store::Store>) -> bool {
        use std::sync::atomic::Ordering;
        use std::time::Instant;
        let asked = Instant::now();
        // A check under way ends within READY_TIMEOUT of its start, before ours ends.
        let Ok(mut last) = tokio::time::timeout(READY_TIMEOUT, self.last.lock()).await else {
            return false;
        };
        if let Some((ended, answered)) = *last {
            if ended.elapsed() < READY_REUSE {
                return answered;
            }
        }
        if self.running.fetch_add(1, Ordering::Relaxed) >= READY_CHECKS {
            self.running.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("readiness: {READY_CHECKS} store checks have not returned");
            *last = Some((Instant::now(), false));
            return false;
        }
        let running = Running(self.running.clone());
        let store = store.clone();
        let check = tokio::task::spawn_blocking(move || {
            let _running = running;
            store.request_seen(&[0; 32], unix_now())
        });
        let left = READY_TIMEOUT.saturating_sub(asked.elapsed());
        let answered = match tokio::time::timeout(left, check).await {
            Ok(Ok(Ok(_))) => true,
            Ok(Ok(Err(e))) => {
                tracing::error!("readiness: the store: {}", LogSafe(&e));
                false
            }
            Ok(Err(e)) => {
                tracing::error!("readiness: the check failed: {e}");
                false
            }
            Err(_) => {
                tracing::error!("readiness: the store did not answer in {READY_TIMEOUT:?}");
                false
            }
        };
        *last = Some((Instant::now(), answered));
        answered
    }
}

/// Whether the client may read `/ready` and `/metrics` (`status_access`); a refusal is
/// 403. A request without the connection's extensions (the router called directly) is
/// treated as a remote client without a certificate.
fn status_refused(platform: &Platform, extensions: &axum::http::Extensions) -> Option<Response> {
    let peer = extensions.get::<crate::caller::PeerAddr>().map(|p| p.0);
    let certified = extensions
        .get::<MaybeCaller>()
        .is_some_and(|c| c.0.is_some());
    let allowed = platform.config.status_access.allows(peer, certified);
    (!allowed).then(|| {
        problem(Problem::new(
            403,
            "Forbidden",
            Some("the platform's status is restricted (status_access)".into()),
        ))
    })
}

/// `GET /metrics` ([`crate::metrics::render`]), for the clients `status_access` allows.
async fn metrics(
    State(platform): State<Arc<Platform>>,
    request: axum::extract::Request,
) -> Response {
    if let Some(refused) = status_refused(&platform, request.extensions()) {
        return refused;
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        crate::metrics::render(&platform),
    )
        .into_response()
}

/// `GET /ready`: 200 when the store answers a read ([`Readiness`]), else 503
/// `store-unavailable` (the error in the log). For load balancers, beside the bare
/// liveness of `/health`. A busy platform is still ready (`busy` says so in the body,
/// with the work figures), and a probe never takes a turn from requests nor counts as a
/// refusal.
async fn ready(State(platform): State<Arc<Platform>>, request: axum::extract::Request) -> Response {
    if let Some(refused) = status_refused(&platform, request.extensions()) {
        return refused;
    }
    let (status, state) = if platform.readiness.store_answers(&platform.store).await {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store-unavailable")
    };
    let body = serde_json::json!({
        "status": state,
        "store": platform.store.backend_name(),
        "kgss": platform.kgss.is_some(),
        "busy": platform.work.in_use() >= platform.work.max(),
        "workInUse": platform.work.in_use(),
        "workLimit": platform.work.max(),
    });
    (status, json(body.to_string().into_bytes())).into_response()
}

/// The answer when a request took longer than the configured request timeout: a problem,
/// 408 while its body was still arriving (`arrived` false: the caller was slow) or 504 once
/// it had arrived whole (the work was slow), or for a SOAP request (`soap`: the environment
/// of its faults) the SOAP fault SOA-02001, which eHealth clients retry.
pub fn timeout_response(soap: Option<Environment>, arrived: bool) -> Response {
    static TIMEOUTS: Throttle = Throttle::new();
    let (status, title, detail) = if arrived {
        (
            504,
            "Work timeout",
            "the request arrived whole, but its work was not done in time",
        )
    } else {
        (
            408,
            "Request timeout",
            "the request's body was still arriving when its time ran out",
        )
    };
    if let Some(held_back) = TIMEOUTS.allow(unix_now()) {
        tracing::warn!(
            held_back,
            "a request took too long ({detail}): answered {status} (SOAP: SOA-02001) and the \
             connection closed"
        );
    }
    let mut response = match soap {
        Some(environment) => fault(Fault::from_code(
            SoaCode::ServiceUnavailable,
            Some(environment),
        )),
        None => problem(Problem::new(status, title, Some(detail.into()))),
    };
    // What is left of its body is not read: the connection ends here.
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

// --- Answers ------------------------------------------------------------------------------

/// Why a query string could not be read (axum's own text names the handler's types).
const QUERY_UNREADABLE: &str = "the query string cannot be read as name=value pairs";

/// Why the path parameters `what` could not be read, in the client's terms: axum's own text
/// names the handler's variables.
fn path_unreadable(e: &PathRejection, what: &str) -> String {
    use axum::extract::path::ErrorKind;
    match e {
        PathRejection::FailedToDeserializePathParams(e)
            if matches!(e.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
        {
            format!("{what}: not UTF-8 once percent-decoded")
        }
        _ => format!("{what}: cannot be read from the path"),
    }
}

fn problem(p: Problem) -> Response {
    let status = p
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        )],
        p.to_json(),
    )
        .into_response()
}

fn json(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn soap_ok(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(SOAP_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

fn fault(fault: Fault) -> Response {
    let body = soap::envelope(fault.to_element());
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(SOAP_CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

fn message_fault(platform: &Platform, e: &MessageError) -> Response {
    fault(Fault::from_error(e, Some(platform.config.environment)))
}

/// A SOAP request's body element read by `read`, for the SOAP service `service`. A header
/// block the request says must be understood is refused first, as SOAP 1.1 §4.2.3 asks;
/// the one the services understand is WS-Security's `Security` (the official clients of
/// the `_X509` and `_SamlHok` bindings send it so marked): accepted, its content not
/// evaluated, granting nothing (ETKDepot is a public lookup; KGSS takes its caller from
/// the sealed request). The error is the fault to answer.
fn soap_request<R>(
    platform: &Platform,
    service: &'static str,
    bytes: &[u8],
    read: fn(&etee_services::xml::Element) -> Result<R, MessageError>,
) -> Result<R, Box<Fault>> {
    let environment = Some(platform.config.environment);
    let refused = |e: MessageError| Box::new(Fault::from_error(&e, environment));
    let request = soap::parse_request(bytes).map_err(refused)?;
    if let Some(header) = request.not_understood {
        return Err(Box::new(Fault::must_understand(&header, environment)));
    }
    if request.security_header {
        tracing::debug!(
            service,
            "a WS-Security header was accepted and not evaluated (it grants nothing)"
        );
    }
    read(&request.payload).map_err(refused)
}

fn code_fault(platform: &Platform, code: SoaCode) -> Response {
    fault(Fault::from_code(code, Some(platform.config.environment)))
}

/// Reads a request body, refusing more than `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, MessageError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(MessageError::TooLarge {
            what: "request body",
            limit,
        }),
        Err(e) => Err(MessageError::MalformedXml(format!("reading the body: {e}"))),
    }
}

/// Logs a busy refusal, at most once a second (overload would repeat it thousands of
/// times; `etee_platform_work_refused_total` and `etee_platform_caller_refused_total`
/// count them all).
fn warn_busy(e: &WorkError, answer: &str) {
    static BUSY: Throttle = Throttle::new();
    if let Some(held_back) = BUSY.allow(unix_now()) {
        tracing::warn!(held_back, "{e}: a request refused ({answer})");
    }
}

/// A busy answer (REST or SOAP) with when to ask again: `Retry-After: 1`.
fn retry_in_a_second(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    response
}

/// The REST answer when blocking work got no turn (503, retryable) or failed (500).
fn work_problem(e: &WorkError) -> Response {
    match e {
        WorkError::Busy { .. } | WorkError::CallerBusy { .. } => {
            warn_busy(e, "503");
            retry_in_a_second(problem(Problem::new(
                503,
                "Service busy",
                Some(format!("{e}; retry later")),
            )))
        }
        WorkError::Failed(_) => {
            tracing::error!("{e}");
            problem(Problem::new(500, "Service error", None))
        }
    }
}

/// The SOAP answer when blocking work got no turn (SOA-02001, retryable) or failed.
fn work_fault(platform: &Platform, e: &WorkError) -> Response {
    match e {
        WorkError::Busy { .. } | WorkError::CallerBusy { .. } => {
            warn_busy(e, "SOA-02001");
            retry_in_a_second(code_fault(platform, SoaCode::ServiceUnavailable))
        }
        WorkError::Failed(_) => {
            tracing::error!("{e}");
            code_fault(platform, SoaCode::ServiceError)
        }
    }
}

// --- ETKDepot -----------------------------------------------------------------------------

async fn etkdepot_soap(State(platform): State<Arc<Platform>>, body: Body) -> Response {
    let bytes = match read_body(body, platform.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return message_fault(&platform, &e),
    };
    let p = platform.clone();
    // Parsing is CPU work of the sender's choosing: in the work pool with the lookup, off
    // the workers that serve every other connection.
    let answered = platform
        .work
        .run(move || {
            let request = soap_request(&p, "etkdepot", &bytes, GetEtkRequest::from_element)?;
            Ok::<_, Box<Fault>>(etkdepot::get_etk(p.store.as_ref(), &request, unix_now()))
        })
        .await;
    match answered {
        Ok(Err(f)) => fault(*f),
        Ok(Ok(Ok(response))) => soap_ok(soap::envelope(response.to_element())),
        Ok(Ok(Err(LookupError::Criteria(e)))) => {
            message_fault(&platform, &MessageError::Content(e))
        }
        // SOA-02001 (service unavailable) carries Retry, as a busy platform's does.
        Ok(Ok(Err(LookupError::Store(etee_store::Error::Busy(e))))) => {
            tracing::warn!("ETKDepot store busy: {}", LogSafe(&e));
            retry_in_a_second(code_fault(&platform, SoaCode::ServiceUnavailable))
        }
        Ok(Ok(Err(LookupError::Store(e)))) => {
            tracing::error!("ETKDepot store: {}", LogSafe(&e));
            code_fault(&platform, SoaCode::ServiceError)
        }
        Err(e) => work_fault(&platform, &e),
    }
}

/// The REST search criteria (spec §4.2): `identifier`, `type`, `applicationIdentifier`, and
/// for the JWKS `use`. Any other parameter is an unknown criterion.
fn criteria(
    query: &BTreeMap<String, String>,
    allowed_extra: &[&str],
) -> Result<Identifier, Problem> {
    let unknown = |d: String| Problem::unknown_search_criteria(Some(d));
    if let Some(k) = query.keys().find(|k| {
        !["identifier", "type", "applicationIdentifier"].contains(&k.as_str())
            && !allowed_extra.contains(&k.as_str())
    }) {
        return Err(unknown(format!("unknown parameter {k:?}")));
    }
    let value = query
        .get("identifier")
        .ok_or_else(|| unknown("the parameter identifier is required".into()))?;
    let id_type = query
        .get("type")
        .ok_or_else(|| unknown("the parameter type is required".into()))?;
    // The REST API names types case-insensitively (e.g. "nihii", "cbe").
    Ok(Identifier::new(
        &id_type.to_ascii_uppercase(),
        value,
        query.get("applicationIdentifier").map(String::as_str),
    ))
}

async fn lookup_rest(
    platform: &Arc<Platform>,
    query: &BTreeMap<String, String>,
    allowed_extra: &[&str],
) -> Result<Vec<etee_store::EtkRecord>, Response> {
    let criterion = criteria(query, allowed_extra).map_err(problem)?;
    let p = platform.clone();
    let found = platform
        .work
        .run(move || etkdepot::lookup(p.store.as_ref(), &[criterion], unix_now()))
        .await;
    match found {
        Ok(Ok(found)) if found.is_empty() => Err(problem(Problem::no_matching_etk())),
        Ok(Ok(found)) => Ok(found),
        Ok(Err(LookupError::Criteria(e))) => {
            Err(problem(Problem::unknown_search_criteria(Some(e))))
        }
        Ok(Err(LookupError::Store(etee_store::Error::Busy(e)))) => {
            tracing::warn!("ETKDepot store busy: {}", LogSafe(&e));
            Err(retry_in_a_second(problem(Problem::new(
                503,
                "Service busy",
                Some("the store was busy; retry later".into()),
            ))))
        }
        Ok(Err(LookupError::Store(e))) => {
            tracing::error!("ETKDepot store: {}", LogSafe(&e));
            Err(problem(Problem::new(500, "Service error", None)))
        }
        Err(e) => Err(work_problem(&e)),
    }
}

/// The query string of an ETKDepot REST lookup; one that cannot be read is a 400 problem.
fn search_query(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<BTreeMap<String, String>, Problem> {
    query
        .map(|Query(q)| q)
        .map_err(|_| Problem::unknown_search_criteria(Some(QUERY_UNREADABLE.into())))
}

async fn etks_rest(
    State(platform): State<Arc<Platform>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let query = match search_query(query) {
        Ok(q) => q,
        Err(p) => return problem(p),
    };
    match lookup_rest(&platform, &query, &[]).await {
        Ok(found) => json(EtkJson::list_to_json(&etkdepot::etks_json(&found))),
        Err(answer) => answer,
    }
}

async fn jwks_rest(
    State(platform): State<Arc<Platform>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let query = match search_query(query) {
        Ok(q) => q,
        Err(p) => return problem(p),
    };
    let key_use = match query.get("use").map(|u| KeyUse::from_name(u)) {
        None => None,
        Some(Some(u)) => Some(u),
        Some(None) => {
            return problem(Problem::unknown_search_criteria(Some(
                "use must be enc or sig".into(),
            )))
        }
    };
    let found = match lookup_rest(&platform, &query, &["use"]).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let mut sets = Vec::new();
    for record in &found {
        let Ok(etk) = etee_formats::etk::Etk::parse(&record.etk) else {
            continue;
        };
        for (u, cert) in [
            (KeyUse::Enc, etk.encryption_cert()),
            (KeyUse::Sig, etk.authentication_cert()),
        ] {
            if key_use.is_none_or(|k| k == u) {
                match JwkSet::from_certificates(std::slice::from_ref(cert), u) {
                    Ok(set) => sets.extend(set.keys),
                    Err(e) => tracing::warn!("JWKS: {}", LogSafe(&e)),
                }
            }
        }
    }
    json(JwkSet { keys: sets }.to_json())
}

// --- KGSS ---------------------------------------------------------------------------------

use crate::caller::MaybeCaller;
use crate::kgss::{Kgss, KgssError};
use base64::Engine as _;
use etee_services::kgss::{EteeError, EteeStatus, KgssRequest, KgssResponse, Operation};
use etee_services::soap::LangString;

/// At most this many refused seals a second are logged with their reason: the caller is
/// told the reason is in the log, and a bad seal costs its sender nothing to make.
const SEAL_LOGS_PER_SECOND: u32 = 20;

/// Lets [`SEAL_LOGS_PER_SECOND`] lines a second through; `Some(n)` for one let through,
/// `n` being how many were held back since the last one.
fn seal_log_allowed(now: i64) -> Option<u64> {
    // (second, lines let through in it, held back since the last line let through)
    static STATE: std::sync::Mutex<(i64, u32, u64)> = std::sync::Mutex::new((i64::MIN, 0, 0));
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if state.0 != now {
        state.0 = now;
        state.1 = 0;
    }
    if state.1 < SEAL_LOGS_PER_SECOND {
        state.1 += 1;
        Some(std::mem::take(&mut state.2))
    } else {
        state.2 += 1;
        None
    }
}

/// Logs a KGSS refusal; `answer` is the id the caller got with it (the SOAP answer's `Id`,
/// the problem's `instance`), by which an operator finds the line.
fn log_kgss_error(e: &KgssError, answer: &str) {
    match e {
        KgssError::Store(etee_store::Error::Busy(_)) => {
            tracing::warn!(answer, "KGSS: {}", LogSafe(&e))
        }
        KgssError::Custody(_) | KgssError::Store(_) => {
            tracing::error!(answer, "KGSS: {}", LogSafe(&e))
        }
        // The caller was told its reason is in the log: at warn, which the default filter
        // keeps. The reason is the unseal's verdict codes, never content or keys.
        KgssError::Seal(_) => {
            match seal_log_allowed(unix_now()) {
                Some(held_back) => {
                    tracing::warn!(answer, held_back, "KGSS refused: {}", LogSafe(&e))
                }
                // A flood: counted in the next warning, the reason kept at info.
                None => tracing::info!(answer, "KGSS refused: {}", LogSafe(&e)),
            }
        }
        _ => tracing::info!(answer, "KGSS refused: {}", LogSafe(&e)),
    }
}

/// A KGSS SOAP answer for a refused request: the status carries the HTTP-like code, the
/// `Error` the business code.
fn kgss_refusal(operation: Operation, e: &KgssError) -> KgssResponse {
    let id = etkdepot::response_id();
    log_kgss_error(e, &id);
    KgssResponse {
        operation,
        id: Some(id),
        status: EteeStatus {
            code: e.http_status().to_string(),
            message: Some(e.public_message()),
        },
        errors: vec![EteeError {
            code: e.code().into(),
            messages: vec![LangString {
                lang: Some("EN".into()),
                text: e.public_message(),
            }],
        }],
        sealed_content: None,
    }
}

async fn kgss_soap(State(platform): State<Arc<Platform>>, body: Body) -> Response {
    if platform.kgss.is_none() {
        return code_fault(&platform, SoaCode::ServiceUnavailable);
    }
    let bytes = match read_body(body, platform.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return message_fault(&platform, &e),
    };
    let p = platform.clone();
    // Parsed in the work pool, as ETKDepot's requests.
    let answered = platform
        .work
        .run(move || {
            let request = match soap_request(&p, "kgss", &bytes, KgssRequest::from_element) {
                Ok(r) => r,
                Err(f) => return Some(Err(f)),
            };
            let kgss = p.kgss.as_ref()?;
            let now = unix_now();
            let op = request.operation;
            let result = match op {
                Operation::GetNewKey => kgss
                    .get_new_key(p.store.as_ref(), &request.sealed_content, now)
                    .map(|k| k.sealed_response),
                Operation::GetKey => kgss.get_key(p.store.as_ref(), &request.sealed_content, now),
            };
            Some(Ok(match result {
                Ok(sealed) => {
                    let mut r = KgssResponse::ok(op, sealed);
                    r.id = Some(etkdepot::response_id());
                    r
                }
                Err(e) => kgss_refusal(op, &e),
            }))
        })
        .await;
    match answered {
        Ok(Some(Ok(response))) => soap_ok(soap::envelope(response.to_element())),
        Ok(Some(Err(f))) => fault(*f),
        Ok(None) => code_fault(&platform, SoaCode::ServiceUnavailable),
        Err(e) => work_fault(&platform, &e),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SealedRequestJson {
    sealed_request: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SealedResponseJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    sealed_response: String,
}

fn kgss_problem(e: &KgssError) -> Response {
    let id = etkdepot::response_id();
    log_kgss_error(e, &id);
    let status = e.http_status();
    let mut p = Problem::new(status, e.code(), Some(e.public_message()));
    p.instance = Some(id);
    retry_if_busy(status, problem(p))
}

/// A 503 (the store was busy; nothing was written) says when to send the request again.
fn retry_if_busy(status: u16, response: Response) -> Response {
    if status == 503 {
        retry_in_a_second(response)
    } else {
        response
    }
}

/// The business code of a KGSS request that cannot be read, body or sealed content:
/// `KGSS_INVALID_REQUEST`, the title of its REST problem (which our client and others map
/// by the `KGSS_` prefix).
fn kgss_invalid_request() -> &'static str {
    KgssError::Content(String::new()).code()
}

/// Reads `{"sealedRequest": base64}`; what is not is `KGSS_INVALID_REQUEST` (400, or 413
/// for a body over `max_body_bytes`).
async fn sealed_request(platform: &Platform, body: Body) -> Result<Vec<u8>, Response> {
    let bytes = read_body(body, platform.config.limits.max_body_bytes)
        .await
        .map_err(|e| {
            problem(Problem::new(
                e.http_status(),
                kgss_invalid_request(),
                Some(e.to_string()),
            ))
        })?;
    let parsed: SealedRequestJson = serde_json::from_slice(&bytes)
        .map_err(|e| kgss_problem(&KgssError::Content(format!("JSON: {e}"))))?;
    base64::engine::general_purpose::STANDARD
        .decode(parsed.sealed_request.as_bytes())
        .map_err(|e| kgss_problem(&KgssError::Content(format!("sealedRequest: {e}"))))
}

fn sealed_json(status: StatusCode, key_id: Option<&[u8]>, sealed: &[u8]) -> Response {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = SealedResponseJson {
        key_id: key_id.map(|k| b64.encode(k)),
        sealed_response: b64.encode(sealed),
    };
    (status, json(serde_json::to_vec(&body).unwrap_or_default())).into_response()
}

fn no_kgss() -> Response {
    problem(Problem::new(
        503,
        "KGSS is not served by this platform",
        None,
    ))
}

/// Runs KGSS logic on the blocking pool; a refusal becomes its problem answer.
async fn with_kgss<T: Send + 'static>(
    platform: &Arc<Platform>,
    f: impl FnOnce(&Kgss, &dyn etee_store::Store) -> Result<T, KgssError> + Send + 'static,
) -> Result<T, Response> {
    let p = platform.clone();
    let answered = platform
        .work
        .run(move || p.kgss.as_ref().map(|k| f(k, p.store.as_ref())))
        .await;
    match answered {
        Ok(Some(Ok(v))) => Ok(v),
        Ok(Some(Err(e))) => Err(kgss_problem(&e)),
        Ok(None) => Err(no_kgss()),
        Err(e) => Err(work_problem(&e)),
    }
}

async fn kgss_new_key_rest(State(platform): State<Arc<Platform>>, body: Body) -> Response {
    if platform.kgss.is_none() {
        return no_kgss();
    }
    let sealed = match sealed_request(&platform, body).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match with_kgss(&platform, move |k, store| {
        k.get_new_key(store, &sealed, unix_now())
    })
    .await
    {
        Ok(k) => sealed_json(StatusCode::CREATED, Some(&k.key_id), &k.sealed_response),
        Err(answer) => answer,
    }
}

async fn kgss_get_key_rest(State(platform): State<Arc<Platform>>, body: Body) -> Response {
    if platform.kgss.is_none() {
        return no_kgss();
    }
    let sealed = match sealed_request(&platform, body).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match with_kgss(&platform, move |k, store| {
        k.get_key(store, &sealed, unix_now())
    })
    .await
    {
        Ok(sealed) => sealed_json(StatusCode::OK, None, &sealed),
        Err(answer) => answer,
    }
}

async fn kgss_delete_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
    Extension(caller): Extension<MaybeCaller>,
) -> Response {
    if platform.kgss.is_none() {
        return no_kgss();
    }
    let Some(caller) = caller.0 else {
        return kgss_problem(&KgssError::Unauthenticated);
    };
    let key_id = match key_id {
        Ok(Path(k)) => k,
        Err(e) => return kgss_problem(&KgssError::Content(path_unreadable(&e, "the key id"))),
    };
    // The id as create returns it (standard base64) or in the URL-safe form; anything else
    // is a bad request, not an unknown key (which would read as "already deleted").
    let id = {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        URL_SAFE_NO_PAD
            .decode(key_id.as_bytes())
            .or_else(|_| URL_SAFE.decode(key_id.as_bytes()))
            .or_else(|_| STANDARD.decode(key_id.as_bytes()))
    };
    let Ok(id) = id else {
        return kgss_problem(&KgssError::Content(format!(
            "key id {key_id:?}: not base64 (standard or URL-safe)"
        )));
    };
    match with_kgss(&platform, move |k, store| {
        k.delete_key(store, &caller.identities, &id, unix_now())
    })
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(answer) => answer,
    }
}

// --- KeyDepot -----------------------------------------------------------------------------

use crate::keydepot::{self, KeyDepotError};
use etee_services::keydepot::{AddInfoRequest, KeyId, RegisterKeyRequest, RegisterKeyResponse};

fn keydepot_problem(e: &KeyDepotError) -> Response {
    match e {
        KeyDepotError::Store(etee_store::Error::Busy(_)) => {
            tracing::warn!("KeyDepot: {}", LogSafe(&e))
        }
        KeyDepotError::Store(_) => tracing::error!("KeyDepot: {}", LogSafe(&e)),
        _ => tracing::info!("KeyDepot refused: {}", LogSafe(&e)),
    }
    let status = e.http_status();
    retry_if_busy(
        status,
        problem(Problem::new(status, e.code(), Some(e.public_message()))),
    )
}

fn json_status(status: StatusCode, body: Vec<u8>) -> Response {
    (status, json(body)).into_response()
}

/// A `{keyId}` path segment as a key id; anything else (bad percent-encoding, bad base64,
/// wrong length) is a 400 problem.
fn path_key_id(path: Result<Path<String>, PathRejection>) -> Result<KeyId, KeyDepotError> {
    let Path(s) = path.map_err(|e| KeyDepotError::invalid(path_unreadable(&e, "the key id")))?;
    KeyId::from_url_string(&s).map_err(KeyDepotError::invalid)
}

/// The identities of an authenticated caller; writes refuse anybody else.
fn writer(caller: MaybeCaller) -> Result<Arc<crate::caller::Caller>, KeyDepotError> {
    caller.0.ok_or(KeyDepotError::Unauthenticated)
}

/// A JSON body, bounded by the configured limit.
/// A KeyDepot request body, bounded by `max_body_bytes` and parsed by `parse`.
async fn keydepot_body<R>(
    platform: &Platform,
    body: Body,
    parse: fn(&[u8]) -> Result<R, MessageError>,
) -> Result<R, Response> {
    let bytes = read_body(body, platform.config.limits.max_body_bytes)
        .await
        .map_err(|e| {
            problem(Problem::new(
                e.http_status(),
                "KEYDEPOT_INVALID_REQUEST",
                Some(e.to_string()),
            ))
        })?;
    parse(&bytes).map_err(|e| keydepot_problem(&KeyDepotError::invalid(e)))
}

/// Runs KeyDepot logic (the store, the proofs) on the blocking pool; a refusal becomes its
/// problem answer.
async fn with_keydepot<T: Send + 'static>(
    platform: &Arc<Platform>,
    f: impl FnOnce(&Platform) -> Result<T, KeyDepotError> + Send + 'static,
) -> Result<T, Response> {
    let p = platform.clone();
    match platform.work.run(move || f(&p)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(keydepot_problem(&e)),
        Err(e @ (WorkError::Busy { .. } | WorkError::CallerBusy { .. })) => Err(work_problem(&e)),
        Err(e) => {
            tracing::error!("{e}");
            Err(problem(Problem::new(500, "KEYDEPOT_SERVICE_ERROR", None)))
        }
    }
}

async fn keydepot_register_rest(
    State(platform): State<Arc<Platform>>,
    Extension(caller): Extension<MaybeCaller>,
    body: Body,
) -> Response {
    let caller = match writer(caller) {
        Ok(c) => c,
        Err(e) => return keydepot_problem(&e),
    };
    let request = match keydepot_body(&platform, body, RegisterKeyRequest::parse).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match with_keydepot(&platform, move |p| {
        keydepot::register(
            p.store.as_ref(),
            &p.anchors,
            &caller.identities,
            &request,
            unix_now(),
            p.config.limits.max_keys_per_holder,
        )
    })
    .await
    {
        Ok(key) => json_status(StatusCode::CREATED, RegisterKeyResponse { key }.to_json()),
        Err(answer) => answer,
    }
}

/// A KeyDepot read of the key named in the path, answered as JSON by `render`.
async fn keydepot_read<T: Send + 'static>(
    platform: &Arc<Platform>,
    key_id: Result<Path<String>, PathRejection>,
    read: fn(&dyn etee_store::Store, &KeyId) -> Result<T, KeyDepotError>,
    render: fn(T) -> Vec<u8>,
) -> Response {
    let key_id = match path_key_id(key_id) {
        Ok(k) => k,
        Err(e) => return keydepot_problem(&e),
    };
    match with_keydepot(platform, move |p| read(p.store.as_ref(), &key_id)).await {
        Ok(value) => json(render(value)),
        Err(answer) => answer,
    }
}

async fn keydepot_get_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
) -> Response {
    keydepot_read(&platform, key_id, keydepot::get, |k| k.to_json()).await
}

async fn keydepot_add_info_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
    Extension(caller): Extension<MaybeCaller>,
    body: Body,
) -> Response {
    let caller = match writer(caller) {
        Ok(c) => c,
        Err(e) => return keydepot_problem(&e),
    };
    let key_id = match path_key_id(key_id) {
        Ok(k) => k,
        Err(e) => return keydepot_problem(&e),
    };
    let request = match keydepot_body(&platform, body, AddInfoRequest::parse).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    match with_keydepot(&platform, move |p| {
        keydepot::add_info(
            p.store.as_ref(),
            &caller.identities,
            &key_id,
            &request.info,
            unix_now(),
        )
    })
    .await
    {
        Ok(key) => json(key.to_json()),
        Err(answer) => answer,
    }
}

async fn keydepot_delete_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
    Extension(caller): Extension<MaybeCaller>,
) -> Response {
    let caller = match writer(caller) {
        Ok(c) => c,
        Err(e) => return keydepot_problem(&e),
    };
    let key_id = match path_key_id(key_id) {
        Ok(k) => k,
        Err(e) => return keydepot_problem(&e),
    };
    match with_keydepot(&platform, move |p| {
        keydepot::delete(p.store.as_ref(), &caller.identities, &key_id, unix_now())
    })
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(answer) => answer,
    }
}

async fn keydepot_attestation_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
) -> Response {
    // Served as stored: the bytes the holder's attestation was registered as.
    keydepot_read(&platform, key_id, keydepot::attestation, |stored| stored).await
}

async fn keydepot_holder_rest(
    State(platform): State<Arc<Platform>>,
    key_id: Result<Path<String>, PathRejection>,
) -> Response {
    keydepot_read(&platform, key_id, keydepot::holder, |h| h.to_json()).await
}

async fn keydepot_list_rest(
    State(platform): State<Arc<Platform>>,
    holder: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let invalid = |e: String| keydepot_problem(&KeyDepotError::Invalid(e));
    let (id_type, value) = match holder {
        Ok(Path(h)) => h,
        Err(e) => return invalid(path_unreadable(&e, "the holder's type or value")),
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(_) => return invalid(QUERY_UNREADABLE.into()),
    };
    if let Some(k) = query.keys().find(|k| *k != "applicationIdentifier") {
        return invalid(format!("unknown parameter {k:?}"));
    }
    // An empty application id is no restriction, as an absent one.
    let application_id = query
        .get("applicationIdentifier")
        .filter(|a| !a.is_empty())
        .cloned();
    match with_keydepot(&platform, move |p| {
        keydepot::list(
            p.store.as_ref(),
            &id_type,
            &value,
            application_id.as_deref(),
        )
    })
    .await
    {
        Ok(list) => json(list.to_json()),
        Err(answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy store (nothing written) is a retryable 503 with `Retry-After` and its own
    /// business code on KGSS and KeyDepot; any other store failure stays a 500 without it.
    #[tokio::test]
    async fn a_busy_store_is_a_retryable_503_other_failures_a_500() {
        let busy = || etee_store::Error::Busy("lock timeout".into());
        let failed = || etee_store::Error::Backend("disk full".into());
        let title = |r: Response| async move {
            let status = r.status().as_u16();
            let retry = r.headers().get(axum::http::header::RETRY_AFTER).cloned();
            let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (
                status,
                retry.is_some(),
                v["title"].as_str().unwrap().to_owned(),
            )
        };
        assert_eq!(
            title(kgss_problem(&KgssError::Store(busy()))).await,
            (503, true, "KGSS_SERVICE_BUSY".into())
        );
        assert_eq!(
            title(kgss_problem(&KgssError::Store(failed()))).await,
            (500, false, "KGSS_SERVICE_ERROR".into())
        );
        assert_eq!(
            title(keydepot_problem(&KeyDepotError::Store(busy()))).await,
            (503, true, "KEYDEPOT_SERVICE_BUSY".into())
        );
        assert_eq!(
            title(keydepot_problem(&KeyDepotError::Store(failed()))).await,
            (500, false, "KEYDEPOT_SERVICE_ERROR".into())
        );
        // SOAP: the status and business code of the answer.
        let soap = kgss_refusal(Operation::GetKey, &KgssError::Store(busy()));
        assert_eq!(soap.status.code, "503");
        assert_eq!(soap.errors[0].code, "KGSS_SERVICE_BUSY");
    }

    #[test]
    fn refused_seals_are_logged_twenty_a_second_and_the_rest_counted() {
        let second = 1_000_000;
        for _ in 0..SEAL_LOGS_PER_SECOND {
            assert_eq!(seal_log_allowed(second), Some(0));
        }
        assert_eq!(seal_log_allowed(second), None);
        assert_eq!(seal_log_allowed(second), None);
        assert_eq!(seal_log_allowed(second + 1), Some(2));
        assert_eq!(seal_log_allowed(second + 1), Some(0));
    }

    /// Every route of [`router`] but the two SOAP endpoints is in the OpenAPI description
    /// with its methods, and nothing else is (parameter names aside).
    #[test]
    fn the_openapi_description_covers_the_rest_routes() {
        use etee_testpki::route_shape as shape;
        use std::collections::BTreeSet;
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("docs/openapi/platform.json");
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                let methods = item.as_object().expect("a path item");
                methods.keys().map(move |m| (shape(path), m.clone()))
            })
            .collect();
        let source = include_str!("routes.rs");
        let start = source.find("pub fn router(").expect("the router");
        let end = start + source[start..].find(".fallback(").expect("its fallback");
        let mut routed = BTreeSet::new();
        for route in source[start..end].split(".route(").skip(1) {
            let path = route
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split('"').next())
                .expect("a path");
            if matches!(path, "/EtkDepot/v1" | "/Kgss/v1") {
                continue;
            }
            for method in ["get", "post", "delete", "patch", "put"] {
                if route.contains(&format!("{method}(")) {
                    routed.insert((shape(path), method.to_owned()));
                }
            }
        }
        assert!(routed.len() > 12, "{routed:?}");
        assert_eq!(routed, described);
    }

    /// A timed-out REST request: 408 while its body was still arriving (the caller's
    /// slowness), 504 once it had arrived whole (the platform's); both problems, and the
    /// connection closed. (The body watching itself: `etee_services::body`, exercised by
    /// the appliance's server tests; a whole request's 504 end to end: the work limits'
    /// test in `tests/etkdepot.rs`.)
    #[tokio::test]
    async fn a_timeout_says_whose_slowness_it_was() {
        for (arrived, status, title) in
            [(false, 408, "Request timeout"), (true, 504, "Work timeout")]
        {
            let response = timeout_response(None, arrived);
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response
                    .headers()
                    .get(axum::http::header::CONNECTION)
                    .unwrap(),
                "close"
            );
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["title"], title);
            assert_eq!(problem["status"], status);
        }
    }
}
