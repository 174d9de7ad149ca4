//! What stands between a client and the handlers: the API key (compared in constant time),
//! the request body's size and arrival time, and CORS. Each is a layer of the router, so a
//! refused request never reaches JSON parsing or the model.

use super::api::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The secret of `--api-key`. Its `Debug` never shows it, so no log or panic message can.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(s: &str) -> Result<ApiKey, String> {
        if s.trim().is_empty() {
            return Err("the API key must not be empty".into());
        }
        Ok(ApiKey(s.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// Whether `given` equals `key`. The time taken depends on the length of `given` (which the
/// caller knows) and nothing else: every byte is compared, with no early exit at the first
/// difference and no dependence on the key's length.
pub fn same_secret(given: &[u8], key: &[u8]) -> bool {
    if key.is_empty() {
        return false;
    }
    let mut diff = given.len() ^ key.len();
    for (i, &b) in given.iter().enumerate() {
        // black_box keeps the optimiser from turning the fold into an early exit.
        diff = std::hint::black_box(diff | usize::from(b ^ key[i % key.len()]));
    }
    diff == 0
}

/// Routes anyone may call: the health checks (and the page at `GET /`, which asks for the key
/// itself and holds no data).
pub(crate) fn is_open(method: &Method, path: &str) -> bool {
    method == Method::GET && matches!(path, "/" | "/health" | "/ping")
}

/// Requires `Authorization: Bearer KEY` on every route but the open ones; otherwise 401 with a
/// JSON error that says nothing about the key.
pub async fn require_key(State(key): State<Arc<ApiKey>>, req: Request, next: Next) -> Response {
    if is_open(req.method(), req.uri().path()) || req.method() == Method::OPTIONS {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if given.is_some_and(|g| same_secret(g, key.0.as_bytes())) {
        return next.run(req).await;
    }
    let msg = "an API key is required: send the header `Authorization: Bearer <key>`";
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", msg).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// How much body a request may carry and how long it may take to arrive.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reads the whole body before any handler runs: a declared length over the limit is refused
/// (413) before a byte of it is read, a chunked body is cut off at the limit (413), and a body
/// that has not fully arrived within the timeout ends the request (408). Handlers then parse
/// bytes already in memory.
pub async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let too_large = || {
        let msg = format!("the request body is larger than the limit of {} bytes", limits.max_bytes);
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Validation", msg).into_response()
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes: Bytes = match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => return too_large(),
        Ok(Err(e)) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "Validation", format!("reading the body: {e}"))
                .into_response()
        }
        Err(_) => {
            let msg = format!("the request body did not arrive within {} s", limits.timeout.as_secs_f64());
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, "Validation", msg).into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// CORS for the given origins (`*`: any); `None` when none are given, so browsers keep the
/// same-origin rule.
pub fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("--cors-allow-origin: {o:?} is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret-key", b"s3cret-key"));
        for wrong in [&b""[..], b"s3cret-ke", b"s3cret-key!", b"S3cret-key", b"s3cret-kez", b"s3cret-keys3cret-key"] {
            assert!(!same_secret(wrong, b"s3cret-key"), "{wrong:?}");
        }
        assert!(!same_secret(b"", b""), "an empty key never matches");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let k: ApiKey = "hunter2".parse().unwrap();
        assert!(!format!("{k:?}").contains("hunter2"));
        assert!(" ".parse::<ApiKey>().is_err());
    }

    #[test]
    fn only_health_checks_and_the_page_are_open() {
        assert!(is_open(&Method::GET, "/health") && is_open(&Method::GET, "/ping") && is_open(&Method::GET, "/"));
        assert!(!is_open(&Method::POST, "/") && !is_open(&Method::GET, "/info") && !is_open(&Method::GET, "/metrics"));
    }
}
