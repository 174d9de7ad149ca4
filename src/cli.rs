//! The `emotune` command line.

use crate::infer::{prediction_json, Predictor};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

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
    /// Time training steps and inference of a randomly initialised model (speed work only).
    Bench(BenchArgs),
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
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A model directory or a Hub id of a text-classification model.
    #[arg(long, short)]
    pub model: String,
    /// Texts to classify.
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    #[arg(long)]
    pub max_length: Option<usize>,
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
        Command::Bench(args) => bench(args),
    }
}

fn predict(args: PredictArgs) -> Result<()> {
    for (i, t) in args.texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("text {} is empty", i + 1);
        }
    }
    let device = Device::Cpu;
    let predictor = Predictor::load(&args.model, args.max_length, &device)?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let preds = predictor.predict(&texts, args.batch_size)?;
    let truncated = preds.iter().filter(|p| p.truncated).count();
    if truncated > 0 {
        log::warn!(
            "{truncated} text(s) were longer than {} tokens and were truncated",
            predictor.encoder.max_length()
        );
    }
    let labels = predictor.labels();
    for (text, p) in texts.iter().zip(&preds) {
        println!("{}", serde_json::to_string(&prediction_json(text, p, labels))?);
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let seqs = if args.seq.is_empty() { vec![24, 40, 64, 87] } else { args.seq.clone() };
    if args.batch == 0 || args.steps == 0 || seqs.contains(&0) {
        bail!("--batch, --seq and --steps must be at least 1");
    }
    let opts = crate::bench::BenchOptions { batch: args.batch, seqs, steps: args.steps, warmup: args.warmup };
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
        }
    })
}
