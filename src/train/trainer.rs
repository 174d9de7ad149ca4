//! The training loop: epochs of optimiser steps, an evaluation and a checkpoint after each
//! epoch, checkpoints every `--save-steps` and on interrupt. A step reads like the recipe:
//! batch → forward → loss → backward → clip → update.

use super::checkpoint::{self, TrainerState};
use super::config::{BestMetric, ClassWeights, TrainConfig};
use super::dynamics::Dynamics;
use super::history::{overfitting_warning, Best, EpochRow, LogPoint};
use super::sampler;
use crate::infer::evaluate;
use crate::metrics;
use crate::model::task::loss;
use crate::model::{backward, Dropout, LoadedModel, Targets, Task};
use crate::optim::{AdamW, LinearSchedule};
use crate::tokenize::{TextEncoder, Tokenized};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A loss above this many times `ln(labels)` (the loss of a uniform guess) means the run has
/// diverged: a model that learns stays far below it.
const DIVERGED_LOSS_FACTOR: f64 = 100.0;

/// The tokenised training and validation rows with their gold label ids.
pub struct TrainData {
    pub encoder: TextEncoder,
    pub labels: Vec<String>,
    pub train_rows: Vec<Tokenized>,
    /// The label ids of each training row (one, or several for multi-label data).
    pub train_gold: Vec<Vec<usize>>,
    /// `file:line` of each training row, for messages.
    pub train_locations: Vec<String>,
    pub valid_rows: Vec<Tokenized>,
    pub valid_gold: Vec<Vec<usize>>,
}

/// What one update did.
pub(super) struct Update {
    pub loss: f32,
    pub grad_norm: f64,
    pub logits: Tensor,
}

/// How the loop is told to stop early from outside: the interrupt flag or a test hook.
pub struct Stop<'a> {
    pub requested: &'a dyn Fn() -> bool,
    /// Behave as if interrupted right after this global step.
    pub after_step: Option<usize>,
}

pub struct Trainer<'a> {
    cfg: &'a TrainConfig,
    pub model: LoadedModel,
    opt: AdamW,
    schedule: LinearSchedule,
    dropout: Dropout,
    class_weights: Option<Tensor>,
    device: Device,
    pub state: TrainerState,
    /// The shuffling stream; `state.shuffle_rng` holds it as it was before the current epoch.
    shuffle_rng: ChaCha8Rng,
    per_epoch: usize,
    pub epochs: usize,
    /// Checkpoints this run wrote after its last evaluation: if it diverges, they may hold the
    /// state on the way to the divergence, so they are removed with the error.
    unvalidated: Vec<PathBuf>,
    /// What every checkpoint carries besides the state (set by the caller).
    pub carried: checkpoint::Carried,
    /// What every training row did so far.
    pub dynamics: Dynamics,
    /// Whether the run writes checkpoints (off for the in-memory fits of cross-fitting).
    pub checkpoints: bool,
    /// The validation split's probabilities at the latest evaluation (cross-fitting's scores).
    pub validation_probs: Vec<Vec<f32>>,
}

impl<'a> Trainer<'a> {
    /// A trainer at the start of the run, or where the checkpoint `resume` left it.
    pub fn new(
        cfg: &'a TrainConfig,
        model: LoadedModel,
        data: &TrainData,
        device: &Device,
        resume: Option<&Path>,
    ) -> Result<Trainer<'a>> {
        let per_epoch = sampler::steps_per_epoch(data.train_rows.len(), cfg.train_batch_size);
        let total_steps = cfg.max_steps.unwrap_or(per_epoch * cfg.num_train_epochs);
        let warmup = match cfg.warmup_steps {
            0 => (cfg.warmup_ratio * total_steps as f64).ceil() as usize,
            n => n,
        };
        let schedule = LinearSchedule { peak_lr: cfg.learning_rate, warmup_steps: warmup, total_steps };
        let mut opt = AdamW::new(model.params.iter(), cfg.adamw())?;
        let state = match resume {
            Some(dir) => {
                let state = checkpoint::load_checkpoint(dir, cfg, &model, &mut opt)?;
                if state.total_steps != total_steps {
                    bail!(
                        "{}: the checkpoint plans {} steps, this run {total_steps}",
                        dir.display(),
                        state.total_steps
                    );
                }
                crate::status!("resuming from {} at step {}/{total_steps}", dir.display(), state.global_step);
                state
            }
            None => TrainerState::new(cfg.seed, total_steps),
        };
        let (task, k) = (model.config.task, data.labels.len());
        let dynamics = match resume {
            Some(dir) => Dynamics::resume(dir, task, cfg.threshold, data.train_rows.len(), k)?,
            None => Dynamics::new(task, cfg.threshold, data.train_rows.len(), k),
        };
        let class_weights = match cfg.class_weights {
            ClassWeights::None => None,
            ClassWeights::Balanced => {
                if model.config.task == Task::MultiLabel {
                    bail!("--class-weights balanced weighs the classes of single-label data; this data is multi-label");
                }
                let gold: Vec<usize> = data.train_gold.iter().map(|g| g[0]).collect();
                let w = sampler::balanced_weights(&gold, data.labels.len());
                log::info!("class weights: {w:?}");
                Some(Tensor::from_vec(w, data.labels.len(), device)?)
            }
        };
        Ok(Trainer {
            cfg,
            model,
            opt,
            schedule,
            dropout: Dropout::from_state(state.dropout_rng.clone()),
            class_weights,
            device: device.clone(),
            shuffle_rng: state.shuffle_rng.clone(),
            state,
            per_epoch,
            epochs: total_steps.div_ceil(per_epoch),
            unvalidated: Vec::new(),
            carried: checkpoint::Carried::default(),
            dynamics,
            checkpoints: true,
            validation_probs: Vec::new(),
        })
    }

    pub fn total_steps(&self) -> usize {
        self.state.total_steps
    }

    /// Runs the remaining epochs. Returns the checkpoint it stopped at when interrupted.
    pub fn run(&mut self, data: &TrainData, stop: &Stop) -> Result<Option<PathBuf>> {
        while self.state.epoch < self.epochs && !self.state.stopped_early {
            let lengths: Option<Vec<usize>> =
                self.cfg.group_by_length.then(|| data.train_rows.iter().map(|r| r.ids.len()).collect());
            let order = sampler::epoch_order(
                data.train_rows.len(),
                &mut self.shuffle_rng,
                lengths.as_deref(),
                self.cfg.train_batch_size,
            );
            let started = Instant::now();
            if let Some(dir) = self.train_epoch(&order, data, stop)? {
                return Ok(Some(dir));
            }
            let seconds = started.elapsed().as_secs_f64();
            self.end_epoch(data, seconds)?;
            if (stop.requested)() && self.state.epoch < self.epochs && !self.state.stopped_early {
                return Ok(Some(self.cfg.output_dir.join(format!("checkpoint-{}", self.state.global_step))));
            }
        }
        Ok(None)
    }

    /// The steps of this epoch not yet done. Returns the checkpoint when interrupted.
    fn train_epoch(&mut self, order: &[usize], data: &TrainData, stop: &Stop) -> Result<Option<PathBuf>> {
        let steps = self.steps_this_epoch();
        let pb = crate::progress::bar(steps as u64, &format!("epoch {}/{}", self.state.epoch + 1, self.epochs), "step");
        pb.set_position(self.state.batches_done as u64);
        // A resumed epoch starts part-way: the steps skipped are not this process's rate (the
        // tick records the position, the reset then starts the rate from it).
        pb.tick();
        pb.reset_eta();
        let (first, started) = (self.state.batches_done, Instant::now());
        while self.state.batches_done < steps {
            let b = self.state.batches_done;
            let batch_size = self.cfg.train_batch_size;
            let rows = &order[b * batch_size..((b + 1) * batch_size).min(order.len())];
            let loss = self.step(rows, data).map_err(|e| self.discard_unvalidated(e))?;
            pb.set_message(format!("loss {loss:.4}"));
            pb.inc(1);
            if pb.is_hidden() {
                let done = self.state.batches_done;
                crate::progress::report_plain(done - first, steps - first, done, steps, started, loss);
            }
            let epoch_end = self.state.batches_done == steps;
            let interrupted = (stop.requested)() || stop.after_step == Some(self.state.global_step);
            let periodic = self.cfg.save_steps.is_some_and(|n| self.state.global_step.is_multiple_of(n));
            if self.checkpoints && !epoch_end && (interrupted || periodic) {
                let dir = self.checkpoint().map_err(|e| self.discard_unvalidated(e))?;
                self.unvalidated.push(dir.clone());
                if interrupted {
                    pb.finish_and_clear();
                    return Ok(Some(dir));
                }
            }
        }
        pb.finish_and_clear();
        Ok(None)
    }

    /// Removes the checkpoints written since the last evaluation and says so in `err`, the
    /// error of a step that diverged (or of a state found non-finite).
    fn discard_unvalidated(&mut self, err: anyhow::Error) -> anyhow::Error {
        let written: Vec<PathBuf> = self.unvalidated.drain(..).filter(|d| d.exists()).collect();
        if written.is_empty() {
            return err;
        }
        let names: Vec<String> = written.iter().map(|d| d.display().to_string()).collect();
        let what = "written after the last evaluation, on the way to the divergence";
        match written.iter().try_for_each(std::fs::remove_dir_all) {
            Ok(()) => anyhow::anyhow!("{err:#} Removed {} ({what}).", names.join(", ")),
            Err(e) => anyhow::anyhow!("{err:#} {} ({what}) are unusable; removing them failed: {e}", names.join(", ")),
        }
    }

    fn steps_this_epoch(&self) -> usize {
        self.per_epoch.min(self.state.total_steps - self.state.epoch * self.per_epoch)
    }

    /// One optimiser step on the training rows `rows`; returns the loss.
    fn step(&mut self, rows: &[usize], data: &TrainData) -> Result<f32> {
        let lr = self.schedule.lr(self.state.global_step);
        let out = self.update(rows, data, lr)?;
        let loss_value = out.loss;
        // The loss of a uniform guess: ln(labels) for a softmax, ln 2 per label for sigmoids.
        let uniform = match self.model.config.task {
            Task::SingleLabel => (data.labels.len().max(2) as f64).ln(),
            Task::MultiLabel => 2f64.ln(),
        };
        let limit = DIVERGED_LOSS_FACTOR * uniform;
        if !loss_value.is_finite() || loss_value as f64 > limit {
            let what = format!("the training loss became {loss_value} (a model that learns stays below {limit:.0})");
            return Err(self.diverged(&what, rows, data));
        }
        if !out.grad_norm.is_finite() {
            return Err(self.diverged(&format!("the gradient norm became {}", out.grad_norm), rows, data));
        }
        let logits = out.logits.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.dynamics.record(self.state.epoch, rows, &logits, |i| data.train_gold[i].clone());
        self.record_step(loss_value, lr);
        Ok(loss_value)
    }

    /// Forward, loss, backward and the AdamW update at `lr` on the training rows `rows`.
    pub(super) fn update(&mut self, rows: &[usize], data: &TrainData, lr: f64) -> Result<Update> {
        let tokens: Vec<&Tokenized> = rows.iter().map(|&i| &data.train_rows[i]).collect();
        let batch = data.encoder.batch(&tokens, &self.device)?;
        let targets = self.targets(rows, data)?;
        let logits = {
            let _precision = crate::model::precision::enter(self.model.autocast, &self.device);
            self.model.model.forward(&batch, &self.dropout)?
        };
        let loss = loss(&logits, &targets, self.class_weights.as_ref())?;
        let grads = backward(&loss)?;
        let grad_norm = self.opt.step_with_clipping(&grads, lr, self.cfg.clip_norm())?;
        // Read after the update is queued: on a GPU, reading the loss first would make the host
        // wait for the forward pass before queueing the backward. A diverged step's update is
        // discarded with the run, which stops there and replaces nothing.
        let loss: f32 = loss.to_scalar()?;
        Ok(Update { loss, grad_norm, logits: logits.detach() })
    }

    /// What the training rows `rows` should predict: label ids, or multi-hot rows.
    fn targets(&self, rows: &[usize], data: &TrainData) -> Result<Targets> {
        let k = data.labels.len();
        Ok(match self.model.config.task {
            Task::SingleLabel => {
                let gold: Vec<u32> = rows.iter().map(|&i| data.train_gold[i][0] as u32).collect();
                Targets::Ids(Tensor::from_vec(gold, rows.len(), &self.device)?)
            }
            Task::MultiLabel => {
                let mut hot = vec![0f32; rows.len() * k];
                for (r, &i) in rows.iter().enumerate() {
                    for &l in &data.train_gold[i] {
                        hot[r * k + l] = 1.0;
                    }
                }
                Targets::MultiHot(Tensor::from_vec(hot, (rows.len(), k), &self.device)?)
            }
        })
    }

    /// The error of a run that diverged in the step on `rows`: where, on which rows, what to do.
    fn diverged(&self, what: &str, rows: &[usize], data: &TrainData) -> anyhow::Error {
        let s = &self.state;
        let at: Vec<&str> = rows.iter().take(3).map(|&i| data.train_locations[i].as_str()).collect();
        anyhow::anyhow!(
            "training diverged at step {} (epoch {}, batch {} of {}, rows {}{}): {what}; lower --learning-rate \
             (now {}), raise --warmup-ratio or keep --max-grad-norm on. Nothing in {} was replaced.",
            s.global_step + 1,
            s.epoch + 1,
            s.batches_done + 1,
            self.steps_this_epoch(),
            crate::display::escape(&at.join(", ")),
            if rows.len() > 3 { ", ..." } else { "" },
            self.cfg.learning_rate,
            self.cfg.output_dir.display()
        )
    }

    /// Fails when the weights or the optimiser state hold a NaN or an infinity: such a state is
    /// never written.
    pub fn check_finite(&self) -> Result<()> {
        let broken = match self.model.params.first_non_finite()? {
            Some(name) => Some(format!("parameter {name}")),
            None => self.opt.first_non_finite_moment().map(|name| format!("the optimiser moments of {name}")),
        };
        match broken {
            Some(what) => bail!(
                "training diverged by step {}: {what} holds NaN or infinite values; lower --learning-rate (now {}). \
                 Nothing in {} was replaced.",
                self.state.global_step,
                self.cfg.learning_rate,
                self.cfg.output_dir.display()
            ),
            None => Ok(()),
        }
    }

    fn record_step(&mut self, loss: f32, lr: f64) {
        let s = &mut self.state;
        s.global_step += 1;
        s.batches_done += 1;
        s.epoch_loss_sum += loss as f64;
        s.window_loss_sum += loss as f64;
        s.window_steps += 1;
        if s.window_steps == self.cfg.logging_steps {
            let mean = s.window_loss_sum / s.window_steps as f64;
            s.log_history.push(LogPoint { step: s.global_step, loss: mean, learning_rate: lr });
            s.window_loss_sum = 0.0;
            s.window_steps = 0;
        }
    }

    /// Writes a checkpoint of the current state and prunes the old ones.
    fn checkpoint(&mut self) -> Result<PathBuf> {
        self.check_finite()?;
        self.state.dropout_rng = self.dropout.state().expect("training dropout");
        let dir = checkpoint::save_checkpoint(
            &self.cfg.output_dir,
            self.cfg,
            &self.model,
            &self.opt,
            &self.state,
            &self.carried,
            &self.dynamics,
        )?;
        checkpoint::prune_checkpoints(&self.cfg.output_dir, self.cfg.save_total_limit, self.state.best.as_ref())?;
        Ok(dir)
    }

    /// The evaluation after an epoch: a row of the table, the best epoch and early stopping, and
    /// the epoch-end checkpoint.
    fn end_epoch(&mut self, data: &TrainData, seconds: f64) -> Result<()> {
        let (row, probs) = self.evaluate(data)?;
        self.validation_probs = probs;
        let scores = match row.multi_label {
            false => format!("accuracy {:.4}, F1 {:.4}", row.accuracy, row.f1),
            true => format!("micro F1 {:.4}, macro F1 {:.4}", row.f1, row.f1_macro),
        };
        crate::status!(
            "epoch {:.2}: step {}, training loss {:.4}, validation loss {:.4}, {scores} ({seconds:.0} s)",
            row.epoch,
            row.step,
            row.training_loss,
            row.validation_loss
        );
        if let Some(warning) = overfitting_warning(&self.state.rows, &row) {
            crate::status!("{warning}");
        }
        let value = metric_value(self.cfg.metric_for_best, &row);
        self.state.rows.push(row);
        self.update_best(value);
        let s = &mut self.state;
        s.epoch += 1;
        s.batches_done = 0;
        s.epoch_loss_sum = 0.0;
        s.shuffle_rng = self.shuffle_rng.clone();
        if self.checkpoints {
            self.checkpoint()?;
        }
        self.unvalidated.clear();
        Ok(())
    }

    /// The validation split scored with dropout off.
    fn evaluate(&self, data: &TrainData) -> Result<(EpochRow, Vec<Vec<f32>>)> {
        let pb = crate::progress::bar(data.valid_rows.len() as u64, "evaluating", "text");
        let (rows, gold) = (&data.valid_rows, &data.valid_gold);
        let thresholds = vec![self.cfg.threshold; data.labels.len()];
        let (batch, device) = (self.cfg.eval_batch_size, &self.device);
        let out = evaluate(&self.model, &data.encoder, rows, gold, &thresholds, batch, device, |n| pb.inc(n as u64))?;
        pb.finish_and_clear();
        let steps = self.steps_this_epoch();
        let epoch = self.state.epoch as f64 + steps as f64 / self.per_epoch as f64;
        let mut row = EpochRow {
            training_loss: self.state.epoch_loss_sum / steps.max(1) as f64,
            epoch: (epoch * 100.0).round() / 100.0,
            step: self.state.global_step,
            validation_loss: out.loss,
            accuracy: 0.0,
            f1: 0.0,
            f1_macro: 0.0,
            multi_label: false,
        };
        match self.model.config.task {
            Task::SingleLabel => {
                let (gold, preds): (Vec<usize>, Vec<usize>) =
                    gold.iter().zip(&out.preds).map(|(g, p)| (g[0], p[0])).unzip();
                let r = metrics::report(&gold, &preds, &data.labels);
                (row.accuracy, row.f1, row.f1_macro) = (r.accuracy, r.f1_weighted, r.f1_macro);
            }
            Task::MultiLabel => {
                let r = metrics::multilabel_report(gold, &out.preds, &data.labels);
                (row.accuracy, row.f1, row.f1_macro, row.multi_label) =
                    (r.subset_accuracy, r.f1_micro, r.f1_macro, true);
            }
        }
        Ok((row, out.probs))
    }

    /// A multi-label model's thresholds to save: `--threshold` for every label, or with
    /// `--tune-thresholds` each label's best on the validation split (and the macro F1 either
    /// way, reported). `None` for a single-label model.
    pub fn thresholds(&self, data: &TrainData) -> Result<Option<Vec<f32>>> {
        if self.model.config.task != Task::MultiLabel {
            return Ok(None);
        }
        let k = data.labels.len();
        let fixed = vec![self.cfg.threshold; k];
        if !self.cfg.tune_thresholds {
            return Ok(Some(fixed));
        }
        let (rows, gold) = (&data.valid_rows, &data.valid_gold);
        let (batch, device) = (self.cfg.eval_batch_size, &self.device);
        let out = evaluate(&self.model, &data.encoder, rows, gold, &fixed, batch, device, |_| {})?;
        let tuned = crate::infer::thresholds::tune(&out.probs, gold, k);
        let macro_f1 = |t: &[f32]| {
            let preds: Vec<Vec<usize>> =
                out.probs.iter().map(|p| crate::infer::predicted(Task::MultiLabel, p, t)).collect();
            metrics::multilabel_report(gold, &preds, &data.labels).f1_macro
        };
        crate::status!(
            "thresholds tuned on the validation split: macro F1 {:.4} at {} -> {:.4}",
            macro_f1(&fixed),
            self.cfg.threshold,
            macro_f1(&tuned)
        );
        Ok(Some(tuned))
    }

    /// Records whether the newest row is the best, and stops early when patience ran out.
    fn update_best(&mut self, value: f64) {
        let (cfg, s) = (self.cfg, &mut self.state);
        if s.best.as_ref().is_none_or(|b| cfg.metric_for_best.better(value, b.value)) {
            let checkpoint = format!("checkpoint-{}", s.global_step);
            s.best = Some(Best { row: s.rows.len() - 1, value, checkpoint });
            s.evals_without_improvement = 0;
        } else {
            s.evals_without_improvement += 1;
        }
        let Some(patience) = cfg.early_stopping_patience else { return };
        if s.evals_without_improvement >= patience && s.epoch + 1 < self.epochs {
            let best = s.best.as_ref().expect("set at the first evaluation");
            crate::status!(
                "early stopping: {} has not improved for {patience} evaluation(s) (best {:.4} at epoch {:.1})",
                cfg.metric_for_best.name(),
                best.value,
                s.rows[best.row].epoch
            );
            s.stopped_early = true;
        }
    }
}

/// The value of `metric` in `row`.
fn metric_value(metric: BestMetric, row: &EpochRow) -> f64 {
    match metric {
        BestMetric::Loss => row.validation_loss,
        BestMetric::Accuracy => row.accuracy,
        BestMetric::F1 => row.f1,
    }
}
