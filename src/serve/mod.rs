//! `emotune serve`: an HTTP server compatible with text-embeddings-inference's classification
//! API. Startup and shutdown live here; [`http`] accepts connections under their limits,
//! [`routes`] maps them to handlers behind [`guard`] (the key, the body, CORS) and generates the
//! OpenAPI description, [`handlers`] and [`tokens`] answer with the shapes of [`api`], [`queue`] batches concurrent requests for the
//! inference workers under a token budget, [`metrics`] counts.

pub mod api;
mod config;
mod explain;
mod guard;
mod handlers;
mod http;
mod metrics;
mod queue;
mod routes;
mod tokens;

pub use config::ServeConfig;
pub use guard::ApiKey;

use crate::infer::Predictor;
use anyhow::{Context, Result};
use handlers::AppState;
use metrics::Metrics;
use queue::{Queue, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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
    crate::status!("shutting down: finishing in-flight requests");
}

/// What computes: the device, and the number format of the encoder's matmuls (with the
/// instructions of the CPU kernel, which depend on the CPU).
fn compute_line(cfg: &ServeConfig, device: &candle_core::Device) -> String {
    let autocast = cfg.compute.dtype() == crate::model::Dtype::Bf16 && !device.is_cpu();
    let format = match (cfg.quantize, autocast) {
        (Some(q @ crate::model::Quantize::Int8), _) => {
            format!("{} (dot products on {})", q.name(), crate::model::kernels::qlinear::Isa::description())
        }
        (Some(q @ crate::model::Quantize::Bf16), _) => {
            format!("{} (float32 sums; {})", q.name(), crate::model::kernels::prepared::bf16_kernel_name())
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
    let cfg =
        ServeConfig { quantize: crate::model::inference_format(cfg.quantize, cfg.compute.dtype(), &device)?, ..cfg };
    let mut predictor =
        Predictor::load(&crate::hub::with_revision(&cfg.model, cfg.revision.as_deref())?, None, cfg.quantize, &device)?;
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
    let state = Arc::new(AppState {
        predictor,
        tokenizer,
        permits,
        cfg: cfg.clone(),
        queue: queue.clone(),
        metrics,
        explaining: std::sync::Mutex::new(()),
        explain_autocast: crate::explain::precision(&device, cfg.compute.dtype()),
    });
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
        crate::status!("{}", compute_line(&cfg, &device));
        crate::status!("{}", access_line(&cfg));
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        http::serve(listener, app, limits, shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    queue.close();
    // Scoring panics are caught per batch (`queue::Worker`); one anywhere else is reported.
    let crashed = workers.into_iter().map(|w| w.join().is_err()).filter(|&c| c).count();
    if crashed > 0 {
        anyhow::bail!("{crashed} inference worker(s) stopped with a panic");
    }
    crate::status!("stopped");
    Ok(())
}
