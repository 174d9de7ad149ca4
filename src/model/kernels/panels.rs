//! Float32 linear layers for inference with the weight packed once, at load, into the layout
//! the register tiles read (forward only):
//!
//! ```text
//! panel p = W[16p .. 16p + 16, :]ᵀ          stored [k][16], zero columns past n
//! y[i, 16p + c] = (Σ_q x[i, q] · panel_p[q][c]) + b[16p + c]
//! ```
//!
//! Why: gemm packs both operands on every call, and at the few rows of a served request the
//! packing of the weight costs as much as the product (Zen 3, one text of 24 tokens: 46% of the
//! time in gemm's packing code). Packed once, each call only streams the panels: a tile of `R`
//! rows × 16 columns keeps its accumulators in registers (AVX2: two 8-lane registers per row,
//! `R ≤ 6`; AVX-512: one 16-lane register per row, `R ≤ 12`) and reads, per `q`, one panel
//! row and `R` broadcast inputs. Work items are blocks of [`BLOCK_ROWS`] rows × one panel, so a
//! block's inputs stay in cache while its panel streams. README: measured against gemm.
//!
//! Each output is the same chain of fused multiply-adds over `q` in order, started from 0,
//! whatever its tile, block, thread or instruction set, so every path gives the same bits
//! (the tests check each path the CPU has against plain Rust), and a row's outputs do not
//! depend on the other rows of its batch.

use super::tiles::{for_each_block, Block};
use rayon::prelude::*;
use simd::{tile_avx2, tile_avx512};
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Columns per panel (one AVX-512 register, two AVX2 ones).
pub(crate) const NR: usize = 16;
/// Rows per parallel work item: a multiple of every tile's row count.
pub(crate) const BLOCK_ROWS: usize = 192;

/// The instructions the tiles use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Scalar,
}

/// Rows from which gemm beats the panels, on this CPU's path. With AVX-512 gemm's kernels
/// reach about 250 GFLOP/s where the panels stay near 170: on a Xeon with AMX (`cargo bench
/// --bench linear -- 10 64 128 256 512 1024`), the four DistilBERT-base shapes took 21.8 ms
/// either way at 256 rows and 36.6 (gemm) against 43.3 ms at 512. With AVX2 (Zen 3) the panels
/// were faster even at 2560 rows, so they keep every shape there.
pub fn gemm_rows() -> usize {
    match Isa::detect() {
        Isa::Avx512 => 256,
        Isa::Avx2Fma | Isa::Scalar => usize::MAX,
    }
}

impl Isa {
    /// The best the CPU has (checked once).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| Isa::available()[0])
    }

    /// Every path this CPU can run, best first (plain Rust last).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx512f") {
                out.push(Isa::Avx512);
            }
            if has!("avx2") && has!("fma") {
                out.push(Isa::Avx2Fma);
            }
        }
        out.push(Isa::Scalar);
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "AVX-512 FMA",
            Isa::Avx2Fma => "AVX2 FMA",
            Isa::Scalar => "no SIMD (plain Rust)",
        }
    }

    /// Rows per register tile.
    fn tile_rows(self) -> usize {
        match self {
            Isa::Avx512 => 12,
            Isa::Avx2Fma => 6,
            Isa::Scalar => 4,
        }
    }
}

/// The most rows any tile has.
pub(crate) const MAX_R: usize = 12;

/// A tile's sums, `[row][column]`.
pub(crate) type Sums = [[f32; NR]; MAX_R];

/// Calls `f::<R>` for the `R` among the listed literals that equals `nr`.
macro_rules! rows {
    ($nr:expr, $f:ident $args:tt; $($r:literal)+) => {
        match $nr {
            $($r => $f::<$r> $args,)+
            other => unreachable!("a tile of {other} rows"),
        }
    };
}

/// A linear layer's weight in panels, with its bias.
#[derive(Debug)]
pub struct PanelLinear {
    n: usize,
    k: usize,
    /// `[n / 16][k][16]`.
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl PanelLinear {
    /// Packs `weight [n, k]` (row-major, as PyTorch stores it); `bias` has `n` values.
    pub fn new(weight: &[f32], bias: &[f32], (n, k): (usize, usize)) -> PanelLinear {
        assert!(weight.len() == n * k && bias.len() == n, "weight [{n}, {k}] and bias [{}]", bias.len());
        let mut panels = vec![0f32; n.div_ceil(NR) * k * NR];
        panels.par_chunks_mut((k * NR).max(1)).enumerate().for_each(|(p, panel)| {
            let rows: Vec<&[f32]> = (p * NR..(p * NR + NR).min(n)).map(|j| &weight[j * k..(j + 1) * k]).collect();
            for (q, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (d, row) in dst.iter_mut().zip(&rows) {
                    *d = row[q];
                }
            }
        });
        PanelLinear { n, k, panels, bias: bias.to_vec() }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `dst[i, ..n] = x[i] · Wᵀ + b` for the `m` rows of `x [m, k]`, `dst` rows `dst_rs` apart,
    /// on the CPU's best path.
    pub fn forward_into(&self, x: &[f32], m: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        self.forward_with(Isa::detect(), x, m, dst, dst_rs)
    }

    /// As [`Self::forward_into`], on the path `isa` (which the CPU must have).
    pub fn forward_with(&self, isa: Isa, x: &[f32], m: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        assert_eq!(x.len(), m * self.k, "activations of {} values for {m} rows of width {}", x.len(), self.k);
        assert!(Isa::available().contains(&isa), "this CPU cannot run {}", isa.name());
        // Each block's whole walk is compiled for its instructions, so the tiles inline.
        for_each_block(dst, dst_rs, (m, self.n), (BLOCK_ROWS, NR), |block| match isa {
            // SAFETY: checked above that the CPU has AVX-512F.
            Isa::Avx512 => unsafe { simd::with_avx512(|| self.walk(isa, block, x)) },
            // SAFETY: checked above that the CPU has AVX2 and FMA.
            Isa::Avx2Fma => unsafe { simd::with_avx2_fma(|| self.walk(isa, block, x)) },
            Isa::Scalar => self.walk(isa, block, x),
        });
    }

    /// Computes and writes `block` (one panel's columns) in tiles of `isa`'s rows.
    #[inline(always)]
    fn walk(&self, isa: Isa, block: &Block, x: &[f32]) {
        let (k, p) = (self.k, block.cols.start / NR);
        let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
        walk_panel(block, isa.tile_rows(), &self.bias, |r0, nr, sums| {
            let xs = &x[r0 * k..(r0 + nr) * k];
            match isa {
                // SAFETY: `forward_with` checked that the CPU has AVX-512F.
                Isa::Avx512 => unsafe { rows!(nr, tile_avx512(xs, k, panel, sums); 1 2 3 4 5 6 7 8 9 10 11 12) },
                // SAFETY: `forward_with` checked that the CPU has AVX2 and FMA.
                Isa::Avx2Fma => unsafe { rows!(nr, tile_avx2(xs, k, panel, sums); 1 2 3 4 5 6) },
                Isa::Scalar => rows!(nr, tile_scalar(xs, k, panel, sums); 1 2 3 4),
            }
        });
    }
}

/// Visits `block` (the columns of one panel) in tiles of at most `tile_rows` rows:
/// `tile(r0, nr, sums)` fills the first `nr` rows of `sums` with the products of rows
/// `r0..r0 + nr`; the bias (`bias` of the whole layer) is added and the rows written.
#[inline(always)]
pub(crate) fn walk_panel(block: &Block, tile_rows: usize, bias: &[f32], mut tile: impl FnMut(usize, usize, &mut Sums)) {
    let c0 = block.cols.start;
    let bias = &bias[block.cols.clone()];
    let mut sums: Sums = [[0f32; NR]; MAX_R];
    let mut r0 = block.rows.start;
    while r0 < block.rows.end {
        let nr = (block.rows.end - r0).min(tile_rows);
        tile(r0, nr, &mut sums);
        for (i, row) in sums[..nr].iter().enumerate() {
            let out: [f32; NR] = std::array::from_fn(|c| row[c] + bias.get(c).copied().unwrap_or(0.0));
            block.write_row(r0 + i, c0, &out[..bias.len()]);
        }
        r0 += nr;
    }
}

/// The sums of `R` rows of `x` (each `k` long) against `panel`, in plain Rust: the same fused
/// multiply-adds in the same order as the SIMD tiles.
fn tile_scalar<const R: usize>(x: &[f32], k: usize, panel: &[f32], out: &mut Sums) {
    let mut acc = [[0f32; NR]; R];
    for (q, w) in panel.chunks_exact(NR).enumerate().take(k) {
        for (i, a) in acc.iter_mut().enumerate() {
            let v = x[i * k + q];
            for (s, &wc) in a.iter_mut().zip(w) {
                *s = v.mul_add(wc, *s);
            }
        }
    }
    out[..R].copy_from_slice(&acc);
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use crate::model::kernels::panels::{Sums, NR};
    use std::arch::x86_64::*;

    /// Runs `f` compiled with AVX-512F (so the tiles inline into it).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn with_avx512(f: impl FnOnce()) {
        f()
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn with_avx2_fma(f: impl FnOnce()) {
        f()
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn tile_avx512<const R: usize>(x: &[f32], k: usize, panel: &[f32], out: &mut Sums) {
        assert!(x.len() >= R * k && panel.len() >= k * NR && R <= out.len());
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        let mut acc = [_mm512_setzero_ps(); R];
        for q in 0..k {
            // SAFETY: `q < k`, so the panel row `q` (16 floats) and `x[i * k + q]` for `i < R`
            // lie inside the slices (asserted above).
            let w = unsafe { _mm512_loadu_ps(wp.add(q * NR)) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *xp.add(i * k + q) }), w, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: each row of `out` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn tile_avx2<const R: usize>(x: &[f32], k: usize, panel: &[f32], out: &mut Sums) {
        assert!(x.len() >= R * k && panel.len() >= k * NR && R <= out.len());
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for q in 0..k {
            // SAFETY: `q < k`, so the panel row `q` (16 floats) and `x[i * k + q]` for `i < R`
            // lie inside the slices (asserted above).
            let (w0, w1) = unsafe { (_mm256_loadu_ps(wp.add(q * NR)), _mm256_loadu_ps(wp.add(q * NR + 8))) };
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let v = _mm256_set1_ps(unsafe { *xp.add(i * k + q) });
                a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                a[1] = _mm256_fmadd_ps(v, w1, a[1]);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            // SAFETY: each row of `out` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    use crate::model::kernels::panels::Sums;

    pub unsafe fn with_avx512(_: impl FnOnce()) {
        unreachable!("Isa::available offers no SIMD path off x86-64")
    }
    pub use with_avx512 as with_avx2_fma;
    pub unsafe fn tile_avx512<const R: usize>(_: &[f32], _: usize, _: &[f32], _: &mut Sums) {
        unreachable!("Isa::available offers no SIMD path off x86-64")
    }
    pub use tile_avx512 as tile_avx2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::buffer::filled;
    use crate::model::kernels::testing::on_threads;
    use crate::model::kernels::testing::uniform as data;

    fn run(isa: Isa, lin: &PanelLinear, x: &[f32], m: usize) -> Vec<f32> {
        filled(m * lin.n, |y| lin.forward_with(isa, x, m, y, lin.n))
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_path_the_cpu_has_gives_the_plain_rust_result_bit_for_bit() {
        for (m, n, k) in [(1, 1, 1), (37, 45, 200), (5, 9, 64), (200, 33, 30), (13, 16, 0)] {
            let lin = PanelLinear::new(&data(n * k, 2, 0.2), &data(n, 3, 1.0), (n, k));
            let x = data(m * k, 1, 3.0);
            let want = run(Isa::Scalar, &lin, &x, m);
            for isa in Isa::available() {
                eprintln!("panel linear ({m}, {n}, {k}) on {}", isa.name());
                assert_eq!(bits(&run(isa, &lin, &x, m)), bits(&want), "{isa:?}");
            }
        }
        let missing: Vec<&str> =
            [Isa::Avx512, Isa::Avx2Fma].into_iter().filter(|i| !Isa::available().contains(i)).map(Isa::name).collect();
        if !missing.is_empty() {
            eprintln!("NOT CHECKED here (this CPU lacks them): {}", missing.join(", "));
        }
    }

    #[test]
    fn matches_the_product_as_written_and_writes_only_its_columns() {
        let (m, n, k, dst_rs) = (29, 21, 50, 30);
        let (w, b, x) = (data(n * k, 5, 0.5), data(n, 6, 1.0), data(m * k, 7, 2.0));
        let lin = PanelLinear::new(&w, &b, (n, k));
        let mut dst = vec![7f32; m * dst_rs];
        lin.forward_into(&x, m, crate::model::kernels::buffer::as_uninit(&mut dst), dst_rs);
        for i in 0..m {
            for j in 0..dst_rs {
                let got = dst[i * dst_rs + j];
                if j >= n {
                    assert_eq!(got, 7.0, "column {j} is outside the layer's output");
                    continue;
                }
                let exact: f64 =
                    f64::from(b[j]) + (0..k).map(|q| f64::from(x[i * k + q]) * f64::from(w[j * k + q])).sum::<f64>();
                assert!((f64::from(got) - exact).abs() < 1e-4, "({i}, {j}): {got} against {exact}");
            }
        }
    }

    #[test]
    fn a_rows_outputs_do_not_depend_on_its_batch_or_the_thread_count() {
        let (m, n, k) = (250, 70, 96);
        let lin = PanelLinear::new(&data(n * k, 9, 0.3), &data(n, 10, 1.0), (n, k));
        let x = data(m * k, 11, 1.0);
        let f = || run(Isa::detect(), &lin, &x, m);
        let all = on_threads(1, f);
        assert_eq!(bits(&all), bits(&on_threads(3, f)));
        for (start, rows) in [(0, 1), (7, 5), (190, 60)] {
            let part = run(Isa::detect(), &lin, &x[start * k..(start + rows) * k], rows);
            assert_eq!(bits(&part), bits(&all[start * n..(start + rows) * n]), "rows {start}..{}", start + rows);
        }
    }
}
