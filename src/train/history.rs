//! What a run records: one row of the results table per evaluation, the logged training loss,
//! the best evaluation, and the table as the Trainer prints it. A leaf: the model card and the
//! learning-curve plot read these types.

use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// One row of the results table (one evaluation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRow {
    pub training_loss: f64,
    pub epoch: f64,
    pub step: usize,
    pub validation_loss: f64,
    /// Accuracy; for multi-label rows, exact-match (subset) accuracy.
    pub accuracy: f64,
    /// Weighted F1; for multi-label rows, micro F1.
    pub f1: f64,
    pub f1_macro: f64,
    /// Whether the row scores a multi-label model (its table shows micro and macro F1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi_label: bool,
}

/// A logged training loss (mean over `logging_steps` steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPoint {
    pub step: usize,
    pub loss: f64,
    pub learning_rate: f64,
}

/// The best evaluation so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Best {
    /// Index into the table's rows.
    pub row: usize,
    pub value: f64,
    /// The checkpoint directory written after that evaluation.
    pub checkpoint: String,
}

/// The seed table: `Training Loss | Epoch | Step | Validation Loss | Accuracy | F1`; for a
/// multi-label run `... | Validation Loss | Micro F1 | Macro F1`.
pub fn format_table(rows: &[EpochRow]) -> String {
    if rows.first().is_some_and(|r| r.multi_label) {
        let mut s = String::from("| Training Loss | Epoch | Step | Validation Loss | Micro F1 | Macro F1 |\n");
        s.push_str("|:-------------:|:-----:|:----:|:---------------:|:--------:|:--------:|\n");
        for r in rows {
            let _ = writeln!(
                s,
                "| {:<13.4} | {:<5.1} | {:<4} | {:<15.4} | {:<8.4} | {:<8.4} |",
                r.training_loss, r.epoch, r.step, r.validation_loss, r.f1, r.f1_macro
            );
        }
        return s;
    }
    let mut s = String::from("| Training Loss | Epoch | Step | Validation Loss | Accuracy | F1     |\n");
    s.push_str("|:-------------:|:-----:|:----:|:---------------:|:--------:|:------:|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {:<13.4} | {:<5.1} | {:<4} | {:<15.4} | {:<8.4} | {:<6.4} |",
            r.training_loss, r.epoch, r.step, r.validation_loss, r.accuracy, r.f1
        );
    }
    s
}

/// The warning to give when validation loss rose while training loss fell since the previous
/// evaluation (with the first epoch of such a streak), or `None`.
pub fn overfitting_warning(previous: &[EpochRow], row: &EpochRow) -> Option<String> {
    let prev = previous.last()?;
    if !(row.validation_loss > prev.validation_loss && row.training_loss < prev.training_loss) {
        return None;
    }
    let streak = previous
        .windows(2)
        .rev()
        .take_while(|w| w[1].validation_loss > w[0].validation_loss && w[1].training_loss < w[0].training_loss)
        .count();
    let first = &previous[previous.len() - 1 - streak];
    Some(format!(
        "warning: overfitting: from epoch {:.1} to {:.1} validation loss rose {:.4} -> {:.4} while training loss fell {:.4} -> {:.4}{}",
        first.epoch,
        row.epoch,
        first.validation_loss,
        row.validation_loss,
        first.training_loss,
        row.training_loss,
        if streak > 0 {
            " (over consecutive evaluations); consider fewer epochs, a lower learning rate or --load-best-at-end"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: f64, training_loss: f64, validation_loss: f64) -> EpochRow {
        EpochRow {
            training_loss,
            epoch,
            step: 0,
            validation_loss,
            accuracy: 0.0,
            f1: 0.0,
            f1_macro: 0.0,
            multi_label: false,
        }
    }

    #[test]
    fn overfitting_is_named_from_the_first_epoch_of_the_streak() {
        let rows = [row(1.0, 1.0, 0.5), row(2.0, 0.8, 0.6)];
        assert!(overfitting_warning(&rows[..1], &rows[1]).unwrap().contains("from epoch 1.0 to 2.0"));
        let third = row(3.0, 0.7, 0.7);
        let w = overfitting_warning(&rows, &third).unwrap();
        assert!(w.contains("from epoch 1.0 to 3.0") && w.contains("consecutive"), "{w}");
        assert!(overfitting_warning(&rows, &row(3.0, 0.7, 0.55)).is_none());
        assert!(overfitting_warning(&[], &third).is_none());
    }
}
