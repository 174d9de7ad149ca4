//! The models: one file per architecture behind [`arch::Architecture`] (listed in
//! [`registry`]), the layers they share ([`nn`]), the fused CPU kernels and encoder layer, and
//! loading a classifier from a checkpoint.

pub mod arch;
pub mod bert;
pub mod config;
pub mod distilbert;
pub mod grads;
pub mod kernels;
pub mod layer;
pub mod load;
pub mod nn;
pub mod precision;
pub mod registry;
pub mod roberta;
pub mod task;
pub mod xlm_roberta;

pub use crate::weights::{Dtype, Quantize};
pub use arch::{Architecture, Encoded, Names, SequenceClassifier, Sizes};
pub use config::ModelConfig;
pub use grads::backward;
pub use load::{
    inference_format, load_classifier, load_classifier_fresh_head, load_trained_classifier, random_classifier,
    random_classifier_for_inference, LoadedModel,
};
pub use nn::{
    activate, attention_bias, log_softmax_last_dim, softmax_last_dim, Activation, Dropout, Embedding, LayerNorm,
    Linear, SelfAttention,
};
pub use task::{bce_with_logits, cross_entropy, Targets, Task};
