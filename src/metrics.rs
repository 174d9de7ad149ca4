//! Classification metrics with scikit-learn's definitions.

use serde::Serialize;

/// Per-class precision, recall, F1 and support.
#[derive(Debug, Clone, Serialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

/// Everything `classification_report` and `confusion_matrix` give for one prediction set.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub accuracy: f64,
    /// `f1_score(average="weighted")`.
    pub f1_weighted: f64,
    /// `f1_score(average="macro")` over the labels present in the gold or predicted labels.
    pub f1_macro: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[gold][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    pub total: usize,
}

fn ratio(num: usize, den: usize) -> f64 {
    // scikit-learn's zero_division default yields 0 (with a warning) for an empty denominator.
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Scores `pred` against `gold` (label ids below `labels.len()`).
pub fn report(gold: &[usize], pred: &[usize], labels: &[String]) -> Report {
    assert_eq!(gold.len(), pred.len(), "gold and predicted label counts differ");
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&g, &p) in gold.iter().zip(pred) {
        confusion[g][p] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let mut per_class = Vec::with_capacity(k);
    for c in 0..k {
        let tp = confusion[c][c];
        let support: usize = confusion[c].iter().sum();
        let predicted: usize = (0..k).map(|g| confusion[g][c]).sum();
        let (fp, fn_) = (predicted - tp, support - tp);
        per_class.push(ClassScores {
            label: labels[c].clone(),
            precision: ratio(tp, predicted),
            recall: ratio(tp, support),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            support,
        });
    }
    let total = gold.len();
    let f1_weighted =
        if total == 0 { 0.0 } else { per_class.iter().map(|c| c.f1 * c.support as f64).sum::<f64>() / total as f64 };
    let present: Vec<&ClassScores> = per_class
        .iter()
        .enumerate()
        .filter(|(c, s)| s.support > 0 || (0..k).any(|g| confusion[g][*c] > 0))
        .map(|(_, s)| s)
        .collect();
    let f1_macro =
        if present.is_empty() { 0.0 } else { present.iter().map(|c| c.f1).sum::<f64>() / present.len() as f64 };
    Report { accuracy: ratio(correct, total), f1_weighted, f1_macro, per_class, confusion, total }
}

/// The scores of multi-label predictions, with scikit-learn's definitions for a label-indicator
/// matrix (`f1_score(average=...)`, `accuracy_score`; an undefined ratio counts as 0).
#[derive(Debug, Clone, Serialize)]
pub struct MultiLabelReport {
    pub f1_micro: f64,
    /// The mean over every label.
    pub f1_macro: f64,
    pub f1_weighted: f64,
    /// The mean over texts of each text's F1.
    pub f1_samples: f64,
    /// Exact match: the texts whose predicted label set is the gold one.
    pub subset_accuracy: f64,
    pub per_class: Vec<ClassScores>,
    pub total: usize,
}

/// Scores the label sets `pred` against `gold` (label ids below `labels.len()`).
pub fn multilabel_report(gold: &[Vec<usize>], pred: &[Vec<usize>], labels: &[String]) -> MultiLabelReport {
    assert_eq!(gold.len(), pred.len(), "gold and predicted row counts differ");
    let k = labels.len();
    let (mut tp, mut gold_n, mut pred_n) = (vec![0usize; k], vec![0usize; k], vec![0usize; k]);
    let (mut exact, mut samples) = (0usize, 0f64);
    for (g, p) in gold.iter().zip(pred) {
        let hit = g.iter().filter(|l| p.contains(l)).count();
        for &l in g {
            gold_n[l] += 1;
        }
        for &l in p {
            pred_n[l] += 1;
            if g.contains(&l) {
                tp[l] += 1;
            }
        }
        exact += usize::from(hit == g.len() && hit == p.len());
        samples += ratio(2 * hit, g.len() + p.len());
    }
    let per_class: Vec<ClassScores> = (0..k)
        .map(|c| ClassScores {
            label: labels[c].clone(),
            precision: ratio(tp[c], pred_n[c]),
            recall: ratio(tp[c], gold_n[c]),
            f1: ratio(2 * tp[c], gold_n[c] + pred_n[c]),
            support: gold_n[c],
        })
        .collect();
    let support: usize = gold_n.iter().sum();
    let (all_tp, all_pred): (usize, usize) = (tp.iter().sum(), pred_n.iter().sum());
    let total = gold.len();
    MultiLabelReport {
        f1_micro: ratio(2 * all_tp, support + all_pred),
        f1_macro: if k == 0 { 0.0 } else { per_class.iter().map(|c| c.f1).sum::<f64>() / k as f64 },
        f1_weighted: if support == 0 {
            0.0
        } else {
            per_class.iter().map(|c| c.f1 * c.support as f64).sum::<f64>() / support as f64
        },
        f1_samples: if total == 0 { 0.0 } else { samples / total as f64 },
        subset_accuracy: ratio(exact, total),
        per_class,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_scores() {
        // gold: a a a b b c ; pred: a a b b c c
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = report(&[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2], &labels);
        assert_eq!(r.confusion, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
        assert!((r.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // a: p=1, r=2/3, f1=0.8; b: p=1/2, r=1/2, f1=1/2; c: p=1/2, r=1, f1=2/3
        let f1 = [0.8, 0.5, 2.0 / 3.0];
        for (c, want) in r.per_class.iter().zip(f1) {
            assert!((c.f1 - want).abs() < 1e-12, "{}: {}", c.label, c.f1);
        }
        assert!((r.per_class[0].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.per_class[1].precision - 0.5).abs() < 1e-12);
        assert!((r.f1_weighted - (0.8 * 3.0 + 0.5 * 2.0 + 2.0 / 3.0) / 6.0).abs() < 1e-12);
        assert!((r.f1_macro - (0.8 + 0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn absent_labels_do_not_count_in_macro() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let r = report(&[0, 1], &[0, 0], &labels);
        // a: p=1/2, r=1, f1=2/3; b: 0; c absent from both.
        assert!((r.f1_macro - (2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((r.f1_weighted - (2.0 / 3.0) / 2.0).abs() < 1e-12);
    }

    /// Numbers from scikit-learn 1.x (`f1_score` with each average, `accuracy_score`,
    /// `precision_recall_fscore_support`) on the same indicator matrices.
    #[test]
    fn multilabel_scores_match_scikit_learn() {
        let gold = vec![vec![0, 2], vec![1], vec![2], vec![], vec![0, 1, 3]];
        let pred = vec![vec![0], vec![1, 2], vec![2], vec![3], vec![0, 1]];
        let labels: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let r = multilabel_report(&gold, &pred, &labels);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(r.f1_micro, 0.7142857142857143), "{}", r.f1_micro);
        assert!(close(r.f1_macro, 0.5), "{}", r.f1_macro);
        assert!(close(r.f1_weighted, 0.7142857142857143), "{}", r.f1_weighted);
        assert!(close(r.f1_samples, 0.6266666666666666), "{}", r.f1_samples);
        assert!(close(r.subset_accuracy, 0.2));
        let f1: Vec<f64> = r.per_class.iter().map(|c| c.f1).collect();
        assert_eq!(f1, [1.0, 1.0, 0.5, 0.0, 0.0]);
        let support: Vec<usize> = r.per_class.iter().map(|c| c.support).collect();
        assert_eq!(support, [2, 2, 2, 1, 0]);
    }
}
