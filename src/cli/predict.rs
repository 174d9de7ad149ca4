//! `emotune predict`.

use crate::data::stream::TextStream;
use crate::data::InputText;
use crate::explain::args::{explanation_json, label_id, ExplanationJson};
use crate::explain::Explanation;
use crate::infer::output::{format_predictions_table, prediction_json, ranked_json};
use crate::infer::{Prediction, Predictor};
use crate::model::Task;
use anyhow::{bail, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short, value_name = "MODEL")]
    pub model: String,
    /// The model's branch, tag or commit on the Hub (default: main); also written `--model ID@REV`.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Texts to classify (default: --input, else the lines of standard input).
    pub texts: Vec<String>,
    /// Read texts from a file: one per line (.txt), JSON lines (.jsonl), CSV/TSV with a header
    /// or parquet.
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The JSON field or CSV/parquet column holding the text.
    #[arg(long, default_value = "text", value_name = "COLUMN")]
    pub text_column: String,
    /// Output: a table on a terminal, JSON lines otherwise (auto), or either explicitly.
    #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
    pub format: OutputFormat,
    /// Also give the N most probable labels, ranked.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Give every label, ranked (as --top-k with all labels).
    #[arg(long)]
    pub all_scores: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long, value_name = "TOKENS")]
    pub max_length: Option<usize>,
    /// Also print the raw logits (`"logits": [...]`, in label-id order). JSON lines only: with
    /// it the output is JSON lines even on a terminal (`--format table` refuses it).
    #[arg(long)]
    pub logits: bool,
    /// Multi-label models: predict every label whose probability reaches this (default: the
    /// model's saved thresholds, else 0.5).
    #[arg(long, value_name = "PROB")]
    pub threshold: Option<f32>,
    /// Run the encoder's linear layers in int8 (weights per output channel, quantised at load;
    /// activations per token). CPU only; faster, with predictions that can differ slightly
    /// from float32 (the README measures how much).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    /// Write the predictions to this file (.jsonl, or .parquet with a column per label) instead
    /// of standard output, reading --input a chunk at a time: memory stays bounded whatever the
    /// input's size. The file appears when complete.
    #[arg(long, short, value_name = "FILE", requires = "input", help_heading = "Files of any size",
          conflicts_with_all = ["format", "logits", "top_k", "all_scores", "explain"])]
    pub output: Option<PathBuf>,
    /// With --output: leave out (and count) the rows that cannot be classified (malformed, not
    /// UTF-8, empty) instead of stopping at the first.
    #[arg(long, requires = "output", help_heading = "Files of any size")]
    pub skip_bad_rows: bool,
    /// With --output: texts read, classified and written at a time [default: 4096].
    #[arg(long, value_name = "N", requires = "output", help_heading = "Files of any size")]
    pub chunk_size: Option<usize>,
    /// Explain each prediction: the Integrated Gradients attribution of the label to each word
    /// (JSON lines gain "explanation", or "explanations" for a multi-label model's predicted
    /// labels; on a terminal the text is shown with its words coloured). Computed in float32
    /// from the float weights whatever --quantize (in bf16 with --dtype bf16 on AMX or a GPU).
    #[arg(long, help_heading = "Explanations")]
    pub explain: bool,
    /// Explain this label (a name or an id) instead of the predicted one(s).
    #[arg(long, value_name = "LABEL", requires = "explain", help_heading = "Explanations")]
    pub explain_label: Option<String>,
    #[command(flatten)]
    pub explain_how: crate::explain::args::ExplainHow,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Auto,
    Table,
    Jsonl,
}

pub fn run(args: PredictArgs) -> Result<()> {
    if args.logits && matches!(args.format, OutputFormat::Table) {
        bail!("--logits prints JSON lines: it cannot go with --format table");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (device, autocast) = args.compute.resolve()?;
    let inputs = if args.output.is_some() { Vec::new() } else { read_inputs(&args)? };
    let format = crate::model::inference_format(args.quantize, args.compute.dtype(), &device)?;
    let mut predictor = Predictor::load(
        &crate::hub::with_revision(&args.model, args.revision.as_deref())?,
        args.max_length,
        format,
        &device,
    )?;
    predictor.model.autocast = autocast;
    if let Some(t) = args.threshold {
        predictor.set_threshold(t)?;
    }
    if let (Some(input), Some(output)) = (&args.input, &args.output) {
        return predict_file(&args, &predictor, input, output);
    }
    let explain = args.explain_how.options(args.explain, "--explain")?.map(|mut o| {
        o.autocast = crate::explain::precision(&device, args.compute.dtype());
        o
    });
    let explain_label =
        args.explain_label.as_deref().map(|l| label_id(l, predictor.labels(), "--explain-label")).transpose()?;
    let valid: Vec<&str> = inputs.iter().filter(|t| !is_empty(t)).map(|t| t.text.as_str()).collect();
    let preds = predictor.predict(&valid, args.batch_size)?;
    let explanations = match &explain {
        Some(o) => crate::explain::explain_predictions(&predictor, &valid, &preds, explain_label, o)?,
        None => Vec::new(),
    };
    let truncated = preds.iter().filter(|p| p.truncated).count();
    if truncated > 0 {
        let max = predictor.encoder.max_length();
        log::warn!("{truncated} text(s) were longer than {max} tokens and were truncated to it");
    }
    let (mut preds, mut explained) = (preds.iter(), explanations.iter());
    let rows: Vec<Row> = inputs
        .iter()
        .map(|t| match is_empty(t) {
            true => (t, None, None),
            false => (t, preds.next(), explained.next().map(Vec::as_slice)),
        })
        .collect();
    write_output(&args, &rows, predictor.labels(), predictor.task())?;
    let empty: Vec<String> = inputs.iter().filter(|t| is_empty(t)).map(|t| where_(&args, t.line)).collect();
    if !empty.is_empty() {
        let more = if empty.len() > 10 { ", ..." } else { "" };
        bail!(
            "{} empty text(s) could not be classified: {}{more}",
            empty.len(),
            empty[..empty.len().min(10)].join(", ")
        );
    }
    Ok(())
}

/// `--input FILE --output FILE`: chunk by chunk, with progress and the counts at the end.
fn predict_file(args: &PredictArgs, predictor: &Predictor, input: &Path, output: &Path) -> Result<()> {
    let mut stream = TextStream::open(input, &args.text_column, args.skip_bad_rows)?;
    let bar = crate::progress::bar(stream.rows_expected, "predicting", "text");
    let sizes = (args.chunk_size.unwrap_or(crate::infer::stream::DEFAULT_CHUNK), args.batch_size);
    let counts = crate::infer::stream::predict_file(predictor, &mut stream, output, sizes, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    crate::status!(
        "{} rows read from {}, {} predictions written to {}{}",
        counts.rows_in,
        input.display(),
        counts.rows_out,
        output.display(),
        if counts.skipped > 0 { format!(", {} rows left out:", counts.skipped) } else { String::new() }
    );
    for p in &stream.first_skipped {
        crate::status!("  {p}");
    }
    if counts.skipped > stream.first_skipped.len() {
        crate::status!("  ... and {} more", counts.skipped - stream.first_skipped.len());
    }
    Ok(())
}

fn is_empty(t: &InputText) -> bool {
    t.text.trim().is_empty()
}

/// The texts from the arguments, `--input` or standard input.
fn read_inputs(args: &PredictArgs) -> Result<Vec<InputText>> {
    match (&args.input, args.texts.is_empty()) {
        (Some(_), false) => bail!("give texts as arguments or --input, not both"),
        (Some(path), true) => crate::data::read_texts(path, &args.text_column),
        (None, false) => {
            Ok(args.texts.iter().enumerate().map(|(i, t)| InputText { line: i + 1, text: t.clone() }).collect())
        }
        (None, true) => {
            if std::io::stdin().is_terminal() {
                bail!("no texts: give them as arguments, with --input FILE, or on standard input");
            }
            crate::data::read_stdin_texts()
        }
    }
}

/// Where input `line` came from, for messages.
fn where_(args: &PredictArgs, line: usize) -> String {
    match &args.input {
        Some(p) => format!("{}:{line}", p.display()),
        None if args.texts.is_empty() => format!("<stdin>:{line}"),
        None => format!("text {line}"),
    }
}

/// One input text, its prediction and its explanations (`None`: an empty text).
type Row<'a> = (&'a InputText, Option<&'a Prediction>, Option<&'a [Explanation]>);

/// A table or JSON lines on standard output.
fn write_output(args: &PredictArgs, rows: &[Row], labels: &[String], task: Task) -> Result<()> {
    let top_k = if args.all_scores { Some(labels.len()) } else { args.top_k };
    let terminal = std::io::stdout().is_terminal();
    let table = match args.format {
        OutputFormat::Table => true,
        OutputFormat::Jsonl => false,
        OutputFormat::Auto => terminal && !args.logits,
    };
    let mut out = std::io::stdout().lock();
    if table {
        let predictions: Vec<_> = rows.iter().map(|&(t, p, _)| (t, p)).collect();
        write!(
            out,
            "{}",
            format_predictions_table(&predictions, labels, top_k, task, crate::display::terminal_width())
        )?;
        let explained = rows.iter().filter_map(|&(t, _, e)| e.map(|e| (t, e))).filter(|(_, e)| !e.is_empty());
        for (i, (input, es)) in explained.enumerate() {
            writeln!(out, "{}", if i == 0 { "\nexplanations (Integrated Gradients):" } else { "" })?;
            for e in es {
                writeln!(out, "{}", ExplanationJson::new(e, labels).describe(&input.text, terminal))?;
            }
        }
        return Ok(());
    }
    for &(input, p, explained) in rows {
        let line = match p {
            Some(p) => {
                let mut line = prediction_json(&input.text, p, labels, task);
                if let Some(k) = top_k {
                    line["top"] = ranked_json(p, labels, k);
                }
                if args.logits {
                    line["logits"] = serde_json::json!(p.logits);
                }
                match (explained, task) {
                    (Some([e]), Task::SingleLabel) => line["explanation"] = explanation_json(e, labels),
                    (Some(es), _) => line["explanations"] = es.iter().map(|e| explanation_json(e, labels)).collect(),
                    (None, _) => {}
                }
                line
            }
            None => serde_json::json!({"text": input.text, "line": input.line, "error": "empty text"}),
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(())
}
