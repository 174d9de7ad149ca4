//! The hyperparameters of a run. Their defaults are the seed recipe, written once: as the
//! `emotune train` flags' defaults, which [`TrainConfig::seed_recipe`] reads back.

use crate::optim::AdamWConfig;
use anyhow::{bail, Result};
use clap::{Args, Parser};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The model `emotune train` fine-tunes unless told otherwise.
pub const DEFAULT_MODEL: &str = "distilbert-base-uncased";

/// Which validation metric picks the best epoch (and drives early stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BestMetric {
    Loss,
    Accuracy,
    F1,
}

impl BestMetric {
    pub fn name(self) -> &'static str {
        match self {
            BestMetric::Loss => "validation loss",
            BestMetric::Accuracy => "accuracy",
            BestMetric::F1 => "F1",
        }
    }

    /// Whether `a` is better than `b` by this metric.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            BestMetric::Loss => a < b,
            _ => a > b,
        }
    }
}

/// Class weights of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// Every class weighs 1.
    None,
    /// `n_samples / (n_classes * count)`, as scikit-learn's `compute_class_weight("balanced")`.
    Balanced,
}

/// The hyperparameters of a run (saved as `training_args.json`, under Transformers' names).
#[derive(Debug, Clone, Serialize, Deserialize, Args)]
pub struct TrainConfig {
    /// The model to fine-tune: a Hub id or a directory.
    #[arg(long, short, default_value = DEFAULT_MODEL, help_heading = "Model", value_name = "MODEL")]
    pub model: String,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV", help_heading = "Model")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Where the model is written (set by the caller; `--output-dir` on the command line).
    #[arg(skip)]
    pub output_dir: PathBuf,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5, help_heading = "Optimiser", value_name = "LR", aliases = ["learning_rate"])]
    pub learning_rate: f64,
    /// AdamW's decay rate of the gradient's running mean (β₁).
    #[arg(long, default_value_t = 0.9, help_heading = "Optimiser", value_name = "BETA", aliases = ["adam_beta1"])]
    pub adam_beta1: f64,
    /// AdamW's decay rate of the squared gradient's running mean (β₂).
    #[arg(long, default_value_t = 0.999, help_heading = "Optimiser", value_name = "BETA", aliases = ["adam_beta2"])]
    pub adam_beta2: f64,
    /// Added to AdamW's denominator for numerical stability (ε).
    #[arg(long, default_value_t = 1e-8, help_heading = "Optimiser", value_name = "EPS", aliases = ["adam_epsilon"])]
    pub adam_epsilon: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.01, help_heading = "Optimiser", value_name = "DECAY", aliases = ["weight_decay"])]
    pub weight_decay: f64,
    /// Training batch size.
    #[arg(long = "batch-size", visible_alias = "train-batch-size", default_value_t = 64, help_heading = "Schedule", value_name = "N", aliases = ["per-device-train-batch-size", "per_device_train_batch_size"])]
    pub train_batch_size: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 64, help_heading = "Schedule", value_name = "N", aliases = ["per-device-eval-batch-size", "per_device_eval_batch_size"])]
    pub eval_batch_size: usize,
    /// Training epochs.
    #[arg(long = "epochs", default_value_t = 2, help_heading = "Schedule", value_name = "N", aliases = ["num-train-epochs", "num_train_epochs"])]
    pub num_train_epochs: usize,
    /// Stop after this many optimiser steps (overrides --epochs, as in Transformers).
    #[arg(long, help_heading = "Schedule", value_name = "STEPS", aliases = ["max_steps"])]
    pub max_steps: Option<usize>,
    /// Linear warm-up steps (overrides --warmup-ratio).
    #[arg(long, default_value_t = 0, help_heading = "Schedule", value_name = "STEPS", aliases = ["warmup_steps"])]
    pub warmup_steps: usize,
    /// Warm-up as a fraction of all steps.
    #[arg(long, default_value_t = 0.0, help_heading = "Schedule", value_name = "FRACTION", aliases = ["warmup_ratio"])]
    pub warmup_ratio: f64,
    /// Seeds head initialisation, dropout and shuffling.
    #[arg(long, default_value_t = 42, help_heading = "Schedule", value_name = "SEED")]
    pub seed: u64,
    /// Mixed precision (`--dtype bf16`, set with `--device`): the matmuls in bf16, as the Trainer's
    /// `bf16=True`.
    #[arg(skip)]
    #[serde(default)]
    pub bf16: bool,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long, help_heading = "Model", value_name = "TOKENS")]
    pub max_length: Option<usize>,
    /// Use only the first N training examples.
    #[arg(long, help_heading = "Data", value_name = "N")]
    pub train_limit: Option<usize>,
    /// Use only the first N validation/test examples.
    #[arg(long, help_heading = "Data", value_name = "N")]
    pub eval_limit: Option<usize>,
    /// Train without the training rows this file lists: a report of `check-data --label-errors`
    /// (CSV or JSON lines with a `location` field) or lines of `FILE:LINE`.
    #[arg(long, help_heading = "Data", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_rows: Option<PathBuf>,
    /// The license the model card declares (an SPDX id such as apache-2.0, or `other`); none
    /// unless given: the base model's and the data's terms are yours to weigh.
    #[arg(long, help_heading = "Output", value_name = "LICENSE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// Replace a model already in --output-dir.
    #[arg(long, help_heading = "Output", aliases = ["overwrite_output_dir"])]
    pub overwrite_output_dir: bool,
    /// Also checkpoint every N steps (checkpoints are always written at each epoch end).
    #[arg(long, help_heading = "Checkpoints and the best model", value_name = "STEPS", aliases = ["save_steps"])]
    pub save_steps: Option<usize>,
    /// Keep at most N checkpoints (the best one is always kept).
    #[arg(long, default_value = "2", help_heading = "Checkpoints and the best model", value_name = "N", aliases = ["save_total_limit"])]
    pub save_total_limit: Option<usize>,
    /// Stop when the best metric has not improved for N evaluations.
    #[arg(long, help_heading = "Checkpoints and the best model", value_name = "N", aliases = ["early_stopping_patience"])]
    pub early_stopping_patience: Option<usize>,
    /// The metric that picks the best epoch.
    #[arg(long, value_enum, default_value_t = BestMetric::Loss, help_heading = "Checkpoints and the best model", value_name = "METRIC", aliases = ["metric-for-best-model", "metric_for_best_model"])]
    pub metric_for_best: BestMetric,
    /// Make the output the best epoch's model (the card and table say which).
    #[arg(long, help_heading = "Checkpoints and the best model", aliases = ["load-best-model-at-end", "load_best_model_at_end"])]
    pub load_best_at_end: bool,
    /// Weigh the loss per class (balanced: inversely to the training counts).
    #[arg(long, value_enum, default_value_t = ClassWeights::None, help_heading = "Optimiser", value_name = "WEIGHTS", aliases = ["class_weights"])]
    pub class_weights: ClassWeights,
    /// Log the mean training loss every N steps (learning curves).
    #[arg(long, default_value_t = 10, help_heading = "Output", value_name = "STEPS", aliases = ["logging_steps"])]
    pub logging_steps: usize,
    /// Clip the global gradient norm to this before each step, as the Trainer does (0: off).
    #[arg(long, default_value_t = 1.0, help_heading = "Optimiser", value_name = "NORM", aliases = ["max_grad_norm"])]
    pub max_grad_norm: f64,
    /// Batch texts of similar length together (less padding; Transformers' group_by_length).
    #[arg(long, help_heading = "Schedule", aliases = ["group_by_length"])]
    #[serde(default)]
    pub group_by_length: bool,
    /// Multi-label data: the probability from which a label is predicted (evaluations, and the
    /// saved thresholds unless tuned).
    #[arg(long, default_value_t = 0.5, help_heading = "Multi-label", value_name = "PROB")]
    #[serde(default = "default_threshold", skip_serializing_if = "is_default_threshold")]
    pub threshold: f32,
    /// Multi-label data: after training, pick each label's threshold on the validation split to
    /// maximise its F1, and save those with the model.
    #[arg(long, help_heading = "Multi-label")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tune_thresholds: bool,
}

fn default_threshold() -> f32 {
    0.5
}

fn is_default_threshold(t: &f32) -> bool {
    *t == default_threshold()
}

/// Parses nothing but [`TrainConfig`]'s flags, to read their defaults.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: TrainConfig,
}

impl TrainConfig {
    /// The seed recipe (the flags' defaults) for `model`, written to `output_dir`.
    pub fn seed_recipe(model: &str, output_dir: PathBuf) -> TrainConfig {
        let mut c = Defaults::try_parse_from(["emotune"]).expect("the defaults parse").config;
        c.model = model.to_string();
        c.output_dir = output_dir;
        c
    }

    /// The gradient-norm limit, `None` when clipping is off (`max_grad_norm` 0, as Transformers).
    pub fn clip_norm(&self) -> Option<f64> {
        (self.max_grad_norm > 0.0).then_some(self.max_grad_norm)
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.learning_rate <= 0.0 || !self.learning_rate.is_finite() {
            bail!("--learning-rate must be positive");
        }
        if self.train_batch_size == 0 || self.eval_batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        if self.num_train_epochs == 0 && self.max_steps.is_none() {
            bail!("--epochs must be at least 1");
        }
        if self.max_grad_norm < 0.0 || !self.max_grad_norm.is_finite() {
            bail!("--max-grad-norm must be positive (0 turns clipping off)");
        }
        if self.max_steps == Some(0) || self.save_steps == Some(0) || self.logging_steps == 0 {
            bail!("--max-steps, --save-steps and --logging-steps must be at least 1");
        }
        if self.save_total_limit == Some(0) {
            bail!("--save-total-limit must be at least 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            bail!("--warmup-ratio must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            bail!("--threshold must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            bail!("Adam betas must be in [0, 1)");
        }
        Ok(())
    }

    /// The fields that must match for a checkpoint to be resumed (everything but where the
    /// output goes and the keeping of checkpoints).
    pub fn resume_key(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serialisable");
        let m = v.as_object_mut().expect("an object");
        for k in ["output_dir", "overwrite_output_dir", "save_steps", "save_total_limit", "license"] {
            m.remove(k);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_recipe_is_the_reference_one() {
        let c = TrainConfig::seed_recipe(DEFAULT_MODEL, PathBuf::from("out"));
        assert_eq!((c.learning_rate, c.train_batch_size, c.eval_batch_size), (2e-5, 64, 64));
        assert_eq!((c.num_train_epochs, c.seed, c.warmup_steps, c.warmup_ratio), (2, 42, 0, 0.0));
        assert_eq!((c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.weight_decay), (0.9, 0.999, 1e-8, 0.01));
        assert_eq!((c.clip_norm(), c.save_total_limit, c.logging_steps), (Some(1.0), Some(2), 10));
        assert_eq!(c.model, "distilbert-base-uncased");
        c.validate().unwrap();
    }
}
