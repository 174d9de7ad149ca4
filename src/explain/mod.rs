//! Why a model gave a label: Integrated Gradients (Sundararajan et al. 2017) over the embedding
//! layer's output, as Captum's `LayerIntegratedGradients(forward, model.<base>.embeddings)`
//! computes them, so its numbers are the anchor (`bench/captum_anchor.py`).
//!
//! ```text
//! e(x)  the embedding layer's output for the text, e(x') for the baseline: the same sequence
//!       with every token from the text replaced by the padding token (special tokens kept)
//! F     the explained class's logit (or its probability) as a function of that output
//! IG_t  = Σ_h (e(x) - e(x'))_{t,h} · Σ_i w_i ∂F/∂e (e(x') + α_i (e(x) - e(x')))_{t,h}
//! δ     = Σ_t IG_t - (F(x) - F(x'))      Captum's convergence delta
//! ```
//!
//! The nodes α_i and weights w_i are Gauss-Legendre's on [0, 1] (Captum's default method,
//! `gausslegendre`). The steps of one text go through the model as one batch, with the two
//! end points (α = 0 and 1, weight 0) in the same batch for F(x) and F(x'), so that δ measures
//! the quadrature and not a difference between two code paths. The model's weights are
//! constants when it was loaded for inference: only the input's gradient is made.

pub mod args;
pub mod words;

use crate::infer::{Prediction, Predictor};
use crate::model::{backward, Dropout, LoadedModel};
use crate::tokenize::{TextEncoder, TokenSpan};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
pub use words::{render_terminal, TokenScore, Word};

/// The most steps accepted: each step is a row of the batch that goes through the model.
pub const MAX_STEPS: usize = 1024;

/// What is explained: the class's logit (Captum's usual forward) or its probability (softmax,
/// or the label's sigmoid for a multi-label model).
#[derive(
    clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Logit,
    Probability,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Logit => "logit",
            Target::Probability => "probability",
        }
    }
}

/// How to explain.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Gauss-Legendre nodes between the baseline and the text.
    pub steps: usize,
    pub target: Target,
    /// The matmuls' dtype (bf16: on AMX tiles on the CPU, autocast on a GPU); None: float32.
    pub autocast: Option<DType>,
}

impl Default for Options {
    fn default() -> Self {
        Options { steps: 32, target: Target::Logit, autocast: None }
    }
}

impl Options {
    pub fn check(&self) -> Result<()> {
        if !(1..=MAX_STEPS).contains(&self.steps) {
            bail!("--explain-steps must be between 1 and {MAX_STEPS} (got {})", self.steps);
        }
        Ok(())
    }
}

/// The attributions of one text to one label.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub label: usize,
    pub target: Target,
    pub steps: usize,
    /// `F(x) - F(x')`: what the attributions should sum to.
    pub difference: f32,
    /// Captum's convergence delta: the sum of the attributions minus `F(x) - F(x')`.
    pub delta: f32,
    /// Every token, special ones included (theirs is 0 where the baseline keeps them as they are).
    pub tokens: Vec<TokenScore>,
    /// The text's words (the tokenizer's pre-tokenized words, special tokens left out).
    pub words: Vec<Word>,
}

/// Gauss-Legendre's nodes and weights on [0, 1] (the weights sum to 1), by Newton's method on
/// the Legendre polynomial of degree `n`, as `numpy.polynomial.legendre.leggauss` rescaled.
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut nodes, mut weights) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        // Tricomi's first guess at the i-th root from the right, then Newton to convergence.
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        for _ in 0..100 {
            let (p, dp) = legendre(n, x);
            let step = p / dp;
            x -= step;
            if step.abs() < 1e-16 {
                break;
            }
        }
        let (_, derivative) = legendre(n, x);
        // on [-1, 1] the weight is 2 / ((1 - x²) P'(x)²); halved for [0, 1]
        weights.push(1.0 / ((1.0 - x * x) * derivative * derivative));
        nodes.push(0.5 * (1.0 + x));
    }
    nodes.reverse();
    weights.reverse();
    (nodes, weights)
}

/// `(P_n(x), P_n'(x))` by the three-term recurrence.
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        (p0, p1) = (p1, ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k);
    }
    (p1, n as f64 * (x * p1 - p0) / (x * x - 1.0))
}

/// Explains `text`'s classification as each of `labels`, one backward pass per label over one
/// shared forward pass of the steps.
pub fn explain(
    model: &LoadedModel,
    encoder: &TextEncoder,
    text: &str,
    labels: &[usize],
    opts: &Options,
    device: &Device,
) -> Result<Vec<Explanation>> {
    opts.check()?;
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let n_labels = model.config.num_labels();
    if let Some(&l) = labels.iter().find(|&&l| l >= n_labels) {
        bail!("cannot explain label id {l}: the model has {n_labels} labels");
    }
    let _precision = crate::model::precision::enter(opts.autocast, device);
    let (row, spans) = encoder.tokenize_with_spans(text)?;
    let baseline = crate::tokenize::Tokenized {
        ids: row.ids.iter().zip(&spans).map(|(&id, s)| if s.special { id } else { encoder.pad_id() }).collect(),
        ..row.clone()
    };
    let (alphas, weights) = gauss_legendre(opts.steps);
    let ends = encoder.batch(&[&baseline, &row], device)?;
    let e = model.model.embed(&ends)?.detach();
    let (e_base, e_text) = (e.narrow(0, 0, 1)?, e.narrow(0, 1, 1)?);
    let diff = (&e_text - &e_base)?;
    // the steps, then α = 0 and α = 1 for F(x') and F(x)
    let alphas: Vec<f32> = alphas.iter().map(|&a| a as f32).chain([0.0, 1.0]).collect();
    let rows = alphas.len();
    let alpha = Tensor::from_vec(alphas, (rows, 1, 1), device)?;
    let path = Var::from_tensor(&e_base.broadcast_add(&diff.broadcast_mul(&alpha)?)?)?;
    let batch = encoder.batch(&vec![&row; rows], device)?;
    let encoded = model.model.encode_embedded(path.as_tensor(), &batch, &Dropout::eval())?;
    let outputs = match opts.target {
        Target::Logit => model.model.head(&encoded, &Dropout::eval())?,
        Target::Probability => model.config.task.probabilities(&model.model.head(&encoded, &Dropout::eval())?)?,
    };
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).chain([0.0, 0.0]).collect();
    let w = Tensor::from_vec(w, rows, device)?;
    let mut out = Vec::with_capacity(labels.len());
    for &label in labels {
        let f = outputs.narrow(1, label, 1)?.squeeze(1)?;
        let grads = backward(&f.mul(&w)?.sum_all()?)?;
        let g = grads.get(path.as_tensor()).context("integrated gradients: no gradient reached the embeddings")?;
        let per_token: Vec<f32> = diff.squeeze(0)?.mul(&g.sum(0)?)?.sum(D::Minus1)?.to_vec1()?;
        let ends: Vec<f32> = f.narrow(0, rows - 2, 2)?.to_vec1()?;
        out.push(assemble(text, label, opts, &spans, per_token, ends[1] - ends[0]));
    }
    Ok(out)
}

/// Explains each of `texts` (classified as `preds`) as `label`, else as its predicted labels,
/// with a progress bar when there are several.
pub fn explain_predictions(
    predictor: &Predictor,
    texts: &[&str],
    preds: &[Prediction],
    label: Option<usize>,
    opts: &Options,
) -> Result<Vec<Vec<Explanation>>> {
    let bar = (texts.len() > 1).then(|| crate::progress::bar(texts.len() as u64, "explaining", "text"));
    let mut out = Vec::with_capacity(texts.len());
    for (text, p) in texts.iter().zip(preds) {
        let labels = label.map_or_else(|| p.labels.clone(), |l| vec![l]);
        out.push(explain(&predictor.model, &predictor.encoder, text, &labels, opts, &predictor.device)?);
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(out)
}

/// The dtype explanations compute in for `--dtype`: bf16 on a GPU or on a CPU with a bf16
/// engine (AMX tiles, or AVX-512 BF16 on AMD), else float32 (said once).
pub fn precision(device: &Device, dtype: crate::model::Dtype) -> Option<DType> {
    if dtype != crate::model::Dtype::Bf16 {
        return None;
    }
    if device.is_cpu() && !crate::model::kernels::amx::available() {
        log::warn!("--dtype bf16: {}, so explanations compute in float32", crate::model::kernels::amx::NO_ENGINE);
        return None;
    }
    Some(DType::BF16)
}

fn assemble(text: &str, label: usize, opts: &Options, spans: &[TokenSpan], scores: Vec<f32>, diff: f32) -> Explanation {
    let tokens: Vec<TokenScore> =
        spans.iter().zip(scores).map(|(span, score)| TokenScore { span: span.clone(), score }).collect();
    let total: f64 = tokens.iter().map(|t| t.score as f64).sum();
    Explanation {
        label,
        target: opts.target,
        steps: opts.steps,
        difference: diff,
        delta: (total - diff as f64) as f32,
        words: words::merge(text, &tokens),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `numpy.polynomial.legendre.leggauss(n)` rescaled to [0, 1] as Captum does
    /// (values printed by numpy 2.4 to 17 digits; the error measured is below 2e-16).
    #[test]
    fn gauss_legendre_matches_numpy() {
        let (x, w) = gauss_legendre(3);
        let want_x = [0.1127016653792583, 0.5, 0.8872983346207417];
        let want_w = [0.2777777777777778, 0.4444444444444444, 0.2777777777777778];
        for i in 0..3 {
            assert!((x[i] - want_x[i]).abs() < 1e-15, "node {i}: {} vs {}", x[i], want_x[i]);
            assert!((w[i] - want_w[i]).abs() < 1e-15, "weight {i}: {} vs {}", w[i], want_w[i]);
        }
        for n in [1, 2, 7, 32, 100] {
            let (x, w) = gauss_legendre(n);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-13, "weights of {n} sum to 1");
            assert!(x.windows(2).all(|p| p[0] < p[1]) && x[0] > 0.0 && x[n - 1] < 1.0, "{n} nodes in (0, 1)");
            // exact for polynomials of degree 2n - 1: ∫₀¹ t^(2n-1) dt = 1 / 2n
            let integral: f64 = x.iter().zip(&w).map(|(t, w)| w * t.powi(2 * n as i32 - 1)).sum();
            assert!((integral - 1.0 / (2 * n) as f64).abs() < 1e-13, "degree {} with {n} nodes", 2 * n - 1);
        }
    }
}
