//! The router: every route with its handler, the layers in front of them, and the OpenAPI
//! description generated from the handlers' annotations and the API's types.

use super::api::TruncationDirection;
use super::api::{self, DecodeRequest, DecodeResponse, ErrorResponse, InputIds, Inputs, Parameters, PredictRequest};
use super::api::{PredictResponse, Prediction, ScoreFunction, SimpleToken, TokenizeRequest, TokenizeResponse};
use super::explain::{self, ExplainRequest, ExplainResponse, ExplainedText, LabelName};
use super::guard::{self, BodyLimits};
use super::handlers::{self, AppState};
use super::tokens;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Ref;
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
        .route("/explain", post(explain::explain))
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

/// This API's OpenAPI description, with this server's limits.
#[utoipa::path(get, path = "/api-doc/openapi.json", responses((status = 200, description = "OpenAPI 3 JSON")))]
pub async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    let limits = (st.cfg.max_client_batch_size, st.tokenizer.get_vocab_size(true) as u32);
    ([(header::CONTENT_TYPE, "application/json")], description(limits, st.predictor.labels())).into_response()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        openapi.components.get_or_insert_with(Default::default).add_security_scheme("api_key", scheme);
    }
}

/// The error statuses a route can answer, documented from what stands in front of its handler
/// (so the description cannot drift from the layers): the body guard on every route (a body
/// too large or too slow), the key on every protected route, JSON extraction and its checks on
/// the routes that read a body, and the queue on the classification routes. Each answers TEI's
/// error shape.
struct Errors;

/// Which layers a route passes through.
#[derive(Clone, Copy)]
struct Stages {
    json: bool,
    queued: bool,
}

/// A status, what it means, and whether a route with these stages (and protected or not) can
/// answer it.
type ErrorDoc = (&'static str, &'static str, fn(Stages, bool) -> bool);

const ERRORS: [ErrorDoc; 10] = [
    ("400", "Malformed JSON, or an empty text or batch", |s, _| s.json),
    ("401", "A key is set and the request lacks it (`Authorization: Bearer <key>`)", |_, protected| protected),
    ("408", "The body did not arrive within the read timeout", |_, _| true),
    ("413", "Too large a body (--payload-limit), or too many inputs (--max-client-batch-size)", |_, _| true),
    ("415", "A body that is not `application/json`", |s, _| s.json),
    ("422", "Wrong fields, or a text longer than the model takes without `truncate`", |s, _| s.json),
    ("424", "The model computed no finite score", |s, _| s.queued),
    ("429", "More concurrent requests than --max-concurrent-requests", |s, _| s.queued),
    ("500", "The tokenizer or model task failed", |s, _| s.json),
    ("503", "The server is shutting down", |s, _| s.queued),
];

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let queued = matches!(path.as_str(), "/" | "/predict" | "/invocations" | "/explain");
            let ops = [(Method::GET, item.get.as_mut()), (Method::POST, item.post.as_mut())];
            for (method, op) in ops.into_iter().filter_map(|(m, op)| Some((m, op?))) {
                let protected = !guard::is_open(&method, path);
                let stages = Stages { json: op.request_body.is_some(), queued: queued && method == Method::POST };
                add_errors(op, stages, protected);
            }
        }
    }
}

fn add_errors(op: &mut Operation, stages: Stages, protected: bool) {
    for (code, description, applies) in ERRORS {
        if applies(stages, protected) {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorResponse"))).build();
            let response = ResponseBuilder::new().description(description).content("application/json", body);
            op.responses.responses.entry(code.to_string()).or_insert_with(|| response.build().into());
        }
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
        explain::explain,
        tokens::tokenize,
        tokens::decode,
        handlers::info,
        handlers::health,
        handlers::ping,
        handlers::prometheus,
        openapi,
    ),
    components(schemas(PredictRequest, PredictResponse, Prediction, Parameters, ScoreFunction, TruncationDirection,
        Inputs, TokenizeRequest, TokenizeResponse, SimpleToken, InputIds, DecodeRequest, DecodeResponse, ErrorResponse,
        ExplainRequest, ExplainResponse, ExplainedText, LabelName, crate::explain::args::ExplanationJson,
        crate::explain::Word, crate::explain::args::TokenJson, crate::explain::Target)),
    modifiers(&BearerAuth, &Errors),
    security(("api_key" = []))
)]
pub struct ApiDoc;

/// The description, with the batch size and vocabulary `(max_client_batch_size, vocab)` and the
/// labels of the running server in the schemas of the inputs.
fn description(limits: (usize, u32), labels: &[String]) -> String {
    let mut doc = ApiDoc::openapi();
    if let Some(components) = doc.components.as_mut() {
        components.schemas.insert("Inputs".into(), api::inputs_schema(Some(limits.0)));
        components.schemas.insert("InputIds".into(), api::input_ids_schema(Some(limits)));
        components.schemas.insert("LabelName".into(), explain::label_schema(Some(labels)));
    }
    doc.to_pretty_json().expect("the API description serialises")
}
