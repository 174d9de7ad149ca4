//! `emotune check-data`.

use crate::data::DataSpec;
use anyhow::{bail, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckDataArgs {
    #[command(flatten)]
    pub data: DataSpec,
    /// A model whose tokenizer measures the texts (token-length distribution, rows over its
    /// maximum length).
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
}

pub fn run(args: CheckDataArgs) -> Result<()> {
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
    if let Some(path) = &args.json {
        crate::fsx::write_json_atomic(path, &serde_json::to_value(&report)?)?;
        writeln!(out, "report saved to {}", path.display())?;
    }
    if report.error_count() > 0 {
        bail!("{} data error(s) found", report.error_count());
    }
    Ok(())
}
