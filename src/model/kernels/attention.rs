//! Multi-head scaled dot-product attention as one autograd node on the output of one fused
//! q/k/v projection: scores, masked softmax, dropout and the weighted sum; the backward
//! recomputes the probabilities instead of keeping them. Under `precision::cpu_bf16` the
//! per-head products run in bf16 on the bf16 engine (f32 sums), as under PyTorch's autocast; the
//! softmax, its backward and the dropout stay f32.

use super::amx::{Serial, Start};
use super::amx_pack::{pack_lhs_serial, pack_rhs_serial};
use super::buffer::{as_uninit, f32_slice, filled};
use super::dropout::optional_keep_mask;
use super::linear::gemm_strided;
use super::profile;
use super::simd::{fast_exp, lane_dot, lane_max, lane_sum, simd_dispatch};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

simd_dispatch! {
    /// Each row of `p` (rows of `bias.len()`) becomes `softmax(row * scale + bias)`.
    fn masked_softmax_rows(p: &mut [f32], bias: &[f32], scale: f32) {
        for row in p.chunks_mut(bias.len()) {
            for (x, b) in row.iter_mut().zip(bias) {
                *x = *x * scale + b;
            }
            let max = lane_max(row);
            for x in row.iter_mut() {
                *x = fast_exp(*x - max);
            }
            let inv = 1.0 / lane_sum(row);
            for x in row.iter_mut() {
                *x *= inv;
            }
        }
    }
}

/// Scaled dot-product attention as one autograd node, on the output of one fused q/k/v
/// projection.
///
/// `qkv` is `[batch, seq, 3 * width]`: per token the query, key and value vectors side by side,
/// each with the heads packed in order (no reshapes or transposes). `key_bias` holds
/// `batch * seq` additive biases (0, or a very negative number for padding). With
/// `dropout = Some((p, rng))` the attention probabilities are dropped out with one `u32` drawn
/// per probability in `[batch, heads, q, k]` order. Returns the context `[batch, seq, width]`.
/// The backward pass recomputes the probabilities instead of storing them.
pub fn attention(
    qkv: &Tensor,
    key_bias: &Tensor,
    n_heads: usize,
    dropout: Option<(f64, &mut ChaCha8Rng)>,
) -> Result<Tensor> {
    let (b, s, d3) = qkv.dims3()?;
    let d = d3 / 3;
    if d3 % 3 != 0 || d % n_heads != 0 {
        bail!("attention: packed width {d3} is not 3 x a multiple of {n_heads} heads");
    }
    let op = AttentionOp::new(key_bias, (b, s, d), n_heads, dropout)?;
    qkv.contiguous()?.apply_op1(op)
}

#[derive(Clone)]
pub(crate) struct AttentionOp {
    bias: Arc<Vec<f32>>,
    mask: Option<Arc<Vec<u8>>>,
    keep_scale: f32,
    n_heads: usize,
    scale: f32,
    /// The per-head products in bf16 on the bf16 engine (`precision::cpu_bf16` when built).
    bf16: bool,
}

/// Whether the per-head products of `s` tokens run faster on AMX tiles than by f32 gemm. The
/// tiles pad `s` to a multiple of 32, and cost about the same whatever `s` up to it, while gemm's
/// time grows with `s²`: at 64 tokens (no padding) gemm took 1.4 times as long (DistilBERT-base,
/// batch 64, per step: forward 0.073 s against 0.052 s, backward 0.141 s against 0.100 s on a
/// Xeon with AMX), so the tiles pay where the padding costs less than that: at 87 tokens (96
/// padded) they took 0.117 s and 0.194 s against 0.147 s and 0.238 s; at 40 (64 padded) 0.046 s
/// and 0.10 s against 0.038 s and 0.068 s. The same rule holds for `vdpbf16ps` blocks on a Zen 4
/// (README, Bf16: at 64 and 87 tokens they beat gemm, forward and backward).
fn tiles_pay(s: usize) -> bool {
    const GEMM_OVER_TILES: f64 = 1.4;
    let padded = s.next_multiple_of(32) as f64;
    (padded / s as f64).powi(2) < GEMM_OVER_TILES
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` (operands by (row, column) strides, `dst` rows `dst_rs`
/// apart), one head's product on this thread: on the AMX tiles of `tiles` where given, else by
/// gemm.
#[allow(clippy::too_many_arguments)]
fn head_product(
    tiles: Option<&Serial>,
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    match tiles {
        Some(tiles) => {
            let (a, b) = (pack_lhs_serial(lhs, lhs_strides, m, k), pack_rhs_serial(rhs, rhs_strides, k, n));
            tiles.matmul(dst, dst_rs, Start::Zero, &a, &b)
        }
        None => {
            gemm_strided(dst, dst_rs, false, (m, n, k), lhs, lhs_strides, rhs, rhs_strides, gemm::Parallelism::None)
        }
    }
}

impl AttentionOp {
    /// For a `[b, s, 3 * d]` packed input; draws the dropout mask of the probabilities now.
    pub(crate) fn new(
        key_bias: &Tensor,
        (b, s, d): (usize, usize, usize),
        n_heads: usize,
        dropout: Option<(f64, &mut ChaCha8Rng)>,
    ) -> Result<AttentionOp> {
        if n_heads == 0 || d % n_heads != 0 {
            bail!("attention: width {d} is not a multiple of {n_heads} heads");
        }
        let bias: Vec<f32> = key_bias.flatten_all()?.to_vec1()?;
        if bias.len() != b * s {
            bail!("attention: {} key biases for a [{b}, {s}] batch", bias.len());
        }
        let (mask, keep_scale) = optional_keep_mask(b * n_heads * s * s, dropout);
        let scale = 1.0 / ((d / n_heads) as f32).sqrt();
        let bf16 = crate::model::precision::cpu_bf16_on() && tiles_pay(s);
        Ok(AttentionOp { bias: Arc::new(bias), mask, keep_scale, n_heads, scale, bf16 })
    }

    /// The context `out [b, s, d]` from the packed `qkv [b, s, 3 d]`.
    pub(crate) fn forward_into(&self, qkv: &[f32], (b, s, d): (usize, usize, usize), out: &mut [MaybeUninit<f32>]) {
        let dh = d / self.n_heads;
        debug_assert_eq!(qkv.len(), b * s * 3 * d);
        out.par_chunks_mut(s * d).enumerate().for_each(|(bi, ob)| {
            let xb = &qkv[bi * s * 3 * d..][..s * 3 * d];
            let bias = &self.bias[bi * s..][..s];
            let mut p = vec![0f32; s * s];
            let tiles = self.bf16.then(Serial::new);
            for h in 0..self.n_heads {
                self.probs(tiles.as_ref(), xb, bias, h, s, d, &mut p);
                self.drop_probs(bi, h, s, &mut p);
                // context_h = P' · V_h, into head h's columns
                let vh = &xb[2 * d + h * dh..];
                head_product(tiles.as_ref(), &mut ob[h * dh..], d, (s, dh, s), &p, (s, 1), vh, (3 * d, 1));
            }
        })
    }

    /// `dqkv [b, s, 3 d]` from the packed input and the context's gradient `dout [b, s, d]`.
    pub(crate) fn backward_into(
        &self,
        qkv: &[f32],
        dout: &[f32],
        (b, s, d): (usize, usize, usize),
        dqkv: &mut [MaybeUninit<f32>],
    ) {
        let (dh, ld) = (d / self.n_heads, 3 * d);
        debug_assert_eq!(dout.len(), b * s * d);
        dqkv.par_chunks_mut(s * ld).enumerate().for_each(|(bi, db)| {
            let xb = &qkv[bi * s * ld..][..s * ld];
            let gb = &dout[bi * s * d..][..s * d];
            let bias = &self.bias[bi * s..][..s];
            let mut p = vec![0f32; s * s];
            let mut pd = vec![0f32; s * s];
            let mut dp = vec![0f32; s * s];
            let tiles = self.bf16.then(Serial::new);
            let tiles = tiles.as_ref();
            for h in 0..self.n_heads {
                let c = h * dh;
                let (qh, kh, vh) = (&xb[c..], &xb[d + c..], &xb[2 * d + c..]);
                self.probs(tiles, xb, bias, h, s, d, &mut p);
                pd.copy_from_slice(&p);
                self.drop_probs(bi, h, s, &mut pd);
                // dV_h = P'ᵀ · dC_h
                head_product(tiles, &mut db[2 * d + c..], ld, (s, dh, s), &pd, (1, s), &gb[c..], (d, 1));
                // dP' = dC_h · V_hᵀ, then back through the dropout
                head_product(tiles, as_uninit(&mut dp), s, (s, s, dh), &gb[c..], (d, 1), vh, (1, ld));
                self.drop_probs(bi, h, s, &mut dp);
                // back through softmax and the score scale: dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale
                for (pr, dpr) in p.chunks(s).zip(dp.chunks_mut(s)) {
                    let dot = lane_dot(pr, dpr);
                    for (g, &pv) in dpr.iter_mut().zip(pr) {
                        *g = pv * (*g - dot) * self.scale;
                    }
                }
                // dQ_h = dS · K_h; dK_h = dSᵀ · Q_h
                head_product(tiles, &mut db[c..], ld, (s, dh, s), &dp, (s, 1), kh, (ld, 1));
                head_product(tiles, &mut db[d + c..], ld, (s, dh, s), &dp, (1, s), qh, (ld, 1));
            }
        })
    }

    /// Softmax probabilities `p[i * s + j]` of head `h`, from one batch row's packed `qkv`
    /// (`s` rows of `3 * d`).
    #[allow(clippy::too_many_arguments)]
    fn probs(&self, tiles: Option<&Serial>, qkv: &[f32], bias: &[f32], h: usize, s: usize, d: usize, p: &mut [f32]) {
        let dh = d / self.n_heads;
        // scores = Q_h · K_hᵀ
        let (qh, kh) = (&qkv[h * dh..], &qkv[d + h * dh..]);
        head_product(tiles, as_uninit(p), s, (s, s, dh), qh, (3 * d, 1), kh, (1, 3 * d));
        masked_softmax_rows(p, bias, self.scale);
    }

    /// Applies the dropout of head `h` of batch row `bi` to `p` (`s × s`) in place.
    fn drop_probs(&self, bi: usize, h: usize, s: usize, p: &mut [f32]) {
        if let Some(m) = &self.mask {
            let m = &m[(bi * self.n_heads + h) * s * s..][..s * s];
            for (x, &keep) in p.iter_mut().zip(m) {
                *x = if keep != 0 { *x * self.keep_scale } else { 0.0 };
            }
        }
    }

    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize)> {
        let dims = l.dims();
        let [b, s, d3] = dims else { bail!("attention: expected [batch, seq, 3 * width], got {dims:?}") };
        Ok((*b, *s, *d3 / 3))
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "emotune-attention"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let (b, s, d) = self.dims(l)?;
        let qkv = f32_slice(st, l, "attention qkv")?;
        let out = filled(b * s * d, |out| self.forward_into(qkv, (b, s, d), out));
        Ok((CpuStorage::F32(out), Shape::from((b, s, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &AttentionBackward(self.clone()))?))
    }
}

/// `(qkv, dcontext)` → `dqkv`.
struct AttentionBackward(AttentionOp);

impl CustomOp2 for AttentionBackward {
    fn name(&self) -> &'static str {
        "emotune-attention-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let op = &self.0;
        let (b, s, d) = op.dims(l1)?;
        let qkv = f32_slice(s1, l1, "attention backward qkv")?;
        let dout = f32_slice(s2, l2, "attention backward grad")?;
        if dout.len() != b * s * d {
            bail!("attention backward: gradient has {} values, expected {}", dout.len(), b * s * d);
        }
        let dqkv = filled(qkv.len(), |dqkv| op.backward_into(qkv, dout, (b, s, d), dqkv));
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{max_diff, on_threads, rand_tensor};
    use crate::model::softmax_last_dim;
    use candle_core::{DType, Device, Var};
    use rand::{RngCore, SeedableRng};

    /// The softmax rows dispatched to AVX-512 give bitwise the results of the scalar formula.
    #[test]
    fn dispatched_softmax_matches_the_scalar_formula_bitwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..37 * 37).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 16.0 - 8.0).collect();
        let (s, bias) = (37, (0..37).map(|j| if j % 5 == 4 { f32::MIN } else { 0.0 }).collect::<Vec<f32>>());
        let mut p: Vec<f32> = x.clone();
        masked_softmax_rows(&mut p, &bias, 0.125);
        for (row, src) in p.chunks(s).zip(x.chunks(s)) {
            let z: Vec<f32> = src.iter().zip(&bias).map(|(v, b)| v * 0.125 + b).collect();
            let max = z.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
            let e: Vec<f32> = z.iter().map(|v| fast_exp(v - max)).collect();
            let inv = 1.0 / lane_sum(&e);
            for (got, want) in row.iter().zip(e) {
                assert_eq!(got.to_bits(), (want * inv).to_bits());
            }
        }
    }

    /// The composed attention of `model::SelfAttention`, from q/k/v projections.
    fn composed_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        h: usize,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (b, s, d) = q.dims3().unwrap();
        let dh = d / h;
        let split = |t: &Tensor| t.reshape((b, s, h, dh)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() / (dh as f64).sqrt()).unwrap();
        let mut p = softmax_last_dim(&scores.broadcast_add(bias).unwrap()).unwrap();
        if let Some(m) = mask {
            p = (p * m).unwrap();
        }
        p.matmul(&split(v)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((b, s, d)).unwrap()
    }

    #[test]
    fn attention_matches_composed_forward_and_backward() {
        let (b, s, h, d) = (3, 7, 4, 24);
        let qkv = Var::from_tensor(&rand_tensor(&[b, s, 3 * d], 20)).unwrap();
        let mut mask = vec![1f32; b * s];
        mask[s - 3..s].fill(0.0);
        mask[3 * s - 1] = 0.0;
        let bias = crate::model::attention_bias(&Tensor::from_vec(mask, (b, s), &Device::Cpu).unwrap()).unwrap();
        let up = rand_tensor(&[b, s, d], 23);
        for p in [0.0, 0.3] {
            let mut rng = ChaCha8Rng::seed_from_u64(24);
            let y1 = attention(qkv.as_tensor(), &bias, h, Some((p, &mut rng))).unwrap();
            // the same dropout multipliers, drawn from the same stream in the same order
            let mut rng = ChaCha8Rng::seed_from_u64(24);
            let keep = 1.0 - p;
            let threshold = (keep * 4294967296.0).min(4294967295.0) as u32;
            let m: Vec<f32> = (0..b * h * s * s)
                .map(|_| if rng.next_u32() < threshold { (1.0 / keep) as f32 } else { 0.0 })
                .collect();
            let m = Tensor::from_vec(m, (b, h, s, s), &Device::Cpu).unwrap();
            let part = |i: usize| qkv.as_tensor().narrow(2, i * d, d).unwrap();
            let y0 = composed_attention(&part(0), &part(1), &part(2), &bias, h, (p > 0.0).then_some(&m));
            assert!(max_diff(&y0, &y1) < 1e-5, "p={p}: forward differs by {}", max_diff(&y0, &y1));
            let g0 = (y0 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g1 = (y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, c) = (g0.get(qkv.as_tensor()).unwrap(), g1.get(qkv.as_tensor()).unwrap());
            assert!(max_diff(a, c) < 1e-5, "p={p}: dqkv differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn forward_and_backward_do_not_depend_on_thread_count() {
        let qkv = rand_tensor(&[10, 30, 3 * 96], 16);
        let mask = Tensor::ones((10, 30), DType::F32, &Device::Cpu).unwrap();
        let bias = crate::model::attention_bias(&mask).unwrap();
        let run = || {
            let mut rng = ChaCha8Rng::seed_from_u64(17);
            let qkv_var = Var::from_tensor(&qkv).unwrap();
            let ctx = attention(qkv_var.as_tensor(), &bias, 4, Some((0.1, &mut rng))).unwrap();
            let grads = ctx.sum_all().unwrap().backward().unwrap();
            let dqkv = grads.get(qkv_var.as_tensor()).unwrap().flatten_all().unwrap();
            [ctx.flatten_all().unwrap(), dqkv].map(|t| t.to_vec1::<f32>().unwrap())
        };
        assert_eq!(on_threads(1, run), on_threads(3, run));
    }

    /// Context and dqkv of a batch with padded keys and dropout, under `cpu_bf16(bf16)`.
    fn context_and_grad(qkv: &Tensor, bias: &Tensor, heads: usize, bf16: bool) -> [Vec<f32>; 2] {
        let _precision = crate::model::precision::cpu_bf16(bf16);
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let v = Var::from_tensor(qkv).unwrap();
        let ctx = attention(v.as_tensor(), bias, heads, Some((0.1, &mut rng))).unwrap();
        let up = rand_tensor(ctx.dims(), 32);
        let grads = (&ctx * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let dqkv = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        [ctx.flatten_all().unwrap(), dqkv].map(|t| t.to_vec1::<f32>().unwrap())
    }

    #[test]
    fn bf16_attention_stays_near_f32_and_ignores_thread_count() {
        if !crate::model::kernels::amx::available() {
            eprintln!(
                "bf16_attention_stays_near_f32_and_ignores_thread_count: NOT CHECKED here ({})",
                crate::model::kernels::amx::NO_ENGINE
            );
            return;
        }
        // 60 tokens (cut tiles, where the tiles pay), 2 heads of 64, two rows with padded keys
        let (b, s, heads, d) = (3, 60, 2, 128);
        assert!(tiles_pay(s) && !tiles_pay(40), "the tiles run at 60 tokens, not at 40");
        let qkv = (rand_tensor(&[b, s, 3 * d], 30) * 0.3).unwrap();
        let mut mask = vec![1f32; b * s];
        mask[s - 5..s].fill(0.0);
        mask[3 * s - 1] = 0.0;
        let bias = crate::model::attention_bias(&Tensor::from_vec(mask, (b, s), &Device::Cpu).unwrap()).unwrap();
        let f32s = context_and_grad(&qkv, &bias, heads, false);
        let bf16 = on_threads(2, || context_and_grad(&qkv, &bias, heads, true));
        assert_eq!(on_threads(1, || context_and_grad(&qkv, &bias, heads, true)), bf16, "the same on 1 and 2 threads");
        // bf16 operands (8 bits of mantissa) with f32 sums: within 8e-3 of the largest value,
        // about 3 times the largest difference measured on a Xeon with AMX (2.6e-3 for the
        // context, 2.4e-3 for dqkv)
        for (name, (x, y), bound) in [("context", (&bf16[0], &f32s[0]), 8e-3), ("dqkv", (&bf16[1], &f32s[1]), 8e-3)] {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(y).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            eprintln!("bf16 attention {name}: within {worst:.2e} of the largest");
            assert!(worst < bound, "{name}: {worst}");
            assert!(x != y, "{name}: bf16 computed something other than f32");
        }
    }
}
