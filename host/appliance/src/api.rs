//! The HTTP API for medical software (described in `docs/openapi/appliance.json`, served
//! at `/openapi.json`). Each handler: who is calling (the [`Peer`] the listener put in the
//! request), may it (the configured operations), then the service; errors become RFC 7807
//! problems whose `title` is the code of [`ServiceError::code`]. Bodies stream in both
//! directions; nothing of a message's content or keys is logged.

use crate::config::Operation;
use crate::policy::Peer;
use crate::service::{Appliance, Opened, SealRequest, Sealed, ServiceError};
use crate::spool::SpoolReader;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use etee_formats::ocsp::NotVouched;
use etee_services::etkdepot::Identifier;
use etee_services::kgss::{vocabulary, Credential};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// The OpenAPI description of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi/appliance.json");

/// Content type of sealed messages.
pub const SEALED_TYPE: &str = "application/pkcs7-mime";

pub fn router(app: Arc<Appliance>) -> Router {
    Router::new()
        .route("/v1/seal", post(seal))
        .route("/v1/unseal", post(unseal))
        .route("/v1/etks", get(etks))
        .route("/v1/kgss/keys", post(kgss_new_key))
        .route(
            "/v1/kgss/keys/{key_id}",
            get(kgss_get_key).delete(kgss_delete),
        )
        .route("/v1/keydepot/keys", post(keydepot_register))
        .route(
            "/v1/keydepot/keys/{key_id}",
            get(keydepot_get).delete(keydepot_delete),
        )
        .route(
            "/v1/keydepot/holders/{id_type}/{value}/keys",
            get(keydepot_list),
        )
        .route("/v1/audit", get(audit))
        // Every API route above, from its start until its answer's status and headers
        // are ready (waiting for a slot included): etee_appliance_requests_in_flight.
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_in_flight,
        ))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        // After every route: the fallbacks cover only the routes registered before them.
        .fallback(|| async {
            problem(&ServiceError::NotFound(
                "no such route (see /openapi.json)".into(),
            ))
        })
        .method_not_allowed_fallback(|| async {
            problem(&ServiceError::MethodNotAllowed(
                "this method is not allowed on this route (see /openapi.json)".into(),
            ))
        })
        // Answers hold keys, unsealed content and verdicts: no cache may keep them.
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            },
        ))
        .with_state(app)
}

type Answer = Result<Response, ServiceError>;

/// Counts an API request in `etee_appliance_requests_in_flight` while it is handled.
async fn count_in_flight(
    State(app): State<Arc<Appliance>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _in_flight = app.metrics.start();
    next.run(request).await
}

/// Status of each error.
fn status(e: &ServiceError) -> StatusCode {
    use crate::policy::Refusal;
    match e {
        ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ServiceError::Refused(Refusal::UnknownCaller(_)) => StatusCode::FORBIDDEN,
        ServiceError::Refused(Refusal::NotAllowed { .. }) => StatusCode::FORBIDDEN,
        ServiceError::CustodyRefused(_)
        | ServiceError::KgssAccessDenied(_)
        | ServiceError::PlatformRefused(_) => StatusCode::FORBIDDEN,
        ServiceError::HsmUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::UnknownRecipient(_)
        | ServiceError::KgssUnknownKey(_)
        | ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Platform(_) => StatusCode::BAD_GATEWAY,
        // The sender's own certificate: said not good (a state to fix, not to retry), no
        // answer (retry later), or a configuration to fix.
        ServiceError::OwnCertificate { why, .. } => match why {
            etee_formats::ocsp::NotVouched::NotGood => StatusCode::CONFLICT,
            etee_formats::ocsp::NotVouched::NoAnswer => StatusCode::SERVICE_UNAVAILABLE,
            etee_formats::ocsp::NotVouched::Misconfigured => StatusCode::INTERNAL_SERVER_ERROR,
        },
        ServiceError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        ServiceError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        ServiceError::WorkTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ServiceError::Conflict(_)
        | ServiceError::TooManyKeys(_)
        | ServiceError::KeyDepotConflict(_) => StatusCode::CONFLICT,
        ServiceError::AuditUnreadable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ServiceError::Busy { .. } | ServiceError::CustodyRateLimited { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ServiceError::TooLarge(_) | ServiceError::ContentTooLargeForJson { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as `application/problem+json`.
pub fn problem(e: &ServiceError) -> Response {
    let status = status(e);
    let body = json!({
        "type": "about:blank",
        "title": e.code(),
        "status": status.as_u16(),
        "detail": e.to_string(),
    });
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response();
    // Also on a problem made outside the router (the request timeout), which the
    // router's layer does not reach.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = retry_after(e) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// When a refusal that may pass by itself is worth asking again (`Retry-After`, seconds).
fn retry_after(e: &ServiceError) -> Option<u64> {
    match e {
        // The client's own operations free its slots; one second is a fair first retry.
        ServiceError::Busy { .. } => Some(1),
        // The custody core says when its budget has refilled enough: in whole seconds,
        // rounded up, so that a retry at that time is not refused again for being early.
        ServiceError::CustodyRateLimited { retry_after_ms } => Some(retry_after_ms.div_ceil(1000)),
        // The session pool re-initialises the token and re-finds its keys on the next use.
        ServiceError::HsmUnavailable(_) => Some(1),
        // A certificate with no usable answer is not asked about again for this long.
        ServiceError::OwnCertificate {
            why: NotVouched::NoAnswer,
            ..
        } => Some(etee_formats::ocsp::UNREACHABLE_BACKOFF.unsigned_abs()),
        _ => None,
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// Records the request in the metrics and the log, and turns an error into a problem.
fn finish(
    app: &Appliance,
    operation: &'static str,
    peer: &Peer,
    started: Instant,
    answer: Answer,
) -> Response {
    let elapsed = started.elapsed();
    let (outcome, response) = match answer {
        Ok(r) if r.status() == StatusCode::UNPROCESSABLE_ENTITY => {
            tracing::info!(%peer, operation, outcome = "rejected", "the message failed the checks; no content released");
            ("rejected", r)
        }
        Ok(r) => ("ok", r),
        Err(e) => {
            let outcome = match status(&e) {
                StatusCode::FORBIDDEN => "refused",
                StatusCode::TOO_MANY_REQUESTS => "busy",
                s if s.is_client_error() => "invalid",
                _ => "failed",
            };
            let error = etee_services::log::LogSafe(&e);
            // A client over its share repeats this as fast as it retries: once a second
            // (the metrics count every one).
            static BUSY: etee_services::log::Throttle = etee_services::log::Throttle::new();
            if outcome != "busy" {
                tracing::info!(%peer, operation, outcome, code = e.code(), %error, "request failed");
            } else if let Some(held_back) = BUSY.allow(etee_formats::unix_now()) {
                tracing::info!(%peer, operation, outcome, code = e.code(), %error, held_back, "request failed");
            }
            (outcome, problem(&e))
        }
    };
    tracing::debug!(%peer, operation, outcome, ms = elapsed.as_millis() as u64, "request");
    app.metrics.request(operation, outcome, elapsed);
    response
}

/// A body whose Content-Length is over `max_body_bytes` is refused before it is read (413
/// at once, not when the limit is reached, nor a timeout for a sender that never sends it).
fn declared_length_fits(max: u64, headers: &HeaderMap) -> Result<(), ServiceError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > max => Err(ServiceError::TooLarge(max)),
        _ => Ok(()),
    }
}

/// The request body as a blocking reader (for the blocking pool).
fn body_reader(body: Body) -> impl Read + Send + 'static {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream))
}

/// A spool as a streamed response body (read on the blocking pool, 256 KiB at a time).
fn spool_body(app: Arc<Appliance>, spool: SpoolReader) -> Body {
    // A spool still in memory is the whole body, read without I/O.
    let mut spool = match spool.into_memory() {
        Ok(bytes) => {
            app.metrics.bytes(0, bytes.len() as u64);
            return Body::from(bytes);
        }
        Err(on_disk) => on_disk,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || loop {
        let mut chunk = vec![0u8; 256 * 1024];
        match spool.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                chunk.truncate(n);
                app.metrics.bytes(0, n as u64);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    break; // the caller went away
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Whether the caller asked for the JSON answer rather than `binary` (the route's other
/// type): only when its `Accept` header ranks `application/json` strictly above `binary`
/// by q-values (wildcards count for the types they match; q=0 is "not acceptable"). No
/// header, or a tie, gives the binary answer, so a client listing every type it knows (as
/// generated clients do) gets the route's first one.
fn wants_json(headers: &HeaderMap, binary: &str) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept_quality(accept, "application/json") > accept_quality(accept, binary)
}

/// The q-value `accept` gives `media_type` (its most specific matching range; 0 if none),
/// in thousandths (RFC 9110 §12.5.1).
fn accept_quality(accept: &str, media_type: &str) -> u16 {
    let (kind, _) = media_type.split_once('/').unwrap_or((media_type, ""));
    let mut best: Option<(u8, u16)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let specificity = if name == media_type {
            3
        } else if name.strip_suffix("/*") == Some(kind) {
            2
        } else if name == "*/*" {
            1
        } else {
            continue;
        };
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1000, |(_, v)| {
                v.trim()
                    .parse::<f32>()
                    .map_or(0, |q| (q.clamp(0.0, 1.0) * 1000.0).round() as u16)
            });
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0, |(_, q)| q)
}

/// JSON with every non-ASCII character escaped, fit for an HTTP header.
fn header_json(value: &Value) -> HeaderValue {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("{}"))
}

fn read_all(spool: &mut SpoolReader, max: u64) -> Result<Vec<u8>, ServiceError> {
    if spool.len() > max {
        return Err(ServiceError::ContentTooLargeForJson {
            len: spool.len(),
            max,
        });
    }
    let mut v = Vec::with_capacity(spool.len() as usize);
    spool
        .read_to_end(&mut v)
        .map_err(|e| ServiceError::Io(e.to_string()))?;
    Ok(v)
}

// ---- reader conditions and recipients ----------------------------------------------------

/// A reader condition: `doctor`, `recognised-pharmacy`, `patient:SSIN`, or
/// `NAMESPACE|NAME[|VALUE]` (a SAML attribute as KGSS evaluates it, spec §5.1).
pub fn credential(spec: &str) -> Result<Credential, ServiceError> {
    let spec = spec.trim();
    Ok(match spec {
        "doctor" => vocabulary::any_doctor(),
        "recognised-pharmacy" | "recognized-pharmacy" => vocabulary::recognised_pharmacy(),
        _ => {
            if let Some(ssin) = spec.strip_prefix("patient:") {
                if ssin.len() != 11 || !ssin.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ServiceError::BadRequest(format!(
                        "reader {spec:?}: a patient's SSIN is 11 digits"
                    )));
                }
                vocabulary::patient(ssin)
            } else {
                let parts: Vec<&str> = spec.split('|').collect();
                match parts.as_slice() {
                    [ns, name] if !ns.is_empty() && !name.is_empty() => {
                        Credential::new(ns, name, &[])
                    }
                    [ns, name, value] if !ns.is_empty() && !name.is_empty() => {
                        Credential::new(ns, name, &[value])
                    }
                    _ => {
                        return Err(ServiceError::BadRequest(format!(
                            "reader {spec:?}: doctor, recognised-pharmacy, patient:SSIN or \
                             NAMESPACE|NAME[|VALUE]"
                        )))
                    }
                }
            }
        }
    })
}

/// A recipient: `TYPE:VALUE[:APPLICATION]` (for example `NIHII-PHARMACY:27150201`).
pub fn recipient(spec: &str) -> Result<Identifier, ServiceError> {
    let parts: Vec<&str> = spec.trim().splitn(3, ':').collect();
    match parts.as_slice() {
        [t, v] if !t.is_empty() && !v.is_empty() => Ok(Identifier::new(t, v, None)),
        [t, v, app] if !t.is_empty() && !v.is_empty() && !app.is_empty() => {
            Ok(Identifier::new(t, v, Some(app)))
        }
        _ => Err(ServiceError::BadRequest(format!(
            "recipient {spec:?}: TYPE:VALUE[:APPLICATION], e.g. NIHII-PHARMACY:27150201"
        ))),
    }
}

/// Most recipients (`to`) one seal takes: each is an ETK lookup and a recipient info.
pub const MAX_RECIPIENTS: usize = 256;

/// Most reader conditions (`allow` and `exclude` together) of one KGSS key: what the
/// platform's KGSS takes.
pub use etee_services::kgss::MAX_READER_CONDITIONS;

/// Adds `item` to `list` unless it is there already (a repeated recipient or condition
/// means nothing more); refuses more than `max` different ones.
fn push_once<T: PartialEq>(
    list: &mut Vec<T>,
    item: T,
    max: usize,
    what: &str,
) -> Result<(), ServiceError> {
    if list.contains(&item) {
        return Ok(());
    }
    if list.len() >= max {
        return Err(ServiceError::BadRequest(format!(
            "more than {max} different {what}"
        )));
    }
    list.push(item);
    Ok(())
}

/// The reader conditions of a KGSS key: each parsed ([`credential`]), repeats dropped, at
/// most [`MAX_READER_CONDITIONS`] in `allowed` and `excluded` together.
pub fn reader_conditions(
    allowed: &[impl AsRef<str>],
    excluded: &[impl AsRef<str>],
) -> Result<(Vec<Credential>, Vec<Credential>), ServiceError> {
    let (mut a, mut e) = (Vec::new(), Vec::new());
    for s in allowed {
        push_once(
            &mut a,
            credential(s.as_ref())?,
            MAX_READER_CONDITIONS,
            "reader conditions",
        )?;
    }
    for s in excluded {
        let max = MAX_READER_CONDITIONS.saturating_sub(a.len());
        push_once(&mut e, credential(s.as_ref())?, max, "reader conditions")?;
    }
    Ok((a, e))
}

/// `to=…&allow=…&exclude=…` of `POST /v1/seal`. A repeated recipient or condition counts
/// once.
pub fn seal_request(query: &str) -> Result<SealRequest, ServiceError> {
    let mut r = SealRequest::default();
    let (mut allowed, mut excluded) = (Vec::new(), Vec::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "to" => push_once(&mut r.to, recipient(&v)?, MAX_RECIPIENTS, "recipients")?,
            // Bounded as written (before parsing): thousands of conditions stop here.
            "allow" => push_once(
                &mut allowed,
                v.into_owned(),
                MAX_READER_CONDITIONS,
                "reader conditions",
            )?,
            "exclude" => push_once(
                &mut excluded,
                v.into_owned(),
                MAX_READER_CONDITIONS,
                "reader conditions",
            )?,
            other => {
                return Err(ServiceError::BadRequest(format!(
                    "unknown parameter {other:?} (to, allow, exclude)"
                )))
            }
        }
    }
    (r.allowed, r.excluded) = reader_conditions(&allowed, &excluded)?;
    if r.allowed.is_empty() && !r.excluded.is_empty() {
        return Err(ServiceError::BadRequest(
            "exclude needs at least one allow".into(),
        ));
    }
    Ok(r)
}

// ---- handlers ----------------------------------------------------------------------------

async fn seal(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Seal)?;
        declared_length_fits(app.config().limits.max_body_bytes, &headers)?;
        let request = seal_request(query.as_deref().unwrap_or(""))?;
        // A JSON answer carries at most this much (checked before a KGSS key is made).
        let max_sealed =
            wants_json(&headers, SEALED_TYPE).then_some(app.config().limits.max_json_content_bytes);
        let client = app.take_slot(client).await?;
        let Sealed {
            mut message,
            recipients,
            kgss_key_id,
            content_len,
        } = app
            .seal(&client, request, body_reader(body), max_sealed)
            .await?;
        app.metrics.bytes(content_len, 0);
        let key_id = kgss_key_id.as_deref().map(|k| B64.encode(k));
        if max_sealed.is_some() {
            let sealed = read_all(&mut message, app.config().limits.max_json_content_bytes)?;
            app.metrics.bytes(0, sealed.len() as u64);
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "sealed": B64.encode(sealed),
                    "recipients": recipients,
                    "kgssKeyId": key_id,
                }),
            ));
        }
        let mut response = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, SEALED_TYPE)
            .header(header::CONTENT_LENGTH, message.len())
            .header("etee-recipients", recipients.len());
        if let Some(id) = key_id {
            response = response.header("etee-kgss-key-id", id);
        }
        response
            .body(spool_body(app.clone(), message))
            .map_err(|e| ServiceError::Io(e.to_string()))
    }
    .await;
    finish(&app, "seal", &peer, started, answer)
}

async fn unseal(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Unseal)?;
        declared_length_fits(app.config().limits.max_body_bytes, &headers)?;
        no_query(query)?;
        let client = app.take_slot(client).await?;
        let Opened {
            mut report,
            content,
            kgss_key_id,
            message_len,
            ..
        } = app.unseal(&client, body_reader(body)).await?;
        app.metrics.bytes(message_len, 0);
        report["kgss_key_id"] = json!(kgss_key_id.map(|k| B64.encode(k)));
        let Some(mut content) = content else {
            // Not clean: the verdict, and no content.
            return Ok(json_response(StatusCode::UNPROCESSABLE_ENTITY, &report));
        };
        if wants_json(&headers, "application/octet-stream") {
            let bytes = read_all(&mut content, app.config().limits.max_json_content_bytes)?;
            app.metrics.bytes(0, bytes.len() as u64);
            report["content"] = json!(B64.encode(bytes));
            return Ok(json_response(StatusCode::OK, &report));
        }
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, content.len())
            .header("etee-verdict", header_json(&report))
            .body(spool_body(app.clone(), content))
            .map_err(|e| ServiceError::Io(e.to_string()))
    }
    .await;
    finish(&app, "unseal", &peer, started, answer)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EtkQuery {
    #[serde(rename = "type")]
    id_type: String,
    identifier: String,
    application_identifier: Option<String>,
}

async fn etks(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Etk)?;
        let q: EtkQuery = serde_urlencoded_query(query.as_deref().unwrap_or(""))?;
        let _admitted = app.take_slot(client).await?;
        let id = Identifier::new(
            &q.id_type,
            &q.identifier,
            q.application_identifier.as_deref(),
        );
        let etks = app.etks(&id).await?;
        let list: Vec<Value> = etks
            .iter()
            .map(|etk| {
                let c = etk.encryption_cert();
                json!({
                    "subject": c.subject_string(),
                    "serial": c.serial_decimal(),
                    "notAfter": crate::report::rfc3339(c.not_after()),
                    "identities": etk.identities(),
                    "etk": B64.encode(etk.der()),
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &Value::Array(list)))
    }
    .await;
    finish(&app, "etk", &peer, started, answer)
}

/// A query string into a struct (unknown or missing parameters are a bad request).
fn serde_urlencoded_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ServiceError> {
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // Which of two values was meant is anyone's guess: refused rather than picked.
        if map
            .insert(k.clone().into_owned(), Value::String(v.into_owned()))
            .is_some()
        {
            return Err(ServiceError::BadRequest(format!(
                "query: parameter {k:?} given more than once"
            )));
        }
    }
    serde_json::from_value(Value::Object(map))
        .map_err(|e| ServiceError::BadRequest(format!("query: {e}")))
}

/// The parameters of a route that takes them in its path only: a path that does not
/// decode is the caller's error (as a problem, without the router's internal names), and
/// so is any query parameter.
/// Refuses a query on a route that takes no parameters (a misspelt one must not be
/// ignored).
fn no_query(query: Option<String>) -> Result<(), ServiceError> {
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(ServiceError::BadRequest(
            "this route takes no query parameters".into(),
        ));
    }
    Ok(())
}

fn path_param<T>(
    path: Result<Path<T>, PathRejection>,
    query: Option<String>,
) -> Result<T, ServiceError> {
    no_query(query)?;
    path.map(|Path(p)| p).map_err(|_| {
        ServiceError::BadRequest("the path does not decode (percent-encoded UTF-8 expected)".into())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    allowed: Vec<String>,
    #[serde(default)]
    excluded: Vec<String>,
}

/// The largest JSON request body (KGSS and KeyDepot requests are a few hundred bytes).
const MAX_JSON_BODY: u64 = 64 * 1024;

/// The checks of a JSON request that need no work (no query; a declared length within
/// [`MAX_JSON_BODY`] and `max_body_bytes`), made before a slot is taken; the body, bounded
/// by the same limit (more is 413, as for the other bodies).
fn json_request(
    app: &Appliance,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(http_body_util::Limited<Body>, u64), ServiceError> {
    no_query(query)?;
    let limit = MAX_JSON_BODY.min(app.config().limits.max_body_bytes);
    declared_length_fits(limit, headers)?;
    let bounded = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    Ok((bounded, limit))
}

/// A JSON request body from [`json_request`].
async fn json_body<T: serde::de::DeserializeOwned>(
    (body, limit): (http_body_util::Limited<Body>, u64),
) -> Result<T, ServiceError> {
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ServiceError::TooLarge(limit)
            } else {
                ServiceError::BadRequest(format!("body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| ServiceError::BadRequest(format!("JSON: {e}")))
}

/// A key id in a path: base64url (padding optional) or standard base64 (as in the
/// `etee-kgss-key-id` header and the JSON bodies; percent-encode its `/` and `+`).
fn key_id_param(key_id: &str) -> Result<Vec<u8>, ServiceError> {
    let url_safe = key_id.trim_end_matches('=');
    let id = B64URL
        .decode(url_safe)
        .or_else(|_| B64.decode(key_id))
        .map_err(|_| ServiceError::BadRequest("keyId: base64url or base64".into()))?;
    if id.is_empty() || id.len() > 64 {
        return Err(ServiceError::BadRequest("keyId: 1 to 64 bytes".into()));
    }
    Ok(id)
}

/// A KGSS key id in a path: [`key_id_param`], and 16 bytes (KGSS's ids), so that a
/// malformed one is the caller's 400 rather than KGSS's refusal relayed as a 502.
fn kgss_key_id_param(key_id: &str) -> Result<Vec<u8>, ServiceError> {
    let id = key_id_param(key_id)?;
    if id.len() != 16 {
        return Err(ServiceError::BadRequest(format!(
            "keyId: a KGSS key id is 16 bytes, this one is {}",
            id.len()
        )));
    }
    Ok(id)
}

async fn kgss_new_key(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Kgss)?;
        let body = json_request(&app, query, &headers, body)?;
        let client = app.take_slot(client).await?;
        let b: NewKeyBody = json_body(body).await?;
        let (allowed, excluded) = reader_conditions(&b.allowed, &b.excluded)?;
        let key = app.kgss_new_key(&client, allowed, excluded).await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({ "keyId": B64.encode(&key.id), "key": B64.encode(&key.key) }),
        ))
    }
    .await;
    finish(&app, "kgss-new-key", &peer, started, answer)
}

async fn kgss_get_key(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    key_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Kgss)?;
        let id = kgss_key_id_param(&path_param(key_id, query)?)?;
        let client = app.take_slot(client).await?;
        let key = app.kgss_get_key(&client, &id).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "keyId": B64.encode(&id), "key": B64.encode(&*key) }),
        ))
    }
    .await;
    finish(&app, "kgss-get-key", &peer, started, answer)
}

async fn kgss_delete(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    key_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::KgssDelete)?;
        let id = kgss_key_id_param(&path_param(key_id, query)?)?;
        let _admitted = app.take_slot(client).await?;
        app.kgss_delete(&id).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    finish(&app, "kgss-delete", &peer, started, answer)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ServiceError> {
    serde_json::to_value(v).map_err(|e| ServiceError::Io(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    /// The CKA_ID of the key in the institution's token.
    key: String,
    label: Option<String>,
}

async fn keydepot_register(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::KeyDepot)?;
        let body = json_request(&app, query, &headers, body)?;
        let client = app.take_slot(client).await?;
        let b: RegisterBody = json_body(body).await?;
        let registered = app.keydepot_register(&client, b.key, b.label).await?;
        Ok(json_response(StatusCode::CREATED, &to_json(&registered)?))
    }
    .await;
    finish(&app, "keydepot-register", &peer, started, answer)
}

async fn keydepot_get(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    key_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::KeyDepot)?;
        let id = etee_services::keydepot::KeyId::new(key_id_param(&path_param(key_id, query)?)?)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let _admitted = app.take_slot(client).await?;
        let record = app
            .keydepot()?
            .get(&id)
            .await
            .map_err(ServiceError::from_keydepot)?;
        Ok(json_response(StatusCode::OK, &to_json(&record)?))
    }
    .await;
    finish(&app, "keydepot-get", &peer, started, answer)
}

async fn keydepot_delete(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    key_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::KeyDepotDelete)?;
        let id = etee_services::keydepot::KeyId::new(key_id_param(&path_param(key_id, query)?)?)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let _admitted = app.take_slot(client).await?;
        app.keydepot()?
            .delete(&id)
            .await
            .map_err(ServiceError::from_keydepot)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    finish(&app, "keydepot-delete", &peer, started, answer)
}

async fn keydepot_list(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::KeyDepot)?;
        let (id_type, value) = path_param(path, query)?;
        let _admitted = app.take_slot(client).await?;
        let list = app
            .keydepot()?
            .list(&id_type, &value, None)
            .await
            .map_err(ServiceError::from_keydepot)?;
        Ok(json_response(StatusCode::OK, &to_json(&list)?))
    }
    .await;
    finish(&app, "keydepot-list", &peer, started, answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    after: Option<String>,
    limit: Option<String>,
    since: Option<String>,
    until: Option<String>,
    client: Option<String>,
    key: Option<String>,
    /// Operation names, comma-separated (`report::OPERATION_NAMES`).
    operation: Option<String>,
    outcome: Option<String>,
}

impl AuditQuery {
    /// The records asked for (see `report::AuditFilter`).
    fn filter(&self) -> Result<crate::report::AuditFilter, ServiceError> {
        use crate::report::{operation_named, AuditFilter, AuditFilterError, AuditOutcome};
        let bad = |what: &str, e: String| ServiceError::BadRequest(format!("{what} {e}"));
        let operations = self
            .operation
            .as_deref()
            .map(|o| o.split(','))
            .into_iter()
            .flatten()
            .map(|n| {
                operation_named(n).ok_or_else(|| {
                    bad(
                        "operation",
                        format!(
                            "{n:?}: not one of {}",
                            crate::report::OPERATION_NAMES.map(|(n, _)| n).join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                AuditOutcome::named(o).ok_or_else(|| {
                    bad(
                        "outcome",
                        format!("{o:?}: not admitted, success, refused or concluded"),
                    )
                })
            })
            .transpose()?;
        AuditFilter::new(
            self.since.as_deref(),
            self.until.as_deref(),
            self.client.as_deref(),
            self.key.as_deref(),
            operations,
            outcome,
        )
        .map_err(|e| match e {
            AuditFilterError::Since(why) => bad("since", why),
            AuditFilterError::Until(why) => bad("until", why),
            AuditFilterError::EmptyRange => {
                ServiceError::BadRequest("until is not after since: no record could match".into())
            }
        })
    }
}

async fn audit(
    State(app): State<Arc<Appliance>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
) -> Response {
    let started = Instant::now();
    let answer = async {
        let client = app.authorise(&peer, Operation::Audit)?;
        let q: AuditQuery = serde_urlencoded_query(query.as_deref().unwrap_or(""))?;
        let filter = q.filter()?;
        // Records after sequence `after`; without it, from the first (sequence 0).
        let from = match q.after {
            Some(a) => audit_number("after", &a)?.saturating_add(1),
            None => 0,
        };
        let limit = match q.limit.map_or(Ok(1000), |l| audit_number("limit", &l))? {
            // 0: the chain's verification alone.
            n @ 0..=10_000 => n as usize,
            n => {
                return Err(ServiceError::BadRequest(format!(
                    "limit {n}: at most 10000 records a call"
                )))
            }
        };
        let admitted = app.take_slot(client).await?;
        let path = app.audit_file();
        // The scan holds the client's slot until it ends, even if the caller goes away.
        let slot = admitted.slot();
        let export = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            crate::report::audit_export(&path, from, limit, &filter)
        })
        .await
        .map_err(|e| ServiceError::Io(e.to_string()))?
        .map_err(audit_read_error)?;
        Ok(json_response(StatusCode::OK, &export))
    }
    .await;
    finish(&app, "audit", &peer, started, answer)
}

/// A whole number given as `GET /v1/audit`'s parameter `name`; the error names it.
fn audit_number(name: &str, text: &str) -> Result<u64, ServiceError> {
    text.parse::<u64>().map_err(|_| {
        ServiceError::BadRequest(format!(
            "{name} {text:?}: not a whole number (0 to {})",
            u64::MAX
        ))
    })
}

/// A failure to read the custody audit file for `GET /v1/audit`: one the appliance's user
/// may not read is the custody process's own file (`[custody] mode = "process"`), kept
/// from it on purpose, and says where to verify the chain instead.
fn audit_read_error(e: etee_custody::file_sink::FileSinkError) -> ServiceError {
    match e {
        etee_custody::file_sink::FileSinkError::Io(io)
            if io.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            ServiceError::AuditUnreadable(
                "the custody audit file is not readable by the appliance's user (with the \
                 custody core in its own process, that is its file): verify the chain \
                 with `etee audit verify` where the custody process runs"
                    .into(),
            )
        }
        other => ServiceError::Io(other.to_string()),
    }
}

async fn health(State(app): State<Arc<Appliance>>) -> Response {
    match app.snapshot_bounded().await.custody_audit_sequence {
        Some(sequence) => json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "auditSequence": sequence }),
        ),
        // A custody process that does not answer: nothing can be sealed or opened.
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "custody-unavailable" }),
        ),
    }
}

async fn metrics(State(app): State<Arc<Appliance>>) -> Response {
    let mut text = app.metrics.render(app.snapshot_bounded().await);
    etee_services::revocation::render_metrics(
        &mut text,
        "etee_appliance",
        app.anchors(),
        etee_formats::unix_now(),
    );
    etee_services::lifetime::render_metrics(&mut text, "etee_appliance", app.own_certificates());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON only when the caller ranks it above the route's binary type.
    #[test]
    fn json_only_when_the_caller_prefers_it() {
        let accept = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            h
        };
        let bin = SEALED_TYPE;
        assert!(!wants_json(&HeaderMap::new(), bin));
        for yes in [
            "application/json",
            "Application/JSON",
            "application/pkcs7-mime;q=0.5, application/json",
            "application/json, */*;q=0.1",
            "application/json;q=0.2, application/*;q=0.1",
        ] {
            assert!(wants_json(&accept(yes), bin), "{yes}");
        }
        for no in [
            "application/pkcs7-mime, application/json",
            "application/json, application/pkcs7-mime",
            "application/pkcs7-mime;q=1, application/json;q=0",
            "application/json;q=0, */*",
            "*/*",
            "text/html",
            "application/*;q=0.9, application/json;q=0.9",
        ] {
            assert!(!wants_json(&accept(no), bin), "{no}");
        }
    }

    /// KGSS key ids are 16 bytes: anything else is the caller's error here.
    #[test]
    fn kgss_key_ids_are_16_bytes() {
        assert_eq!(
            kgss_key_id_param("AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
            [0u8; 16]
        );
        assert_eq!(
            kgss_key_id_param("AAAAAAAAAAAAAAAAAAAAAA==").unwrap(),
            [0u8; 16]
        );
        for bad in ["AA", "AA===", "AAAAAAAAAAAAAAAAAAAAAAAA"] {
            assert!(kgss_key_id_param(bad).is_err(), "{bad}");
        }
    }

    /// Repeats count once (one recipient info, one reader condition); more different ones
    /// than the bounds are the caller's error, before anything is looked up.
    #[test]
    fn repeated_recipients_and_readers_count_once_and_are_bounded() {
        let many = |key: &str, value: &dyn Fn(usize) -> String, n: usize| {
            (0..n)
                .map(|i| format!("{key}={}", value(i)))
                .collect::<Vec<_>>()
                .join("&")
        };
        let same_to = many("to", &|_| "NIHII-PHARMACY:27150201".into(), 2000);
        let same_allow = many("allow", &|_| "doctor".into(), 5000);
        let r = seal_request(&format!("{same_to}&{same_allow}")).unwrap();
        assert_eq!(r.to.len(), 1);
        assert_eq!(r.allowed, vec![vocabulary::any_doctor()]);
        // Written differently, the same condition: once as well.
        let r = seal_request("allow=doctor&allow=%20doctor%20").unwrap();
        assert_eq!(r.allowed.len(), 1);

        let recipient = |i: usize| format!("NIHII-PHARMACY:{:08}", i);
        assert_eq!(
            seal_request(&many("to", &recipient, MAX_RECIPIENTS))
                .unwrap()
                .to
                .len(),
            MAX_RECIPIENTS
        );
        let reader = |i: usize| format!("patient:{:011}", i);
        assert_eq!(
            seal_request(&many("allow", &reader, MAX_READER_CONDITIONS))
                .unwrap()
                .allowed
                .len(),
            MAX_READER_CONDITIONS
        );
        let too_many = [
            many("to", &recipient, MAX_RECIPIENTS + 1),
            many("allow", &reader, MAX_READER_CONDITIONS + 1),
            // Together: allowed and excluded share the bound.
            format!(
                "{}&{}",
                many("allow", &reader, MAX_READER_CONDITIONS),
                many("exclude", &|i| reader(i + 1000), 1)
            ),
        ];
        for query in too_many {
            match seal_request(&query) {
                Err(ServiceError::BadRequest(why)) => assert!(why.contains("more than"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        let (allowed, excluded) =
            reader_conditions(&["doctor"; 3000], &["patient:12345678901"; 2]).unwrap();
        assert_eq!((allowed.len(), excluded.len()), (1, 1));
    }

    /// `GET /v1/audit` on an audit file the appliance's user may not read (the custody
    /// process's own file): `AUDIT_UNREADABLE`, from a real `EACCES`. Root reads every
    /// file, so the test runs itself again as `nobody` (uid 65534) in a child process
    /// (not a fork: the harness has threads). Skipped, saying so, when not root.
    #[test]
    fn an_audit_file_the_appliance_may_not_read_is_audit_unreadable() {
        const CHILD: &str = "ETEE_TEST_UNREADABLE_AUDIT_FILE";
        const NAME: &str =
            "api::tests::an_audit_file_the_appliance_may_not_read_is_audit_unreadable";
        if let Some(path) = std::env::var_os(CHILD) {
            use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
            setgroups(&[]).expect("setgroups");
            setgid(Gid::from_raw(65534)).expect("setgid");
            setuid(Uid::from_raw(65534)).expect("setuid");
            let path = std::path::PathBuf::from(path);
            let e = crate::report::audit_export(&path, 0, 10, &Default::default())
                .expect_err("nobody reads a root file of mode 0600");
            let refused = audit_read_error(e);
            assert_eq!(refused.code(), "AUDIT_UNREADABLE", "{refused}");
            return;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root can run a child as another user");
            return;
        }
        // A real chain (one record), readable by root only, in a directory anyone may
        // cross: the refusal is the file's mode, nothing else.
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("audit.log");
        {
            use etee_custody::AuditSink;
            let (mut sink, head) = etee_custody::file_sink::FileAuditSink::open(&path).unwrap();
            let record = etee_custody::AuditRecord {
                sequence: head.next_sequence,
                time_ms: 1,
                client: None,
                operation: etee_custody::audit::Operation::Lock,
                key: None,
                input_digest: [0; 32],
                outcome: etee_custody::audit::Outcome::Success,
                prev_hash: head.hash,
            };
            sink.append(&record).unwrap();
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            crate::report::audit_export(&path, 0, 10, &Default::default()).unwrap()["records"],
            1,
            "root reads it"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A page parameter that is not a number is refused naming the parameter (it said
    /// only `"x" is not a number`).
    #[test]
    fn audit_page_parameters_are_named_in_their_errors() {
        assert_eq!(audit_number("after", "17").unwrap(), 17);
        for (name, text) in [("after", "x"), ("limit", "-1"), ("after", "")] {
            match audit_number(name, text) {
                Err(ServiceError::BadRequest(why)) => assert!(
                    why.starts_with(&format!("{name} {text:?}: not a whole number")),
                    "{why}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn audit_filters() {
        use etee_custody::audit::Operation;
        let filter =
            |query: &str| serde_urlencoded_query::<AuditQuery>(query).and_then(|q| q.filter());
        let f = filter(
            "operation=sign,decrypt,sign&outcome=refused&key=etk&since=1970-01-01T00:00:02Z",
        )
        .unwrap();
        assert_eq!(
            f.operations,
            [Operation::SignPssSha256, Operation::DecryptPkcs1v15],
            "each once"
        );
        assert_eq!(f.outcome, Some(crate::report::AuditOutcome::Refused));
        assert_eq!(
            (f.key.as_deref(), f.since_ms),
            (Some(&b"etk"[..]), Some(2_000))
        );
        let many = vec!["sign"; 5000].join(",");
        assert_eq!(
            filter(&format!("operation={many}"))
                .unwrap()
                .operations
                .len(),
            1
        );
        assert_eq!(filter("").unwrap(), crate::report::AuditFilter::default());
        for bad in [
            "operation=",
            "operation=Sign",
            "outcome=ok",
            "until=2026-13-01T00:00:00Z",
            "since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
            "client=a&client=b",
            "what=1",
        ] {
            assert!(
                matches!(filter(bad), Err(ServiceError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn seal_parameters() {
        let r = seal_request(
            "to=NIHII-PHARMACY:27150201&to=CBE:0406798006:APP-A&allow=recognised-pharmacy\
             &exclude=patient:12345678901",
        )
        .unwrap();
        assert_eq!(r.to.len(), 2);
        assert_eq!(r.to[1].application_id.as_deref(), Some("APP-A"));
        assert_eq!(r.allowed, vec![vocabulary::recognised_pharmacy()]);
        assert_eq!(r.excluded, vec![vocabulary::patient("12345678901")]);
        let generic = credential("urn:ns|urn:name|v").unwrap();
        assert_eq!(generic, Credential::new("urn:ns", "urn:name", &["v"]));
        for bad in [
            "to=NIHII-PHARMACY",
            "to=:1",
            "allow=nobody",
            "allow=patient:123",
            "exclude=doctor",
            "colour=blue",
        ] {
            assert!(
                matches!(seal_request(bad), Err(ServiceError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn headers_carry_any_subject_as_ascii_json() {
        let v = json!({ "subject": "CN=Pharmacie Élise, O=Bénédicte 😀" });
        let h = header_json(&v);
        let back: Value = serde_json::from_str(h.to_str().unwrap()).unwrap();
        assert_eq!(back, v);
    }

    use etee_testpki::route_shape as shape;

    /// Every route of [`router`] is in the OpenAPI description, and nothing else is.
    #[test]
    fn the_openapi_description_covers_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi/appliance.json");
        let described: std::collections::BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(|p| shape(p))
            .collect();
        let source = include_str!("api.rs");
        let router_source = &source[..source.find("#[cfg(test)]").expect("the tests")];
        let routed: std::collections::BTreeSet<String> = router_source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(shape)
            .collect();
        assert!(
            routed.contains("/v1/seal") && routed.len() > 10,
            "{routed:?}"
        );
        assert_eq!(routed, described);
    }

    /// The errors of `value` against `schema`, read as OpenAPI 3.0.3 reads it: a `$ref`
    /// replaces its siblings; `nullable: true` admits null beside a `type`, and nothing
    /// else does (not `allOf` members: each must admit the value itself); `type`,
    /// `enum`, `required`, `properties`, `additionalProperties`, `items`, `allOf`,
    /// `anyOf`, `oneOf`, and `format: byte` (standard Base64). What a generated client's
    /// validator checks of the answers; the rest of the dialect is not used here.
    fn openapi_errors(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = r
                .strip_prefix('#')
                .and_then(|pointer| doc.pointer(pointer))
                .unwrap_or_else(|| panic!("{at}: unresolved $ref {r}"));
            return openapi_errors(doc, target, value, at);
        }
        let mut errors = Vec::new();
        let nullable = schema.get("nullable") == Some(&Value::Bool(true));
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            let fits = match (t, value) {
                (_, Value::Null) => nullable,
                ("object", v) => v.is_object(),
                ("array", v) => v.is_array(),
                ("string", v) => v.is_string(),
                ("integer", v) => v.is_i64() || v.is_u64(),
                ("number", v) => v.is_number(),
                ("boolean", v) => v.is_boolean(),
                (other, _) => panic!("{at}: type {other:?}"),
            };
            if !fits {
                errors.push(format!("{at}: {value} is not a {t}"));
                return errors;
            }
        } else if nullable {
            panic!("{at}: nullable without a type has no effect in OpenAPI 3.0.3");
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            if !value.is_null() && !options.contains(value) {
                errors.push(format!("{at}: {value} is not one of {options:?}"));
            }
        }
        if let (Some("byte"), Some(text)) =
            (schema.get("format").and_then(Value::as_str), value.as_str())
        {
            if B64.decode(text).is_err() {
                errors.push(format!("{at}: {text:?} is not Base64"));
            }
        }
        if let Some(members) = schema.get("allOf").and_then(Value::as_array) {
            for (i, m) in members.iter().enumerate() {
                errors.extend(openapi_errors(doc, m, value, &format!("{at}/allOf[{i}]")));
            }
        }
        for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(members) = schema.get(key).and_then(Value::as_array) {
                let passing = members
                    .iter()
                    .filter(|m| openapi_errors(doc, m, value, at).is_empty())
                    .count();
                if passing == 0 || (exactly_one && passing > 1) {
                    errors.push(format!(
                        "{at}: {passing} of the {key} members admit {value}"
                    ));
                }
            }
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    errors.push(format!("{at}: {name} is required"));
                }
            }
            for (name, v) in object {
                let at = format!("{at}/{name}");
                match (
                    properties.and_then(|p| p.get(name)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => errors.extend(openapi_errors(doc, s, v, &at)),
                    (None, Some(Value::Bool(false))) => {
                        errors.push(format!("{at}: not a property of the schema"))
                    }
                    (None, Some(s @ Value::Object(_))) => {
                        errors.extend(openapi_errors(doc, s, v, &at))
                    }
                    (None, _) => {}
                }
            }
        }
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
            for (i, v) in list.iter().enumerate() {
                errors.extend(openapi_errors(doc, items, v, &format!("{at}[{i}]")));
            }
        }
        errors
    }

    fn openapi_schema_errors(name: &str, value: &Value) -> Vec<String> {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi/appliance.json");
        let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        openapi_errors(&doc, &schema, value, name)
    }

    /// The validator above refuses what OpenAPI 3.0.3 refuses: `nullable` next to an
    /// `allOf` does not make its members admit null (the `sender` of `UnsealReport` was
    /// written so, and real 422 answers, `"sender": null`, failed validation).
    #[test]
    fn the_openapi_checker_reads_nullable_as_openapi_3_0_3() {
        let doc = json!({ "components": { "schemas": {
            "S": { "type": "object", "properties": { "a": { "type": "string" } } },
            "N": { "type": "object", "nullable": true },
        }}});
        let check = |schema: Value, value: Value| openapi_errors(&doc, &schema, &value, "x");
        let wrapped = json!({ "type": "object", "nullable": true,
                              "allOf": [{ "$ref": "#/components/schemas/S" }] });
        assert!(!check(wrapped.clone(), Value::Null).is_empty());
        assert!(check(wrapped, json!({ "a": "b" })).is_empty());
        assert!(check(json!({ "$ref": "#/components/schemas/N" }), Value::Null).is_empty());
        assert!(!check(json!({ "$ref": "#/components/schemas/S" }), Value::Null).is_empty());
        assert!(!check(json!({ "type": "string", "format": "byte" }), json!("%%")).is_empty());
        assert!(!check(json!({ "type": "integer" }), json!("1")).is_empty());
        assert!(!check(json!({ "required": ["a"] }), json!({})).is_empty());
    }

    /// Answers as the handlers make them validate against the OpenAPI description: a real
    /// 422 verdict (a body that is no message: `sender`, `fatal`… null), and the problem
    /// of every error, whose `title` must be among the codes it lists.
    #[test]
    fn answers_validate_against_the_openapi_description() {
        let unsealed = etee_formats::cms::unseal(
            &b"not a message"[..],
            std::io::sink(),
            &etee_formats::keys::KeyRing::new(),
            &etee_formats::cms::UnsealOptions::default(),
        )
        .expect("a verdict");
        assert!(!unsealed.verdict.is_clean());
        // As `unseal` answers a verdict that is not clean.
        let mut report = crate::report::unseal_report(&unsealed);
        report["kgss_key_id"] = json!(None::<String>);
        assert_eq!(report["sender"], Value::Null, "{report}");
        assert_eq!(
            openapi_schema_errors("UnsealReport", &report),
            Vec::<String>::new()
        );
        let with_content = {
            let mut r = report.clone();
            r["content"] = json!(B64.encode(b"content"));
            r
        };
        assert_eq!(
            openapi_schema_errors("UnsealReportWithContent", &with_content),
            Vec::<String>::new()
        );
        let mut wrong = report.clone();
        wrong["sender"] = json!("someone");
        assert!(!openapi_schema_errors("UnsealReport", &wrong).is_empty());

        use crate::policy::Refusal;
        let every_error = [
            ServiceError::BadRequest("x".into()),
            ServiceError::Refused(Refusal::UnknownCaller("x".into())),
            ServiceError::Refused(Refusal::NotAllowed {
                client: "x".into(),
                operation: "seal".into(),
            }),
            ServiceError::CustodyRefused("x".into()),
            ServiceError::CustodyRateLimited {
                retry_after_ms: 1500,
            },
            ServiceError::HsmUnavailable("x".into()),
            ServiceError::UnknownRecipient("x".into()),
            ServiceError::KgssAccessDenied("x".into()),
            ServiceError::KgssUnknownKey("x".into()),
            ServiceError::Platform("x".into()),
            ServiceError::PlatformRefused("x".into()),
            ServiceError::TooLarge(1),
            ServiceError::ContentTooLargeForJson { len: 2, max: 1 },
            ServiceError::NotFound("x".into()),
            ServiceError::MethodNotAllowed("x".into()),
            ServiceError::Conflict("x".into()),
            ServiceError::TooManyKeys("x".into()),
            ServiceError::KeyDepotConflict("x".into()),
            ServiceError::AuditUnreadable("x".into()),
            ServiceError::Busy {
                client: "x".into(),
                limit: 1,
            },
            ServiceError::Io("x".into()),
            ServiceError::RequestTimeout { timeout_ms: 1 },
            ServiceError::WorkTimeout { timeout_ms: 1 },
            ServiceError::OwnCertificate {
                text: "x".into(),
                why: NotVouched::NotGood,
            },
            ServiceError::OwnCertificate {
                text: "x".into(),
                why: NotVouched::NoAnswer,
            },
            ServiceError::OwnCertificate {
                text: "x".into(),
                why: NotVouched::Misconfigured,
            },
        ];
        for e in &every_error {
            // No wildcard: a new error fails to compile here until it is in the list.
            match e {
                ServiceError::BadRequest(_)
                | ServiceError::Refused(_)
                | ServiceError::CustodyRefused(_)
                | ServiceError::CustodyRateLimited { .. }
                | ServiceError::HsmUnavailable(_)
                | ServiceError::UnknownRecipient(_)
                | ServiceError::KgssAccessDenied(_)
                | ServiceError::KgssUnknownKey(_)
                | ServiceError::Platform(_)
                | ServiceError::PlatformRefused(_)
                | ServiceError::TooLarge(_)
                | ServiceError::ContentTooLargeForJson { .. }
                | ServiceError::NotFound(_)
                | ServiceError::MethodNotAllowed(_)
                | ServiceError::Conflict(_)
                | ServiceError::TooManyKeys(_)
                | ServiceError::KeyDepotConflict(_)
                | ServiceError::AuditUnreadable(_)
                | ServiceError::Busy { .. }
                | ServiceError::Io(_)
                | ServiceError::RequestTimeout { .. }
                | ServiceError::WorkTimeout { .. }
                | ServiceError::OwnCertificate { .. } => {}
            }
            let body = problem_body(e);
            assert_eq!(
                openapi_schema_errors("Problem", &body),
                Vec::<String>::new(),
                "{e:?}"
            );
        }
    }

    /// The JSON of [`problem`]'s answer.
    fn problem_body(e: &ServiceError) -> Value {
        let response = problem(e);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn key_ids_in_paths_take_either_base64() {
        let id = [0xfbu8, 0xff, 0x3e, 0x01, 0x02];
        for text in [
            B64URL.encode(id),
            format!("{}=", B64URL.encode(id)),
            B64.encode(id),
        ] {
            assert_eq!(key_id_param(&text).unwrap(), id, "{text}");
        }
        assert!(key_id_param("not base64!").is_err());
        assert!(key_id_param("").is_err());
    }

    #[test]
    fn errors_are_problems_with_a_status_and_a_code() {
        let mut headers = HeaderMap::new();
        assert!(
            declared_length_fits(100, &headers).is_ok(),
            "no length: streamed"
        );
        headers.insert(header::CONTENT_LENGTH, "100".parse().unwrap());
        assert!(declared_length_fits(100, &headers).is_ok());
        headers.insert(header::CONTENT_LENGTH, "5000000000".parse().unwrap());
        assert!(matches!(
            declared_length_fits(100, &headers),
            Err(ServiceError::TooLarge(100))
        ));
        let r = problem(&ServiceError::MethodNotAllowed("x".into()));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        let r = problem(&ServiceError::TooLarge(10));
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        for conflict in [
            ServiceError::Conflict("x".into()),
            ServiceError::TooManyKeys("x".into()),
            ServiceError::KeyDepotConflict("x".into()),
        ] {
            let r = problem(&conflict);
            assert_eq!(r.status(), StatusCode::CONFLICT, "{conflict:?}");
            assert!(r.headers().get(header::RETRY_AFTER).is_none());
        }
        let r = problem(&ServiceError::KgssAccessDenied("no".into()));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r = problem(&ServiceError::Busy {
            client: "his".into(),
            limit: 1,
        });
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        // The custody core's budget: 429 with the core's wait in whole seconds, rounded up
        // (it was 403 CUSTODY_REFUSED without Retry-After, which reads as final).
        for (ms, seconds) in [
            (1, "1"),
            (999, "1"),
            (1000, "1"),
            (1001, "2"),
            (30_500, "31"),
        ] {
            let limited = ServiceError::from_key(etee_formats::keys::KeyError::RateLimited {
                retry_after_ms: ms,
            });
            assert_eq!(limited.code(), "CUSTODY_RATE_LIMITED");
            let r = problem(&limited);
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{ms} ms");
            assert_eq!(r.headers()[header::RETRY_AFTER], seconds, "{ms} ms");
        }
        let r = problem(&ServiceError::CustodyRefused("policy".into()));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let r = problem(&ServiceError::HsmUnavailable("session closed".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let own = |why| ServiceError::OwnCertificate {
            text: "x".into(),
            why,
        };
        let r = problem(&own(NotVouched::NoAnswer));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()[header::RETRY_AFTER],
            etee_formats::ocsp::UNREACHABLE_BACKOFF.to_string().as_str()
        );
        for why in [NotVouched::NotGood, NotVouched::Misconfigured] {
            let r = problem(&own(why));
            assert!(r.headers().get(header::RETRY_AFTER).is_none(), "{why:?}");
        }
        // Not a passing condition: asking again changes nothing until the operator acts.
        let denied = audit_read_error(etee_custody::file_sink::FileSinkError::Io(
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
        assert_eq!(denied.code(), "AUDIT_UNREADABLE");
        assert!(denied.to_string().contains("etee audit verify"), "{denied}");
        let other = audit_read_error(etee_custody::file_sink::FileSinkError::Io(
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        ));
        assert_eq!(other.code(), "APPLIANCE_IO");
        let r = problem(&denied);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
