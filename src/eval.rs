//! `emotune eval`: a model on a labelled split, with the error analysis of the book: scores,
//! per-class report, confusion matrix (printed and as a PNG) and the highest-loss examples.

use crate::data::{self, DataSpec, Dataset};
use crate::infer::{clip, evaluate, Predictor};
use crate::metrics::{self, Report};
use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::collections::HashMap;

/// One of the examples the model got most wrong.
#[derive(Debug, Clone, Serialize)]
pub struct LossExample {
    pub location: String,
    pub text: String,
    pub gold: String,
    pub predicted: String,
    pub loss: f32,
}

/// Everything `eval` reports (its `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub split: String,
    pub examples: usize,
    pub loss: f64,
    pub labels: Vec<String>,
    #[serde(flatten)]
    pub metrics: Report,
    /// `confusion` divided by each row's total (gold label), as `normalize="true"`.
    pub confusion_normalized: Vec<Vec<f64>>,
    pub highest_loss: Vec<LossExample>,
}

pub struct EvalOptions {
    pub split: String,
    pub batch_size: usize,
    pub limit: Option<usize>,
    pub top_losses: usize,
}

/// Maps the dataset's label ids to the model's by name.
fn label_map(ds: &Dataset, model_labels: &[String]) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = model_labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    ds.labels
        .iter()
        .map(|l| {
            index.get(l.as_str()).copied().ok_or_else(|| {
                anyhow::anyhow!(
                    "the data's label {l:?} is not a label of the model ({}); give --label-names to name the data's labels",
                    model_labels.join(", ")
                )
            })
        })
        .collect()
}

pub fn run(
    model: &str,
    spec: &DataSpec,
    opts: &EvalOptions,
    max_length: Option<usize>,
    device: &Device,
) -> Result<EvalReport> {
    let predictor = Predictor::load(model, max_length, device)?;
    let mut ds = data::load(spec)?;
    let Some(split) = ds.split_mut(&opts.split) else {
        let have: Vec<&str> = ds.splits.iter().map(|s| s.name.as_str()).collect();
        bail!("{}: no {} split (it has: {})", ds.name, opts.split, have.join(", "));
    };
    if let Some(n) = opts.limit {
        split.truncate(n);
    }
    let split = ds.split(&opts.split).expect("checked above").clone();
    let map = label_map(&ds, predictor.labels())?;
    let labels = predictor.labels().to_vec();
    let gold: Vec<usize> = split.examples.iter().map(|e| map[e.label]).collect();
    let texts: Vec<&str> = split.examples.iter().map(|e| e.text.as_str()).collect();
    let rows = predictor.encoder.tokenize(&texts)?;
    let cut = rows.iter().filter(|r| r.truncated).count();
    if cut > 0 {
        log::warn!("{cut} text(s) were longer than {} tokens and were truncated", predictor.encoder.max_length());
    }
    let pb = crate::train::progress_bar(rows.len() as u64, "evaluating");
    let out =
        evaluate(&predictor.model, &predictor.encoder, &rows, &gold, opts.batch_size, device, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    let report = metrics::report(&gold, &out.preds, &labels);
    let confusion_normalized = report
        .confusion
        .iter()
        .map(|row| {
            let t: usize = row.iter().sum();
            row.iter().map(|&c| if t == 0 { 0.0 } else { c as f64 / t as f64 }).collect()
        })
        .collect();
    let mut order: Vec<usize> = (0..gold.len()).collect();
    order.sort_by(|&a, &b| out.losses[b].total_cmp(&out.losses[a]).then(a.cmp(&b)));
    let highest_loss = order
        .into_iter()
        .take(opts.top_losses)
        .map(|i| LossExample {
            location: split.location(i),
            text: split.examples[i].text.clone(),
            gold: labels[gold[i]].clone(),
            predicted: labels[out.preds[i]].clone(),
            loss: out.losses[i],
        })
        .collect();
    Ok(EvalReport {
        model: model.to_string(),
        data: ds.name.clone(),
        split: opts.split.clone(),
        examples: gold.len(),
        loss: out.loss,
        labels,
        metrics: report,
        confusion_normalized,
        highest_loss,
    })
}

/// The report as text: scores, per-class table, confusion matrix (counts and rates), worst
/// examples.
pub fn format_report(r: &EvalReport) -> String {
    let mut s = format!("{} on {} ({} split, {} examples)\n\n", r.model, r.data, r.split, r.examples);
    s.push_str(&format!(
        "loss {:.4}   accuracy {:.4}   F1 weighted {:.4}   F1 macro {:.4}\n\n",
        r.loss, r.metrics.accuracy, r.metrics.f1_weighted, r.metrics.f1_macro
    ));
    let w = r.labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).max(9);
    s.push_str(&format!("{:<w$}  {:>9}  {:>9}  {:>9}  {:>7}\n", "", "precision", "recall", "f1-score", "support"));
    for c in &r.metrics.per_class {
        s.push_str(&format!(
            "{:<w$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}\n",
            c.label, c.precision, c.recall, c.f1, c.support
        ));
    }
    s.push_str("\nconfusion matrix (rows: true label, columns: predicted)\n");
    let cw = w.max(8);
    let header: String = r.labels.iter().map(|l| format!("{:>cw$}", clip(l, cw))).collect::<Vec<_>>().join(" ");
    s.push_str(&format!("{:<w$}  {header}\n", ""));
    for (l, row) in r.labels.iter().zip(&r.metrics.confusion) {
        let cells: String = row.iter().map(|c| format!("{c:>cw$}")).collect::<Vec<_>>().join(" ");
        s.push_str(&format!("{l:<w$}  {cells}\n"));
    }
    s.push_str("\nrow-normalised (recall per true label)\n");
    s.push_str(&format!("{:<w$}  {header}\n", ""));
    for (l, row) in r.labels.iter().zip(&r.confusion_normalized) {
        let cells: String = row.iter().map(|c| format!("{c:>cw$.3}")).collect::<Vec<_>>().join(" ");
        s.push_str(&format!("{l:<w$}  {cells}\n"));
    }
    if !r.highest_loss.is_empty() {
        s.push_str(&format!("\n{} highest-loss examples\n", r.highest_loss.len()));
        for e in &r.highest_loss {
            s.push_str(&format!(
                "  loss {:>7.3}  gold {:<w$} predicted {:<w$} {}  {}\n",
                e.loss,
                e.gold,
                e.predicted,
                e.location,
                clip(&e.text, 100)
            ));
        }
    }
    s
}
