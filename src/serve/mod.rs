//! `emotune serve`: an HTTP server compatible with text-embeddings-inference's classification
//! API. Startup and shutdown live here; [`http`] accepts connections under their limits,
//! [`routes`] maps them to handlers behind [`guard`] (the key, the body, CORS) and generates the
//! OpenAPI description, [`handlers`] and [`tokens`] answer with the shapes of [`api`], [`queue`] batches concurrent requests for the
//! inference workers under a token budget, [`metrics`] counts.

pub mod api;
mod guard;
mod handlers;
mod http;
mod metrics;
mod queue;
mod routes;
mod tokens;

pub use guard::ApiKey;

use crate::infer::Predictor;
use anyhow::{Context, Result};
use handlers::AppState;
use metrics::Metrics;
use queue::{Queue, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Server settings (the `emotune serve` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most tokens (rows × longest row) in one forward pass across requests.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Most inputs in one request (more: 413).
    #[arg(long, default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Most requests admitted at once (more: 429).
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Inference worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Multi-label models: the probability from which the page marks a label (default: the
    /// model's saved thresholds, else 0.5); the API returns every label's score either way.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Run the encoder's linear layers in int8 (weights per output channel, quantised at load;
    /// activations per token). CPU only; faster, with predictions that can differ slightly
    /// from float32 (the README measures how much).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    /// Run the encoder's linear layers in bf16 (weights rounded at load, activations at each
    /// call, float32 sums) on CPUs with AVX-512 BF16; elsewhere float32, with a warning.
    #[arg(long, value_enum, default_value = "f32", conflicts_with = "quantize")]
    pub dtype: crate::model::Dtype,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
    /// Require `Authorization: Bearer KEY` on every route but `GET /`, `/health` and `/ping`.
    #[arg(long, env = "EMOTUNE_API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,
    /// Origins that browsers may call the API from (CORS; comma-separated, `*` for any).
    /// Default: none, so only pages served by this server can call it.
    #[arg(long, value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,
    /// Largest request body in bytes; a larger one gets 413 before it is read.
    #[arg(long, default_value_t = 2_000_000)]
    pub payload_limit: usize,
    /// Seconds a client has to send a request's headers, and then its whole body (408), and
    /// that an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 10.0)]
    pub read_timeout: f64,
    /// Most connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Test hook: delay every batch by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    pub batch_delay_ms: u64,
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

/// What computes: the device, and the number format of the encoder's matmuls (with the
/// instructions of the CPU kernel, which depend on the CPU).
fn compute_line(cfg: &ServeConfig, device: &candle_core::Device) -> String {
    let format = match (cfg.quantize, cfg.compute.bf16) {
        (Some(q @ crate::model::Quantize::Int8), _) => {
            format!("{} (dot products on {})", q.name(), crate::model::kernels::qlinear::Isa::detect().name())
        }
        (Some(q @ crate::model::Quantize::Bf16), _) => {
            format!("{} (float32 sums; {})", q.name(), crate::model::kernels::panels_bf16::NAME)
        }
        (None, true) => "bf16 matmuls, float32 weights".to_string(),
        (None, false) if device.is_cpu() => {
            format!("float32 (weights packed at load, {})", crate::model::kernels::panels::Isa::detect().name())
        }
        (None, false) => "float32".to_string(),
    };
    format!("model {} on {}: {format}", crate::display::escape(&cfg.model), crate::device::name(device))
}

/// Who may call: says whether a key is set, never the key.
fn access_line(cfg: &ServeConfig) -> String {
    let key = match cfg.api_key {
        Some(_) => "API key: set (requests need Authorization: Bearer <key>)",
        None => "API key: none (anyone who can reach the port can call the API)",
    };
    let cors = match cfg.cors_allow_origin.is_empty() {
        true => "none".to_string(),
        false => cfg.cors_allow_origin.join(", "),
    };
    format!("{key}; CORS origins: {cors}; payload limit {} bytes", cfg.payload_limit)
}

/// Loads the model and serves until SIGTERM/Ctrl-C; in-flight requests finish first.
pub fn serve(cfg: ServeConfig) -> Result<()> {
    anyhow::ensure!(cfg.max_batch_tokens > 0 && cfg.max_client_batch_size > 0, "limits must be at least 1");
    anyhow::ensure!(cfg.max_concurrent_requests > 0 && cfg.workers > 0, "limits must be at least 1");
    anyhow::ensure!(cfg.payload_limit > 0 && cfg.max_connections > 0, "limits must be at least 1");
    anyhow::ensure!(
        cfg.read_timeout.is_finite() && (0.001..=3600.0).contains(&cfg.read_timeout),
        "--read-timeout must be between 0.001 and 3600 seconds"
    );
    let (device, autocast) = cfg.compute.resolve()?;
    // from here on `quantize` is the format the model runs in (`--dtype bf16` included)
    let cfg = ServeConfig { quantize: crate::model::inference_format(cfg.quantize, cfg.dtype, &device)?, ..cfg };
    let mut predictor = Predictor::load(&cfg.model, None, cfg.quantize, &device)?;
    predictor.model.autocast = autocast;
    if let Some(t) = cfg.threshold {
        predictor.set_threshold(t)?;
    }
    let predictor = Arc::new(predictor);
    let (queue, metrics) = (Arc::new(Queue::default()), Arc::new(Metrics::default()));
    let workers: Vec<_> = (0..cfg.workers)
        .map(|i| {
            let worker = Worker {
                predictor: predictor.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
                max_tokens: cfg.max_batch_tokens,
                delay: Duration::from_millis(cfg.batch_delay_ms),
            };
            std::thread::Builder::new().name(format!("inference-{i}")).spawn(move || worker.run())
        })
        .collect::<std::io::Result<_>>()
        .context("spawning the inference workers")?;
    let permits = Arc::new(Semaphore::new(cfg.max_concurrent_requests));
    let mut tokenizer = predictor.encoder.tokenizer().clone();
    tokenizer.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer = Arc::new(tokenizer);
    let state = Arc::new(AppState { predictor, tokenizer, permits, cfg: cfg.clone(), queue: queue.clone(), metrics });
    let app = routes::router(state)?;
    let limits = http::ConnLimits {
        max_connections: cfg.max_connections,
        header_timeout: Duration::from_secs_f64(cfg.read_timeout),
        drain_timeout: Duration::from_secs(60),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
        // The access line first: whoever waits for "listening on" then finds it in the log.
        eprintln!("{}", compute_line(&cfg, &device));
        eprintln!("{}", access_line(&cfg));
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        http::serve(listener, app, limits, shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    queue.close();
    for w in workers {
        let _ = w.join();
    }
    eprintln!("stopped");
    Ok(())
}
