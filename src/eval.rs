//! `emotune eval`: a model on a labelled split, with the error analysis of the book: scores,
//! per-class report, confusion matrix (printed and as a PNG) and the highest-loss examples.

use crate::data::{self, DataSpec, Dataset, SplitName};
use crate::display::{clip, escape, label, ShortLocations};
use crate::explain::args::ExplanationJson;
use crate::infer::{evaluate, Predictor};
use crate::metrics::{self, MultiLabelReport, Report};
use crate::model::Task;
use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;

/// One of the examples the model got most wrong.
#[derive(Debug, Clone, Serialize)]
pub struct LossExample {
    pub location: String,
    pub text: String,
    pub gold: String,
    pub predicted: String,
    pub loss: f32,
    /// With `--explain-worst`: the predicted labels' explanations, then the gold ones'.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explanations: Vec<ExplanationJson>,
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
    /// The scores of a single-label model.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Report>,
    /// `confusion` divided by each row's total (gold label), as `normalize="true"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub confusion_normalized: Vec<Vec<f64>>,
    /// The scores of a multi-label model, at its thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabelReport>,
    pub highest_loss: Vec<LossExample>,
}

pub struct EvalOptions {
    pub split: SplitName,
    pub batch_size: usize,
    /// Only the first N examples.
    pub limit: Option<usize>,
    /// How many of the highest-loss examples to report.
    pub top_losses: usize,
    /// Truncate texts to this many tokens (default: the model's maximum).
    pub max_length: Option<usize>,
    /// One threshold for every label of a multi-label model, in place of its saved ones.
    pub threshold: Option<f32>,
    /// How the encoder's linear layers run (`--quantize`).
    pub quantize: Option<crate::model::Quantize>,
    /// The dtype the matmuls run in (`--dtype bf16`); None: f32.
    pub autocast: Option<candle_core::DType>,
    /// Explain the highest-loss examples' predicted and gold labels (`--explain-worst`).
    pub explain: Option<crate::explain::Options>,
}

/// Maps the dataset's label ids to the model's by name.
fn label_map(ds: &Dataset, model_labels: &[String]) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = model_labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    ds.labels
        .iter()
        .map(|l| {
            index.get(l.as_str()).copied().ok_or_else(|| {
                anyhow::anyhow!(
                    "the data's label \"{}\" is not a label of the model ({}); give --label-names to name the data's labels",
                    label(l),
                    crate::display::labels(model_labels)
                )
            })
        })
        .collect()
}

/// Evaluates `model` (a directory or Hub id) on one split of the data of `spec`.
pub fn run(model: &str, spec: &DataSpec, opts: &EvalOptions, device: &Device) -> Result<EvalReport> {
    let mut predictor = Predictor::load(model, opts.max_length, opts.quantize, device)?;
    predictor.model.autocast = opts.autocast;
    if let Some(t) = opts.threshold {
        predictor.set_threshold(t)?;
    }
    let (ds, split) = load_split(spec, opts)?;
    let map = label_map(&ds, predictor.labels())?;
    let labels = predictor.labels().to_vec();
    let gold: Vec<Vec<usize>> = split.examples.iter().map(|e| e.labels.iter().map(|&l| map[l]).collect()).collect();
    if predictor.task() == Task::SingleLabel && ds.multi_label {
        bail!("{}: the data has several labels per text, but {model} is a single-label model", ds.name);
    }
    let rows = predictor.encoder.tokenize(&split.texts())?;
    let cut = rows.iter().filter(|r| r.truncated).count();
    if cut > 0 {
        log::warn!("{cut} text(s) were longer than {} tokens and were truncated", predictor.encoder.max_length());
    }
    let pb = crate::progress::bar(rows.len() as u64, "evaluating", "text");
    let (p, thresholds) = (&predictor, &predictor.thresholds);
    let out = evaluate(&p.model, &p.encoder, &rows, &gold, thresholds, opts.batch_size, device, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    let names = |ids: &[usize]| ids.iter().map(|&l| labels[l].as_str()).collect::<Vec<_>>().join("+");
    let mut order: Vec<usize> = (0..gold.len()).collect();
    order.sort_by(|&a, &b| out.losses[b].total_cmp(&out.losses[a]).then(a.cmp(&b)));
    let mut highest_loss: Vec<LossExample> = order
        .iter()
        .take(opts.top_losses)
        .map(|&i| LossExample {
            location: split.location(i),
            text: split.examples[i].text.clone(),
            gold: names(&gold[i]),
            predicted: names(&out.preds[i]),
            loss: out.losses[i],
            explanations: Vec::new(),
        })
        .collect();
    if let Some(o) = &opts.explain {
        let explained = explain_worst(&predictor, &order[..highest_loss.len()], &split, (&out.preds, &gold), o)?;
        for (e, x) in highest_loss.iter_mut().zip(explained) {
            e.explanations = x;
        }
    }
    let mut report = EvalReport {
        model: model.to_string(),
        data: ds.name.clone(),
        split: opts.split.as_str().to_string(),
        examples: gold.len(),
        loss: out.loss,
        labels,
        metrics: None,
        confusion_normalized: Vec::new(),
        multi_label: None,
        highest_loss,
    };
    match predictor.task() {
        Task::SingleLabel => {
            let (g, p): (Vec<usize>, Vec<usize>) = gold.iter().zip(&out.preds).map(|(g, p)| (g[0], p[0])).unzip();
            let r = metrics::report(&g, &p, &report.labels);
            report.confusion_normalized = row_normalized(&r.confusion);
            report.metrics = Some(r);
        }
        Task::MultiLabel => report.multi_label = Some(metrics::multilabel_report(&gold, &out.preds, &report.labels)),
    }
    Ok(report)
}

/// The dataset and its split `opts.split`, cut to `opts.limit` examples.
fn load_split(spec: &DataSpec, opts: &EvalOptions) -> Result<(Dataset, data::Split)> {
    let ds = data::load(spec)?;
    let Some(split) = ds.split(opts.split.as_str()) else {
        let have: Vec<&str> = ds.splits.iter().map(|s| s.name.as_str()).collect();
        bail!("{}: no {} split (it has: {})", ds.name, opts.split.as_str(), have.join(", "));
    };
    let mut split = split.clone();
    if let Some(n) = opts.limit {
        split.truncate(n);
    }
    Ok((ds, split))
}

/// Each row divided by its total (as scikit-learn's `normalize="true"`).
fn row_normalized(confusion: &[Vec<usize>]) -> Vec<Vec<f64>> {
    confusion
        .iter()
        .map(|row| {
            let t: usize = row.iter().sum();
            row.iter().map(|&c| if t == 0 { 0.0 } else { c as f64 / t as f64 }).collect()
        })
        .collect()
}

/// The explanations of the examples `rows` of `split`: their predicted labels', then the gold
/// labels they lack.
fn explain_worst(
    predictor: &Predictor,
    rows: &[usize],
    split: &data::Split,
    (preds, gold): (&[Vec<usize>], &[Vec<usize>]),
    opts: &crate::explain::Options,
) -> Result<Vec<Vec<ExplanationJson>>> {
    let pb = crate::progress::bar(rows.len() as u64, "explaining", "text");
    let mut out = Vec::with_capacity(rows.len());
    for &i in rows {
        let mut labels = preds[i].clone();
        labels.extend(gold[i].iter().filter(|g| !preds[i].contains(g)));
        let (p, text) = (predictor, &split.examples[i].text);
        let es = crate::explain::explain(&p.model, &p.encoder, text, &labels, opts, &p.device)?;
        out.push(es.iter().map(|e| ExplanationJson::new(e, p.labels())).collect());
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The report as text: scores, per-class table, confusion matrix (counts and rates), worst
/// examples.
pub fn format_report(r: &EvalReport, colour: bool) -> String {
    let (model, data) = (escape(&r.model), escape(&r.data));
    let mut s = format!("{model} on {data} ({} split, {} examples)\n\n", r.split, r.examples);
    let names: Vec<String> = r.labels.iter().map(|l| label(l)).collect();
    let w = names.iter().map(|l| l.chars().count()).max().unwrap_or(5).max(9);
    if let Some(m) = &r.metrics {
        write_single_label(&mut s, r, m, &names, w);
    }
    if let Some(m) = &r.multi_label {
        let _ = writeln!(
            s,
            "loss {:.4}   micro F1 {:.4}   macro F1 {:.4}   weighted F1 {:.4}   samples F1 {:.4}   exact match {:.4}\n",
            r.loss, m.f1_micro, m.f1_macro, m.f1_weighted, m.f1_samples, m.subset_accuracy
        );
        write_per_class(&mut s, &m.per_class, &names, w);
    }
    if !r.highest_loss.is_empty() {
        // Locations short (`test:817`), the files named once; each text on a line of its own.
        let short = ShortLocations::new(r.highest_loss.iter().map(|e| (r.split.as_str(), e.location.as_str())));
        let _ = write!(s, "\n{} highest-loss examples, from\n{}", r.highest_loss.len(), short.legend());
        for e in &r.highest_loss {
            let (gold, pred, at) = (label(&e.gold), label(&e.predicted), escape(&short.show(&e.location)));
            let _ = writeln!(s, "  {at:<10} loss {:>6.3}  gold {gold:<w$}  predicted {pred}", e.loss);
            let _ = writeln!(s, "      {}", clip(&e.text, 92));
            for x in &e.explanations {
                let _ = writeln!(s, "      why {}", x.describe(&e.text, colour));
            }
        }
    }
    s
}

fn write_per_class(s: &mut String, per_class: &[metrics::ClassScores], names: &[String], w: usize) {
    let _ = writeln!(s, "{:<w$}  {:>9}  {:>9}  {:>9}  {:>7}", "", "precision", "recall", "f1-score", "support");
    for (c, name) in per_class.iter().zip(names) {
        let _ = writeln!(s, "{name:<w$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7}", c.precision, c.recall, c.f1, c.support);
    }
}

/// Scores, per-class table and the confusion matrix (counts and rates) of a single-label model.
fn write_single_label(s: &mut String, r: &EvalReport, m: &Report, names: &[String], w: usize) {
    let _ = writeln!(
        s,
        "loss {:.4}   accuracy {:.4}   F1 weighted {:.4}   F1 macro {:.4}\n",
        r.loss, m.accuracy, m.f1_weighted, m.f1_macro
    );
    write_per_class(s, &m.per_class, names, w);
    s.push_str("\nconfusion matrix (rows: true label, columns: predicted)\n");
    let cw = w.max(8);
    let header: String = r.labels.iter().map(|l| format!("{:>cw$}", clip(l, cw))).collect::<Vec<_>>().join(" ");
    let _ = writeln!(s, "{:<w$}  {header}", "");
    for (l, row) in names.iter().zip(&m.confusion) {
        let cells: String = row.iter().map(|c| format!("{c:>cw$}")).collect::<Vec<_>>().join(" ");
        let _ = writeln!(s, "{l:<w$}  {cells}");
    }
    s.push_str("\nrow-normalised (recall per true label)\n");
    let _ = writeln!(s, "{:<w$}  {header}", "");
    for (l, row) in names.iter().zip(&r.confusion_normalized) {
        let cells: String = row.iter().map(|c| format!("{c:>cw$.3}")).collect::<Vec<_>>().join(" ");
        let _ = writeln!(s, "{l:<w$}  {cells}");
    }
}
