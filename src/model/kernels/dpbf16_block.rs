//! One 32 × 32 output block of the bf16 product ([`super::amx`]) on AVX-512 BF16's
//! `vdpbf16ps`, for AMD CPUs that have those instructions but no AMX tiles (Zen 4 and later):
//! the same packed operands as the tiles read, the same output block, so everything around the
//! block (packing, tasks, the pieces handed on) is shared with the AMX path.
//!
//! ```text
//! A tile (16 rows × 32 k): row r's k pair q is the 32-bit word at r · 64 + q · 4 bytes
//! B tile (16 k pairs × 16 columns): pair row q is one 64-byte vector, column c's pair in word c
//! 8 rows × 32 columns at a time: 16 f32 accumulators (two per row), per k pair two B vectors
//!   loaded, eight A words broadcast, sixteen vdpbf16ps
//! ```
//!
//! Why the same layout: a B tile's pair row is exactly the vector `vdpbf16ps` multiplies, and an
//! A tile's row holds the pairs to broadcast, so nothing is packed twice. Why 8 × 32: 16
//! accumulators hide the instruction's latency, and each loaded B vector serves 8 rows, each
//! broadcast 2 columns, so loads stay well under the multiply rate.
//!
//! Each output is one chain over k in order (`vdpbf16ps`: per pair, the odd product added
//! first, then the even one, each sum rounded, subnormals flushed), whatever the blocking or
//! thread count: the tests check it bit for bit against that definition in plain Rust.

use super::amx_pack::{holds, Operand, KT, T};

/// Whether this CPU has AVX-512F and AVX-512 BF16 (checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows of one register block.
const R: usize = 8;

/// `C = from + A · B` for the 32 × 32 block `c` (rows `c_rs` elements apart) over `k_tiles`
/// steps of two A and two B tiles, as `amx_block::tile_block` computes it on tiles; C starts
/// from the 32 × 32 block at `from` (its rows the given stride apart: 0 repeats one row) or
/// from zero.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16 ([`available`]); `c` must be valid for writes of
/// 32 rows of 32 f32 at `c_rs` apart, and `from` for reads of 32 rows of 32 f32 at its stride.
pub(super) unsafe fn dot_block(
    c: *mut f32,
    c_rs: usize,
    from: Option<(*const f32, usize)>,
    (a, a_step): Operand,
    (b, b_step): Operand,
    k_tiles: usize,
) {
    assert!(holds((a, a_step), k_tiles) && holds((b, b_step), k_tiles));
    for row in (0..2 * T).step_by(R) {
        // rows 0-15 come from the first A block, 16-31 from the second
        let a_rows = &a[row / T][(row % T) * KT..];
        // SAFETY: the CPU has the instructions (the caller's contract); the operands hold
        // `k_tiles` tiles at their steps (asserted); rows `row..row + 8` of `c` and `from` lie in
        // the 32 × 32 blocks the caller vouches for.
        unsafe {
            simd::rows(
                c.add(row * c_rs),
                c_rs,
                from.map(|(p, s)| (p.add(row * s), s)),
                (a_rows, a_step),
                (b, b_step),
                k_tiles,
            )
        };
    }
}

/// `vdpbf16ps` on one lane in plain Rust: `s` plus the products of the bf16 pairs in the words
/// `v` and `w` (the even element in the low half), the odd product first, each sum rounded to
/// nearest, subnormal inputs and sums flushed to zero.
#[cfg(test)]
fn dot_pair(s: f32, v: u32, w: u32) -> f32 {
    let flush = |x: f32| if x.is_subnormal() { 0.0 } else { x };
    let widen = |h: u32| flush(f32::from_bits(h << 16));
    let s = flush(flush(s) + widen(v >> 16) * widen(w >> 16));
    flush(s + widen(v & 0xffff) * widen(w & 0xffff))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{KT, R};
    use std::arch::x86_64::*;

    /// 8 rows × 32 columns of [`super::dot_block`]: `a` starts at the first of the 8 rows in the
    /// first A tile, `b` are the two B blocks.
    ///
    /// # Safety
    /// As [`super::dot_block`]'s, for these 8 rows; `a` holds 8 rows of 32 bf16 at 32 apart in
    /// each of `k_tiles` tiles `a_step` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn rows(
        c: *mut f32,
        c_rs: usize,
        from: Option<(*const f32, usize)>,
        (a, a_step): (&[u16], usize),
        (b, b_step): ([&[u16]; 2], usize),
        k_tiles: usize,
    ) {
        assert!(a.len() >= (k_tiles - 1) * a_step + R * KT);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if let Some((l, ls)) = from {
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r` of the start block, 32 f32 (the caller's contract).
                unsafe { *acc = [_mm512_loadu_ps(l.add(r * ls)), _mm512_loadu_ps(l.add(r * ls + 16))] };
            }
        }
        for t in 0..k_tiles {
            let (ap, b0, b1) = (a[t * a_step..].as_ptr(), b[0][t * b_step..].as_ptr(), b[1][t * b_step..].as_ptr());
            for q in 0..KT / 2 {
                // SAFETY: pair row `q < 16` of tile `t` in each B block (64 bytes at q · KT
                // elements), and word `q` of A's rows `r < 8` (at r · KT + 2q elements): inside
                // the slices (asserted here and by the caller). bf16 vectors are 64 bytes of 32
                // bf16, as the integer vectors they are made from.
                unsafe {
                    let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(q * KT).cast()));
                    let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(q * KT).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let word = ap.add(r * KT + 2 * q).cast::<i32>().read_unaligned();
                        let v: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
                        acc[0] = _mm512_dpbf16_ps(acc[0], v, w0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], v, w1);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `r` of the output block, 32 f32 (the caller's contract).
            unsafe {
                _mm512_storeu_ps(c.add(r * c_rs), acc[0]);
                _mm512_storeu_ps(c.add(r * c_rs + 16), acc[1]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    pub(super) unsafe fn rows(
        _: *mut f32,
        _: usize,
        _: Option<(*const f32, usize)>,
        _: (&[u16], usize),
        _: ([&[u16]; 2], usize),
        _: usize,
    ) {
        unreachable!("no AVX-512 BF16 off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::amx_pack::{pack_lhs, pack_rhs, Packed, TILE};
    use crate::model::kernels::testing::uniform;

    /// The word of bf16 pair `q` of row `i` in a packed operand (rows are A's rows or B's
    /// columns: both are packed as 32-row blocks of k tiles).
    fn word(p: &Packed, lhs: bool, i: usize, q: usize) -> u32 {
        let tile = &p.block(i / T)[(q / 16) * TILE..][..TILE];
        let at = if lhs { (i % T) * 32 + 2 * (q % 16) } else { (q % 16) * 32 + 2 * (i % T) };
        u32::from(tile[at]) | (u32::from(tile[at + 1]) << 16)
    }

    /// One 32 × 32 block by the definition: each output a chain over the k pairs in order.
    fn by_definition(from: &[f32], a: &Packed, b: &Packed) -> Vec<f32> {
        let mut c = from.to_vec();
        for i in 0..2 * T {
            for j in 0..2 * T {
                for q in 0..a.k_tiles * 16 {
                    c[i * 2 * T + j] = dot_pair(c[i * 2 * T + j], word(a, true, i, q), word(b, false, j, q));
                }
            }
        }
        c
    }

    #[test]
    fn the_block_is_the_instruction_definition_bit_for_bit() {
        if !available() {
            eprintln!("the_block_is_the_instruction_definition_bit_for_bit: NOT CHECKED here (no AVX-512 BF16)");
            return;
        }
        // k of 40 pads to two tiles; the start block's rows 40 apart (as an output's), and a
        // bias row repeated (stride 0)
        let (m, n, k) = (32, 32, 40);
        let (x, y) = (uniform(m * k, 1, 2.0), uniform(k * n, 2, 2.0));
        let (pa, pb) = (pack_lhs(&x, (k, 1), m, k), pack_rhs(&y, (n, 1), k, n));
        let start = uniform(32 * 40, 3, 4.0);
        for (from, stride) in [(None, 0), (Some(&start[..]), 40), (Some(&start[..]), 0)] {
            let init: Vec<f32> = (0..32 * 32).map(|e| from.map_or(0.0, |f| f[(e / 32) * stride + e % 32])).collect();
            let mut got = vec![f32::NAN; 32 * 33];
            let (a, b) = (([pa.block(0), pa.block(1)], pa.step()), ([pb.block(0), pb.block(1)], pb.step()));
            // SAFETY: the CPU has the instructions (checked above); `got` holds 32 rows of 33,
            // `from` 32 rows at its stride (or one row at 0).
            unsafe { dot_block(got.as_mut_ptr(), 33, from.map(|f| (f.as_ptr(), stride)), a, b, pa.k_tiles) };
            let want = by_definition(&init, &pa, &pb);
            for i in 0..32 {
                for j in 0..33 {
                    let g = got[i * 33 + j];
                    match j {
                        32 => assert!(g.is_nan(), "column 32 is not the block's"),
                        _ => assert_eq!(
                            g.to_bits(),
                            want[i * 32 + j].to_bits(),
                            "({i}, {j}): {g} vs {}",
                            want[i * 32 + j]
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn the_definition_flushes_subnormals_and_adds_the_odd_product_first() {
        let bits = |lo: f32, hi: f32| (lo.to_bits() >> 16) | (hi.to_bits() & 0xffff_0000);
        let big = 16777216.0; // 2^24: adding 1 to it is a tie, which rounds to even (2^24)
                              // odd first: (1 + 2^24) rounds to 2^24, then + 1 rounds to 2^24 again; the even
                              // product first would give 1 + 1 + 2^24 = 2^24 + 2 exactly
        assert_eq!(dot_pair(1.0, bits(1.0, big), bits(1.0, 1.0)), big);
        // a subnormal input counts as zero (its product with 2^100 would be a normal 2^-27)
        let tiny = f32::MIN_POSITIVE / 2.0;
        assert_eq!(dot_pair(0.0, bits(tiny, 0.0), bits(2f32.powi(100), 0.0)), 0.0);
    }
}
