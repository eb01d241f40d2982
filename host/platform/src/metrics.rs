//! What the platform tells its operator: `GET /metrics` (Prometheus text) and
//! `GET /ready` (whether the store answers), beside the bare liveness of `GET /health`.
//!
//! Every request is counted by service and HTTP status (`soap-fault` for SOAP faults,
//! which are HTTP 500 whoever erred), and timed; a request abandoned before its answer (its `request_timeout_ms` ran out and 408 or 504 was sent, or the client
//! went away) is counted with the status `abandoned`. Labels hold fixed names only.

use crate::Platform;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;

/// The service a path belongs to (the `service` label).
pub fn service_of(path: &str) -> &'static str {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| path.starts_with(p));
    if starts(&["/EtkDepot", "/etee/v1/etks", "/etee/v1/pubKeys"]) {
        "etkdepot"
    } else if starts(&["/Kgss", "/etee/v1/kgss"]) {
        "kgss"
    } else if starts(&["/etee/v1/keydepot"]) {
        "keydepot"
    } else if matches!(path, "/health" | "/ready" | "/metrics" | "/openapi.json") {
        "platform"
    } else {
        "other"
    }
}

/// The `status` label of an answer: `soap-fault` for a SOAP fault (HTTP 500 with an XML
/// body: the caller's error as often as ours), else the code for those the platform
/// answers, else its class.
pub fn answer_label(response: &Response) -> &'static str {
    let xml = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/xml"));
    if xml && response.status() == StatusCode::INTERNAL_SERVER_ERROR {
        "soap-fault"
    } else {
        status_label(response.status())
    }
}

/// The `status` label of a status: the code for those the platform answers, else its
/// class.
pub fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        415 => "415",
        422 => "422",
        500 => "500",
        503 => "503",
        504 => "504",
        s if s < 400 => "other-2xx-3xx",
        s if s < 500 => "other-4xx",
        _ => "other-5xx",
    }
}

/// Records a request when it is answered, or as `abandoned` if its future is dropped
/// first (the server's request timeout, a closed connection).
struct Tracked<'a> {
    platform: &'a Platform,
    service: &'static str,
    started: Instant,
    status: Option<&'static str>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        let status = self.status.unwrap_or("abandoned");
        self.platform
            .requests
            .record(self.service, status, self.started.elapsed());
    }
}

/// The middleware that counts and times every request.
pub async fn track(
    State(platform): State<Arc<Platform>>,
    request: Request,
    next: Next,
) -> Response {
    let mut tracked = Tracked {
        platform: &platform,
        service: service_of(request.uri().path()),
        started: Instant::now(),
        status: None,
    };
    let response = next.run(request).await;
    tracked.status = Some(answer_label(&response));
    response
}

/// The exposition text of `GET /metrics`.
pub fn render(platform: &Platform) -> String {
    use etee_services::metrics::single;
    let mut s = String::new();
    platform
        .requests
        .render(&mut s, "etee_platform", "HTTP", ("service", "status"));
    single(
        &mut s,
        "etee_platform_work_in_use",
        "Blocking operations (store, KGSS, KeyDepot) under way, abandoned requests' included.",
        "gauge",
        platform.work.in_use(),
    );
    single(
        &mut s,
        "etee_platform_work_limit",
        "max_concurrent_work: blocking operations allowed at once.",
        "gauge",
        platform.work.max(),
    );
    single(
        &mut s,
        "etee_platform_work_refused_total",
        "Requests refused as busy (503 or SOA-02001): no turn within queue_timeout_ms.",
        "counter",
        platform.work.refused(),
    );
    single(
        &mut s,
        "etee_platform_callers",
        "Callers (client certificates, else addresses) with requests under way.",
        "gauge",
        platform.shares.callers(),
    );
    single(
        &mut s,
        "etee_platform_caller_refused_total",
        "Requests refused as busy because their caller had max_requests_per_caller under way.",
        "counter",
        platform.shares.refused(),
    );
    etee_services::revocation::render_metrics(
        &mut s,
        "etee_platform",
        &platform.anchors,
        crate::unix_now(),
    );
    etee_services::lifetime::render_metrics(&mut s, "etee_platform", &platform.own_certificates);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_statuses_have_fixed_labels() {
        assert_eq!(service_of("/EtkDepot/v1"), "etkdepot");
        assert_eq!(service_of("/etee/v1/etks?type=x"), "etkdepot");
        assert_eq!(service_of("/etee/v1/pubKeys/cacerts/jwks"), "etkdepot");
        assert_eq!(service_of("/Kgss/v1"), "kgss");
        assert_eq!(service_of("/etee/v1/kgss/keys/retrieve"), "kgss");
        assert_eq!(service_of("/etee/v1/keydepot/keys/abc"), "keydepot");
        assert_eq!(service_of("/metrics"), "platform");
        assert_eq!(service_of("/etc/passwd"), "other");
        assert_eq!(status_label(StatusCode::OK), "200");
        assert_eq!(status_label(StatusCode::SERVICE_UNAVAILABLE), "503");
        assert_eq!(status_label(StatusCode::IM_A_TEAPOT), "other-4xx");
        assert_eq!(status_label(StatusCode::BAD_GATEWAY), "other-5xx");
        assert_eq!(status_label(StatusCode::FOUND), "other-2xx-3xx");
        let answer = |status: u16, content_type: &str| {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                content_type.parse().unwrap(),
            );
            answer_label(&r)
        };
        assert_eq!(answer(500, "text/xml; charset=utf-8"), "soap-fault");
        assert_eq!(answer(500, "application/problem+json"), "500");
        assert_eq!(answer(200, "text/xml; charset=utf-8"), "200");
    }
}
