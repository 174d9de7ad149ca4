//! The `emotune` command line.

use crate::infer::{prediction_json, Predictor};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "emotune", version, about = "Fine-tune, evaluate and serve emotion classifiers")]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Classify texts given as arguments; prints one JSON line per text.
    Predict(PredictArgs),
    /// Fine-tune a model on a labelled dataset (defaults: the seed recipe).
    Train(Box<TrainArgs>),
    /// Evaluate a model on a labelled split: scores, per-class report, confusion matrix, worst examples.
    Eval(EvalArgs),
    /// Check a dataset's integrity: label counts, unusable rows, conflicting labels, leakage,
    /// duplicates, control characters, token lengths. Exits 1 when it finds errors.
    CheckData(CheckDataArgs),
    /// Serve a model over HTTP (text-embeddings-inference's /predict API, batching, metrics, a page).
    Serve(ServeArgs),
    /// Time training steps and inference of a randomly initialised model (speed work only).
    Bench(BenchArgs),
}

/// Where the data comes from (shared by the data-reading commands).
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// A Hub dataset id or a directory with train.*/validation.*/test.* files
    /// (default: dair-ai/emotion, unless --train is given).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Training file (parquet, csv, tsv, jsonl, or `text;label` lines).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Validation file.
    #[arg(long)]
    pub validation: Option<PathBuf>,
    /// Test file.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Column (or JSON field) holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Column (or JSON field) holding the label (a name or an integer id).
    #[arg(long, default_value = "label")]
    pub label_column: String,
    /// Label names in id order, comma-separated (default: the dataset's ClassLabel names, else
    /// the sorted distinct names).
    #[arg(long, value_delimiter = ',')]
    pub label_names: Option<Vec<String>>,
}

impl DataArgs {
    pub fn spec(&self) -> crate::data::DataSpec {
        let dataset = match (&self.dataset, &self.train) {
            (Some(d), _) => Some(d.clone()),
            (None, None) => Some("dair-ai/emotion".to_string()),
            (None, Some(_)) => None,
        };
        crate::data::DataSpec {
            dataset,
            train: self.train.clone(),
            validation: self.validation.clone(),
            test: self.test.clone(),
            text_column: self.text_column.clone(),
            label_column: self.label_column.clone(),
            label_names: self.label_names.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The model to fine-tune: a Hub id or a directory.
    #[arg(long, short, default_value = "distilbert-base-uncased")]
    pub model: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the fine-tuned model (default: <model>-finetuned-<dataset>).
    #[arg(long, short)]
    pub output_dir: Option<PathBuf>,
    /// Replace a model already in --output-dir.
    #[arg(long)]
    pub overwrite_output_dir: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_epsilon: f64,
    /// Decoupled weight decay (not applied to biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Training batch size.
    #[arg(long, alias = "train-batch-size", default_value_t = 64)]
    pub batch_size: usize,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 64)]
    pub eval_batch_size: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Stop after this many optimiser steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Linear warm-up steps (overrides --warmup-ratio).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Warm-up as a fraction of all steps.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Seeds head initialisation, dropout and shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Use only the first N training examples.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N validation/test examples.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// After training, classify these texts with the new model (repeatable).
    #[arg(long = "predict")]
    pub predict: Vec<String>,
    /// Also checkpoint every N steps (checkpoints are always written at each epoch end).
    #[arg(long)]
    pub save_steps: Option<usize>,
    /// Keep at most N checkpoints (the best one is always kept).
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// Continue from a checkpoint: the given one, or the newest in --output-dir.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    pub resume: Option<Option<PathBuf>>,
    /// Stop when the best metric has not improved for N evaluations.
    #[arg(long)]
    pub early_stopping_patience: Option<usize>,
    /// The metric that picks the best epoch.
    #[arg(long, value_enum, default_value_t = crate::train::BestMetric::Loss)]
    pub metric_for_best: crate::train::BestMetric,
    /// Make the output the best epoch's model (the card and table say which).
    #[arg(long)]
    pub load_best_at_end: bool,
    /// Weigh the loss per class (balanced: inversely to the training counts).
    #[arg(long, value_enum, default_value_t = crate::train::ClassWeights::None)]
    pub class_weights: crate::train::ClassWeights,
    /// Clip the global gradient norm to this before each step, as the Trainer does (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Batch texts of similar length together (less padding; Transformers' group_by_length).
    #[arg(long)]
    pub group_by_length: bool,
    /// Log the mean training loss every N steps (learning curves).
    #[arg(long, default_value_t = 10)]
    pub logging_steps: usize,
    /// Test hook: behave as if interrupted right after this step.
    #[arg(long, hide = true)]
    pub stop_after_step: Option<usize>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Which split to evaluate (train, validation or test).
    #[arg(long, default_value = "validation")]
    pub split: String,
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
    /// Where to save the confusion matrix as a PNG.
    #[arg(long, default_value = "confusion_matrix.png")]
    pub plot: PathBuf,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckDataArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// A model whose tokenizer measures the texts (token-length distribution, rows over its
    /// maximum length).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Maximum length to check against (default: the model's).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// How many instances of each problem to list.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Write the whole report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most tokens (rows × longest row) in one forward pass across requests.
    #[arg(long, default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Most inputs in one request (more: 413).
    #[arg(long, default_value_t = 32)]
    pub max_client_batch_size: usize,
    /// Most requests admitted at once (more: 429).
    #[arg(long, default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Inference worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Test hook: delay every batch by this many milliseconds.
    #[arg(long, hide = true, default_value_t = 0)]
    pub batch_delay_ms: u64,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model shape (a config.json); weights are random.
    #[arg(long, default_value = "../shared/fixtures/distilbert-base-uncased.config.json")]
    pub config: std::path::PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Tokens per row; repeat for several shapes (default: 24, 40, 64, 87).
    #[arg(long)]
    pub seq: Vec<usize>,
    /// Measured steps per shape (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Unmeasured warm-up steps per shape.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// One JSON object per shape instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also report the time per training step spent in each fused kernel, and what the forward
    /// and backward spend outside them (autograd bookkeeping, candle's own ops).
    #[arg(long)]
    pub profile: bool,
    /// Instead of measuring, write a randomly initialised model of --config's shape to this
    /// directory (with --tokenizer's tokenizer files), to time whole training runs with
    /// `emotune train --model DIR`. Its weights have learned nothing.
    #[arg(long, value_name = "DIR")]
    pub write_model: Option<PathBuf>,
    /// Where --write-model takes the tokenizer from (a model directory or Hub id).
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2", requires = "write_model")]
    pub tokenizer: String,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    /// Texts to classify (default: --input, else the lines of standard input).
    pub texts: Vec<String>,
    /// Read texts from a file: one per line (.txt), JSON lines (.jsonl) or CSV/TSV with a header.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// The JSON field or CSV column holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Output: a table on a terminal, JSON lines otherwise (auto), or either explicitly.
    #[arg(long, value_enum, default_value_t = OutputFormat::Auto)]
    pub format: OutputFormat,
    /// Also give the N most probable labels, ranked.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Give every label, ranked (as --top-k with all labels).
    #[arg(long)]
    pub all_scores: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Also print the raw logits (`"logits": [...]`, in label-id order).
    #[arg(long)]
    pub logits: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Auto,
    Table,
    Jsonl,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let env = env_logger::Env::default().default_filter_or(format!("emotune={level},warn"));
    let _ = env_logger::Builder::from_env(env).format_timestamp(None).try_init();
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Predict(args) => predict(args),
        Command::Train(args) => train(*args),
        Command::Eval(args) => eval(args),
        Command::CheckData(args) => check_data(args),
        Command::Serve(args) => crate::serve::serve(crate::serve::ServeConfig {
            model: args.model,
            host: args.host,
            port: args.port,
            max_batch_tokens: args.max_batch_tokens,
            max_client_batch_size: args.max_client_batch_size,
            max_concurrent_requests: args.max_concurrent_requests,
            workers: args.workers,
            batch_delay: std::time::Duration::from_millis(args.batch_delay_ms),
        }),
        Command::Bench(args) => bench(args),
    }
}

fn predict(args: PredictArgs) -> Result<()> {
    use std::io::IsTerminal;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let inputs: Vec<crate::data::InputText> = match (&args.input, args.texts.is_empty()) {
        (Some(_), false) => bail!("give texts as arguments or --input, not both"),
        (Some(path), true) => crate::data::read_texts(path, &args.text_column)?,
        (None, false) => args
            .texts
            .iter()
            .enumerate()
            .map(|(i, t)| crate::data::InputText { line: i + 1, text: t.clone() })
            .collect(),
        (None, true) => {
            if std::io::stdin().is_terminal() {
                bail!("no texts: give them as arguments, with --input FILE, or on standard input");
            }
            crate::data::read_stdin_texts()?
        }
    };
    let where_ = |line: usize| match &args.input {
        Some(p) => format!("{}:{line}", p.display()),
        None if args.texts.is_empty() => format!("<stdin>:{line}"),
        None => format!("text {line}"),
    };
    let empty: Vec<usize> = inputs.iter().filter(|t| t.text.trim().is_empty()).map(|t| t.line).collect();
    let device = Device::Cpu;
    let predictor = Predictor::load(&args.model, args.max_length, &device)?;
    let valid: Vec<&str> = inputs.iter().filter(|t| !t.text.trim().is_empty()).map(|t| t.text.as_str()).collect();
    let preds = predictor.predict(&valid, args.batch_size)?;
    let truncated = preds.iter().filter(|p| p.truncated).count();
    if truncated > 0 {
        log::warn!(
            "{truncated} text(s) were longer than {} tokens and were truncated to it",
            predictor.encoder.max_length()
        );
    }
    let labels = predictor.labels();
    let top_k = if args.all_scores { Some(labels.len()) } else { args.top_k };
    let table = match args.format {
        OutputFormat::Table => true,
        OutputFormat::Jsonl => false,
        OutputFormat::Auto => std::io::stdout().is_terminal(),
    };
    let mut preds = preds.iter();
    let mut rows = Vec::new();
    for input in &inputs {
        if input.text.trim().is_empty() {
            rows.push((input, None));
        } else {
            rows.push((input, preds.next()));
        }
    }
    if table {
        print!("{}", crate::infer::format_predictions_table(&rows, labels, top_k));
    } else {
        for (input, p) in &rows {
            let line = match p {
                Some(p) => {
                    let mut line = prediction_json(&input.text, p, labels);
                    if let Some(k) = top_k {
                        line["top"] = crate::infer::ranked_json(p, labels, k);
                    }
                    if args.logits {
                        line["logits"] = serde_json::json!(p.logits);
                    }
                    line
                }
                None => serde_json::json!({"text": input.text, "line": input.line, "error": "empty text"}),
            };
            println!("{}", serde_json::to_string(&line)?);
        }
    }
    if !empty.is_empty() {
        let shown: Vec<String> = empty.iter().take(10).map(|&l| where_(l)).collect();
        bail!(
            "{} empty text(s) could not be classified: {}{}",
            empty.len(),
            shown.join(", "),
            if empty.len() > 10 { ", ..." } else { "" }
        );
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    if let Some(dir) = &args.write_model {
        crate::bench::write_random_model(&args.config, &args.tokenizer, dir)?;
        println!("wrote a randomly initialised model (speed work only) to {}", dir.display());
        return Ok(());
    }
    let seqs = if args.seq.is_empty() { vec![24, 40, 64, 87] } else { args.seq.clone() };
    if args.batch == 0 || args.steps == 0 || seqs.contains(&0) {
        bail!("--batch, --seq and --steps must be at least 1");
    }
    let opts = crate::bench::BenchOptions {
        batch: args.batch,
        seqs,
        steps: args.steps,
        warmup: args.warmup,
        profile: args.profile,
    };
    if !args.json {
        println!(
            "{:>5} {:>4} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>10} {:>10} | {:>8}",
            "batch", "seq", "step s", "fwd s", "bwd s", "optim s", "eval s", "texts/s", "1-text ms", "peak MB"
        );
    }
    crate::bench::run(&args.config, &opts, &Device::Cpu, |r| {
        if args.json {
            println!("{}", serde_json::to_string(r).expect("serialisable"));
        } else {
            println!(
                "{:>5} {:>4} | {:>9.3} {:>9.3} {:>9.3} {:>9.3} | {:>9.3} {:>10.1} {:>10.1} | {:>8.0}",
                r.batch,
                r.seq,
                r.train_step_s,
                r.forward_s,
                r.backward_s,
                r.optimizer_s,
                r.eval_forward_s,
                r.predict_texts_per_s,
                r.one_text_latency_s * 1e3,
                r.peak_rss_mb
            );
            if !r.kernels.is_empty() {
                print_kernel_profile(r);
            }
        }
    })
}

fn print_kernel_profile(r: &crate::bench::ShapeReport) {
    let in_backward = |k: &crate::bench::KernelTime| k.kernel.ends_with("-backward");
    // Sections within a kernel (named "· ...") are already inside their kernel's time.
    let sum = |bwd: bool| {
        r.kernels
            .iter()
            .filter(|k| in_backward(k) == bwd && !k.kernel.starts_with('·'))
            .map(|k| k.seconds_per_step)
            .sum::<f64>()
    };
    println!("      {:<32} {:>9} {:>7}", "kernel (per training step)", "s", "calls");
    for k in &r.kernels {
        println!("      {:<32} {:>9.3} {:>7.0}", k.kernel, k.seconds_per_step, k.calls_per_step);
    }
    println!("      {:<32} {:>9.3}", "forward outside kernels", r.forward_s - sum(false));
    println!("      {:<32} {:>9.3}", "backward outside kernels", r.backward_s - sum(true));
}

fn default_output_dir(model: &str, data: &crate::data::DataSpec) -> PathBuf {
    let base = |s: &str| s.trim_end_matches('/').rsplit('/').next().unwrap_or(s).to_string();
    let ds = match (&data.dataset, &data.train) {
        (Some(d), _) => base(d),
        (None, Some(t)) => t.file_stem().map_or("data".into(), |s| s.to_string_lossy().into_owned()),
        (None, None) => "data".into(),
    };
    PathBuf::from(format!("{}-finetuned-{ds}", base(model)))
}

fn train(args: TrainArgs) -> Result<()> {
    let spec = args.data.spec();
    let output_dir = args.output_dir.clone().unwrap_or_else(|| default_output_dir(&args.model, &spec));
    let cfg = crate::train::TrainConfig {
        model: args.model.clone(),
        output_dir,
        learning_rate: args.learning_rate,
        adam_beta1: args.adam_beta1,
        adam_beta2: args.adam_beta2,
        adam_epsilon: args.adam_epsilon,
        weight_decay: args.weight_decay,
        train_batch_size: args.batch_size,
        eval_batch_size: args.eval_batch_size,
        num_train_epochs: args.epochs,
        max_steps: args.max_steps,
        warmup_steps: args.warmup_steps,
        warmup_ratio: args.warmup_ratio,
        lr_scheduler_type: "linear".into(),
        seed: args.seed,
        max_length: args.max_length,
        train_limit: args.train_limit,
        eval_limit: args.eval_limit,
        overwrite_output_dir: args.overwrite_output_dir,
        save_steps: args.save_steps,
        save_total_limit: Some(args.save_total_limit),
        early_stopping_patience: args.early_stopping_patience,
        metric_for_best: args.metric_for_best,
        load_best_at_end: args.load_best_at_end,
        class_weights: args.class_weights,
        logging_steps: args.logging_steps,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        group_by_length: args.group_by_length,
    };
    let control = crate::train::RunControl {
        resume: args.resume.as_ref().map(|p| match p {
            None => crate::train::Resume::Latest,
            Some(dir) => crate::train::Resume::Dir(dir.clone()),
        }),
        stop_after_step: args.stop_after_step,
    };
    let _ = ctrlc::set_handler(|| {
        eprintln!("\ninterrupt: finishing the current step and writing a checkpoint (interrupt again to abort)");
        if crate::train::stop_already_requested() {
            std::process::exit(130);
        }
        crate::train::request_stop();
    });
    let device = Device::Cpu;
    let outcome = crate::train::train_with(&cfg, &spec, &device, &control)?;
    if let Some(ckpt) = &outcome.interrupted_at {
        println!("{}", crate::train::format_table(&outcome.rows).trim_end());
        eprintln!(
            "stopped at step {}/{}; checkpoint {}. Resume with the same arguments plus --resume:\n  emotune {} --resume {}",
            outcome.steps_done,
            outcome.total_steps,
            ckpt.display(),
            resume_command_line(),
            ckpt.display()
        );
        std::process::exit(130);
    }
    println!("{}", crate::train::format_table(&outcome.rows).trim_end());
    if let Some(best) = &outcome.best {
        let r = &outcome.rows[best.row];
        println!(
            "best: epoch {:.1} (step {}) by {} = {:.4}{}{}",
            r.epoch,
            r.step,
            cfg.metric_for_best.name(),
            best.value,
            if outcome.loaded_best { "; the saved model is that epoch's" } else { "" },
            if outcome.stopped_early { "; stopped early" } else { "" }
        );
    }
    println!(
        "\n{} steps in {:.1} s; model written to {}",
        outcome.steps_done,
        outcome.wall_seconds,
        outcome.output_dir.display()
    );
    if !args.predict.is_empty() {
        let predictor = Predictor::load(outcome.output_dir.to_str().unwrap_or_default(), args.max_length, &device)?;
        let texts: Vec<&str> = args.predict.iter().map(String::as_str).collect();
        for (text, p) in texts.iter().zip(predictor.predict(&texts, args.eval_batch_size)?) {
            println!("{}", serde_json::to_string(&prediction_json(text, &p, predictor.labels()))?);
        }
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let (spec, split) = match &args.file {
        Some(f) => {
            let mut d = args.data.clone();
            d.dataset = None;
            let mut spec = d.spec();
            spec.dataset = None;
            spec.test = Some(f.clone());
            (spec, "test".to_string())
        }
        None => (args.data.spec(), args.split.clone()),
    };
    let opts =
        crate::eval::EvalOptions { split, batch_size: args.batch_size, limit: args.limit, top_losses: args.top_losses };
    let report = crate::eval::run(&args.model, &spec, &opts, args.max_length, &Device::Cpu)?;
    print!("{}", crate::eval::format_report(&report));
    let title = format!("{} · {} ({})", report.split, report.data, report.examples);
    crate::plot::confusion_matrix_png(&args.plot, &report.labels, &report.metrics.confusion, &title)?;
    println!("\nconfusion matrix saved to {}", args.plot.display());
    if let Some(path) = &args.json {
        crate::fsx::write_json_atomic(path, &serde_json::to_value(&report)?)?;
        println!("report saved to {}", path.display());
    }
    Ok(())
}

fn check_data(args: CheckDataArgs) -> Result<()> {
    let encoder = match &args.model {
        Some(m) => {
            let files = crate::hub::ModelFiles::resolve(m)?;
            let config = crate::model::ModelConfig::load(&files.config)?;
            Some(crate::infer::text_encoder(&files, &config, args.max_length)?)
        }
        None => None,
    };
    let report = crate::check::run(&args.data.spec(), encoder.as_ref())?;
    print!("{}", crate::check::format_report(&report, args.limit));
    if encoder.is_none() {
        println!("(pass --model to measure token lengths against a model's maximum length)");
    }
    if let Some(path) = &args.json {
        crate::fsx::write_json_atomic(path, &serde_json::to_value(&report)?)?;
        println!("report saved to {}", path.display());
    }
    if report.error_count() > 0 {
        bail!("{} data error(s) found", report.error_count());
    }
    Ok(())
}

/// This run's arguments without --resume and the test hook, for the resume hint.
fn resume_command_line() -> String {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next() {
        if a == "--stop-after-step" || a == "--resume" {
            if args.peek().is_some_and(|n| !n.starts_with("--")) {
                args.next();
            }
            continue;
        }
        if a.starts_with("--stop-after-step=") || a.starts_with("--resume=") {
            continue;
        }
        out.push(if a.contains(' ') { format!("{a:?}") } else { a });
    }
    out.join(" ")
}
