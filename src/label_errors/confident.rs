//! Confident learning (Northcutt, Jiang and Chuang, 2021), as cleanlab 2.x's
//! `filter.find_label_issues` computes it by default (`filter_by="prune_by_noise_rate"`), step
//! for step, so that the same probabilities give the same rows:
//!
//! 1. thresholds: t_j = the mean probability of class j over the rows labelled j;
//! 2. the confident joint C[i][j]: rows labelled i whose probability reaches t_j (less 1e-6) for
//!    exactly one j, or for several (then j = the row's most probable class); each class keeps at
//!    least one row on the diagonal;
//! 3. calibration: each row of C scaled to the count of its given label, the whole to n, rounded
//!    keeping each row's total;
//! 4. pruning: for each given label i and other class j, the C[i][j] rows labelled i with the
//!    largest p_j - p_i are flagged (a class keeps at least one row);
//! 5. a flagged row whose given label is also its most probable one is let go;
//! 6. the rest ranked by self-confidence p_i (or the normalised margin), least first.
//!
//! Probabilities are read in f64, as numpy reads the float32 values written for the anchor.

/// Below this a class's threshold is clipped (cleanlab's `CONFIDENT_THRESHOLDS_LOWER_BOUND`).
const THRESHOLD_FLOOR: f64 = 2e-6;
/// The slack of every comparison of probabilities (cleanlab's `FLOATING_POINT_COMPARISON`).
const SLACK: f64 = 1e-6;

/// How flagged rows are ordered, least trustworthy label first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// The probability of the given label.
    SelfConfidence,
    /// (p_given - the largest other probability + 1) / 2.
    NormalizedMargin,
}

/// What confident learning found in `n` rows of `k` classes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub thresholds: Vec<f64>,
    /// Confident counts, given label (rows) by likely true label (columns), before calibration.
    pub confident_joint: Vec<Vec<usize>>,
    /// The calibrated joint: estimated rows per (given, true) pair, summing to n.
    pub joint: Vec<Vec<i64>>,
    /// P(given = i | true = j), from the calibrated joint (columns sum to 1).
    pub noise_matrix: Vec<Vec<f64>>,
    /// The flagged rows, least trustworthy first.
    pub issues: Vec<usize>,
    /// Every row's score under the ranking (lower: more suspect).
    #[serde(skip)]
    pub scores: Vec<f64>,
}

/// Runs the steps above on `probs` (row-major, n × k) and the given labels.
pub fn find(probs: &[f64], labels: &[usize], k: usize, rank_by: RankBy) -> Found {
    let n = labels.len();
    assert_eq!(probs.len(), n * k, "n × k probabilities");
    let row = |i: usize| &probs[i * k..(i + 1) * k];
    let thresholds = thresholds(probs, labels, k);
    let confident_joint = confident_joint(probs, labels, k, &thresholds);
    let joint = calibrate(&confident_joint, labels, k);
    let noise_matrix = noise_matrix(&joint);
    let prune = keep_one_per_class(&transpose(&joint));
    let mut flagged = vec![false; n];
    for given in 0..k {
        let rows: Vec<usize> = (0..n).filter(|&i| labels[i] == given).collect();
        if rows.len() <= 1 {
            continue;
        }
        for (other, counts) in prune.iter().enumerate() {
            let take = counts[given].max(0) as usize;
            if other == given || take == 0 {
                continue;
            }
            let mut order = rows.clone();
            let margin = |i: usize| row(i)[other] - row(i)[given];
            order.sort_by(|&a, &b| margin(b).total_cmp(&margin(a)));
            for &i in order.iter().take(take) {
                flagged[i] = true;
            }
        }
    }
    for (i, f) in flagged.iter_mut().enumerate() {
        *f &= !agrees(row(i), labels[i]);
    }
    let scores: Vec<f64> = (0..n).map(|i| score(row(i), labels[i], rank_by)).collect();
    let mut issues: Vec<usize> = (0..n).filter(|&i| flagged[i]).collect();
    issues.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    Found { thresholds, confident_joint, joint, noise_matrix, issues, scores }
}

/// A row's label quality under `rank_by` (cleanlab's `get_label_quality_scores`).
pub fn score(p: &[f64], label: usize, rank_by: RankBy) -> f64 {
    match rank_by {
        RankBy::SelfConfidence => p[label],
        RankBy::NormalizedMargin => {
            let other = (0..p.len()).filter(|&j| j != label).map(|j| p[j]).fold(f64::NEG_INFINITY, f64::max);
            (p[label] - other + 1.0) / 2.0
        }
    }
}

/// Whether the given label is the most probable one (with the slack in its favour).
fn agrees(p: &[f64], label: usize) -> bool {
    let top = first_argmax((0..p.len()).map(|j| if j == label { p[j] + SLACK } else { p[j] }));
    top == label
}

/// The index of the first largest value (numpy's argmax).
fn first_argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

fn thresholds(probs: &[f64], labels: &[usize], k: usize) -> Vec<f64> {
    (0..k)
        .map(|j| {
            let rows: Vec<f64> = (0..labels.len()).filter(|&i| labels[i] == j).map(|i| probs[i * k + j]).collect();
            // A class nobody is labelled with gets a threshold no probability reaches.
            let t = if rows.is_empty() { 2.0 } else { rows.iter().sum::<f64>() / rows.len() as f64 };
            t.max(THRESHOLD_FLOOR)
        })
        .collect()
}

fn confident_joint(probs: &[f64], labels: &[usize], k: usize, t: &[f64]) -> Vec<Vec<usize>> {
    let mut c = vec![vec![0usize; k]; k];
    for (i, &given) in labels.iter().enumerate() {
        let p = &probs[i * k..(i + 1) * k];
        let confident: Vec<usize> = (0..k).filter(|&j| p[j] >= t[j] - SLACK).collect();
        let guess = match confident.len() {
            0 => continue,
            1 => confident[0],
            _ => first_argmax(p.iter().copied()),
        };
        c[given][guess] += 1;
    }
    for (j, row) in c.iter_mut().enumerate() {
        row[j] = row[j].max(1);
    }
    c
}

/// Rows scaled to the given labels' counts, the whole to n, rounded keeping row totals.
fn calibrate(c: &[Vec<usize>], labels: &[usize], k: usize) -> Vec<Vec<i64>> {
    let mut counts = vec![0f64; k];
    for &l in labels {
        counts[l] += 1.0;
    }
    let scaled: Vec<Vec<f64>> = c
        .iter()
        .zip(&counts)
        .map(|(row, &count)| {
            let total = (row.iter().sum::<usize>() as f64).max(1e-100);
            row.iter().map(|&v| v as f64 / total * count).collect()
        })
        .collect();
    let total = scaled.iter().flatten().sum::<f64>().max(1e-100);
    let n = labels.len() as f64;
    scaled.iter().map(|row| round_keeping_sum(&row.iter().map(|v| v / total * n).collect::<Vec<_>>())).collect()
}

/// Rounds each value (half to even, as numpy) and moves the largest remainders up (or the
/// smallest down) until the integers sum to the rounded total (cleanlab's
/// `round_preserving_sum`).
pub fn round_keeping_sum(values: &[f64]) -> Vec<i64> {
    let mut ints: Vec<f64> = values.iter().map(|v| v.round_ties_even()).collect();
    let target = values.iter().sum::<f64>().round_ties_even();
    let mut sum = ints.iter().sum::<f64>().round_ties_even();
    while (sum - target).abs() > SLACK {
        let diff = (target - sum).round_ties_even();
        let step = if diff < 0.0 { -1.0 } else { 1.0 };
        let changes = (diff.abs() as usize).min(values.len());
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| (values[a] - ints[a]).total_cmp(&(values[b] - ints[b])));
        if step > 0.0 {
            order.reverse();
        }
        for &i in order.iter().take(changes) {
            ints[i] += step;
        }
        sum = ints.iter().sum::<f64>().round_ties_even();
    }
    ints.iter().map(|&v| v as i64).collect()
}

fn transpose(m: &[Vec<i64>]) -> Vec<Vec<i64>> {
    (0..m.len()).map(|j| m.iter().map(|row| row[j]).collect()).collect()
}

/// cleanlab's `_keep_at_least_n_per_class` with n = 1 on the prune matrix (true by given): a
/// class whose diagonal is 0 takes its one row evenly from the column's other non-zero counts.
fn keep_one_per_class(m: &[Vec<i64>]) -> Vec<Vec<i64>> {
    let k = m.len();
    let mut out = vec![vec![0f64; k]; k];
    for c in 0..k {
        let diag = m[c][c];
        let lift = (diag.max(1) - diag) as f64;
        let nonzero = (0..k).filter(|&r| m[r][c] != 0).count() as f64;
        let spread = (nonzero - 1.0).max(1.0);
        for r in 0..k {
            out[r][c] = if r == c { diag.max(1) as f64 } else { (m[r][c] as f64 - lift / spread).max(0.0).trunc() };
        }
    }
    out.iter().map(|row| round_keeping_sum(row)).collect()
}

fn noise_matrix(joint: &[Vec<i64>]) -> Vec<Vec<f64>> {
    let k = joint.len();
    let col: Vec<f64> = (0..k).map(|j| joint.iter().map(|r| r[j] as f64).sum::<f64>().max(1e-100)).collect();
    joint.iter().map(|r| r.iter().zip(&col).map(|(&v, c)| v as f64 / c).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six rows of three classes, worked by hand (and with cleanlab 2.9, which gives the same
    /// thresholds, joints and issues: bench/cleanlab_anchor.py --selftest).
    fn example() -> (Vec<f64>, Vec<usize>) {
        #[rustfmt::skip]
        let probs = vec![
            0.8, 0.1, 0.1,
            0.7, 0.2, 0.1,
            0.1, 0.8, 0.1, // labelled 0, looks like 1
            0.1, 0.7, 0.2,
            0.2, 0.6, 0.2,
            0.1, 0.1, 0.8,
        ];
        (probs, vec![0, 0, 0, 1, 1, 2])
    }

    #[test]
    fn thresholds_and_joint_by_hand() {
        let (p, l) = example();
        let f = find(&p, &l, 3, RankBy::SelfConfidence);
        // t0 = (0.8 + 0.7 + 0.1) / 3, t1 = (0.7 + 0.6) / 2, t2 = 0.8
        let t = [1.6 / 3.0, 0.65, 0.8];
        for (a, b) in f.thresholds.iter().zip(t) {
            assert!((a - b).abs() < 1e-12);
        }
        // Row 2 (labelled 0) reaches only t1; rows 0, 1 reach t0; rows 3 reaches t1, row 4 none
        // (0.6 < 0.65); row 5 reaches t2.
        assert_eq!(f.confident_joint, vec![vec![2, 1, 0], vec![0, 1, 0], vec![0, 0, 1]]);
        // Calibrated: row 0 scaled to 3 rows (2, 1, 0), row 1 to 2 rows (0, 2, 0), row 2 to 1.
        assert_eq!(f.joint, vec![vec![2, 1, 0], vec![0, 2, 0], vec![0, 0, 1]]);
        assert_eq!(f.issues, vec![2]);
        assert!((f.noise_matrix[0][1] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_flagged_row_whose_label_is_its_best_guess_is_let_go() {
        // Labelled 1 with p1 the largest: never an issue, whatever the joint says.
        let p = vec![0.9, 0.1, 0.45, 0.55, 0.9, 0.1, 0.2, 0.8];
        let f = find(&p, &[0, 1, 0, 1], 2, RankBy::SelfConfidence);
        assert!(!f.issues.contains(&1), "{:?}", f.issues);
    }

    #[test]
    fn rounding_keeps_the_sum_like_numpy() {
        assert_eq!(round_keeping_sum(&[0.5, 1.5, 2.0]), vec![0, 2, 2]);
        assert_eq!(round_keeping_sum(&[0.4, 0.4, 0.2]), vec![0, 1, 0]);
        assert_eq!(round_keeping_sum(&[0.6, 0.6, 0.8]), vec![0, 1, 1]);
        assert_eq!(round_keeping_sum(&[2.0, 3.0]), vec![2, 3]);
    }

    #[test]
    fn normalised_margin_is_cleanlabs() {
        let s = score(&[0.2, 0.5, 0.3], 0, RankBy::NormalizedMargin);
        assert!((s - (0.2 - 0.5 + 1.0) / 2.0).abs() < 1e-15);
    }
}
