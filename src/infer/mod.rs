//! The compute API of prediction, evaluation and serving: a classifier and its tokenizer
//! loaded for inference ([`Predictor`]), and one batched scoring function ([`score`]) that all
//! of them run. [`output`] turns predictions into JSON lines and tables.

pub mod output;

use crate::hub::ModelFiles;
use crate::model::{
    load_trained_classifier, log_softmax_last_dim, softmax_last_dim, Dropout, LoadedModel, ModelConfig,
};
use crate::tokenize::{TextEncoder, Tokenized};
use anyhow::{bail, Result};
use candle_core::Device;
use serde_json::Value;
use std::path::Path;

/// Builds the tokenizer of a resolved model.
pub fn text_encoder(files: &ModelFiles, config: &ModelConfig, max_length: Option<usize>) -> Result<TextEncoder> {
    let pad = config.raw.get("pad_token_id").and_then(Value::as_u64).map(|v| v as u32);
    TextEncoder::load(
        &files.tokenizer,
        files.tokenizer_config.as_deref(),
        config.arch.sizes().max_positions,
        pad,
        config.arch.uses_token_types(),
        max_length,
    )
}

/// The tokenizer of the model `spec` (a directory or a Hub id), without its weights.
pub fn load_text_encoder(spec: &str, max_length: Option<usize>) -> Result<TextEncoder> {
    let files = ModelFiles::resolve(spec)?;
    text_encoder(&files, &ModelConfig::load(&files.config)?, max_length)
}

/// A model ready to classify text.
pub struct Predictor {
    pub model: LoadedModel,
    pub encoder: TextEncoder,
    pub device: Device,
}

/// One text's classification.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub label_id: usize,
    pub score: f32,
    /// Softmax probabilities in label-id order.
    pub probs: Vec<f32>,
    /// Raw logits in label-id order.
    pub logits: Vec<f32>,
    pub truncated: bool,
}

impl Predictor {
    /// Resolves `spec` (a directory or a Hub id) and loads its classifier and tokenizer.
    pub fn load(spec: &str, max_length: Option<usize>, device: &Device) -> Result<Predictor> {
        Self::open(ModelFiles::resolve(spec)?, spec, max_length, device)
    }

    /// The model in directory `dir` (any path, UTF-8 or not).
    pub fn from_dir(dir: &Path, max_length: Option<usize>, device: &Device) -> Result<Predictor> {
        Self::open(ModelFiles::from_dir(dir)?, &dir.display().to_string(), max_length, device)
    }

    fn open(files: ModelFiles, name: &str, max_length: Option<usize>, device: &Device) -> Result<Predictor> {
        let config = ModelConfig::load(&files.config)?;
        if config.raw.get("id2label").is_none() {
            log::warn!("{name}: config.json has no id2label; the labels are called LABEL_0, LABEL_1, ...");
        }
        let encoder = text_encoder(&files, &config, max_length)?;
        let model = load_trained_classifier(config, &files.weights, device)?;
        Ok(Predictor { model, encoder, device: device.clone() })
    }

    pub fn labels(&self) -> &[String] {
        &self.model.config.labels
    }

    /// Classifies `texts` in batches of `batch_size`.
    pub fn predict(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Prediction>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size) {
            let rows = self.encoder.tokenize(chunk)?;
            let scores = score(&self.model, &self.encoder, &rows.iter().collect::<Vec<_>>(), &self.device)?;
            for ((logits, probs), row) in scores.logits.into_iter().zip(scores.probs).zip(&rows) {
                let id = argmax(&probs);
                out.push(Prediction { label_id: id, score: probs[id], probs, logits, truncated: row.truncated });
            }
        }
        Ok(out)
    }
}

/// What a forward pass gives for each row: logits, softmax probabilities and log-probabilities.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    pub logits: Vec<Vec<f32>>,
    pub probs: Vec<Vec<f32>>,
    pub log_probs: Vec<Vec<f32>>,
}

/// Scores `rows` in one forward pass (padded to the longest row, dropout off, no gradients).
pub fn score(model: &LoadedModel, encoder: &TextEncoder, rows: &[&Tokenized], device: &Device) -> Result<Scores> {
    let batch = encoder.batch(rows, device)?;
    let logits = model.model.forward(&batch, &Dropout::inference())?;
    Ok(Scores {
        probs: softmax_last_dim(&logits)?.to_vec2()?,
        log_probs: log_softmax_last_dim(&logits)?.to_vec2()?,
        logits: logits.to_vec2()?,
    })
}

/// Per-example results of running a model over a labelled split.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Mean cross-entropy over the examples (Trainer's `eval_loss`).
    pub loss: f64,
    pub preds: Vec<usize>,
    /// Cross-entropy of each example.
    pub losses: Vec<f32>,
}

/// Runs `model` over `rows` in order, in batches of `batch_size`, and scores the predictions
/// against `gold`. `on_batch` is told how many rows each batch held.
pub fn evaluate(
    model: &LoadedModel,
    encoder: &TextEncoder,
    rows: &[Tokenized],
    gold: &[usize],
    batch_size: usize,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<EvalOutput> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut out = EvalOutput { loss: 0.0, preds: Vec::new(), losses: Vec::new() };
    for (chunk, labels) in rows.chunks(batch_size).zip(gold.chunks(batch_size)) {
        let scores = score(model, encoder, &chunk.iter().collect::<Vec<_>>(), device)?;
        for (lp, &g) in scores.log_probs.into_iter().zip(labels) {
            out.preds.push(argmax(&lp));
            out.losses.push(-lp[g]);
        }
        on_batch(chunk.len());
    }
    out.loss = out.losses.iter().map(|&l| l as f64).sum::<f64>() / out.losses.len().max(1) as f64;
    Ok(out)
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Indices of `values` from the largest to the smallest (ties keep index order).
pub fn rank_descending(values: &[f32]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..values.len()).collect();
    ids.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    ids
}

/// Label ids of the `k` highest probabilities of `p`, best first (ties keep id order).
pub fn ranked(p: &Prediction, k: usize) -> Vec<usize> {
    let mut ids = rank_descending(&p.probs);
    ids.truncate(k);
    ids
}
