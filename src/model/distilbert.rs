//! DistilBERT (`modeling_distilbert.py`): its config, the encoder and
//! `DistilBertForSequenceClassification`, with weights named as in the Hugging Face checkpoint:
//! `distilbert.embeddings.*`, `distilbert.transformer.layer.{i}.*`, `pre_classifier`, `classifier`.

use super::arch::{check_heads, Architecture, Encoded, Names, SequenceClassifier, Sizes};
use super::layer;
use super::nn::{activate, attention_bias, Activation, Dropout, Embedding, LayerNorm, Linear, SelfAttention};
use crate::tokenize::Batch;
use crate::weights::WeightLoader;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::Value;

/// The `config.json` of `distilbert-base-uncased` (the shape `emotune bench` times by default);
/// its weights are not part of emotune.
pub const BASE_UNCASED_CONFIG: &str = r#"{
  "activation": "gelu",
  "architectures": ["DistilBertForMaskedLM"],
  "attention_dropout": 0.1,
  "dim": 768,
  "dropout": 0.1,
  "hidden_dim": 3072,
  "initializer_range": 0.02,
  "max_position_embeddings": 512,
  "model_type": "distilbert",
  "n_heads": 12,
  "n_layers": 6,
  "pad_token_id": 0,
  "qa_dropout": 0.1,
  "seq_classif_dropout": 0.2,
  "sinusoidal_pos_embds": false,
  "tie_weights_": true,
  "transformers_version": "4.10.0.dev0",
  "vocab_size": 30522
}"#;

/// DistilBERT's fields of `config.json`, with Transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_dropout: f64,
    #[serde(default = "defaults::seq_classif_dropout")]
    pub seq_classif_dropout: f64,
    #[serde(default = "defaults::activation")]
    pub activation: String,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    /// Parsed from `activation` (checked when the config is read).
    #[serde(skip, default = "defaults::parsed_activation")]
    act: Activation,
}

mod defaults {
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn seq_classif_dropout() -> f64 {
        0.2
    }
    pub fn activation() -> String {
        "gelu".into()
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn parsed_activation() -> crate::model::nn::Activation {
        crate::model::nn::Activation::Gelu
    }
}

/// Reads and checks a DistilBERT `config.json` (the registry's entry point).
pub fn parse_config(config: &Value) -> Result<Box<dyn Architecture>> {
    let mut c: DistilBertConfig =
        serde_json::from_value(config.clone()).context("config.json: invalid DistilBERT config")?;
    if c.sinusoidal_pos_embds {
        bail!("config.json: sinusoidal_pos_embds=true is not supported");
    }
    c.act = Activation::parse(&c.activation, "activation")?;
    check_heads(c.dim, c.n_heads)?;
    Ok(Box::new(c))
}

const NAMES: Names = Names {
    model_type: "distilbert",
    classifier_class: "DistilBertForSequenceClassification",
    weight_prefix: "distilbert.",
    token_types: false,
};

impl Architecture for DistilBertConfig {
    fn names(&self) -> &'static Names {
        &NAMES
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            vocab: self.vocab_size,
            hidden: self.dim,
            layers: self.n_layers,
            heads: self.n_heads,
            intermediate: self.hidden_dim,
            max_positions: self.max_position_embeddings,
        }
    }

    fn initializer_range(&self) -> f64 {
        self.initializer_range
    }

    fn activation(&self) -> Activation {
        self.act
    }

    fn build(&self, wl: &mut WeightLoader, num_labels: usize) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(DistilBertForSequenceClassification::load(wl, self, num_labels)?))
    }

    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
}

/// DistilBERT's LayerNorm epsilon is fixed in the reference code.
const LN_EPS: f64 = 1e-12;

pub struct TransformerBlock {
    attention: SelfAttention,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: LayerNorm,
    activation: Activation,
    dropout: f64,
}

impl TransformerBlock {
    fn load(wl: &mut WeightLoader, p: &str, c: &DistilBertConfig, activation: Activation) -> Result<Self> {
        let d = c.dim;
        let attention = SelfAttention {
            q: Linear::load(wl, &format!("{p}.attention.q_lin"), d, d)?,
            k: Linear::load(wl, &format!("{p}.attention.k_lin"), d, d)?,
            v: Linear::load(wl, &format!("{p}.attention.v_lin"), d, d)?,
            out: Linear::load(wl, &format!("{p}.attention.out_lin"), d, d)?,
            n_heads: c.n_heads,
            dropout: c.attention_dropout,
        };
        Ok(TransformerBlock {
            attention,
            sa_layer_norm: LayerNorm::load(wl, &format!("{p}.sa_layer_norm"), d, LN_EPS)?,
            lin1: Linear::load(wl, &format!("{p}.ffn.lin1"), d, c.hidden_dim)?,
            lin2: Linear::load(wl, &format!("{p}.ffn.lin2"), c.hidden_dim, d)?,
            output_layer_norm: LayerNorm::load(wl, &format!("{p}.output_layer_norm"), d, LN_EPS)?,
            activation,
            dropout: c.dropout,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, drop: &Dropout) -> Result<Tensor> {
        // DistilBERT drops out attention probabilities but not the attention output.
        if layer::applies(x, self.activation) {
            let parts = layer::LayerParts {
                attention: &self.attention,
                norm1: &self.sa_layer_norm,
                ff1: &self.lin1,
                ff2: &self.lin2,
                norm2: &self.output_layer_norm,
            };
            let p =
                layer::LayerDropout { attention: self.attention.dropout, attention_output: 0.0, output: self.dropout };
            return layer::encoder_layer(x, bias, &parts, p, drop);
        }
        let sa = self.attention.forward(x, bias, drop)?;
        let sa = self.sa_layer_norm.forward_residual(&sa, x, drop, 0.0)?;
        let ffn = activate(&self.lin1.forward(&sa)?, self.activation)?;
        self.output_layer_norm.forward_residual(&self.lin2.forward(&ffn)?, &sa, drop, self.dropout)
    }
}

/// The encoder: embeddings and `n_layers` transformer blocks.
pub struct DistilBertModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    layers: Vec<TransformerBlock>,
    dropout: f64,
}

impl DistilBertModel {
    pub fn load(wl: &mut WeightLoader, c: &DistilBertConfig) -> Result<Self> {
        let activation = c.act;
        let p = "distilbert";
        let word_embeddings = Embedding::load(wl, &format!("{p}.embeddings.word_embeddings"), c.vocab_size, c.dim)?;
        let position_embeddings =
            Embedding::load(wl, &format!("{p}.embeddings.position_embeddings"), c.max_position_embeddings, c.dim)?;
        let layer_norm = LayerNorm::load(wl, &format!("{p}.embeddings.LayerNorm"), c.dim, LN_EPS)?;
        let layers = (0..c.n_layers)
            .map(|i| TransformerBlock::load(wl, &format!("{p}.transformer.layer.{i}"), c, activation))
            .collect::<Result<Vec<_>>>()?;
        Ok(DistilBertModel { word_embeddings, position_embeddings, layer_norm, layers, dropout: c.dropout })
    }

    /// The embedding layer's output `[b, s, dim]` (before its dropout).
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let (_, s) = batch.dims();
        let positions = Tensor::arange(0u32, s as u32, batch.input_ids.device())?;
        let emb = self
            .word_embeddings
            .forward(&batch.input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        self.layer_norm.forward(&emb)
    }

    /// `last_hidden_state [b, s, dim]` for the embedding layer's output `emb`.
    pub fn encode(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Tensor> {
        let mut x = drop.apply(emb, self.dropout)?;
        let bias = attention_bias(&batch.attention_mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, drop)?;
        }
        Ok(x)
    }
}

/// `DistilBertForSequenceClassification`: first token → pre_classifier → ReLU → dropout →
/// classifier.
pub struct DistilBertForSequenceClassification {
    pub distilbert: DistilBertModel,
    pre_classifier: Linear,
    classifier: Linear,
    seq_classif_dropout: f64,
}

impl DistilBertForSequenceClassification {
    pub fn load(wl: &mut WeightLoader, c: &DistilBertConfig, num_labels: usize) -> Result<Self> {
        let distilbert = DistilBertModel::load(wl, c)?;
        let std = c.initializer_range;
        Ok(DistilBertForSequenceClassification {
            distilbert,
            pre_classifier: Linear::load_head(wl, "pre_classifier", c.dim, c.dim, std)?,
            classifier: Linear::load_head(wl, "classifier", c.dim, num_labels, std)?,
            seq_classif_dropout: c.seq_classif_dropout,
        })
    }
}

impl SequenceClassifier for DistilBertForSequenceClassification {
    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.distilbert.embed(batch)
    }

    fn encode_embedded(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Encoded> {
        Ok(Encoded { hidden: self.distilbert.encode(emb, batch, drop)?, pooled: None })
    }

    fn head(&self, encoded: &Encoded, drop: &Dropout) -> Result<Tensor> {
        let first = encoded.hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pre_classifier.forward(&first)?.relu()?;
        let pooled = drop.apply(&pooled, self.seq_classif_dropout)?;
        self.classifier.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in shape is the real `distilbert-base-uncased` config (its copy in the fixtures).
    #[test]
    fn built_in_base_config_is_the_real_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/distilbert-base-uncased.config.json");
        let real: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ours: Value = serde_json::from_str(BASE_UNCASED_CONFIG).unwrap();
        assert_eq!(ours, real);
    }
}
