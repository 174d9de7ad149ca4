//! Fused float32 CPU kernels with their backward, as candle custom ops: linear (matmul plus
//! bias), multi-head attention (scores, masked softmax, dropout and the weighted sum in one
//! node), dropout + residual add + LayerNorm, LayerNorm, erf-GELU, and dropout.
//!
//! Each replaces a chain of primitive ops whose autograd nodes each cost a fresh tensor, a
//! zero-fill and an add in candle's backward pass. The composed versions in `model/mod.rs`
//! stay as the path for other devices and dtypes, and as the reference the tests below check
//! these kernels against.
//!
//! Determinism: work is split into chunks of a fixed number of rows (never by thread count);
//! reductions across rows (the weight and bias gradients of LayerNorm and linear) sum the
//! chunks' partial sums in chunk order; gemm splits its output, never the summed dimension. So
//! results are bitwise the same on any number of threads.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Rows per parallel work item.
const ROWS_PER_CHUNK: usize = 16;
/// Elements per parallel work item for element-wise kernels.
const ELEMS_PER_CHUNK: usize = 1 << 14;

/// Opt-in time accounting per kernel (`emotune bench --profile`): off by default, when it costs
/// one relaxed atomic load per kernel call.
pub mod profile {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    static ON: AtomicBool = AtomicBool::new(false);
    static TOTALS: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

    pub fn enable(on: bool) {
        ON.store(on, Ordering::Relaxed);
    }

    /// Seconds and calls per kernel name since the last `take`, in first-seen order; resets.
    pub fn take() -> Vec<(&'static str, f64, u64)> {
        std::mem::take(&mut *TOTALS.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds the time from its creation to its drop to `name`'s total, when profiling is on.
    pub struct Span(Option<(&'static str, Instant)>);

    impl Span {
        pub fn new(name: &'static str) -> Span {
            Span(ON.load(Ordering::Relaxed).then(|| (name, Instant::now())))
        }
    }

    /// Consecutive sections of one kernel: `start` ends the section before.
    #[derive(Default)]
    pub struct Sections(Option<Span>);

    impl Sections {
        pub fn start(&mut self, name: &'static str) {
            self.0 = None;
            self.0 = Some(Span::new(name));
        }
    }

    impl Drop for Span {
        fn drop(&mut self) {
            if let Some((name, t0)) = self.0 {
                let dt = t0.elapsed().as_secs_f64();
                let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
                match totals.iter_mut().find(|(n, _, _)| *n == name) {
                    Some(entry) => {
                        entry.1 += dt;
                        entry.2 += 1;
                    }
                    None => totals.push((name, dt, 1)),
                }
            }
        }
    }
}

/// True where the fused kernels apply (they are written for contiguous f32 on the CPU).
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { bail!("{what}: expected float32 input") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// Allocates `n` floats without zeroing them and lets `fill` write every one.
pub(super) fn filled(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes all `n` elements: a full element-wise map over its
    // input, or gemm calls with `accumulate = false` that together cover the whole output.
    unsafe { v.set_len(n) };
    v
}

/// An initialised slice seen as possibly-uninitialised (same layout), for writers that accept
/// both.
pub(super) fn as_uninit(xs: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the writers only store
    // initialised values through it.
    unsafe { &mut *(xs as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Sum with 16 independent lanes, so the compiler can keep them in one SIMD register.
#[inline]
fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s = chunks.remainder().iter().sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

#[inline]
fn lane_dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut cx = xs.chunks_exact(16);
    let mut cy = ys.chunks_exact(16);
    for (a, b) in (&mut cx).zip(&mut cy) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s: f32 = cx.remainder().iter().zip(cy.remainder()).map(|(a, b)| a * b).sum();
    for a in acc {
        s += a;
    }
    s
}

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

/// Below this, [`fast_exp`] returns exactly 0 (e^-80 ≈ 1.8e-35). Tiny results must not become
/// subnormal floats: a softmax row of masked keys full of them made every later matmul take the
/// CPU's slow subnormal path (a 50x slower training step on padded batches).
const EXP_FLUSH_BELOW: f32 = -80.0;

/// `exp(x)` for f32, written so the compiler vectorises it: 2^k times a degree-6 polynomial on
/// |r| ≤ ln2/2 (relative error about 2e-7); 0 below [`EXP_FLUSH_BELOW`].
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // round to nearest by the 1.5 * 2^23 trick (vectorises, unlike floor/round calls)
    const MAGIC: f32 = 12_582_912.0;
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k as an integer from t's bits (t = 1.5 * 2^23 + k exactly): integer ops vectorise, while
    // a float-to-int `as` cast (saturating, NaN-checked) made the whole loop scalar
    let ki = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let e = p * f32::from_bits(((ki + 127) as u32) << 23);
    if x < EXP_FLUSH_BELOW {
        0.0
    } else {
        e
    }
}

/// `erf(x)` for f32 as a rational function on [-4, 4] (erf is ±1 in f32 beyond), vectorisable.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 + -2.101_024e-6;
    let p = p * x2 + -5.692_506_4e-5;
    let p = p * x2 + -7.349_906_3e-4;
    let p = p * x2 + -2.954_600_1e-3;
    let p = p * x2 + -1.609_603_3e-2;
    let q = -1.456_607_2e-5f32;
    let q = q * x2 + -2.133_740_6e-4;
    let q = q * x2 + -1.682_827e-3;
    let q = q * x2 + -7.373_329_2e-3;
    let q = q * x2 + -1.426_474e-2;
    (x * p / q).clamp(-1.0, 1.0)
}

/// Defines `$name`, which runs `$body` compiled for AVX-512 when the CPU has it (checked at run
/// time; the binary itself targets baseline x86-64) and as compiled otherwise. For the
/// element-wise loops that LLVM vectorises: 16 lanes instead of SSE's 4. Both versions do the
/// same float operations in the same order (Rust never fuses a multiply and an add on its own),
/// so the results are bitwise the same on either path.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

// ---------------------------------------------------------------- LayerNorm

/// The backward of `y = LayerNorm(z) * w + b` over rows of `w.len()`: writes `dz` for the
/// output gradient `g` and returns the column sums `[dweight | dbias]` (chunk partial sums
/// added in chunk order).
pub(super) fn layer_norm_backward_into(
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
pub(super) fn add_layer_norm_rows(
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
        *self.sum.lock().expect("add_layer_norm stash") = Some(z);
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
        let stashed = self.sum.lock().expect("add_layer_norm stash").take();
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

// ---------------------------------------------------------------- Linear

struct LinearOp;

/// `x Wᵀ + b` over the last dimension of `x`, with `W` stored `[out, in]` as in PyTorch. One
/// autograd node instead of reshape, matmul, transpose and broadcast add.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LinearOp)
}

fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, all row-major and contiguous in `dst`, with the
/// operands given by (row stride, column stride) in elements; threads from rayon's pool.
pub(super) fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
    mnk: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    gemm_strided(dst, mnk.1, accumulate, mnk, lhs, lhs_strides, rhs, rhs_strides, parallelism())
}

/// The general form: `dst` rows are `dst_rs` apart (columns adjacent).
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
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
pub(super) fn linear_into(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
) {
    dst.par_chunks_mut(dst_rs * ROWS_PER_CHUNK).for_each(|c| {
        for row in c.chunks_mut(dst_rs) {
            for (d, &v) in row[..n].iter_mut().zip(b) {
                d.write(v);
            }
        }
    });
    // dst += x · Wᵀ, where Wᵀ[k, n] = W[n, k]
    gemm_strided(dst, dst_rs, true, (m, n, k), x, (k, 1), w, (1, k), parallelism());
}

/// `dW[n, k] = gᵀ · x` for `g [m, n]` with rows `g_rs` apart and `x [m, k]` contiguous.
pub(super) fn weight_grad_into(
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
pub(super) fn column_sums(g: &[f32], g_rs: usize, m: usize, n: usize) -> Vec<f32> {
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

// ---------------------------------------------------------------- GELU (erf)

struct GeluOp;

/// `y = x Φ(x)`, element-wise.
pub(super) fn gelu_into(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    y.par_chunks_mut(ELEMS_PER_CHUNK).zip(x.par_chunks(ELEMS_PER_CHUNK)).for_each(|(yc, xc)| gelu_chunk(xc, yc))
}

simd_dispatch! {
    fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(0.5 * x * (1.0 + fast_erf(x * FRAC_1_SQRT_2)));
        }
    }
}

/// `x ← x Φ(x)` in place.
pub(super) fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(ELEMS_PER_CHUNK).for_each(gelu_in_place_chunk)
}

simd_dispatch! {
    fn gelu_in_place_chunk(x: &mut [f32]) {
        for x in x.iter_mut() {
            *x = 0.5 * *x * (1.0 + fast_erf(*x * FRAC_1_SQRT_2));
        }
    }
}

/// `g ← g · GELU'(x)` in place, where `GELU'(x) = Φ(x) + x φ(x)`.
pub(super) fn gelu_backward_in_place(x: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(ELEMS_PER_CHUNK)
        .zip(x.par_chunks(ELEMS_PER_CHUNK))
        .for_each(|(gc, xc)| gelu_backward_chunk(xc, gc))
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

// ---------------------------------------------------------------- attention

simd_dispatch! {
    /// Each row of `p` (rows of `bias.len()`) becomes `softmax(row * scale + bias)`.
    fn masked_softmax_rows(p: &mut [f32], bias: &[f32], scale: f32) {
        for row in p.chunks_mut(bias.len()) {
            let mut max = f32::NEG_INFINITY;
            for (x, b) in row.iter_mut().zip(bias) {
                *x = *x * scale + b;
                max = max.max(*x);
            }
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
pub(super) struct AttentionOp {
    bias: Arc<Vec<f32>>,
    mask: Option<Arc<Vec<u8>>>,
    keep_scale: f32,
    n_heads: usize,
    scale: f32,
}

impl AttentionOp {
    /// For a `[b, s, 3 * d]` packed input; draws the dropout mask of the probabilities now.
    pub(super) fn new(
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
        Ok(AttentionOp { bias: Arc::new(bias), mask, keep_scale, n_heads, scale: 1.0 / ((d / n_heads) as f32).sqrt() })
    }

    /// The context `out [b, s, d]` from the packed `qkv [b, s, 3 d]`.
    pub(super) fn forward_into(&self, qkv: &[f32], (b, s, d): (usize, usize, usize), out: &mut [MaybeUninit<f32>]) {
        let dh = d / self.n_heads;
        debug_assert_eq!(qkv.len(), b * s * 3 * d);
        out.par_chunks_mut(s * d).enumerate().for_each(|(bi, ob)| {
            let xb = &qkv[bi * s * 3 * d..][..s * 3 * d];
            let bias = &self.bias[bi * s..][..s];
            let mut p = vec![0f32; s * s];
            for h in 0..self.n_heads {
                self.probs(xb, bias, h, s, d, &mut p);
                self.drop_probs(bi, h, s, &mut p);
                // context_h = P' · V_h, into head h's columns
                let vh = &xb[2 * d + h * dh..];
                gemm_strided(
                    &mut ob[h * dh..],
                    d,
                    false,
                    (s, dh, s),
                    &p,
                    (s, 1),
                    vh,
                    (3 * d, 1),
                    gemm::Parallelism::None,
                );
            }
        })
    }

    /// `dqkv [b, s, 3 d]` from the packed input and the context's gradient `dout [b, s, d]`.
    pub(super) fn backward_into(
        &self,
        qkv: &[f32],
        dout: &[f32],
        (b, s, d): (usize, usize, usize),
        dqkv: &mut [MaybeUninit<f32>],
    ) {
        let (dh, ld) = (d / self.n_heads, 3 * d);
        debug_assert_eq!(dout.len(), b * s * d);
        let none = gemm::Parallelism::None;
        dqkv.par_chunks_mut(s * ld).enumerate().for_each(|(bi, db)| {
            let xb = &qkv[bi * s * ld..][..s * ld];
            let gb = &dout[bi * s * d..][..s * d];
            let bias = &self.bias[bi * s..][..s];
            let mut p = vec![0f32; s * s];
            let mut pd = vec![0f32; s * s];
            let mut dp = vec![0f32; s * s];
            for h in 0..self.n_heads {
                let c = h * dh;
                let (qh, kh, vh) = (&xb[c..], &xb[d + c..], &xb[2 * d + c..]);
                self.probs(xb, bias, h, s, d, &mut p);
                pd.copy_from_slice(&p);
                self.drop_probs(bi, h, s, &mut pd);
                // dV_h = P'ᵀ · dC_h
                gemm_strided(&mut db[2 * d + c..], ld, false, (s, dh, s), &pd, (1, s), &gb[c..], (d, 1), none);
                // dP' = dC_h · V_hᵀ, then back through the dropout
                gemm_strided(as_uninit(&mut dp), s, false, (s, s, dh), &gb[c..], (d, 1), vh, (1, ld), none);
                self.drop_probs(bi, h, s, &mut dp);
                // back through softmax and the score scale: dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale
                for (pr, dpr) in p.chunks(s).zip(dp.chunks_mut(s)) {
                    let dot = lane_dot(pr, dpr);
                    for (g, &pv) in dpr.iter_mut().zip(pr) {
                        *g = pv * (*g - dot) * self.scale;
                    }
                }
                // dQ_h = dS · K_h; dK_h = dSᵀ · Q_h
                gemm_strided(&mut db[c..], ld, false, (s, dh, s), &dp, (s, 1), kh, (ld, 1), none);
                gemm_strided(&mut db[d + c..], ld, false, (s, dh, s), &dp, (1, s), qh, (ld, 1), none);
            }
        })
    }

    /// Softmax probabilities `p[i * s + j]` of head `h`, from one batch row's packed `qkv`
    /// (`s` rows of `3 * d`).
    fn probs(&self, qkv: &[f32], bias: &[f32], h: usize, s: usize, d: usize, p: &mut [f32]) {
        let dh = d / self.n_heads;
        // scores = Q_h · K_hᵀ
        let (qh, kh) = (&qkv[h * dh..], &qkv[d + h * dh..]);
        gemm_strided(as_uninit(p), s, false, (s, s, dh), qh, (3 * d, 1), kh, (1, 3 * d), gemm::Parallelism::None);
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

// ---------------------------------------------------------------- dropout

/// The keep/drop decisions of `n` elements for dropout probability `p`: one `u32` drawn per
/// element, in order, kept when below `(1 - p) * 2^32`; and the scale `1 / (1 - p)` of kept
/// values. The composed path in `model::Dropout` draws the same stream.
pub fn keep_mask(n: usize, p: f64, rng: &mut ChaCha8Rng) -> (Vec<bool>, f32) {
    let keep = 1.0 - p;
    let threshold = (keep * 4294967296.0).min(4294967295.0) as u32;
    ((0..n).map(|_| rng.next_u32() < threshold).collect(), (1.0 / keep) as f32)
}

/// [`keep_mask`] as shared bytes, or no mask (scale 1) when not dropping out.
pub(super) fn optional_keep_mask(n: usize, dropout: Option<(f64, &mut ChaCha8Rng)>) -> (Option<Arc<Vec<u8>>>, f32) {
    match dropout {
        Some((p, rng)) if p > 0.0 => {
            let (mask, scale) = keep_mask(n, p, rng);
            (Some(Arc::new(mask.into_iter().map(u8::from).collect())), scale)
        }
        _ => (None, 1.0),
    }
}

/// Inverted dropout with the mask of [`keep_mask`], kept as bytes for the backward pass.
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    match optional_keep_mask(x.elem_count(), Some((p, rng))) {
        (Some(mask), scale) => x.contiguous()?.apply_op1(DropoutOp { mask, scale }),
        (None, _) => Ok(x.clone()),
    }
}

struct DropoutOp {
    mask: Arc<Vec<u8>>,
    scale: f32,
}

/// `x` with the dropped elements zeroed and the kept ones scaled (the dropout's forward, and
/// its backward on a gradient).
pub(super) fn dropped(mask: &[u8], scale: f32, x: &[f32]) -> Vec<f32> {
    filled(x.len(), |y| {
        y.par_chunks_mut(ELEMS_PER_CHUNK)
            .zip(x.par_chunks(ELEMS_PER_CHUNK))
            .zip(mask.par_chunks(ELEMS_PER_CHUNK))
            .for_each(|((yc, xc), mc)| {
                for ((y, &x), &m) in yc.iter_mut().zip(xc).zip(mc) {
                    y.write(if m != 0 { x * scale } else { 0.0 });
                }
            })
    })
}

impl DropoutOp {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        dropped(&self.mask, self.scale, x)
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "emotune-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = profile::Span::new(self.name());
        let x = f32_slice(s, l, "dropout x")?;
        if x.len() != self.mask.len() {
            bail!("dropout: mask has {} values, input {}", self.mask.len(), x.len());
        }
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&DropoutOp { mask: self.mask.clone(), scale: self.scale })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{softmax_last_dim, LayerNorm};
    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;

    fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 6.0 - 3.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The loops dispatched to AVX-512 give bitwise the results of the plain scalar formulas.
    #[test]
    fn dispatched_loops_match_the_scalar_formulas_bitwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x: Vec<f32> = (0..10_003).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 16.0 - 8.0).collect();
        let g: Vec<f32> = x.iter().rev().copied().collect();
        let y = filled(x.len(), |y| gelu_into(&x, y));
        let mut dg = g.clone();
        gelu_backward_in_place(&x, &mut dg);
        for i in 0..x.len() {
            let xi = x[i];
            assert_eq!(y[i].to_bits(), (0.5 * xi * (1.0 + fast_erf(xi * FRAC_1_SQRT_2))).to_bits());
            let cdf = 0.5 * (1.0 + fast_erf(xi * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * fast_exp(-0.5 * xi * xi);
            assert_eq!(dg[i].to_bits(), (g[i] * (cdf + xi * pdf)).to_bits());
        }
        let (s, bias) = (37, (0..37).map(|j| if j % 5 == 4 { f32::MIN } else { 0.0 }).collect::<Vec<f32>>());
        let mut p: Vec<f32> = x[..s * s].to_vec();
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

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 3.99e-4; // within ±79.8 for exp, ±7.98 for erf
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((fast_exp(x) as f64 - e) / e).abs());
            let xe = x / 10.0;
            worst_erf = worst_erf.max((fast_erf(xe) as f64 - libm::erf(xe as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        // never subnormal: masked attention scores (about -3.4e38) and far tails give exact zeros
        for x in [-3.4e38f32, -1e6, -87.5, -80.5] {
            assert_eq!(fast_exp(x), 0.0, "exp({x})");
        }
        assert!(fast_exp(-79.9).is_normal());
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
    }

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
    fn linear_matches_composed_forward_and_backward() {
        let x = Var::from_tensor(&rand_tensor(&[3, 37, 20], 14)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[30, 20], 15)).unwrap();
        let b = Var::from_tensor(&rand_tensor(&[30], 16)).unwrap();
        let up = rand_tensor(&[3, 37, 30], 17);
        let composed = crate::model::Linear { weight: w.as_tensor().clone(), bias: b.as_tensor().clone() };
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
    fn dropout_backward_uses_the_forward_mask() {
        let x = Var::from_tensor(&Tensor::ones((100, 300), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let y = dropout(x.as_tensor(), 0.25, &mut rng).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        // With an all-ones input and upstream gradient, dx equals y elementwise.
        assert_eq!(max_diff(&y, gx), 0.0);
        let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = yv.iter().filter(|&&v| v == 0.0).count() as f64 / yv.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let x = rand_tensor(&[300, 96], 10);
        let w = rand_tensor(&[96], 11);
        let g = rand_tensor(&[300, 96], 13);
        let lw = rand_tensor(&[200, 96], 14);
        let lg = rand_tensor(&[300, 200], 15);
        let qkv = rand_tensor(&[10, 30, 3 * 96], 16);
        let mask = Tensor::ones((10, 30), DType::F32, &Device::Cpu).unwrap();
        let bias = crate::model::attention_bias(&mask).unwrap();
        let run = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let ln = x.apply_op3_no_bwd(&w, &g, &LayerNormBackward { eps: 1e-12 }).unwrap();
                let lin = x.apply_op3_no_bwd(&lw, &lg, &LinearBackward).unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(17);
                let qkv_var = Var::from_tensor(&qkv).unwrap();
                let ctx = attention(qkv_var.as_tensor(), &bias, 4, Some((0.1, &mut rng))).unwrap();
                let grads = ctx.sum_all().unwrap().backward().unwrap();
                let dqkv = grads.get(qkv_var.as_tensor()).unwrap().flatten_all().unwrap();
                [ln, lin, ctx.flatten_all().unwrap(), dqkv].iter().map(|t| t.to_vec1().unwrap()).collect()
            })
        };
        assert_eq!(run(1), run(3));
    }
}
