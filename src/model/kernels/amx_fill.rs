//! A product's output packed, block by block as it is computed, as the operand of the next
//! product ([`super::amx::matmul_pieces`]): the 32 × 32 blocks in L1 rounded to bf16 straight
//! into the tiles of a [`Packed`], in the layout of `amx_pack` (which the tests check it against),
//! instead of the output written to memory and packed in a pass of its own.

use super::amx_pack::{round_tile, Layout, Packed, SendPtr, TileRow, KT, T, TILE};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// What a product's output `Y [m, n]` becomes as a [`Packed`] operand of the next product.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// `Y` as the left operand (its rows the lines, k along its columns).
    Lhs,
    /// `Yᵀ` as the left operand (its columns the lines, k along its rows).
    LhsTransposed,
    /// `Y` as the right operand (k along its rows, its columns the lines).
    Rhs,
}

/// Builds a [`Packed`] operand from the 32 × 32 blocks of a product's output `Y` as they are
/// computed (`amx::matmul_pieces`), from several threads at once: each block of Y's grid is
/// stored exactly once (checked), and together they write every tile, padding included.
pub struct Filler {
    lines: Vec<TileRow>,
    out: SendPtr<u16>,
    rows: usize,
    k_tiles: usize,
    role: Role,
    /// Per block of Y's grid (row-major), whether it was stored.
    stored: Vec<AtomicBool>,
    grid_cols: usize,
}

impl Filler {
    /// For `Y [m, n]` in the given role.
    pub fn new(role: Role, (m, n): (usize, usize)) -> Filler {
        let (rows, k) = match role {
            Role::Lhs => (m, n),
            Role::LhsTransposed | Role::Rhs => (n, m),
        };
        let (blocks, k_tiles) = (rows.div_ceil(2 * T) * 2, k.div_ceil(KT));
        let mut lines: Vec<TileRow> = Vec::with_capacity(blocks * k_tiles * T);
        let out = SendPtr(lines.as_mut_ptr().cast::<u16>());
        let grid = m.div_ceil(2 * T) * n.div_ceil(2 * T);
        let stored = (0..grid).map(|_| AtomicBool::new(false)).collect();
        Filler { lines, out, rows, k_tiles, role, stored, grid_cols: n.div_ceil(2 * T) }
    }

    /// Rounds the block of `Y` whose first row is `row` and first column `col` (multiples of
    /// 32), held row-major 32 values a row (zeros past `Y`'s edge), into its two tiles.
    pub fn store(&self, row: usize, col: usize, block: &[f32; 4 * T * T]) {
        assert!(row.is_multiple_of(2 * T) && col.is_multiple_of(2 * T), "a block at ({row}, {col})");
        let (grid_row, grid_col) = (row / (2 * T), col / (2 * T));
        let at = grid_row * self.grid_cols + grid_col;
        assert!(grid_col < self.grid_cols && at < self.stored.len(), "a block at ({row}, {col}) outside the output");
        assert!(!self.stored[at].swap(true, Relaxed), "the block at ({row}, {col}) stored twice");
        let (lines_along_rows, layout) = match self.role {
            Role::Lhs => (true, Layout::Rows),
            Role::LhsTransposed => (false, Layout::Rows),
            Role::Rhs => (false, Layout::Pairs),
        };
        let (first_line, k) = if lines_along_rows { (row, col) } else { (col, row) };
        let (line_block, k_tile) = (first_line / T, k / KT);
        for h in 0..2 {
            // line q, value j of this half at src[q * line_stride + j * k_stride]
            let (src, strides) = match lines_along_rows {
                true => (&block[h * T * 2 * T..(h + 1) * T * 2 * T], (2 * T, 1)),
                false => (&block[h * T..h * T + (T - 1) + (KT - 1) * 2 * T + 1], (1, 2 * T)),
            };
            // SAFETY: tile (line_block + h, k_tile) lies inside the allocation (the block is on
            // the output's grid, checked above, and the allocation holds the tiles of every
            // block of it); only this block writes it (each block is stored once, checked).
            let tile = unsafe {
                std::slice::from_raw_parts_mut(self.out.0.add(((line_block + h) * self.k_tiles + k_tile) * TILE), TILE)
            };
            round_tile(src, strides, layout, tile);
        }
    }

    /// The operand, once every block of the grid was stored.
    pub fn finish(mut self) -> Packed {
        let missing = self.stored.iter().filter(|s| !s.load(Relaxed)).count();
        assert_eq!(missing, 0, "{missing} blocks of the output were never stored");
        // SAFETY: every block of the grid stored its two tiles (checked just above), and the
        // grid's blocks cover every tile of the allocation: 32 lines (two 16-line blocks) by one
        // k tile each, over all line blocks and k tiles.
        unsafe { self.lines.set_len(self.lines.capacity()) };
        Packed { lines: std::mem::take(&mut self.lines), rows: self.rows, k_tiles: self.k_tiles }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::amx_pack::{pack_lhs, pack_rhs};
    use crate::model::kernels::testing::uniform;

    #[test]
    fn blocks_filled_in_place_equal_the_packed_matrix() {
        // Y [70, 45]: blocks cut at both edges, stored one by one in each role
        let (m, n) = (70, 45);
        let y = uniform(m * n, 21, 3.0);
        let roles = [
            (Role::Lhs, pack_lhs(&y, (n, 1), m, n)),
            (Role::LhsTransposed, pack_lhs(&y, (1, n), n, m)),
            (Role::Rhs, pack_rhs(&y, (n, 1), m, n)),
        ];
        for (role, want) in roles {
            let filler = Filler::new(role, (m, n));
            for r0 in (0..m).step_by(2 * T) {
                for c0 in (0..n).step_by(2 * T) {
                    let mut block = [0f32; 4 * T * T];
                    for r in 0..(m - r0).min(2 * T) {
                        for c in 0..(n - c0).min(2 * T) {
                            block[r * 2 * T + c] = y[(r0 + r) * n + c0 + c];
                        }
                    }
                    filler.store(r0, c0, &block);
                }
            }
            assert_eq!(filler.finish().data(), want.data(), "{role:?}");
        }
    }

    #[test]
    #[should_panic(expected = "3 blocks of the output were never stored")]
    fn an_operand_with_a_block_never_stored_is_refused() {
        let filler = Filler::new(Role::Lhs, (40, 40));
        filler.store(0, 0, &[1.0; 4 * T * T]);
        filler.finish();
    }

    #[test]
    #[should_panic(expected = "the block at (32, 0) stored twice")]
    fn a_block_stored_twice_is_refused() {
        let filler = Filler::new(Role::Rhs, (40, 40));
        filler.store(32, 0, &[1.0; 4 * T * T]);
        filler.store(32, 0, &[1.0; 4 * T * T]);
    }
}
