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
//! Rust has no stable AMX intrinsics (rust-lang/rust#126622), so the microkernel is one `asm!`
//! block per 32 × 32 output block: tile registers cannot be operands, so C is loaded (or
//! zeroed), accumulated and stored within the block. The tile configuration is loaded once per
//! task in a block of its own ([`Tiles`]). Linux hands out the tile state only to a process that
//! asked for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once.

use super::amx_pack::{pack_lhs, pack_rhs, Packed, T, TILE};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// True where AMX bf16 runs: the CPU has AMX-TILE and AMX-BF16 and Linux granted this process
/// the tile state.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let cpu = crate::cpu::CpuIdentity::current();
        cpu.features.contains(&"amx-tile") && cpu.features.contains(&"amx-bf16") && request_tile_state()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission to use
    // the AMX tile state; it reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

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

/// What runs on each computed piece of an output row, `then(row, first column, values)`, while
/// it is still in L1: an element-wise step that would otherwise be a pass of its own over the
/// whole output (GELU after the first feed-forward layer, its derivative in the backward).
pub type Then<'a> = &'a (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `dst[i, c] = start + Σ_j A[i, j] B[j, c]` for the packed operands (`a`: m rows, `b`: n
/// columns, the same k); `dst` rows `dst_rs` apart. Needs [`available`].
pub fn matmul(dst: &mut [MaybeUninit<f32>], dst_rs: usize, start: Start, a: &Packed, b: &Packed) {
    matmul_then(dst, dst_rs, start, a, b, None)
}

/// [`matmul`], then `then` on every piece of the output as it is computed.
pub fn matmul_then(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    start: Start,
    a: &Packed,
    b: &Packed,
    then: Option<Then>,
) {
    assert!(available(), "AMX bf16 kernel called on a CPU without it");
    assert_eq!(a.k_tiles, b.k_tiles, "packed operands of different depths");
    let (m, n) = (a.rows, b.rows);
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    let bias = match start {
        Start::Bias(b) => Some(BiasRow::new(b, n)),
        _ => None,
    };
    let init = match start {
        Start::Zero => Init::Zero,
        Start::Dst => Init::Dst,
        Start::Bias(_) => Init::Row(bias.as_ref().expect("made above").0.as_ptr().cast()),
    };
    // Tasks of 128 rows × 512 columns: the task's A tiles (192 KiB at k = 768) and B tiles
    // (768 KiB) stay in L2 while every 32 × 32 block of it is computed, B's 32 columns reused
    // by the 4 row blocks under them while in L1.
    let out = Output { ptr: dst.as_mut_ptr().cast::<f32>(), rs: dst_rs, init, then };
    let (row_pairs, col_pairs) = (a.blocks() / 2, b.blocks() / 2);
    let row_tasks = row_pairs.div_ceil(ROW_PAIRS_PER_TASK);
    let col_tasks = col_pairs.div_ceil(COL_PAIRS_PER_TASK);
    (0..row_tasks * col_tasks).into_par_iter().for_each(|task| {
        let _tiles = Tiles::configure();
        let (rt, ct) = (task % row_tasks, task / row_tasks);
        let rows = rt * ROW_PAIRS_PER_TASK..((rt + 1) * ROW_PAIRS_PER_TASK).min(row_pairs);
        for cb in ct * COL_PAIRS_PER_TASK..((ct + 1) * COL_PAIRS_PER_TASK).min(col_pairs) {
            let bs = ([b.block(2 * cb), b.block(2 * cb + 1)], b.step());
            for rb in rows.clone() {
                let at = Block {
                    row: rb * 2 * T,
                    col: cb * 2 * T,
                    rows: (m - rb * 2 * T).min(2 * T),
                    cols: (n - cb * 2 * T).min(2 * T),
                };
                let rows_of_a = ([a.block(2 * rb), a.block(2 * rb + 1)], a.step());
                // SAFETY: the block's rows and columns lie inside `dst` (asserted above, `at` is
                // clipped to m × n); each task writes only its own block of rows and columns, so
                // no two tasks touch the same element, and `dst` is borrowed mutably for the
                // whole call; the bias row lives until the call returns.
                unsafe { write_block(&out, at, rows_of_a, bs, a.k_tiles) };
            }
        }
    });
}

/// The tile configuration of [`tile_block`] (eight tiles of 16 rows × 64 bytes), loaded on
/// this thread for as long as the guard lives and released with it. Loading it costs about as
/// much as a 32 × 32 block at k = 768 (measured), so it is done once per task, not per block:
/// between the kernel's `asm!` blocks nothing else on the thread touches the tiles (the
/// compiler never uses AMX, and a task makes no rayon calls that could run other work here).
struct Tiles;

impl Tiles {
    fn configure() -> Tiles {
        assert!(available(), "AMX tiles configured on a CPU without them");
        #[cfg(target_arch = "x86_64")]
        {
            let mut cfg = [0u8; 64];
            cfg[0] = 1; // palette 1
            for t in 0..8 {
                cfg[16 + 2 * t] = 64; // bytes per row
                cfg[48 + t] = T as u8; // rows
            }
            // SAFETY: the CPU has AMX and the process has the tile state (asserted); `cfg` is a
            // valid 64-byte palette-1 configuration, read once.
            unsafe { std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) cfg.as_ptr(), options(nostack, readonly)) };
        }
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: releases the tile state this guard configured; touches no memory.
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem))
        };
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

/// What bench and serve call this kernel.
pub const NAME: &str = "AMX tiles (tdpbf16ps)";

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
        self.forward_packed_then(x, dst, dst_rs, None)
    }

    /// [`AmxLinear::forward_packed`], then `then` on each piece of the output as it is computed.
    pub fn forward_packed_then(&self, x: &Packed, dst: &mut [MaybeUninit<f32>], dst_rs: usize, then: Option<Then>) {
        matmul_then(dst, dst_rs, Start::Bias(&self.bias), x, &self.weight, then);
    }
}

/// Where a 32 × 32 output block lands: its first row and column and how much of it is inside.
#[derive(Clone, Copy)]
struct Block {
    row: usize,
    col: usize,
    rows: usize,
    cols: usize,
}

/// A 32 × 32 f32 block on cache lines of its own (see `amx_pack`'s `TileRow`).
#[repr(C, align(64))]
struct CBlock([f32; 4 * T * T]);

/// 16 f32 on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; T]);

/// A bias on cache lines, padded with zeros to whole 32-column blocks, so that every block's C
/// tiles can be loaded from it (16 rows of the same 64 bytes: row stride 0).
struct BiasRow(Vec<Line>);

impl BiasRow {
    fn new(bias: &[f32], n: usize) -> BiasRow {
        assert_eq!(bias.len(), n, "a bias of {} values for {n} columns", bias.len());
        let mut lines = vec![Line([0.0; T]); n.div_ceil(2 * T) * 2];
        for (line, values) in lines.iter_mut().zip(bias.chunks(T)) {
            line.0[..values.len()].copy_from_slice(values);
        }
        BiasRow(lines)
    }
}

/// [`Start`] as the block kernel reads it.
#[derive(Clone, Copy)]
enum Init {
    Zero,
    Dst,
    /// A [`BiasRow`]'s first value, valid for as long as the product runs.
    Row(*const f32),
}

/// Where a product goes: the output (rows `rs` apart), how its sums start, what runs on it.
struct Output<'a> {
    ptr: *mut f32,
    rs: usize,
    init: Init,
    then: Option<Then<'a>>,
}

// SAFETY: `ptr` is only used to write disjoint blocks of one mutably borrowed output (see
// `matmul_then`), and `init`'s bias row only read while the product runs; never shared state.
unsafe impl Send for Output<'_> {}
// SAFETY: as above.
unsafe impl Sync for Output<'_> {}

/// Computes one output block into `out`, each sum starting as `out.init` says, then runs
/// `out.then` on its rows. A whole block whose rows start on cache lines goes straight between
/// the output and the tiles; one cut by the matrix's edge, or off the lines, goes through a
/// 32 × 32 buffer.
///
/// # Safety
/// `out.ptr` must be valid for reads (for `Init::Dst`) and writes of the block's `rows × cols`
/// elements at `row * rs + col`, with no other thread touching them; an `Init::Row` must point
/// to a live [`BiasRow`] of at least `col + 32` values.
unsafe fn write_block(out: &Output, at: Block, a: Operand, b: Operand, k_tiles: usize) {
    let (dst_rs, init) = (out.rs, out.init);
    // SAFETY: the caller guarantees the block's elements are ours to read and write.
    let origin = unsafe { out.ptr.add(at.row * dst_rs + at.col) };
    let then = |c: *mut f32, rs: usize| {
        if let Some(then) = out.then {
            for r in 0..at.rows {
                // SAFETY: row `r` of the block just written, `cols` elements, at `c` (the
                // output's block or the buffer) with rows `rs` apart.
                then(at.row + r, at.col, unsafe { std::slice::from_raw_parts_mut(c.add(r * rs), at.cols) });
            }
        }
    };
    let from_bias = |p: *const f32| -> Option<(*const f32, usize)> {
        // SAFETY: columns `col..col + 32` of the bias row, inside it (the caller's contract).
        Some((unsafe { p.add(at.col) }, 0))
    };
    let aligned = (origin as usize).is_multiple_of(64) && dst_rs.is_multiple_of(T);
    if at.rows == 2 * T && at.cols == 2 * T && aligned {
        let from = match init {
            Init::Zero => None,
            Init::Dst => Some((origin.cast_const(), dst_rs)),
            Init::Row(p) => from_bias(p),
        };
        // SAFETY: a whole block: 32 rows of 32 elements at `dst_rs` apart, as the caller
        // guarantees; `from` is that block or 32 values of the bias row.
        unsafe { tile_block(origin, dst_rs, from, a, b, k_tiles) };
        return then(origin, dst_rs);
    }
    let mut buffer = CBlock([0f32; 4 * T * T]);
    let c = &mut buffer.0;
    let from = match init {
        Init::Zero => None,
        Init::Dst => {
            for r in 0..at.rows {
                // SAFETY: row `r` of the block, `cols` elements, inside what the caller guarantees.
                let row = unsafe { std::slice::from_raw_parts(origin.add(r * dst_rs), at.cols) };
                c[r * 2 * T..r * 2 * T + at.cols].copy_from_slice(row);
            }
            Some((c.as_ptr(), 2 * T))
        }
        Init::Row(p) => from_bias(p),
    };
    // SAFETY: `c` is 32 rows of 32 f32; `from` is `c` or 32 values of the bias row.
    unsafe { tile_block(c.as_mut_ptr(), 2 * T, from, a, b, k_tiles) };
    then(c.as_mut_ptr(), 2 * T);
    for r in 0..at.rows {
        // SAFETY: as above.
        let row = unsafe { std::slice::from_raw_parts_mut(origin.add(r * dst_rs), at.cols) };
        row.copy_from_slice(&c[r * 2 * T..r * 2 * T + at.cols]);
    }
}

/// 32-row blocks per parallel task of [`matmul`].
const ROW_PAIRS_PER_TASK: usize = 4;
const COL_PAIRS_PER_TASK: usize = 8;

/// Two tile blocks, each from its first tile on, and the elements from one step of k to the next.
type Operand<'a> = ([&'a [u16]; 2], usize);

/// `prefetcht0` of the 16 cache lines of the tile one k step past the operand register `$reg`
/// (`$step` bytes on): the tiles come from L2, and asking for them one step early took about an
/// eighth off the kernel's time (`cargo bench --bench amx`).
macro_rules! next_tiles_to_l1 {
    ($reg:literal, $step:literal) => {
        concat!(
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 64]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 128]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 192]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 256]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 320]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 384]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 448]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 512]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 576]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 640]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 704]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 768]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 832]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 896]\n",
            "prefetcht0 [{",
            $reg,
            "} + {",
            $step,
            "}*1 + 960]",
        )
    };
}

/// `C = from + A · B` for the 32 × 32 block `c` (rows `c_rs` elements apart) over `k_tiles`
/// steps of two A and two B tiles; C starts from the 32 × 32 block at `from` (its rows the given
/// stride apart: 0 repeats one row) or from zero.
///
/// # Safety
/// A [`Tiles`] guard must be alive on this thread; `c` must be valid for writes of 32 rows of 32
/// f32 at `c_rs` apart, and `from` for reads of 32 rows of 32 f32 at its stride.
unsafe fn tile_block(
    c: *mut f32,
    c_rs: usize,
    from: Option<(*const f32, usize)>,
    (a, a_step): Operand,
    (b, b_step): Operand,
    k_tiles: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let fits = |s: &[u16], step: usize| s.len() >= (k_tiles - 1) * step + TILE;
        assert!(k_tiles > 0 && a.iter().all(|s| fits(s, a_step)) && b.iter().all(|s| fits(s, b_step)));
        let (load, l, ls) = match from {
            Some((p, rs)) => (1usize, p, rs),
            None => (0, c.cast_const(), c_rs),
        };
        // SAFETY: the tiles are configured (a `Tiles` guard lives: the caller's contract).
        // Every tile load reads 16 rows of 64 bytes at 64-byte strides from
        // `k_tiles` 1 KiB tiles `step` elements apart in each slice, which holds them all
        // (asserted); C's stores touch 16 rows of 64 bytes at `c_rs` floats apart in the four
        // quadrants of the 32 × 32 block the caller vouches for, its loads the same at `from`.
        // The tile registers' values live only inside this block: C is stored before it ends.
        unsafe {
            std::arch::asm!(
                "test {load}, {load}",
                "jz 3f",
                "tileloadd tmm0, [{l} + {ls}*1]",
                "tileloadd tmm1, [{l} + {ls}*1 + 64]",
                "tileloadd tmm2, [{l2} + {ls}*1]",
                "tileloadd tmm3, [{l2} + {ls}*1 + 64]",
                "jmp 2f",
                "3:",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {s64}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s64}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                next_tiles_to_l1!("a0", "sa"),
                next_tiles_to_l1!("b0", "sb"),
                next_tiles_to_l1!("b1", "sb"),
                next_tiles_to_l1!("a1", "sa"),
                "add {a0}, {sa}",
                "add {a1}, {sa}",
                "add {b0}, {sb}",
                "add {b1}, {sb}",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c} + {cs}*1 + 64], tmm1",
                "tilestored [{c2} + {cs}*1], tmm2",
                "tilestored [{c2} + {cs}*1 + 64], tmm3",
                a0 = inout(reg) a[0].as_ptr() => _,
                a1 = inout(reg) a[1].as_ptr() => _,
                b0 = inout(reg) b[0].as_ptr() => _,
                b1 = inout(reg) b[1].as_ptr() => _,
                n = inout(reg) k_tiles => _,
                c = in(reg) c,
                c2 = in(reg) c.add(T * c_rs),
                cs = in(reg) c_rs * 4,
                load = in(reg) load,
                l = in(reg) l,
                l2 = in(reg) l.add(T * ls),
                ls = in(reg) ls * 4,
                s64 = in(reg) 64usize,
                sa = in(reg) a_step * 2,
                sb = in(reg) b_step * 2,
                options(nostack),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, c_rs, from, a, a_step, b, b_step, k_tiles);
        unreachable!("AMX is x86-64 only; available() is false elsewhere");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            // SAFETY: `lines` is `T` f32 per element, no padding; the view lives inside this loop.
            let out = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<MaybeUninit<f32>>(), m * rs) };
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
    fn then_runs_once_on_every_output_value_where_it_lies() {
        if !checkable("then_runs_once_on_every_output_value_where_it_lies") {
            return;
        }
        // whole blocks on cache lines and cut ones off them; `then` replaces each value by its
        // place and counts, so a value missed, visited twice or misplaced shows
        for ((m, n, k), spare) in [((64, 64, 32), 0), ((40, 50, 20), 5)] {
            let (x, w, b) = (uniform(m * k, 1, 1.0), uniform(n * k, 2, 1.0), uniform(n, 3, 1.0));
            let lin = AmxLinear::new(&w, &b, (n, k));
            let rs = n + spare;
            let mut lines = vec![Line([-1.0; T]); (m * rs).div_ceil(T)];
            // SAFETY: `lines` is `T` f32 per element, no padding; the view lives inside this loop.
            let out = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<MaybeUninit<f32>>(), m * rs) };
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let place = |row: usize, col: usize, v: &mut [f32]| {
                calls.fetch_add(v.len(), std::sync::atomic::Ordering::Relaxed);
                v.iter_mut().enumerate().for_each(|(j, x)| *x = (row * 1000 + col + j) as f32);
            };
            lin.forward_packed_then(&AmxLinear::pack_input(&x, m), out, rs, Some(&place));
            assert_eq!(calls.into_inner(), m * n, "each value once");
            for i in 0..m {
                for c in 0..rs {
                    // SAFETY: initialised above.
                    let got = unsafe { out[i * rs + c].assume_init() };
                    assert_eq!(got, if c < n { (i * 1000 + c) as f32 } else { -1.0 }, "({i}, {c})");
                }
            }
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
