//! Checkpoints (`checkpoint-<step>/`: weights, config, optimiser moments and the trainer state,
//! everything a run needs to continue bitwise where it stopped), and the output directory's
//! checks before a run starts.

use super::config::TrainConfig;
use super::history::{Best, EpochRow, LogPoint};
use crate::model::LoadedModel;
use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

impl TrainerState {
    /// The state of a run that has not started: the random streams seeded from `seed`.
    pub fn new(seed: u64, total_steps: usize) -> TrainerState {
        TrainerState {
            global_step: 0,
            total_steps,
            epoch: 0,
            batches_done: 0,
            epoch_loss_sum: 0.0,
            shuffle_rng: ChaCha8Rng::seed_from_u64(seed),
            dropout_rng: ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)),
            rows: Vec::new(),
            log_history: Vec::new(),
            window_loss_sum: 0.0,
            window_steps: 0,
            best: None,
            evals_without_improvement: 0,
            stopped_early: false,
        }
    }
}

fn checkpoint_step(name: &str) -> Option<usize> {
    name.strip_prefix("checkpoint-").and_then(|s| s.parse().ok())
}

/// Complete checkpoints (`checkpoint-N` with all their files) in `dir`, oldest first.
pub fn checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
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
pub fn remove_stale_temporaries(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".checkpoint-") && name.contains(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// What a checkpoint carries besides the training state: the tokenizer files (so the checkpoint
/// is a usable model) and the data arguments (so `--resume DIR` knows the run's data).
#[derive(Debug, Default)]
pub struct Carried {
    pub tokenizer: Vec<(&'static str, Vec<u8>)>,
    pub data_args: serde_json::Value,
}

/// The file of a checkpoint holding the data arguments ([`crate::data::DataSpec`]).
pub const DATA_ARGS: &str = "data_args.json";

/// The run's settings for resuming from `ckpt`: those given on the command line (`given`: clap
/// ids, which are the field names) as given, every other one as the checkpoint recorded it.
pub fn settings_from_checkpoint(
    ckpt: &Path,
    cfg: &TrainConfig,
    data: &crate::data::DataSpec,
    given: &[String],
) -> Result<(TrainConfig, crate::data::DataSpec)> {
    let read = |name: &str| -> Result<Option<serde_json::Value>> {
        let path = ckpt.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
        }
    };
    let saved_cfg = read("training_args.json")?
        .ok_or_else(|| anyhow::anyhow!("--resume: {} is not a checkpoint (no training_args.json)", ckpt.display()))?;
    let cfg = merge(serde_json::to_value(cfg)?, saved_cfg, given, &["output_dir"])?;
    let data = match read(DATA_ARGS)? {
        Some(saved) => merge(serde_json::to_value(data)?, saved, given, &[])?,
        None => data.clone(),
    };
    Ok((cfg, data))
}

/// `current` with each field not in `given` (nor in `keep`) replaced by `saved`'s.
fn merge<T: serde::de::DeserializeOwned>(
    mut current: serde_json::Value,
    saved: serde_json::Value,
    given: &[String],
    keep: &[&str],
) -> Result<T> {
    let (Some(cur), Some(saved)) = (current.as_object_mut(), saved.as_object()) else {
        anyhow::bail!("--resume: the checkpoint's arguments are not a JSON object");
    };
    for (k, v) in saved {
        if !given.iter().any(|g| g == k) && !keep.contains(&k.as_str()) {
            cur.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(current).context("--resume: the checkpoint's arguments do not fit this version")
}

/// Writes `checkpoint-<step>`: weights, config, tokenizer, optimiser moments, trainer state and
/// arguments (so `predict`, `eval` and `serve` take a checkpoint as they take a model, as with
/// the Trainer's checkpoints). It is assembled in a temporary directory and renamed into place, so a
/// checkpoint directory is always complete; the previous ones stay untouched.
pub fn save_checkpoint(
    out: &Path,
    cfg: &TrainConfig,
    model: &LoadedModel,
    opt: &AdamW,
    state: &TrainerState,
    carried: &Carried,
    dynamics: &super::dynamics::Dynamics,
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
    crate::hub::write_files(&tmp, &carried.tokenizer)?;
    crate::fsx::write_json_atomic(&tmp.join(DATA_ARGS), &carried.data_args)?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    dynamics.save(&tmp.join(super::dynamics::CHECKPOINT_FILE))?;
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
pub fn prune_checkpoints(out: &Path, limit: Option<usize>, best: Option<&Best>) -> Result<()> {
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
pub fn load_checkpoint(dir: &Path, cfg: &TrainConfig, model: &LoadedModel, opt: &mut AdamW) -> Result<TrainerState> {
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

pub fn check_output_dir(dir: &Path, overwrite: bool) -> Result<()> {
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
