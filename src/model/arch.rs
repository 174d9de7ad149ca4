//! The interface every architecture implements: the facts the rest of the crate needs about it
//! (its `model_type`, Transformers class, weight prefix, sizes, token types, initialisation,
//! activation) and how to build its sequence classifier. Each architecture is one file that
//! implements [`Architecture`] for its parsed `config.json`, plus one line in
//! [`super::registry`].

use super::nn::{Activation, Dropout};
use crate::tokenize::Batch;
use crate::weights::WeightLoader;
use anyhow::{bail, Result};
use candle_core::Tensor;

/// The shape of an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// The feed-forward block's inner width.
    pub intermediate: usize,
    pub max_positions: usize,
}

/// What an architecture is called and how its checkpoints are laid out.
#[derive(Debug)]
pub struct Names {
    /// `model_type` in `config.json` (`"distilbert"`).
    pub model_type: &'static str,
    /// The Transformers class of its sequence classifier (`architectures` in a saved config).
    pub classifier_class: &'static str,
    /// The prefix of the encoder's weight names (`"distilbert."`); checkpoints of a bare base
    /// model store the names without it, and every name outside it belongs to the task head.
    pub weight_prefix: &'static str,
    /// Whether the encoder reads segment ids (`token_type_ids`).
    pub token_types: bool,
}

/// One architecture's parsed `config.json`: what it is and how to build it.
pub trait Architecture: std::fmt::Debug + Send + Sync {
    fn names(&self) -> &'static Names;
    fn sizes(&self) -> Sizes;
    /// The standard deviation of Transformers' `_init_weights` for new weights.
    fn initializer_range(&self) -> f64;
    fn activation(&self) -> Activation;
    /// The sequence classifier with `num_labels` outputs, its weights taken from `wl`.
    fn build(&self, wl: &mut WeightLoader, num_labels: usize) -> Result<Box<dyn SequenceClassifier>>;
    fn clone_box(&self) -> Box<dyn Architecture>;
}

/// What an encoder computes for a batch.
pub struct Encoded {
    /// `last_hidden_state [batch, seq, hidden]`.
    pub hidden: Tensor,
    /// `pooler_output [batch, hidden]`, for architectures with a pooler.
    pub pooled: Option<Tensor>,
}

impl dyn Architecture {
    pub fn model_type(&self) -> &'static str {
        self.names().model_type
    }

    pub fn classifier_class(&self) -> &'static str {
        self.names().classifier_class
    }

    pub fn weight_prefix(&self) -> &'static str {
        self.names().weight_prefix
    }

    pub fn uses_token_types(&self) -> bool {
        self.names().token_types
    }
}

/// A built classifier, in two halves: the embedding layer, and everything after it. The split
/// is where attribution methods hook in (Integrated Gradients interpolates the embedding layer's
/// output, as Captum's `LayerIntegratedGradients` on `model.<base>.embeddings` does).
pub trait SequenceClassifier: Send + Sync {
    /// The embedding layer's output `[batch, seq, hidden]`: word, position (and token-type)
    /// embeddings summed and layer-normalised, before the embedding dropout.
    fn embed(&self, batch: &Batch) -> Result<Tensor>;
    /// The encoder's outputs for the embedding layer's output `emb` of `batch` (whose attention
    /// mask it reads), before the task head.
    fn encode_embedded(&self, emb: &Tensor, batch: &Batch, drop: &Dropout) -> Result<Encoded>;
    /// Logits `[batch, num_labels]` from the encoder's outputs.
    fn head(&self, encoded: &Encoded, drop: &Dropout) -> Result<Tensor>;

    /// The encoder's outputs, before the task head.
    fn encode(&self, batch: &Batch, drop: &Dropout) -> Result<Encoded> {
        self.encode_embedded(&self.embed(batch)?, batch, drop)
    }
    /// Logits `[batch, num_labels]`.
    fn forward(&self, batch: &Batch, drop: &Dropout) -> Result<Tensor> {
        self.head(&self.encode(batch, drop)?, drop)
    }
}

/// Multi-head attention needs a width divisible by the number of heads.
pub fn check_heads(hidden: usize, heads: usize) -> Result<()> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        bail!("config.json: hidden size {hidden} is not divisible by the number of heads {heads}");
    }
    Ok(())
}
