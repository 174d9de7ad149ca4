//! The HTTP API: text-embeddings-inference's `POST /predict` with its limits and error codes,
//! `GET /info`, `/health`, `/metrics` (Prometheus) and the page.

use super::metrics::Metrics;
use super::queue::{Job, Queue};
use super::ServeConfig;
use crate::infer::{rank_descending, Predictor};
use crate::model::Task;
use crate::tokenize::Tokenized;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, Semaphore};

/// What the handlers share.
pub struct AppState {
    pub predictor: Arc<Predictor>,
    pub cfg: ServeConfig,
    pub queue: Arc<Queue>,
    pub permits: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
}

/// The routes of the server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/predict", post(predict))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .with_state(state)
}

/// An error in TEI's shape: `{"error": ..., "error_type": ...}`.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message, "error_type": self.kind}))).into_response()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Inputs,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    raw_scores: bool,
    /// Accepted for TEI compatibility; only right-truncation is done.
    #[serde(default)]
    #[allow(dead_code)]
    truncation_direction: Option<String>,
}

async fn predict(State(st): State<Arc<AppState>>, body: Result<Json<PredictRequest>, JsonRejection>) -> Response {
    let started = Instant::now();
    let resp = match predict_inner(&st, body).await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.observe_request("/predict", resp.status().as_u16(), started.elapsed());
    resp
}

async fn predict_inner(
    st: &Arc<AppState>,
    body: Result<Json<PredictRequest>, JsonRejection>,
) -> Result<Value, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), "Validation", e.body_text()))?;
    let (texts, single) = match req.inputs {
        Inputs::One(t) => (vec![t], true),
        Inputs::Many(v) => (v, false),
    };
    check_inputs(&texts, st.cfg.max_client_batch_size)?;
    let Ok(_permit) = st.permits.clone().try_acquire_owned() else {
        let msg = "Model is overloaded: too many concurrent requests";
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Overloaded", msg));
    };
    let rows = tokenize(st, texts, req.truncate.unwrap_or(false)).await?;
    let (tx, rx) = oneshot::channel();
    st.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
    st.queue.push(Job { rows, raw_scores: req.raw_scores, reply: tx });
    let scores = rx
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unhealthy", "the server is shutting down"))?
        .map_err(|e| ApiError::new(StatusCode::FAILED_DEPENDENCY, "Backend", e))?;
    let labels = st.predictor.labels();
    let ranked: Vec<Value> = scores
        .iter()
        .map(|row| {
            Value::Array(
                rank_descending(row).into_iter().map(|i| json!({"label": labels[i], "score": row[i]})).collect(),
            )
        })
        .collect();
    Ok(if single { ranked.into_iter().next().expect("one input") } else { Value::Array(ranked) })
}

/// TEI's checks before any work: inputs present, not too many, none empty.
fn check_inputs(texts: &[String], max_client_batch_size: usize) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", "`inputs` cannot be empty"));
    }
    if texts.len() > max_client_batch_size {
        let msg = format!("batch size {} > maximum allowed batch size {max_client_batch_size}", texts.len());
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Validation", msg));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", format!("input {i} is empty")));
    }
    Ok(())
}

/// Tokenises off the async runtime; an input over the model's length is refused unless the
/// request allows truncation.
async fn tokenize(st: &Arc<AppState>, texts: Vec<String>, truncate: bool) -> Result<Vec<Tokenized>, ApiError> {
    let predictor = st.predictor.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        predictor.encoder.tokenize(&refs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Tokenizer", format!("{e:#}")))?;
    if let Some(i) = rows.iter().position(|r| r.truncated).filter(|_| !truncate) {
        let max = st.predictor.encoder.max_length();
        let msg =
            format!("input {i} is longer than the maximum of {max} tokens; shorten it or send \"truncate\": true");
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Validation", msg));
    }
    Ok(rows)
}

async fn info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let labels = st.predictor.labels();
    let id2label: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    let thresholds: Option<serde_json::Map<String, Value>> = (st.predictor.task() == Task::MultiLabel)
        .then(|| labels.iter().zip(&st.predictor.thresholds).map(|(l, &t)| (l.clone(), json!(t))).collect());
    Json(json!({
        "model_id": st.cfg.model,
        "model_dtype": "float32",
        "problem_type": st.predictor.task().problem_type(),
        "thresholds": thresholds,
        "model_type": {"classifier": {"id2label": id2label, "label2id": label2id}},
        "labels": labels,
        "max_input_length": st.predictor.encoder.max_length(),
        "max_batch_tokens": st.cfg.max_batch_tokens,
        "max_client_batch_size": st.cfg.max_client_batch_size,
        "max_concurrent_requests": st.cfg.max_concurrent_requests,
        "workers": st.cfg.workers,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn prometheus(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such route")
}
