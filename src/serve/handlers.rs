//! The HTTP API: text-embeddings-inference's `POST /predict` (also at `POST /` and SageMaker's
//! `POST /invocations`) with its limits, error codes and timing headers, the Inference API's
//! `parameters`, `GET /info`, the health checks, `/metrics` (Prometheus) and the page.

use super::api::{self, check_inputs, ApiError, Inputs, Parameters, PredictRequest, PredictResponse};
use super::api::{Prediction, ScoreFunction};
use super::config::ServeConfig;
use super::metrics::Metrics;
use super::queue::{Answer, Failure, Job, Queue};
use crate::infer::{rank_descending, Predictor};
use crate::model::Task;
use crate::tokenize::Tokenized;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// What the handlers share.
pub struct AppState {
    pub predictor: Arc<Predictor>,
    /// The model's tokenizer without truncation, for `/tokenize` and `/decode`.
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    pub cfg: ServeConfig,
    pub queue: Arc<Queue>,
    pub permits: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// Held while an explanation computes: one at a time (each is already a batch).
    pub explaining: std::sync::Mutex<()>,
    /// What explanations compute in (`--dtype bf16` on AMX or a GPU: bf16).
    pub explain_autocast: Option<candle_core::DType>,
}

/// Classify texts: one text gives its labels ranked by score, a batch a list per text.
#[utoipa::path(post, path = "/predict", request_body = PredictRequest,
    responses((status = 200, body = PredictResponse, description = "Labels ranked by score, with TEI's x-* timing headers")))]
pub async fn predict(st: State<Arc<AppState>>, body: api::Body) -> Response {
    predict_at("/predict", st, body).await
}

/// The same as `POST /predict` (TEI routes a classifier's base URL there; Hugging Face's
/// `InferenceClient` posts here).
#[utoipa::path(post, path = "/", request_body = PredictRequest,
    responses((status = 200, body = PredictResponse, description = "As POST /predict")))]
pub async fn predict_root(st: State<Arc<AppState>>, body: api::Body) -> Response {
    predict_at("/", st, body).await
}

/// The same as `POST /predict` (Amazon SageMaker's route).
#[utoipa::path(post, path = "/invocations", request_body = PredictRequest,
    responses((status = 200, body = PredictResponse, description = "As POST /predict")))]
pub async fn invocations(st: State<Arc<AppState>>, body: api::Body) -> Response {
    predict_at("/invocations", st, body).await
}

async fn predict_at(endpoint: &'static str, State(st): State<Arc<AppState>>, body: api::Body) -> Response {
    let started = Instant::now();
    let resp = match predict_inner(&st, body, started).await {
        Ok((headers, v)) => (StatusCode::OK, headers, Json(v)).into_response(),
        Err(e) => e.into_response(),
    };
    st.metrics.observe_request(endpoint, resp.status().as_u16(), started.elapsed());
    resp
}

async fn predict_inner(
    st: &Arc<AppState>,
    body: api::Body,
    started: Instant,
) -> Result<(HeaderMap, PredictResponse), ApiError> {
    let req: PredictRequest = api::object_body(body)?;
    if req.truncation_direction == Some(api::TruncationDirection::Left) {
        let msg = "truncation_direction Left is not supported: texts are cut on the right";
        return Err(ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, msg));
    }
    if req.parameters.as_ref().and_then(|p| p.top_k) == Some(0) {
        return Err(ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, "parameters.top_k must be at least 1"));
    }
    let (texts, single, _permit) = admit(st, req.inputs)?;
    let chars = texts.iter().map(|t| t.chars().count()).sum();
    let tokenizing = Instant::now();
    let rows = tokenize(st, texts, req.truncate.unwrap_or(false)).await?;
    let tokenization = tokenizing.elapsed();
    let tokens = rows.iter().map(|r| r.ids.len()).sum();
    let function = req.parameters.as_ref().and_then(|p| p.function_to_apply);
    let answer = run_job(st, rows, req.raw_scores || function.is_some()).await?;
    let compute_type = crate::device::compute_type(&st.predictor.device);
    let (queue, inference) = (answer.queue, answer.inference);
    let meta = Timing { started, compute_type, chars, tokens, tokenization, queue, inference };
    let ranked = rank(st, answer.scores, function, req.parameters.as_ref());
    let response = match (single, req.parameters.is_some()) {
        (true, false) => PredictResponse::One(ranked.into_iter().next().expect("one input")),
        _ => PredictResponse::Many(ranked),
    };
    Ok((meta.headers(), response))
}

/// A request's texts and whether it sent one text, checked against the batch limits, with the
/// concurrency permit that is held while it is served (429 when none is free).
pub(super) fn admit(st: &AppState, inputs: Inputs) -> Result<(Vec<String>, bool, OwnedSemaphorePermit), ApiError> {
    let (texts, single) = match inputs {
        Inputs::One(t) => (vec![t], true),
        Inputs::Many(v) => (v, false),
    };
    check_inputs(&texts, st.cfg.max_client_batch_size)?;
    let Ok(permit) = st.permits.clone().try_acquire_owned() else {
        let msg = "Model is overloaded: too many concurrent requests";
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Overloaded", msg));
    };
    Ok((texts, single, permit))
}

/// Queues the rows for a worker and waits for their scores (logits when `raw`).
async fn run_job(st: &Arc<AppState>, rows: Vec<Tokenized>, raw: bool) -> Result<Answer, ApiError> {
    let (tx, rx) = oneshot::channel();
    st.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
    st.queue.push(Job { rows, raw_scores: raw, reply: tx, queued: Instant::now() });
    rx.await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Unhealthy", "the server is shutting down"))?
        .map_err(|e| match e {
            Failure::Model(e) => ApiError::new(StatusCode::FAILED_DEPENDENCY, "Backend", e),
            Failure::Panic(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e),
        })
}

/// Each row's labels ranked by score, after `function` when one was asked for (the scores are
/// then logits) and cut to `top_k`.
fn rank(
    st: &AppState,
    scores: Vec<Vec<f32>>,
    function: Option<ScoreFunction>,
    params: Option<&Parameters>,
) -> Vec<Vec<Prediction>> {
    let labels = st.predictor.labels();
    let top_k = params.and_then(|p| p.top_k).unwrap_or(labels.len());
    scores
        .into_iter()
        .map(|row| {
            let row = match function {
                Some(f) => apply(f, &row),
                None => row,
            };
            let ranked = rank_descending(&row).into_iter().take(top_k);
            ranked.map(|i| Prediction { label: labels[i].clone(), score: row[i] }).collect()
        })
        .collect()
}

/// The Inference API's `function_to_apply` on one row of logits.
pub fn apply(f: ScoreFunction, logits: &[f32]) -> Vec<f32> {
    match f {
        ScoreFunction::None => logits.to_vec(),
        ScoreFunction::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        ScoreFunction::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        }
    }
}

/// What TEI reports about a request in its `x-*` response headers (times in milliseconds).
struct Timing {
    started: Instant,
    compute_type: &'static str,
    chars: usize,
    tokens: usize,
    tokenization: Duration,
    queue: Duration,
    inference: Duration,
}

impl Timing {
    fn headers(&self) -> HeaderMap {
        let total = self.started.elapsed().as_millis();
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, v: String| {
            h.insert(name, HeaderValue::from_str(&v).expect("digits are a valid header value"));
        };
        put("x-compute-type", self.compute_type.to_string());
        put("x-compute-time", total.to_string());
        put("x-compute-characters", self.chars.to_string());
        put("x-compute-tokens", self.tokens.to_string());
        put("x-total-time", total.to_string());
        put("x-tokenization-time", self.tokenization.as_millis().to_string());
        put("x-queue-time", self.queue.as_millis().to_string());
        put("x-inference-time", self.inference.as_millis().to_string());
        h
    }
}

/// Tokenises off the async runtime; an input over the model's length is refused unless the
/// request allows truncation.
pub(super) async fn tokenize(
    st: &Arc<AppState>,
    texts: Vec<String>,
    truncate: bool,
) -> Result<Vec<Tokenized>, ApiError> {
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
        return Err(ApiError::validation(StatusCode::UNPROCESSABLE_ENTITY, msg));
    }
    Ok(rows)
}

/// The served model and the server's limits.
#[utoipa::path(get, path = "/info", responses((status = 200, description = "The model, its labels and the limits")))]
pub async fn info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let labels = st.predictor.labels();
    let id2label: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    let thresholds: Option<serde_json::Map<String, Value>> = (st.predictor.task() == Task::MultiLabel)
        .then(|| labels.iter().zip(&st.predictor.thresholds).map(|(l, &t)| (l.clone(), json!(t))).collect());
    Json(json!({
        "model_id": st.cfg.model,
        "model_dtype": match (st.cfg.quantize, st.predictor.model.autocast.is_some()) {
            (Some(q), _) => q.name(),
            (None, true) => "bf16",
            (None, false) => "float32",
        },
        "problem_type": st.predictor.task().problem_type(),
        "thresholds": thresholds,
        "model_type": {"classifier": {"id2label": id2label, "label2id": label2id}},
        "labels": labels,
        "max_input_length": st.predictor.encoder.max_length(),
        "max_batch_tokens": st.cfg.max_batch_tokens,
        "max_client_batch_size": st.cfg.max_client_batch_size,
        "max_concurrent_requests": st.cfg.max_concurrent_requests,
        "payload_limit": st.cfg.payload_limit,
        "workers": st.cfg.workers,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Health check (needs no key).
#[utoipa::path(get, path = "/health", security(()), responses((status = 200, description = "Serving")))]
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Health check of Amazon SageMaker (needs no key).
#[utoipa::path(get, path = "/ping", security(()), responses((status = 200, description = "Serving")))]
pub async fn ping() -> Json<Value> {
    health().await
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, body = String, description = "Prometheus text format")))]
pub async fn prometheus(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

/// A page to try the model in a browser; it also answers 200 as a health check, as TEI's
/// `GET /` does (needs no key; with one set, the page asks for it).
#[utoipa::path(get, path = "/", security(()), responses((status = 200, body = String, content_type = "text/html", description = "HTML")))]
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
