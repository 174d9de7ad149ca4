//! A classifier loaded from a checkpoint (or drawn at random for speed work), with its config and
//! the named parameters it was built from.

use super::arch::SequenceClassifier;
use super::config::ModelConfig;
use crate::weights::{Dtype, ParamStore, Quantize, WeightLoader};
use anyhow::Result;
use candle_core::{DType, Device};
use std::path::Path;

/// A classifier with its config and the parameters it was built from.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub model: Box<dyn SequenceClassifier>,
    pub params: ParamStore,
    /// The dtype its matmuls run in under mixed precision (`--dtype bf16`), set by whoever runs it;
    /// None: as the parameters (f32). See [`super::precision`].
    pub autocast: Option<DType>,
}

/// The format of a model loaded for inference, from `--quantize` and `--dtype`: bf16 only where
/// the CPU has a bf16 engine (AMX tiles, else AVX-512 BF16 on AMD); elsewhere float32, with a warning
/// saying so.
pub fn inference_format(quantize: Option<Quantize>, dtype: Dtype, device: &Device) -> Result<Option<Quantize>> {
    match (quantize, dtype) {
        (Some(q), Dtype::Bf16) => anyhow::bail!("{} and --dtype bf16 exclude each other", q.flag()),
        (q, Dtype::F32) => Ok(q),
        // on a GPU, bf16 is autocast (`ComputeArgs::resolve`), not a format of the weights
        (None, Dtype::Bf16) if !device.is_cpu() => Ok(None),
        (None, Dtype::Bf16) if super::kernels::amx::available() => Ok(Some(Quantize::Bf16)),
        (None, Dtype::Bf16) => {
            log::warn!("--dtype bf16: {}, so the model runs in float32", super::kernels::amx::NO_ENGINE);
            Ok(None)
        }
    }
}

/// Builds the classifier described by `config` from the safetensors file `weights`.
/// Base-model checkpoints (no head, or names without the architecture's weight prefix) load
/// too; a missing head is initialised `N(0, initializer_range)` from `seed`.
pub fn load_classifier(config: ModelConfig, weights: &Path, seed: u64, device: &Device) -> Result<LoadedModel> {
    let prefix = config.arch.weight_prefix();
    build_classifier(config, WeightLoader::open(weights, prefix, seed, device)?)
}

/// The classifier of a fine-tuned checkpoint, for prediction: every parameter, the task head
/// included, must be in `weights` (nothing is drawn at random); the encoder's linear layers
/// prepared for inference (quantised as `quantize` says). It cannot train.
pub fn load_trained_classifier(
    config: ModelConfig,
    weights: &Path,
    quantize: Option<Quantize>,
    device: &Device,
) -> Result<LoadedModel> {
    let prefix = config.arch.weight_prefix();
    build_classifier(config, WeightLoader::open(weights, prefix, 0, device)?.trained_only().for_inference(quantize))
}

/// Like [`load_classifier`], but the checkpoint's task head is ignored and created afresh
/// (for fine-tuning on a different label set).
pub fn load_classifier_fresh_head(
    config: ModelConfig,
    weights: &Path,
    seed: u64,
    device: &Device,
) -> Result<LoadedModel> {
    let prefix = config.arch.weight_prefix();
    build_classifier(config, WeightLoader::open(weights, prefix, seed, device)?.with_fresh_head())
}

/// A classifier of `config`'s shape with every weight drawn at random from `seed`, for speed
/// work only (it has learned nothing).
pub fn random_classifier(config: ModelConfig, seed: u64, device: &Device) -> Result<LoadedModel> {
    let wl = WeightLoader::random(config.arch.weight_prefix(), seed, config.arch.initializer_range(), device);
    build_classifier(config, wl)
}

/// [`random_classifier`] with the encoder's linear layers prepared for inference (quantised as
/// `quantize` says; the same random draws, so the int8 model is the quantised float32 one). It
/// cannot train.
pub fn random_classifier_for_inference(
    config: ModelConfig,
    seed: u64,
    quantize: Option<Quantize>,
    device: &Device,
) -> Result<LoadedModel> {
    let wl = WeightLoader::random(config.arch.weight_prefix(), seed, config.arch.initializer_range(), device);
    build_classifier(config, wl.for_inference(quantize))
}

fn build_classifier(config: ModelConfig, mut wl: WeightLoader) -> Result<LoadedModel> {
    let model = config.arch.build(&mut wl, config.num_labels())?;
    Ok(LoadedModel { config, model, params: wl.finish()?, autocast: None })
}
