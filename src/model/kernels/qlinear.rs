//! Int8 linear layers for inference (`--quantize int8`), forward only:
//!
//! ```text
//! W[j, :] ≈ sw_j · qw[j, :]              qw ∈ [-63, 63]   per output channel, at load
//! x[i, :] ≈ sx_i · (qx[i, :] − zx_i)      qx ∈ [0, 255]    per token, at every call
//! y[i, j] = sx_i · sw_j · (Σ_p qx[i, p] qw[j, p] − zx_i Σ_p qw[j, p]) + b_j
//! ```
//!
//! Why 7-bit weights and 8-bit activations with a zero point: AVX2's `vpmaddubsw` (u8 × i8)
//! saturates its pair sums at 16 bits, and 2 · 255 · 63 < 32767 keeps every one exact. So the
//! integer dot products are exact on every path — AMX tiles (`tdpbusd`, `amx_int8.rs`, for
//! products of 8 rows or more), AVX-512 VNNI (`vpdpbusd` on 64 bytes),
//! AVX-VNNI (`vpdpbusd` on 32), AVX2 (`vpmaddubsw` + `vpmaddwd`) and plain Rust — and the
//! outputs are bitwise the same whichever the CPU picks (the tests check each one it has
//! against plain Rust). The activations get the finer grid because they are the harder half:
//! per-channel weights are smooth, while a token's values span a few large outlier channels.
//! Each weight row's step is the one of 16 clipped ranges with the least rounding error.
//! Measured on the MiniLM seed-recipe model (README): this split agrees with float32 on more
//! validation texts than 7-bit activations with 8-bit weights. The dot products run over `W`
//! as stored, row by row, in the block walk of `tiles.rs`; the SIMD loops are in `int8_simd.rs`.

use super::int8_simd as simd;
use super::simd::lane_sum;
use super::tiles::{for_each_block, walk_tiles, Block};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// The largest quantised activation and weight magnitude (see the module header).
const X_MAX: i32 = 255;
const W_MAX: i32 = 63;

/// Rows are padded with zeros to a multiple of this many bytes (one AVX-512 load).
const K_ALIGN: usize = 64;

/// Output rows and columns per parallel work item (multiples of every register tile's).
const BLOCK_ROWS: usize = 48;
const BLOCK_COLS: usize = 32;

/// The instructions the integer dot products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AMX tiles (`amx_int8.rs`), for the whole product.
    Amx,
    Avx512Vnni,
    AvxVnni,
    Avx2,
    Scalar,
}

impl Isa {
    /// The best the CPU has (checked once).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| Isa::available().into_iter().next().unwrap_or(Isa::Scalar))
    }

    /// The path for a product of `m` rows: AMX pads the rows to 32, and was faster than AVX-512
    /// VNNI on all four of DistilBERT-base's projections from 8 rows on, about even at 4 and
    /// slower at 1 (`cargo bench --bench int8`; the README has the run); below 8, the best path
    /// without it.
    pub fn for_rows(m: usize) -> Isa {
        const AMX_FROM_ROWS: usize = 8;
        static BELOW: OnceLock<Isa> = OnceLock::new();
        match Isa::detect() {
            Isa::Amx if m < AMX_FROM_ROWS => *BELOW.get_or_init(|| Isa::available()[1]),
            isa => isa,
        }
    }

    /// Every path this CPU can run, best first (plain Rust last).
    pub fn available() -> Vec<Isa> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if super::amx_block::int8_available() {
                out.push(Isa::Amx);
            }
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                out.push(Isa::Avx512Vnni);
            }
            if has!("avx2") && has!("avxvnni") {
                out.push(Isa::AvxVnni);
            }
            if has!("avx2") {
                out.push(Isa::Avx2);
            }
        }
        out.push(Isa::Scalar);
        out
    }

    /// What runs the products, as `bench` and `serve` say it.
    pub fn description() -> String {
        match Isa::detect() {
            Isa::Amx => format!("{} from 8 rows, {} below", Isa::Amx.name(), Isa::for_rows(0).name()),
            isa => isa.name().to_string(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "AMX tiles (tdpbusd)",
            Isa::Avx512Vnni => "AVX-512 VNNI (vpdpbusd)",
            Isa::AvxVnni => "AVX-VNNI (vpdpbusd)",
            Isa::Avx2 => "AVX2 (vpmaddubsw)",
            Isa::Scalar => "no SIMD (plain Rust)",
        }
    }
}

/// A linear layer's weight quantised per output channel, with its f32 bias.
#[derive(Debug)]
pub struct QuantizedLinear {
    n: usize,
    k: usize,
    /// `[n, kp]`, each row zero-padded to `kp`.
    w: Vec<i8>,
    kp: usize,
    scales: Vec<f32>,
    /// `Σ_p qw[j, p]`, for the activations' zero points.
    col_sums: Vec<i32>,
    bias: Vec<f32>,
    /// `w` in AMX tiles: at load where AMX is the CPU's path, else the first time it runs.
    amx: OnceLock<Vec<super::amx_int8::Tile>>,
}

/// The step for one weight row: of the ranges `amax · c` for a few clip ratios `c ≤ 1`, the one
/// with the least squared rounding error (clipping a rare large weight refines every other).
fn weight_scale(row: &[f32]) -> f32 {
    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        return 1.0;
    }
    let mut squares = vec![0f32; row.len()];
    let errors = CLIP_RATIOS.map(|c| {
        let (scale, inv) = (amax * c / W_MAX as f32, W_MAX as f32 / (amax * c));
        for (e, &v) in squares.iter_mut().zip(row) {
            let d = v - weight_step(v, inv) * scale;
            *e = d * d;
        }
        lane_sum(&squares)
    });
    // the first of the least errors (a fixed order, so the same choice every time)
    let best = (0..CLIP_RATIOS.len()).fold(0, |b, i| if errors[i] < errors[b] { i } else { b });
    amax * CLIP_RATIOS[best] / W_MAX as f32
}

/// The clip ratios [`weight_scale`] tries.
const CLIP_RATIOS: [f32; 16] =
    [1.0, 0.975, 0.95, 0.925, 0.9, 0.875, 0.85, 0.825, 0.8, 0.775, 0.75, 0.725, 0.7, 0.675, 0.65, 0.625];

/// `v · inv` rounded to the nearest integer (by the 1.5 · 2^23 trick, which vectorises) and
/// clamped to the weight range.
#[inline(always)]
fn weight_step(v: f32, inv: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    ((v * inv + MAGIC) - MAGIC).clamp(-W_MAX as f32, W_MAX as f32)
}

/// Quantises one weight row into `q`; returns its step (NaN when the row holds a non-finite
/// value, so the outputs are NaN as in f32) and the sum of its integers.
fn quantize_weight_row(row: &[f32], q: &mut [i8]) -> (f32, i32) {
    let scale = weight_scale(row);
    let inv = 1.0 / scale;
    let mut sum = 0i32;
    for (d, &v) in q.iter_mut().zip(row) {
        *d = weight_step(v, inv) as i8;
        sum += i32::from(*d);
    }
    (if row.iter().all(|v| v.is_finite()) { scale } else { f32::NAN }, sum)
}

/// Activations quantised per row (token), ready for any number of [`QuantizedLinear`]s of the
/// same input width.
pub struct QuantizedRows {
    m: usize,
    k: usize,
    kp: usize,
    q: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

fn padded(k: usize) -> usize {
    k.div_ceil(K_ALIGN).max(1) * K_ALIGN
}

impl QuantizedLinear {
    /// Quantises `weight [n, k]` (row-major, as PyTorch stores it); `bias` has `n` values.
    pub fn new(weight: &[f32], bias: &[f32], (n, k): (usize, usize)) -> QuantizedLinear {
        assert!(weight.len() == n * k && bias.len() == n, "weight [{n}, {k}] and bias [{}]", bias.len());
        let kp = padded(k);
        let mut w = vec![0i8; n * kp];
        // rows in parallel: each row's result depends on that row only
        let rows: Vec<(f32, i32)> =
            weight.par_chunks(k.max(1)).zip(w.par_chunks_mut(kp)).map(|(row, q)| quantize_weight_row(row, q)).collect();
        let (scales, col_sums) = rows.into_iter().unzip();
        let amx = OnceLock::new();
        if Isa::detect() == Isa::Amx {
            // at load, not on the first request of 8 rows or more
            let _ = amx.set(super::amx_int8::pack_weights(&w, n, kp));
        }
        QuantizedLinear { n, k, w, kp, scales, col_sums, bias: bias.to_vec(), amx }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Bytes of the quantised weight.
    pub fn weight_bytes(&self) -> usize {
        self.w.len()
    }

    /// `dst[i, ..n] = x[i] · Wᵀ + b`, `dst` rows `dst_rs` apart, on the CPU's best path for
    /// `x`'s rows.
    pub fn forward_into(&self, x: &QuantizedRows, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        self.forward_with(Isa::for_rows(x.m), x, dst, dst_rs)
    }

    /// As [`Self::forward_into`], on the path `isa` (which the CPU must have).
    pub fn forward_with(&self, isa: Isa, x: &QuantizedRows, dst: &mut [MaybeUninit<f32>], dst_rs: usize) {
        assert_eq!((x.k, x.kp), (self.k, self.kp), "activations of width {} for a weight of width {}", x.k, self.k);
        assert!(Isa::available().contains(&isa), "this CPU cannot run {}", isa.name());
        if isa == Isa::Amx {
            let tiles = self.amx.get_or_init(|| super::amx_int8::pack_weights(&self.w, self.n, self.kp));
            let finish = |r: usize, c0: usize, dots: &[i32], out: &mut [f32]| self.finish_row(x, r, c0, dots, out);
            return super::amx_int8::forward(&x.q, (x.m, x.kp), (tiles, self.n), finish, dst, dst_rs);
        }
        // Each block's whole walk is compiled for its instructions, so the dot products inline.
        for_each_block(dst, dst_rs, (x.m, self.n), (BLOCK_ROWS, BLOCK_COLS), |block| match isa {
            // SAFETY: checked above that the CPU has AVX-512 VNNI.
            Isa::Avx512Vnni => unsafe {
                simd::with_avx512_vnni(|| {
                    walk_tiles::<4, 4>(block, |r0, c0, nr, nc| self.tile(isa, block, x, (r0, c0), (nr, nc)))
                })
            },
            // SAFETY: checked above that the CPU has AVX-VNNI.
            Isa::AvxVnni => unsafe {
                simd::with_avx_vnni(|| {
                    walk_tiles::<3, 4>(block, |r0, c0, nr, nc| self.tile(isa, block, x, (r0, c0), (nr, nc)))
                })
            },
            // SAFETY: checked above that the CPU has AVX2.
            Isa::Avx2 => unsafe {
                simd::with_avx2(|| {
                    walk_tiles::<2, 4>(block, |r0, c0, nr, nc| self.tile(isa, block, x, (r0, c0), (nr, nc)))
                })
            },
            Isa::Scalar => walk_tiles::<1, 1>(block, |r0, c0, nr, nc| self.tile(isa, block, x, (r0, c0), (nr, nc))),
            Isa::Amx => unreachable!("the AMX path returned above"),
        });
    }

    /// Computes and writes the register tile of `nr × nc` outputs at `(r0, c0)`.
    #[inline(always)]
    fn tile(&self, isa: Isa, block: &Block, x: &QuantizedRows, (r0, c0): (usize, usize), (nr, nc): (usize, usize)) {
        let xs = |i: usize| &x.q[(r0 + i) * x.kp..(r0 + i + 1) * x.kp];
        let ws = |j: usize| &self.w[(c0 + j) * self.kp..(c0 + j + 1) * self.kp];
        macro_rules! tiles {
            ($dots:ident, $r:literal, $c:literal) => {
                match (nr, nc) {
                    ($r, $c) => self.finish(
                        block,
                        x,
                        (r0, c0),
                        simd::$dots::<$r, $c>(std::array::from_fn(xs), std::array::from_fn(ws)),
                    ),
                    ($r, 1) => self.finish(
                        block,
                        x,
                        (r0, c0),
                        simd::$dots::<$r, 1>(std::array::from_fn(xs), std::array::from_fn(ws)),
                    ),
                    (1, $c) => self.finish(
                        block,
                        x,
                        (r0, c0),
                        simd::$dots::<1, $c>(std::array::from_fn(xs), std::array::from_fn(ws)),
                    ),
                    _ => self.finish(
                        block,
                        x,
                        (r0, c0),
                        simd::$dots::<1, 1>(std::array::from_fn(xs), std::array::from_fn(ws)),
                    ),
                }
            };
        }
        match isa {
            // SAFETY: `forward_with` checked that the CPU has AVX-512 VNNI.
            Isa::Avx512Vnni => unsafe { tiles!(dots_avx512_vnni, 4, 4) },
            // SAFETY: `forward_with` checked that the CPU has AVX-VNNI.
            Isa::AvxVnni => unsafe { tiles!(dots_avx_vnni, 3, 4) },
            // SAFETY: `forward_with` checked that the CPU has AVX2.
            Isa::Avx2 => unsafe { tiles!(dots_avx2, 2, 4) },
            Isa::Amx => unreachable!("the AMX path does not walk register tiles"),
            Isa::Scalar => {
                let dot = xs(0).iter().zip(ws(0)).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                self.finish(block, x, (r0, c0), [[dot]])
            }
        }
    }

    /// Writes the tile at `(r0, c0)` from its integer dot products: zero points out, scales
    /// and bias in.
    #[inline(always)]
    fn finish<const R: usize, const C: usize>(
        &self,
        block: &Block,
        x: &QuantizedRows,
        (r0, c0): (usize, usize),
        dots: [[i32; C]; R],
    ) {
        for (i, row) in dots.iter().enumerate() {
            let mut out = [0f32; C];
            self.finish_row(x, r0 + i, c0, row, &mut out);
            block.write_row(r0 + i, c0, &out);
        }
    }

    /// Outputs `(r, c0..c0 + dots.len())` into `out` from their integer dot products: zero
    /// points out, scales and bias in (the one formula of every path).
    #[inline(always)]
    fn finish_row(&self, x: &QuantizedRows, r: usize, c0: usize, dots: &[i32], out: &mut [f32]) {
        let c = dots.len();
        let (sums, scales, bias) = (&self.col_sums[c0..c0 + c], &self.scales[c0..c0 + c], &self.bias[c0..c0 + c]);
        let (zero, scale) = (x.zeros[r], x.scales[r]);
        for j in 0..c {
            out[j] = (dots[j] - zero * sums[j]) as f32 * (scale * scales[j]) + bias[j];
        }
    }
}

impl QuantizedRows {
    /// Quantises the `m` rows of `x [m, k]`.
    pub fn new(x: &[f32], (m, k): (usize, usize)) -> QuantizedRows {
        assert!(x.len() == m * k && k > 0, "activations [{m}, {k}]");
        let kp = padded(k);
        // zero rows up to a multiple of 32, which the AMX path reads as whole tiles
        let mut q = vec![0u8; m.next_multiple_of(32) * kp];
        // rows in parallel: each row's values depend on that row only
        let (scales, zeros): (Vec<f32>, Vec<i32>) = x
            .par_chunks(k.max(1))
            .zip(q.par_chunks_mut(kp))
            .with_min_len(16)
            .map(|(row, q)| quantize_row(row, &mut q[..k]))
            .unzip();
        QuantizedRows { m, k, kp, q, scales, zeros }
    }
}

super::simd::simd_dispatch! {
    /// Fills `q` with `row` in 128 steps over `[min(row, 0), max(row, 0)]`; returns the step
    /// and the zero point (NaN as the step when `row` holds a non-finite value, so the outputs
    /// are NaN as in f32).
    fn quantize_row_into(row: &[f32], q: &mut [u8], out: &mut (f32, i32)) {
        // over 16 lanes so that it vectorises (min and max are exact, so any order gives the
        // same values); `v · 0` is 0 for every finite value and NaN for any other
        let (mut lo16, mut hi16, mut nan16) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                lo16[i] = if c[i] < lo16[i] { c[i] } else { lo16[i] };
                hi16[i] = if c[i] > hi16[i] { c[i] } else { hi16[i] };
                nan16[i] += c[i] * 0.0;
            }
        }
        let (mut lo, mut hi) = (0f32, 0f32);
        for &v in chunks.remainder().iter().chain(&lo16).chain(&hi16) {
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        let finite = chunks.remainder().iter().all(|v| v.is_finite()) && nan16.iter().all(|&z| z == 0.0);
        let scale = if hi > lo { (hi - lo) / X_MAX as f32 } else { 1.0 };
        let zero = (-lo / scale).round().clamp(0.0, X_MAX as f32);
        // round to nearest by the 1.5 · 2^23 trick (vectorises, unlike `round` and `as`)
        const MAGIC: f32 = 12_582_912.0;
        let (inv, shift) = (1.0 / scale, zero + MAGIC);
        for (d, &v) in q.iter_mut().zip(row) {
            let t = v * inv + shift;
            *d = (t.to_bits() as i32 - MAGIC.to_bits() as i32).clamp(0, X_MAX) as u8;
        }
        *out = (if finite { scale } else { f32::NAN }, zero as i32);
    }
}

fn quantize_row(row: &[f32], q: &mut [u8]) -> (f32, i32) {
    let mut out = (0.0, 0);
    quantize_row_into(row, q, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::buffer::filled;
    use crate::model::kernels::testing::on_threads;
    use crate::model::kernels::testing::uniform as data;

    fn run(isa: Isa, lin: &QuantizedLinear, x: &[f32], m: usize) -> Vec<f32> {
        let rows = QuantizedRows::new(x, (m, lin.k));
        filled(m * lin.n, |y| lin.forward_with(isa, &rows, y, lin.n))
    }

    #[test]
    fn every_path_the_cpu_has_gives_the_plain_rust_result_bit_for_bit() {
        for (m, n, k) in [(1, 1, 1), (37, 45, 200), (5, 9, 64), (50, 33, 300)] {
            let lin = QuantizedLinear::new(&data(n * k, 2, 0.2), &data(n, 3, 1.0), (n, k));
            let x = data(m * k, 1, 3.0);
            let want = run(Isa::Scalar, &lin, &x, m);
            for isa in Isa::available() {
                eprintln!("int8 linear ({m}, {n}, {k}) on {}", isa.name());
                let got = run(isa, &lin, &x, m);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{isa:?}"
                );
            }
        }
        let missing: Vec<&str> = [Isa::Amx, Isa::Avx512Vnni, Isa::AvxVnni, Isa::Avx2]
            .into_iter()
            .filter(|i| !Isa::available().contains(i))
            .map(Isa::name)
            .collect();
        if !missing.is_empty() {
            eprintln!("NOT CHECKED here (this CPU lacks them): {}", missing.join(", "));
        }
    }

    #[test]
    fn int8_is_within_two_percent_of_float32() {
        let (m, n, k) = (24, 64, 768);
        let (w, b, x) = (data(n * k, 5, 0.05), data(n, 6, 0.1), data(m * k, 7, 2.0));
        let got = run(Isa::detect(), &QuantizedLinear::new(&w, &b, (n, k)), &x, m);
        let mut worst = 0f32;
        let mut largest = 0f32;
        for i in 0..m {
            for j in 0..n {
                let exact: f32 =
                    b[j] + x[i * k..(i + 1) * k].iter().zip(&w[j * k..(j + 1) * k]).map(|(a, c)| a * c).sum::<f32>();
                worst = worst.max((got[i * n + j] - exact).abs());
                largest = largest.max(exact.abs());
            }
        }
        assert!(worst < 0.02 * largest, "worst error {worst} against outputs up to {largest}");
    }

    #[test]
    fn zero_rows_stay_exact_and_non_finite_inputs_give_nan() {
        let (n, k) = (3, 10);
        let lin = QuantizedLinear::new(&data(n * k, 8, 1.0), &[0.5, -1.0, 2.0], (n, k));
        let mut x = vec![0f32; 2 * k];
        assert_eq!(&run(Isa::detect(), &lin, &x, 2)[..3], &[0.5, -1.0, 2.0]);
        x[k + 4] = f32::INFINITY;
        assert!(run(Isa::detect(), &lin, &x, 2)[3..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn does_not_depend_on_thread_count() {
        let (m, n, k) = (130, 70, 96);
        let lin = QuantizedLinear::new(&data(n * k, 9, 0.3), &data(n, 10, 1.0), (n, k));
        let x = data(m * k, 11, 1.0);
        let f = || run(Isa::detect(), &lin, &x, m);
        assert_eq!(on_threads(1, f), on_threads(3, f));
    }
}
