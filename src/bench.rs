//! `emotune bench`: training-step and inference timings of a randomly initialised model of a
//! given config's shape (DistilBERT-base by default), on synthetic batches, with the seed
//! recipe's optimiser settings.

use crate::model::kernels::profile;
use crate::model::kernels::qlinear::Isa;
use crate::model::{
    cross_entropy, random_classifier, random_classifier_for_inference, Dropout, LoadedModel, ModelConfig, Quantize,
};
use crate::optim::AdamW;
use crate::tokenize::Batch;
use crate::train::{TrainConfig, DEFAULT_MODEL};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// The labels of the benchmark's classification head (dair-ai/emotion's).
const LABELS: [&str; 6] = ["sadness", "joy", "love", "anger", "fear", "surprise"];
/// Seeds the random weights and dropout, as the seed recipe seeds training.
const SEED: u64 = 42;

/// The model shape to time: a parsed config and its text (for `--write-model`).
pub struct Shape {
    pub config: ModelConfig,
    pub json: String,
    /// Where the shape came from, for the README of a written model.
    pub name: String,
}

impl Shape {
    /// The config at `path`, or the built-in `distilbert-base-uncased` shape.
    pub fn load(path: Option<&Path>) -> Result<Shape> {
        let (json, name) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                (text, p.display().to_string())
            }
            None => (crate::model::distilbert::BASE_UNCASED_CONFIG.to_string(), DEFAULT_MODEL.to_string()),
        };
        let config = ModelConfig::from_json(&json).with_context(|| format!("in {name}"))?;
        Ok(Shape { config, json, name })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeReport {
    pub batch: usize,
    pub seq: usize,
    /// Where it ran: `cpu` or `cuda:N`.
    pub device: String,
    /// The CPU as the code sees it ([`crate::cpu::CpuIdentity::describe`]): figures depend on it.
    pub cpu: String,
    /// Parameters of the timed classifier (the encoder and a six-label head): names the shape.
    pub params: usize,
    /// Trained in bf16 (`--dtype bf16` on a GPU or a CPU with AMX): the matmuls in bf16, everything else f32.
    pub bf16: bool,
    /// `"int8"` or `"bf16"` when the encoder's linear layers ran in that format (`--quantize`,
    /// `--dtype`), else null (float32).
    pub quantize: Option<Quantize>,
    /// The instructions of the int8 kernel, when quantised.
    pub int8_kernel: Option<String>,
    /// The instructions of the float32 inference kernel (weights packed at load), on the CPU
    /// without `--quantize` and `--dtype bf16`; else null.
    pub f32_kernel: Option<&'static str>,
    /// Median seconds of one full training step (forward + backward + optimiser); null when
    /// training was not measured (`--skip-training`, or a quantised model, which cannot train).
    pub train_step_s: Option<f64>,
    pub forward_s: Option<f64>,
    pub backward_s: Option<f64>,
    pub optimizer_s: Option<f64>,
    /// Median seconds of one forward pass without dropout or gradients' use.
    pub eval_forward_s: f64,
    /// Texts per second classified at this batch size.
    pub predict_texts_per_s: f64,
    /// Seconds to classify one text of this length: the median and the 99th percentile of
    /// `latency_runs` forward passes.
    pub one_text_p50_s: f64,
    pub one_text_p99_s: f64,
    pub latency_runs: usize,
    /// Texts per second at batch 1, 8 and the benchmark's batch (each the median of `steps`
    /// forward passes).
    pub throughput: Vec<Throughput>,
    /// Peak resident memory of the process while measuring this shape.
    pub peak_rss_mb: f64,
    pub steps: usize,
    /// With `--profile`: mean seconds per training step spent in each fused kernel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub batch: usize,
    pub texts_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub seconds_per_step: f64,
    pub calls_per_step: f64,
}

pub struct BenchOptions {
    pub batch: usize,
    pub seqs: Vec<usize>,
    pub steps: usize,
    pub warmup: usize,
    /// Forward passes of one text behind the latency percentiles.
    pub latency_runs: usize,
    /// Account the time of each fused kernel during the measured training steps.
    pub profile: bool,
    /// Measure training steps too (never for a quantised model).
    pub train: bool,
    /// Quantise the encoder's linear layers (inference only).
    pub quantize: Option<Quantize>,
    /// Mixed precision: matmuls in bf16 (autocast on a GPU, AMX tiles on a CPU).
    pub bf16: bool,
}

/// What the encoder's linear layers run on at inference, for the CPU's formats: the number
/// format, and the instructions (which depend on the CPU).
pub fn inference_kernel(quantize: Option<Quantize>, device: &Device, bf16: bool) -> Option<String> {
    use crate::model::kernels::{panels, prepared};
    match quantize {
        Some(Quantize::Int8) => Some(format!("in int8; integer dot products on {}", Isa::description())),
        Some(Quantize::Bf16) => Some(format!("in bf16 with float32 sums; {}", prepared::bf16_kernel_name())),
        None if device.is_cpu() && !bf16 => {
            Some(format!("on float32 weights packed at load; {}", panels::Isa::detect().name()))
        }
        None => None,
    }
}

/// The `q`-th percentile (nearest rank) of `v`.
fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[((q / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Synthetic batch: random non-special token ids, no padding.
fn synthetic_batch(rng: &mut ChaCha8Rng, batch: usize, seq: usize, vocab: usize, device: &Device) -> Result<Batch> {
    let ids: Vec<Vec<u32>> =
        (0..batch).map(|_| (0..seq).map(|_| rng.gen_range(1000..vocab as u32)).collect()).collect();
    let mask = vec![vec![1u32; seq]; batch];
    let mut b = Batch::from_rows(&ids, &mask, device)?;
    b.token_type_ids = Some(b.input_ids.zeros_like()?);
    Ok(b)
}

/// Resets the kernel's peak-RSS counter (Linux), so that each shape reports its own peak; where
/// the kernel refuses, says once that the figures are the process's peak so far.
fn reset_peak_rss() {
    static SAID: std::sync::Once = std::sync::Once::new();
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        SAID.call_once(|| {
            log::warn!("peak MB is this process's peak so far, not each shape's: resetting it failed (/proc/self/clear_refs: {e})")
        });
    }
}

/// Peak resident set size in MiB (`VmHWM`), or NaN where unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Times every shape of `opts` on a fresh random model, reporting each as it is done.
pub fn run(
    shape: &Shape,
    opts: &BenchOptions,
    device: &Device,
    mut report: impl FnMut(&ShapeReport) -> Result<()>,
) -> Result<()> {
    let mut config = shape.config.clone();
    config.set_labels(LABELS.map(String::from).to_vec());
    let vocab = config.arch.sizes().vocab;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for &seq in &opts.seqs {
        reset_peak_rss();
        let batch = synthetic_batch(&mut rng, opts.batch, seq, vocab, device)?;
        let labels: Vec<u32> = (0..opts.batch).map(|_| rng.gen_range(0..config.num_labels() as u32)).collect();
        let labels = Tensor::from_vec(labels, opts.batch, device)?;
        // int8 has no backward; bf16 trains by `autocast` (AMX or a GPU) and infers on prepared weights
        let train = match opts.train && opts.quantize != Some(Quantize::Int8) {
            true => {
                let mut m = random_classifier(config.clone(), SEED, device)?;
                m.autocast = opts.bf16.then_some(DType::BF16);
                Some(time_training(&m, &batch, &labels, opts)?)
            }
            false => None,
        };
        // Inference on the model as `predict` loads it (weights prepared for inference).
        let mut m: LoadedModel = random_classifier_for_inference(config.clone(), SEED, opts.quantize, device)?;
        m.autocast = opts.bf16.then_some(DType::BF16);
        let eval_forward_s = median(time_forward(&m, &batch, opts.warmup, opts.steps)?);
        let one = synthetic_batch(&mut rng, 1, seq, vocab, device)?;
        let latency = time_forward(&m, &one, opts.warmup, opts.latency_runs)?;
        let mut throughput = Vec::new();
        for b in [1, 8].into_iter().filter(|&b| b < opts.batch) {
            let rows = synthetic_batch(&mut rng, b, seq, vocab, device)?;
            let s = median(time_forward(&m, &rows, opts.warmup, opts.steps)?);
            throughput.push(Throughput { batch: b, texts_per_s: b as f64 / s });
        }
        throughput.push(Throughput { batch: opts.batch, texts_per_s: opts.batch as f64 / eval_forward_s });
        let step = |t: &TrainTimes| t.fwd.iter().zip(&t.bwd).zip(&t.optim).map(|((a, b), c)| a + b + c).collect();
        report(&ShapeReport {
            batch: opts.batch,
            seq,
            device: crate::device::name(device),
            cpu: crate::cpu::CpuIdentity::current().describe(),
            params: m.params.iter().map(|(_, v)| v.as_tensor().elem_count()).sum(),
            bf16: opts.bf16,
            quantize: opts.quantize,
            int8_kernel: (opts.quantize == Some(Quantize::Int8)).then(Isa::description),
            f32_kernel: (device.is_cpu() && opts.quantize.is_none() && !opts.bf16)
                .then(|| crate::model::kernels::panels::Isa::detect().name()),
            train_step_s: train.as_ref().map(|t| median(step(t))),
            forward_s: train.as_ref().map(|t| median(t.fwd.clone())),
            backward_s: train.as_ref().map(|t| median(t.bwd.clone())),
            optimizer_s: train.as_ref().map(|t| median(t.optim.clone())),
            eval_forward_s,
            predict_texts_per_s: opts.batch as f64 / eval_forward_s,
            one_text_p50_s: percentile(latency.clone(), 50.0),
            one_text_p99_s: percentile(latency, 99.0),
            latency_runs: opts.latency_runs,
            throughput,
            peak_rss_mb: peak_rss_mb(),
            steps: opts.steps,
            kernels: train.map(|t| t.kernels).unwrap_or_default(),
        })?;
    }
    Ok(())
}

/// Seconds of each measured training step's parts, and the kernel profile when asked for.
struct TrainTimes {
    fwd: Vec<f64>,
    bwd: Vec<f64>,
    optim: Vec<f64>,
    kernels: Vec<KernelTime>,
}

/// Training steps (dropout on, AdamW with the seed recipe's settings) on one batch.
fn time_training(m: &LoadedModel, batch: &Batch, labels: &Tensor, opts: &BenchOptions) -> Result<TrainTimes> {
    let recipe = TrainConfig::seed_recipe(DEFAULT_MODEL, Default::default());
    let mut opt = AdamW::new(m.params.iter(), recipe.adamw())?;
    let dropout = Dropout::train(SEED);
    let device = device_of(m);
    let mut t = TrainTimes { fwd: Vec::new(), bwd: Vec::new(), optim: Vec::new(), kernels: Vec::new() };
    for i in 0..opts.warmup + opts.steps {
        if i == opts.warmup {
            profile::enable(opts.profile);
            profile::take();
        }
        // Each part ends with a device synchronisation, so a GPU's queued work is counted
        // where it was issued (on the CPU it returns at once).
        let t0 = Instant::now();
        let logits = {
            let _precision = crate::model::precision::enter(m.autocast, &device);
            m.model.forward(batch, &dropout)?
        };
        let loss = cross_entropy(&logits, labels, None)?;
        let _: f32 = loss.to_scalar()?;
        let t1 = Instant::now();
        let grads = crate::model::backward(&loss)?;
        device.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads, recipe.learning_rate)?;
        drop(grads);
        device.synchronize()?;
        let t3 = Instant::now();
        if i >= opts.warmup {
            t.fwd.push((t1 - t0).as_secs_f64());
            t.bwd.push((t2 - t1).as_secs_f64());
            t.optim.push((t3 - t2).as_secs_f64());
        }
    }
    if opts.profile {
        profile::enable(false);
        let n = opts.steps.max(1) as f64;
        t.kernels = profile::take()
            .into_iter()
            .map(|(name, s, calls)| KernelTime {
                kernel: name.to_string(),
                seconds_per_step: s / n,
                calls_per_step: calls as f64 / n,
            })
            .collect();
    }
    Ok(t)
}

/// The device a model's parameters live on (the CPU for a model without any).
fn device_of(m: &LoadedModel) -> Device {
    m.params.iter().next().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu)
}

/// Seconds of each of `runs` inference forward passes (after `warmup` unmeasured ones).
fn time_forward(m: &LoadedModel, batch: &Batch, warmup: usize, runs: usize) -> Result<Vec<f64>> {
    let eval = Dropout::inference();
    let device = device_of(m);
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t0 = Instant::now();
        let _precision = crate::model::precision::enter(m.autocast, &device);
        let _: Vec<Vec<f32>> = m.model.forward(batch, &eval)?.to_vec2()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The time to explain one text of a model (`bench --explain`).
#[derive(Debug, Clone, Serialize)]
pub struct ExplainTiming {
    pub kind: &'static str,
    /// The text explained: words of [`EXPLAIN_WORDS`] in turn until it has `tokens` tokens.
    pub text: String,
    pub tokens: usize,
    pub steps: usize,
    pub dtype: &'static str,
    pub runs: usize,
    pub median_s: f64,
    pub p90_s: f64,
}

/// The words `bench --explain` builds its text from (`bench/captum_anchor.py time` explains the
/// text the bench reports).
pub const EXPLAIN_WORDS: &str = "i feel really happy today because my friends came over and we laughed a lot together";

/// A text of `tokens` tokens (special ones included) from [`EXPLAIN_WORDS`], repeated as needed.
fn explain_text(encoder: &crate::tokenize::TextEncoder, tokens: usize) -> Result<String> {
    let mut text = String::new();
    for word in EXPLAIN_WORDS.split(' ').cycle().take(4 * tokens) {
        let longer = if text.is_empty() { word.to_string() } else { format!("{text} {word}") };
        if encoder.tokenize(&[&longer])?[0].ids.len() > tokens {
            break;
        }
        text = longer;
    }
    let n = encoder.tokenize(&[&text])?[0].ids.len();
    anyhow::ensure!(n == tokens, "bench --explain: no text of exactly {tokens} tokens from its words (got {n})");
    Ok(text)
}

/// Median and 90th percentile of `runs` explanations (after `warmup`) of a `tokens`-token text.
pub fn time_explanations(
    predictor: &crate::infer::Predictor,
    tokens: usize,
    opts: &crate::explain::Options,
    (warmup, runs): (usize, usize),
) -> Result<ExplainTiming> {
    let text = explain_text(&predictor.encoder, tokens)?;
    let p = predictor.predict(&[&text], 1)?.remove(0);
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t0 = Instant::now();
        crate::explain::explain(&predictor.model, &predictor.encoder, &text, &[p.label_id], opts, &predictor.device)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(ExplainTiming {
        kind: "explain",
        text,
        tokens,
        steps: opts.steps,
        dtype: if opts.autocast.is_some() { "bf16" } else { "f32" },
        runs,
        median_s: median(times.clone()),
        p90_s: percentile(times, 90.0),
    })
}

/// Writes a base-model directory (encoder, no task head) of `shape` with random weights and
/// the tokenizer files of `tokenizer` (a directory or Hub id), for timing whole training runs.
/// The README it writes says that the weights are random.
pub fn write_random_model(shape: &Shape, tokenizer: &str, dir: &Path) -> Result<()> {
    let model = random_classifier(shape.config.clone(), SEED, &Device::Cpu)?;
    // Only the tokenizer is taken: `tokenizer` may be a directory without weights.
    let source = crate::hub::Source::parse(tokenizer, crate::hub::RepoKind::Model)?;
    if source.get_optional("tokenizer.json")?.is_none() {
        anyhow::bail!("--tokenizer {}: no tokenizer.json there", source.describe());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::fsx::write_atomic(&dir.join("config.json"), shape.json.as_bytes())?;
    crate::hub::copy_tokenizer_files(&source, dir)?;
    let readme = format!(
        "# Random weights (speed work only)\n\nWritten by `emotune bench --write-model`: the shape of `{}`, every \
         weight drawn at random (seed {SEED}), tokenizer from `{tokenizer}`. It has learned nothing; use it to time \
         training, never as a pretrained model.\n",
        shape.name
    );
    crate::fsx::write_atomic(&dir.join("README.md"), readme.as_bytes())?;
    // The encoder only, as a pretrained base checkpoint ships: `train` adds a head for its labels.
    let prefix = model.config.arch.weight_prefix();
    model.params.save_where(&dir.join("model.safetensors"), |name| name.starts_with(prefix))
}
