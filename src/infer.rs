//! Loading a classifier for inference and turning texts into label probabilities.

use crate::hub::ModelFiles;
use crate::model::ModelConfig;
use crate::model::{load_classifier, Dropout, LoadedModel};
use crate::tokenize::TextEncoder;
use anyhow::{bail, Result};
use candle_core::Device;
use serde_json::{Map, Value};

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
        let files = ModelFiles::resolve(spec)?;
        let config = ModelConfig::load(&files.config)?;
        if config.raw.get("id2label").is_none() {
            log::warn!("{spec}: config.json has no id2label; this is a base model and its head is untrained");
        }
        let encoder = text_encoder(&files, &config, max_length)?;
        let model = load_classifier(config, &files.weights, 42, device)?;
        Ok(Predictor { model, encoder, device: device.clone() })
    }

    pub fn labels(&self) -> &[String] {
        &self.model.config.labels
    }

    /// Classifies `texts` in batches of `batch_size` (dropout off).
    pub fn predict(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Prediction>> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let mut out = Vec::with_capacity(texts.len());
        let eval = Dropout::inference();
        for chunk in texts.chunks(batch_size) {
            let rows = self.encoder.tokenize(chunk)?;
            let batch = self.encoder.batch(&rows.iter().collect::<Vec<_>>(), &self.device)?;
            let logits = self.model.model.forward(&batch, &eval)?;
            let probs = crate::model::softmax_last_dim(&logits)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2()?;
            let probs: Vec<Vec<f32>> = probs.to_vec2()?;
            for ((l, p), row) in logits.into_iter().zip(probs).zip(&rows) {
                let id = argmax(&p);
                out.push(Prediction { label_id: id, score: p[id], probs: p, logits: l, truncated: row.truncated });
            }
        }
        Ok(out)
    }
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

/// The JSON line of one prediction: `{"text", "label", "score", "scores": {label: prob}}`.
pub fn prediction_json(text: &str, p: &Prediction, labels: &[String]) -> Value {
    let scores: Map<String, Value> =
        labels.iter().zip(&p.probs).map(|(l, &s)| (l.clone(), Value::from(s as f64))).collect();
    let mut m = Map::new();
    m.insert("text".into(), Value::String(text.to_string()));
    m.insert("label".into(), Value::String(labels[p.label_id].clone()));
    m.insert("score".into(), Value::from(p.score as f64));
    m.insert("scores".into(), Value::Object(scores));
    Value::Object(m)
}

/// Per-example results of running a model over a labelled split.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// Mean cross-entropy over the examples (Trainer's `eval_loss`).
    pub loss: f64,
    pub preds: Vec<usize>,
    /// Cross-entropy of each example.
    pub losses: Vec<f32>,
    /// Softmax probabilities of each example.
    pub probs: Vec<Vec<f32>>,
}

/// Runs `model` (dropout off) over `rows` in order, in batches of `batch_size`, and scores the
/// predictions against `gold`. `on_batch` is told how many rows each batch held.
pub fn evaluate(
    model: &LoadedModel,
    encoder: &TextEncoder,
    rows: &[crate::tokenize::Tokenized],
    gold: &[usize],
    batch_size: usize,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<EvalOutput> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let eval = Dropout::inference();
    let mut out = EvalOutput { loss: 0.0, preds: Vec::new(), losses: Vec::new(), probs: Vec::new() };
    for (chunk, labels) in rows.chunks(batch_size).zip(gold.chunks(batch_size)) {
        let batch = encoder.batch(&chunk.iter().collect::<Vec<_>>(), device)?;
        let logits = model.model.forward(&batch, &eval)?;
        let logp: Vec<Vec<f32>> = crate::model::log_softmax_last_dim(&logits)?.to_vec2()?;
        for (lp, &g) in logp.into_iter().zip(labels) {
            let probs: Vec<f32> = lp.iter().map(|x| x.exp()).collect();
            out.preds.push(argmax(&lp));
            out.losses.push(-lp[g]);
            out.probs.push(probs);
        }
        on_batch(chunk.len());
    }
    out.loss = out.losses.iter().map(|&l| l as f64).sum::<f64>() / out.losses.len().max(1) as f64;
    Ok(out)
}

/// The `k` most probable labels of `p`, ranked: `[{"label", "score"}, ...]`.
pub fn ranked_json(p: &Prediction, labels: &[String], k: usize) -> Value {
    Value::Array(
        ranked(p, k).into_iter().map(|i| serde_json::json!({"label": labels[i], "score": p.probs[i]})).collect(),
    )
}

/// Label ids of the `k` highest probabilities, best first (ties keep id order).
pub fn ranked(p: &Prediction, k: usize) -> Vec<usize> {
    let mut ids = rank_descending(&p.probs);
    ids.truncate(k);
    ids
}

/// Indices of `values` from the largest to the smallest (ties keep index order).
pub fn rank_descending(values: &[f32]) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..values.len()).collect();
    ids.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    ids
}

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n.saturating_sub(1)).collect::<String>())
    } else {
        s.to_string()
    }
}

/// A readable table of predictions (`None`: an empty input line).
pub fn format_predictions_table(
    rows: &[(&crate::data::InputText, Option<&Prediction>)],
    labels: &[String],
    top_k: Option<usize>,
) -> String {
    const WIDTH: usize = 60;
    let clip = |s: &str| clip(&s.replace(['\n', '\r', '\t'], " "), WIDTH);
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).max(5);
    let mut s = format!("{:<WIDTH$}  {:<label_w$}  {:>6}", "text", "label", "score");
    if top_k.is_some() {
        s.push_str("  ranked");
    }
    s.push('\n');
    for (input, p) in rows {
        match p {
            Some(p) => {
                s.push_str(&format!(
                    "{:<WIDTH$}  {:<label_w$}  {:>6.3}",
                    clip(&input.text),
                    labels[p.label_id],
                    p.score
                ));
                if let Some(k) = top_k {
                    let ranked: Vec<String> =
                        ranked(p, k).into_iter().map(|i| format!("{} {:.3}", labels[i], p.probs[i])).collect();
                    s.push_str(&format!("  {}", ranked.join(", ")));
                }
            }
            None => s.push_str(&format!("{:<WIDTH$}  (line {}: empty text, not classified)", "", input.line)),
        }
        s.push('\n');
    }
    s
}
