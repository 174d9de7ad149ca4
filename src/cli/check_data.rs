//! `emotune check-data`.

use crate::data::DataSpec;
use crate::device::DeviceChoice;
use crate::label_errors::{confident::RankBy, probabilities, report, CrossFit, LabelErrors};
use crate::train::TrainConfig;
use crate::weights::Dtype;
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckDataArgs {
    #[command(flatten)]
    pub data: DataSpec,
    /// A model whose tokenizer measures the texts (token-length distribution, rows over its
    /// maximum length); with --label-errors, the model the folds fine-tune.
    #[arg(long, short, value_name = "MODEL")]
    pub model: Option<String>,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV", requires = "model")]
    pub revision: Option<String>,
    /// Maximum length to check against (default: the model's); needs --model, whose tokenizer
    /// counts the tokens.
    #[arg(long, requires = "model", value_name = "TOKENS")]
    pub max_length: Option<usize>,
    /// How many instances of each problem to show (all of them go to --json).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub show: usize,
    /// Write the whole report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub label_errors: LabelErrorArgs,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
}

/// Finding rows whose label looks wrong.
#[derive(Args, Debug)]
pub struct LabelErrorArgs {
    /// Find training rows whose label looks wrong: fine-tune --model on all folds but one, score
    /// the one held out (every fold in turn), then confident learning (cleanlab's
    /// find_label_issues) on those out-of-fold probabilities.
    #[arg(long, help_heading = "Label errors")]
    pub label_errors: bool,
    /// Rank the rows a finished `emotune train` run trained on by their area under the margin
    /// (its training_dynamics.jsonl): no extra training. Rows with a negative AUM are flagged.
    #[arg(long, value_name = "RUN", conflicts_with = "label_errors", help_heading = "Label errors")]
    pub label_errors_from: Option<PathBuf>,
    /// Folds of the cross-fitting (each row is scored by the model fitted without its fold).
    #[arg(long, default_value_t = 5, value_name = "K", requires = "label_errors", help_heading = "Label errors")]
    pub folds: usize,
    /// Epochs each fold fine-tunes for (fewer epochs memorise fewer wrong labels).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "label_errors", help_heading = "Label errors")]
    pub epochs: usize,
    /// Each fold's peak learning rate (the seed recipe's otherwise: AdamW, linear decay).
    #[arg(long, default_value_t = 2e-5, value_name = "LR", requires = "label_errors", help_heading = "Label errors")]
    pub learning_rate: f64,
    /// Each fold's training batch size.
    #[arg(long, default_value_t = 64, value_name = "N", requires = "label_errors", help_heading = "Label errors")]
    pub batch_size: usize,
    /// Seeds the folds and every fold's fine-tuning.
    #[arg(long, default_value_t = 42, value_name = "SEED", requires = "label_errors", help_heading = "Label errors")]
    pub seed: u64,
    /// Batch texts of similar length together while fine-tuning the folds.
    #[arg(long, requires = "label_errors", help_heading = "Label errors")]
    pub group_by_length: bool,
    /// How flagged rows are ordered (least trustworthy first).
    #[arg(long, value_enum, default_value_t = RankBy::SelfConfidence, value_name = "SCORE", help_heading = "Label errors")]
    pub rank_by: RankBy,
    /// Write every flagged row, ranked, to this file (.csv or .jsonl); `train --exclude-rows`
    /// takes it.
    #[arg(long, value_name = "FILE", help_heading = "Label errors")]
    pub label_errors_out: Option<PathBuf>,
    /// Write the out-of-fold probabilities of every training row (JSON lines) to this file.
    #[arg(long, value_name = "FILE", requires = "label_errors", help_heading = "Label errors")]
    pub save_probabilities: Option<PathBuf>,
    /// Skip the cross-fitting: confident learning on out-of-fold probabilities saved earlier by
    /// --save-probabilities (to rank again, or by another --rank-by).
    #[arg(
        long,
        value_name = "FILE",
        requires = "label_errors",
        conflicts_with = "save_probabilities",
        help_heading = "Label errors"
    )]
    pub probabilities: Option<PathBuf>,
}

pub fn run(args: CheckDataArgs) -> Result<()> {
    if args.label_errors.label_errors_out.is_some()
        && !args.label_errors.label_errors
        && args.label_errors.label_errors_from.is_none()
    {
        bail!("--label-errors-out needs --label-errors or --label-errors-from");
    }
    let computes = args.compute.device != DeviceChoice::Auto || args.compute.dtype() != Dtype::F32;
    if computes && !args.label_errors.label_errors {
        bail!("--device and --dtype choose where --label-errors fine-tunes its folds; nothing else here computes");
    }
    let encoder = match &args.model {
        Some(m) => {
            let spec = crate::hub::with_revision(m, args.revision.as_deref())?;
            Some(crate::infer::load_text_encoder(&spec, args.max_length)?)
        }
        None => None,
    };
    let report = crate::check::run(&args.data, encoder.as_ref())?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", crate::check::format_report(&report, args.show))?;
    if encoder.is_none() {
        writeln!(out, "(pass --model to measure token lengths against a model's maximum length)")?;
    }
    let found = label_errors(&args)?;
    if let Some(found) = &found {
        write!(out, "{}", report::format(found, args.show))?;
        if let Some(path) = &args.label_errors.label_errors_out {
            report::write(path, found)?;
            writeln!(out, "{} flagged row(s) written to {}", found.suspects.len(), path.display())?;
        }
    }
    if let Some(path) = &args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(found) = &found {
            value["label_errors"] = serde_json::to_value(found)?;
        }
        crate::fsx::write_json_atomic(path, &value)?;
        writeln!(out, "report saved to {}", path.display())?;
    }
    if report.error_count() > 0 {
        bail!("{} data error(s) found", report.error_count());
    }
    Ok(())
}

/// The label-error search the flags ask for, if any.
fn label_errors(args: &CheckDataArgs) -> Result<Option<LabelErrors>> {
    let a = &args.label_errors;
    if let Some(dir) = &a.label_errors_from {
        return Ok(Some(crate::label_errors::from_run(dir)?));
    }
    if !a.label_errors {
        return Ok(None);
    }
    if let Some(path) = &a.probabilities {
        let dataset = crate::data::load_lenient(&args.data)?.0;
        return Ok(Some(crate::label_errors::from_probabilities(&dataset, path, a.rank_by)?));
    }
    let Some(model) = &args.model else { bail!("--label-errors needs --model (or --probabilities FILE)") };
    let (device, autocast) = args.compute.resolve_training()?;
    let mut recipe = TrainConfig::seed_recipe(model, PathBuf::from("(cross-fitting: nothing is written)"));
    recipe.revision = args.revision.clone();
    recipe.max_length = args.max_length;
    recipe.num_train_epochs = a.epochs;
    recipe.learning_rate = a.learning_rate;
    recipe.train_batch_size = a.batch_size;
    recipe.seed = a.seed;
    recipe.group_by_length = a.group_by_length;
    recipe.bf16 = autocast.is_some();
    let how = CrossFit { recipe, folds: a.folds, rank_by: a.rank_by };
    let dataset = crate::data::load_lenient(&args.data)?.0;
    let save = |split: &crate::data::Split, probs: &[f64]| match &a.save_probabilities {
        Some(path) => probabilities::write(path, split, probs, &dataset.labels),
        None => Ok(()),
    };
    Ok(Some(crate::label_errors::by_cross_fitting(&dataset, &how, &device, save)?))
}
