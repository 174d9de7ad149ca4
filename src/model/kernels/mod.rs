//! Fused float32 CPU kernels with their backward, as candle custom ops: linear (matmul plus
//! bias), multi-head attention (scores, masked softmax, dropout and the weighted sum in one
//! node), dropout + residual add + LayerNorm, LayerNorm, erf-GELU, and dropout.
//!
//! Each replaces a chain of primitive ops whose autograd nodes each cost a fresh tensor, a
//! zero-fill and an add in candle's backward pass. The composed versions in `model/nn.rs`
//! stay as the path for other devices and dtypes, and as the reference the tests below check
//! these kernels against.
//!
//! Determinism: work is split into chunks of a fixed number of rows (never by thread count);
//! reductions across rows (the weight and bias gradients of LayerNorm and linear) sum the
//! chunks' partial sums in chunk order; gemm splits its output, never the summed dimension. So
//! results are bitwise the same on any number of threads.

mod attention;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
pub mod profile;
mod simd;

pub use attention::attention;
pub(crate) use attention::AttentionOp;
pub use dropout::{dropout, keep_mask};
pub(crate) use dropout::{dropped, optional_keep_mask};
pub use gelu::gelu_erf;
pub(crate) use gelu::{gelu_backward_in_place, gelu_in_place, gelu_into};
pub use layer_norm::{add_layer_norm, layer_norm};
pub(crate) use layer_norm::{add_layer_norm_rows, layer_norm_backward_into};
pub use linear::linear;
pub(crate) use linear::{column_sums, linear_into, matmul_into, weight_grad_into};
pub use simd::{fast_erf, fast_exp};

use candle_core::{bail, CpuStorage, Layout, Result, Tensor};
use std::mem::MaybeUninit;

/// Rows per parallel work item.
const ROWS_PER_CHUNK: usize = 16;
/// Elements per parallel work item for element-wise kernels.
const ELEMS_PER_CHUNK: usize = 1 << 14;

/// True where the fused kernels apply (they are written for contiguous f32 on the CPU).
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { bail!("{what}: expected float32 input") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// Allocates `n` floats without zeroing them and lets `fill` write every one.
pub(crate) fn filled(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every caller's `fill` writes all `n` elements: a full element-wise map over its
    // input, or gemm calls with `accumulate = false` that together cover the whole output.
    unsafe { v.set_len(n) };
    v
}

/// An initialised slice seen as possibly-uninitialised (same layout), for writers that accept
/// both.
pub(crate) fn as_uninit(xs: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the writers only store
    // initialised values through it.
    unsafe { &mut *(xs as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};
    use rand::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 6.0 - 3.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// `f` run on a rayon pool of `threads` threads.
    pub fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }
}
