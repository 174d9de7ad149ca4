//! The feed-forward block `o = GELU(h W1ᵀ + b1) W2ᵀ + b2` on AMX tiles (`--dtype bf16`), with
//! GELU, its derivative and the rounding and packing of the next product's operands done on
//! each 32 × 32 block of a product's output while it is in L1 ([`amx::matmul_pieces`]):
//!
//! ```text
//! forward   f = h W1ᵀ + b1, per block: f rounded to bf16 (kept, in block order, to train),
//!           g = GELU(f) packed as the left operand of o = g W2ᵀ + b2
//! backward  dg = do W2, per block: g = GELU(f) packed as the right operand of dW2 = doᵀ g;
//!           df = dg GELU'(f) packed as the left operand of dh += df W1 and, transposed, of
//!           dW1 = dfᵀ h; db1's partial sums
//! ```
//!
//! f is rounded to bf16 before GELU, as under `torch.autocast` (where the first product's output
//! is bf16): so that the backward can make g again from the 2 bytes per value it keeps, with
//! the forward's values. The unfused path wrote f, g, dg and df as `tokens × 3072` floats,
//! passed over each for GELU or its derivative, and read g and df again to round and pack them:
//! about a third of a bf16 step's time went there. Here the only 3072-wide array that reaches
//! memory unpacked is f in bf16. The values are those of passes doing the same (the same
//! products, GELU formulas, rounding; `the_fused_block_gives_the_passes_values`); only db1's
//! sums run in another order: per 32-row block, then the blocks in order (the same on any
//! thread count).

use super::amx::{self, Piece, Start};
use super::amx_fill::{Filler, Role};
use super::amx_pack::{from_bf16, pack_lhs, pack_rhs, round_in_place, Packed};
use super::buffer::{as_uninit, filled};
use super::gelu::{gelu_and_backward_segment, gelu_segment};
use super::linear::column_sums;
use std::mem::MaybeUninit;

/// Values in one 32 × 32 block.
const BLOCK: usize = 1024;
const EDGE: usize = 32;

/// What the backward pass needs from the forward: f's bf16 bits in block order (block `(i, j)`
/// of the `tokens × ffn` grid at `(i * col_blocks + j) * 1024`, row-major).
pub(crate) struct Saved {
    f: Vec<u16>,
}

/// The gradients of the block's parameters.
pub(crate) struct Grads {
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

/// `o [m, d]` for `h [m, d]`, `W1 [ffn, d]`, `W2 [d, ffn]`, and what the backward needs when
/// `keep` (training). The weights are rounded and packed on each call.
pub(crate) fn forward(
    h: &[f32],
    (w1, b1): (&[f32], &[f32]),
    (w2, b2): (&[f32], &[f32]),
    (m, d, ffn): (usize, usize, usize),
    keep: bool,
) -> (Vec<f32>, Option<Saved>) {
    let (hp, (w1p, w2p)) =
        rayon::join(|| pack_lhs(h, (d, 1), m, d), || (pack_rhs(w1, (1, d), d, ffn), pack_rhs(w2, (1, ffn), ffn, d)));
    let grid = m.div_ceil(EDGE) * ffn.div_ceil(EDGE) * BLOCK;
    let mut f = keep.then(|| Vec::with_capacity(grid));
    let g = gelu_forward(&hp, (&w1p, b1), f.as_mut().map(|f| &mut f.spare_capacity_mut()[..grid]));
    if let Some(f) = f.as_mut() {
        // SAFETY: `gelu_forward` wrote every block of the grid, each once (`matmul_pieces` hands
        // each over once), and the grid's blocks are its first `grid` values.
        unsafe { f.set_len(grid) };
    }
    let o = filled(m * d, |o| amx::matmul(o, d, Start::Bias(b2), &g, &w2p));
    (o, f.map(|f| Saved { f }))
}

/// Inference on weights packed at load: `o = GELU(h W1ᵀ + b1) W2ᵀ + b2` into `o [m, d]`.
pub(crate) fn infer(h: &Packed, ff1: &amx::AmxLinear, ff2: &amx::AmxLinear, o: &mut [MaybeUninit<f32>]) {
    let g = Filler::new(Role::Lhs, (h.rows, ff1.out_features()));
    ff1.forward_pieces(h, &|p: Piece| {
        round_in_place(p.values, &mut [0; BLOCK]);
        gelu_segment(p.values);
        g.store(p.row, p.col, p.values);
    });
    ff2.forward_packed(&g.finish(), o, ff2.out_features());
}

/// `g = GELU(bf16(h W1ᵀ + b1))` packed as the left operand of the second product; the bits of
/// bf16(f) kept in block order into `f`, where given.
fn gelu_forward(h: &Packed, (w1, b1): (&Packed, &[f32]), f: Option<&mut [MaybeUninit<u16>]>) -> Packed {
    let (m, ffn) = (h.rows, w1.rows);
    let col_blocks = ffn.div_ceil(EDGE);
    let lhs = Filler::new(Role::Lhs, (m, ffn));
    let f = f.map(|f| Blocks(f.as_mut_ptr().cast::<u16>(), f.len()));
    amx::matmul_pieces(Start::Bias(b1), h, w1, &|p: Piece| {
        let mut bits = [0u16; BLOCK];
        round_in_place(p.values, &mut bits);
        if let Some(f) = &f {
            // SAFETY: each piece is handed over once, and its block of `f` is its own.
            unsafe { f.write(((p.row / EDGE) * col_blocks + p.col / EDGE) * BLOCK, &bits) };
        }
        gelu_segment(p.values);
        lhs.store(p.row, p.col, p.values);
    });
    lhs.finish()
}

/// The backward pass for `do [m, d]`: the parameters' gradients, and the input gradient's
/// product still to add (`h` is the block's input as the forward saw it).
pub(crate) fn backward(
    d_o: &[f32],
    saved: &Saved,
    (w1, w2): (&[f32], &[f32]),
    h: &[f32],
    (m, d, ffn): (usize, usize, usize),
) -> (Grads, InputGradient) {
    let ((do_lhs, do_t), (w2p, (w1p, hp))) = rayon::join(
        || (pack_lhs(d_o, (d, 1), m, d), pack_lhs(d_o, (1, d), d, m)),
        || (pack_rhs(w2, (ffn, 1), d, ffn), (pack_rhs(w1, (d, 1), ffn, d), pack_rhs(h, (d, 1), m, d))),
    );
    let (g, (df, df_t), b1) = gelu_backward(&do_lhs, &w2p, &saved.f, ffn);
    let w2_grad = filled(d * ffn, |o| amx::matmul(o, ffn, Start::Zero, &do_t, &g));
    drop((do_t, g));
    let w1_grad = filled(ffn * d, |o| amx::matmul(o, d, Start::Zero, &df_t, &hp));
    let grads = Grads { w1: w1_grad, b1, w2: w2_grad, b2: column_sums(d_o, d, m, d) };
    (grads, InputGradient { df, w1: w1p })
}

/// `df W1`, the block's part of its input's gradient, once `do` is no longer needed.
pub(crate) struct InputGradient {
    df: Packed,
    w1: Packed,
}

impl InputGradient {
    /// `dh += df W1` for `dh [m, d]`.
    pub(crate) fn add_to(self, dh: &mut [f32]) {
        let d = self.w1.rows;
        amx::matmul(as_uninit(dh), d, Start::Dst, &self.df, &self.w1)
    }
}

/// `g = GELU(f)` packed as a right operand, `df = (do W2) GELU'(f)` packed as a left operand
/// and, transposed, as another, and df's column sums.
fn gelu_backward(do_lhs: &Packed, w2: &Packed, f: &[u16], ffn: usize) -> (Packed, (Packed, Packed), Vec<f32>) {
    let m = do_lhs.rows;
    let (row_blocks, col_blocks) = (m.div_ceil(EDGE), ffn.div_ceil(EDGE));
    assert_eq!(f.len(), row_blocks * col_blocks * BLOCK, "f of another shape");
    let g = Filler::new(Role::Rhs, (m, ffn));
    let (df, df_t) = (Filler::new(Role::Lhs, (m, ffn)), Filler::new(Role::LhsTransposed, (m, ffn)));
    // per 32-row block, the column sums of its rows
    let mut partial = vec![MaybeUninit::<f32>::uninit(); row_blocks * col_blocks * EDGE];
    {
        let sums = Blocks(partial.as_mut_ptr().cast::<f32>(), partial.len());
        amx::matmul_pieces(Start::Zero, do_lhs, w2, &|p: Piece| {
            let i = (p.row / EDGE) * col_blocks + p.col / EDGE;
            let f_block: [f32; BLOCK] = std::array::from_fn(|j| from_bf16(f[i * BLOCK + j]));
            // past the edge dg is 0 (and f too): df stays 0 there
            let mut g_block = [0f32; BLOCK];
            gelu_and_backward_segment(&f_block, &mut g_block, p.values);
            g.store(p.row, p.col, &g_block);
            let mut column = [0f32; EDGE];
            for row in p.values.chunks_exact(EDGE).take(p.rows) {
                column.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            // SAFETY: each piece is handed over once, and its row of partial sums is its own.
            unsafe { sums.write(i * EDGE, &column) };
            df.store(p.row, p.col, p.values);
            df_t.store(p.row, p.col, p.values);
        });
    }
    // SAFETY: every piece wrote its 32 partial sums above, and the pieces cover the grid.
    let partial: Vec<f32> = partial.into_iter().map(|v| unsafe { v.assume_init() }).collect();
    let mut b1 = vec![0f32; ffn];
    for block_row in partial.chunks_exact(col_blocks * EDGE) {
        b1.iter_mut().zip(block_row).for_each(|(s, v)| *s += v);
    }
    (g.finish(), (df.finish(), df_t.finish()), b1)
}

/// A buffer (possibly uninitialised) that the pieces of one product write into, each at places
/// of its own.
struct Blocks<T>(*mut T, usize);

// SAFETY: only written through `write`, whose callers write disjoint places.
unsafe impl<T> Sync for Blocks<T> {}

impl<T: Copy> Blocks<T> {
    /// Copies `values` to `start..start + values.len()`.
    ///
    /// # Safety
    /// No other thread may use that range at the same time.
    unsafe fn write(&self, start: usize, values: &[T]) {
        assert!(start + values.len() <= self.1);
        // SAFETY: inside the buffer (asserted), and this range is the caller's alone; `values`
        // is a separate borrow, so the two do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(start), values.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::gelu::{gelu_backward_in_place, gelu_into};
    use crate::model::kernels::linear::{linear_into, matmul_into, weight_grad_into};
    use crate::model::kernels::testing::{on_threads, uniform};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// f rounded to bf16, as a pass.
    fn rounded(f: &[f32]) -> Vec<f32> {
        let (mut f, mut bits) = (f.to_vec(), vec![0; f.len()]);
        round_in_place(&mut f, &mut bits);
        f
    }

    /// The same computed in passes under `precision::cpu_bf16` (the layer's path before this
    /// file, with f rounded to bf16 before GELU): `[o, dh, dW1, db1, dW2, db2]`.
    fn passes(
        h: &[f32],
        p: &[Vec<f32>; 4],
        d_o: &[f32],
        dh: &[f32],
        (m, d, ffn): (usize, usize, usize),
    ) -> [Vec<f32>; 6] {
        let _bf16 = crate::model::precision::cpu_bf16(true);
        let [w1, b1, w2, b2] = p;
        let f = rounded(&filled(m * ffn, |o| linear_into(o, ffn, h, w1, b1, (m, ffn, d))));
        let g = filled(m * ffn, |o| gelu_into(&f, o));
        let o = filled(m * d, |o| linear_into(o, d, &g, w2, b2, (m, d, ffn)));
        let mut dg = filled(m * ffn, |o| matmul_into(o, false, (m, ffn, d), d_o, (d, 1), w2, (ffn, 1)));
        let dw2 = filled(d * ffn, |o| weight_grad_into(o, d_o, d, &g, (m, d, ffn)));
        gelu_backward_in_place(&f, &mut dg);
        let mut dh = dh.to_vec();
        matmul_into(as_uninit(&mut dh), true, (m, d, ffn), &dg, (ffn, 1), w1, (d, 1));
        let dw1 = filled(ffn * d, |o| weight_grad_into(o, &dg, ffn, h, (m, ffn, d)));
        let db1 = column_sums(&dg, ffn, m, ffn);
        [o, dh, dw1, db1, dw2, column_sums(d_o, d, m, d)]
    }

    fn fused(h: &[f32], p: &[Vec<f32>; 4], d_o: &[f32], dh: &[f32], dims: (usize, usize, usize)) -> [Vec<f32>; 6] {
        let [w1, b1, w2, b2] = p;
        let (o, saved) = forward(h, (w1, b1), (w2, b2), dims, true);
        let (o_only, none) = forward(h, (w1, b1), (w2, b2), dims, false);
        assert!(none.is_none() && bits(&o_only) == bits(&o), "inference gives the training forward's values");
        let (g, input) = backward(d_o, &saved.expect("kept"), (w1, w2), h, dims);
        let mut dh = dh.to_vec();
        input.add_to(&mut dh);
        [o, dh, g.w1, g.b1, g.w2, g.b2]
    }

    #[test]
    fn the_fused_block_gives_the_passes_values() {
        if !amx::available() {
            eprintln!("the_fused_block_gives_the_passes_values: NOT CHECKED here (no AMX bf16 on this CPU)");
            return;
        }
        // blocks cut at every edge (70 rows, 48 wide, 100 inner)
        let (m, d, ffn) = (70, 48, 100);
        let h = uniform(m * d, 1, 1.0);
        let p = [uniform(ffn * d, 2, 0.3), uniform(ffn, 3, 0.1), uniform(d * ffn, 4, 0.3), uniform(d, 5, 0.1)];
        let (d_o, dh) = (uniform(m * d, 6, 1.0), uniform(m * d, 7, 1.0));
        let want = passes(&h, &p, &d_o, &dh, (m, d, ffn));
        let got = on_threads(2, || fused(&h, &p, &d_o, &dh, (m, d, ffn)));
        assert_eq!(
            on_threads(1, || fused(&h, &p, &d_o, &dh, (m, d, ffn))).map(|v| bits(&v)),
            got.clone().map(|v| bits(&v))
        );
        for (i, name) in [(0, "o"), (1, "dh"), (2, "dW1"), (4, "dW2"), (5, "db2")] {
            assert_eq!(bits(&got[i]), bits(&want[i]), "{name}: the same values");
        }
        // db1 sums the same values in another order: within 2⁻²² of the sum of their magnitudes
        // (9.4e-8 of it measured on a Xeon with AMX, a factor 2.5 below)
        let mut df = vec![0f32; m * ffn];
        df.copy_from_slice(&filled(m * ffn, |o| {
            let _bf16 = crate::model::precision::cpu_bf16(true);
            matmul_into(o, false, (m, ffn, d), &d_o, (d, 1), &p[2], (ffn, 1))
        }));
        let f = rounded(&filled(m * ffn, |o| {
            let _bf16 = crate::model::precision::cpu_bf16(true);
            linear_into(o, ffn, &h, &p[0], &p[1], (m, ffn, d))
        }));
        gelu_backward_in_place(&f, &mut df);
        let mut worst = 0f32;
        for c in 0..ffn {
            let magnitude: f32 = (0..m).map(|r| df[r * ffn + c].abs()).sum();
            let diff = (got[3][c] - want[3][c]).abs();
            worst = worst.max(diff / magnitude);
            assert!(diff <= magnitude * 2f32.powi(-22), "db1[{c}]: {} vs {}", got[3][c], want[3][c]);
        }
        eprintln!("db1: largest difference {worst:.2e} x sum |df|");
    }
}
