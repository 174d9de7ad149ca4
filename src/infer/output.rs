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

/// A readable table of predictions (`None`: an empty input line), `width` columns wide: the
/// text gets what the other columns leave. With `top_k`, the ranking replaces the label and
/// score columns (its first entry is the label).
pub fn format_predictions_table(
    rows: &[(&InputText, Option<&Prediction>)],
    labels: &[String],
    top_k: Option<usize>,
    task: Task,
    width: usize,
) -> String {
    // A multi-label model's column holds every label at or above its threshold.
    let shown = |p: &Prediction| match task {
        Task::SingleLabel => label(&labels[p.label_id]),
        Task::MultiLabel if p.labels.is_empty() => "(none)".to_string(),
        Task::MultiLabel => label(&p.labels.iter().map(|&l| labels[l].as_str()).collect::<Vec<_>>().join("+")),
    };
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).clamp(5, LABEL_CHARS);
    let right = |p: &Prediction| match top_k {
        Some(k) => {
            let r: Vec<String> =
                ranked(p, k).into_iter().map(|i| format!("{} {:.3}", label(&labels[i]), p.probs[i])).collect();
            r.join("  ")
        }
        None => format!("{:<label_w$}  {:>6.3}", shown(p), p.score),
    };
    let rights: Vec<Option<String>> = rows.iter().map(|(_, p)| p.map(right)).collect();
    let head = match top_k {
        Some(_) => "ranked".to_string(),
        None => format!("{:<label_w$}  {:>6}", "label", "score"),
    };
    let right_w = rights.iter().flatten().chain([&head]).map(|r| r.chars().count()).max().unwrap_or(0);
    let text_w = width.saturating_sub(right_w + 2).clamp(20, 200);
    let clip = |s: &str| clip(&s.replace(['\n', '\r', '\t'], " "), text_w);
    let mut s = format!("{:<text_w$}  {head}\n", "text");
    for ((input, _), r) in rows.iter().zip(&rights) {
        let _ = match r {
            Some(r) => writeln!(s, "{:<text_w$}  {r}", clip(&input.text)),
            None => writeln!(s, "{}", clip(&format!("(line {}: empty text, not classified)", input.line))),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_fits_its_width_and_names_the_top_label_once() {
        let labels: Vec<String> = ["sadness", "joy", "love", "anger", "fear", "surprise"].map(String::from).to_vec();
        let probs = vec![0.05, 0.6, 0.2, 0.05, 0.05, 0.05];
        let p = Prediction { label_id: 1, score: 0.6, labels: vec![1], probs, logits: vec![0.0; 6], truncated: false };
        let long = InputText { line: 1, text: "i feel so happy and grateful today ".repeat(5) };
        let empty = InputText { line: 2, text: String::new() };
        let rows = [(&long, Some(&p)), (&empty, None)];
        for (top_k, width) in [(Some(3), 100), (None, 100), (Some(3), 80)] {
            let table = format_predictions_table(&rows, &labels, top_k, Task::SingleLabel, width);
            for line in table.lines() {
                assert!(line.chars().count() <= width, "{top_k:?} at {width}: {line}");
            }
            let row = table.lines().nth(1).unwrap();
            assert_eq!(row.matches("joy").count(), 1, "{row}");
        }
    }
}
