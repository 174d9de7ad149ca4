//! The integer dot products of the int8 linear (`qlinear.rs`), one function per instruction
//! set, each returning every `x[i] · w[j]` of a register tile over rows zero-padded to a
//! multiple of 64 bytes; and `with_*`, which run a closure compiled for those instructions so
//! that the dot products inline into it. Off x86-64 only plain Rust runs (`Isa::available`),
//! and these are never called.

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use other::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Runs `f` compiled with AVX-512 VNNI (so the dot products inline into it).
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn with_avx512_vnni(f: impl FnOnce()) {
        f()
    }

    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn with_avx_vnni(f: impl FnOnce()) {
        f()
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn with_avx2(f: impl FnOnce()) {
        f()
    }

    /// Every `x[i] · w[j]` over rows padded to a multiple of 64 bytes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    pub unsafe fn dots_avx512_vnni<const R: usize, const C: usize>(x: [&[u8]; R], w: [&[i8]; C]) -> [[i32; C]; R] {
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        for p in (0..x[0].len()).step_by(64) {
            // SAFETY: every row is a multiple of 64 bytes long and `p` steps through it.
            let xv: [__m512i; R] = std::array::from_fn(|i| unsafe { _mm512_loadu_si512(x[i].as_ptr().add(p).cast()) });
            for j in 0..C {
                // SAFETY: as above.
                let wv = unsafe { _mm512_loadu_si512(w[j].as_ptr().add(p).cast()) };
                for i in 0..R {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv[i], wv);
                }
            }
        }
        std::array::from_fn(|i| std::array::from_fn(|j| _mm512_reduce_add_epi32(acc[i][j])))
    }

    /// # Safety
    /// The CPU must have AVX2 and AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    pub unsafe fn dots_avx_vnni<const R: usize, const C: usize>(x: [&[u8]; R], w: [&[i8]; C]) -> [[i32; C]; R] {
        dots256(x, w, |acc, xv, wv| _mm256_dpbusd_avx_epi32(acc, xv, wv))
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn dots_avx2<const R: usize, const C: usize>(x: [&[u8]; R], w: [&[i8]; C]) -> [[i32; C]; R] {
        let ones = _mm256_set1_epi16(1);
        dots256(x, w, |acc, xv, wv| {
            // u8 · i8 pairs: exact in 16 bits because 2 · 255 · 63 < 32767
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones))
        })
    }

    /// The 32-byte loop of both AVX2 paths: `step(acc, x, w)` adds the products of 32 bytes
    /// into eight 32-bit lanes. Inlined into its callers, so it compiles with their features.
    #[inline(always)]
    fn dots256<const R: usize, const C: usize>(
        x: [&[u8]; R],
        w: [&[i8]; C],
        step: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) -> [[i32; C]; R] {
        // SAFETY: both callers run only where the CPU has AVX2.
        let mut acc = [[unsafe { _mm256_setzero_si256() }; C]; R];
        for p in (0..x[0].len()).step_by(32) {
            // SAFETY: every row is a multiple of 64 bytes long and `p` steps through it by 32.
            let xv: [__m256i; R] = std::array::from_fn(|i| unsafe { _mm256_loadu_si256(x[i].as_ptr().add(p).cast()) });
            for j in 0..C {
                // SAFETY: as above.
                let wv = unsafe { _mm256_loadu_si256(w[j].as_ptr().add(p).cast()) };
                for i in 0..R {
                    acc[i][j] = step(acc[i][j], xv[i], wv);
                }
            }
        }
        // SAFETY: as for the accumulators.
        acc.map(|row| unsafe { reduce(row) })
    }

    /// The lane sums of each accumulator, four at a time with horizontal adds (integer sums:
    /// any order gives the same result).
    #[target_feature(enable = "avx2")]
    fn reduce<const C: usize>(acc: [__m256i; C]) -> [i32; C] {
        let mut out = [0i32; C];
        let mut j = 0;
        while j + 4 <= C {
            let ab = _mm256_hadd_epi32(acc[j], acc[j + 1]);
            let cd = _mm256_hadd_epi32(acc[j + 2], acc[j + 3]);
            let abcd = _mm256_hadd_epi32(ab, cd);
            let s = _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256::<1>(abcd));
            // SAFETY: `out[j..j + 4]` is 16 bytes inside `out` (`j + 4 <= C`).
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(j).cast(), s) };
            j += 4;
        }
        for (o, &v) in out[j..].iter_mut().zip(&acc[j..]) {
            *o = hsum(v);
        }
        out
    }

    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod other {
    #[inline]
    pub unsafe fn dots_avx512_vnni<const R: usize, const C: usize>(_: [&[u8]; R], _: [&[i8]; C]) -> [[i32; C]; R] {
        unreachable!()
    }
    pub use dots_avx512_vnni as dots_avx_vnni;
    pub use dots_avx512_vnni as dots_avx2;
    pub unsafe fn with_avx512_vnni(_: impl FnOnce()) {
        unreachable!()
    }
    pub use with_avx512_vnni as with_avx_vnni;
    pub use with_avx512_vnni as with_avx2;
}
