//! Loading a classifier for inference and turning texts into label probabilities.

use crate::config::ModelConfig;
use crate::hub::ModelFiles;
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
        config.max_position_embeddings(),
        pad,
        config.model_type() == "bert",
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
        let eval = Dropout::eval();
        for chunk in texts.chunks(batch_size) {
            let enc = self.encoder.encode(chunk)?;
            let batch = self.encoder.to_batch(&enc, &self.device)?;
            let logits = self.model.model.forward(&batch, &eval)?;
            let probs = crate::model::softmax_last_dim(&logits)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2()?;
            let probs: Vec<Vec<f32>> = probs.to_vec2()?;
            for ((l, p), &truncated) in logits.into_iter().zip(probs).zip(&enc.truncated) {
                let id = argmax(&p);
                out.push(Prediction { label_id: id, score: p[id], probs: p, logits: l, truncated });
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
