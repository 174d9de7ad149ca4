//! `emotune eval`.

use crate::data::{DataSpec, SplitName};
use crate::eval::EvalOptions;
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub data: DataSpec,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitName::Validation)]
    pub split: SplitName,
    /// Evaluate this one file instead of a split of --dataset.
    #[arg(long, conflicts_with_all = ["dataset", "train", "validation", "test"])]
    pub file: Option<PathBuf>,
    /// Use only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// How many of the highest-loss examples to list.
    #[arg(long, default_value_t = 10)]
    pub top_losses: usize,
    /// Where to save the confusion matrix (single-label) or the per-label F1 chart (multi-label)
    /// as a PNG.
    #[arg(long, default_value = "confusion_matrix.png")]
    pub plot: PathBuf,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Multi-label models: predict every label whose probability reaches this (default: the
    /// model's saved thresholds, else 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Run the encoder's linear layers in int8 (weights per output channel, quantised at load;
    /// activations per token). CPU only; faster, with predictions that can differ slightly
    /// from float32 (the README measures how much).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (spec, split) = match &args.file {
        // One file is read as the test split of a dataset of its own.
        Some(f) => (DataSpec { dataset: None, test: Some(f.clone()), ..args.data.clone() }, SplitName::Test),
        None => (args.data.clone(), args.split),
    };
    let (device, autocast) = args.compute.resolve()?;
    let opts = EvalOptions {
        split,
        batch_size: args.batch_size,
        limit: args.limit,
        top_losses: args.top_losses,
        max_length: args.max_length,
        threshold: args.threshold,
        quantize: crate::model::inference_format(args.quantize, args.compute.dtype(), &device)?,
        autocast,
    };
    let report =
        crate::eval::run(&crate::hub::with_revision(&args.model, args.revision.as_deref())?, &spec, &opts, &device)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", crate::eval::format_report(&report))?;
    let title = format!("{} · {} ({})", report.split, report.data, report.examples);
    if let Some(m) = &report.metrics {
        crate::plot::confusion_matrix_png(&args.plot, &report.labels, &m.confusion, &title)?;
        writeln!(out, "\nconfusion matrix saved to {}", args.plot.display())?;
    }
    if let Some(m) = &report.multi_label {
        let f1: Vec<f64> = m.per_class.iter().map(|c| c.f1).collect();
        crate::plot::per_label_f1_png(&args.plot, &report.labels, &f1, &title)?;
        writeln!(out, "\nper-label F1 chart saved to {}", args.plot.display())?;
    }
    if let Some(path) = &args.json {
        crate::fsx::write_json_atomic(path, &serde_json::to_value(&report)?)?;
        writeln!(out, "report saved to {}", path.display())?;
    }
    Ok(())
}
