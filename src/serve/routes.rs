//! The router: every route with its handler, the layers in front of them, and the OpenAPI
//! description generated from the handlers' annotations and the API's types.

use super::api::TruncationDirection;
use super::api::{self, DecodeRequest, DecodeResponse, ErrorResponse, InputIds, Inputs, Parameters, PredictRequest};
use super::api::{PredictResponse, Prediction, ScoreFunction, SimpleToken, TokenizeRequest, TokenizeResponse};
use super::guard::{self, BodyLimits};
use super::handlers::{self, AppState};
use super::tokens;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Where the OpenAPI description is served (TEI's path).
pub const OPENAPI_PATH: &str = "/api-doc/openapi.json";

/// The routes of the server and the layers in front of them (outermost first): CORS, the API
/// key, the body's size and arrival time.
pub fn router(state: Arc<AppState>) -> anyhow::Result<Router> {
    let cfg = state.cfg.clone();
    let limits = BodyLimits { max_bytes: cfg.payload_limit, timeout: Duration::from_secs_f64(cfg.read_timeout) };
    let mut app = Router::new()
        .route("/", get(handlers::page).post(handlers::predict_root))
        .route("/predict", post(handlers::predict))
        .route("/invocations", post(handlers::invocations))
        .route("/tokenize", post(tokens::tokenize))
        .route("/decode", post(tokens::decode))
        .route("/info", get(handlers::info))
        .route("/health", get(handlers::health))
        .route("/ping", get(handlers::ping))
        .route("/metrics", get(handlers::prometheus))
        .route(OPENAPI_PATH, get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(cfg.payload_limit))
        .layer(from_fn_with_state(limits, guard::read_body));
    if let Some(key) = cfg.api_key {
        app = app.layer(from_fn_with_state(Arc::new(key), guard::require_key));
    }
    if let Some(cors) = guard::cors(&cfg.cors_allow_origin)? {
        app = app.layer(cors);
    }
    Ok(app)
}

async fn not_found() -> api::ApiError {
    api::ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such route")
}

async fn method_not_allowed() -> api::ApiError {
    api::ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Validation", "this route does not take that method")
}

/// This API's OpenAPI description.
#[utoipa::path(get, path = "/api-doc/openapi.json", responses((status = 200, description = "OpenAPI 3 JSON")))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi.components.get_or_insert_with(Default::default).add_security_scheme("api_key", scheme);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "emotune serve",
        description = "Emotion classification over HTTP, compatible with text-embeddings-inference. \
            With --api-key, every route except GET /, /health and /ping needs `Authorization: Bearer <key>`."
    ),
    paths(
        handlers::page,
        handlers::predict_root,
        handlers::predict,
        handlers::invocations,
        tokens::tokenize,
        tokens::decode,
        handlers::info,
        handlers::health,
        handlers::ping,
        handlers::prometheus,
        openapi,
    ),
    components(schemas(PredictRequest, PredictResponse, Prediction, Parameters, ScoreFunction, TruncationDirection,
        Inputs, TokenizeRequest, TokenizeResponse, SimpleToken, InputIds, DecodeRequest, DecodeResponse, ErrorResponse)),
    modifiers(&BearerAuth),
    security(("api_key" = []))
)]
pub struct ApiDoc;

/// The OpenAPI description as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().expect("the API description serialises")
}
