//! The out-of-fold probabilities of a cross-fitting, as a file: one JSON object per training
//! row (location, label, probabilities in label-id order as float32 values print), written by
//! `--save-probabilities` and read back by `--probabilities` (and by bench/cleanlab_anchor.py).

use crate::data::Split;
use crate::display::escape;
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(serde::Serialize)]
struct ProbabilityRow<'a> {
    location: String,
    label: &'a str,
    label_id: usize,
    /// float32, so that they print as the shortest decimals that read back to the same bits.
    probabilities: Vec<f32>,
}

/// Writes the out-of-fold probabilities: one JSON object per row of `split`, in its order, with
/// its location, label id and the probabilities in label-id order (as float32 values print).
pub fn write(path: &Path, split: &Split, probs: &[f64], labels: &[String]) -> Result<()> {
    let k = labels.len();
    let rows = split.examples.iter().enumerate().map(|(i, e)| ProbabilityRow {
        location: split.location(i),
        label: &labels[e.label()],
        label_id: e.label(),
        probabilities: probs[i * k..(i + 1) * k].iter().map(|&v| v as f32).collect(),
    });
    crate::fsx::write_json_lines_atomic(path, rows)
}

/// Reads what [`write`] wrote, for the rows of `split` (every one of them, with the
/// same labels): n × k, row-major, in the split's order.
pub fn read(path: &Path, split: &Split, labels: &[String]) -> Result<Vec<f64>> {
    #[derive(serde::Deserialize)]
    struct Row {
        location: String,
        label_id: usize,
        probabilities: Vec<f32>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let index: std::collections::HashMap<String, usize> = (0..split.len()).map(|i| (split.location(i), i)).collect();
    let k = labels.len();
    let mut probs = vec![f64::NAN; split.len() * k];
    let mut seen = vec![false; split.len()];
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), n + 1);
        let row: Row = serde_json::from_str(line).with_context(at)?;
        let Some(&i) = index.get(&row.location) else {
            bail!("{}: {} is not a row of the train split (probabilities of other data?)", at(), escape(&row.location));
        };
        if row.label_id != split.examples[i].label() || row.probabilities.len() != k || seen[i] {
            bail!(
                "{}: saved for another label, label set or run than this split's row {}",
                at(),
                escape(&row.location)
            );
        }
        seen[i] = true;
        for (j, &p) in row.probabilities.iter().enumerate() {
            probs[i * k + j] = p as f64;
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        bail!(
            "{}: no probabilities for {} (and {} more rows)",
            path.display(),
            escape(&split.location(i)),
            seen.iter().filter(|s| !**s).count() - 1
        );
    }
    Ok(probs)
}
