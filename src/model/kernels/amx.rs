//! bf16 matrix products on Intel's AMX tiles, for `--dtype bf16` on CPUs that have them
//! (Sapphire Rapids and later): `C[m, n] (+)= A[m, k] · B[k, n]` with A and B rounded to bf16
//! (nearest even) and every sum kept in f32, as `torch.autocast("cpu", dtype=torch.bfloat16)`
//! computes a linear layer's three products (x·Wᵀ, dY·W, dYᵀ·X).
//!
//! ```text
//! operands: rounded and packed in tiles by `amx_pack` (A: rows of 32 along k; B: pairs of k)
//! kernel:   2 × 2 C tiles (32 × 32 f32) stay in tmm0-3 over the whole k loop; each step loads
//!           two A tiles (tmm4-5) and two B tiles (tmm6-7) and issues four TDPBF16PS
//! ```
//!
//! Each output is one chain over k in order, whatever the blocking or the thread count, so
//! results do not depend on either; the chain's own order inside the instruction is the
//! hardware's (`amx_pack::reference` is the sequential definition the tests bound it by).
//!
//! Where the CPU has no tiles but has AVX-512 BF16 (AMD Zen 4), each 32 × 32 block runs on
//! `vdpbf16ps` instead ([`super::dpbf16_block`]), on the same packed operands; everything
//! else here is shared. Each output is then a fixed chain, the instruction's.
//!
//! Rust has no stable AMX intrinsics (rust-lang/rust#126622), so the microkernel is one `asm!`
//! block per 32 × 32 output block: tile registers cannot be operands, so C is loaded (or
//! zeroed), accumulated and stored within the block. The tile configuration is loaded once per
//! task in a block of its own ([`Tiles`]). Linux hands out the tile state only to a process that
//! asked for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once.

pub use super::amx_block::{available, engine, Engine, Piece, Then, NO_ENGINE};
use super::amx_block::{write_block, BiasRow, Block, Init, Output, Tiles};
use super::amx_pack::{pack_lhs, pack_rhs, Packed, T};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Where each output's sum starts.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    Zero,
    /// From the value in `dst` (accumulate).
    Dst,
    /// From `bias[c]` for column `c` (a linear layer), loaded into the tiles as they start, so
    /// no pass writes the bias over the output first.
    Bias(&'a [f32]),
}

/// `dst[i, c] = start + Σ_j A[i, j] B[j, c]` for the packed operands (`a`: m rows, `b`: n
/// columns, the same k); `dst` rows `dst_rs` apart. Needs [`available`].
pub fn matmul(dst: &mut [MaybeUninit<f32>], dst_rs: usize, start: Start, a: &Packed, b: &Packed) {
    run(output_in(dst, dst_rs, a, b), start, a, b, None)
}

/// The output `dst` (rows `dst_rs` apart) of `a · b`, checked to hold it.
fn output_in<'a>(dst: &mut [MaybeUninit<f32>], dst_rs: usize, a: &Packed, b: &Packed) -> Output<'a> {
    let (m, n) = (a.rows, b.rows);
    assert!(m == 0 || n == 0 || dst.len() >= (m - 1) * dst_rs + n);
    Output { ptr: Some(dst.as_mut_ptr().cast::<f32>()), rs: dst_rs, init: Init::Zero, then: None }
}

/// The product of [`matmul`] handed to `then` one 32 × 32 [`Piece`] at a time, and written
/// nowhere else: for a result whose only consumer is the element-wise step and the packing
/// that `then` does. Each piece is handed over once; pieces run in parallel.
pub fn matmul_pieces(start: Start, a: &Packed, b: &Packed, then: Then) {
    assert!(!matches!(start, Start::Dst), "a product accumulating onto no output");
    run(Output { ptr: None, rs: 0, init: Init::Zero, then: Some(then) }, start, a, b, None)
}

/// How the sums start, as the blocks read it, with the bias row it points into (which the
/// caller keeps while the product runs).
fn init(start: Start, n: usize) -> (Init, Option<BiasRow>) {
    match start {
        Start::Zero => (Init::Zero, None),
        Start::Dst => (Init::Dst, None),
        Start::Bias(b) => {
            let row = BiasRow::new(b, n);
            // the row's values stay where they are when `row` moves (a Vec's heap buffer)
            (Init::Row(row.0.as_ptr().cast()), Some(row))
        }
    }
}

/// The product into `out`: in parallel tasks, or all on this thread with the tiles of `serial`.
fn run(mut out: Output, start: Start, a: &Packed, b: &Packed, serial: Option<&Tiles>) {
    assert!(available(), "AMX bf16 kernel called on a CPU without it");
    assert_eq!(a.k_tiles, b.k_tiles, "packed operands of different depths");
    let (m, n) = (a.rows, b.rows);
    if m == 0 || n == 0 {
        return;
    }
    let (init, _bias) = init(start, n);
    out.init = init;
    let (row_pairs, col_pairs) = (a.blocks() / 2, b.blocks() / 2);
    if let Some(tiles) = serial {
        // SAFETY: the callers' contract for the output (see `run_blocks`), on this thread alone.
        return unsafe { run_blocks(tiles, &out, a, b, 0..row_pairs, 0..col_pairs) };
    }
    // Tasks of 128 rows × 512 columns: the task's A tiles (192 KiB at k = 768) and B tiles
    // (768 KiB) stay in L2 while every 32 × 32 block of it is computed, B's 32 columns reused
    // by the 4 row blocks under them while in L1.
    let row_tasks = row_pairs.div_ceil(ROW_PAIRS_PER_TASK);
    let col_tasks = col_pairs.div_ceil(COL_PAIRS_PER_TASK);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let tiles = Tiles::configure();
        let (rt, ct) = (task % row_tasks, task / row_tasks);
        let rows = rt * ROW_PAIRS_PER_TASK..((rt + 1) * ROW_PAIRS_PER_TASK).min(row_pairs);
        let cols = ct * COL_PAIRS_PER_TASK..((ct + 1) * COL_PAIRS_PER_TASK).min(col_pairs);
        // SAFETY: the callers' contract for the output (see `run_blocks`); tasks cover disjoint
        // blocks.
        unsafe { run_blocks(&tiles, &out, a, b, rows, cols) };
    });
}

/// The 32 × 32 blocks of `rows × cols` (in pairs of 16-row and 16-column blocks), column pair
/// by column pair, on this thread.
///
/// # Safety
/// The output's blocks there lie inside what `out.ptr` may write (the callers assert its
/// length against m × n), and no other thread writes them meanwhile.
unsafe fn run_blocks(_tiles: &Tiles, out: &Output, a: &Packed, b: &Packed, rows: Range<usize>, cols: Range<usize>) {
    let (m, n) = (a.rows, b.rows);
    for cb in cols {
        let bs = ([b.block(2 * cb), b.block(2 * cb + 1)], b.step());
        for rb in rows.clone() {
            let at = Block {
                row: rb * 2 * T,
                col: cb * 2 * T,
                rows: (m - rb * 2 * T).min(2 * T),
                cols: (n - cb * 2 * T).min(2 * T),
            };
            let rows_of_a = ([a.block(2 * rb), a.block(2 * rb + 1)], a.step());
            // SAFETY: the block's rows and columns lie inside the output (`at` is clipped to
            // m × n; the caller's contract), no other thread touches them, and the bias row
            // lives until the product returns; the tiles are configured (`_tiles`).
            unsafe { write_block(out, at, rows_of_a, bs, a.k_tiles) };
        }
    }
}

/// Small products one after another on this thread (attention's per-head products), with the
/// tiles configured once for all of them: no rayon call may run while one lives (rayon could
/// run another product's task here, which would configure and then release the tiles).
pub struct Serial {
    tiles: Tiles,
    /// The tile configuration belongs to this thread.
    _here: std::marker::PhantomData<*const ()>,
}

impl Serial {
    pub fn new() -> Serial {
        Serial { tiles: Tiles::configure(), _here: std::marker::PhantomData }
    }

    /// [`matmul`] on this thread.
    pub fn matmul(&self, dst: &mut [MaybeUninit<f32>], dst_rs: usize, start: Start, a: &Packed, b: &Packed) {
        run(output_in(dst, dst_rs, a, b), start, a, b, Some(&self.tiles))
    }
}

impl Default for Serial {
    fn default() -> Serial {
        Serial::new()
    }
}

/// A linear layer for inference on AMX (`--dtype bf16`): the weight rounded to bf16 and packed
/// once at load, each call's activations packed as they come.
#[derive(Debug)]
pub struct AmxLinear {
    weight: Packed,
    bias: Vec<f32>,
    k: usize,
}

/// 32-row blocks per parallel task of [`matmul`].
const ROW_PAIRS_PER_TASK: usize = 4;
const COL_PAIRS_PER_TASK: usize = 8;

/// What bench and serve call the kernel that runs here ("none" where no engine does).
pub fn name() -> &'static str {
    engine().map_or("none", Engine::name)
}

impl AmxLinear {
    /// From a `[n, k]` weight and `[n]` bias.
    pub fn new(w: &[f32], b: &[f32], (n, k): (usize, usize)) -> AmxLinear {
        AmxLinear { weight: pack_rhs(w, (1, k), k, n), bias: b.to_vec(), k }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.bias.len()
    }

    /// `dst[i, ..n] = x[i] · Wᵀ + b` for the `m` rows of `x`; `dst` rows `dst_rs` apart.
    pub fn forward_into(&self, x: &[f32], m: usize, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        assert_eq!(x.len(), m * self.k, "activations of {} values for {m} rows of width {}", x.len(), self.k);
        self.forward_packed(&Self::pack_input(x, m), dst, dst_rs)
    }

    /// The activations `x [m, k]` packed once for every layer of that input width (q, k and v
    /// read the same rows).
    pub fn pack_input(x: &[f32], m: usize) -> Packed {
        let k = x.len() / m.max(1);
        pack_lhs(x, (k, 1), m, k)
    }

    /// [`AmxLinear::forward_into`] on activations packed by [`AmxLinear::pack_input`].
    pub fn forward_packed(&self, x: &Packed, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        matmul(dst, dst_rs, Start::Bias(&self.bias), x, &self.weight)
    }

    /// [`AmxLinear::forward_packed`] handed to `then` piece by piece ([`matmul_pieces`]).
    pub fn forward_pieces(&self, x: &Packed, then: Then) {
        matmul_pieces(Start::Bias(&self.bias), x, &self.weight, then)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::amx_block::Line;
    use crate::model::kernels::amx_pack::{from_bf16, reference, to_bf16};
    use crate::model::kernels::testing::{on_threads, uniform};

    /// Whether the test `name` can run here; says "NOT CHECKED here" where it cannot.
    fn checkable(name: &str) -> bool {
        if !available() {
            eprintln!("{name}: NOT CHECKED here (no AMX bf16 on this CPU)");
        }
        available()
    }

    fn run(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let (pa, pb) = (pack_lhs(a, (k, 1), m, k), pack_rhs(b, (n, 1), k, n));
        let mut out = vec![MaybeUninit::new(0f32); m * n];
        matmul(&mut out, n, Start::Zero, &pa, &pb);
        // SAFETY: every element was initialised above.
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    #[test]
    fn amx_matches_the_instruction_definition() {
        if !checkable("amx_matches_the_instruction_definition") {
            return;
        }
        // Odd shapes: partial tiles in every dimension. The hardware does not add the products
        // strictly one after the other (a third of the outputs differ from that chain by 1-2
        // ulps), so the check is bounded: by the sum of |products| times 2^-22, where 8.0e-8
        // times that sum was the largest difference measured on a Xeon with AMX (a factor of
        // 3 below the bound).
        let mut worst_ratio = 0f64;
        for (m, n, k) in [(1, 1, 1), (17, 33, 40), (64, 48, 96), (70, 100, 300)] {
            let (a, b) = (uniform(m * k, 4, 2.0), uniform(k * n, 5, 2.0));
            let want = reference(&a, &b, (m, n, k));
            let got = run(&a, &b, (m, n, k));
            for i in 0..m {
                for c in 0..n {
                    let mag: f64 = (0..k)
                        .map(|j| (from_bf16(to_bf16(a[i * k + j])) * from_bf16(to_bf16(b[j * n + c]))).abs() as f64)
                        .sum();
                    let diff = (got[i * n + c] - want[i * n + c]).abs() as f64;
                    worst_ratio = worst_ratio.max(diff / mag);
                    assert!(
                        diff <= mag * 2f64.powi(-22),
                        "{m}x{n}x{k} ({i}, {c}): {} vs {}",
                        got[i * n + c],
                        want[i * n + c]
                    );
                }
            }
        }
        eprintln!("AMX against the sequential definition: largest difference {worst_ratio:.2e} x sum |products|");
    }

    /// The first `len` values of `lines` as an output on cache lines.
    fn as_output(lines: &mut [Line], len: usize) -> &mut [MaybeUninit<f32>] {
        assert!(len <= lines.len() * T);
        // SAFETY: `Line` is `T` f32 with no padding, so `lines` holds `len` (asserted) f32 in
        // a row; the view borrows `lines` mutably for as long as it lives.
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<MaybeUninit<f32>>(), len) }
    }

    #[test]
    fn the_prepared_linear_is_the_product_plus_bias() {
        if !checkable("the_prepared_linear_is_the_product_plus_bias") {
            return;
        }
        // Odd shapes written into a wider output (a column block of the q/k/v projections side
        // by side: every block goes through the buffer), and whole blocks on cache lines (the
        // tiles start from the bias row and store straight into the output).
        for ((m, n, k), spare) in [((24, 40, 50), 3), ((64, 64, 64), 0)] {
            let (x, w, b) = (uniform(m * k, 9, 1.0), uniform(n * k, 10, 1.0), uniform(n, 11, 1.0));
            let lin = AmxLinear::new(&w, &b, (n, k));
            let rs = n + spare;
            let mut lines = vec![Line([7.0; T]); (m * rs).div_ceil(T)];
            let out = as_output(&mut lines, m * rs);
            lin.forward_into(&x, m, out, rs);
            let wt: Vec<f32> = (0..k * n).map(|t| w[(t % n) * k + t / n]).collect();
            let plain = reference(&x, &wt, (m, n, k));
            for i in 0..m {
                for c in 0..rs {
                    // SAFETY: initialised above.
                    let got = unsafe { out[i * rs + c].assume_init() };
                    if c >= n {
                        assert_eq!(got, 7.0, "columns past n are left alone");
                        continue;
                    }
                    let mag: f32 = (0..k).map(|j| (x[i * k + j] * w[c * k + j]).abs()).sum::<f32>() + b[c].abs();
                    assert!((got - (b[c] + plain[i * n + c])).abs() <= mag * 2f32.powi(-21), "({i}, {c})");
                }
            }
        }
    }

    #[test]
    fn every_piece_is_handed_over_once_where_it_lies() {
        if !checkable("every_piece_is_handed_over_once_where_it_lies") {
            return;
        }
        // whole blocks and cut ones: each piece copied to its place gives bitwise the product
        // written straight, each value once, with zeros past the edge
        for (m, n, k) in [(64, 64, 32), (40, 50, 20)] {
            let (x, w, b) = (uniform(m * k, 1, 1.0), uniform(n * k, 2, 1.0), uniform(n, 3, 1.0));
            let lin = AmxLinear::new(&w, &b, (n, k));
            let packed = AmxLinear::pack_input(&x, m);
            let mut want = vec![MaybeUninit::new(0f32); m * n];
            lin.forward_packed(&packed, &mut want, n);
            let placed = std::sync::Mutex::new((vec![f32::NAN; m * n], vec![0u8; m * n]));
            lin.forward_pieces(&packed, &|p: Piece| {
                assert_eq!((p.rows, p.cols), ((m - p.row).min(2 * T), (n - p.col).min(2 * T)));
                let (got, seen) = &mut *placed.lock().unwrap();
                for (r, row) in p.values.chunks_exact(2 * T).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        if r < p.rows && c < p.cols {
                            got[(p.row + r) * n + p.col + c] = v;
                            seen[(p.row + r) * n + p.col + c] += 1;
                        } else {
                            assert_eq!(v, 0.0, "past the edge at ({}, {})", p.row + r, p.col + c);
                        }
                    }
                }
            });
            let (got, seen) = placed.into_inner().unwrap();
            assert!(seen.iter().all(|&s| s == 1), "each value once");
            // SAFETY: initialised above.
            let want: Vec<u32> = want.into_iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect();
            assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn amx_results_do_not_depend_on_threads_or_strides() {
        if !checkable("amx_results_do_not_depend_on_threads_or_strides") {
            return;
        }
        let (m, n, k) = (96, 64, 128);
        let (a, b) = (uniform(m * k, 6, 1.0), uniform(k * n, 7, 1.0));
        let one = on_threads(1, || run(&a, &b, (m, n, k)));
        let two = on_threads(2, || run(&a, &b, (m, n, k)));
        assert_eq!(one, two);
        let pa = pack_lhs(&a, (k, 1), m, k);
        // accumulate adds onto what is there
        let pb = pack_rhs(&b, (n, 1), k, n);
        let mut out: Vec<MaybeUninit<f32>> = vec![MaybeUninit::new(1.0); m * n];
        matmul(&mut out, n, Start::Dst, &pa, &pb);
        // SAFETY: initialised above.
        let got: Vec<f32> = out.into_iter().map(|v| unsafe { v.assume_init() }).collect();
        // the chains start from 1: within the kernel's bound of 1 + the plain product
        let sum_abs: Vec<f32> = reference(
            &a.iter().map(|x| x.abs()).collect::<Vec<_>>(),
            &b.iter().map(|x| x.abs()).collect::<Vec<_>>(),
            (m, n, k),
        );
        for ((g, o), s) in got.iter().zip(&one).zip(&sum_abs) {
            assert!((g - (1.0 + o)).abs() <= (1.0 + s) * 2f32.powi(-21), "{g} vs 1 + {o}");
        }
    }
}
