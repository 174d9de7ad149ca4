//! Training dynamics: what every training row did during a run, read from the logits of the
//! forward passes the steps make anyway (dropout on, as dataset cartography records them).
//!
//! Per row and epoch, the gold label's probability and whether the prediction was right; per
//! row, the margin summed over every step that saw it. From them, as Swayamdipta et al. (2020)
//! and Pleiss et al. (2020) define them:
//! - confidence = mean over epochs of the gold probability, variability = its (population)
//!   standard deviation, correctness = the fraction of epochs predicted right;
//! - AUM (area under the margin) = mean over steps of the gold logit minus the largest other logit.
//!
//! Multi-label rows (sigmoids): the gold probability is the mean of the row's gold labels'
//! probabilities, "right" means every label on the right side of the threshold, and the margin is
//! the smallest gold logit minus the largest non-gold one (the smallest gold logit when every
//! label is gold).
//!
//! The arrays travel in every checkpoint (`training_dynamics.safetensors`), so a resumed run
//! writes what an uninterrupted one would.

use crate::data::Split;
use crate::model::Task;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// The file of a checkpoint holding the dynamics so far.
pub const CHECKPOINT_FILE: &str = "training_dynamics.safetensors";
/// The file beside a trained model listing every training row's measures.
pub const FILE: &str = "training_dynamics.jsonl";
/// The data map beside it.
pub const MAP: &str = "data_map.png";

/// The record of one run so far.
#[derive(Debug, Clone)]
pub struct Dynamics {
    task: Task,
    threshold: f32,
    n: usize,
    k: usize,
    /// Per epoch, each row's gold probability (NaN: not seen that epoch).
    gold_prob: Vec<Vec<f32>>,
    /// Per epoch, 1 where the row was predicted right.
    correct: Vec<Vec<u8>>,
    /// Per row, the margins summed and how many steps saw it.
    margin_sum: Vec<f64>,
    seen: Vec<u32>,
    /// Per row, the probabilities summed over those steps (n × k), for the label it leans to.
    prob_sum: Vec<f64>,
    /// Seconds spent recording (to report the cost).
    pub seconds: f64,
}

impl Dynamics {
    pub fn new(task: Task, threshold: f32, n: usize, k: usize) -> Dynamics {
        Dynamics {
            task,
            threshold,
            n,
            k,
            gold_prob: Vec::new(),
            correct: Vec::new(),
            margin_sum: vec![0.0; n],
            seen: vec![0; n],
            prob_sum: vec![0.0; n * k],
            seconds: 0.0,
        }
    }

    /// Records one step of `epoch`: `logits` (rows × k, row-major) of the training rows `rows`
    /// whose gold label ids are `gold(row)`.
    pub fn record(&mut self, epoch: usize, rows: &[usize], logits: &[f32], gold: impl Fn(usize) -> Vec<usize>) {
        let started = std::time::Instant::now();
        while self.gold_prob.len() <= epoch {
            self.gold_prob.push(vec![f32::NAN; self.n]);
            self.correct.push(vec![0; self.n]);
        }
        for (r, &row) in rows.iter().enumerate() {
            let z = &logits[r * self.k..(r + 1) * self.k];
            let g = gold(row);
            let m = measure(self.task, self.threshold, z, &g);
            self.gold_prob[epoch][row] = m.gold_prob as f32;
            self.correct[epoch][row] = m.correct as u8;
            self.margin_sum[row] += m.margin;
            self.seen[row] += 1;
            for (s, p) in self.prob_sum[row * self.k..(row + 1) * self.k].iter_mut().zip(&m.probs) {
                *s += p;
            }
        }
        self.seconds += started.elapsed().as_secs_f64();
    }

    /// Each row's measures, in row order.
    pub fn summary(&self) -> Vec<RowMeasures> {
        (0..self.n).map(|i| self.row(i)).collect()
    }

    fn row(&self, i: usize) -> RowMeasures {
        let recorded: Vec<f32> = self.gold_prob.iter().map(|e| e[i]).filter(|p| !p.is_nan()).collect();
        let probs: Vec<f64> = recorded.iter().map(|&p| p as f64).collect();
        let epochs = probs.len();
        let mean = probs.iter().sum::<f64>() / epochs.max(1) as f64;
        let var = probs.iter().map(|p| (p - mean) * (p - mean)).sum::<f64>() / epochs.max(1) as f64;
        let right = self.gold_prob.iter().zip(&self.correct).filter(|(p, c)| !p[i].is_nan() && c[i] == 1).count();
        let seen = self.seen[i].max(1) as f64;
        RowMeasures {
            epochs,
            gold_probability: recorded,
            confidence: mean,
            variability: var.sqrt(),
            correctness: right as f64 / epochs.max(1) as f64,
            aum: self.margin_sum[i] / seen,
            mean_probs: self.prob_sum[i * self.k..(i + 1) * self.k].iter().map(|s| s / seen).collect(),
        }
    }

    /// Writes the arrays into a checkpoint directory (assembled elsewhere and renamed into place).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dev = Device::Cpu;
        let e = self.gold_prob.len();
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("gold_prob".into(), Tensor::from_vec(self.gold_prob.concat(), (e, self.n), &dev)?);
        t.insert("correct".into(), Tensor::from_vec(self.correct.concat(), (e, self.n), &dev)?);
        t.insert("margin_sum".into(), Tensor::from_vec(self.margin_sum.clone(), self.n, &dev)?);
        t.insert("seen".into(), Tensor::from_vec(self.seen.clone(), self.n, &dev)?);
        t.insert("prob_sum".into(), Tensor::from_vec(self.prob_sum.clone(), (self.n, self.k), &dev)?);
        candle_core::safetensors::save(&t, path).with_context(|| format!("writing {}", path.display()))
    }

    /// The dynamics a checkpoint holds; a checkpoint written before they were recorded starts
    /// them afresh, and says so.
    pub fn resume(dir: &Path, task: Task, threshold: f32, n: usize, k: usize) -> Result<Dynamics> {
        let path = dir.join(CHECKPOINT_FILE);
        if path.exists() {
            return Dynamics::load(&path, task, threshold, n, k);
        }
        log::warn!("{} holds no training dynamics: {FILE} will count only the steps from here on", dir.display());
        Ok(Dynamics::new(task, threshold, n, k))
    }

    /// Reads what [`Dynamics::save`] wrote, for a run of `n` rows and `k` labels.
    pub fn load(path: &Path, task: Task, threshold: f32, n: usize, k: usize) -> Result<Dynamics> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let get = |name: &str| t.get(name).with_context(|| format!("{}: no tensor {name}", path.display()));
        let mut d = Dynamics::new(task, threshold, n, k);
        let gold_prob = get("gold_prob")?.to_vec2::<f32>()?;
        if gold_prob.first().is_some_and(|e| e.len() != n) || get("margin_sum")?.dims() != [n] {
            bail!("{}: recorded for another number of training rows than this run's {n}", path.display());
        }
        d.gold_prob = gold_prob;
        d.correct = get("correct")?.to_vec2::<u8>()?;
        d.margin_sum = get("margin_sum")?.to_vec1::<f64>()?;
        d.seen = get("seen")?.to_vec1::<u32>()?;
        d.prob_sum = get("prob_sum")?.flatten_all()?.to_vec1::<f64>()?;
        Ok(d)
    }
}

/// Writes [`FILE`] (one JSON object per training row, in the split's order) and [`MAP`] into
/// `dir`; returns the seconds it took.
pub fn write(dir: &Path, dynamics: &Dynamics, split: &Split, labels: &[String]) -> Result<f64> {
    let started = std::time::Instant::now();
    let rows = dynamics.summary();
    let mut lines = Vec::with_capacity(rows.len());
    for (i, m) in rows.iter().enumerate() {
        let e = &split.examples[i];
        let names: Vec<&str> = e.labels.iter().map(|&l| labels[l].as_str()).collect();
        let mut row = serde_json::json!({"row": i, "location": split.location(i), "text": e.text});
        let obj = row.as_object_mut().expect("an object");
        match dynamics.task {
            Task::SingleLabel => obj.insert("label".into(), names[0].into()),
            Task::MultiLabel => obj.insert("labels".into(), names.into()),
        };
        obj.extend(serde_json::to_value(m)?.as_object().expect("an object").clone());
        obj.insert("region".into(), region(m).into());
        if let Some(j) = leaning(m, &e.labels) {
            obj.insert("leans_to".into(), labels[j].clone().into());
        }
        lines.push(row);
    }
    crate::fsx::write_json_lines_atomic(&dir.join(FILE), &lines)?;
    let points: Vec<(f64, f64, f64)> = rows.iter().map(|m| (m.variability, m.confidence, m.correctness)).collect();
    crate::plot::data_map_png(&dir.join(MAP), &points, &format!("data map: {} training rows", rows.len()))?;
    Ok(started.elapsed().as_secs_f64())
}

/// The label other than the gold ones with the highest mean probability.
pub fn leaning(m: &RowMeasures, gold: &[usize]) -> Option<usize> {
    (0..m.mean_probs.len()).filter(|j| !gold.contains(j)).max_by(|&a, &b| m.mean_probs[a].total_cmp(&m.mean_probs[b]))
}

/// One step's reading of one row.
struct Measure {
    gold_prob: f64,
    correct: bool,
    margin: f64,
    probs: Vec<f64>,
}

fn measure(task: Task, threshold: f32, z: &[f32], gold: &[usize]) -> Measure {
    let z: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    let is_gold = |j: usize| gold.contains(&j);
    let best_other = (0..z.len()).filter(|&j| !is_gold(j)).map(|j| z[j]).fold(f64::NEG_INFINITY, f64::max);
    match task {
        Task::SingleLabel => {
            let top = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = z.iter().map(|v| (v - top).exp()).collect();
            let sum: f64 = exp.iter().sum();
            let probs: Vec<f64> = exp.iter().map(|e| e / sum).collect();
            let g = gold[0];
            Measure { gold_prob: probs[g], correct: z[g] > best_other, margin: z[g] - best_other, probs }
        }
        Task::MultiLabel => {
            let probs: Vec<f64> = z.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
            let gold_prob = gold.iter().map(|&j| probs[j]).sum::<f64>() / gold.len().max(1) as f64;
            let correct = (0..z.len()).all(|j| (probs[j] >= threshold as f64) == is_gold(j));
            let weakest_gold = gold.iter().map(|&j| z[j]).fold(f64::INFINITY, f64::min);
            let margin = if best_other.is_finite() { weakest_gold - best_other } else { weakest_gold };
            Measure { gold_prob, correct, margin, probs }
        }
    }
}

/// A training row's measures over the run.
#[derive(Debug, Clone, Serialize)]
pub struct RowMeasures {
    /// Epochs that saw the row, and its gold probability in each.
    pub epochs: usize,
    pub gold_probability: Vec<f32>,
    pub confidence: f64,
    pub variability: f64,
    pub correctness: f64,
    pub aum: f64,
    /// Its probabilities averaged over the steps that saw it.
    #[serde(skip)]
    pub mean_probs: Vec<f64>,
}

/// Which region of the data map a row falls in (the cartography paper's reading: easy rows are
/// learnt early and surely, hard ones never, ambiguous ones swing between epochs).
pub fn region(m: &RowMeasures) -> &'static str {
    if m.variability >= 0.2 {
        "ambiguous"
    } else if m.confidence >= 0.5 {
        "easy-to-learn"
    } else {
        "hard-to-learn"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_follow_the_definitions() {
        // Two labels, one row seen in two epochs: logits (2, 0) then (0, 1), gold 0.
        let mut d = Dynamics::new(Task::SingleLabel, 0.5, 1, 2);
        d.record(0, &[0], &[2.0, 0.0], |_| vec![0]);
        d.record(1, &[0], &[0.0, 1.0], |_| vec![0]);
        let m = &d.summary()[0];
        let (p1, p2) = (1.0 / (1.0 + (-2f64).exp()), 1.0 / (1.0 + 1f64.exp()));
        assert!((m.confidence - (p1 + p2) / 2.0).abs() < 1e-7);
        assert!((m.variability - (p1 - p2).abs() / 2.0).abs() < 1e-7);
        assert_eq!((m.correctness, m.epochs), (0.5, 2));
        assert!((m.aum - (2.0 + -1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn multi_label_margin_is_the_weakest_gold_against_the_strongest_other() {
        let mut d = Dynamics::new(Task::MultiLabel, 0.5, 1, 3);
        d.record(0, &[0], &[3.0, 1.0, -2.0], |_| vec![0, 1]);
        let m = &d.summary()[0];
        assert!((m.aum - 3.0).abs() < 1e-12);
        assert_eq!(m.correctness, 1.0);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        assert!((m.confidence - (s(3.0) + s(1.0)) / 2.0).abs() < 1e-7);
    }

    #[test]
    fn the_checkpoint_file_round_trips_bitwise() {
        let mut d = Dynamics::new(Task::SingleLabel, 0.5, 3, 2);
        d.record(0, &[2, 0], &[0.3, -1.25, 4.0, 1.0], |i| vec![i % 2]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        d.save(&path).unwrap();
        let mut back = Dynamics::load(&path, Task::SingleLabel, 0.5, 3, 2).unwrap();
        back.seconds = d.seconds;
        // Debug output, because an unseen row's NaN never equals itself.
        assert_eq!(format!("{back:?}"), format!("{d:?}"));
        assert!(Dynamics::load(&path, Task::SingleLabel, 0.5, 4, 2).is_err());
    }
}
