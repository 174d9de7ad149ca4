//! The int8 linear layer's integer dot products ([`super::qlinear`]) on AMX tiles (TDPBUSD:
//! u8 activations × i8 weights, i32 sums), for `--quantize int8` on CPUs that have AMX-INT8.
//!
//! ```text
//! A: the quantised activations as they are, rows of `kp` bytes (a multiple of 64): a tile is
//!    16 rows × 64 bytes read at a stride of `kp`, no packing
//! B: the weights packed once, at load: per block of 16 output columns, per 64 of k, a
//!    tile of 16 rows (k in fours) × (16 columns × 4 bytes), as TDPBUSD reads it
//! kernel: 2 × 2 C tiles (32 × 32 i32) over the whole k loop, then the same dequantisation
//!    as every other path (the caller's `finish`: `QuantizedLinear::finish_row`)
//! ```
//!
//! The sums are exact integers (|Σ| ≤ 255 · 63 · k fits 32 bits for any k below 133,000), so
//! the outputs are bitwise those of every other path, whatever the order the instruction adds
//! in; the tests compare them with plain Rust.

use super::amx_block::Tiles;
use super::tiles::for_each_block;
use std::mem::MaybeUninit;

/// Output rows and columns per parallel work item (multiples of the 32 × 32 kernel block): 128
/// columns' weight tiles stay in L2 while the rows go by (384 KiB at k = 3072), and a product
/// of few rows still splits into several tasks (six for 768 columns).
const BLOCK_ROWS: usize = 128;
const BLOCK_COLS: usize = 128;

/// One 1 KiB tile on cache lines of its own.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Tile([i8; 1024]);

/// The weights `w [n, kp]` (row-major, rows zero-padded to `kp`) in B tiles; columns padded with
/// zeros to a multiple of 32.
pub(super) fn pack_weights(w: &[i8], n: usize, kp: usize) -> Vec<Tile> {
    let (col_blocks, k_tiles) = (n.div_ceil(32) * 2, kp / 64);
    let mut tiles = vec![Tile([0; 1024]); col_blocks * k_tiles];
    for (i, tile) in tiles.iter_mut().enumerate() {
        let (cb, kt) = (i / k_tiles, i % k_tiles);
        for c in 0..16.min(n.saturating_sub(cb * 16)) {
            let row = &w[(cb * 16 + c) * kp + kt * 64..][..64];
            for (r, quad) in row.chunks_exact(4).enumerate() {
                tile.0[r * 64 + c * 4..][..4].copy_from_slice(quad);
            }
        }
    }
    tiles
}

/// The `n` outputs of each of the `m` rows of `x` (quantised activations, rows `kp` bytes apart,
/// zero rows after them up to a multiple of 32) against the packed weights `w`, on AMX tiles:
/// `finish(r, c0, dots, out)` turns row `r`'s integer dot products with columns `c0..` into
/// its outputs, which land in `dst` (rows `dst_rs` apart). Needs
/// [`super::amx_block::int8_available`].
pub(super) fn forward(
    x: &[u8],
    (m, kp): (usize, usize),
    (w, n): (&[Tile], usize),
    finish: impl Fn(usize, usize, &[i32], &mut [f32]) + Sync,
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
) {
    let k_tiles = kp / 64;
    assert!(kp.is_multiple_of(64) && x.len() >= m.next_multiple_of(32) * kp, "activations not padded");
    assert_eq!(w.len(), n.div_ceil(32) * 2 * k_tiles, "packed weights of another shape");
    for_each_block(dst, dst_rs, (m, n), (BLOCK_ROWS, BLOCK_COLS), |block| {
        let tiles = Tiles::configure_int8();
        let mut sums = Sums([0; 1024]);
        for c0 in block.cols.clone().step_by(32) {
            let b = &w[(c0 / 16) * k_tiles..][..2 * k_tiles];
            for r0 in block.rows.clone().step_by(32) {
                let a = &x[r0 * kp..][..32 * kp];
                // SAFETY: `tiles` is configured on this thread; `a` holds 32 rows of `kp` bytes
                // and `b` the two column blocks' `k_tiles` tiles each (sliced above).
                unsafe { dot_block(&tiles, &mut sums, a, kp, b, k_tiles) };
                for r in r0..(r0 + 32).min(m) {
                    let dots = &sums.0[(r - r0) * 32..][..32];
                    let mut out = [0f32; 32];
                    if c0 + 32 <= n {
                        // a whole row of the block: a copy of known length, inlined
                        finish(r, c0, dots, &mut out);
                        block.write_row(r, c0, &out);
                    } else {
                        let cols = n - c0;
                        finish(r, c0, &dots[..cols], &mut out[..cols]);
                        block.write_row(r, c0, &out[..cols]);
                    }
                }
            }
        }
    });
}

/// A 32 × 32 block of i32 sums on cache lines of their own.
#[repr(C, align(64))]
struct Sums([i32; 1024]);

/// `sums = A · B` for 32 rows of `a` (`kp` bytes apart) and the 32 columns of `b` (two column
/// blocks of `k_tiles` tiles), over `k_tiles` steps of 64.
///
/// # Safety
/// `_tiles` must be the configuration live on this thread; `a` must hold 32 rows of `kp`
/// bytes, `kp = 64 · k_tiles`, and `b` `2 · k_tiles` tiles.
unsafe fn dot_block(_tiles: &Tiles, sums: &mut Sums, a: &[u8], kp: usize, b: &[Tile], k_tiles: usize) {
    assert!(k_tiles > 0 && kp == 64 * k_tiles && a.len() >= 32 * kp && b.len() >= 2 * k_tiles);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tiles are configured (16 rows × 64 bytes each); the A loads read 16 rows of
    // 64 bytes at `kp` apart from `a0`/`a1` = rows 0 and 16, k steps 64 bytes on, inside `a`'s
    // 32 rows of `kp` (asserted); the B loads read 1 KiB tiles `k_tiles` of them in each of the
    // two column blocks (asserted); the stores write the 32 × 32 i32 of `sums` (128 bytes a
    // row). The tile registers' values live only inside this block.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {kp}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbusd tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {kp}*1]",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s128}*1], tmm0",
            "tilestored [{c} + {s128}*1 + 64], tmm1",
            "add {c}, 2048",
            "tilestored [{c} + {s128}*1], tmm2",
            "tilestored [{c} + {s128}*1 + 64], tmm3",
            a0 = inout(reg) a.as_ptr() => _,
            a1 = inout(reg) a.as_ptr().add(16 * kp) => _,
            b0 = inout(reg) b.as_ptr() => _,
            b1 = inout(reg) b.as_ptr().add(k_tiles) => _,
            n = inout(reg) k_tiles => _,
            c = inout(reg) sums.0.as_mut_ptr() => _,
            kp = in(reg) kp,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no AMX off x86-64: {:?}", (sums.0[0], a.len(), kp, b.len(), k_tiles));
}
