//! bf16 matrix products on Intel's AMX tiles, for `--dtype bf16` on CPUs that have them
//! (Sapphire Rapids and later): `C[m, n] (+)= A[m, k] · B[k, n]` with A and B rounded to bf16
//! (nearest even) and every sum kept in f32, as `torch.autocast("cpu", dtype=torch.bfloat16)`
//! computes a linear layer's three products (x·Wᵀ, dY·W, dYᵀ·X).
//!
//! ```text
//! A packed: per block of 16 rows, per 32 of k: a 16 × 32 bf16 tile (1 KiB), rows 64 bytes apart
//! B packed: per block of 16 columns, per 32 of k: 16 rows of k pairs × (16 columns × 2) bf16,
//!           the pairs along k side by side (the layout TDPBF16PS reads)
//! kernel:   2 × 2 C tiles (32 × 32 f32) stay in tmm0-3 over the whole k loop; each step loads
//!           two A tiles (tmm4-5) and two B tiles (tmm6-7) and issues four TDPBF16PS
//! ```
//!
//! Rows and columns are padded with zeros to multiples of 32 and k to a multiple of 32, so the
//! kernel only ever sees whole tiles; the epilogue writes the valid part. The result of each
//! output does not depend on the blocking or the thread count: it is the instruction's chain over
//! k in order ([`reference`] is that chain in plain Rust; the tests compare them).
//!
//! Rust has no stable AMX intrinsics (rust-lang/rust#126622), so the microkernel is one `asm!`
//! block: tile registers cannot be operands, only clobbered state inside a block that configures
//! the tiles, computes, stores and releases them. Linux hands out the tile state only to a
//! process that asked for it (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once.

use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// Tile edge in rows and f32 columns; bf16 values per tile row.
const T: usize = 16;
const KT: usize = 32;
/// One packed tile: 16 rows of 64 bytes.
const TILE: usize = T * KT;

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

/// f32 → bf16, rounded to nearest even (NaN stays NaN), as `torch`'s and `vcvtneps2bf16` do.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        0x7fc0
    } else {
        rounded as u16
    }
}

#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A matrix rounded to bf16 in tile order: `rows` rows (padded to 32) of `k` (padded to 32),
/// the tiles of one block of 16 rows one after the other along k (`[16-row block][k tile]`).
pub struct Packed {
    data: Vec<u16>,
    rows: usize,
    k_tiles: usize,
}

impl Packed {
    fn blocks(&self) -> usize {
        self.rows.div_ceil(2 * T) * 2
    }

    /// The tiles of the 16-row block `b`; one step of k is [`Packed::step`] elements further.
    fn block(&self, b: usize) -> &[u16] {
        &self.data[b * self.k_tiles * TILE..(b + 1) * self.k_tiles * TILE]
    }

    fn step(&self) -> usize {
        TILE
    }
}

/// Packs `A[m, k]` (element `(i, j)` at `src[i * rs + j * cs]`) as the left operand.
pub fn pack_lhs(src: &[f32], (rs, cs): (usize, usize), m: usize, k: usize) -> Packed {
    pack(src, (rs, cs), m, k, Layout::Rows)
}

/// Packs `B[k, n]` (element `(j, c)` at `src[j * rs + c * cs]`) as the right operand: per block
/// of 16 columns, tiles whose row `p` holds, for each column, the pair `B[2p], B[2p + 1]` of k.
pub fn pack_rhs(src: &[f32], (rs, cs): (usize, usize), k: usize, n: usize) -> Packed {
    pack(src, (cs, rs), n, k, Layout::Pairs)
}

/// How a tile holds its 16 lines (rows of A, columns of B) of 32 values along k.
#[derive(Clone, Copy)]
enum Layout {
    /// Line `r` is tile row `r` (A).
    Rows,
    /// Tile row `p` holds the pairs `2p, 2p + 1` of every line side by side (B).
    Pairs,
}

/// `lines` lines of `k` values (value `j` of line `r` at `src[r * line_stride + j * k_stride]`)
/// in tiles. Each tile is gathered into a 16 × 32 f32 block first, reading the source along
/// whichever stride is 1, then rounded and laid out from that block (in L1).
fn pack(src: &[f32], (line_stride, k_stride): (usize, usize), lines: usize, k: usize, layout: Layout) -> Packed {
    let k_tiles = k.div_ceil(KT);
    let blocks = lines.div_ceil(2 * T) * 2;
    let mut data = vec![0u16; blocks * k_tiles * TILE];
    let out = SendPtr(data.as_mut_ptr());
    // Tiles in k-major order, so that neighbouring tasks read neighbouring source columns; each
    // is written to its place in the block-major layout.
    (0..blocks * k_tiles).into_par_iter().for_each(|i| {
        let (t, b) = (i / blocks, i % blocks);
        let (r0, j0) = (b * T, t * KT);
        let (nr, nj) = (T.min(lines.saturating_sub(r0)), KT.min(k - j0));
        if nr == 0 {
            return;
        }
        let o = out;
        // SAFETY: tile (b, t) is the TILE elements at (b * k_tiles + t) * TILE, inside `data`
        // (b < blocks, t < k_tiles); each task writes only its own tile, while `data` lives.
        let tile = unsafe { std::slice::from_raw_parts_mut(o.0.add((b * k_tiles + t) * TILE), TILE) };
        // Gathered as the layout reads it: line-major for rows of A, k-major for pairs of B.
        let mut block = [0f32; TILE];
        let slot = |r: usize, j: usize| match layout {
            Layout::Rows => r * KT + j,
            Layout::Pairs => j * T + r,
        };
        let at = |r: usize, j: usize| (r0 + r) * line_stride + (j0 + j) * k_stride;
        if k_stride == 1 {
            for r in 0..nr {
                for (j, &x) in src[at(r, 0)..at(r, 0) + nj].iter().enumerate() {
                    block[slot(r, j)] = x;
                }
            }
        } else {
            for j in 0..nj {
                for r in 0..nr {
                    block[slot(r, j)] = src[at(r, j)];
                }
            }
        }
        convert(layout, &block, tile);
    });
    Packed { data, rows: lines, k_tiles }
}

/// Rounds a gathered block (see [`pack`]) into its tile: rows as they are, or the 16 lines'
/// pairs of k side by side.
fn convert(layout: Layout, block: &[f32; TILE], tile: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the instructions `convert_avx512` is compiled for.
        return unsafe { convert_avx512(layout, block, tile) };
    }
    convert_plain(layout, block, tile)
}

/// The definition of [`convert`].
fn convert_plain(layout: Layout, block: &[f32; TILE], tile: &mut [u16]) {
    match layout {
        Layout::Rows => tile.iter_mut().zip(block).for_each(|(o, &x)| *o = to_bf16(x)),
        Layout::Pairs => {
            for (p, row) in tile.chunks_exact_mut(KT).enumerate() {
                for r in 0..T {
                    row[2 * r] = to_bf16(block[2 * p * T + r]);
                    row[2 * r + 1] = to_bf16(block[(2 * p + 1) * T + r]);
                }
            }
        }
    }
}

/// [`convert`] by `vcvtne2ps2bf16` (the same rounding to nearest even; subnormal inputs, which
/// TDPBF16PS would count as zero anyway, become zero here already) and, for pairs, a word
/// shuffle that interleaves two converted lines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert_avx512(layout: Layout, block: &[f32; TILE], tile: &mut [u16]) {
    use std::arch::x86_64::*;
    assert_eq!(tile.len(), TILE);
    let interleave: [u16; 32] = std::array::from_fn(|i| ((i % 2) * 16 + i / 2) as u16);
    // SAFETY: `interleave` is 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(interleave.as_ptr().cast()) };
    for row in 0..T {
        // SAFETY: row `row` of 32 values: `block` holds 16 × 32 f32 and `tile` 16 × 32 u16
        // (asserted), read and written 64 bytes at a time at offsets below their ends.
        unsafe {
            let lo = _mm512_loadu_ps(block.as_ptr().add(row * KT));
            let hi = _mm512_loadu_ps(block.as_ptr().add(row * KT + T));
            let mut v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            if let Layout::Pairs = layout {
                v = _mm512_permutexvar_epi16(idx, v);
            }
            _mm512_storeu_si512(tile.as_mut_ptr().add(row * KT).cast(), v);
        }
    }
}

/// `dst[i, c] (+)= Σ_j A[i, j] B[j, c]` for the packed operands (`a`: m rows, `b`: n columns, the
/// same k); `dst` rows `dst_rs` apart. Needs [`available`].
pub fn matmul(dst: &mut [MaybeUninit<f32>], dst_rs: usize, accumulate: bool, a: &Packed, b: &Packed) {
    assert!(available(), "AMX bf16 kernel called on a CPU without it");
    assert_eq!(a.k_tiles, b.k_tiles, "packed operands of different depths");
    let (m, n) = (a.rows, b.rows);
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n);
    // Tasks of up to 256 rows (their A tiles, 384 KiB at k = 768, stay in L2); within one, each
    // 32-column block of B is used by all its 32-row blocks while it sits in L1/L2, so B streams
    // from memory once per task instead of once per 32 rows.
    let ptr = SendPtr(dst.as_mut_ptr().cast::<f32>());
    let row_pairs = a.blocks() / 2;
    (0..row_pairs.div_ceil(ROW_PAIRS_PER_TASK)).into_par_iter().for_each(|task| {
        let _tiles = Tiles::configure();
        let pairs = task * ROW_PAIRS_PER_TASK..((task + 1) * ROW_PAIRS_PER_TASK).min(row_pairs);
        for cb in 0..b.blocks() / 2 {
            let bs = ([b.block(2 * cb), b.block(2 * cb + 1)], b.step());
            for rb in pairs.clone() {
                let at = Block {
                    row: rb * 2 * T,
                    col: cb * 2 * T,
                    rows: (m - rb * 2 * T).min(2 * T),
                    cols: (n - cb * 2 * T).min(2 * T),
                };
                let p = ptr;
                // SAFETY: the block's rows and columns lie inside `dst` (asserted above, `at` is
                // clipped to m × n); each task writes only its own rows, so no two tasks touch
                // the same element, and `dst` is borrowed mutably for the whole call.
                unsafe {
                    write_block(
                        p.0,
                        dst_rs,
                        at,
                        accumulate,
                        ([a.block(2 * rb), a.block(2 * rb + 1)], a.step()),
                        bs,
                        a.k_tiles,
                    )
                };
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

/// Where a 32 × 32 output block lands: its first row and column and how much of it is inside.
#[derive(Clone, Copy)]
struct Block {
    row: usize,
    col: usize,
    rows: usize,
    cols: usize,
}

/// Computes one output block into `dst` (rows `dst_rs` apart), starting each sum from what is
/// there when `accumulate`. A whole block goes straight between `dst` and the tiles; one cut by
/// the matrix's edge goes through a 32 × 32 buffer.
///
/// # Safety
/// `dst` must be valid for reads (when `accumulate`) and writes of the block's `rows × cols`
/// elements at `row * dst_rs + col`, with no other thread touching them.
unsafe fn write_block(
    dst: *mut f32,
    dst_rs: usize,
    at: Block,
    accumulate: bool,
    a: Operand,
    b: Operand,
    k_tiles: usize,
) {
    // SAFETY: the caller guarantees the block's elements are ours to read and write.
    let origin = unsafe { dst.add(at.row * dst_rs + at.col) };
    if at.rows == 2 * T && at.cols == 2 * T {
        // SAFETY: a whole block: 32 rows of 32 elements at `dst_rs` apart, as the caller guarantees.
        return unsafe { tile_block(origin, dst_rs, accumulate, a, b, k_tiles) };
    }
    let mut c = [0f32; 4 * T * T];
    for r in 0..at.rows {
        // SAFETY: row `r` of the block, `cols` elements, inside what the caller guarantees.
        let row = unsafe { std::slice::from_raw_parts_mut(origin.add(r * dst_rs), at.cols) };
        if accumulate {
            c[r * 2 * T..r * 2 * T + at.cols].copy_from_slice(row);
        }
    }
    // SAFETY: `c` is 32 rows of 32 f32.
    unsafe { tile_block(c.as_mut_ptr(), 2 * T, accumulate, a, b, k_tiles) };
    for r in 0..at.rows {
        // SAFETY: as above.
        let row = unsafe { std::slice::from_raw_parts_mut(origin.add(r * dst_rs), at.cols) };
        row.copy_from_slice(&c[r * 2 * T..r * 2 * T + at.cols]);
    }
}

/// 32-row blocks per parallel task of [`matmul`].
const ROW_PAIRS_PER_TASK: usize = 8;

#[derive(Clone, Copy)]
struct SendPtr<E>(*mut E);
// SAFETY: the pointer is only used to write disjoint parts of one mutably borrowed buffer (see
// `matmul` and `pack`), never shared state.
unsafe impl<E> Send for SendPtr<E> {}
// SAFETY: as above.
unsafe impl<E> Sync for SendPtr<E> {}

/// Two tile blocks, each from its first tile on, and the elements from one step of k to the next.
type Operand<'a> = ([&'a [u16]; 2], usize);

/// `C += A · B` for the 32 × 32 block `c` (rows `c_rs` elements apart; C starts from `c`'s
/// values when `load`, from zero otherwise) over `k_tiles` steps of two A and two B tiles.
///
/// # Safety
/// A [`Tiles`] guard must be alive on this thread; `c` must be valid for writes (and reads when
/// `load`) of 32 rows of 32 f32 at `c_rs` apart.
unsafe fn tile_block(c: *mut f32, c_rs: usize, load: bool, (a, a_step): Operand, (b, b_step): Operand, k_tiles: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let fits = |s: &[u16], step: usize| s.len() >= (k_tiles - 1) * step + TILE;
        assert!(k_tiles > 0 && a.iter().all(|s| fits(s, a_step)) && b.iter().all(|s| fits(s, b_step)));
        // SAFETY: the tiles are configured (a `Tiles` guard lives: the caller's contract).
        // Every tile load reads 16 rows of 64 bytes at 64-byte strides from
        // `k_tiles` 1 KiB tiles `step` elements apart in each slice, which holds them all
        // (asserted); C's loads and stores touch 16 rows of 64 bytes at `c_rs` floats apart in
        // the four quadrants of the 32 × 32 block the caller vouches for. The tile registers'
        // values live only inside this block: C is stored before it ends.
        unsafe {
            std::arch::asm!(
                "test {load}, {load}",
                "jz 3f",
                "tileloadd tmm0, [{c} + {cs}*1]",
                "tileloadd tmm1, [{c} + {cs}*1 + 64]",
                "tileloadd tmm2, [{c2} + {cs}*1]",
                "tileloadd tmm3, [{c2} + {cs}*1 + 64]",
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
                load = in(reg) load as usize,
                s64 = in(reg) 64usize,
                sa = in(reg) a_step * 2,
                sb = in(reg) b_step * 2,
                options(nostack),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (c, c_rs, load, a, a_step, b, b_step, k_tiles);
        unreachable!("AMX is x86-64 only; available() is false elsewhere");
    }
}

/// TDPBF16PS's definition for one output: starting from `c`, for each pair of k in order,
/// `c += a[2p]·b[2p]` then `c += a[2p+1]·b[2p+1]`, each product exact (bf16 × bf16 fits f32)
/// and each sum rounded to nearest even; bf16 inputs that are subnormal count as zero and
/// subnormal sums are flushed to zero (Intel's SDM: DAZ and FTZ regardless of MXCSR).
pub fn reference_dot(mut c: f32, a: &[u16], b: &[u16]) -> f32 {
    let daz = |h: u16| if h & 0x7f80 == 0 { 0.0 } else { from_bf16(h) };
    for (x, y) in a.iter().zip(b) {
        c += daz(*x) * daz(*y);
        if c.is_subnormal() {
            c = 0.0f32.copysign(c);
        }
    }
    c
}

/// `dst = A · B` by [`reference_dot`] (A `[m, k]`, B `[k, n]`, row-major f32, rounded to bf16).
pub fn reference(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    let a16: Vec<u16> = a.iter().map(|&x| to_bf16(x)).collect();
    let mut out = vec![0f32; m * n];
    for c in 0..n {
        let col: Vec<u16> = (0..k).map(|j| to_bf16(b[j * n + c])).collect();
        for i in 0..m {
            out[i * n + c] = reference_dot(0.0, &a16[i * k..(i + 1) * k], &col);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::testing::{on_threads, uniform};

    fn run(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let (pa, pb) = (pack_lhs(a, (k, 1), m, k), pack_rhs(b, (n, 1), k, n));
        let mut out = vec![MaybeUninit::new(0f32); m * n];
        matmul(&mut out, n, false, &pa, &pb);
        // SAFETY: every element was initialised above.
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // halfway cases go to the even neighbour; above halfway rounds up
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
        assert_eq!(to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0, "a NaN payload never rounds to infinity");
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        for x in uniform(10_000, 1, 100.0) {
            let r = from_bf16(to_bf16(x));
            assert!(((r - x) / x).abs() <= 1.0 / 256.0, "{x} -> {r}");
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn the_vector_conversion_is_the_plain_one() {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw") {
            let v = uniform(TILE, 8, 3.0);
            let block: [f32; TILE] = std::array::from_fn(|i| v[i]);
            for layout in [Layout::Rows, Layout::Pairs] {
                let (mut plain, mut simd) = (vec![0u16; TILE], vec![0u16; TILE]);
                convert_plain(layout, &block, &mut plain);
                // SAFETY: the CPU has the instructions (checked above).
                unsafe { convert_avx512(layout, &block, &mut simd) };
                assert_eq!(plain, simd);
            }
            return;
        }
        eprintln!("the_vector_conversion_is_the_plain_one: NOT CHECKED here (no AVX-512 BF16 on this CPU)");
    }

    #[test]
    fn the_reference_is_the_exact_product_within_f32_rounding() {
        let (m, n, k) = (5, 7, 200);
        let (a, b) = (uniform(m * k, 2, 1.0), uniform(k * n, 3, 1.0));
        let r = reference(&a, &b, (m, n, k));
        for i in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|j| from_bf16(to_bf16(a[i * k + j])) as f64 * from_bf16(to_bf16(b[j * n + c])) as f64)
                    .sum();
                let bound: f64 =
                    (0..k).map(|j| (a[i * k + j] * b[j * n + c]).abs() as f64).sum::<f64>() * k as f64 * 6e-8;
                assert!((r[i * n + c] as f64 - exact).abs() <= bound, "({i}, {c}): {} vs {exact}", r[i * n + c]);
            }
        }
    }

    #[test]
    fn amx_matches_the_instruction_definition() {
        if !available() {
            eprintln!("amx_matches_the_instruction_definition: NOT CHECKED here (no AMX bf16 on this CPU)");
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
    fn amx_results_do_not_depend_on_threads_or_strides() {
        if !available() {
            eprintln!("amx_results_do_not_depend_on_threads_or_strides: NOT CHECKED here (no AMX bf16 on this CPU)");
            return;
        }
        let (m, n, k) = (96, 64, 128);
        let (a, b) = (uniform(m * k, 6, 1.0), uniform(k * n, 7, 1.0));
        let one = on_threads(1, || run(&a, &b, (m, n, k)));
        let two = on_threads(2, || run(&a, &b, (m, n, k)));
        assert_eq!(one, two);
        // A given transposed (strides (1, m)) packs to the same tiles.
        let at: Vec<f32> = (0..k * m).map(|t| a[(t % m) * k + t / m]).collect();
        let pa = pack_lhs(&at, (1, m), m, k);
        assert_eq!(pa.data, pack_lhs(&a, (k, 1), m, k).data);
        // accumulate adds onto what is there
        let pb = pack_rhs(&b, (n, 1), k, n);
        let mut out: Vec<MaybeUninit<f32>> = vec![MaybeUninit::new(1.0); m * n];
        matmul(&mut out, n, true, &pa, &pb);
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
#[cfg(test)]
mod timing_probe {
    use super::*;
    use crate::model::kernels::testing::uniform;
    #[test]
    #[ignore]
    fn probe_time() {
        for (m, n, k) in [(2560, 3072, 768), (2560, 768, 3072), (768, 3072, 2560)] {
            let (a, b) = (uniform(m * k, 4, 2.0), uniform(k * n, 5, 2.0));
            let mut out = vec![MaybeUninit::new(0f32); m * n];
            for _ in 0..2 {
                let t0 = std::time::Instant::now();
                let pa = pack_lhs(&a, (k, 1), m, k);
                let t1 = std::time::Instant::now();
                let pb = pack_rhs(&b, (n, 1), k, n);
                let t2 = std::time::Instant::now();
                matmul(&mut out, n, false, &pa, &pb);
                let t3 = std::time::Instant::now();
                let pat = pack_lhs(&a, (1, m), m, k);
                let t4 = std::time::Instant::now();
                let fl = 2.0 * (m * n * k) as f64;
                eprintln!("{m}x{n}x{k}: pack A {:.1} ms, pack B {:.1} ms, kernel {:.1} ms ({:.0} GFLOP/s), pack A strided {:.1} ms",
                    (t1-t0).as_secs_f64()*1e3, (t2-t1).as_secs_f64()*1e3, (t3-t2).as_secs_f64()*1e3, fl/(t3-t2).as_secs_f64()/1e9, (t4-t3).as_secs_f64()*1e3);
                drop(pat);
            }
        }
    }
}
