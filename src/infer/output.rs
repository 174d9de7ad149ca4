//! Predictions for people and programs: the JSON line of a prediction (with the ranked labels
//! on request) and a table for a terminal.

use super::{ranked, Prediction};
use crate::data::InputText;
use crate::display::{clip, label, LABEL_CHARS};
use crate::model::Task;
use serde_json::{Map, Value};
use std::fmt::Write;

/// The JSON line of one prediction: `{"text", "label", "score", "scores": {label: prob}}`, the
/// most probable label and every label's probability; a multi-label model adds `"labels"`,
/// those at or above their thresholds.
pub fn prediction_json(text: &str, p: &Prediction, labels: &[String], task: Task) -> Value {
    let scores: Map<String, Value> =
        labels.iter().zip(&p.probs).map(|(l, &s)| (l.clone(), Value::from(s as f64))).collect();
    let mut m = Map::new();
    m.insert("text".into(), Value::String(text.to_string()));
    m.insert("label".into(), Value::String(labels[p.label_id].clone()));
    m.insert("score".into(), Value::from(p.score as f64));
    if task == Task::MultiLabel {
        m.insert("labels".into(), p.labels.iter().map(|&l| Value::String(labels[l].clone())).collect());
    }
    m.insert("scores".into(), Value::Object(scores));
    Value::Object(m)
}

/// The `k` most probable labels of `p`, ranked: `[{"label", "score"}, ...]`.
pub fn ranked_json(p: &Prediction, labels: &[String], k: usize) -> Value {
    Value::Array(
        ranked(p, k).into_iter().map(|i| serde_json::json!({"label": labels[i], "score": p.probs[i]})).collect(),
    )
}

/// A readable table of predictions (`None`: an empty input line).
pub fn format_predictions_table(
    rows: &[(&InputText, Option<&Prediction>)],
    labels: &[String],
    top_k: Option<usize>,
    task: Task,
) -> String {
    const WIDTH: usize = 60;
    // A multi-label model's column holds every label at or above its threshold.
    let shown = |p: &Prediction| match task {
        Task::SingleLabel => label(&labels[p.label_id]),
        Task::MultiLabel if p.labels.is_empty() => "(none)".to_string(),
        Task::MultiLabel => label(&p.labels.iter().map(|&l| labels[l].as_str()).collect::<Vec<_>>().join("+")),
    };
    let clip = |s: &str| clip(&s.replace(['\n', '\r', '\t'], " "), WIDTH);
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).clamp(5, LABEL_CHARS);
    let mut s = format!("{:<WIDTH$}  {:<label_w$}  {:>6}", "text", "label", "score");
    if top_k.is_some() {
        s.push_str("  ranked");
    }
    s.push('\n');
    for (input, p) in rows {
        match p {
            Some(p) => {
                let _ = write!(s, "{:<WIDTH$}  {:<label_w$}  {:>6.3}", clip(&input.text), shown(p), p.score);
                if let Some(k) = top_k {
                    let ranked: Vec<String> =
                        ranked(p, k).into_iter().map(|i| format!("{} {:.3}", label(&labels[i]), p.probs[i])).collect();
                    let _ = write!(s, "  {}", ranked.join(", "));
                }
            }
            None => {
                let _ = write!(s, "{:<WIDTH$}  (line {}: empty text, not classified)", "", input.line);
            }
        }
        s.push('\n');
    }
    s
}
