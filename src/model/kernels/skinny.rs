//! Linear layers over few rows (one text, a handful of texts): `y = x Wᵀ + b` computed as dot
//! products of `x`'s rows with `W`'s rows, reading `W` as PyTorch stores it (`[out, in]`,
//! row-major). Nothing is packed or copied per call, so each weight is read from memory once
//! per call; a general gemm repacks the whole weight matrix on every call, which for 24 rows
//! costs as much as the multiplication itself.
//!
//! The output is cut into fixed blocks of [`BLOCK_ROWS`] × [`BLOCK_COLS`] (never per thread);
//! every output element is the same sequence of float operations whichever block, register
//! tile or thread computes it, so results do not depend on the thread count. The int8 kernel
//! (`qlinear.rs`) shares this block walk. Forward only: training goes through gemm.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Up to this many rows, the fused linear (`linear_into`) takes this kernel where the CPU has AVX2 and
/// FMA (above it gemm's packing pays for itself; `emotune bench` measures both sides).
pub(crate) const MAX_ROWS: usize = 128;
/// Output rows per parallel work item (a multiple of every register tile's row count).
const BLOCK_ROWS: usize = 48;
/// Output columns per parallel work item (a multiple of every register tile's column count).
const BLOCK_COLS: usize = 32;

/// True where [`linear_into`] runs (AVX2 with FMA).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One work item's rectangle of the output, and the only way to write into it.
pub(crate) struct Block {
    ptr: *mut f32,
    rs: usize,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

// SAFETY: a `Block` only writes inside its own rectangle (checked in `write`), and
// `for_each_block` hands out disjoint rectangles of one exclusively borrowed buffer.
unsafe impl Sync for Block {}
// SAFETY: as above.
unsafe impl Send for Block {}

impl Block {
    /// Stores output element `(r, c)`, which must lie in this block.
    #[inline]
    pub fn write(&self, r: usize, c: usize, v: f32) {
        assert!(self.rows.contains(&r) && self.cols.contains(&c), "({r}, {c}) outside the block");
        // SAFETY: `(r, c)` lies in this block's rectangle, which `for_each_block` checked lies
        // inside the destination buffer, and no other block covers it.
        unsafe { self.ptr.add(r * self.rs + c).write(v) }
    }
}

/// Runs `f` once per block of the `m × n` output `dst` (rows `dst_rs` apart), in parallel; `f`
/// must write every element of its block.
pub(crate) fn for_each_block(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    (m, n): (usize, usize),
    f: impl Fn(&Block) + Sync,
) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_rs && dst.len() >= (m - 1) * dst_rs + n, "output buffer too small");
    let ptr = dst.as_mut_ptr().cast::<f32>();
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK_ROWS), n.div_ceil(BLOCK_COLS));
    let blocks: Vec<Block> = (0..row_blocks * col_blocks)
        .map(|i| {
            let (rb, cb) = (i / col_blocks, i % col_blocks);
            let rows = rb * BLOCK_ROWS..((rb + 1) * BLOCK_ROWS).min(m);
            let cols = cb * BLOCK_COLS..((cb + 1) * BLOCK_COLS).min(n);
            Block { ptr, rs: dst_rs, rows, cols }
        })
        .collect();
    blocks.par_iter().with_max_len(1).for_each(&f);
}

/// Visits `block` in register tiles of `R` rows × `C` columns, the edges in tiles of one row or
/// one column; `tile(r0, c0, nr, nc)` computes the tile at `(r0, c0)` of `nr ∈ {R, 1}` rows and
/// `nc ∈ {C, 1}` columns.
pub(crate) fn walk_tiles<const R: usize, const C: usize>(
    block: &Block,
    mut tile: impl FnMut(usize, usize, usize, usize),
) {
    let (rows, cols) = (block.rows.clone(), block.cols.clone());
    let full_cols = cols.start + (cols.len() / C) * C;
    let mut r0 = rows.start;
    while r0 < rows.end {
        let nr = if r0 + R <= rows.end { R } else { 1 };
        for c0 in (cols.start..full_cols).step_by(C) {
            tile(r0, c0, nr, C);
        }
        for c0 in full_cols..cols.end {
            tile(r0, c0, nr, 1);
        }
        r0 += nr;
    }
}

/// `dst[i, ..n] = x[i] · Wᵀ + b` for the `m` rows of `x` (`k` wide), `W` stored `[n, k]`; `dst`
/// rows are `dst_rs` apart. Only where [`available`] says so.
pub(crate) fn linear_into(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
) {
    assert!(available(), "the few-rows linear kernel needs AVX2 and FMA");
    assert!(x.len() >= m * k && w.len() >= n * k && b.len() >= n);
    for_each_block(dst, dst_rs, (m, n), |block| {
        walk_tiles::<3, 4>(block, |r0, c0, nr, nc| {
            // SAFETY: `available()` checked that the CPU has AVX2 and FMA.
            unsafe { avx2::tile(block, x, w, b, k, (r0, c0), (nr, nc)) }
        })
    });
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::model::kernels::skinny::Block;
    use std::arch::x86_64::*;

    /// The tile of `nr` rows × `nc` columns at `(r0, c0)`, written to `block`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        block: &Block,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        k: usize,
        (r0, c0): (usize, usize),
        (nr, nc): (usize, usize),
    ) {
        let xs = |i: usize| &x[(r0 + i) * k..(r0 + i + 1) * k];
        let ws = |j: usize| &w[(c0 + j) * k..(c0 + j + 1) * k];
        let mut put = |i: usize, j: usize, v: f32| block.write(r0 + i, c0 + j, v + b[c0 + j]);
        match (nr, nc) {
            (3, 4) => each(dots::<3, 4>(std::array::from_fn(xs), std::array::from_fn(ws)), &mut put),
            (3, 1) => each(dots::<3, 1>(std::array::from_fn(xs), std::array::from_fn(ws)), &mut put),
            (1, 4) => each(dots::<1, 4>(std::array::from_fn(xs), std::array::from_fn(ws)), &mut put),
            _ => each(dots::<1, 1>(std::array::from_fn(xs), std::array::from_fn(ws)), &mut put),
        }
    }

    fn each<const R: usize, const C: usize>(v: [[f32; C]; R], put: &mut impl FnMut(usize, usize, f32)) {
        for (i, row) in v.iter().enumerate() {
            for (j, &d) in row.iter().enumerate() {
                put(i, j, d);
            }
        }
    }

    /// Every `x[i] · w[j]`: eight lanes per pair accumulate the products of positions ≡ lane
    /// (mod 8) in order, then the lanes are summed and the scalar tail added, the same for
    /// every `R` and `C`.
    #[target_feature(enable = "avx2,fma")]
    fn dots<const R: usize, const C: usize>(x: [&[f32]; R], w: [&[f32]; C]) -> [[f32; C]; R] {
        let k = x[0].len();
        let k8 = k - k % 8;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut p = 0;
        while p < k8 {
            // SAFETY: every slice is `k` long and `p + 8 <= k8 <= k`.
            let xv: [__m256; R] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x[i].as_ptr().add(p)) });
            for j in 0..C {
                // SAFETY: as above.
                let wv = unsafe { _mm256_loadu_ps(w[j].as_ptr().add(p)) };
                for i in 0..R {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
            p += 8;
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|j| {
                let tail: f32 = x[i][k8..].iter().zip(&w[j][k8..]).fold(0.0, |s, (a, b)| a.mul_add(*b, s));
                hsum(acc[i][j]) + tail
            })
        })
    }

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    /// Never called: `available()` is false off x86-64.
    pub(super) unsafe fn tile(
        _: &crate::model::kernels::skinny::Block,
        _: &[f32],
        _: &[f32],
        _: &[f32],
        _: usize,
        _: (usize, usize),
        _: (usize, usize),
    ) {
        unreachable!("the few-rows kernel is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::linear::gemm_strided;
    use crate::model::kernels::testing::on_threads;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    fn run(m: usize, n: usize, k: usize, dst_rs: usize) -> Vec<f32> {
        let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
        let mut dst = vec![f32::NAN; m * dst_rs];
        linear_into(crate::model::kernels::as_uninit(&mut dst), dst_rs, &x, &w, &b, (m, n, k));
        dst
    }

    #[test]
    fn matches_gemm_on_every_edge_shape() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX2+FMA; the few-rows kernel is never used here");
            return;
        }
        for (m, n, k) in [(1, 1, 1), (1, 7, 13), (3, 4, 8), (5, 37, 77), (24, 96, 64), (50, 33, 300), (97, 70, 19)] {
            let dst_rs = n + 5;
            let got = run(m, n, k, dst_rs);
            let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
            let mut want = vec![0f32; m * n];
            for row in want.chunks_mut(n) {
                row.copy_from_slice(&b);
            }
            let par = gemm::Parallelism::None;
            gemm_strided(crate::model::kernels::as_uninit(&mut want), n, true, (m, n, k), &x, (k, 1), &w, (1, k), par);
            for i in 0..m {
                for j in 0..n {
                    let (g, e) = (got[i * dst_rs + j], want[i * n + j]);
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "({m},{n},{k}) at ({i},{j}): {g} vs {e}");
                }
                assert!(got[i * dst_rs + n..(i + 1) * dst_rs].iter().all(|v| v.is_nan()), "wrote outside its columns");
            }
        }
    }

    #[test]
    fn does_not_depend_on_thread_count() {
        if !available() {
            eprintln!("SKIPPED: this CPU has no AVX2+FMA; the few-rows kernel is never used here");
            return;
        }
        let f = || run(100, 130, 200, 130);
        let one = on_threads(1, f);
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            on_threads(3, f).iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
