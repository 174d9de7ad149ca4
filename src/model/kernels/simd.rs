//! The element-wise building blocks of the kernels: lane-parallel sums and dot products, `exp`
//! and `erf` written so that LLVM vectorises them, and [`simd_dispatch`], which compiles a loop
//! again for AVX-512 and AVX2 and picks one at run time.

/// Sum with 16 independent lanes, so the compiler can keep them in one SIMD register.
#[inline]
pub(crate) fn lane_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s = chunks.remainder().iter().sum::<f32>();
    for a in acc {
        s += a;
    }
    s
}

/// The largest value (−∞ for none), over 16 lanes so that it vectorises (the same value as in
/// any order: max is exact).
#[inline]
pub(crate) fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    chunks.remainder().iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

#[inline]
pub(crate) fn lane_dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut cx = xs.chunks_exact(16);
    let mut cy = ys.chunks_exact(16);
    for (a, b) in (&mut cx).zip(&mut cy) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    let mut s: f32 = cx.remainder().iter().zip(cy.remainder()).map(|(a, b)| a * b).sum();
    for a in acc {
        s += a;
    }
    s
}

/// Below this, [`fast_exp`] returns exactly 0 (e^-80 ≈ 1.8e-35). Tiny results must not become
/// subnormal floats: a softmax row of masked keys full of them sends every later matmul down the
/// CPU's slow subnormal path (the README's speed section has the measurement).
const EXP_FLUSH_BELOW: f32 = -80.0;

/// `exp(x)` for f32, written so the compiler vectorises it: 2^k times a degree-6 polynomial on
/// |r| ≤ ln2/2 (relative error about 2e-7); 0 below [`EXP_FLUSH_BELOW`].
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // round to nearest by the 1.5 * 2^23 trick (vectorises, unlike floor/round calls)
    const MAGIC: f32 = 12_582_912.0;
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // k as an integer from t's bits (t = 1.5 * 2^23 + k exactly): integer ops vectorise, while
    // a float-to-int `as` cast (saturating, NaN-checked) made the whole loop scalar
    let ki = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let e = p * f32::from_bits(((ki + 127) as u32) << 23);
    if x < EXP_FLUSH_BELOW {
        0.0
    } else {
        e
    }
}

/// `erf(x)` for f32 as a rational function on [-4, 4] (erf is ±1 in f32 beyond), vectorisable.
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 + -2.101_024e-6;
    let p = p * x2 + -5.692_506_4e-5;
    let p = p * x2 + -7.349_906_3e-4;
    let p = p * x2 + -2.954_600_1e-3;
    let p = p * x2 + -1.609_603_3e-2;
    let q = -1.456_607_2e-5f32;
    let q = q * x2 + -2.133_740_6e-4;
    let q = q * x2 + -1.682_827e-3;
    let q = q * x2 + -7.373_329_2e-3;
    let q = q * x2 + -1.426_474e-2;
    (x * p / q).clamp(-1.0, 1.0)
}

/// Defines `$name`, which runs `$body` compiled for AVX-512 or else AVX2 when the CPU has it
/// (checked at run time; the binary itself targets baseline x86-64) and as compiled otherwise.
/// For the element-wise loops that LLVM vectorises: 16 or 8 lanes instead of SSE's 4. Both versions do the
/// same float operations in the same order (Rust never fuses a multiply and an add on its own),
/// so the results are bitwise the same on either path.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 3.99e-4; // within ±79.8 for exp, ±7.98 for erf
            let e = (x as f64).exp();
            worst_exp = worst_exp.max(((fast_exp(x) as f64 - e) / e).abs());
            let xe = x / 10.0;
            worst_erf = worst_erf.max((fast_erf(xe) as f64 - libm::erf(xe as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        // never subnormal: masked attention scores (about -3.4e38) and far tails give exact zeros
        for x in [-3.4e38f32, -1e6, -87.5, -80.5] {
            assert_eq!(fast_exp(x), 0.0, "exp({x})");
        }
        assert!(fast_exp(-79.9).is_normal());
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
    }
}
