//! DistilBERT (`modeling_distilbert.py`), with weights named as in the Hugging Face checkpoint:
//! `distilbert.embeddings.*`, `distilbert.transformer.layer.{i}.*`, `pre_classifier`, `classifier`.

use super::{activate, attention_bias, layer, Batch, Dropout, Embedding, LayerNorm, Linear, SelfAttention};
use crate::config::{Activation, DistilBertConfig};
use crate::weights::WeightLoader;
use anyhow::Result;
use candle_core::Tensor;

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
        let activation = c.activation();
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

    /// `last_hidden_state [b, s, dim]`.
    pub fn forward(&self, batch: &Batch, drop: &Dropout) -> Result<Tensor> {
        let (_, s) = batch.dims();
        let positions = Tensor::arange(0u32, s as u32, batch.input_ids.device())?;
        let emb = self
            .word_embeddings
            .forward(&batch.input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut x = drop.apply(&self.layer_norm.forward(&emb)?, self.dropout)?;
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

    pub fn forward(&self, batch: &Batch, drop: &Dropout) -> Result<Tensor> {
        let hidden = self.distilbert.forward(batch, drop)?;
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pre_classifier.forward(&first)?.relu()?;
        let pooled = drop.apply(&pooled, self.seq_classif_dropout)?;
        self.classifier.forward(&pooled)
    }
}
