//! Rows whose label looks wrong (`check-data --label-errors`, `--label-errors-from`).
//!
//! Two ways in. Cross-fitting: the train split is cut into K stratified folds, `--model` is
//! fine-tuned on K-1 of them and scores the one held out, so every row gets probabilities from a
//! model that never saw it; [`confident`] learning then picks the rows whose label the others
//! contradict. Or, with no extra training, the area under the margin a finished run recorded
//! ([`crate::train::dynamics`]): rows the model kept ranking below another label.
//! [`report`] prints and writes what either found, [`probabilities`] keeps the out-of-fold
//! probabilities.

pub mod confident;
pub mod probabilities;
pub mod report;

use crate::data::{Dataset, Split};
use crate::train::{dynamics, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use confident::RankBy;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// A row under suspicion.
#[derive(Debug, Clone, Serialize)]
pub struct Suspect {
    pub rank: usize,
    pub location: String,
    pub text: String,
    /// The given label (labels joined by `+` for multi-label rows).
    pub given: String,
    pub suggested: String,
    /// Lower is more suspect: self-confidence or normalised margin, or the AUM.
    pub score: f64,
}

/// What a search found, in the order to read it.
#[derive(Debug, Clone, Serialize)]
pub struct LabelErrors {
    /// How the rows were scored, in words.
    pub method: String,
    pub score: &'static str,
    pub rows: usize,
    pub labels: Vec<String>,
    pub suspects: Vec<Suspect>,
    /// (given, suggested, estimated rows, flagged rows), most estimated first.
    pub pairs: Vec<(String, String, i64, usize)>,
    /// Confident learning's thresholds, joints and noise matrix (cross-fitting only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confident_learning: Option<confident::Found>,
    pub seconds: f64,
}

/// How the folds are fitted.
pub struct CrossFit {
    /// The recipe of each fold's fine-tuning (`model`, epochs, rate, batch, seed, precision).
    pub recipe: TrainConfig,
    pub folds: usize,
    pub rank_by: RankBy,
}

/// Cross-fits `dataset`'s train split and runs confident learning on the out-of-fold
/// probabilities. `save` receives the probabilities (n × k, row-major) before the search.
pub fn by_cross_fitting(
    dataset: &Dataset,
    how: &CrossFit,
    device: &Device,
    save: impl FnOnce(&Split, &[f64]) -> Result<()>,
) -> Result<LabelErrors> {
    let started = Instant::now();
    let train = train_split(dataset)?;
    let probs = out_of_fold(dataset, train, how, device)?;
    save(train, &probs)?;
    let method = format!(
        "confident learning on out-of-fold probabilities ({} folds, {} epoch(s) each of {})",
        how.folds, how.recipe.num_train_epochs, how.recipe.model
    );
    Ok(confident_search(dataset, train, &probs, how.rank_by, method, started))
}

/// Confident learning on out-of-fold probabilities saved by an earlier search
/// (`--save-probabilities`), with no training.
pub fn from_probabilities(dataset: &Dataset, path: &Path, rank_by: RankBy) -> Result<LabelErrors> {
    let started = Instant::now();
    let train = train_split(dataset)?;
    let probs = probabilities::read(path, train, &dataset.labels)?;
    let method = format!("confident learning on the out-of-fold probabilities in {}", path.display());
    Ok(confident_search(dataset, train, &probs, rank_by, method, started))
}

/// The train split of single-label data.
fn train_split(dataset: &Dataset) -> Result<&Split> {
    if dataset.multi_label {
        bail!(
            "--label-errors searches single-label data; {} is multi-label (--label-errors-from RUN ranks a \
             multi-label run by its margins)",
            dataset.name
        );
    }
    dataset.split("train").with_context(|| format!("{}: no train split to search", dataset.name))
}

fn confident_search(
    dataset: &Dataset,
    train: &Split,
    probs: &[f64],
    rank_by: RankBy,
    method: String,
    started: Instant,
) -> LabelErrors {
    let labels: Vec<usize> = train.examples.iter().map(|e| e.label()).collect();
    let k = dataset.labels.len();
    let found = confident::find(probs, &labels, k, rank_by);
    let suggest =
        |i: usize| crate::infer::argmax(&probs[i * k..(i + 1) * k].iter().map(|&p| p as f32).collect::<Vec<_>>());
    let suspects: Vec<Suspect> = found
        .issues
        .iter()
        .enumerate()
        .map(|(r, &i)| suspect(r, train, i, &dataset.labels, &dataset.labels[suggest(i)], found.scores[i]))
        .collect();
    let estimated = |g: usize, s: usize| found.joint[g][s];
    LabelErrors {
        method,
        score: match rank_by {
            RankBy::SelfConfidence => "self-confidence",
            RankBy::NormalizedMargin => "normalised margin",
        },
        rows: train.len(),
        pairs: pairs(&suspects, &dataset.labels, estimated),
        labels: dataset.labels.clone(),
        suspects,
        confident_learning: Some(found),
        seconds: started.elapsed().as_secs_f64(),
    }
}

fn suspect(rank: usize, split: &Split, i: usize, labels: &[String], suggested: &str, score: f64) -> Suspect {
    let e = &split.examples[i];
    let given: Vec<&str> = e.labels.iter().map(|&l| labels[l].as_str()).collect();
    Suspect {
        rank: rank + 1,
        location: split.location(i),
        text: e.text.clone(),
        given: given.join("+"),
        suggested: suggested.to_string(),
        score,
    }
}

/// Every (given, suggested) pair of single labels with its estimate and flagged count.
fn pairs(
    suspects: &[Suspect],
    labels: &[String],
    estimated: impl Fn(usize, usize) -> i64,
) -> Vec<(String, String, i64, usize)> {
    let mut out = Vec::new();
    for (g, given) in labels.iter().enumerate() {
        for (s, suggested) in labels.iter().enumerate().filter(|&(s, _)| s != g) {
            let flagged = suspects.iter().filter(|x| &x.given == given && &x.suggested == suggested).count();
            let est = estimated(g, s);
            if est > 0 || flagged > 0 {
                out.push((given.clone(), suggested.clone(), est, flagged));
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse((p.2, p.3)));
    out
}

/// The out-of-fold probabilities of every row of `train` (n × k, row-major).
fn out_of_fold(dataset: &Dataset, train: &Split, how: &CrossFit, device: &Device) -> Result<Vec<f64>> {
    let k = dataset.labels.len();
    let labels: Vec<usize> = train.examples.iter().map(|e| e.label()).collect();
    let fold = stratified_folds(&labels, k, how.folds, how.recipe.seed)?;
    let mut probs = vec![f64::NAN; train.len() * k];
    let begun = Instant::now();
    for f in 0..how.folds {
        let started = Instant::now();
        let held: Vec<usize> = (0..train.len()).filter(|&i| fold[i] == f).collect();
        let rest: Vec<usize> = (0..train.len()).filter(|&i| fold[i] != f).collect();
        crate::status!(
            "fold {}/{}: fine-tuning on {} rows, scoring the {} held out",
            f + 1,
            how.folds,
            rest.len(),
            held.len()
        );
        let fold_data = Dataset {
            name: format!("{} (fold {} of {})", dataset.name, f + 1, how.folds),
            config_name: dataset.config_name.clone(),
            labels: dataset.labels.clone(),
            splits: vec![subset(train, &rest, "train"), subset(train, &held, "validation")],
            multi_label: false,
        };
        // The held-out fold is the fit's validation split: its last evaluation is the score.
        let held_probs = crate::train::fit(&how.recipe, &fold_data, device)?;
        for (&i, p) in held.iter().zip(&held_probs) {
            for (j, &v) in p.iter().enumerate() {
                probs[i * k + j] = v as f64;
            }
        }
        let (done, all) = (f + 1, how.folds);
        let left = begun.elapsed().as_secs_f64() / done as f64 * (all - done) as f64;
        let eta = if done < all { format!("; about {left:.0} s to go") } else { String::new() };
        crate::status!("fold {done}/{all} done in {:.0} s{eta}", started.elapsed().as_secs_f64());
    }
    Ok(probs)
}

/// The rows `rows` of `split`, as a split named `name`.
fn subset(split: &Split, rows: &[usize], name: &str) -> Split {
    Split {
        name: name.to_string(),
        files: split.files.clone(),
        examples: rows.iter().map(|&i| split.examples[i].clone()).collect(),
        file_of: rows.iter().map(|&i| split.file_of[i]).collect(),
        sliced_from: None,
    }
}

/// Each row's fold: every class's rows shuffled (seeded) and dealt round the folds, so each
/// fold holds each class in proportion.
pub fn stratified_folds(labels: &[usize], k: usize, folds: usize, seed: u64) -> Result<Vec<usize>> {
    if folds < 2 {
        bail!("--folds must be at least 2");
    }
    if labels.len() < folds {
        bail!("{} rows cannot be cut into {folds} folds", labels.len());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold = vec![0; labels.len()];
    let mut dealt = 0;
    for class in 0..k {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rows.shuffle(&mut rng);
        for i in rows {
            fold[i] = dealt % folds;
            dealt += 1;
        }
    }
    Ok(fold)
}

/// Ranks the rows of a finished run by their area under the margin (read from its
/// [`dynamics::FILE`]); rows with a negative AUM, whose gold logit trailed another on average,
/// are flagged.
pub fn from_run(dir: &Path) -> Result<LabelErrors> {
    let started = Instant::now();
    let path = dir.join(dynamics::FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("--label-errors-from: reading {} (a run trained by this version of emotune writes it)", path.display())
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(at)?;
        let field = |name: &str| v.get(name).with_context(|| format!("{}: no field {name}", at()));
        let given = match (v.get("label"), v.get("labels")) {
            (Some(l), _) => l.as_str().unwrap_or_default().to_string(),
            (None, Some(ls)) => {
                ls.as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("+")
            }
            (None, None) => bail!("{}: no label", at()),
        };
        let aum = field("aum")?.as_f64().with_context(|| format!("{}: aum is not a number", at()))?;
        rows.push(Suspect {
            rank: 0,
            location: field("location")?.as_str().unwrap_or_default().to_string(),
            text: field("text")?.as_str().unwrap_or_default().to_string(),
            given,
            suggested: v.get("leans_to").and_then(|l| l.as_str()).unwrap_or_default().to_string(),
            score: aum,
        });
    }
    let total = rows.len();
    let mut suspects: Vec<Suspect> = rows.into_iter().filter(|s| s.score < 0.0).collect();
    suspects.sort_by(|a, b| a.score.total_cmp(&b.score));
    for (r, s) in suspects.iter_mut().enumerate() {
        s.rank = r + 1;
    }
    let mut labels: Vec<String> = suspects.iter().flat_map(|s| [s.given.clone(), s.suggested.clone()]).collect();
    labels.sort();
    labels.dedup();
    Ok(LabelErrors {
        method: format!("area under the margin of the run in {}", dir.display()),
        score: "AUM",
        rows: total,
        pairs: pairs(&suspects, &labels, |_, _| 0),
        labels,
        suspects,
        confident_learning: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_seeded_and_cover_every_row() {
        let labels: Vec<usize> = (0..103).map(|i| if i % 10 == 0 { 1 } else { 0 }).collect();
        let f = stratified_folds(&labels, 2, 5, 42).unwrap();
        assert_eq!(f, stratified_folds(&labels, 2, 5, 42).unwrap());
        assert_ne!(f, stratified_folds(&labels, 2, 5, 43).unwrap());
        for fold in 0..5 {
            let rare = (0..103).filter(|&i| f[i] == fold && labels[i] == 1).count();
            let all = (0..103).filter(|&i| f[i] == fold).count();
            assert!((2..=3).contains(&rare) && (20..=21).contains(&all), "fold {fold}: {rare} of {all}");
        }
        assert!(stratified_folds(&labels, 2, 1, 42).is_err());
    }
}
