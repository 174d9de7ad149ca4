//! Bf16 linear layers for inference (`--dtype bf16`), on CPUs with AVX-512 BF16 (forward only):
//! the weight rounded to bf16 and packed once, at load, as pairs of adjacent inputs, the
//! activations rounded to bf16 at every call, products summed in f32 by `vdpbf16ps`:
//!
//! ```text
//! panel p = pairs (W[j, 2q], W[j, 2q + 1]) for j in 16p .. 16p + 16, stored [k / 2][16]
//! y[i, j] = (Σ_q x[i, 2q + 1] · W[j, 2q + 1] + x[i, 2q] · W[j, 2q]) + b[j]     in f32
//! ```
//!
//! Why: half the weight bytes of f32 and twice the multiply-adds per instruction. The block
//! walk and the tile shape (12 rows × one 16-lane register) are `panels.rs`'s; the products
//! of two bf16 values are exact in f32, so the only roundings are bf16's and the sums'. A CPU
//! without the instructions runs `--dtype bf16` in f32 (the commands say so), never an
//! emulation. The plain-Rust form here follows the instruction's definition (odd element
//! first, each sum rounded to nearest, subnormals flushed) and is what the tests check the
//! instruction against where the CPU has it.

use super::panels::{rows, tile_plain, walk_panel, Sums, BLOCK_ROWS, NR};
use super::tiles::for_each_block;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Whether this CPU has AVX-512 BF16 (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The instructions' name, for messages.
pub const NAME: &str = "AVX-512 BF16 (vdpbf16ps)";

/// Rows per register tile.
const TILE_ROWS: usize = 12;

/// `v` rounded to the nearest bf16, ties to even (NaN stays NaN).
fn bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `xs` as bf16 pairs `(xs[2q], xs[2q + 1])` in 32-bit words, the even element in the low half;
/// an odd length is padded with a zero.
fn pairs(xs: &[f32]) -> impl Iterator<Item = u32> + '_ {
    xs.chunks(2).map(|p| u32::from(bf16(p[0])) | (u32::from(bf16(p.get(1).copied().unwrap_or(0.0))) << 16))
}

/// A linear layer's weight as bf16 pairs in panels, with its f32 bias.
#[derive(Debug)]
pub struct Bf16PanelLinear {
    n: usize,
    k: usize,
    /// Input pairs per row, `⌈k / 2⌉`.
    k2: usize,
    /// `[n / 16][k2][16]`.
    panels: Vec<u32>,
    bias: Vec<f32>,
}

impl Bf16PanelLinear {
    /// Rounds and packs `weight [n, k]` (row-major, as PyTorch stores it); `bias` has `n` values.
    pub fn new(weight: &[f32], bias: &[f32], (n, k): (usize, usize)) -> Bf16PanelLinear {
        assert!(weight.len() == n * k && bias.len() == n, "weight [{n}, {k}] and bias [{}]", bias.len());
        let k2 = k.div_ceil(2);
        let mut panels = vec![0u32; n.div_ceil(NR) * k2 * NR];
        panels.par_chunks_mut((k2 * NR).max(1)).enumerate().for_each(|(p, panel)| {
            for j in p * NR..(p * NR + NR).min(n) {
                for (q, pair) in pairs(&weight[j * k..(j + 1) * k]).enumerate() {
                    panel[q * NR + j % NR] = pair;
                }
            }
        });
        Bf16PanelLinear { n, k, k2, panels, bias: bias.to_vec() }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `dst[i, ..n] = x[i] · Wᵀ + b` for the `m` rows of `x [m, k]`, `dst` rows `dst_rs` apart,
    /// by `vdpbf16ps`, which the CPU must have ([`available`]).
    pub fn forward_into(&self, x: &[f32], m: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        assert!(available(), "this CPU has no {NAME}");
        self.forward_with(true, x, m, dst, dst_rs)
    }

    /// As [`Self::forward_into`], by the instruction (`simd`) or by its plain-Rust definition.
    fn forward_with(&self, simd: bool, x: &[f32], m: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        assert_eq!(x.len(), m * self.k, "activations of {} values for {m} rows of width {}", x.len(), self.k);
        let k2 = self.k2;
        let xp: Vec<u32> = x.chunks(self.k.max(1)).take(m).flat_map(pairs).collect();
        for_each_block(dst, dst_rs, (m, self.n), (BLOCK_ROWS, NR), |block| {
            let p = block.cols.start / NR;
            let panel = &self.panels[p * k2 * NR..(p + 1) * k2 * NR];
            let tile = |r0: usize, nr: usize, sums: &mut Sums| {
                let xs = &xp[r0 * k2..(r0 + nr) * k2];
                match simd {
                    // SAFETY: `forward_into`, the only caller that asks for the instruction,
                    // checked that the CPU has it.
                    true => unsafe { rows!(nr, tile_bf16(xs, k2, panel, sums); 1 2 3 4 5 6 7 8 9 10 11 12) },
                    false => rows!(nr, tile_scalar(xs, k2, panel, sums); 1 2 3 4 5 6 7 8 9 10 11 12),
                }
            };
            match simd {
                // SAFETY: as above.
                true => unsafe { simd::with_bf16(|| walk_panel(block, TILE_ROWS, &self.bias, tile)) },
                false => walk_panel(block, TILE_ROWS, &self.bias, tile),
            }
        });
    }
}

/// A bf16 value (the high half of an f32) as f32, subnormals as zero.
fn widen(h: u32) -> f32 {
    let v = f32::from_bits(h << 16);
    if v.is_subnormal() {
        0.0
    } else {
        v
    }
}

/// `v`, subnormals flushed to zero.
fn flush(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0
    } else {
        v
    }
}

/// The sums of `R` rows of pairs `x` (each `k2` long) against `panel`, by the definition of
/// `vdpbf16ps`: per pair, the odd product added first, then the even one, each sum rounded.
fn tile_scalar<const R: usize>(x: &[u32], k2: usize, panel: &[u32], out: &mut Sums) {
    tile_plain::<R, u32>(x, k2, panel, out, |s, v, w| {
        let s = flush(s + widen(v >> 16) * widen(w >> 16));
        flush(s + widen(v & 0xffff) * widen(w & 0xffff))
    })
}

#[cfg(target_arch = "x86_64")]
use simd::tile_bf16;

#[cfg(target_arch = "x86_64")]
mod simd {
    use crate::model::kernels::panels::{Sums, NR};
    use std::arch::x86_64::*;

    /// Runs `f` compiled with AVX-512 BF16 (so the tiles inline into it).
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn with_bf16(f: impl FnOnce()) {
        f()
    }

    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    pub unsafe fn tile_bf16<const R: usize>(x: &[u32], k2: usize, panel: &[u32], out: &mut Sums) {
        assert!(x.len() >= R * k2 && panel.len() >= k2 * NR && R <= out.len());
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        for q in 0..k2 {
            // SAFETY: `q < k2`, so the panel row `q` (16 words) and `x[i * k2 + q]` for `i < R`
            // lie inside the slices (asserted above). Both bf16 vector types are 64 bytes of
            // 32 bf16 values, as the integer vectors they are made from.
            let w: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(wp.add(q * NR).cast())) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let v: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(*xp.add(i * k2 + q) as i32)) };
                *a = _mm512_dpbf16_ps(*a, v, w);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: each row of `out` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub unsafe fn with_bf16(_: impl FnOnce()) {
        unreachable!("no AVX-512 BF16 off x86-64")
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_bf16<const R: usize>(_: &[u32], _: usize, _: &[u32], _: &mut Sums) {
    unreachable!("no AVX-512 BF16 off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::buffer::filled;
    use crate::model::kernels::testing::on_threads;
    use crate::model::kernels::testing::uniform as data;

    fn run(simd: bool, lin: &Bf16PanelLinear, x: &[f32], m: usize) -> Vec<f32> {
        filled(m * lin.n, |y| lin.forward_with(simd, x, m, y, lin.n))
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 · 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even one, 1 + 2^-6
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.5), 0xc020);
        assert!(f32::from_bits(u32::from(bf16(f32::NAN)) << 16).is_nan());
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
    }

    /// The definition in plain Rust stays within bf16's rounding of the exact product (so the
    /// packing pairs the right inputs with the right weights), and writes only its columns.
    #[test]
    fn the_definition_is_the_product_within_bf16_rounding() {
        let (m, n, k, dst_rs) = (29, 21, 51, 30);
        let (w, b, x) = (data(n * k, 5, 0.5), data(n, 6, 1.0), data(m * k, 7, 2.0));
        let lin = Bf16PanelLinear::new(&w, &b, (n, k));
        let mut dst = vec![7f32; m * dst_rs];
        lin.forward_with(false, &x, m, crate::model::kernels::buffer::as_uninit(&mut dst), dst_rs);
        for i in 0..m {
            for j in 0..dst_rs {
                let got = dst[i * dst_rs + j];
                if j >= n {
                    assert_eq!(got, 7.0, "column {j} is outside the layer's output");
                    continue;
                }
                let terms = (0..k).map(|q| f64::from(x[i * k + q]) * f64::from(w[j * k + q]));
                let exact = f64::from(b[j]) + terms.clone().sum::<f64>();
                let size: f64 = terms.map(f64::abs).sum();
                // each factor is off by at most 2^-9 of itself
                assert!((f64::from(got) - exact).abs() <= size / 128.0, "({i}, {j}): {got} against {exact}");
            }
        }
    }

    #[test]
    fn the_instruction_gives_the_definition_where_the_cpu_has_it() {
        if !available() {
            eprintln!("NOT CHECKED here (this CPU lacks it): {NAME}");
            return;
        }
        for (m, n, k) in [(1, 1, 1), (37, 45, 200), (5, 9, 63), (200, 33, 30)] {
            let lin = Bf16PanelLinear::new(&data(n * k, 2, 0.2), &data(n, 3, 1.0), (n, k));
            let x = data(m * k, 1, 3.0);
            let (want, got) = (run(false, &lin, &x, m), run(true, &lin, &x, m));
            // Bit for bit: measured identical on an Intel Xeon with AMX (Sapphire Rapids); the
            // definition follows the instruction's documented rounding, so any difference is a bug.
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.to_bits(), w.to_bits(), "({m}, {n}, {k}): {g} against {w}");
            }
        }
    }

    #[test]
    fn does_not_depend_on_the_thread_count() {
        let (m, n, k) = (250, 40, 96);
        let lin = Bf16PanelLinear::new(&data(n * k, 9, 0.3), &data(n, 10, 1.0), (n, k));
        let x = data(m * k, 11, 1.0);
        let f = || run(available(), &lin, &x, m);
        assert_eq!(on_threads(1, f), on_threads(3, f));
    }
}
