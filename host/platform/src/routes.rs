//! The HTTP routes, and the one place where failures become answers: SOA faults (HTTP 500,
//! spec §7) for the SOAP services, RFC 7807 problem details for REST.
//!
//! | method and path                        | service                                  |
//! |----------------------------------------|------------------------------------------|
//! | `POST /EtkDepot/v1`                    | ETKDepot SOAP `GetEtk`                   |
//! | `GET /etee/v1/etks`                    | ETKDepot REST: ETKs of a holder          |
//! | `GET /etee/v1/pubKeys/cacerts/jwks`    | ETKDepot REST: the holder's keys as JWKS |
//! | `GET /health`                          | liveness                                 |

use crate::etkdepot::{self, LookupError};
use crate::{unix_now, Platform};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use etee_services::etkdepot::jwks::{JwkSet, KeyUse};
use etee_services::etkdepot::rest::{EtkJson, Problem, PROBLEM_CONTENT_TYPE};
use etee_services::etkdepot::{GetEtkRequest, Identifier};
use etee_services::soap::{self, Fault, SoaCode};
use etee_services::Error as MessageError;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::sync::Arc;

const SOAP_CONTENT_TYPE: &str = "text/xml; charset=utf-8";

/// The platform's routes over `platform`.
pub fn router(platform: Arc<Platform>) -> Router {
    Router::new()
        .route("/EtkDepot/v1", post(etkdepot_soap))
        .route("/etee/v1/etks", get(etks_rest))
        .route("/etee/v1/pubKeys/cacerts/jwks", get(jwks_rest))
        .route("/health", get(|| async { "ok\n" }))
        .fallback(|| async { problem(Problem::new(404, "No such resource", None)) })
        .with_state(platform)
}

/// The answer when a request took longer than the configured request timeout.
pub fn timeout_response() -> Response {
    problem(Problem::new(
        408,
        "Request timeout",
        Some("the request was not received and answered in time".into()),
    ))
}

// --- Answers ------------------------------------------------------------------------------

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

/// Runs blocking service logic (the store) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

// --- ETKDepot -----------------------------------------------------------------------------

async fn etkdepot_soap(State(platform): State<Arc<Platform>>, body: Body) -> Response {
    let bytes = match read_body(body, platform.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return message_fault(&platform, &e),
    };
    let request = match GetEtkRequest::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return message_fault(&platform, &e),
    };
    let p = platform.clone();
    let answered =
        blocking(move || etkdepot::get_etk(p.store.as_ref(), &request, unix_now())).await;
    match answered {
        Some(Ok(response)) => soap_ok(soap::envelope(response.to_element())),
        Some(Err(LookupError::Criteria(e))) => message_fault(&platform, &MessageError::Content(e)),
        Some(Err(LookupError::Store(e))) => {
            tracing::error!("ETKDepot store: {e}");
            code_fault(&platform, SoaCode::ServiceError)
        }
        None => code_fault(&platform, SoaCode::ServiceError),
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
    match blocking(move || etkdepot::lookup(p.store.as_ref(), &[criterion], unix_now())).await {
        Some(Ok(found)) if found.is_empty() => Err(problem(Problem::no_matching_etk())),
        Some(Ok(found)) => Ok(found),
        Some(Err(LookupError::Criteria(e))) => {
            Err(problem(Problem::unknown_search_criteria(Some(e))))
        }
        Some(Err(LookupError::Store(e))) => {
            tracing::error!("ETKDepot store: {e}");
            Err(problem(Problem::new(500, "Service error", None)))
        }
        None => Err(problem(Problem::new(500, "Service error", None))),
    }
}

async fn etks_rest(
    State(platform): State<Arc<Platform>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    match lookup_rest(&platform, &query, &[]).await {
        Ok(found) => json(EtkJson::list_to_json(&etkdepot::etks_json(&found))),
        Err(answer) => answer,
    }
}

async fn jwks_rest(
    State(platform): State<Arc<Platform>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
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
                    Err(e) => tracing::warn!("JWKS: {e}"),
                }
            }
        }
    }
    json(JwkSet { keys: sets }.to_json())
}
