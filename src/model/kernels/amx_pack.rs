//! The operands of the AMX bf16 kernel ([`super::amx`]): f32 rounded to bf16 (nearest even)
//! and laid out in 16 × 32 tiles as TDPBF16PS reads them, and the instruction's definition in
//! plain Rust, which the kernel is tested against.
//!
//! ```text
//! A packed: per block of 16 rows, per 32 of k: a 16 × 32 bf16 tile (1 KiB), rows 64 bytes apart
//! B packed: per block of 16 columns, per 32 of k: 16 rows of k pairs × (16 columns × 2) bf16,
//!           the pairs along k side by side
//! ```
//!
//! Rows and columns are padded with zeros to multiples of 32 and k to a multiple of 32, so the
//! kernel only ever sees whole tiles.

use rayon::prelude::*;

/// Tile edge in rows and f32 columns; bf16 values per tile row.
pub(super) const T: usize = 16;
pub(super) const KT: usize = 32;
/// One packed tile: 16 rows of 64 bytes.
pub(super) const TILE: usize = T * KT;

/// One tile row, on a cache line of its own: a tile row that straddles two lines takes the
/// tile load about seven times as long (measured: 70 ns for four tile loads from L1 at 32 bytes
/// off, 10 ns aligned).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct TileRow(pub(super) [u16; KT]);

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

/// Two 16-row blocks of a [`Packed`] operand, each from its first tile on, and the elements from
/// one step of k to the next: what a 32 × 32 output block's kernel reads.
pub(super) type Operand<'a> = ([&'a [u16]; 2], usize);

/// Whether both blocks of `op` hold `k_tiles` (at least one) whole tiles at its step: what a
/// block kernel asserts before reading them.
pub(super) fn holds((blocks, step): Operand, k_tiles: usize) -> bool {
    k_tiles > 0 && blocks.iter().all(|s| s.len() >= (k_tiles - 1) * step + TILE)
}

/// A matrix rounded to bf16 in tile order: `rows` rows (padded to 32) of `k` (padded to 32),
/// the tiles of one block of 16 rows one after the other along k (`[16-row block][k tile]`).
#[derive(Debug)]
pub struct Packed {
    pub(super) lines: Vec<TileRow>,
    pub(super) rows: usize,
    pub(super) k_tiles: usize,
}

impl Packed {
    pub(super) fn blocks(&self) -> usize {
        self.rows.div_ceil(2 * T) * 2
    }

    /// The tiles of the 16-row block `b`; one step of k is [`Packed::step`] elements further.
    pub(super) fn block(&self, b: usize) -> &[u16] {
        &self.data()[b * self.k_tiles * TILE..(b + 1) * self.k_tiles * TILE]
    }

    pub(super) fn data(&self) -> &[u16] {
        // SAFETY: `TileRow` is 32 u16 with no padding (size 64, align 64), so the rows are
        // `32 * len` initialised u16 in one allocation, borrowed as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * KT) }
    }

    pub(super) fn step(&self) -> usize {
        TILE
    }
}

/// Rounds `values` to bf16 (nearest even) in place, the bf16 bits into `bits`: as
/// [`to_bf16`], 16 at a time by `vcvtneps2bf16` where the CPU has it (which also flushes
/// subnormal values to zero).
pub fn round_in_place(values: &mut [f32], bits: &mut [u16]) {
    assert_eq!(values.len(), bits.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU has the instructions; the lengths match (asserted).
        return unsafe { round_in_place_avx512(values, bits) };
    }
    for (v, b) in values.iter_mut().zip(bits) {
        *b = to_bf16(*v);
        *v = from_bf16(*b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn round_in_place_avx512(values: &mut [f32], bits: &mut [u16]) {
    use std::arch::x86_64::*;
    let mut chunks = values.chunks_exact_mut(T);
    let mut out = bits.chunks_exact_mut(T);
    for (v, b) in (&mut chunks).zip(&mut out) {
        // SAFETY: 16 f32 read from and written to `v`, 16 u16 written to `b` (both chunks of 16).
        unsafe {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr())));
            _mm256_storeu_si256(b.as_mut_ptr().cast(), h);
            _mm512_storeu_si512(v.as_mut_ptr().cast(), _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        }
    }
    for (v, b) in chunks.into_remainder().iter_mut().zip(out.into_remainder()) {
        *b = to_bf16(*v);
        *v = from_bf16(*b);
    }
}

/// One whole 16 × 32 tile from `src` (line `q`, value `j` at `q * strides.0 + j * strides.1`,
/// one stride 1): straight by the vector path where the CPU has it, else gathered.
pub(super) fn round_tile(src: &[f32], strides: (usize, usize), layout: Layout, tile: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU has the instructions; `src` holds the tile's 16 lines × 32 values
        // (the callers slice it to exactly that, which `direct_avx512` asserts).
        return unsafe { direct_avx512(src, strides, layout, tile) };
    }
    let mut block = [0f32; TILE];
    gathered(&mut block, layout, (T, KT), |r, j| src[r * strides.0 + j * strides.1]);
    convert(layout, &block, tile);
}

/// Packs `A[m, k]` (element `(i, j)` at `src[i * rs + j * cs]`) as the left operand.
pub fn pack_lhs(src: &[f32], (rs, cs): (usize, usize), m: usize, k: usize) -> Packed {
    pack(src, (rs, cs), m, k, Layout::Rows, true)
}

/// [`pack_lhs`] on this thread (for `amx::Serial`'s products, where no rayon call may run).
pub fn pack_lhs_serial(src: &[f32], (rs, cs): (usize, usize), m: usize, k: usize) -> Packed {
    pack(src, (rs, cs), m, k, Layout::Rows, false)
}

/// Packs `B[k, n]` (element `(j, c)` at `src[j * rs + c * cs]`) as the right operand: per block
/// of 16 columns, tiles whose row `p` holds, for each column, the pair `B[2p], B[2p + 1]` of k.
pub fn pack_rhs(src: &[f32], (rs, cs): (usize, usize), k: usize, n: usize) -> Packed {
    pack(src, (cs, rs), n, k, Layout::Pairs, true)
}

/// [`pack_rhs`] on this thread.
pub fn pack_rhs_serial(src: &[f32], (rs, cs): (usize, usize), k: usize, n: usize) -> Packed {
    pack(src, (cs, rs), n, k, Layout::Pairs, false)
}

/// How a tile holds its 16 lines (rows of A, columns of B) of 32 values along k.
#[derive(Clone, Copy)]
pub(super) enum Layout {
    /// Line `r` is tile row `r` (A).
    Rows,
    /// Tile row `p` holds the pairs `2p, 2p + 1` of every line side by side (B).
    Pairs,
}

/// `rows` lines of `k` values (value `j` of line `r` at `src[r * line_stride + j * k_stride]`)
/// in tiles. Tasks walk the source along whichever stride is 1 (block-major when k is
/// contiguous, k-major when the lines are), so that neighbouring tiles read neighbouring memory;
/// a whole tile is rounded straight from the source ([`direct_avx512`]), a tile cut by an edge
/// (or a source with no unit stride) is gathered into a 16 × 32 f32 block first ([`gathered`]).
fn pack(src: &[f32], strides: (usize, usize), rows: usize, k: usize, layout: Layout, parallel: bool) -> Packed {
    let k_tiles = k.div_ceil(KT);
    let blocks = rows.div_ceil(2 * T) * 2;
    // every tile is written below (zeros past the last line), so no pass zeroes them first
    let mut lines: Vec<TileRow> = Vec::with_capacity(blocks * k_tiles * T);
    let out = SendPtr(lines.as_mut_ptr().cast::<u16>());
    let k_major = strides.1 != 1;
    let tile_task = |i: usize| {
        let (b, t) = if k_major { (i % blocks, i / blocks) } else { (i / k_tiles, i % k_tiles) };
        let (r0, j0) = (b * T, t * KT);
        let (nr, nj) = (T.min(rows.saturating_sub(r0)), KT.min(k - j0));
        let o = out;
        // SAFETY: tile (b, t) is the TILE u16 at (b * k_tiles + t) * TILE, inside the allocation
        // of `lines` (blocks * k_tiles tiles of T rows of KT u16; b < blocks, t < k_tiles); each
        // task writes only its own tile, while `lines` lives. Its memory may be uninitialised:
        // every path below writes all of it through this slice before anything reads it (as
        // `amx_fill::Filler` fills its tiles).
        let tile = unsafe { std::slice::from_raw_parts_mut(o.0.add((b * k_tiles + t) * TILE), TILE) };
        if nr == 0 {
            tile.fill(0);
            return;
        }
        let at = |r: usize, j: usize| (r0 + r) * strides.0 + (j0 + j) * strides.1;
        #[cfg(target_arch = "x86_64")]
        if nr == T && nj == KT && (strides.0 == 1 || strides.1 == 1) && has_avx512_bf16() {
            // SAFETY: the CPU has the instructions; the tile's 16 lines × 32 values lie inside
            // `src` (its last element, at(15, 31), is checked by the slice index).
            return unsafe { direct_avx512(&src[at(0, 0)..=at(T - 1, KT - 1)], strides, layout, tile) };
        }
        let mut block = [0f32; TILE];
        gathered(&mut block, layout, (nr, nj), |r, j| src[at(r, j)]);
        convert(layout, &block, tile);
    };
    match parallel {
        true => (0..blocks * k_tiles).into_par_iter().for_each(tile_task),
        false => (0..blocks * k_tiles).for_each(tile_task),
    }
    // SAFETY: the tasks above wrote every tile of the capacity, each once.
    unsafe { lines.set_len(blocks * k_tiles * T) };
    Packed { lines, rows, k_tiles }
}

fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512bf16") && std::is_x86_feature_detected!("avx512bw");
    #[allow(unreachable_code)]
    false
}

/// The tile's `nr` × `nj` values in `block` as [`convert`] reads them: line-major for rows of A,
/// k-major for pairs of B (the rest stays zero).
fn gathered(block: &mut [f32; TILE], layout: Layout, (nr, nj): (usize, usize), value: impl Fn(usize, usize) -> f32) {
    for j in 0..nj {
        for r in 0..nr {
            let slot = match layout {
                Layout::Rows => r * KT + j,
                Layout::Pairs => j * T + r,
            };
            block[slot] = value(r, j);
        }
    }
}

/// One whole tile rounded straight from `src` (its first value at index 0), reading 16 values
/// at a time along the unit stride. `vcvtne2ps2bf16` of a line's 32 values gives its 16 pairs
/// of k in order, and of two k columns (16 lines each, interleaved) one pair per line: the first
/// is a row of A's layout, the second a row of B's; the other layout is the 16 × 16 transpose of
/// the pairs (as 32-bit words), done in registers ([`transpose_words`]; scattering the words
/// into place took about twice as long).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn direct_avx512(src: &[f32], (line_stride, k_stride): (usize, usize), layout: Layout, tile: &mut [u16]) {
    use std::arch::x86_64::*;
    assert_eq!(tile.len(), TILE);
    let along_k = k_stride == 1;
    // The tile's values, the last one included; along k, line q starts q line strides in;
    // along the lines, k column 2q starts 2q k strides in.
    assert_eq!(src.len(), (T - 1) * line_stride + (KT - 1) * k_stride + 1);
    let outer_stride = if along_k { line_stride } else { 2 * k_stride };
    let interleave: [u16; 32] = std::array::from_fn(|i| ((i % 2) * 16 + i / 2) as u16);
    // SAFETY: `interleave` is 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(interleave.as_ptr().cast()) };
    let mut rows = [_mm512_setzero_si512(); T];
    for (q, row) in rows.iter_mut().enumerate() {
        // SAFETY: row q reads 16 floats at `lo` and 16 at `hi`, inside `src` by the assert
        // above (along k: line q's 32 values; along the lines: k columns 2q and 2q + 1).
        unsafe {
            let base = src.as_ptr().add(q * outer_stride);
            let (lo, hi) = if along_k { (base, base.add(T)) } else { (base, base.add(k_stride)) };
            *row =
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi), _mm512_loadu_ps(lo)));
        }
        if !along_k {
            *row = _mm512_permutexvar_epi16(idx, *row);
        }
    }
    if !matches!((along_k, layout), (true, Layout::Rows) | (false, Layout::Pairs)) {
        rows = transpose_words(rows);
    }
    for (q, row) in rows.iter().enumerate() {
        // SAFETY: row q of `tile` (asserted 512 u16): 64 bytes at q * 32 u16.
        unsafe { _mm512_storeu_si512(tile.as_mut_ptr().add(q * KT).cast(), *row) };
    }
}

/// The 16 × 16 transpose of 32-bit words: word p of `rows[q]` becomes word q of row p. Pairs of
/// rows interleaved by words, then by pairs of words, give each 128-bit lane four rows' words of
/// one column; two 128-bit shuffles put a column's four lanes together.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_words(r: [std::arch::x86_64::__m512i; T]) -> [std::arch::x86_64::__m512i; T] {
    use std::arch::x86_64::*;
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved word by word (lane L: columns 4L..4L + 3)
    let t: [__m512i; T] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4g + c], lane L: rows 4g..4g + 3 of column 4L + c
    let u: [__m512i; T] = std::array::from_fn(|i| {
        let (g, c) = (i / 4 * 4, i % 4);
        let (a, b) = (t[g + c / 2], t[g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // column 4L + c: lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
    std::array::from_fn(|col| {
        let (lane, c) = (col / 4, col % 4);
        let (x, y) = if lane % 2 == 0 {
            (_mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]), _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]))
        } else {
            (_mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]), _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]))
        };
        if lane < 2 {
            _mm512_shuffle_i32x4::<0x88>(x, y)
        } else {
            _mm512_shuffle_i32x4::<0xdd>(x, y)
        }
    })
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

#[derive(Clone, Copy)]
pub(super) struct SendPtr<E>(pub(super) *mut E);
// SAFETY: the pointer is only used to write disjoint parts of one mutably borrowed buffer (see
// `matmul` and `pack`), never shared state.
unsafe impl<E> Send for SendPtr<E> {}
// SAFETY: as above.
unsafe impl<E> Sync for SendPtr<E> {}

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
    use crate::model::kernels::testing::uniform;

    /// The packed layouts by their definition (see the header), for `A [m, k]` row-major as the
    /// lines: `Rows` puts line `r`'s values `j` at tile row `r`, `Pairs` puts the pair of k
    /// `2p, 2p + 1` of line `r` at tile row `p`, columns `2r, 2r + 1`.
    fn defined(a: &[f32], m: usize, k: usize, layout: Layout) -> Vec<u16> {
        let (blocks, k_tiles) = (m.div_ceil(2 * T) * 2, k.div_ceil(KT));
        let mut out = vec![0u16; blocks * k_tiles * TILE];
        for r in 0..m {
            for j in 0..k {
                let (b, t, rr, jj) = (r / T, j / KT, r % T, j % KT);
                let slot = match layout {
                    Layout::Rows => rr * KT + jj,
                    Layout::Pairs => (jj / 2) * KT + 2 * rr + jj % 2,
                };
                out[(b * k_tiles + t) * TILE + slot] = to_bf16(a[r * k + j]);
            }
        }
        out
    }

    #[test]
    fn every_source_order_packs_to_the_defined_layout() {
        // Whole 16-line blocks, cut ones and padding; whole k tiles and cut ones of at most 16
        // and of more than 16 values: whole tiles take the vector path where a stride is 1, the
        // others the gathered one; a source with no unit stride always the gathered one.
        for (m, k) in [(50, 80), (87, 87), (7, 23), (16, 32)] {
            let a = uniform(m * k, 12, 4.0);
            let at: Vec<f32> = (0..k * m).map(|t| a[(t % m) * k + t / m]).collect();
            let mut wide = vec![f32::NAN; 2 * m * k];
            for r in 0..m {
                for j in 0..k {
                    wide[r * 2 + j * 2 * m] = a[r * k + j];
                }
            }
            let (rows, pairs) = (defined(&a, m, k, Layout::Rows), defined(&a, m, k, Layout::Pairs));
            let shape = format!("{m} x {k}");
            assert_eq!(pack_lhs(&a, (k, 1), m, k).data(), rows, "{shape}");
            assert_eq!(pack_lhs(&at, (1, m), m, k).data(), rows, "{shape}");
            assert_eq!(pack_lhs_serial(&at, (1, m), m, k).data(), rows, "{shape}");
            assert_eq!(pack_lhs(&wide, (2, 2 * m), m, k).data(), rows, "{shape}");
            // B [k, n = m] whose column c is line c
            assert_eq!(pack_rhs(&a, (1, k), k, m).data(), pairs, "{shape}");
            assert_eq!(pack_rhs(&at, (m, 1), k, m).data(), pairs, "{shape}");
            assert_eq!(pack_rhs_serial(&a, (1, k), k, m).data(), pairs, "{shape}");
            assert_eq!(pack_rhs(&wide, (2 * m, 2), k, m).data(), pairs, "{shape}");
        }
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
            let (mut plain, mut simd) = (v.clone(), v.clone());
            let (mut plain_bits, mut simd_bits) = (vec![0u16; TILE], vec![0u16; TILE]);
            for (x, b) in plain.iter_mut().zip(&mut plain_bits) {
                *b = to_bf16(*x);
                *x = from_bf16(*b);
            }
            // SAFETY: the CPU has the instructions (checked above).
            unsafe { round_in_place_avx512(&mut simd, &mut simd_bits) };
            assert_eq!((plain, plain_bits), (simd, simd_bits));
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
}
