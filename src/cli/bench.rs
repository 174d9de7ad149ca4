//! `emotune bench`.

use crate::bench::{BenchOptions, KernelTime, ShapeReport};
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model shape (a config.json; default: distilbert-base-uncased's, built in). Weights
    /// are random.
    #[arg(long, value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Texts per batch.
    #[arg(long = "batch-size", alias = "batch", default_value_t = 64, value_name = "N")]
    pub batch: usize,
    /// Tokens per row; repeat for several shapes (default: 24, 40, 64, 87).
    #[arg(long, value_name = "TOKENS")]
    pub seq: Vec<usize>,
    /// Measured steps per shape (the median is reported).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub steps: usize,
    /// Unmeasured warm-up runs per shape, before each timing (training steps, batch forwards,
    /// one-text forwards).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub warmup: usize,
    /// Forward passes of one text behind the latency p50 and p99.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub latency_runs: usize,
    /// Threads for the kernels (default: rayon's, one per core), to measure thread scaling.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// One JSON object per shape instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also report the time per training step spent in each fused kernel, and what the forward
    /// and backward spend outside them (autograd bookkeeping, candle's own ops).
    #[arg(long, conflicts_with_all = ["skip_training", "quantize"])]
    pub profile: bool,
    /// Measure inference only (no training steps).
    #[arg(long)]
    pub skip_training: bool,
    /// Quantise the encoder's linear layers as `predict --quantize` does, and measure inference
    /// only (a quantised model cannot train).
    #[arg(long, value_enum)]
    pub quantize: Option<crate::model::Quantize>,
    /// Instead of measuring, write a randomly initialised model of --config's shape to this
    /// directory (with --tokenizer's tokenizer files), to time whole training runs with
    /// `emotune train --model DIR`. Its weights have learned nothing.
    #[arg(long, value_name = "DIR")]
    pub write_model: Option<PathBuf>,
    /// Where --write-model takes the tokenizer from (a model directory or Hub id).
    #[arg(
        long,
        default_value = "sentence-transformers/all-MiniLM-L6-v2",
        requires = "write_model",
        value_name = "MODEL"
    )]
    pub tokenizer: String,
    /// Time explanations instead (as `predict --explain`): one text of each --seq length
    /// (default 24) explained by --model, --latency-runs times after --warmup, in --dtype.
    #[arg(long, requires = "model", conflicts_with_all = ["profile", "skip_training", "quantize", "write_model"], help_heading = "Explanations")]
    pub explain: bool,
    /// The model --explain times (a directory or Hub id).
    #[arg(long, short, value_name = "MODEL", requires = "explain", help_heading = "Explanations")]
    pub model: Option<String>,
    #[command(flatten)]
    pub explain_how: crate::explain::args::ExplainHow,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let shape = crate::bench::Shape::load(args.config.as_deref())?;
    let mut out = std::io::stdout().lock();
    if let Some(dir) = &args.write_model {
        crate::bench::write_random_model(&shape, &args.tokenizer, dir)?;
        writeln!(out, "wrote a randomly initialised model (speed work only) to {}", dir.display())?;
        return Ok(());
    }
    let seqs = if args.seq.is_empty() { vec![24, 40, 64, 87] } else { args.seq.clone() };
    if args.batch == 0 || args.steps == 0 || args.latency_runs == 0 || seqs.contains(&0) {
        bail!("--batch, --seq, --steps and --latency-runs must be at least 1");
    }
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("--threads {n}: the thread pool is already set up ({e})"))?;
    }
    if let Some(model) = &args.model {
        return time_explanations(&args, model, &seqs, &mut out);
    }
    args.explain_how.options(false, "--explain")?;
    let (device, autocast) = args.compute.resolve_training()?;
    let opts = BenchOptions {
        batch: args.batch,
        seqs,
        steps: args.steps,
        warmup: args.warmup,
        latency_runs: args.latency_runs,
        profile: args.profile,
        train: !args.skip_training,
        quantize: crate::model::inference_format(args.quantize, args.compute.dtype(), &device)?,
        bf16: autocast.is_some(),
    };
    if let (Some(kernel), false) = (crate::bench::inference_kernel(opts.quantize, &device, opts.bf16), args.json) {
        writeln!(out, "inference: the encoder's linear layers {kernel}")?;
    }
    if opts.train && !args.json {
        let training = match (opts.bf16, device.is_cpu()) {
            (true, true) => format!("bf16 on {}", crate::model::kernels::amx::name()),
            (true, false) => "bf16 matmuls (autocast)".to_string(),
            (false, _) => "float32".to_string(),
        };
        writeln!(
            out,
            "training: the encoder's linear layers in {training}; on {}",
            crate::cpu::CpuIdentity::current().describe()
        )?;
    }
    if !args.json {
        writeln!(
            out,
            "{:>5} {:>4} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>10} {:>9} {:>9} | {:>8}",
            "batch",
            "seq",
            "step s",
            "fwd s",
            "bwd s",
            "optim s",
            "eval s",
            "texts/s",
            "1 p50 ms",
            "1 p99 ms",
            "peak MB"
        )?;
    }
    crate::bench::run(&shape, &opts, &device, |r| {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        } else {
            print_row(&mut out, r)?;
        }
        Ok(())
    })
}

/// `bench --explain`: one row per length.
fn time_explanations(args: &BenchArgs, model: &str, seqs: &[usize], out: &mut impl Write) -> Result<()> {
    let seqs = if args.seq.is_empty() { &[24][..] } else { seqs };
    let (device, _) = args.compute.resolve()?;
    let mut opts = args.explain_how.options(true, "--explain")?.expect("explanations are on");
    opts.autocast = crate::explain::precision(&device, args.compute.dtype());
    let predictor = crate::infer::Predictor::load(model, None, None, &device)?;
    if !args.json {
        let cpu = crate::cpu::CpuIdentity::current().describe();
        writeln!(out, "explanations of {model}: Integrated Gradients, {} steps; on {cpu}", opts.steps)?;
        writeln!(out, "{:>6} {:>6} {:>6} {:>10} {:>10}", "tokens", "steps", "dtype", "median ms", "p90 ms")?;
    }
    for &tokens in seqs {
        let t = crate::bench::time_explanations(&predictor, tokens, &opts, (args.warmup, args.latency_runs))?;
        match args.json {
            true => writeln!(out, "{}", serde_json::to_string(&t)?)?,
            false => writeln!(
                out,
                "{:>6} {:>6} {:>6} {:>10.1} {:>10.1}",
                t.tokens,
                t.steps,
                t.dtype,
                t.median_s * 1e3,
                t.p90_s * 1e3
            )?,
        }
    }
    Ok(())
}

/// Seconds to 3 decimals, or a dash for what was not measured.
fn secs(s: Option<f64>) -> String {
    s.map_or_else(|| "-".to_string(), |s| format!("{s:.3}"))
}

fn print_row(out: &mut impl Write, r: &ShapeReport) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>5} {:>4} | {:>9} {:>9} {:>9} {:>9} | {:>9.3} {:>10.1} {:>9.1} {:>9.1} | {:>8.0}",
        r.batch,
        r.seq,
        secs(r.train_step_s),
        secs(r.forward_s),
        secs(r.backward_s),
        secs(r.optimizer_s),
        r.eval_forward_s,
        r.predict_texts_per_s,
        r.one_text_p50_s * 1e3,
        r.one_text_p99_s * 1e3,
        r.peak_rss_mb
    )?;
    let rates: Vec<String> = r.throughput.iter().map(|t| format!("batch {} {:.1}", t.batch, t.texts_per_s)).collect();
    writeln!(out, "      texts/s: {}", rates.join(", "))?;
    if !r.kernels.is_empty() {
        print_kernel_profile(out, r)?;
    }
    Ok(())
}

fn print_kernel_profile(out: &mut impl Write, r: &ShapeReport) -> std::io::Result<()> {
    let in_backward = |k: &KernelTime| k.kernel.ends_with("-backward");
    // Sections within a kernel (named "· ...") are already inside their kernel's time.
    let sum = |bwd: bool| {
        r.kernels
            .iter()
            .filter(|k| in_backward(k) == bwd && !k.kernel.starts_with('·'))
            .map(|k| k.seconds_per_step)
            .sum::<f64>()
    };
    writeln!(out, "      {:<32} {:>9} {:>7}", "kernel (per training step)", "s", "calls")?;
    for k in &r.kernels {
        writeln!(out, "      {:<32} {:>9.3} {:>7.0}", k.kernel, k.seconds_per_step, k.calls_per_step)?;
    }
    let (fwd, bwd) = (r.forward_s.unwrap_or(f64::NAN), r.backward_s.unwrap_or(f64::NAN));
    writeln!(out, "      {:<32} {:>9.3}", "forward outside kernels", fwd - sum(false))?;
    writeln!(out, "      {:<32} {:>9.3}", "backward outside kernels", bwd - sum(true))
}
