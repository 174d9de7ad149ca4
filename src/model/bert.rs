//! BERT (`modeling_bert.py`), also covering MiniLM-style checkpoints: its config, the encoder with
//! its pooler and `BertForSequenceClassification`, with weights named as in the Hugging Face
//! checkpoint: `bert.embeddings.*`, `bert.encoder.layer.{i}.*`, `bert.pooler.dense`, `classifier`.

use super::arch::{check_heads, Architecture, Encoded, Names, SequenceClassifier, Sizes};
use super::layer;
use super::nn::{activate, attention_bias, Activation, Dropout, Embedding, LayerNorm, Linear, SelfAttention};
use crate::tokenize::Batch;
use crate::weights::WeightLoader;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use serde_json::Value;

/// BERT's fields of `config.json`, with Transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
    /// Parsed from `hidden_act` (checked when the config is read).
    #[serde(skip, default = "defaults::parsed_activation")]
    pub(crate) act: Activation,
}

mod defaults {
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
    pub fn parsed_activation() -> crate::model::nn::Activation {
        crate::model::nn::Activation::Gelu
    }
}

/// Reads and checks a BERT `config.json` (the registry's entry point).
pub fn parse_config(config: &Value) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(read_config(config, "BERT")?))
}

/// BERT's fields of a `config.json` of architecture `what`, checked (RoBERTa reads them too).
pub(crate) fn read_config(config: &Value, what: &str) -> Result<BertConfig> {
    let mut c: BertConfig =
        serde_json::from_value(config.clone()).with_context(|| format!("config.json: invalid {what} config"))?;
    if c.position_embedding_type != "absolute" {
        bail!(
            "config.json: position_embedding_type {:?} is not supported (only \"absolute\")",
            c.position_embedding_type
        );
    }
    c.act = Activation::parse(&c.hidden_act, "hidden_act")?;
    check_heads(c.hidden_size, c.num_attention_heads)?;
    Ok(c)
}

const NAMES: Names = Names {
    model_type: "bert",
    classifier_class: "BertForSequenceClassification",
    weight_prefix: "bert.",
    token_types: true,
};

impl Architecture for BertConfig {
    fn names(&self) -> &'static Names {
        &NAMES
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
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
        Ok(Box::new(BertForSequenceClassification::load(wl, self, num_labels)?))
    }

    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
}

/// One post-LayerNorm encoder layer, under BERT's weight names (RoBERTa's are the same).
pub(crate) struct BertLayer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    activation: Activation,
    dropout: f64,
}

impl BertLayer {
    pub(crate) fn load(wl: &mut WeightLoader, p: &str, c: &BertConfig) -> Result<Self> {
        let d = c.hidden_size;
        let activation = c.act;
        let attention = SelfAttention {
            q: Linear::load(wl, &format!("{p}.attention.self.query"), d, d)?,
            k: Linear::load(wl, &format!("{p}.attention.self.key"), d, d)?,
            v: Linear::load(wl, &format!("{p}.attention.self.value"), d, d)?,
            out: Linear::load(wl, &format!("{p}.attention.output.dense"), d, d)?,
            n_heads: c.num_attention_heads,
            dropout: c.attention_probs_dropout_prob,
        };
        Ok(BertLayer {
            attention,
            attention_norm: LayerNorm::load(wl, &format!("{p}.attention.output.LayerNorm"), d, c.layer_norm_eps)?,
            intermediate: Linear::load(wl, &format!("{p}.intermediate.dense"), d, c.intermediate_size)?,
            output: Linear::load(wl, &format!("{p}.output.dense"), c.intermediate_size, d)?,
            output_norm: LayerNorm::load(wl, &format!("{p}.output.LayerNorm"), d, c.layer_norm_eps)?,
            activation,
            dropout: c.hidden_dropout_prob,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, bias: &Tensor, drop: &Dropout) -> Result<Tensor> {
        if layer::applies(x, self.activation) {
            let parts = layer::LayerParts {
                attention: &self.attention,
                norm1: &self.attention_norm,
                ff1: &self.intermediate,
                ff2: &self.output,
                norm2: &self.output_norm,
            };
            let p = layer::LayerDropout {
                attention: self.attention.dropout,
                attention_output: self.dropout,
                output: self.dropout,
            };
            return layer::encoder_layer(x, bias, &parts, p, drop);
        }
        let attn = self.attention.forward(x, bias, drop)?;
        let attn = self.attention_norm.forward_residual(&attn, x, drop, self.dropout)?;
        let inter = activate(&self.intermediate.forward(&attn)?, self.activation)?;
        self.output_norm.forward_residual(&self.output.forward(&inter)?, &attn, drop, self.dropout)
    }
}

/// The encoder with its pooler.
pub struct BertModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    layers: Vec<BertLayer>,
    pooler: Linear,
    dropout: f64,
}

impl BertModel {
    pub fn load(wl: &mut WeightLoader, c: &BertConfig) -> Result<Self> {
        let d = c.hidden_size;
        let p = "bert";
        let word_embeddings = Embedding::load(wl, &format!("{p}.embeddings.word_embeddings"), c.vocab_size, d)?;
        let position_embeddings =
            Embedding::load(wl, &format!("{p}.embeddings.position_embeddings"), c.max_position_embeddings, d)?;
        let token_type_embeddings =
            Embedding::load(wl, &format!("{p}.embeddings.token_type_embeddings"), c.type_vocab_size, d)?;
        let layer_norm = LayerNorm::load(wl, &format!("{p}.embeddings.LayerNorm"), d, c.layer_norm_eps)?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| BertLayer::load(wl, &format!("{p}.encoder.layer.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        // Like Transformers, a checkpoint without a pooler gets a freshly initialised one.
        let pooler = Linear::load_head(wl, &format!("{p}.pooler.dense"), d, d, c.initializer_range)?;
        Ok(BertModel {
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            layer_norm,
            layers,
            pooler,
            dropout: c.hidden_dropout_prob,
        })
    }

    /// The embedding layer's output `[b, s, d]` (before its dropout).
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let (_, s) = batch.dims();
        let device = batch.input_ids.device();
        let positions = Tensor::arange(0u32, s as u32, device)?;
        let token_types = match &batch.token_type_ids {
            Some(t) => t.clone(),
            None => batch.input_ids.zeros_like()?,
        };
        let emb = self
            .word_embeddings
            .forward(&batch.input_ids)?
            .add(&self.token_type_embeddings.forward(&token_types)?)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        self.layer_norm.forward(&emb)
    }

    /// `(last_hidden_state [b, s, d], pooler_output [b, d])` for the embedding layer's output.
    pub fn encode(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<(Tensor, Tensor)> {
        let mut x = drop.apply(emb, self.dropout)?;
        let bias = attention_bias(&batch.attention_mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, drop)?;
        }
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first)?.tanh()?;
        Ok((x, pooled))
    }
}

/// `BertForSequenceClassification`: pooler output → dropout → classifier.
pub struct BertForSequenceClassification {
    pub bert: BertModel,
    classifier: Linear,
    dropout: f64,
}

impl BertForSequenceClassification {
    pub fn load(wl: &mut WeightLoader, c: &BertConfig, num_labels: usize) -> Result<Self> {
        let bert = BertModel::load(wl, c)?;
        let classifier = Linear::load_head(wl, "classifier", c.hidden_size, num_labels, c.initializer_range)?;
        Ok(BertForSequenceClassification {
            bert,
            classifier,
            dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
        })
    }
}

impl SequenceClassifier for BertForSequenceClassification {
    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.bert.embed(batch)
    }

    fn encode_embedded(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Encoded> {
        let (hidden, pooled) = self.bert.encode(emb, batch, drop)?;
        Ok(Encoded { hidden, pooled: Some(pooled) })
    }

    fn head(&self, encoded: &Encoded, drop: &Dropout) -> Result<Tensor> {
        let pooled = encoded.pooled.as_ref().context("BERT's head reads the pooler output")?;
        self.classifier.forward(&drop.apply(pooled, self.dropout)?)
    }
}
