//! The output directory of a run, in Hugging Face layout: config, tokenizer files, weights,
//! training arguments and state, `metrics.jsonl`, the model card and the learning curves.

use super::checkpoint::TrainerState;
use super::config::TrainConfig;
use super::history::EpochRow;
use crate::data::Dataset;
use crate::fsx::{write_atomic, write_json_atomic};
use crate::hub::ModelFiles;
use crate::model::LoadedModel;
use anyhow::{Context, Result};
use std::path::Path;

/// `metrics.jsonl`: one JSON object per evaluation.
pub fn write_metrics(path: &Path, rows: &[EpochRow]) -> Result<()> {
    crate::fsx::write_json_lines_atomic(path, rows)
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
    thresholds: Option<&[f32]>,
) -> Result<()> {
    let dir = &cfg.output_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join("model.safetensors");
    if weights.exists() {
        std::fs::remove_file(&weights).with_context(|| format!("removing the old {}", weights.display()))?;
    }
    write_json_atomic(&dir.join("config.json"), &model.config.to_classifier_json())?;
    crate::hub::copy_tokenizer_files(&files.source, dir)?;
    write_json_atomic(&dir.join("training_args.json"), &serde_json::to_value(cfg)?)?;
    write_json_atomic(&dir.join("trainer_state.json"), &serde_json::to_value(state)?)?;
    write_metrics(&dir.join("metrics.jsonl"), &state.rows)?;
    if let Some(t) = thresholds {
        let tuned_on = if cfg.tune_thresholds { "validation" } else { "--threshold" };
        crate::infer::thresholds::save(dir, &model.config.labels, t, tuned_on)?;
    }
    let card =
        crate::card::model_card(cfg, dataset, &model.config, model.params.numel(), &state.rows, best_row, thresholds);
    write_atomic(&dir.join("README.md"), card.as_bytes())?;
    crate::plot::learning_curves_png(&dir.join("learning_curves.png"), &state.log_history, &state.rows)?;
    // last: a directory holding model.safetensors is complete
    model.params.save(&weights)
}
