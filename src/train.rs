//! `emotune train`: fine-tuning with the Trainer's recipe (AdamW, linear schedule, dropout on,
//! evaluation after every epoch) and a Hugging Face–layout output directory.

use crate::data::{self, DataSpec, Dataset};
use crate::hub::ModelFiles;
use crate::infer::{evaluate, text_encoder};
use crate::metrics;
use crate::model::ModelConfig;
use crate::model::{cross_entropy, load_classifier, Dropout, LoadedModel};
use crate::optim::{AdamW, AdamWConfig, LinearSchedule};
use crate::tokenize::{TextEncoder, Tokenized};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Which validation metric picks the best epoch (and drives early stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BestMetric {
    Loss,
    Accuracy,
    F1,
}

impl BestMetric {
    fn value(self, r: &EpochRow) -> f64 {
        match self {
            BestMetric::Loss => r.validation_loss,
            BestMetric::Accuracy => r.accuracy,
            BestMetric::F1 => r.f1,
        }
    }

    fn better(self, a: f64, b: f64) -> bool {
        match self {
            BestMetric::Loss => a < b,
            _ => a > b,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BestMetric::Loss => "validation loss",
            BestMetric::Accuracy => "accuracy",
            BestMetric::F1 => "F1",
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

/// The hyperparameters of a run (saved as `training_args.json`). Defaults are the seed recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: String,
    pub output_dir: PathBuf,
    pub learning_rate: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub weight_decay: f64,
    pub train_batch_size: usize,
    pub eval_batch_size: usize,
    pub num_train_epochs: usize,
    /// Stop after this many optimiser steps (overrides the epoch count, as in Transformers).
    pub max_steps: Option<usize>,
    pub warmup_steps: usize,
    pub warmup_ratio: f64,
    pub lr_scheduler_type: String,
    pub seed: u64,
    pub max_length: Option<usize>,
    pub train_limit: Option<usize>,
    pub eval_limit: Option<usize>,
    pub overwrite_output_dir: bool,
    /// Also checkpoint every N steps (checkpoints are always written at each epoch end).
    pub save_steps: Option<usize>,
    /// Keep at most this many checkpoints (the best one is always kept).
    pub save_total_limit: Option<usize>,
    pub early_stopping_patience: Option<usize>,
    pub metric_for_best: BestMetric,
    pub load_best_at_end: bool,
    pub class_weights: ClassWeights,
    /// Training loss is logged (for the learning curves) as the mean over this many steps.
    pub logging_steps: usize,
    /// Clip the global gradient norm to this (the Trainer's `max_grad_norm`, 1.0); `None`: off.
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    /// Batch texts of similar length together (Transformers' `group_by_length`).
    #[serde(default)]
    pub group_by_length: bool,
}

impl TrainConfig {
    pub fn seed_recipe(model: &str, output_dir: PathBuf) -> TrainConfig {
        TrainConfig {
            model: model.to_string(),
            output_dir,
            learning_rate: 2e-5,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.01,
            train_batch_size: 64,
            eval_batch_size: 64,
            num_train_epochs: 2,
            max_steps: None,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler_type: "linear".into(),
            seed: 42,
            max_length: None,
            train_limit: None,
            eval_limit: None,
            overwrite_output_dir: false,
            save_steps: None,
            save_total_limit: Some(2),
            early_stopping_patience: None,
            metric_for_best: BestMetric::Loss,
            load_best_at_end: false,
            class_weights: ClassWeights::None,
            logging_steps: 10,
            max_grad_norm: Some(1.0),
            group_by_length: false,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.learning_rate <= 0.0 || !self.learning_rate.is_finite() {
            bail!("--learning-rate must be positive");
        }
        if self.train_batch_size == 0 || self.eval_batch_size == 0 {
            bail!("batch sizes must be at least 1");
        }
        if self.num_train_epochs == 0 && self.max_steps.is_none() {
            bail!("--epochs must be at least 1");
        }
        if self.max_grad_norm.is_some_and(|m| !(m > 0.0)) {
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
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            bail!("Adam betas must be in [0, 1)");
        }
        Ok(())
    }

    /// The fields that must match for a checkpoint to be resumed (everything but where the
    /// output goes and the keeping of checkpoints).
    fn resume_key(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serialisable");
        let m = v.as_object_mut().expect("an object");
        for k in ["output_dir", "overwrite_output_dir", "save_steps", "save_total_limit"] {
            m.remove(k);
        }
        v
    }
}

/// One row of the results table (one evaluation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub training_loss: f64,
    pub epoch: f64,
    pub step: usize,
    pub validation_loss: f64,
    pub accuracy: f64,
    pub f1: f64,
    pub f1_macro: f64,
}

/// A logged training loss (mean over `logging_steps` steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPoint {
    pub step: usize,
    pub loss: f64,
    pub learning_rate: f64,
}

/// The best evaluation so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Best {
    /// Index into the table's rows.
    pub row: usize,
    pub value: f64,
    /// The checkpoint directory written after that evaluation.
    pub checkpoint: String,
}

/// Everything needed to continue a run exactly where it stopped (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub global_step: usize,
    pub total_steps: usize,
    /// The epoch in progress (0-based) and the batches of it already done.
    pub epoch: usize,
    pub batches_done: usize,
    pub epoch_loss_sum: f64,
    /// The shuffling stream as it was before this epoch's permutation was drawn.
    pub shuffle_rng: ChaCha8Rng,
    pub dropout_rng: ChaCha8Rng,
    pub rows: Vec<EpochRow>,
    pub log_history: Vec<LogPoint>,
    pub window_loss_sum: f64,
    pub window_steps: usize,
    pub best: Option<Best>,
    pub evals_without_improvement: usize,
    pub stopped_early: bool,
}

/// What a finished (or interrupted) run reports.
pub struct TrainOutcome {
    pub rows: Vec<EpochRow>,
    /// The trained model as it is in memory (identical to what was saved).
    pub model: LoadedModel,
    pub encoder: TextEncoder,
    pub output_dir: PathBuf,
    pub total_steps: usize,
    pub steps_done: usize,
    pub wall_seconds: f64,
    /// The best evaluation, and whether the saved model is that epoch's.
    pub best: Option<Best>,
    pub loaded_best: bool,
    pub stopped_early: bool,
    /// Set when the run was interrupted: the checkpoint to resume from.
    pub interrupted_at: Option<PathBuf>,
}

/// Which checkpoint to continue from.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest complete checkpoint in the output directory.
    Latest,
    Dir(PathBuf),
}

/// How a run is steered from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    pub resume: Option<Resume>,
    /// Behave as if interrupted right after this global step (for tests).
    pub stop_after_step: Option<usize>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running training loop to checkpoint and stop after the current step (SIGINT/SIGTERM).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for already (a second interrupt aborts).
pub fn stop_already_requested() -> bool {
    stop_requested()
}

fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The seed table: `Training Loss | Epoch | Step | Validation Loss | Accuracy | F1`.
pub fn format_table(rows: &[EpochRow]) -> String {
    let mut s = String::from("| Training Loss | Epoch | Step | Validation Loss | Accuracy | F1     |\n");
    s.push_str("|:-------------:|:-----:|:----:|:---------------:|:--------:|:------:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {:<13.4} | {:<5.1} | {:<4} | {:<15.4} | {:<8.4} | {:<6.4} |\n",
            r.training_loss, r.epoch, r.step, r.validation_loss, r.accuracy, r.f1
        ));
    }
    s
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!("{what} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Steps per epoch (the last partial batch counts, as Trainer's DataLoader keeps it).
fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch)
}

/// Transformers' `LengthGroupedSampler` on an already shuffled order: mega-batches of
/// `min(n / (4 * batch), 50)` batches, each sorted by decreasing length, with the longest
/// example moved to the very front (so that running out of memory happens at once).
pub fn group_by_length(order: Vec<usize>, lengths: &[usize], batch: usize) -> Vec<usize> {
    let mult = (order.len() / (batch * 4)).clamp(1, 50);
    let mega = mult * batch;
    let mut megabatches: Vec<Vec<usize>> = order
        .chunks(mega)
        .map(|c| {
            let mut m = c.to_vec();
            // Stable, like Python's sorted(): equal lengths keep the shuffled order.
            m.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
            m
        })
        .collect();
    let max_idx = megabatches
        .iter()
        .enumerate()
        .fold((0, 0), |best, (i, m)| if lengths[m[0]] > best.1 { (i, lengths[m[0]]) } else { best })
        .0;
    if max_idx != 0 {
        let (first, rest) = megabatches.split_at_mut(max_idx);
        std::mem::swap(&mut first[0][0], &mut rest[0][0]);
    }
    megabatches.into_iter().flatten().collect()
}

/// `n / (k * count_c)` per class (0 for a class without rows).
fn balanced_weights(gold: &[usize], k: usize) -> Vec<f32> {
    let mut counts = vec![0usize; k];
    for &g in gold {
        counts[g] += 1;
    }
    counts.iter().map(|&c| if c == 0 { 0.0 } else { gold.len() as f32 / (k as f32 * c as f32) }).collect()
}

/// Fine-tunes `cfg.model` on the data of `spec` and writes the model to `cfg.output_dir`.
pub fn train(cfg: &TrainConfig, spec: &DataSpec, device: &Device) -> Result<TrainOutcome> {
    train_with(cfg, spec, device, &RunControl::default())
}

/// [`train`], resumable and interruptible.
pub fn train_with(cfg: &TrainConfig, spec: &DataSpec, device: &Device, control: &RunControl) -> Result<TrainOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let resume_dir =
        match &control.resume {
            None => {
                check_output_dir(&cfg.output_dir, cfg.overwrite_output_dir)?;
                None
            }
            Some(Resume::Dir(d)) => Some(d.clone()),
            Some(Resume::Latest) => Some(latest_checkpoint(&cfg.output_dir)?.ok_or_else(|| {
                anyhow::anyhow!("--resume: {} holds no complete checkpoint", cfg.output_dir.display())
            })?),
        };

    let mut dataset = data::load(spec)?;
    if let (Some(n), Some(train)) = (cfg.train_limit, dataset.split_mut("train")) {
        train.truncate(n);
    }
    if let Some(n) = cfg.eval_limit {
        for s in ["validation", "test"] {
            if let Some(split) = dataset.split_mut(s) {
                split.truncate(n);
            }
        }
    }
    let Some(train_split) = dataset.split("train") else {
        bail!("{}: no training split (name a file train.* or pass --train FILE)", dataset.name)
    };
    let Some(valid_split) = dataset.split("validation") else {
        bail!("{}: no validation split (name a file validation.* or pass --validation FILE)", dataset.name)
    };
    for s in [train_split, valid_split] {
        if s.is_empty() {
            bail!("the {} split is empty", s.name);
        }
    }

    let files = ModelFiles::resolve(&cfg.model)?;
    let mut config = ModelConfig::load(&files.config)?;
    let checkpoint_labels = config.raw.get("id2label").map(|_| config.labels.clone());
    let reinit_head = checkpoint_labels.as_ref().is_some_and(|l| *l != dataset.labels);
    if reinit_head && resume_dir.is_none() {
        log::warn!(
            "{}: its labels ({}) differ from the dataset's ({}); the classification head starts afresh",
            cfg.model,
            checkpoint_labels.unwrap_or_default().join(", "),
            dataset.labels.join(", ")
        );
    }
    config.set_labels(dataset.labels.clone());
    let encoder = text_encoder(&files, &config, cfg.max_length)?;
    let model = if reinit_head {
        crate::model::load_classifier_fresh_head(config, &files.weights, cfg.seed, device)?
    } else {
        load_classifier(config, &files.weights, cfg.seed, device)?
    };

    let train_texts: Vec<&str> = train_split.examples.iter().map(|e| e.text.as_str()).collect();
    let valid_texts: Vec<&str> = valid_split.examples.iter().map(|e| e.text.as_str()).collect();
    let train_rows = encoder.tokenize(&train_texts)?;
    let valid_rows = encoder.tokenize(&valid_texts)?;
    let cut = train_rows.iter().chain(&valid_rows).filter(|r| r.truncated).count();
    if cut > 0 {
        log::warn!("{cut} text(s) were longer than {} tokens and were truncated", encoder.max_length());
    }
    let train_gold: Vec<usize> = train_split.examples.iter().map(|e| e.label).collect();
    let valid_gold: Vec<usize> = valid_split.examples.iter().map(|e| e.label).collect();
    let class_weights = match cfg.class_weights {
        ClassWeights::None => None,
        ClassWeights::Balanced => {
            let w = balanced_weights(&train_gold, dataset.labels.len());
            log::info!("class weights: {w:?}");
            Some(Tensor::from_vec(w, dataset.labels.len(), device)?)
        }
    };

    let per_epoch = steps_per_epoch(train_rows.len(), cfg.train_batch_size);
    let total_steps = cfg.max_steps.unwrap_or(per_epoch * cfg.num_train_epochs);
    let epochs = total_steps.div_ceil(per_epoch);
    let warmup =
        if cfg.warmup_steps > 0 { cfg.warmup_steps } else { (cfg.warmup_ratio * total_steps as f64).ceil() as usize };
    let schedule = LinearSchedule { peak_lr: cfg.learning_rate, warmup_steps: warmup, total_steps };
    let mut opt = AdamW::new(
        model.params.iter(),
        AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        },
    );

    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    remove_stale_temporaries(&cfg.output_dir);
    let mut state = match &resume_dir {
        Some(dir) => {
            let state = load_checkpoint(dir, cfg, &model, &mut opt)?;
            if state.total_steps != total_steps {
                bail!("{}: the checkpoint plans {} steps, this run {total_steps}", dir.display(), state.total_steps);
            }
            eprintln!("resuming from {} at step {}/{total_steps}", dir.display(), state.global_step);
            state
        }
        None => TrainerState {
            global_step: 0,
            total_steps,
            epoch: 0,
            batches_done: 0,
            epoch_loss_sum: 0.0,
            shuffle_rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            dropout_rng: ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(1)),
            rows: Vec::new(),
            log_history: Vec::new(),
            window_loss_sum: 0.0,
            window_steps: 0,
            best: None,
            evals_without_improvement: 0,
            stopped_early: false,
        },
    };
    log::info!(
        "training {} ({} parameters) on {} examples, validating on {}: {epochs} epoch(s), {total_steps} steps, batch {}",
        cfg.model,
        model.params.numel(),
        train_rows.len(),
        valid_rows.len(),
        cfg.train_batch_size
    );

    let dropout = Dropout::from_state(state.dropout_rng.clone());
    let mut shuffle_rng = state.shuffle_rng.clone();
    let metrics_path = cfg.output_dir.join("metrics.jsonl");
    let mut interrupted_at = None;
    while state.epoch < epochs && !state.stopped_early {
        let epoch = state.epoch;
        let mut order: Vec<usize> = (0..train_rows.len()).collect();
        order.shuffle(&mut shuffle_rng);
        if cfg.group_by_length {
            let lengths: Vec<usize> = train_rows.iter().map(|r| r.ids.len()).collect();
            order = group_by_length(order, &lengths, cfg.train_batch_size);
        }
        let steps_this_epoch = per_epoch.min(total_steps - epoch * per_epoch);
        let pb = progress_bar(steps_this_epoch as u64, &format!("epoch {}/{epochs}", epoch + 1));
        pb.set_position(state.batches_done as u64);
        let epoch_start = Instant::now();
        let first = state.batches_done;
        while state.batches_done < steps_this_epoch {
            let b = state.batches_done;
            let idx = &order[b * cfg.train_batch_size..((b + 1) * cfg.train_batch_size).min(order.len())];
            let rows_b: Vec<&Tokenized> = idx.iter().map(|&i| &train_rows[i]).collect();
            let batch = encoder.batch(&rows_b, device)?;
            let labels: Vec<u32> = idx.iter().map(|&i| train_gold[i] as u32).collect();
            let labels = Tensor::from_vec(labels, idx.len(), device)?;
            let logits = model.model.forward(&batch, &dropout)?;
            let loss = cross_entropy(&logits, &labels, class_weights.as_ref())?;
            let loss_v: f32 = loss.to_scalar()?;
            if !loss_v.is_finite() {
                bail!("the training loss became {loss_v} at step {}; lower the learning rate", state.global_step + 1);
            }
            let grads = crate::model::backward(&loss)?;
            let lr = schedule.lr(state.global_step);
            let grad_norm = opt.step_with_clipping(&grads, lr, cfg.max_grad_norm)?;
            drop(grads);
            if !grad_norm.is_finite() {
                bail!("the gradient norm became {grad_norm} at step {}; lower the learning rate", state.global_step);
            }
            state.global_step += 1;
            state.batches_done += 1;
            state.epoch_loss_sum += loss_v as f64;
            state.window_loss_sum += loss_v as f64;
            state.window_steps += 1;
            if state.window_steps == cfg.logging_steps {
                state.log_history.push(LogPoint {
                    step: state.global_step,
                    loss: state.window_loss_sum / state.window_steps as f64,
                    learning_rate: lr,
                });
                state.window_loss_sum = 0.0;
                state.window_steps = 0;
            }
            pb.set_message(format!("loss {loss_v:.4}"));
            pb.inc(1);
            if pb.is_hidden() {
                report_plain_progress(
                    state.batches_done - first,
                    steps_this_epoch - first,
                    state.batches_done,
                    steps_this_epoch,
                    epoch_start,
                    loss_v,
                );
            }
            let epoch_end = state.batches_done == steps_this_epoch;
            let stop = stop_requested() || control.stop_after_step == Some(state.global_step);
            let periodic = cfg.save_steps.is_some_and(|n| state.global_step % n == 0);
            if !epoch_end && (stop || periodic) {
                state.dropout_rng = dropout.state().expect("training dropout");
                let dir = save_checkpoint(&cfg.output_dir, cfg, &model, &opt, &state)?;
                prune_checkpoints(&cfg.output_dir, cfg.save_total_limit, state.best.as_ref())?;
                if stop {
                    pb.finish_and_clear();
                    interrupted_at = Some(dir);
                    break;
                }
            }
        }
        if interrupted_at.is_some() {
            break;
        }
        pb.finish_and_clear();
        let epoch_seconds = epoch_start.elapsed().as_secs_f64();

        let epb = progress_bar(valid_rows.len() as u64, "evaluating");
        let out =
            evaluate(&model, &encoder, &valid_rows, &valid_gold, cfg.eval_batch_size, device, |n| epb.inc(n as u64))?;
        epb.finish_and_clear();
        let rep = metrics::report(&valid_gold, &out.preds, &dataset.labels);
        let epoch_value = epoch as f64 + steps_this_epoch as f64 / per_epoch as f64;
        let row = EpochRow {
            training_loss: state.epoch_loss_sum / steps_this_epoch.max(1) as f64,
            epoch: (epoch_value * 100.0).round() / 100.0,
            step: state.global_step,
            validation_loss: out.loss,
            accuracy: rep.accuracy,
            f1: rep.f1_weighted,
            f1_macro: rep.f1_macro,
        };
        eprintln!(
            "epoch {:.2}: step {}, training loss {:.4}, validation loss {:.4}, accuracy {:.4}, F1 {:.4} ({epoch_seconds:.0} s)",
            row.epoch, row.step, row.training_loss, row.validation_loss, row.accuracy, row.f1
        );
        watch_overfitting(&state.rows, &row);
        let value = cfg.metric_for_best.value(&row);
        state.rows.push(row);
        let improved = state.best.as_ref().is_none_or(|b| cfg.metric_for_best.better(value, b.value));
        if improved {
            state.best = Some(Best {
                row: state.rows.len() - 1,
                value,
                checkpoint: format!("checkpoint-{}", state.global_step),
            });
            state.evals_without_improvement = 0;
        } else {
            state.evals_without_improvement += 1;
        }
        if let Some(p) = cfg.early_stopping_patience {
            if state.evals_without_improvement >= p && state.epoch + 1 < epochs {
                let best = state.best.as_ref().expect("set at the first evaluation");
                eprintln!(
                    "early stopping: {} has not improved for {p} evaluation(s) (best {:.4} at epoch {:.1})",
                    cfg.metric_for_best.name(),
                    best.value,
                    state.rows[best.row].epoch
                );
                state.stopped_early = true;
            }
        }
        write_metrics(&metrics_path, &state.rows)?;
        state.epoch += 1;
        state.batches_done = 0;
        state.epoch_loss_sum = 0.0;
        state.shuffle_rng = shuffle_rng.clone();
        state.dropout_rng = dropout.state().expect("training dropout");
        save_checkpoint(&cfg.output_dir, cfg, &model, &opt, &state)?;
        prune_checkpoints(&cfg.output_dir, cfg.save_total_limit, state.best.as_ref())?;
        if stop_requested() && state.epoch < epochs && !state.stopped_early {
            interrupted_at = Some(cfg.output_dir.join(format!("checkpoint-{}", state.global_step)));
            break;
        }
    }

    let mut loaded_best = false;
    if interrupted_at.is_none() {
        if cfg.load_best_at_end {
            if let Some(best) = &state.best {
                let dir = cfg.output_dir.join(&best.checkpoint);
                model.params.load_values(&dir.join("model.safetensors"))?;
                loaded_best = true;
                eprintln!(
                    "loaded the best model: epoch {:.1} (step {}), {} {:.4}",
                    state.rows[best.row].epoch,
                    state.rows[best.row].step,
                    cfg.metric_for_best.name(),
                    best.value
                );
            }
        }
        let best_row = if loaded_best { state.best.as_ref().map(|b| b.row) } else { None };
        save_model(&model, &files, &dataset, cfg, &state, best_row, &cfg.output_dir)?;
        crate::plot::learning_curves_png(&cfg.output_dir.join("learning_curves.png"), &state.log_history, &state.rows)?;
    }
    Ok(TrainOutcome {
        rows: state.rows.clone(),
        model,
        encoder,
        output_dir: cfg.output_dir.clone(),
        total_steps,
        steps_done: state.global_step,
        wall_seconds: started.elapsed().as_secs_f64(),
        best: state.best.clone(),
        loaded_best,
        stopped_early: state.stopped_early,
        interrupted_at,
    })
}

/// Warns when validation loss rose while training loss fell since the previous evaluation.
fn watch_overfitting(previous: &[EpochRow], row: &EpochRow) {
    let Some(prev) = previous.last() else { return };
    if row.validation_loss > prev.validation_loss && row.training_loss < prev.training_loss {
        let streak = previous
            .windows(2)
            .rev()
            .take_while(|w| w[1].validation_loss > w[0].validation_loss && w[1].training_loss < w[0].training_loss)
            .count();
        let first = &previous[previous.len() - 1 - streak];
        eprintln!(
            "warning: overfitting: from epoch {:.1} to {:.1} validation loss rose {:.4} -> {:.4} while training loss fell {:.4} -> {:.4}{}",
            first.epoch,
            row.epoch,
            first.validation_loss,
            row.validation_loss,
            first.training_loss,
            row.training_loss,
            if streak > 0 { " (over consecutive evaluations); consider fewer epochs, a lower learning rate or --load-best-at-end" } else { "" }
        );
    }
}

fn checkpoint_step(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-").and_then(|s| s.parse().ok())
}

/// Complete checkpoints (`checkpoint-N` with all their files) in `dir`, oldest first.
fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(step) = path.file_name().and_then(|n| n.to_str()).and_then(checkpoint_step) else { continue };
        let complete = ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json"]
            .iter()
            .all(|f| path.join(f).is_file());
        if complete {
            out.push((step, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint in `dir`.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoints(dir)?.pop().map(|(_, p)| p))
}

/// Removes half-written checkpoints that a killed run left behind.
fn remove_stale_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".checkpoint-") && name.contains(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Writes `checkpoint-<step>`: weights, config, optimiser moments, trainer state and
/// arguments. It is assembled in a temporary directory and renamed into place, so a
/// checkpoint directory is always complete; the previous ones stay untouched.
fn save_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    model: &LoadedModel,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.global_step);
    let final_dir = out.join(&name);
    let tmp = out.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    model.params.save(&tmp.join("model.safetensors"))?;
    crate::fsx::write_json_atomic(&tmp.join("config.json"), &model.config.to_classifier_json())?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    crate::fsx::write_json_atomic(&tmp.join("training_args.json"), &serde_json::to_value(cfg)?)?;
    crate::fsx::write_json_atomic(&tmp.join("trainer_state.json"), &serde_json::to_value(state)?)?;
    if final_dir.exists() {
        // The same step saved again (a resumed run): swap the new one in.
        let old = out.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old)?;
        std::fs::rename(&tmp, &final_dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(&tmp, &final_dir)
            .with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    }
    if let Ok(d) = std::fs::File::open(out) {
        let _ = d.sync_all();
    }
    Ok(final_dir)
}

/// Keeps the newest `limit` checkpoints and the best one.
fn prune_checkpoints(out: &Path, limit: Option<usize>, best: Option<&Best>) -> Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let all = checkpoints(out)?;
    let keep_from = all.len().saturating_sub(limit);
    for (_, path) in &all[..keep_from] {
        let is_best = best.is_some_and(|b| path.file_name().and_then(|n| n.to_str()) == Some(b.checkpoint.as_str()));
        if !is_best {
            std::fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Restores weights, optimiser and trainer state from a checkpoint made with the same arguments.
fn load_checkpoint(dir: &Path, cfg: &TrainConfig, model: &LoadedModel, opt: &mut AdamW) -> Result<TrainerState> {
    let args_path = dir.join("training_args.json");
    let text = std::fs::read_to_string(&args_path).with_context(|| format!("reading {}", args_path.display()))?;
    let saved: TrainConfig =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid training arguments", args_path.display()))?;
    let (a, b) = (saved.resume_key(), cfg.resume_key());
    if a != b {
        let diff: Vec<String> = a
            .as_object()
            .expect("object")
            .iter()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k} = {v} (now {})", b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)))
            .collect();
        bail!("{} was made with other arguments: {}; resume with the same ones", dir.display(), diff.join(", "));
    }
    model.params.load_values(&dir.join("model.safetensors"))?;
    opt.load(&dir.join("optimizer.safetensors"))?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid trainer state", state_path.display()))
}

/// Progress for logs (stderr not a terminal): about every tenth of an epoch.
fn report_plain_progress(done_now: usize, todo_now: usize, pos: usize, total: usize, since: Instant, loss: f32) {
    let every = (total / 10).max(1);
    if pos % every != 0 && pos != total {
        return;
    }
    let per_step = since.elapsed().as_secs_f64() / done_now.max(1) as f64;
    let eta = per_step * todo_now.saturating_sub(done_now) as f64;
    eprintln!("  step {pos}/{total}: loss {loss:.4}, {per_step:.2} s/step, ETA {eta:.0} s");
}

fn check_output_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    let has_checkpoints = !checkpoints(dir)?.is_empty();
    if !overwrite {
        if dir.join("model.safetensors").exists() {
            bail!(
                "{} already holds a model; choose another --output-dir or pass --overwrite-output-dir",
                dir.display()
            );
        }
        if has_checkpoints {
            bail!(
                "{} holds checkpoints of an earlier run; pass --resume to continue it or --overwrite-output-dir to start over",
                dir.display()
            );
        }
    } else {
        for (_, path) in checkpoints(dir)? {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn write_metrics(path: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::fsx::write_atomic(path, text.as_bytes())
}

/// Writes the model directory. Each file is written atomically, and `model.safetensors` last
/// (after removing any previous one): a directory holding `model.safetensors` is complete.
pub fn save_model(
    model: &LoadedModel,
    files: &ModelFiles,
    dataset: &Dataset,
    cfg: &TrainConfig,
    state: &TrainerState,
    best_row: Option<usize>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join("model.safetensors");
    if weights.exists() {
        std::fs::remove_file(&weights).with_context(|| format!("removing the old {}", weights.display()))?;
    }
    crate::fsx::write_json_atomic(&dir.join("config.json"), &model.config.to_classifier_json())?;
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"] {
        if let Some(src) = files.source.get_optional(name)? {
            let bytes = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::fsx::write_atomic(&dir.join(name), &bytes)?;
        }
    }
    crate::fsx::write_json_atomic(&dir.join("training_args.json"), &serde_json::to_value(cfg)?)?;
    crate::fsx::write_json_atomic(&dir.join("trainer_state.json"), &serde_json::to_value(state)?)?;
    let card = crate::card::model_card(cfg, dataset, &model.config, model.params.numel(), &state.rows, best_row);
    crate::fsx::write_atomic(&dir.join("README.md"), card.as_bytes())?;
    model.params.save(&weights)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_length_is_a_permutation_sorted_within_megabatches() {
        let n = 1000;
        let lengths: Vec<usize> = (0..n).map(|i| (i * 7919) % 97 + 3).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(3));
        let grouped = group_by_length(order.clone(), &lengths, 8);
        let mut sorted = grouped.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        // mult = min(1000 / 32, 50) = 31 → mega-batches of 248; each non-increasing except the
        // swapped first element.
        assert_eq!(lengths[grouped[0]], *lengths.iter().max().unwrap());
        for m in grouped.chunks(248) {
            assert!(m[1..].windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]));
        }
        // Batches of similar lengths pad far less than random ones.
        let pad = |o: &[usize]| -> usize {
            o.chunks(8).map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * b.len()).sum()
        };
        assert!(pad(&grouped) * 10 < pad(&order) * 7, "{} vs {}", pad(&grouped), pad(&order));
    }
}
