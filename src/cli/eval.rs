//! `emotune eval`.

use crate::data::{DataSpec, SplitName};
use crate::eval::EvalOptions;
use anyhow::Result;
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short, value_name = "MODEL")]
    pub model: String,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub data: DataSpec,
    /// Which split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitName::Validation)]
    pub split: SplitName,
    /// Evaluate this one labelled file instead of a split of --dataset (as predict's --input).
    #[arg(long, alias = "file", conflicts_with_all = ["dataset", "train", "validation", "test"], value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Use only the first N examples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long, value_name = "TOKENS")]
    pub max_length: Option<usize>,
    /// How many of the highest-loss examples to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top_losses: usize,
    /// Where to save the confusion matrix (single-label) or the per-label F1 chart (multi-label)
    /// as a PNG (default: `confusion_matrix_<split>.png` or `per_label_f1_<split>.png` in
    /// --output-dir).
    #[arg(long, value_name = "PNG")]
    pub plot: Option<PathBuf>,
    /// Where the plot goes (default: the model's directory; for a Hub id, `<name>-eval` here).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Replace a plot that already exists (otherwise eval refuses before it starts).
    #[arg(long)]
    pub overwrite: bool,
    /// Write the whole report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Multi-label models: predict every label whose probability reaches this (default: the
    /// model's saved thresholds, else 0.5).
    #[arg(long, value_name = "PROB")]
    pub threshold: Option<f32>,
    /// Run the encoder's linear layers in int8 (weights per output channel, quantised at load;
    /// activations per token). CPU only; faster, with predictions that can differ slightly
    /// from float32 (the README measures how much).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    /// Explain each highest-loss example: the Integrated Gradients attributions of its
    /// predicted and its gold label(s) to its words (in the text report, and in --json).
    #[arg(long, help_heading = "Explanations")]
    pub explain_worst: bool,
    #[command(flatten)]
    pub explain_how: crate::explain::args::ExplainHow,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
}

/// The plot's path: `--plot`, else a name with the split in `--output-dir` or beside the model.
fn plot_path(args: &EvalArgs, split: SplitName, multi_label: bool) -> PathBuf {
    if let Some(p) = &args.plot {
        return p.clone();
    }
    let dir = args.output_dir.clone().unwrap_or_else(|| {
        let model = std::path::Path::new(&args.model);
        if model.is_dir() {
            model.to_path_buf()
        } else {
            PathBuf::from(format!("{}-eval", args.model.rsplit('/').next().unwrap_or(&args.model)))
        }
    });
    let kind = if multi_label { "per_label_f1" } else { "confusion_matrix" };
    dir.join(format!("{kind}_{}.png", split.as_str()))
}

/// Refuses, before any work, to replace an existing plot without `--overwrite`.
fn check_plot_free(path: &std::path::Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        anyhow::bail!("{} already exists: pass --overwrite to replace it, or --plot/--output-dir", path.display());
    }
    Ok(())
}

fn create_parent(path: &std::path::Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display())),
        None => Ok(()),
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (spec, split) = match &args.input {
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
        explain: args.explain_how.options(args.explain_worst, "--explain-worst")?.map(|mut o| {
            o.autocast = crate::explain::precision(&device, args.compute.dtype());
            o
        }),
    };
    let model = crate::hub::with_revision(&args.model, args.revision.as_deref())?;
    // Both names are checked: whether the model is multi-label is known only once it is loaded.
    let (single, multi) = (plot_path(&args, split, false), plot_path(&args, split, true));
    check_plot_free(&single, args.overwrite)?;
    check_plot_free(&multi, args.overwrite)?;
    let report = crate::eval::run(&model, &spec, &opts, &device)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", crate::eval::format_report(&report, std::io::stdout().is_terminal()))?;
    let title = format!("{model} · {} · {} ({})", report.split, report.data, report.examples);
    if let Some(m) = &report.metrics {
        create_parent(&single)?;
        crate::plot::confusion_matrix_png(&single, &report.labels, &m.confusion, &title)?;
        writeln!(out, "\nconfusion matrix saved to {}", single.display())?;
    }
    if let Some(m) = &report.multi_label {
        let f1: Vec<f64> = m.per_class.iter().map(|c| c.f1).collect();
        create_parent(&multi)?;
        crate::plot::per_label_f1_png(&multi, &report.labels, &f1, &title)?;
        writeln!(out, "\nper-label F1 chart saved to {}", multi.display())?;
    }
    if let Some(path) = &args.json {
        crate::fsx::write_json_atomic(path, &serde_json::to_value(&report)?)?;
        writeln!(out, "report saved to {}", path.display())?;
    }
    Ok(())
}
