//! The exact (erf) GELU, `x Φ(x)`, as `torch.nn.GELU()`: forward, in-place forward (inference)
//! and backward, with the loops dispatched to AVX-512 where the CPU has it.

use super::buffer::{f32_slice, filled, ELEMS_PER_CHUNK};
use super::profile;
use super::simd::{fast_erf, fast_exp, simd_dispatch};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

struct GeluOp;

/// `y = x Φ(x)`, element-wise.
pub(crate) fn gelu_into(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    y.par_chunks_mut(ELEMS_PER_CHUNK).zip(x.par_chunks(ELEMS_PER_CHUNK)).for_each(|(yc, xc)| gelu_chunk(xc, yc))
}

simd_dispatch! {
    fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(0.5 * x * (1.0 + fast_erf(x * FRAC_1_SQRT_2)));
        }
    }
}

simd_dispatch! {
    fn gelu_in_place_chunk(x: &mut [f32]) {
        for x in x.iter_mut() {
            *x = 0.5 * *x * (1.0 + fast_erf(*x * FRAC_1_SQRT_2));
        }
    }
}

/// `x ← x Φ(x)` in place, in parallel (the values of [`gelu_into`]).
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(ELEMS_PER_CHUNK).for_each(gelu_in_place_chunk)
}

/// `x ← x Φ(x)` in place on one piece, on this thread: for a product's output as it is
/// computed (the values of [`gelu_into`]).
pub(crate) fn gelu_segment(x: &mut [f32]) {
    gelu_in_place_chunk(x)
}

/// `g ← g · GELU'(x)` in place, where `GELU'(x) = Φ(x) + x φ(x)`.
pub(crate) fn gelu_backward_in_place(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(ELEMS_PER_CHUNK)
        .zip(x.par_chunks(ELEMS_PER_CHUNK))
        .for_each(|(gc, xc)| gelu_backward_chunk(xc, gc))
}

/// `y ← GELU(x)` and `g ← g · GELU'(x)` on one piece, on this thread, with one erf per value:
/// the values of [`gelu_segment`] and [`gelu_backward_in_place`] (the same expressions), for the
/// backward pass that needs both.
pub(crate) fn gelu_and_backward_segment(x: &[f32], y: &mut [f32], g: &mut [f32]) {
    assert!(x.len() == y.len() && x.len() == g.len());
    gelu_and_backward_chunk(x, y, g)
}

simd_dispatch! {
    fn gelu_and_backward_chunk(x: &[f32], y: &mut [f32], g: &mut [f32]) {
        for ((y, g), &x) in y.iter_mut().zip(g.iter_mut()).zip(x) {
            let erf = fast_erf(x * FRAC_1_SQRT_2);
            *y = 0.5 * x * (1.0 + erf);
            let cdf = 0.5 * (1.0 + erf);
            let pdf = FRAC_1_SQRT_2PI * fast_exp(-0.5 * x * x);
            *g *= cdf + x * pdf;
        }
    }
}

simd_dispatch! {
    fn gelu_backward_chunk(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + fast_erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * fast_exp(-0.5 * x * x);
            *g *= cdf + x * pdf;
        }
    }
}

/// `x * Φ(x)` with the exact (erf) normal CDF, as `torch.nn.GELU()`.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "emotune-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s, l, "gelu x")?;
        let y = filled(x.len(), |y| gelu_into(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "emotune-gelu-erf-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s1, l1, "gelu backward x")?;
        let g = f32_slice(s2, l2, "gelu backward grad")?;
        let mut dx = g.to_vec();
        gelu_backward_in_place(x, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{max_diff, rand_tensor};
    use candle_core::Var;
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The loops dispatched to AVX-512 give bitwise the results of the plain scalar formulas.
    #[test]
    fn dispatched_loops_match_the_scalar_formulas_bitwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..10_003).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 16.0 - 8.0).collect();
        let g: Vec<f32> = x.iter().rev().copied().collect();
        let y = filled(x.len(), |y| gelu_into(&x, y));
        let mut dg = g.clone();
        gelu_backward_in_place(&x, &mut dg);
        let mut y_piece = x.clone();
        gelu_segment(&mut y_piece);
        assert!(y.iter().zip(&y_piece).all(|(a, b)| a.to_bits() == b.to_bits()), "one piece, the same values");
        for i in 0..x.len() {
            let xi = x[i];
            assert_eq!(y[i].to_bits(), (0.5 * xi * (1.0 + fast_erf(xi * FRAC_1_SQRT_2))).to_bits());
            let cdf = 0.5 * (1.0 + fast_erf(xi * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * fast_exp(-0.5 * xi * xi);
            assert_eq!(dg[i].to_bits(), (g[i] * (cdf + xi * pdf)).to_bits());
        }
    }

    #[test]
    fn gelu_matches_composed_forward_and_backward() {
        let x = Var::from_tensor(&rand_tensor(&[3, 70001], 5)).unwrap();
        let up = rand_tensor(&[3, 70001], 6);
        let y0 = x.as_tensor().gelu_erf().unwrap();
        let y1 = gelu_erf(x.as_tensor()).unwrap();
        assert!(max_diff(&y0, &y1) < 1e-6, "forward differs by {}", max_diff(&y0, &y1));
        let g0 = (y0 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g1 = (y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, c) = (g0.get(x.as_tensor()).unwrap(), g1.get(x.as_tensor()).unwrap());
        assert!(max_diff(a, c) < 2e-6, "dx differs by {}", max_diff(a, c));
    }
}
