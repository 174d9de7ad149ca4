//! The task a classifier's head solves, as Transformers' `problem_type` names it: one label per
//! text (softmax over the labels, cross-entropy) or any number of labels per text (a sigmoid per
//! label, binary cross-entropy over every label).

use super::nn::{log_softmax_last_dim, softmax_last_dim};
use anyhow::{bail, Result};
use candle_core::Tensor;

/// The probability above which a label is predicted in a multi-label task, unless tuned.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `single_label_classification`.
    SingleLabel,
    /// `multi_label_classification`.
    MultiLabel,
}

/// What a batch should predict.
pub enum Targets {
    /// Label ids `[n]` (u32), one per text.
    Ids(Tensor),
    /// Multi-hot rows `[n, labels]` (f32): 1 for each label of a text.
    MultiHot(Tensor),
}

impl Task {
    /// The task of a `config.json`'s `problem_type` (absent: single-label, as Transformers
    /// infers it for integer labels).
    pub fn from_problem_type(problem_type: Option<&str>) -> Result<Task> {
        Ok(match problem_type {
            None | Some("single_label_classification") => Task::SingleLabel,
            Some("multi_label_classification") => Task::MultiLabel,
            Some(other) => bail!(
                "config.json: problem_type {other:?} is not supported (single_label_classification, \
                 multi_label_classification)"
            ),
        })
    }

    pub fn problem_type(self) -> &'static str {
        match self {
            Task::SingleLabel => "single_label_classification",
            Task::MultiLabel => "multi_label_classification",
        }
    }

    /// Probabilities `[n, labels]`: a softmax over the labels, or a sigmoid per label.
    pub fn probabilities(self, logits: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Task::SingleLabel => softmax_last_dim(logits)?,
            Task::MultiLabel => candle_nn::ops::sigmoid(logits)?,
        })
    }
}

/// The training loss of `logits` against `targets`: cross-entropy (optionally weighted per
/// class), or binary cross-entropy with logits averaged over every text and label.
pub fn loss(logits: &Tensor, targets: &Targets, class_weights: Option<&Tensor>) -> Result<Tensor> {
    match targets {
        Targets::Ids(labels) => cross_entropy(logits, labels, class_weights),
        Targets::MultiHot(y) => bce_with_logits(logits, y),
    }
}

/// Mean cross-entropy of `logits [n, c]` against `labels [n]` (u32), optionally weighted per
/// class as `torch.nn.CrossEntropyLoss(weight=...)` does (weighted mean).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, class_weights: Option<&Tensor>) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    match class_weights {
        None => Ok(picked.mean_all()?.neg()?),
        Some(w) => {
            let wi = w.index_select(labels, 0)?;
            Ok((picked.mul(&wi)?.sum_all()? / wi.sum_all()?)?.neg()?)
        }
    }
}

/// `torch.nn.BCEWithLogitsLoss()`: the mean over every entry of
/// `max(x, 0) - x y + log(1 + exp(-|x|))`, which never overflows.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let softplus = ((logits.abs()?.neg()?.exp()? + 1.0)?).log()?;
    let per_entry = ((logits.relu()? - logits.mul(targets)?)? + softplus)?;
    Ok(per_entry.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Against the formula in f64, with the gradient `(sigmoid(x) - y) / n`.
    #[test]
    fn bce_with_logits_matches_the_formula_and_its_gradient() {
        let xs = [[-30.0f32, -2.0, 0.5, 40.0], [3.0, -0.25, 1e-3, -7.0]];
        let ys = [[0.0f32, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]];
        let x = Var::from_tensor(&Tensor::new(&xs, &Device::Cpu).unwrap()).unwrap();
        let y = Tensor::new(&ys, &Device::Cpu).unwrap();
        let l = bce_with_logits(x.as_tensor(), &y).unwrap();
        let mut want = 0f64;
        for (xr, yr) in xs.iter().zip(&ys) {
            for (&x, &y) in xr.iter().zip(yr) {
                let (x, y) = (x as f64, y as f64);
                want += x.max(0.0) - x * y + (1.0 + (-x.abs()).exp()).ln();
            }
        }
        want /= 8.0;
        let got: f32 = l.to_scalar().unwrap();
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        let g: Vec<Vec<f32>> = l.backward().unwrap().get(x.as_tensor()).unwrap().to_vec2().unwrap();
        for i in 0..2 {
            for j in 0..4 {
                let s = 1.0 / (1.0 + (-(xs[i][j] as f64)).exp());
                let want = (s - ys[i][j] as f64) / 8.0;
                assert!((g[i][j] as f64 - want).abs() < 1e-6, "d/dx[{i}][{j}] {} vs {want}", g[i][j]);
            }
        }
    }

    #[test]
    fn problem_types_round_trip() {
        for t in [Task::SingleLabel, Task::MultiLabel] {
            assert_eq!(Task::from_problem_type(Some(t.problem_type())).unwrap(), t);
        }
        assert_eq!(Task::from_problem_type(None).unwrap(), Task::SingleLabel);
        assert!(Task::from_problem_type(Some("regression")).is_err());
    }
}
