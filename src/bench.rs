//! `emotune bench`: training-step and inference timings of a randomly initialised model of a
//! given config's shape (DistilBERT-base by default), on synthetic batches.

use crate::model::ModelConfig;
use crate::model::{cross_entropy, random_classifier, Dropout, LoadedModel};
use crate::optim::{AdamW, AdamWConfig};
use crate::tokenize::Batch;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct ShapeReport {
    pub batch: usize,
    pub seq: usize,
    /// Median seconds of one full training step (forward + backward + optimiser).
    pub train_step_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    /// Median seconds of one forward pass without dropout or gradients' use.
    pub eval_forward_s: f64,
    /// Texts per second classified at this batch size.
    pub predict_texts_per_s: f64,
    /// Median seconds to classify one text of this length.
    pub one_text_latency_s: f64,
    /// Peak resident memory of the process while measuring this shape.
    pub peak_rss_mb: f64,
    pub steps: usize,
    /// With `--profile`: mean seconds per training step spent in each fused kernel.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelTime>,
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
    /// Account the time of each fused kernel during the measured training steps.
    pub profile: bool,
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

/// Resets the kernel's peak-RSS counter (Linux); harmless where unsupported.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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

pub fn run(
    config_path: &Path,
    opts: &BenchOptions,
    device: &Device,
    mut report: impl FnMut(&ShapeReport),
) -> Result<()> {
    let mut config = ModelConfig::load(config_path)?;
    config.set_labels(["sadness", "joy", "love", "anger", "fear", "surprise"].map(String::from).to_vec());
    let vocab = config.arch.sizes().vocab;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for &seq in &opts.seqs {
        reset_peak_rss();
        let m: LoadedModel = random_classifier(config.clone(), 42, device)?;
        let mut opt = AdamW::new(m.params.iter(), AdamWConfig::default());
        let batch = synthetic_batch(&mut rng, opts.batch, seq, vocab, device)?;
        let labels: Vec<u32> = (0..opts.batch).map(|_| rng.gen_range(0..config.num_labels() as u32)).collect();
        let labels = Tensor::from_vec(labels, opts.batch, device)?;
        let dropout = Dropout::train(42);
        let (mut fwd, mut bwd, mut optim) = (Vec::new(), Vec::new(), Vec::new());
        let mut kernels = Vec::new();
        for i in 0..opts.warmup + opts.steps {
            if i == opts.warmup {
                crate::model::kernels::profile::enable(opts.profile);
                crate::model::kernels::profile::take();
            }
            let t0 = Instant::now();
            let loss = cross_entropy(&m.model.forward(&batch, &dropout)?, &labels, None)?;
            let _: f32 = loss.to_scalar()?;
            let t1 = Instant::now();
            let grads = crate::model::backward(&loss)?;
            let t2 = Instant::now();
            opt.step(&grads, 2e-5)?;
            drop(grads);
            let t3 = Instant::now();
            if i >= opts.warmup {
                fwd.push((t1 - t0).as_secs_f64());
                bwd.push((t2 - t1).as_secs_f64());
                optim.push((t3 - t2).as_secs_f64());
            }
        }
        if opts.profile {
            crate::model::kernels::profile::enable(false);
            let n = opts.steps.max(1) as f64;
            kernels = crate::model::kernels::profile::take()
                .into_iter()
                .map(|(name, s, calls)| KernelTime {
                    kernel: name.to_string(),
                    seconds_per_step: s / n,
                    calls_per_step: calls as f64 / n,
                })
                .collect();
        }
        let eval = Dropout::inference();
        let mut eval_t = Vec::new();
        for i in 0..opts.warmup + opts.steps {
            let t0 = Instant::now();
            let _: Vec<Vec<f32>> = m.model.forward(&batch, &eval)?.to_vec2()?;
            if i >= opts.warmup {
                eval_t.push(t0.elapsed().as_secs_f64());
            }
        }
        let one = synthetic_batch(&mut rng, 1, seq, vocab, device)?;
        let mut one_t = Vec::new();
        for i in 0..opts.warmup + opts.steps.max(5) {
            let t0 = Instant::now();
            let _: Vec<Vec<f32>> = m.model.forward(&one, &eval)?.to_vec2()?;
            if i >= opts.warmup {
                one_t.push(t0.elapsed().as_secs_f64());
            }
        }
        let steps: Vec<f64> = fwd.iter().zip(&bwd).zip(&optim).map(|((a, b), c)| a + b + c).collect();
        let eval_forward_s = median(eval_t);
        report(&ShapeReport {
            batch: opts.batch,
            seq,
            train_step_s: median(steps),
            forward_s: median(fwd),
            backward_s: median(bwd),
            optimizer_s: median(optim),
            eval_forward_s,
            predict_texts_per_s: opts.batch as f64 / eval_forward_s,
            one_text_latency_s: median(one_t),
            peak_rss_mb: peak_rss_mb(),
            steps: opts.steps,
            kernels,
        });
    }
    Ok(())
}

/// Writes a base-model directory (encoder, no task head) of `config_path`'s shape with random
/// weights (seed 42) and the tokenizer files of `tokenizer` (a directory or Hub id), for timing
/// whole training runs. The README it writes says that the weights are random.
pub fn write_random_model(config_path: &Path, tokenizer: &str, dir: &Path) -> Result<()> {
    let config = ModelConfig::load(config_path)?;
    let model = random_classifier(config, 42, &Device::Cpu)?;
    let source = crate::hub::ModelFiles::resolve(tokenizer)?.source;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw = std::fs::read(config_path).with_context(|| format!("reading {}", config_path.display()))?;
    crate::fsx::write_atomic(&dir.join("config.json"), &raw)?;
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
        if let Some(src) = source.get_optional(name)? {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::fsx::write_atomic(&dir.join(name), &bytes)?;
        }
    }
    let readme = format!(
        "# Random weights (speed work only)\n\nWritten by `emotune bench --write-model`: the shape of `{}`, every \
         weight drawn at random (seed 42), tokenizer from `{tokenizer}`. It has learned nothing; use it to time \
         training, never as a pretrained model.\n",
        config_path.display()
    );
    crate::fsx::write_atomic(&dir.join("README.md"), readme.as_bytes())?;
    // The encoder only, as a pretrained base checkpoint ships: `train` adds a head for its labels.
    let prefix = model.config.arch.weight_prefix();
    model.params.save_where(&dir.join("model.safetensors"), |name| name.starts_with(prefix))
}
