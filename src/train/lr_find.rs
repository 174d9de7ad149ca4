//! `train --find-lr`: the learning-rate range test (Smith, 2017), as fastai's `lr_find` runs
//! it. The recipe's optimiser takes `steps` batches of the recipe's first epoch, the rate
//! growing exponentially from 1e-7 to 10; the loss is smoothed (an exponential average, β =
//! 0.98, debiased) and the test stops once it passes four times its best. Two suggestions, both
//! read past the first tenth of the points and before the last five (fastai's window): the rate
//! where the smoothed loss falls fastest against log(rate), and a tenth of the rate at its minimum.
//! Nothing is trained or saved beyond the points and their plot, and nothing is written before
//! the test ends (an interrupt leaves no file behind).

use super::{in_memory, load_dataset, sampler, TrainConfig};
use crate::data::DataSpec;
use anyhow::{bail, Result};
use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;

pub const START_LR: f64 = 1e-7;
pub const END_LR: f64 = 10.0;
const BETA: f64 = 0.98;
/// The test stops once the smoothed loss passes this many times its best.
const STOP_FACTOR: f64 = 4.0;

/// One batch of the test.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub step: usize,
    pub learning_rate: f64,
    pub loss: f64,
    pub smoothed_loss: f64,
}

/// What the test found.
#[derive(Debug, Clone, Serialize)]
pub struct RangeTest {
    pub points: Vec<Point>,
    /// Whether the loss diverged (passed 4x its best, or stopped being finite) before the last step.
    pub stopped_early: bool,
    /// The rate of the steepest descent of the smoothed loss.
    pub steepest: f64,
    /// A tenth of the rate at the smoothed loss's minimum.
    pub minimum_tenth: f64,
}

/// The rate of step `i` of `steps`.
pub fn rate(i: usize, steps: usize) -> f64 {
    START_LR * (END_LR / START_LR).powf(i as f64 / (steps.max(2) - 1) as f64)
}

/// Runs the test on the training split of `spec` with `cfg`'s model, recipe and seed.
pub fn run(cfg: &TrainConfig, spec: &DataSpec, device: &Device, steps: usize) -> Result<RangeTest> {
    if steps < 10 {
        bail!("--find-lr-steps must be at least 10 (the suggestions skip the first tenth and the last five points)");
    }
    cfg.validate()?;
    let dataset = load_dataset(cfg, spec)?;
    let (mut trainer, data) = in_memory(cfg, &dataset, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let lengths: Option<Vec<usize>> =
        cfg.group_by_length.then(|| data.train_rows.iter().map(|r| r.ids.len()).collect());
    let batch = cfg.train_batch_size;
    let mut order = Vec::new();
    let mut losses = Vec::new();
    let pb = crate::progress::bar(steps as u64, "learning-rate range test", "step");
    for i in 0..steps {
        if order.len() < (i + 1) * batch {
            order.extend(sampler::epoch_order(data.train_rows.len(), &mut rng, lengths.as_deref(), batch));
        }
        let rows = &order[i * batch..(i + 1) * batch];
        let loss = trainer.update(rows, &data, rate(i, steps))?.loss as f64;
        losses.push(loss);
        pb.inc(1);
        pb.set_message(format!("rate {:.1e}, loss {loss:.4}", rate(i, steps)));
        if should_stop(&losses) {
            break;
        }
    }
    pb.finish_and_clear();
    Ok(analyse(&losses, steps))
}

/// The smoothed losses of `losses` (fastai's debiased exponential average).
pub fn smooth(losses: &[f64]) -> Vec<f64> {
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            avg = BETA * avg + (1.0 - BETA) * l;
            avg / (1.0 - BETA.powi(i as i32 + 1))
        })
        .collect()
}

/// Whether the test ends after the last of `losses`: not finite, or the smoothed loss above
/// four times its best so far.
pub fn should_stop(losses: &[f64]) -> bool {
    let s = smooth(losses);
    let last = *s.last().expect("at least one loss");
    let best = s.iter().cloned().fold(f64::INFINITY, f64::min);
    !last.is_finite() || last > STOP_FACTOR * best
}

/// The points and the suggestions of a test of `steps` planned steps that recorded `losses`.
pub fn analyse(losses: &[f64], steps: usize) -> RangeTest {
    let smoothed = smooth(losses);
    let points: Vec<Point> = losses
        .iter()
        .zip(&smoothed)
        .enumerate()
        .map(|(i, (&loss, &s))| Point { step: i + 1, learning_rate: rate(i, steps), loss, smoothed_loss: s })
        .collect();
    // fastai's window: past the first tenth of the planned steps, before the last five points;
    // all of them when that leaves fewer than two.
    let (lo, hi) = (steps / 10, points.len().saturating_sub(5));
    let window = if hi > lo + 1 { &points[lo..hi] } else { &points[..] };
    let finite: Vec<&Point> = window.iter().filter(|p| p.smoothed_loss.is_finite()).collect();
    let steepest = finite
        .windows(2)
        .map(|w| {
            (
                (w[1].smoothed_loss - w[0].smoothed_loss) / (w[1].learning_rate.ln() - w[0].learning_rate.ln()),
                w[0].learning_rate,
            )
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(START_LR, |g| g.1);
    let minimum =
        finite.iter().min_by(|a, b| a.smoothed_loss.total_cmp(&b.smoothed_loss)).map_or(START_LR, |p| p.learning_rate);
    RangeTest { stopped_early: points.len() < steps, points, steepest, minimum_tenth: minimum / 10.0 }
}

/// Writes `lr_find.jsonl` (the points) and `lr_find.png` into `dir`.
pub fn write(dir: &Path, test: &RangeTest) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    crate::fsx::write_json_lines_atomic(&dir.join("lr_find.jsonl"), &test.points)?;
    let points: Vec<(f64, f64)> =
        test.points.iter().map(|p| (p.learning_rate, p.smoothed_loss)).filter(|p| p.1.is_finite()).collect();
    let marks = [("steepest descent", test.steepest), ("minimum / 10", test.minimum_tenth)];
    crate::plot::lr_find_png(&dir.join("lr_find.png"), &points, &marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_grow_exponentially_from_start_to_end() {
        assert_eq!(rate(0, 100), START_LR);
        assert!((rate(99, 100) - END_LR).abs() < 1e-9);
        let ratio = rate(1, 100) / rate(0, 100);
        assert!((rate(51, 100) / rate(50, 100) - ratio).abs() < 1e-9);
    }

    #[test]
    fn smoothing_is_debiased() {
        // A constant loss smooths to itself from the first step.
        assert!(smooth(&[2.0, 2.0, 2.0]).iter().all(|s| (s - 2.0).abs() < 1e-12));
    }

    #[test]
    fn stops_once_the_smoothed_loss_passes_four_times_its_best() {
        // Smoothed: 1.0, then it climbs; with β = 0.98 one loss of x moves the debiased average of
        // two steps to (0.98 + 0.02·... ) — worked out: s2 = (0.98·0.02·1 + 0.02·x) / (1 - 0.98²).
        let s2 = |x: f64| (0.98 * 0.02 + 0.02 * x) / (1.0 - 0.98f64 * 0.98);
        // The x where s2 = 4: x = (4 (1 - 0.98²) - 0.98·0.02) / 0.02 = 7.0598...
        let x = (4.0 * (1.0 - 0.98f64 * 0.98) - 0.98 * 0.02) / 0.02;
        assert!((s2(x) - 4.0).abs() < 1e-9);
        assert!(!should_stop(&[1.0, x - 0.01]));
        assert!(should_stop(&[1.0, x + 0.01]));
        assert!(should_stop(&[1.0, f64::NAN]));
    }

    #[test]
    fn suggestions_read_the_steepest_fall_and_the_minimum() {
        // A loss flat at 2, falling fastest around step 40, lowest at step 60, then climbing.
        let steps = 100;
        let losses: Vec<f64> = (0..80)
            .map(|i| match i {
                0..=29 => 2.0,
                30..=49 => 2.0 - 0.08 * (i - 29) as f64,
                50..=60 => 0.4 - 0.01 * (i - 49) as f64,
                _ => 0.29 + 0.3 * (i - 60) as f64,
            })
            .collect();
        let t = analyse(&losses, steps);
        assert!(t.stopped_early);
        let s = smooth(&losses);
        let min_at = (10..75).min_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert!((t.minimum_tenth - rate(min_at, steps) / 10.0).abs() < 1e-15);
        // The steepest fall of the smoothed curve lies inside the falling stretch.
        assert!(t.steepest > rate(30, steps) && t.steepest < rate(min_at, steps), "{}", t.steepest);
    }
}
