//! One post-LayerNorm encoder layer (BERT's and DistilBERT's share the structure) as a single
//! autograd node on the CPU, for float32 and erf-GELU:
//!
//! ```text
//! qkv = x [Wq Wk Wv]ᵀ + b          ctx = attention(qkv)          a = ctx Woᵀ + bo
//! h1 = LayerNorm(dropout(a) + x)   f = h1 W1ᵀ + b1               g = GELU(f)
//! y = LayerNorm(dropout(g W2ᵀ + b2) + h1)
//! ```
//!
//! Built from the kernels of [`super::kernels`], with the whole backward written out. Why one
//! node: candle's autograd gives every node's every input a zero-filled gradient and then adds
//! the node's contribution to it, a fresh tensor each time. Per layer that is ten nodes with
//! activations of up to `tokens × 3072` floats, a large share of the backward pass (see
//! `emotune bench --profile`, "backward outside kernels", and the README's speed section).
//! Here the layer's intermediate gradients live in buffers the backward reuses and updates in
//! place (the GELU's gradient, the residual sums), and the weight gradients are written once.
//!
//! How the weight gradients reach the caller: candle's custom ops have at most three inputs,
//! so the node's inputs are `x` and one of the layer's parameters (the last LayerNorm weight,
//! which makes the node part of the graph whenever the layer is trained, even with frozen
//! inputs); the other fifteen parameters' gradients are left for [`super::grads::backward`],
//! which adds them to the `GradStore` that `loss.backward()` returns.

use super::kernels::prepared::Prepared;
use super::kernels::{self, ffn, profile, AttentionOp, Slices};
use super::nn::{Activation, Dropout, LayerNorm, Linear, SelfAttention};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// The parameters of one layer, borrowed from the model.
pub struct LayerParts<'a> {
    pub attention: &'a SelfAttention,
    /// After the attention block (`sa_layer_norm`, `attention.output.LayerNorm`).
    pub norm1: &'a LayerNorm,
    /// The feed-forward block's two projections (`lin1`/`lin2`, `intermediate`/`output`).
    pub ff1: &'a Linear,
    pub ff2: &'a Linear,
    /// After the feed-forward block (`output_layer_norm`, `output.LayerNorm`).
    pub norm2: &'a LayerNorm,
}

/// Dropout probabilities of the attention probabilities, the attention block's output and the
/// feed-forward block's output (DistilBERT has none on the attention output).
#[derive(Debug, Clone, Copy)]
pub struct LayerDropout {
    pub attention: f64,
    pub attention_output: f64,
    pub output: f64,
}

/// True where [`encoder_layer`] applies: float32 on the CPU with the erf GELU.
pub fn applies(x: &Tensor, activation: Activation) -> bool {
    kernels::applies(x) && activation == Activation::Gelu
}

/// Indices into [`EncoderLayerOp::params`].
const WQ: usize = 0;
const WO: usize = 6;
const BO: usize = 7;
const LN1_W: usize = 8;
const LN1_B: usize = 9;
const W1: usize = 10;
const B1: usize = 11;
const W2: usize = 12;
const B2: usize = 13;
const LN2_W: usize = 14;
const LN2_B: usize = 15;

/// The layer's output `[batch, seq, width]` for `x [batch, seq, width]` and the additive key
/// bias of [`super::attention_bias`]. Draws its dropout masks from `drop` in the order of the
/// layer-by-layer path (attention probabilities, attention output, feed-forward output).
pub fn encoder_layer(
    x: &Tensor,
    key_bias: &Tensor,
    parts: &LayerParts,
    p: LayerDropout,
    drop: &Dropout,
) -> anyhow::Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    let a = parts.attention;
    let params: Vec<Tensor> = [&a.q, &a.k, &a.v, &a.out]
        .into_iter()
        .flat_map(|l| [&l.weight, &l.bias])
        .chain([&parts.norm1.weight, &parts.norm1.bias])
        .chain([&parts.ff1.weight, &parts.ff1.bias, &parts.ff2.weight, &parts.ff2.bias])
        .chain([&parts.norm2.weight, &parts.norm2.bias])
        .cloned()
        .collect();
    let ffn = params[W1].dims().first().copied().unwrap_or(0);
    let sizes = [d * d, d, d * d, d, d * d, d, d * d, d, d, d, ffn * d, ffn, d * ffn, d, d, d];
    for (t, want) in params.iter().zip(sizes) {
        if t.elem_count() != want || !t.is_contiguous() {
            anyhow::bail!("encoder layer: a parameter of shape {:?} where {want} contiguous values belong", t.dims());
        }
    }
    // The dropout masks, drawn in the order of the layer-by-layer path.
    let mut rng = drop.rng.as_ref().map(|r| r.borrow_mut());
    let attention = AttentionOp::new(key_bias, (b, s, d), a.n_heads, rng.as_deref_mut().map(|r| (p.attention, r)))?;
    let drop1 = kernels::optional_keep_mask(b * s * d, rng.as_deref_mut().map(|r| (p.attention_output, r)));
    let drop2 = kernels::optional_keep_mask(b * s * d, rng.as_deref_mut().map(|r| (p.output, r)));
    std::mem::drop(rng);
    // A model loaded for inference has constant weights: its prepared forms run where nothing
    // tracks gradients; where the input does (attributions), the float32 weights run instead.
    let param_grads = params.iter().any(Tensor::track_op);
    let differentiable = param_grads || x.track_op();
    let prepared: Vec<_> = [&a.q, &a.k, &a.v, &a.out, parts.ff1, parts.ff2]
        .into_iter()
        .map(|l| if differentiable { None } else { l.prepared.clone() })
        .collect();
    let keep = drop.keep_for_backward && differentiable;
    let op = EncoderLayerOp {
        params,
        attention,
        drop1,
        drop2,
        eps: (parts.norm1.eps as f32, parts.norm2.eps as f32),
        dims: (b, s, d, ffn),
        keep,
        param_grads,
        prepared,
        bf16: super::precision::cpu_bf16_on(),
        saved: Mutex::new(None),
    };
    let anchor = op.params[LN2_W].clone();
    Ok(x.contiguous()?.apply_op2(&anchor, op)?)
}

/// What the backward needs from the forward (each `tokens × width` or `tokens × ffn`).
struct Saved {
    /// `[Wq; Wk; Wv]`, `[3 width, width]`.
    wqkv: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    /// The LayerNorms' inputs (residual sums).
    z1: Vec<f32>,
    h1: Vec<f32>,
    ffn: ffn::Saved,
    z2: Vec<f32>,
}

type Mask = (Option<Arc<Vec<u8>>>, f32);

struct EncoderLayerOp {
    /// `[Wq, bq, Wk, bk, Wv, bv, Wo, bo, ln1 w, ln1 b, W1, b1, W2, b2, ln2 w, ln2 b]`.
    params: Vec<Tensor>,
    attention: AttentionOp,
    drop1: Mask,
    drop2: Mask,
    eps: (f32, f32),
    /// `(batch, seq, width, ffn width)`.
    dims: (usize, usize, usize, usize),
    /// Keep the activations for a backward pass (false under `Dropout::inference` and where
    /// nothing tracks gradients).
    keep: bool,
    /// Compute the parameters' gradients in the backward (false where they are constants: the
    /// input's only).
    param_grads: bool,
    /// Inference forms of the six projections (q, k, v, out, ff1, ff2; see [`PROJECTIONS`]),
    /// when the model was loaded for inference and nothing tracks gradients.
    prepared: Vec<Option<Arc<Prepared>>>,
    /// Projections in bf16 on AMX (`precision::cpu_bf16` when built), forward and backward.
    bf16: bool,
    saved: Mutex<Option<Arc<Saved>>>,
}

/// The weights' indices into [`EncoderLayerOp::params`] of the projections in
/// [`EncoderLayerOp::prepared`], in order.
const PROJECTIONS: [usize; 6] = [WQ, WQ + 2, WQ + 4, WO, W1, W2];

fn masked<'a>(mask: &Mask, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    mask.0.as_ref().map_or(std::borrow::Cow::Borrowed(x), |m| std::borrow::Cow::Owned(kernels::dropped(m, mask.1, x)))
}

/// `(LayerNorm(dropout(h) + r), dropout(h) + r)`.
fn add_layer_norm(h: &[f32], r: &[f32], drop: &Mask, wb: (&[f32], &[f32]), eps: f32) -> (Vec<f32>, Vec<f32>) {
    kernels::add_layer_norm_rows(h, r, drop.0.as_deref().map(Vec::as_slice), drop.1, wb, eps)
}

impl EncoderLayerOp {
    /// `x Wᵀ + b` for the projections whose weights are `w[i]` (biases `w[i + 1]`) for `i` in
    /// `which`, side by side; by the prepared forms where the layer has them.
    fn project(&self, w: &[&[f32]], x: &[f32], k: usize, which: &[usize]) -> Vec<f32> {
        let slot = |i| PROJECTIONS.iter().position(|&p| p == i).expect("a projection's weight");
        let layers: Vec<_> = which.iter().map(|&i| (w[i], w[i + 1], self.prepared[slot(i)].as_deref())).collect();
        kernels::project(x, (x.len() / k, k), &layers)
    }

    fn ffn_weights<'a>(&'a self, w: &[&'a [f32]]) -> ffn::Weights<'a> {
        let prepared = [self.prepared[4].as_deref(), self.prepared[5].as_deref()];
        ffn::Weights { w1: w[W1], b1: w[B1], w2: w[W2], b2: w[B2], prepared }
    }
}

impl CustomOp2 for EncoderLayerOp {
    fn name(&self) -> &'static str {
        "emotune-encoder-layer"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, _s2: &CpuStorage, _l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let _precision = super::precision::cpu_bf16(self.bf16);
        let (b, s, d, ffn_width) = self.dims;
        let m = b * s;
        let x = kernels::f32_slice(s1, l1, "encoder layer x")?;
        if x.len() != m * d {
            bail!("encoder layer: input {:?}, expected [{b}, {s}, {d}]", l1.dims());
        }
        let ps = Slices::new(&self.params);
        let w: Vec<&[f32]> = (0..self.params.len()).map(|i| ps.get(i)).collect::<Result<_>>()?;
        let mut section = profile::Sections::default();
        section.start("· qkv projection");
        // One projection for q, k and v: their weights side by side ([3d, d], kept for the backward).
        let (wqkv, mut qkv) = if self.keep {
            let wqkv: Vec<f32> = [w[WQ], w[WQ + 2], w[WQ + 4]].concat();
            let bqkv: Vec<f32> = [w[WQ + 1], w[WQ + 3], w[WQ + 5]].concat();
            let qkv = kernels::filled(m * 3 * d, |o| kernels::linear_into(o, 3 * d, x, &wqkv, &bqkv, (m, 3 * d, d)));
            (wqkv, qkv)
        } else {
            // no backward pass to come: no concatenated copy of the weights
            (Vec::new(), self.project(&w, x, d, &[WQ, WQ + 2, WQ + 4]))
        };
        section.start("· attention");
        let ctx = kernels::filled(m * d, |o| self.attention.forward_into(&qkv, (b, s, d), o));
        if !self.keep {
            qkv = Vec::new();
        }
        section.start("· output projection");
        let a = self.project(&w, &ctx, d, &[WO]);
        section.start("· add + LayerNorm 1");
        let (h1, z1) = add_layer_norm(&a, x, &self.drop1, (w[LN1_W], w[LN1_B]), self.eps.0);
        drop(a);
        let (o2, ffn_saved) =
            ffn::forward(&h1, &self.ffn_weights(&w), (m, d, ffn_width), (self.keep, self.bf16), &mut section);
        section.start("· add + LayerNorm 2");
        let (y, z2) = add_layer_norm(&o2, &h1, &self.drop2, (w[LN2_W], w[LN2_B]), self.eps.1);
        if self.keep {
            let ffn = ffn_saved.expect("kept when the layer keeps its activations");
            *crate::sync::lock(&self.saved) = Some(Arc::new(Saved { wqkv, qkv, ctx, z1, h1, ffn, z2 }));
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        anchor: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let _span = profile::Span::new("emotune-encoder-layer-backward");
        let _precision = super::precision::cpu_bf16(self.bf16);
        let Some(sv) = crate::sync::lock(&self.saved).clone() else {
            bail!("encoder layer: no backward pass: the forward ran for inference only (Dropout::inference, or a model loaded for inference)");
        };
        let (b, s, d, ffn_width) = self.dims;
        let m = b * s;
        let grad = grad.contiguous()?;
        let ps = Slices::new(&self.params);
        let w: Vec<&[f32]> = (0..self.params.len()).map(|i| ps.get(i)).collect::<Result<_>>()?;
        let io = [x.clone(), grad];
        let io = Slices::new(&io);
        let (x, dy) = (io.get(0)?, io.get(1)?);
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; 16];

        // y = LN2(z2), z2 = dropout2(o2) + h1
        let mut section = profile::Sections::default();
        section.start("· LayerNorm 2 backward");
        let mut ln2 = Vec::new();
        let dz2 =
            kernels::filled(m * d, |o| ln2 = kernels::layer_norm_backward_into(&sv.z2, w[LN2_W], dy, self.eps.1, o));
        let (dw, db) = ln2.split_at(d);
        grads[LN2_W] = Some(dw.to_vec());
        grads[LN2_B] = Some(db.to_vec());
        // o2 = GELU(h1 W1ᵀ + b1) W2ᵀ + b2; h1 also feeds z2 directly
        let mut dh1 = dz2;
        // a copy where there is no dropout: dh1 is accumulated into while do2 is read
        let do2 = masked(&self.drop2, &dh1).into_owned();
        let weights = self.ffn_weights(&w);
        let g = ffn::backward(
            &do2,
            &sv.ffn,
            &weights,
            (&sv.h1, &mut dh1),
            (m, d, ffn_width),
            self.param_grads,
            &mut section,
        );
        drop(do2);
        if let Some(g) = g {
            [grads[W1], grads[B1], grads[W2], grads[B2]] = [g.w1, g.b1, g.w2, g.b2].map(Some);
        }
        // h1 = LN1(z1), z1 = dropout1(a) + x
        section.start("· LayerNorm 1 backward");
        let mut ln1 = Vec::new();
        let dz1 =
            kernels::filled(m * d, |o| ln1 = kernels::layer_norm_backward_into(&sv.z1, w[LN1_W], &dh1, self.eps.0, o));
        drop(dh1);
        let (dw, db) = ln1.split_at(d);
        grads[LN1_W] = Some(dw.to_vec());
        grads[LN1_B] = Some(db.to_vec());
        let da = masked(&self.drop1, &dz1);
        // a = ctx Woᵀ + bo
        section.start("· output projection backward");
        let dctx = kernels::filled(m * d, |o| kernels::matmul_into(o, false, (m, d, d), &da, (d, 1), w[WO], (d, 1)));
        if self.param_grads {
            grads[WO] = Some(kernels::filled(d * d, |o| kernels::weight_grad_into(o, &da, d, &sv.ctx, (m, d, d))));
            grads[BO] = Some(kernels::column_sums(&da, d, m, d));
        }
        drop(da);
        section.start("· attention backward");
        let dqkv = kernels::filled(m * 3 * d, |o| self.attention.backward_into(&sv.qkv, &dctx, (b, s, d), o));
        drop(dctx);
        // qkv = x [Wq Wk Wv]ᵀ + b; x also feeds z1 directly
        section.start("· qkv projection backward");
        let mut dx = dz1;
        kernels::matmul_into(kernels::as_uninit(&mut dx), true, (m, d, 3 * d), &dqkv, (3 * d, 1), &sv.wqkv, (d, 1));
        if self.param_grads {
            let dwqkv = kernels::filled(3 * d * d, |o| kernels::weight_grad_into(o, &dqkv, 3 * d, x, (m, 3 * d, d)));
            let dbqkv = kernels::column_sums(&dqkv, 3 * d, m, 3 * d);
            for i in 0..3 {
                grads[WQ + 2 * i] = Some(dwqkv[i * d * d..(i + 1) * d * d].to_vec());
                grads[WQ + 2 * i + 1] = Some(dbqkv[i * d..(i + 1) * d].to_vec());
            }
        }
        drop(dqkv);
        section.start("· gradient hand-over");
        let device = &candle_core::Device::Cpu;
        let anchor_grad = if self.param_grads { Some(hand_over(&self.params, grads)?) } else { None };
        let dx = Tensor::from_vec(dx, (b, s, d), device)?;
        debug_assert_eq!(anchor.id(), self.params[LN2_W].id());
        Ok((Some(dx), anchor_grad))
    }
}

/// Leaves the parameters' gradients on this thread for [`backward`] and returns the anchor's.
fn hand_over(params: &[Tensor], grads: Vec<Option<Vec<f32>>>) -> Result<Tensor> {
    let device = &candle_core::Device::Cpu;
    let tensor = |p: &Tensor, g: Option<Vec<f32>>| {
        Tensor::from_vec(g.expect("every parameter's gradient is computed above"), p.shape(), device)
    };
    let mut all: Vec<(Tensor, Tensor)> =
        params.iter().zip(grads).map(|(p, g)| Ok((p.clone(), tensor(p, g)?))).collect::<Result<_>>()?;
    let (_, anchor) = all.remove(LN2_W);
    super::grads::leave(all);
    Ok(anchor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::grads::backward;
    use crate::model::nn::{activate, attention_bias};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn var(shape: &[usize], scale: f32, rng: &mut ChaCha8Rng) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * scale).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn linear(d_in: usize, d_out: usize, rng: &mut ChaCha8Rng) -> Linear {
        Linear {
            weight: var(&[d_out, d_in], 0.3, rng).as_tensor().clone(),
            bias: var(&[d_out], 0.1, rng).as_tensor().clone(),
            prepared: None,
        }
    }

    fn norm(d: usize, rng: &mut ChaCha8Rng) -> LayerNorm {
        let w = (var(&[d], 0.2, rng).as_tensor() + 1.0).unwrap();
        LayerNorm {
            weight: Var::from_tensor(&w).unwrap().as_tensor().clone(),
            bias: var(&[d], 0.1, rng).as_tensor().clone(),
            eps: 1e-12,
        }
    }

    /// A layer's parameters drawn at random (as variables), in a fixed order.
    struct RandomLayer {
        attention: SelfAttention,
        norm1: LayerNorm,
        ff1: Linear,
        ff2: Linear,
        norm2: LayerNorm,
    }

    impl RandomLayer {
        fn new(d: usize, heads: usize, ffn: usize, attention_dropout: f64, rng: &mut ChaCha8Rng) -> RandomLayer {
            let attention = SelfAttention {
                q: linear(d, d, rng),
                k: linear(d, d, rng),
                v: linear(d, d, rng),
                out: linear(d, d, rng),
                n_heads: heads,
                dropout: attention_dropout,
            };
            let (norm1, ff1, ff2, norm2) = (norm(d, rng), linear(d, ffn, rng), linear(ffn, d, rng), norm(d, rng));
            RandomLayer { attention, norm1, ff1, ff2, norm2 }
        }

        fn parts(&self) -> LayerParts<'_> {
            LayerParts {
                attention: &self.attention,
                norm1: &self.norm1,
                ff1: &self.ff1,
                ff2: &self.ff2,
                norm2: &self.norm2,
            }
        }
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Under `Dropout::inference` the layer gives bitwise the output of `Dropout::eval`, and a
    /// backward pass through it fails with a clear error instead of wrong gradients.
    #[test]
    fn inference_mode_gives_the_same_output_and_refuses_a_backward() {
        let (b, s, d, heads, ffn) = (2, 5, 8, 2, 12);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let layer = RandomLayer::new(d, heads, ffn, 0.1, &mut rng);
        let parts = layer.parts();
        let x = var(&[b, s, d], 1.0, &mut rng);
        let bias = attention_bias(&Tensor::ones((b, s), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let p = LayerDropout { attention: 0.1, attention_output: 0.1, output: 0.1 };
        let eval = encoder_layer(x.as_tensor(), &bias, &parts, p, &Dropout::eval()).unwrap();
        let inference = encoder_layer(x.as_tensor(), &bias, &parts, p, &Dropout::inference()).unwrap();
        let (e, i): (Vec<f32>, Vec<f32>) =
            (eval.flatten_all().unwrap().to_vec1().unwrap(), inference.flatten_all().unwrap().to_vec1().unwrap());
        assert!(e.iter().zip(&i).all(|(a, b)| a.to_bits() == b.to_bits()));
        let err = backward(&inference.sum_all().unwrap()).unwrap_err().to_string();
        assert!(err.contains("Dropout::inference"), "{err}");
    }

    /// The fused layer against the layer-by-layer path (each kernel itself checked against
    /// candle's composed ops in `kernels`): output, input gradient and all sixteen parameter
    /// gradients, with dropout on (the same draws) and padded keys.
    #[test]
    fn fused_layer_matches_the_layer_by_layer_path() {
        let (b, s, d, heads, ffn) = (3, 7, 16, 4, 40);
        for p in [
            LayerDropout { attention: 0.2, attention_output: 0.1, output: 0.15 },
            LayerDropout { attention: 0.1, attention_output: 0.0, output: 0.1 },
        ] {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let layer = RandomLayer::new(d, heads, ffn, p.attention, &mut rng);
            let parts = layer.parts();
            let RandomLayer { attention, norm1, ff1, ff2, norm2 } = &layer;
            let x = var(&[b, s, d], 1.0, &mut rng);
            let r = var(&[b, s, d], 1.0, &mut rng).as_tensor().detach();
            let mut mask = vec![1f32; b * s];
            mask[s - 2..s].fill(0.0);
            mask[2 * s - 1] = 0.0;
            let bias = attention_bias(&Tensor::from_vec(mask, (b, s), &Device::Cpu).unwrap()).unwrap();

            let y = encoder_layer(x.as_tensor(), &bias, &parts, p, &Dropout::train(9)).unwrap();
            let fused = backward(&(&y * &r).unwrap().sum_all().unwrap()).unwrap();

            let drop = Dropout::train(9);
            let a = attention.forward(x.as_tensor(), &bias, &drop).unwrap();
            let h1 = norm1.forward_residual(&a, x.as_tensor(), &drop, p.attention_output).unwrap();
            let f = activate(&ff1.forward(&h1).unwrap(), Activation::Gelu).unwrap();
            let y_ref = norm2.forward_residual(&ff2.forward(&f).unwrap(), &h1, &drop, p.output).unwrap();
            let reference = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();

            assert!(max_rel_diff(&y, &y_ref) < 1e-5, "output differs: {}", max_rel_diff(&y, &y_ref));
            let mut tensors = vec![("x", x.as_tensor())];
            for (name, l) in [("q", &attention.q), ("k", &attention.k), ("v", &attention.v), ("out", &attention.out)] {
                tensors.extend([(name, &l.weight), (name, &l.bias)]);
            }
            for (name, l) in [("norm1", &norm1), ("norm2", &norm2)] {
                tensors.extend([(name, &l.weight), (name, &l.bias)]);
            }
            for (name, l) in [("ff1", &ff1), ("ff2", &ff2)] {
                tensors.extend([(name, &l.weight), (name, &l.bias)]);
            }
            assert_eq!(tensors.len(), 17);
            for (name, t) in tensors {
                let got = fused.get(t).unwrap_or_else(|| panic!("no gradient for {name} {:?}", t.dims()));
                let want = reference.get(t).expect("reference gradient");
                let diff = max_rel_diff(got, want);
                assert!(diff < 1e-4, "{name} {:?}: relative difference {diff}", t.dims());
            }
        }
    }
}
