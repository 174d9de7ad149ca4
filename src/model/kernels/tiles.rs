//! The output-block walk of the inference linear kernels (`qlinear.rs`, `panels.rs`): the
//! output is cut into fixed blocks of a size the kernel chooses (never per thread), run in
//! parallel, and each block is visited in register tiles. Every output element is computed by
//! the same sequence of operations whichever block, tile or thread it falls in, so results do
//! not depend on the thread count.

use std::mem::MaybeUninit;
use std::ops::Range;

/// One work item's rectangle of the output, and the only way to write into it.
pub(crate) struct Block {
    ptr: *mut f32,
    rs: usize,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

// SAFETY: a `Block` only writes inside its own rectangle (checked in `write_row`), and
// `for_each_block` hands out disjoint rectangles of one exclusively borrowed buffer.
unsafe impl Sync for Block {}
// SAFETY: as above.
unsafe impl Send for Block {}

impl Block {
    /// Stores `vals` at `(r, c0..c0 + vals.len())`, which must lie in this block.
    #[inline]
    pub fn write_row(&self, r: usize, c0: usize, vals: &[f32]) {
        let inside = self.rows.contains(&r) && c0 >= self.cols.start && c0 + vals.len() <= self.cols.end;
        assert!(inside, "({r}, {c0}..{}) outside the block", c0 + vals.len());
        // SAFETY: the span lies in this block's rectangle (checked above), which lies inside the
        // destination buffer, which no other block covers and `vals` (a shared borrow) is not.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(r * self.rs + c0), vals.len()) }
    }
}

/// Runs `f` once per block of `block_rows × block_cols` of the `m × n` output `dst` (rows
/// `dst_rs` apart), in parallel, row block by row block; `f` must write every element of its
/// block.
pub(crate) fn for_each_block(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    (m, n): (usize, usize),
    (block_rows, block_cols): (usize, usize),
    f: impl Fn(&Block) + Sync,
) {
    use rayon::prelude::*;
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_rs && dst.len() >= (m - 1) * dst_rs + n, "output buffer too small");
    let ptr = dst.as_mut_ptr().cast::<f32>();
    assert!(block_rows > 0 && block_cols > 0, "empty blocks");
    let (row_blocks, col_blocks) = (m.div_ceil(block_rows), n.div_ceil(block_cols));
    let blocks: Vec<Block> = (0..row_blocks * col_blocks)
        .map(|i| {
            let (rb, cb) = (i / col_blocks, i % col_blocks);
            let rows = rb * block_rows..((rb + 1) * block_rows).min(m);
            let cols = cb * block_cols..((cb + 1) * block_cols).min(n);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::on_threads;

    /// Every element of odd-sized outputs is written exactly once, through tiles of the
    /// promised sizes, and nothing outside the output's columns.
    #[test]
    fn blocks_and_tiles_cover_the_output_once() {
        for (m, n, dst_rs) in [(1, 1, 1), (47, 33, 40), (100, 130, 130), (3, 5, 9)] {
            let mut dst = vec![0f32; m * dst_rs];
            let tiles = std::sync::Mutex::new(Vec::new());
            on_threads(3, || {
                for_each_block(crate::model::kernels::as_uninit(&mut dst), dst_rs, (m, n), (48, 32), |block| {
                    walk_tiles::<3, 4>(block, |r0, c0, nr, nc| {
                        tiles.lock().unwrap().push((nr, nc));
                        for r in r0..r0 + nr {
                            let vals: Vec<f32> = (c0..c0 + nc).map(|c| 1.0 + (r * n + c) as f32).collect();
                            block.write_row(r, c0, &vals);
                        }
                    })
                })
            });
            for r in 0..m {
                for c in 0..dst_rs {
                    let want = if c < n { 1.0 + (r * n + c) as f32 } else { 0.0 };
                    assert_eq!(dst[r * dst_rs + c], want, "({m}, {n}) at ({r}, {c})");
                }
            }
            let sizes = tiles.into_inner().unwrap();
            assert!(sizes.iter().all(|s| [(3, 4), (3, 1), (1, 4), (1, 1)].contains(s)), "{sizes:?}");
            assert_eq!(sizes.iter().map(|(a, b)| a * b).sum::<usize>(), m * n);
        }
    }

    #[test]
    #[should_panic(expected = "outside the block")]
    fn a_block_refuses_to_write_outside_itself() {
        let mut dst = vec![0f32; 100 * 100];
        for_each_block(crate::model::kernels::as_uninit(&mut dst), 100, (100, 100), (48, 32), |block| {
            block.write_row(block.rows.end, block.cols.start, &[1.0])
        });
    }
}
