//! Per-label decision thresholds of a multi-label model: tuned on the validation split to
//! maximise each label's F1, saved beside the model as `thresholds.json`, and used by predict,
//! eval and serve unless `--threshold` overrides them.

use crate::fsx::write_json_atomic;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The file beside `config.json` that holds the thresholds.
pub const FILE: &str = "thresholds.json";

/// The thresholds tried per label: 0.05, 0.10, ... 0.95.
fn candidates() -> impl Iterator<Item = f32> {
    (1..20).map(|i| i as f32 * 0.05)
}

/// For each label, the candidate threshold whose predictions on `probs` (rows × labels) have
/// the best F1 against `gold` (label ids per row); ties go to the threshold nearest 0.5, and a
/// label with no F1 above 0 keeps 0.5.
pub fn tune(probs: &[Vec<f32>], gold: &[Vec<usize>], labels: usize) -> Vec<f32> {
    (0..labels)
        .map(|l| {
            let mut best = (0.0f64, 0.5f32);
            for t in candidates() {
                let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
                for (p, g) in probs.iter().zip(gold) {
                    match (p[l] >= t, g.contains(&l)) {
                        (true, true) => tp += 1,
                        (true, false) => fp += 1,
                        (false, true) => fn_ += 1,
                        (false, false) => {}
                    }
                }
                let f1 = if tp == 0 { 0.0 } else { 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64 };
                let nearer = (t - 0.5).abs() < (best.1 - 0.5).abs();
                if f1 > best.0 || (f1 == best.0 && f1 > 0.0 && nearer) {
                    best = (f1, t);
                }
            }
            best.1
        })
        .collect()
}

/// Writes `thresholds.json` in `dir`: `{"thresholds": {label: threshold}, "tuned_on": ...}`.
pub fn save(dir: &Path, labels: &[String], thresholds: &[f32], tuned_on: &str) -> Result<()> {
    let map: Map<String, Value> = labels.iter().zip(thresholds).map(|(l, &t)| (l.clone(), json!(t))).collect();
    write_json_atomic(&dir.join(FILE), &json!({"thresholds": map, "tuned_on": tuned_on}))
}

/// The thresholds in `path` (a `thresholds.json`), in label-id order.
pub fn load(path: &Path, labels: &[String]) -> Result<Vec<f32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let map = v.get("thresholds").and_then(Value::as_object);
    let Some(map) = map else { bail!("{}: no \"thresholds\" object", path.display()) };
    labels
        .iter()
        .map(|l| {
            let t = map.get(l).and_then(Value::as_f64);
            match t {
                Some(t) if (0.0..=1.0).contains(&t) => Ok(t as f32),
                Some(t) => {
                    bail!("{}: the threshold of \"{}\" is {t}, not in [0, 1]", path.display(), crate::display::label(l))
                }
                None => bail!("{}: no threshold for label \"{}\"", path.display(), crate::display::label(l)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_finds_each_labels_best_cut() {
        // Label 0 is present when its probability is above 0.3; label 1 never scores.
        let probs: Vec<Vec<f32>> = [0.1, 0.2, 0.35, 0.4, 0.8].iter().map(|&p| vec![p, 0.1]).collect();
        let gold = vec![vec![], vec![], vec![0], vec![0], vec![0]];
        let t = tune(&probs, &gold, 2);
        assert!(t[0] > 0.2 && t[0] <= 0.35, "{t:?}");
        assert_eq!(t[1], 0.5);
    }

    #[test]
    fn saved_thresholds_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let labels = vec!["joy".to_string(), "anger".to_string()];
        save(dir.path(), &labels, &[0.25, 0.7], "validation").unwrap();
        assert_eq!(load(&dir.path().join(FILE), &labels).unwrap(), [0.25, 0.7]);
        let missing = load(&dir.path().join(FILE), &["fear".to_string()]).unwrap_err().to_string();
        assert!(missing.contains("no threshold for label \"fear\""), "{missing}");
    }
}
