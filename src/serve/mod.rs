//! `emotune serve`: an HTTP server compatible with text-embeddings-inference's classification
//! API (`POST /predict`), with dynamic batching across concurrent requests under a token
//! budget, inference on dedicated worker threads, TEI's limits and status codes, Prometheus
//! metrics, graceful shutdown and a small web page.

mod metrics;

use crate::infer::Predictor;
use crate::model::{softmax_last_dim, Dropout};
use crate::tokenize::Tokenized;
use anyhow::{Context, Result};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics::Metrics;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// Server settings (`emotune serve` flags).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: String,
    pub host: String,
    pub port: u16,
    /// Most tokens (padded rows × longest row) in one forward pass.
    pub max_batch_tokens: usize,
    /// Most inputs in one request (TEI's `max_client_batch_size`).
    pub max_client_batch_size: usize,
    /// Requests admitted at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Inference threads.
    pub workers: usize,
    /// Test hook: each worker waits this long before running a batch.
    pub batch_delay: Duration,
}

/// One request's tokenised inputs, waiting for a worker.
struct Job {
    rows: Vec<Tokenized>,
    raw_scores: bool,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// The queue between the HTTP handlers and the inference workers.
struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn push(&self, job: Job) {
        self.jobs.lock().expect("queue lock").0.push_back(job);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.jobs.lock().expect("queue lock").1 = true;
        self.ready.notify_all();
    }

    /// Waits for work and takes whole jobs while their rows fit the token budget together
    /// (padded to the longest row). A single job over the budget runs alone. `None` once closed
    /// and drained.
    fn take_batch(&self, max_tokens: usize) -> Option<Vec<Job>> {
        let mut guard = self.jobs.lock().expect("queue lock");
        loop {
            if !guard.0.is_empty() {
                break;
            }
            if guard.1 {
                return None;
            }
            guard = self.ready.wait(guard).expect("queue lock");
        }
        let mut batch = vec![guard.0.pop_front().expect("non-empty")];
        let (mut rows, mut longest) =
            (batch[0].rows.len(), batch[0].rows.iter().map(|r| r.ids.len()).max().unwrap_or(0));
        while let Some(next) = guard.0.front() {
            let n_rows = rows + next.rows.len();
            let n_long = longest.max(next.rows.iter().map(|r| r.ids.len()).max().unwrap_or(0));
            if n_rows * n_long > max_tokens {
                break;
            }
            rows = n_rows;
            longest = n_long;
            batch.push(guard.0.pop_front().expect("non-empty"));
        }
        Some(batch)
    }
}

struct AppState {
    predictor: Arc<Predictor>,
    cfg: ServeConfig,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
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

/// Runs batches until the queue closes.
fn worker(predictor: Arc<Predictor>, queue: Arc<Queue>, metrics: Arc<Metrics>, max_tokens: usize, delay: Duration) {
    let eval = Dropout::inference();
    while let Some(jobs) = queue.take_batch(max_tokens) {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let n_jobs = jobs.len();
        metrics.queue_depth.fetch_sub(n_jobs as i64, Ordering::SeqCst);
        let rows: Vec<&Tokenized> = jobs.iter().flat_map(|j| j.rows.iter()).collect();
        metrics.observe_batch(rows.len(), n_jobs);
        let started = Instant::now();
        let result = (|| -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)> {
            let mut logits_all = Vec::with_capacity(rows.len());
            let mut probs_all = Vec::with_capacity(rows.len());
            // A batch above the budget (one large request) runs in budget-sized chunks.
            let longest = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1).max(1);
            let chunk = (max_tokens / longest).max(1);
            for part in rows.chunks(chunk) {
                let batch = predictor.encoder.batch(part, &predictor.device)?;
                let logits = predictor.model.model.forward(&batch, &eval)?;
                probs_all.extend(softmax_last_dim(&logits)?.to_vec2::<f32>()?);
                logits_all.extend(logits.to_vec2::<f32>()?);
            }
            Ok((logits_all, probs_all))
        })();
        metrics.observe_inference(started.elapsed());
        let mut offset = 0;
        for job in jobs {
            let n = job.rows.len();
            let reply = match &result {
                Ok((logits, probs)) => {
                    let src = if job.raw_scores { logits } else { probs };
                    Ok(src[offset..offset + n].to_vec())
                }
                Err(e) => Err(format!("{e:#}")),
            };
            offset += n;
            let _ = job.reply.send(reply);
        }
    }
}

async fn predict(State(st): State<Arc<AppState>>, body: Result<Json<PredictRequest>, JsonRejection>) -> Response {
    let started = Instant::now();
    let response = predict_inner(&st, body).await;
    let resp = match response {
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
    if texts.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", "`inputs` cannot be empty"));
    }
    if texts.len() > st.cfg.max_client_batch_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Validation",
            format!("batch size {} > maximum allowed batch size {}", texts.len(), st.cfg.max_client_batch_size),
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "Empty", format!("input {i} is empty")));
    }
    let Ok(_permit) = st.permits.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Overloaded",
            "Model is overloaded: too many concurrent requests",
        ));
    };
    let predictor = st.predictor.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        predictor.encoder.tokenize(&refs)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Tokenizer", format!("{e:#}")))?;
    if !req.truncate.unwrap_or(false) {
        if let Some(i) = rows.iter().position(|r| r.truncated) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation",
                format!(
                    "input {i} is longer than the maximum of {} tokens; shorten it or send \"truncate\": true",
                    st.predictor.encoder.max_length()
                ),
            ));
        }
    }
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
            let ids = crate::infer::rank_descending(row);
            Value::Array(ids.into_iter().map(|i| json!({"label": labels[i], "score": row[i]})).collect())
        })
        .collect();
    Ok(if single { ranked.into_iter().next().expect("one input") } else { Value::Array(ranked) })
}

async fn info(State(st): State<Arc<AppState>>) -> Json<Value> {
    let labels = st.predictor.labels();
    let id2label: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect();
    let label2id: serde_json::Map<String, Value> =
        labels.iter().enumerate().map(|(i, l)| (l.clone(), json!(i))).collect();
    Json(json!({
        "model_id": st.cfg.model,
        "model_dtype": "float32",
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

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing in-flight requests");
}

/// Loads the model and serves until SIGTERM/Ctrl-C; in-flight requests finish first.
pub fn serve(cfg: ServeConfig) -> Result<()> {
    anyhow::ensure!(cfg.max_batch_tokens > 0 && cfg.max_client_batch_size > 0, "limits must be at least 1");
    anyhow::ensure!(cfg.max_concurrent_requests > 0 && cfg.workers > 0, "limits must be at least 1");
    let device = candle_core::Device::Cpu;
    let predictor = Arc::new(Predictor::load(&cfg.model, None, &device)?);
    let queue = Arc::new(Queue { jobs: Mutex::new((VecDeque::new(), false)), ready: Condvar::new() });
    let metrics = Arc::new(Metrics::default());
    let workers: Vec<_> = (0..cfg.workers)
        .map(|i| {
            let (p, q, m) = (predictor.clone(), queue.clone(), metrics.clone());
            let (budget, delay) = (cfg.max_batch_tokens, cfg.batch_delay);
            std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || worker(p, q, m, budget, delay))
                .expect("spawning a worker thread")
        })
        .collect();
    let state = Arc::new(AppState {
        predictor,
        permits: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
        cfg: cfg.clone(),
        queue: queue.clone(),
        metrics,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/predict", post(predict))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    queue.close();
    for w in workers {
        let _ = w.join();
    }
    eprintln!("stopped");
    Ok(())
}
