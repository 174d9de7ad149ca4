//! The `emotune` command line: one file per command, each with its flags and what it runs.
//! Flags shared by several commands are groups flattened into them ([`crate::data::DataSpec`],
//! [`crate::train::TrainConfig`]), so every default is written once.

mod bench;
mod check_data;
mod eval;
mod predict;
mod serve;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "emotune", version, about = "Fine-tune, evaluate and serve emotion classifiers")]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Logging")]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, help_heading = "Logging")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Classify texts (arguments, --input or standard input): a table on a terminal, JSON lines
    /// otherwise (--format).
    Predict(predict::PredictArgs),
    /// Fine-tune a model on a labelled dataset (defaults: the seed recipe).
    Train(Box<train::TrainArgs>),
    /// Evaluate a model on a labelled split: scores, per-class report, confusion matrix, worst examples.
    Eval(eval::EvalArgs),
    /// Check a dataset's integrity: label counts, unusable rows, conflicting labels, leakage,
    /// duplicates, control characters, token lengths. Exits 1 when it finds errors.
    CheckData(check_data::CheckDataArgs),
    /// Serve a model over HTTP (text-embeddings-inference's /predict API, batching, metrics, a page).
    Serve(serve::ServeArgs),
    /// Time training steps and inference of a randomly initialised model (speed work only).
    Bench(bench::BenchArgs),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Train(args), Some(("train", m))) = (&mut cli.command, matches.subcommand()) {
        // `--resume` takes from the checkpoint every setting not given here.
        let given = m.ids().filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine));
        args.given = given.map(|id| id.as_str().to_string()).collect();
    }
    init_logging(cli.verbose, cli.quiet);
    match run(cli) {
        Ok(()) => 0,
        // The reader of our output went away (`emotune predict ... | head`): stop quietly, as
        // ripgrep does.
        Err(e) if is_broken_pipe(&e) => 0,
        // Messages quote data and configs; what reaches the terminal is escaped.
        Err(e) => {
            eprintln!("{} {}", crate::display::severity("error"), crate::display::escape(&format!("{e:#}")));
            1
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn init_logging(verbose: u8, quiet: bool) {
    crate::progress::set_quiet(quiet);
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let env = env_logger::Env::default().default_filter_or(format!("emotune={level},warn"));
    // One style for what users read (`error:`, `warning:`); the module only on -v's log lines.
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            use std::io::Write;
            match record.level() {
                log::Level::Error => writeln!(buf, "{} {}", crate::display::severity("error"), record.args()),
                log::Level::Warn => writeln!(buf, "{} {}", crate::display::severity("warning"), record.args()),
                level => writeln!(buf, "[{level} {}] {}", record.target(), record.args()),
            }
        })
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Predict(args) => predict::run(args),
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::CheckData(args) => check_data::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
