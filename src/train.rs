//! `emotune train`: fine-tuning with the Trainer's recipe (AdamW, linear schedule, dropout on,
//! evaluation after every epoch) and a Hugging Face–layout output directory.

use crate::config::ModelConfig;
use crate::data::{self, DataSpec, Dataset};
use crate::hub::ModelFiles;
use crate::infer::{evaluate, text_encoder};
use crate::metrics;
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
use std::time::Instant;

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
        if self.max_steps == Some(0) {
            bail!("--max-steps must be at least 1");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            bail!("--warmup-ratio must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            bail!("Adam betas must be in [0, 1)");
        }
        Ok(())
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

/// What a finished run reports.
pub struct TrainOutcome {
    pub rows: Vec<EpochRow>,
    /// The trained model as it is in memory (identical to what was saved).
    pub model: LoadedModel,
    pub encoder: TextEncoder,
    pub output_dir: PathBuf,
    pub total_steps: usize,
    pub wall_seconds: f64,
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
        ProgressStyle::with_template(&format!(
            "{what} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Steps per epoch (the last partial batch counts, as Trainer's DataLoader keeps it).
fn steps_per_epoch(n: usize, batch: usize) -> usize {
    n.div_ceil(batch)
}

/// Fine-tunes `cfg.model` on the data of `spec` and writes the model to `cfg.output_dir`.
pub fn train(cfg: &TrainConfig, spec: &DataSpec, device: &Device) -> Result<TrainOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    check_output_dir(&cfg.output_dir, cfg.overwrite_output_dir)?;

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
    if reinit_head {
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

    let per_epoch = steps_per_epoch(train_rows.len(), cfg.train_batch_size);
    let total_steps = cfg.max_steps.unwrap_or(per_epoch * cfg.num_train_epochs);
    let epochs = total_steps.div_ceil(per_epoch);
    let warmup = if cfg.warmup_steps > 0 {
        cfg.warmup_steps
    } else {
        (cfg.warmup_ratio * total_steps as f64).ceil() as usize
    };
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
    log::info!(
        "training {} ({} parameters) on {} examples, validating on {}: {epochs} epoch(s), {total_steps} steps, batch {}",
        cfg.model,
        model.params.numel(),
        train_rows.len(),
        valid_rows.len(),
        cfg.train_batch_size
    );

    let mut shuffle_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let dropout = Dropout::train(cfg.seed.wrapping_add(1));
    let mut rows: Vec<EpochRow> = Vec::new();
    let mut step = 0usize;
    let metrics_path = cfg.output_dir.join("metrics.jsonl");
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..train_rows.len()).collect();
        order.shuffle(&mut shuffle_rng);
        let steps_this_epoch = per_epoch.min(total_steps - step);
        let pb = progress_bar(steps_this_epoch as u64, &format!("epoch {}/{epochs}", epoch + 1));
        let mut loss_sum = 0.0f64;
        let epoch_start = Instant::now();
        for batch_idx in order.chunks(cfg.train_batch_size).take(steps_this_epoch) {
            let rows_b: Vec<&Tokenized> = batch_idx.iter().map(|&i| &train_rows[i]).collect();
            let batch = encoder.batch(&rows_b, device)?;
            let labels: Vec<u32> = batch_idx.iter().map(|&i| train_gold[i] as u32).collect();
            let labels = Tensor::from_vec(labels, batch_idx.len(), device)?;
            let logits = model.model.forward(&batch, &dropout)?;
            let loss = cross_entropy(&logits, &labels, None)?;
            let loss_v: f32 = loss.to_scalar()?;
            if !loss_v.is_finite() {
                bail!("the training loss became {loss_v} at step {}; lower the learning rate", step + 1);
            }
            let grads = loss.backward()?;
            opt.step(&grads, schedule.lr(step))?;
            step += 1;
            loss_sum += loss_v as f64;
            pb.set_message(format!("loss {loss_v:.4}"));
            pb.inc(1);
            if pb.is_hidden() {
                report_plain_progress(pb.position() as usize, steps_this_epoch, epoch_start, loss_v);
            }
        }
        pb.finish_and_clear();
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let done_in_epoch = steps_this_epoch;
        let epoch_value = epoch as f64 + done_in_epoch as f64 / per_epoch as f64;

        let epb = progress_bar(valid_rows.len() as u64, "evaluating");
        let out = evaluate(&model, &encoder, &valid_rows, &valid_gold, cfg.eval_batch_size, device, |n| {
            epb.inc(n as u64)
        })?;
        epb.finish_and_clear();
        let rep = metrics::report(&valid_gold, &out.preds, &dataset.labels);
        let row = EpochRow {
            training_loss: loss_sum / done_in_epoch.max(1) as f64,
            epoch: (epoch_value * 100.0).round() / 100.0,
            step,
            validation_loss: out.loss,
            accuracy: rep.accuracy,
            f1: rep.f1_weighted,
            f1_macro: rep.f1_macro,
        };
        eprintln!(
            "epoch {:.2}: step {step}, training loss {:.4}, validation loss {:.4}, accuracy {:.4}, F1 {:.4} ({train_seconds:.0} s)",
            row.epoch, row.training_loss, row.validation_loss, row.accuracy, row.f1
        );
        rows.push(row);
        write_metrics(&metrics_path, &rows)?;
    }

    save_model(&model, &files, &encoder, &dataset, cfg, &rows, &cfg.output_dir)?;
    Ok(TrainOutcome {
        rows,
        model,
        encoder,
        output_dir: cfg.output_dir.clone(),
        total_steps,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Progress for logs (stderr not a terminal): about every tenth of an epoch.
fn report_plain_progress(done: usize, total: usize, since: Instant, loss: f32) {
    let every = (total / 10).max(1);
    if done % every != 0 && done != total {
        return;
    }
    let per_step = since.elapsed().as_secs_f64() / done as f64;
    let eta = per_step * (total - done) as f64;
    eprintln!("  step {done}/{total}: loss {loss:.4}, {per_step:.2} s/step, ETA {eta:.0} s");
}

fn check_output_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.join("model.safetensors").exists() && !overwrite {
        bail!(
            "{} already holds a model; choose another --output-dir or pass --overwrite-output-dir",
            dir.display()
        );
    }
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
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
    _encoder: &TextEncoder,
    dataset: &Dataset,
    cfg: &TrainConfig,
    rows: &[EpochRow],
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
    let card = crate::card::model_card(cfg, dataset, &model.config, model.params.numel(), rows);
    crate::fsx::write_atomic(&dir.join("README.md"), card.as_bytes())?;
    model.params.save(&weights)?;
    Ok(())
}
