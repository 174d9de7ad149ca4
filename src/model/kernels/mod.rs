//! Fused float32 CPU kernels with their backward, as candle custom ops: linear (matmul plus
//! bias), multi-head attention (scores, masked softmax, dropout and the weighted sum in one
//! node), dropout + residual add + LayerNorm, LayerNorm, erf-GELU, and dropout. Under
//! `precision::cpu_bf16` the linear layers' products run in bf16 on AMX tiles (`amx`; on
//! `vdpbf16ps` where the CPU has AVX-512 BF16 but no tiles, `dpbf16_block`), the feed-forward
//! block fused around them (`amx_ffn`), and attention's per-head products where that pays. For
//! inference only, linear layers whose weights were prepared at load: float32 panels, bf16 (the
//! same kernels), and int8.
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

pub mod amx;
mod amx_block;
pub(crate) mod amx_ffn;
pub mod amx_fill;
mod amx_int8;
pub mod amx_pack;
mod attention;
mod buffer;
mod dpbf16_block;
mod dropout;
mod embedding;
pub(crate) mod ffn;
mod gelu;
mod int8_simd;
mod layer_norm;
mod linear;
pub mod panels;
pub mod prepared;
pub mod profile;
pub mod qlinear;
pub(crate) mod simd;
mod tiles;

pub use attention::attention;
pub(crate) use attention::AttentionOp;
pub(crate) use buffer::{as_uninit, f32_slice, filled, Slices};
pub use dropout::{dropout, keep_mask};
pub(crate) use dropout::{dropped, optional_keep_mask};
pub use embedding::embedding;
pub use gelu::gelu_erf;
pub use layer_norm::{add_layer_norm, layer_norm};
pub(crate) use layer_norm::{add_layer_norm_rows, layer_norm_backward_into};
pub use linear::linear;
pub(crate) use linear::{column_sums, linear_into, matmul_into, weight_grad_into};
pub(crate) use prepared::project;
pub use simd::{fast_erf, fast_exp};

use candle_core::Tensor;

/// True where the fused kernels apply: they are written for contiguous f32 on the CPU, and
/// step aside under [`super::precision`]'s autocast and composed-ops guards.
pub fn applies(t: &Tensor) -> bool {
    let fused = t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && super::precision::fused_allowed();
    super::precision::record_path(fused)
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

    /// `n` values drawn uniformly from `[-scale, scale)`.
    pub fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    /// `f` run on a rayon pool of `threads` threads.
    pub fn on_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    }
}
