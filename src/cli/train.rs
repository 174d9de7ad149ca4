//! `emotune train`.

use crate::data::DataSpec;
use crate::display::last_segment;
use crate::infer::{output::prediction_json, Predictor};
use crate::train::{format_table, RunControl, TrainConfig, TrainOutcome};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub recipe: TrainConfig,
    #[command(flatten)]
    pub data: DataSpec,
    #[command(flatten)]
    pub compute: crate::device::ComputeArgs,
    /// Where to write the fine-tuned model (default: <model>-finetuned-<dataset>).
    #[arg(long, short, help_heading = "Output", value_name = "DIR", aliases = ["output_dir"])]
    pub output_dir: Option<PathBuf>,
    /// After training, classify these texts with the new model (repeatable).
    #[arg(long = "predict", help_heading = "Output", value_name = "TEXT")]
    pub predict: Vec<String>,
    /// Continue from a checkpoint: the given one, or the newest in --output-dir.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT", help_heading = "Checkpoints and the best model")]
    pub resume: Option<Option<PathBuf>>,
    /// Stop after this optimiser step as an interrupt would: write a checkpoint, print the
    /// command that resumes, exit with status 130 (to split a run into sessions).
    #[arg(long, value_name = "STEP", help_heading = "Checkpoints and the best model")]
    pub stop_after_step: Option<usize>,
    /// Run the learning-rate range test instead of training: the recipe's optimiser from 1e-7
    /// upwards over --find-lr-steps batches; prints the suggested rates and writes lr_find.png
    /// and lr_find.jsonl into --output-dir (nothing else is trained or saved).
    #[arg(long, help_heading = "Learning rate", conflicts_with_all = ["resume", "stop_after_step", "predict"])]
    pub find_lr: bool,
    /// Batches of the range test (it stops earlier once the loss diverges).
    #[arg(long, default_value_t = 100, value_name = "N", requires = "find_lr", help_heading = "Learning rate")]
    pub find_lr_steps: usize,
    /// The ids of the flags given on the command line (the rest come from the checkpoint when
    /// resuming).
    #[arg(skip)]
    pub given: Vec<String>,
}

pub fn run(mut args: TrainArgs) -> Result<()> {
    if let Some(Some(ckpt)) = &args.resume {
        // An explicit checkpoint knows its run: settings not given here, and where it lives.
        (args.recipe, args.data) = crate::train::settings_from_checkpoint(ckpt, &args.recipe, &args.data, &args.given)?;
        if args.output_dir.is_none() {
            args.output_dir = ckpt.parent().map(std::path::Path::to_path_buf);
        }
    }
    let mut cfg = args.recipe;
    let (device, autocast) = args.compute.resolve_training()?;
    cfg.bf16 = autocast.is_some();
    cfg.output_dir = args.output_dir.unwrap_or_else(|| default_output_dir(&cfg.model, &args.data));
    if args.find_lr {
        refuse_unused_by_find_lr(&args.given)?;
        return find_lr(&cfg, &args.data, &device, args.find_lr_steps);
    }
    let control = RunControl {
        resume: args.resume.map(|p| p.map_or(crate::train::Resume::Latest, crate::train::Resume::Dir)),
        stop_after_step: args.stop_after_step,
    };
    let handler = ctrlc::set_handler(|| {
        crate::status!("\ninterrupt: finishing the current step and writing a checkpoint (interrupt again to abort)");
        if crate::train::stop_requested() {
            std::process::exit(130);
        }
        crate::train::request_stop();
    });
    if let Err(e) = handler {
        log::warn!("no interrupt handler ({e}): Ctrl-C will end the run without a checkpoint");
    }
    let outcome = crate::train::train_with(&cfg, &args.data, &device, &control)?;
    let mut out = std::io::stdout().lock();
    if outcome.rows.is_empty() {
        crate::status!("no epoch ended before the stop, so there are no results yet");
    } else {
        writeln!(out, "{}", format_table(&outcome.rows).trim_end())?;
    }
    if let Some(ckpt) = &outcome.interrupted_at {
        let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
        crate::status!(
            "stopped at step {}/{}; checkpoint {}. Resume with the same arguments plus --resume:\n  emotune {} --resume {}",
            outcome.steps_done,
            outcome.total_steps,
            ckpt.display(),
            resume_command_line(&args),
            shlex::try_quote(&ckpt.to_string_lossy()).unwrap_or_default()
        );
        std::process::exit(130);
    }
    report(&mut out, &cfg, &outcome)?;
    if !args.predict.is_empty() {
        let predictor = Predictor::from_dir(&outcome.output_dir, cfg.max_length, &device)?;
        let texts: Vec<&str> = args.predict.iter().map(String::as_str).collect();
        for (text, p) in texts.iter().zip(predictor.predict(&texts, cfg.eval_batch_size)?) {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&prediction_json(text, &p, predictor.labels(), predictor.task()))?
            )?;
        }
    }
    Ok(())
}

/// The recipe's flags the range test has no use for (it sets the rate itself, runs no epochs,
/// evaluates and saves nothing): given with --find-lr, they are an error rather than ignored.
fn refuse_unused_by_find_lr(given: &[String]) -> Result<()> {
    const UNUSED: [(&str, &str); 14] = [
        ("learning_rate", "--learning-rate"),
        ("num_train_epochs", "--epochs"),
        ("max_steps", "--max-steps"),
        ("warmup_steps", "--warmup-steps"),
        ("warmup_ratio", "--warmup-ratio"),
        ("eval_batch_size", "--eval-batch-size"),
        ("eval_limit", "--eval-limit"),
        ("save_steps", "--save-steps"),
        ("save_total_limit", "--save-total-limit"),
        ("early_stopping_patience", "--early-stopping-patience"),
        ("metric_for_best", "--metric-for-best"),
        ("load_best_at_end", "--load-best-at-end"),
        ("tune_thresholds", "--tune-thresholds"),
        ("logging_steps", "--logging-steps"),
    ];
    let unused: Vec<&str> =
        UNUSED.iter().filter(|(id, _)| given.iter().any(|g| g == id)).map(|(_, flag)| *flag).collect();
    if !unused.is_empty() {
        anyhow::bail!("--find-lr sets the rate itself and trains no epochs: {} would do nothing", unused.join(", "));
    }
    Ok(())
}

/// `train --find-lr`: the range test, its suggestions and where its points went.
fn find_lr(cfg: &TrainConfig, data: &DataSpec, device: &candle_core::Device, steps: usize) -> Result<()> {
    let test = crate::train::lr_find::run(cfg, data, device, steps)?;
    crate::train::lr_find::write(&cfg.output_dir, &test)?;
    let mut out = std::io::stdout().lock();
    let last = test.points.last().map_or(0.0, |p| p.learning_rate);
    let how = if test.stopped_early { "stopped when the loss diverged" } else { "ran every step" };
    writeln!(out, "learning-rate range test: {} steps, rates 1e-7 to {last:.2e} ({how})", test.points.len())?;
    writeln!(out, "suggested learning rate: {:.2e} (steepest descent of the loss)", test.steepest)?;
    writeln!(out, "                         {:.2e} (a tenth of the rate at the loss's minimum)", test.minimum_tenth)?;
    writeln!(
        out,
        "points: {}, plot: {}",
        cfg.output_dir.join("lr_find.jsonl").display(),
        cfg.output_dir.join("lr_find.png").display()
    )?;
    writeln!(out, "train with it: emotune train ... --learning-rate {:.1e}", test.minimum_tenth)?;
    Ok(())
}

/// The best epoch and the totals, after the table.
fn report(out: &mut impl Write, cfg: &TrainConfig, outcome: &TrainOutcome) -> std::io::Result<()> {
    if let Some(best) = &outcome.best {
        let r = &outcome.rows[best.row];
        writeln!(
            out,
            "best: epoch {:.1} (step {}) by {} = {:.4}{}{}",
            r.epoch,
            r.step,
            cfg.metric_for_best.name(),
            best.value,
            if outcome.loaded_best { "; the saved model is that epoch's" } else { "" },
            if outcome.stopped_early { "; stopped early" } else { "" }
        )?;
    }
    writeln!(
        out,
        "\n{} steps in {:.1} s; model written to {}",
        outcome.steps_done,
        outcome.wall_seconds,
        outcome.output_dir.display()
    )
}

/// `<model>-finetuned-<dataset>`, from the last path segments (as the Trainer's examples name it).
fn default_output_dir(model: &str, data: &DataSpec) -> PathBuf {
    let ds = match (&data.dataset, &data.train) {
        (Some(d), _) => last_segment(d).to_string(),
        (None, Some(t)) => t.file_stem().map_or("data".into(), |s| s.to_string_lossy().into_owned()),
        (None, None) => "data".into(),
    };
    PathBuf::from(format!("{}-finetuned-{ds}", last_segment(model)))
}

/// `args` (the command line after the program name) without `--resume` and the test hook, quoted
/// for a POSIX shell: the command to resume an interrupted run.
fn resume_command_line(args: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if a == "--stop-after-step" || a == "--resume" {
            if it.peek().is_some_and(|n| !n.starts_with("--")) {
                it.next();
            }
            continue;
        }
        if a.starts_with("--stop-after-step=") || a.starts_with("--resume=") {
            continue;
        }
        out.push(a);
    }
    shlex::try_join(out).unwrap_or_else(|_| "<arguments with NUL bytes>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resume_command_line_quotes_for_the_shell_and_drops_resume() {
        let line = resume_command_line(&args(&[
            "train",
            "--model",
            "my model",
            "--predict",
            "it's \"great\"",
            "--resume",
            "out/checkpoint-5",
            "--stop-after-step=3",
            "--epochs",
            "2",
        ]));
        assert_eq!(line, r#"train --model 'my model' --predict "it's \"great\"" --epochs 2"#);
        // A shell splits it back into the same words.
        let words = shlex::split(&line).unwrap();
        assert_eq!(words, args(&["train", "--model", "my model", "--predict", "it's \"great\"", "--epochs", "2"]));
        assert_eq!(resume_command_line(&args(&["train", "--resume", "--epochs", "3"])), "train --epochs 3");
    }

    #[test]
    fn default_output_dir_names_model_and_dataset() {
        let data = DataSpec { dataset: Some("dair-ai/emotion".into()), ..Default::default() };
        assert_eq!(
            default_output_dir("distilbert-base-uncased", &data),
            PathBuf::from("distilbert-base-uncased-finetuned-emotion")
        );
        let data = DataSpec { train: Some("data/my train.csv".into()), ..Default::default() };
        assert_eq!(default_output_dir("./models/mini/", &data), PathBuf::from("mini-finetuned-my train"));
    }
}
