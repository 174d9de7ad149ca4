//! The server's settings: the `emotune serve` flags.

use super::guard::ApiKey;

/// Server settings (the `emotune serve` flags).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short, value_name = "MODEL")]
    pub model: String,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// The address to listen on (0.0.0.0: every interface; then set --api-key).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDRESS")]
    pub host: String,
    /// Port (0: any free port; the chosen address is printed).
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,
    /// Most tokens (rows × longest row) in one forward pass across requests.
    #[arg(long, default_value_t = 16384, value_name = "TOKENS")]
    pub max_batch_tokens: usize,
    /// Most inputs in one request (more: 413).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_client_batch_size: usize,
    /// Most requests admitted at once (more: 429).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_concurrent_requests: usize,
    /// Inference worker threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers: usize,
    /// Multi-label models: the probability from which the page marks a label (default: the
    /// model's saved thresholds, else 0.5); the API returns every label's score either way.
    #[arg(long, value_name = "PROB")]
    pub threshold: Option<f32>,
    /// Run the encoder's linear layers in int8 (weights per output channel, quantised at load;
    /// activations per token). CPU only; faster, with predictions that can differ slightly
    /// from float32 (the README measures how much).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
    /// Require `Authorization: Bearer KEY` on every route but `GET /`, `/health` and `/ping`.
    #[arg(long, env = "EMOTUNE_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<ApiKey>,
    /// Origins that browsers may call the API from (CORS; comma-separated, `*` for any).
    /// Default: none, so only pages served by this server can call it.
    #[arg(long, value_delimiter = ',', value_name = "ORIGIN")]
    pub cors_allow_origin: Vec<String>,
    /// Largest request body in bytes; a larger one gets 413 before it is read.
    #[arg(long, default_value_t = 2_000_000, value_name = "BYTES")]
    pub payload_limit: usize,
    /// Seconds a client has to send a request's headers, and then its whole body (408), and
    /// that an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub read_timeout: f64,
    /// Most connections open at once; more wait to be accepted.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_connections: usize,
    /// Milliseconds a worker waits once a request is queued before it takes a batch, so that
    /// requests arriving together are scored together (more throughput, that much more
    /// latency; default 0: score at once).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub batch_delay_ms: u64,
}
