//! LayerNorm over the last dimension, and the residual block ending of both encoders as one
//! node: `LayerNorm(dropout(h) + residual)`. Forward and backward (the input gradient and the
//! weight and bias column sums) side by side.

use super::buffer::{f32_slice, filled, ROWS_PER_CHUNK};
use super::dropout::{optional_keep_mask, DropoutOp};
use super::profile;
use super::simd::{lane_dot, lane_sum};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Mean and 1/sqrt(var + eps) of one row (biased variance, as `torch.nn.LayerNorm`).
#[inline]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x) / n;
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let mut var = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>();
    for a in acc {
        var += a;
    }
    (mean, 1.0 / (var / n + eps).sqrt())
}

/// The backward of `y = LayerNorm(z) * w + b` over rows of `w.len()`: writes `dz` for the
/// output gradient `g` and returns the column sums `[dweight | dbias]` (chunk partial sums
/// added in chunk order).
pub(crate) fn layer_norm_backward_into(
    z: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    dz: &mut [MaybeUninit<f32>],
) -> Vec<f32> {
    let d = w.len();
    let partials: Vec<Vec<f32>> = dz
        .par_chunks_mut(d * ROWS_PER_CHUNK)
        .zip(z.par_chunks(d * ROWS_PER_CHUNK))
        .zip(g.par_chunks(d * ROWS_PER_CHUNK))
        .map(|((dzc, zc), gc)| {
            // [dweight | dbias] of this chunk's rows
            let mut part = vec![0f32; 2 * d];
            let mut xhat = vec![0f32; d];
            let mut gw = vec![0f32; d];
            for ((dzr, zr), gr) in dzc.chunks_mut(d).zip(zc.chunks(d)).zip(gc.chunks(d)) {
                let (mean, rstd) = row_stats(zr, eps);
                for j in 0..d {
                    xhat[j] = (zr[j] - mean) * rstd;
                    gw[j] = gr[j] * w[j];
                }
                let mean_gw = lane_sum(&gw) / d as f32;
                let mean_gw_xhat = lane_dot(&gw, &xhat) / d as f32;
                for j in 0..d {
                    dzr[j].write(rstd * (gw[j] - mean_gw - xhat[j] * mean_gw_xhat));
                }
                let (pw, pb) = part.split_at_mut(d);
                for j in 0..d {
                    pw[j] += gr[j] * xhat[j];
                    pb[j] += gr[j];
                }
            }
            part
        })
        .collect();
    let mut sums = vec![0f32; 2 * d];
    for part in &partials {
        for (t, p) in sums.iter_mut().zip(part) {
            *t += p;
        }
    }
    sums
}

/// `(y, z)` with `z = dropout(h) + r` and `y = LayerNorm(z) * w + b`, row by row (`w.len()`
/// wide); `mask` holds the dropout's keep bytes (none: no dropout), `keep_scale` its scale.
pub(crate) fn add_layer_norm_rows(
    h: &[f32],
    r: &[f32],
    mask: Option<&[u8]>,
    keep_scale: f32,
    wb: (&[f32], &[f32]),
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let n = h.len();
    let mut z = Vec::with_capacity(n);
    let y = filled(n, |y| add_layer_norm_into(h, r, mask, keep_scale, wb, eps, y, &mut z.spare_capacity_mut()[..n]));
    // SAFETY: add_layer_norm_into writes every one of z's first n slots.
    unsafe { z.set_len(n) };
    (y, z)
}

#[allow(clippy::too_many_arguments)]
fn add_layer_norm_into(
    h: &[f32],
    r: &[f32],
    mask: Option<&[u8]>,
    keep_scale: f32,
    (w, b): (&[f32], &[f32]),
    eps: f32,
    y: &mut [MaybeUninit<f32>],
    z: &mut [MaybeUninit<f32>],
) {
    let d = w.len();
    let rows = d * ROWS_PER_CHUNK;
    y.par_chunks_mut(rows).zip(z.par_chunks_mut(rows)).enumerate().for_each(|(ci, (yc, zc))| {
        let off = ci * rows;
        let mut zrow = vec![0f32; d];
        for (ri, (yr, zr)) in yc.chunks_mut(d).zip(zc.chunks_mut(d)).enumerate() {
            let o = off + ri * d;
            let (hr, rr) = (&h[o..o + d], &r[o..o + d]);
            match mask {
                Some(m) => {
                    let mr = &m[o..o + d];
                    for j in 0..d {
                        zrow[j] = if mr[j] != 0 { hr[j] * keep_scale } else { 0.0 } + rr[j];
                    }
                }
                None => {
                    for j in 0..d {
                        zrow[j] = hr[j] + rr[j];
                    }
                }
            }
            let (mean, rstd) = row_stats(&zrow, eps);
            for j in 0..d {
                yr[j].write((zrow[j] - mean) * rstd * w[j] + b[j]);
                zr[j].write(zrow[j]);
            }
        }
    })
}

struct LayerNormOp {
    eps: f32,
}

/// `LayerNorm(x) * weight + bias` over the last dimension.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(weight, bias, LayerNormOp { eps: eps as f32 })
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "emotune-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s1, l1, "layer_norm x")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let b = f32_slice(s3, l3, "layer_norm bias")?;
        let d = w.len();
        if b.len() != d || x.len() % d != 0 {
            bail!("layer_norm: input {:?} does not end in the weight's size {d}", l1.dims());
        }
        let y = filled(x.len(), |y| {
            y.par_chunks_mut(d * ROWS_PER_CHUNK).zip(x.par_chunks(d * ROWS_PER_CHUNK)).for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for j in 0..d {
                        yr[j].write((xr[j] - mean) * rstd * w[j] + b[j]);
                    }
                }
            })
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let (n, d) = (x.elem_count(), w.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?;
        let db = packed.narrow(0, n + d, d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Returns `[dx (all of x's elements), dweight (d), dbias (d)]` as one flat tensor.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "emotune-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s1, l1, "layer_norm backward x")?;
        let w = f32_slice(s2, l2, "layer_norm backward weight")?;
        let g = f32_slice(s3, l3, "layer_norm backward grad")?;
        let (n, d) = (x.len(), w.len());
        let out = filled(n + 2 * d, |out| {
            let (dx, tail) = out.split_at_mut(n);
            let sums = layer_norm_backward_into(x, w, g, self.eps, dx);
            for (t, v) in tail.iter_mut().zip(sums) {
                t.write(v);
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `LayerNorm(dropout(h) + residual) * weight + bias`: the residual block ending of both
/// encoders as one autograd node. `dropout` as in [`dropout`] (same draws, same order).
pub fn add_layer_norm(
    h: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    dropout: Option<(f64, &mut ChaCha8Rng)>,
) -> Result<Tensor> {
    let (mask, keep_scale) = optional_keep_mask(h.elem_count(), dropout);
    let wb = Tensor::cat(&[weight, bias], 0)?;
    let op = AddLayerNormOp { eps: eps as f32, mask, keep_scale, sum: std::sync::Mutex::new(None) };
    h.contiguous()?.apply_op3(&residual.contiguous()?, &wb, op)
}

struct AddLayerNormOp {
    eps: f32,
    mask: Option<Arc<Vec<u8>>>,
    keep_scale: f32,
    /// The normalised input `dropout(h) + residual`, kept from the forward pass for the backward.
    sum: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for AddLayerNormOp {
    fn name(&self) -> &'static str {
        "emotune-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let h = f32_slice(s1, l1, "add_layer_norm h")?;
        let r = f32_slice(s2, l2, "add_layer_norm residual")?;
        let wb = f32_slice(s3, l3, "add_layer_norm weight+bias")?;
        let d = wb.len() / 2;
        if h.len() != r.len() || d == 0 || h.len() % d != 0 {
            bail!("add_layer_norm: h {:?}, residual {:?}, weight+bias {}", l1.dims(), l2.dims(), wb.len());
        }
        let mask = self.mask.as_deref().map(Vec::as_slice);
        let (y, z) = add_layer_norm_rows(h, r, mask, self.keep_scale, wb.split_at(d), self.eps);
        *crate::sync::lock(&self.sum) = Some(z);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        residual: &Tensor,
        wb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stashed = crate::sync::lock(&self.sum).take();
        let z = match stashed {
            Some(z) => Tensor::from_vec(z, h.shape(), h.device())?,
            // a second backward pass over the same graph: recompute dropout(h) + residual
            None => {
                let dh = match &self.mask {
                    Some(m) => h.apply_op1_no_bwd(&DropoutOp { mask: m.clone(), scale: self.keep_scale })?,
                    None => h.clone(),
                };
                (dh + residual)?
            }
        };
        let (n, d) = (h.elem_count(), wb.elem_count() / 2);
        let w = wb.narrow(0, 0, d)?;
        let packed = z.apply_op3_no_bwd(&w, &grad.contiguous()?, &LayerNormBackward { eps: self.eps })?;
        let dz = packed.narrow(0, 0, n)?.reshape(h.shape())?;
        let dwb = packed.narrow(0, n, 2 * d)?;
        let dh = match &self.mask {
            Some(m) => dz.apply_op1_no_bwd(&DropoutOp { mask: m.clone(), scale: self.keep_scale })?,
            None => dz.clone(),
        };
        Ok((Some(dh), Some(dz), Some(dwb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::dropout;
    use crate::model::kernels::testing::{max_diff, on_threads, rand_tensor};
    use crate::model::LayerNorm;
    use candle_core::Var;
    use rand::SeedableRng;

    #[test]
    fn layer_norm_matches_composed_forward_and_backward() {
        let x = Var::from_tensor(&rand_tensor(&[37, 50], 1)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[50], 2)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[50], 3)).unwrap();
        let up = rand_tensor(&[37, 50], 4);
        let composed = LayerNorm { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), eps: 1e-12 };
        let y0 = composed.forward(x.as_tensor()).unwrap();
        let y1 = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12).unwrap();
        assert!(max_diff(&y0, &y1) < 1e-5, "forward differs by {}", max_diff(&y0, &y1));
        let g0 = (y0 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g1 = (y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (g0.get(v.as_tensor()).unwrap(), g1.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, c) < 1e-4, "d{name} differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn add_layer_norm_matches_composed_forward_and_backward() {
        let h = Var::from_tensor(&rand_tensor(&[5, 9, 40], 30)).unwrap();
        let r = Var::from_tensor(&rand_tensor(&[5, 9, 40], 31)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[40], 32)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[40], 33)).unwrap();
        let up = rand_tensor(&[5, 9, 40], 34);
        let composed = LayerNorm { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), eps: 1e-12 };
        for p in [0.0, 0.2] {
            let mut rng = ChaCha8Rng::seed_from_u64(35);
            let y1 =
                add_layer_norm(h.as_tensor(), r.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12, Some((p, &mut rng)))
                    .unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(35);
            let dropped = if p > 0.0 { dropout(h.as_tensor(), p, &mut rng).unwrap() } else { h.as_tensor().clone() };
            let y0 = composed.forward(&(dropped + r.as_tensor()).unwrap()).unwrap();
            assert!(max_diff(&y0, &y1) < 1e-5, "p={p}: forward differs by {}", max_diff(&y0, &y1));
            let g0 = (y0 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g1 = (y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("h", &h), ("residual", &r), ("weight", &w), ("bias", &b)] {
                let (a, c) = (g0.get(v.as_tensor()).unwrap(), g1.get(v.as_tensor()).unwrap());
                assert!(max_diff(a, c) < 1e-4, "p={p}: d{name} differs by {}", max_diff(a, c));
            }
        }
    }

    #[test]
    fn backward_does_not_depend_on_thread_count() {
        let x = rand_tensor(&[300, 96], 10);
        let w = rand_tensor(&[96], 11);
        let g = rand_tensor(&[300, 96], 13);
        let run = || x.apply_op3_no_bwd(&w, &g, &LayerNormBackward { eps: 1e-12 }).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(on_threads(1, run), on_threads(3, run));
    }
}
