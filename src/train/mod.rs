//! `emotune train`: fine-tuning with the Trainer's recipe (AdamW, linear schedule, dropout on,
//! evaluation after every epoch) into a Hugging Face–layout output directory.
//!
//! [`config`] holds the hyperparameters and their defaults, [`history`] what a run records,
//! [`sampler`] the order of the rows, [`trainer`] the loop, [`checkpoint`] and [`output`] what
//! is written; [`train_with`] puts them together.

pub mod checkpoint;
pub mod config;
pub mod dynamics;
pub mod history;
pub mod lr_find;
pub mod output;
pub mod sampler;
pub mod trainer;

pub use checkpoint::{latest_checkpoint, settings_from_checkpoint};
pub use config::{BestMetric, ClassWeights, TrainConfig, DEFAULT_MODEL};
pub use history::{format_table, Best, EpochRow, LogPoint};

use crate::data::{self, DataSpec, Dataset};
use crate::hub::ModelFiles;
use crate::infer::text_encoder;
use crate::model::{load_classifier, load_classifier_fresh_head, LoadedModel, ModelConfig, Task};
use crate::tokenize::TextEncoder;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use trainer::{Stop, TrainData, Trainer};

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
    /// Stop as if interrupted right after this global step (`train --stop-after-step`).
    pub stop_after_step: Option<usize>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running training loop to checkpoint and stop after the current step (SIGINT/SIGTERM).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for already (a second interrupt aborts).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fine-tunes `cfg.model` on the data of `spec` and writes the model to `cfg.output_dir`.
pub fn train(cfg: &TrainConfig, spec: &DataSpec, device: &Device) -> Result<TrainOutcome> {
    train_with(cfg, spec, device, &RunControl::default())
}

/// [`train`], resumable and interruptible. A run that fails leaves no output directory behind
/// when it created it and wrote no checkpoint there; when that cannot be told, or removing it
/// fails, the error says so and the directory stays.
pub fn train_with(cfg: &TrainConfig, spec: &DataSpec, device: &Device, control: &RunControl) -> Result<TrainOutcome> {
    let created_dir = !cfg.output_dir.exists();
    let result = run(cfg, spec, device, control);
    match result {
        Err(e) if created_dir && cfg.output_dir.exists() => Err(remove_created_dir(&cfg.output_dir, e)),
        other => other,
    }
}

/// Removes the output directory a failed run created, unless it holds a checkpoint (or it
/// cannot be told whether it does); says in `err` what was left and why.
fn remove_created_dir(dir: &std::path::Path, err: anyhow::Error) -> anyhow::Error {
    match latest_checkpoint(dir) {
        Ok(Some(_)) => err,
        Ok(None) => match std::fs::remove_dir_all(dir) {
            Ok(()) => err,
            Err(e) => err.context(format!("{} (created by this run) could not be removed: {e}", dir.display())),
        },
        Err(e) => err.context(format!(
            "{} (created by this run) was kept: listing its checkpoints failed: {e:#}",
            dir.display()
        )),
    }
}

fn run(cfg: &TrainConfig, spec: &DataSpec, device: &Device, control: &RunControl) -> Result<TrainOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let resume_dir = resume_dir(cfg, control)?;
    let dataset = load_dataset(cfg, spec)?;
    let files = ModelFiles::resolve(&crate::hub::with_revision(&cfg.model, cfg.revision.as_deref())?)?;
    let (model, encoder) = load_model(cfg, &files, &dataset, resume_dir.is_none(), device)?;
    let data = tokenize(&dataset, encoder)?;
    std::fs::create_dir_all(&cfg.output_dir).with_context(|| format!("creating {}", cfg.output_dir.display()))?;
    checkpoint::remove_stale_temporaries(&cfg.output_dir);
    let mut trainer = Trainer::new(cfg, model, &data, device, resume_dir.as_deref())?;
    trainer.carried = checkpoint::Carried {
        tokenizer: crate::hub::read_tokenizer_files(&files.source)?,
        data_args: serde_json::to_value(spec)?,
    };
    log::info!(
        "training {} ({} parameters) on {} examples, validating on {}: {} epoch(s), {} steps, batch {}",
        cfg.model,
        trainer.model.params.numel(),
        data.train_rows.len(),
        data.valid_rows.len(),
        trainer.epochs,
        trainer.total_steps(),
        cfg.train_batch_size
    );
    let stop = Stop { requested: &stop_requested, after_step: control.stop_after_step };
    let interrupted_at = trainer.run(&data, &stop)?;
    let loaded_best = match interrupted_at {
        Some(_) => false,
        None => finish(cfg, &mut trainer, &files, &dataset, &data, started)?,
    };
    let state = trainer.state;
    Ok(TrainOutcome {
        rows: state.rows.clone(),
        model: trainer.model,
        encoder: data.encoder,
        output_dir: cfg.output_dir.clone(),
        total_steps: state.total_steps,
        steps_done: state.global_step,
        wall_seconds: started.elapsed().as_secs_f64(),
        best: state.best.clone(),
        loaded_best,
        stopped_early: state.stopped_early,
        interrupted_at,
    })
}

/// Fine-tunes `cfg.model` on `dataset`'s train split in memory, evaluating on its validation
/// split after every epoch, and writes nothing (cross-fitting's folds). Returns the validation
/// split's probabilities after the last epoch.
pub fn fit(cfg: &TrainConfig, dataset: &Dataset, device: &Device) -> Result<Vec<Vec<f32>>> {
    cfg.validate()?;
    let (mut trainer, data) = in_memory(cfg, dataset, device)?;
    let stop = Stop { requested: &|| false, after_step: None };
    trainer.run(&data, &stop)?;
    Ok(trainer.validation_probs)
}

/// A fresh trainer for `dataset` that writes no checkpoint, and the tokenised splits (the
/// in-memory runs: cross-fitting's folds, the range test).
fn in_memory<'a>(cfg: &'a TrainConfig, dataset: &Dataset, device: &Device) -> Result<(Trainer<'a>, TrainData)> {
    let files = ModelFiles::resolve(&crate::hub::with_revision(&cfg.model, cfg.revision.as_deref())?)?;
    let (model, encoder) = load_model(cfg, &files, dataset, true, device)?;
    let data = tokenize(dataset, encoder)?;
    let mut trainer = Trainer::new(cfg, model, &data, device, None)?;
    trainer.checkpoints = false;
    Ok((trainer, data))
}

/// The checkpoint to resume from, if any; a fresh run checks the output directory first.
fn resume_dir(cfg: &TrainConfig, control: &RunControl) -> Result<Option<PathBuf>> {
    match &control.resume {
        None => {
            checkpoint::check_output_dir(&cfg.output_dir, cfg.overwrite_output_dir)?;
            Ok(None)
        }
        Some(Resume::Dir(d)) => Ok(Some(d.clone())),
        Some(Resume::Latest) => {
            let latest = latest_checkpoint(&cfg.output_dir)?;
            let dir = cfg.output_dir.display();
            latest.map(Some).ok_or_else(|| anyhow!("--resume: {dir} holds no complete checkpoint"))
        }
    }
}

/// The dataset with the `--train-limit`/`--eval-limit` slices applied; train and validation
/// splits must be there and hold rows.
fn load_dataset(cfg: &TrainConfig, spec: &DataSpec) -> Result<Dataset> {
    let mut dataset = data::load(spec)?;
    if let (Some(list), Some(train)) = (&cfg.exclude_rows, dataset.split_mut("train")) {
        let locations = data::exclude::read_locations(list)?;
        let dropped = data::exclude::exclude(train, &locations, list)?;
        crate::status!(
            "--exclude-rows: left out {dropped} training row(s) that {} lists; {} remain",
            list.display(),
            train.len()
        );
    }
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
    for (split, hint) in
        [("train", "train.* or pass --train FILE"), ("validation", "validation.* or pass --validation FILE")]
    {
        match dataset.split(split) {
            None => bail!("{}: no {split} split (name a file {hint})", dataset.name),
            Some(s) if s.is_empty() => bail!("the {} split is empty", s.name),
            Some(_) => {}
        }
    }
    Ok(dataset)
}

/// The model to fine-tune with the dataset's labels, and its tokenizer. A checkpoint whose
/// labels differ from the dataset's gets a new classification head.
fn load_model(
    cfg: &TrainConfig,
    files: &ModelFiles,
    dataset: &Dataset,
    fresh_run: bool,
    device: &Device,
) -> Result<(LoadedModel, TextEncoder)> {
    let mut config = ModelConfig::load(&files.config)?;
    let checkpoint_labels = config.raw.get("id2label").map(|_| config.labels.clone());
    let reinit_head = checkpoint_labels.as_ref().is_some_and(|l| *l != dataset.labels);
    if reinit_head && fresh_run {
        log::warn!(
            "{}: its labels ({}) differ from the dataset's ({}); the classification head starts afresh",
            cfg.model,
            crate::display::labels(&checkpoint_labels.unwrap_or_default()),
            crate::display::labels(&dataset.labels)
        );
    }
    config.set_labels(dataset.labels.clone());
    // Lists of labels in the data, or a multi-label checkpoint: sigmoid outputs and BCE.
    if dataset.multi_label {
        config.task = Task::MultiLabel;
    }
    let encoder = text_encoder(files, &config, cfg.max_length)?;
    let mut model = if reinit_head {
        load_classifier_fresh_head(config, &files.weights, cfg.seed, device)?
    } else {
        load_classifier(config, &files.weights, cfg.seed, device)?
    };
    model.autocast = cfg.bf16.then_some(candle_core::DType::BF16);
    Ok((model, encoder))
}

/// The training and validation splits tokenised, with their gold labels.
fn tokenize(dataset: &Dataset, encoder: TextEncoder) -> Result<TrainData> {
    let split = |name| dataset.split(name).expect("checked when loading");
    let (train, valid) = (split("train"), split("validation"));
    let train_rows = encoder.tokenize(&train.texts())?;
    let valid_rows = encoder.tokenize(&valid.texts())?;
    let cut = train_rows.iter().chain(&valid_rows).filter(|r| r.truncated).count();
    if cut > 0 {
        log::warn!("{cut} text(s) were longer than {} tokens and were truncated", encoder.max_length());
    }
    Ok(TrainData {
        labels: dataset.labels.clone(),
        train_locations: (0..train.len()).map(|i| train.location(i)).collect(),
        train_gold: train.examples.iter().map(|e| e.labels.clone()).collect(),
        valid_gold: valid.examples.iter().map(|e| e.labels.clone()).collect(),
        train_rows,
        valid_rows,
        encoder,
    })
}

/// After the last epoch: the best epoch's weights when asked for, then the output directory.
/// Returns whether the saved model is the best epoch's.
fn finish(
    cfg: &TrainConfig,
    trainer: &mut Trainer,
    files: &ModelFiles,
    dataset: &Dataset,
    data: &TrainData,
    started: Instant,
) -> Result<bool> {
    let state = &trainer.state;
    let best = state.best.as_ref().filter(|_| cfg.load_best_at_end);
    if let Some(best) = best {
        let dir = cfg.output_dir.join(&best.checkpoint);
        trainer.model.params.load_values(&dir.join("model.safetensors"))?;
        let row = &state.rows[best.row];
        crate::status!(
            "loaded the best model: epoch {:.1} (step {}), {} {:.4}",
            row.epoch,
            row.step,
            cfg.metric_for_best.name(),
            best.value
        );
    }
    trainer.check_finite()?;
    let thresholds = trainer.thresholds(data)?;
    let train = dataset.split("train").expect("checked when loading");
    let seconds = dynamics::write(&cfg.output_dir, &trainer.dynamics, train, &dataset.labels)?;
    let cost = trainer.dynamics.seconds + seconds;
    crate::status!(
        "training dynamics of {} rows: {}, {} ({cost:.2} s to record and write, {:.2}% of the run so far)",
        train.len(),
        dynamics::FILE,
        dynamics::MAP,
        100.0 * cost / started.elapsed().as_secs_f64()
    );
    let state = &trainer.state;
    output::save_model(&trainer.model, files, dataset, cfg, state, best.map(|b| b.row), thresholds.as_deref())?;
    Ok(best.is_some())
}
