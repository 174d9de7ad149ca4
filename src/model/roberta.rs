//! RoBERTa (`modeling_roberta.py`): `RobertaForSequenceClassification`, with weights named as in
//! the Hugging Face checkpoint: `roberta.embeddings.*`, `roberta.encoder.layer.{i}.*`,
//! `classifier.dense`, `classifier.out_proj`. XLM-RoBERTa is this model under other names
//! ([`super::xlm_roberta`]).
//!
//! Against BERT: position ids count from `padding_idx + 1` over the real tokens and give pads
//! `padding_idx`; one token type; no pooler; the head reads the first token (`<s>`) through
//! dropout → dense → tanh → dropout → out_proj. The encoder layers are BERT's.

use super::arch::{Architecture, Encoded, Names, SequenceClassifier, Sizes};
use super::bert::{self, BertConfig, BertLayer};
use super::nn::{attention_bias, Activation, Dropout, Embedding, LayerNorm, Linear};
use crate::tokenize::Batch;
use crate::weights::WeightLoader;
use anyhow::{bail, Result};
use candle_core::Tensor;
use serde_json::Value;

const NAMES: Names = Names {
    model_type: "roberta",
    classifier_class: "RobertaForSequenceClassification",
    weight_prefix: "roberta.",
    token_types: false,
};

/// RoBERTa's `config.json`: BERT's fields plus the padding id the position ids start from.
#[derive(Debug, Clone)]
pub struct RobertaConfig {
    pub bert: BertConfig,
    pub pad_token_id: u32,
    names: &'static Names,
}

/// Reads and checks a RoBERTa `config.json` (the registry's entry point).
pub fn parse_config(config: &Value) -> Result<Box<dyn Architecture>> {
    Ok(Box::new(read_config(config, &NAMES, "RoBERTa")?))
}

/// A `config.json` of the RoBERTa family, to be known by `names`.
pub(crate) fn read_config(config: &Value, names: &'static Names, what: &str) -> Result<RobertaConfig> {
    let bert = bert::read_config(config, what)?;
    let pad_token_id = config.get("pad_token_id").and_then(Value::as_u64).unwrap_or(1);
    if pad_token_id as usize + 1 >= bert.max_position_embeddings {
        bail!(
            "config.json: max_position_embeddings {} leaves no positions after pad_token_id {pad_token_id}",
            bert.max_position_embeddings
        );
    }
    Ok(RobertaConfig { bert, pad_token_id: pad_token_id as u32, names })
}

impl Architecture for RobertaConfig {
    fn names(&self) -> &'static Names {
        self.names
    }

    fn sizes(&self) -> Sizes {
        let c = &self.bert;
        Sizes {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            // Positions up to `padding_idx` are never used by a real token.
            max_positions: c.max_position_embeddings - self.pad_token_id as usize - 1,
        }
    }

    fn initializer_range(&self) -> f64 {
        self.bert.initializer_range
    }

    fn activation(&self) -> Activation {
        self.bert.act
    }

    fn build(&self, wl: &mut WeightLoader, num_labels: usize) -> Result<Box<dyn SequenceClassifier>> {
        Ok(Box::new(RobertaForSequenceClassification::load(wl, self, num_labels)?))
    }

    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
}

/// Transformers' `create_position_ids_from_input_ids`: real tokens are numbered from
/// `pad + 1`, pads get `pad`.
pub fn position_ids(input_ids: &Tensor, pad: u32) -> Result<Tensor> {
    let ids: Vec<Vec<u32>> = input_ids.to_vec2()?;
    let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
    let mut positions = Vec::with_capacity(b * s);
    for row in &ids {
        let mut count = 0;
        for &id in row {
            if id == pad {
                positions.push(pad);
            } else {
                count += 1;
                positions.push(pad + count);
            }
        }
    }
    Ok(Tensor::from_vec(positions, (b, s), input_ids.device())?)
}

/// The encoder, without a pooler.
pub struct RobertaModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    layers: Vec<BertLayer>,
    dropout: f64,
    pad: u32,
}

impl RobertaModel {
    pub fn load(wl: &mut WeightLoader, c: &RobertaConfig) -> Result<Self> {
        let (b, p) = (&c.bert, "roberta");
        let d = b.hidden_size;
        let embedding =
            |wl: &mut WeightLoader, name: &str, n| Embedding::load(wl, &format!("{p}.embeddings.{name}"), n, d);
        Ok(RobertaModel {
            word_embeddings: embedding(wl, "word_embeddings", b.vocab_size)?,
            position_embeddings: embedding(wl, "position_embeddings", b.max_position_embeddings)?,
            token_type_embeddings: embedding(wl, "token_type_embeddings", b.type_vocab_size)?,
            layer_norm: LayerNorm::load(wl, &format!("{p}.embeddings.LayerNorm"), d, b.layer_norm_eps)?,
            layers: (0..b.num_hidden_layers)
                .map(|i| BertLayer::load(wl, &format!("{p}.encoder.layer.{i}"), b))
                .collect::<Result<Vec<_>>>()?,
            dropout: b.hidden_dropout_prob,
            pad: c.pad_token_id,
        })
    }

    /// The embedding layer's output `[b, s, d]` (before its dropout).
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        let positions = position_ids(&batch.input_ids, self.pad)?;
        let token_types = match &batch.token_type_ids {
            Some(t) => t.clone(),
            None => batch.input_ids.zeros_like()?,
        };
        let emb = (self.word_embeddings.forward(&batch.input_ids)?
            + self.token_type_embeddings.forward(&token_types)?)?
        .add(&self.position_embeddings.forward(&positions)?)?;
        self.layer_norm.forward(&emb)
    }

    /// `last_hidden_state [b, s, d]` for the embedding layer's output `emb`.
    pub fn encode(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Tensor> {
        let mut x = drop.apply(emb, self.dropout)?;
        let bias = attention_bias(&batch.attention_mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, drop)?;
        }
        Ok(x)
    }
}

/// `RobertaForSequenceClassification` (and XLM-RoBERTa's): the first token through dropout →
/// dense → tanh → dropout → out_proj.
pub struct RobertaForSequenceClassification {
    pub roberta: RobertaModel,
    dense: Linear,
    out_proj: Linear,
    dropout: f64,
}

impl RobertaForSequenceClassification {
    pub fn load(wl: &mut WeightLoader, c: &RobertaConfig, num_labels: usize) -> Result<Self> {
        let roberta = RobertaModel::load(wl, c)?;
        let (d, std) = (c.bert.hidden_size, c.bert.initializer_range);
        Ok(RobertaForSequenceClassification {
            roberta,
            dense: Linear::load_head(wl, "classifier.dense", d, d, std)?,
            out_proj: Linear::load_head(wl, "classifier.out_proj", d, num_labels, std)?,
            dropout: c.bert.classifier_dropout.unwrap_or(c.bert.hidden_dropout_prob),
        })
    }
}

impl SequenceClassifier for RobertaForSequenceClassification {
    fn embed(&self, batch: &Batch) -> Result<Tensor> {
        self.roberta.embed(batch)
    }

    fn encode_embedded(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Encoded> {
        Ok(Encoded { hidden: self.roberta.encode(emb, batch, drop)?, pooled: None })
    }

    fn head(&self, encoded: &Encoded, drop: &Dropout) -> Result<Tensor> {
        let first = drop.apply(&encoded.hidden.narrow(1, 0, 1)?.squeeze(1)?, self.dropout)?;
        let x = drop.apply(&self.dense.forward(&first)?.tanh()?, self.dropout)?;
        self.out_proj.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_ids_skip_padding() {
        let ids = Tensor::new(&[[0u32, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]], &candle_core::Device::Cpu).unwrap();
        let p: Vec<Vec<u32>> = position_ids(&ids, 1).unwrap().to_vec2().unwrap();
        assert_eq!(p, [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]);
    }
}
