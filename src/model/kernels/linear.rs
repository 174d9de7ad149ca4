//! The fused linear layer `x Wᵀ + b` (one autograd node; the backward gives dx, dW and db in
//! one pass), and the gemm wrappers the other kernels and the fused encoder layer share.

use super::amx::Start;
use super::buffer::{f32_slice, filled, ROWS_PER_CHUNK};
use super::profile;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

struct LinearOp;

/// `x Wᵀ + b` over the last dimension of `x`, with `W` stored `[out, in]` as in PyTorch. One
/// autograd node instead of reshape, matmul, transpose and broadcast add.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp)
}

pub(crate) fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, all row-major and contiguous in `dst`, with the
/// operands given by (row stride, column stride) in elements; threads from rayon's pool.
pub(crate) fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
    mnk: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    let start = if accumulate { Start::Dst } else { Start::Zero };
    product_into(dst, mnk.1, start, mnk, lhs, lhs_strides, rhs, rhs_strides)
}

/// [`gemm_strided`] on rayon's threads, or under [`crate::model::precision::cpu_bf16`] in bf16
/// on AMX tiles with f32 sums: the products of the linear layers, forward and backward, each
/// output's sum starting as `start` says.
#[allow(clippy::too_many_arguments)]
fn product_into(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    start: Start,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    if crate::model::precision::cpu_bf16_on() {
        let (a, b) = rayon::join(
            || super::amx_pack::pack_lhs(lhs, lhs_strides, m, k),
            || super::amx_pack::pack_rhs(rhs, rhs_strides, k, n),
        );
        return super::amx::matmul(dst, dst_rs, start, &a, &b);
    }
    if let Start::Bias(b) = start {
        dst.par_chunks_mut(dst_rs * ROWS_PER_CHUNK).for_each(|c| {
            for row in c.chunks_mut(dst_rs) {
                for (d, &v) in row[..n].iter_mut().zip(b) {
                    d.write(v);
                }
            }
        });
    }
    let accumulate = !matches!(start, Start::Zero);
    gemm_strided(dst, dst_rs, accumulate, (m, n, k), lhs, lhs_strides, rhs, rhs_strides, parallelism())
}

/// The general form: `dst` rows are `dst_rs` apart (columns adjacent).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1));
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every index gemm touches inside the three slices; dst is a
    // mutable borrow, so it cannot alias the shared inputs; gemm reads dst only when
    // `accumulate` is set, and then the caller passes initialised memory.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst[i, ..n] = x[i] · Wᵀ + b` for the `m` rows of `x` (`k` wide, contiguous), `W` stored
/// `[n, k]`; `dst` rows are `dst_rs` apart (a column block of a wider matrix when `dst_rs > n`).
pub(crate) fn linear_into(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
) {
    // dst = b + x · Wᵀ, where Wᵀ[k, n] = W[n, k]
    product_into(dst, dst_rs, Start::Bias(b), (m, n, k), x, (k, 1), w, (1, k));
}

/// `dW[n, k] = gᵀ · x` for `g [m, n]` with rows `g_rs` apart and `x [m, k]` contiguous.
pub(crate) fn weight_grad_into(
    dw: &mut [MaybeUninit<f32>],
    g: &[f32],
    g_rs: usize,
    x: &[f32],
    (m, n, k): (usize, usize, usize),
) {
    matmul_into(dw, false, (n, k, m), g, (1, g_rs), x, (k, 1));
}

/// `Σ_rows g` of `g [m, n]` with rows `g_rs` apart: partial sums of fixed row chunks, added in
/// chunk order (the same on any thread count).
pub(crate) fn column_sums(g: &[f32], g_rs: usize, m: usize, n: usize) -> Vec<f32> {
    const ROWS: usize = ROWS_PER_CHUNK * 8;
    let partials: Vec<Vec<f32>> = (0..m.div_ceil(ROWS))
        .into_par_iter()
        .map(|c| {
            let mut part = vec![0f32; n];
            for i in c * ROWS..((c + 1) * ROWS).min(m) {
                for (p, v) in part.iter_mut().zip(&g[i * g_rs..i * g_rs + n]) {
                    *p += v;
                }
            }
            part
        })
        .collect();
    let mut sums = vec![0f32; n];
    for part in &partials {
        for (d, p) in sums.iter_mut().zip(part) {
            *d += p;
        }
    }
    sums
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "emotune-linear"
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
        // The classification head's few rows stay f32: its backward runs outside the caller's
        // precision guard, and a bf16 forward would not match it.
        let _f32 = crate::model::precision::cpu_bf16(false);
        let x = f32_slice(s1, l1, "linear x")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        let b = f32_slice(s3, l3, "linear bias")?;
        let (n_out, k) = l2.shape().dims2()?;
        let dims = l1.dims();
        if dims.last() != Some(&k) || b.len() != n_out {
            bail!("linear: input {dims:?} against weight [{n_out}, {k}] and bias [{}]", b.len());
        }
        let m = x.len() / k;
        let y = filled(m * n_out, |y| linear_into(y, n_out, x, w, b, (m, n_out, k)));
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked above") = n_out;
        Ok((CpuStorage::F32(y), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearBackward)?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        let n_out = w.dims()[0];
        let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = packed.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = packed.narrow(0, nx + nw, n_out)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Returns `[dx, dW, db]` flattened into one tensor.
struct LinearBackward;

impl CustomOp3 for LinearBackward {
    fn name(&self) -> &'static str {
        "emotune-linear-backward"
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
        let x = f32_slice(s1, l1, "linear backward x")?;
        let w = f32_slice(s2, l2, "linear backward weight")?;
        let g = f32_slice(s3, l3, "linear backward grad")?;
        let (n_out, k) = l2.shape().dims2()?;
        let m = x.len() / k;
        if g.len() != m * n_out {
            bail!("linear backward: gradient has {} values, expected {}", g.len(), m * n_out);
        }
        let (nx, nw) = (x.len(), w.len());
        let out = filled(nx + nw + n_out, |out| {
            let (dx, rest) = out.split_at_mut(nx);
            let (dw, db) = rest.split_at_mut(nw);
            // dx[m, k] = g[m, n] · W[n, k]
            matmul_into(dx, false, (m, k, n_out), g, (n_out, 1), w, (k, 1));
            weight_grad_into(dw, g, n_out, x, (m, n_out, k));
            for (d, v) in db.iter_mut().zip(column_sums(g, n_out, m, n_out)) {
                d.write(v);
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{max_diff, on_threads, rand_tensor};
    use candle_core::Var;

    #[test]
    fn linear_matches_composed_forward_and_backward() {
        let x = Var::from_tensor(&rand_tensor(&[3, 37, 20], 14)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[30, 20], 15)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[30], 16)).unwrap();
        let up = rand_tensor(&[3, 37, 30], 17);
        let composed =
            crate::model::Linear { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), prepared: None };
        let y0 = composed.forward_composed(x.as_tensor()).unwrap();
        let y1 = linear(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        assert_eq!(y0.dims(), y1.dims());
        assert!(max_diff(&y0, &y1) < 1e-4, "forward differs by {}", max_diff(&y0, &y1));
        let g0 = (y0 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let g1 = (y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let (a, c) = (g0.get(v.as_tensor()).unwrap(), g1.get(v.as_tensor()).unwrap());
            assert_eq!(a.dims(), c.dims());
            assert!(max_diff(a, c) < 1e-3, "d{name} differs by {}", max_diff(a, c));
        }
    }

    #[test]
    fn backward_does_not_depend_on_thread_count() {
        let x = rand_tensor(&[300, 96], 10);
        let w = rand_tensor(&[200, 96], 14);
        let g = rand_tensor(&[300, 200], 15);
        let run = || x.apply_op3_no_bwd(&w, &g, &LinearBackward).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(on_threads(1, run), on_threads(3, run));
    }
}
