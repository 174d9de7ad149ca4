//! The compute API of prediction, evaluation and serving: a classifier and its tokenizer
//! loaded for inference ([`Predictor`]), and one batched scoring function ([`score`]) that all
//! of them run. [`output`] turns predictions into JSON lines and tables.

pub mod output;
pub mod stream;
pub mod thresholds;

use crate::hub::ModelFiles;
use crate::model::task::DEFAULT_THRESHOLD;
use crate::model::{load_trained_classifier, log_softmax_last_dim, Dropout, LoadedModel, ModelConfig, Quantize, Task};
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
    /// Per label, the probability from which a multi-label model predicts it.
    pub thresholds: Vec<f32>,
}

/// One text's classification.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The most probable label.
    pub label_id: usize,
    pub score: f32,
    /// The predicted labels: the most probable one (single-label), or every label whose
    /// probability reaches its threshold, most probable first (multi-label; maybe none).
    pub labels: Vec<usize>,
    /// Probabilities in label-id order: softmax (single-label) or sigmoid (multi-label).
    pub probs: Vec<f32>,
    /// Raw logits in label-id order.
    pub logits: Vec<f32>,
    pub truncated: bool,
}

impl Predictor {
    /// Resolves `spec` (a directory or a Hub id) and loads its classifier and tokenizer, the
    /// encoder's linear layers quantised as `quantize` says.
    pub fn load(
        spec: &str,
        max_length: Option<usize>,
        quantize: Option<Quantize>,
        device: &Device,
    ) -> Result<Predictor> {
        Self::open(ModelFiles::resolve(spec)?, spec, (max_length, quantize), device)
    }

    /// The model in directory `dir` (any path, UTF-8 or not).
    pub fn from_dir(dir: &Path, max_length: Option<usize>, device: &Device) -> Result<Predictor> {
        Self::open(ModelFiles::from_dir(dir)?, &dir.display().to_string(), (max_length, None), device)
    }

    fn open(
        files: ModelFiles,
        name: &str,
        (max_length, quantize): (Option<usize>, Option<Quantize>),
        device: &Device,
    ) -> Result<Predictor> {
        let config = ModelConfig::load(&files.config)?;
        if config.raw.get("id2label").is_none() {
            log::warn!("{name}: config.json has no id2label; the labels are called LABEL_0, LABEL_1, ...");
        }
        let encoder = text_encoder(&files, &config, max_length)?;
        let mut p = Predictor::new(load_trained_classifier(config, &files.weights, quantize, device)?, encoder, device);
        if p.task() == Task::MultiLabel {
            if let Some(path) = files.source.get_optional(thresholds::FILE)? {
                p.thresholds = thresholds::load(&path, p.labels())?;
            }
        }
        Ok(p)
    }

    /// Every label's threshold set to `t` (the `--threshold` flag), in place of the saved ones.
    /// Refused for a single-label model, where it would change nothing.
    pub fn set_threshold(&mut self, t: f32) -> Result<()> {
        if self.task() == Task::SingleLabel {
            bail!(
                "--threshold applies to multi-label models; this one is single-label (softmax: the most probable \
                 label is predicted), so drop --threshold"
            );
        }
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold must be in [0, 1] (got {t})");
        }
        self.thresholds = vec![t; self.thresholds.len()];
        Ok(())
    }

    /// A predictor of a model in memory, with the default thresholds.
    pub fn new(model: LoadedModel, encoder: TextEncoder, device: &Device) -> Predictor {
        let thresholds = vec![DEFAULT_THRESHOLD; model.config.num_labels()];
        Predictor { model, encoder, device: device.clone(), thresholds }
    }

    pub fn task(&self) -> Task {
        self.model.config.task
    }

    pub fn labels(&self) -> &[String] {
        &self.model.config.labels
    }

    /// Classifies `texts` in batches of `batch_size`, in their order.
    pub fn predict(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Prediction>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size) {
            let rows = self.encoder.tokenize(chunk)?;
            out.extend(self.predictions(&rows.iter().collect::<Vec<_>>())?);
        }
        Ok(out)
    }

    /// As [`Predictor::predict`], with the texts batched in order of length: a batch is padded
    /// to its longest text, so texts of like lengths together spare the padding (about half the
    /// work on texts of 3 to 66 tokens in batches of 64). The results come in the texts' order;
    /// scores can differ from `predict`'s in the last bits (sums over other paddings).
    pub fn predict_grouped(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Prediction>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let rows = self.encoder.tokenize(texts)?;
        let order = length_order(&rows);
        let mut out: Vec<Option<Prediction>> = vec![None; rows.len()];
        for chunk in order.chunks(batch_size) {
            let preds = self.predictions(&chunk.iter().map(|&i| &rows[i]).collect::<Vec<_>>())?;
            for (&i, p) in chunk.iter().zip(preds) {
                out[i] = Some(p);
            }
        }
        Ok(out.into_iter().map(|p| p.expect("every text is in one batch")).collect())
    }

    /// The predictions of `rows`, scored as one batch.
    fn predictions(&self, rows: &[&Tokenized]) -> Result<Vec<Prediction>> {
        let scores = score(&self.model, &self.encoder, rows, &self.device)?;
        Ok(scores
            .logits
            .into_iter()
            .zip(scores.probs)
            .zip(rows)
            .map(|((logits, probs), row)| {
                let id = argmax(&probs);
                let labels = predicted(self.task(), &probs, &self.thresholds);
                Prediction { label_id: id, score: probs[id], labels, probs, logits, truncated: row.truncated }
            })
            .collect())
    }
}

/// The labels predicted from one row's probabilities: the most probable (single-label), or
/// each label at or above its threshold, most probable first (multi-label).
pub fn predicted(task: Task, probs: &[f32], thresholds: &[f32]) -> Vec<usize> {
    match task {
        Task::SingleLabel => vec![argmax(probs)],
        Task::MultiLabel => rank_descending(probs).into_iter().filter(|&l| probs[l] >= thresholds[l]).collect(),
    }
}

/// What a forward pass gives for each row: logits, probabilities (softmax or sigmoid, by the
/// model's task) and log-softmax (single-label).
#[derive(Debug, Clone, Default)]
pub struct Scores {
    pub logits: Vec<Vec<f32>>,
    pub probs: Vec<Vec<f32>>,
    pub log_probs: Vec<Vec<f32>>,
}

/// Scores `rows` in one forward pass (padded to the longest row, dropout off, no gradients).
pub fn score(model: &LoadedModel, encoder: &TextEncoder, rows: &[&Tokenized], device: &Device) -> Result<Scores> {
    let _precision = crate::model::precision::enter(model.autocast, device);
    let batch = encoder.batch(rows, device)?;
    let logits = model.model.forward(&batch, &Dropout::inference())?;
    let log_probs = match model.config.task {
        Task::SingleLabel => log_softmax_last_dim(&logits)?.to_vec2()?,
        Task::MultiLabel => Vec::new(),
    };
    let scores =
        Scores { probs: model.config.task.probabilities(&logits)?.to_vec2()?, log_probs, logits: logits.to_vec2()? };
    check_finite(model, &scores)?;
    Ok(scores)
}

/// Refuses outputs that are NaN or infinite: finite weights can still overflow float32 on the
/// way (every value 3e38, say), and a score of NaN printed as `null` would pass for an answer.
fn check_finite(model: &LoadedModel, scores: &Scores) -> Result<()> {
    let bad = |rows: &[Vec<f32>]| rows.iter().position(|r| r.iter().any(|x| !x.is_finite()));
    let Some(row) = bad(&scores.logits).or(bad(&scores.probs)).or(bad(&scores.log_probs)) else { return Ok(()) };
    let culprit = match model.params.largest_magnitude()? {
        Some((name, m)) => format!("; its largest weight is {m:e}, in {name}"),
        None => String::new(),
    };
    bail!(
        "the model's outputs are not finite (text {} of the batch: logits {:?}): its weights overflow float32 \
         arithmetic{culprit}. The checkpoint is broken; retrain it or take an earlier checkpoint",
        row + 1,
        scores.logits[row]
    )
}

/// Per-example results of running a model over a labelled split.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// The mean loss over the examples (Trainer's `eval_loss`): cross-entropy, or binary
    /// cross-entropy averaged over every label.
    pub loss: f64,
    /// The predicted labels of each example (one for single-label models).
    pub preds: Vec<Vec<usize>>,
    /// The loss of each example.
    pub losses: Vec<f32>,
    /// The probabilities of each example (softmax or sigmoid).
    pub probs: Vec<Vec<f32>>,
}

/// Runs `model` over `rows` in batches of `batch_size` and scores the predictions against
/// `gold` (label ids per example; multi-label predictions use `thresholds`); the results come in
/// the rows' order. The batches take the rows in order of length, as
/// [`Predictor::predict_grouped`] does: a batch is padded to its longest row, and rows in their
/// own order pad most batches to a long one (the README's "Using a model" has the cost). Scores
/// can differ in the last bits from batches in the rows' order. `on_batch` is told how many rows
/// each batch held.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &LoadedModel,
    encoder: &TextEncoder,
    rows: &[Tokenized],
    gold: &[Vec<usize>],
    thresholds: &[f32],
    batch_size: usize,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<EvalOutput> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    if gold.len() != rows.len() {
        bail!("{} rows to evaluate but {} gold labels", rows.len(), gold.len());
    }
    let task = model.config.task;
    let n = rows.len();
    let mut out =
        EvalOutput { loss: 0.0, preds: vec![Vec::new(); n], losses: vec![0.0; n], probs: vec![Vec::new(); n] };
    for chunk in length_order(rows).chunks(batch_size) {
        let scores = score(model, encoder, &chunk.iter().map(|&i| &rows[i]).collect::<Vec<_>>(), device)?;
        for (j, (&i, probs)) in chunk.iter().zip(scores.probs).enumerate() {
            let g = &gold[i];
            (out.losses[i], out.preds[i]) = match task {
                Task::SingleLabel => (-scores.log_probs[j][g[0]], vec![argmax(&scores.log_probs[j])]),
                Task::MultiLabel => (bce_row(&scores.logits[j], g), predicted(task, &probs, thresholds)),
            };
            out.probs[i] = probs;
        }
        on_batch(chunk.len());
    }
    out.loss = out.losses.iter().map(|&l| l as f64).sum::<f64>() / out.losses.len().max(1) as f64;
    Ok(out)
}

/// The rows' indices from the fewest tokens to the most (ties in the rows' order): batches
/// taken in this order pad little.
fn length_order(rows: &[Tokenized]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].ids.len());
    order
}

/// Binary cross-entropy with logits of one row against its gold labels, averaged over labels.
fn bce_row(logits: &[f32], gold: &[usize]) -> f32 {
    let sum: f64 = logits
        .iter()
        .enumerate()
        .map(|(l, &x)| {
            let (x, y) = (x as f64, if gold.contains(&l) { 1.0 } else { 0.0 });
            x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()
        })
        .sum();
    (sum / logits.len().max(1) as f64) as f32
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
