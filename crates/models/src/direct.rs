//! What the direct kernels share (the depthwise convolution in `conv`, the max-pool in
//! `pool`): a block of outputs of a row computed in a register from the input plane itself,
//! each window column's input run loaded with the lanes outside the plane masked (never
//! read, filled with the padding's value), so no padded copy of the plane is made. Stride 2
//! loads twice the columns and keeps the even ones. Two widths, behind one trait the kernels
//! are generic over: [`Avx512`] (16 lanes, mask registers) and [`Avx2`] (8 lanes, vector
//! masks). Each kernel is compiled once per width inside a `#[target_feature]` function,
//! which the trait's `#[inline(always)]` operations are inlined into.

use std::arch::x86_64::*;

/// The widest window the direct kernels take (the backbones' are 2, 3 and 5).
pub(crate) const MAX_K: usize = 16;

/// One vector width's operations.
///
/// # Safety
/// Every method may only run on a CPU with the implementation's features (AVX-512F; AVX2
/// and FMA), inside a function compiled for them.
pub(crate) unsafe trait Simd {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// A set of lanes.
    type Mask: Copy;
    const LANES: usize;

    /// Lanes `lo..hi`.
    unsafe fn mask(lanes: (u32, u32)) -> Self::Mask;

    /// The lanes of `run` in `row`: columns `col + s * l` (`s` 1 or 2), `fill` outside the
    /// row. `row` must point at a row of the `w` columns `run` was made for ([`runs`]); the
    /// lanes outside it are not accessed.
    unsafe fn load(row: *const f32, run: Run<Self::Mask>, s: usize, fill: Self::V) -> Self::V;

    unsafe fn splat(v: f32) -> Self::V;

    /// `a * b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;

    /// Per lane `a > b ? a : b` (`maxps`: NaN in `a` gives `b`).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;

    /// Per lane `a < b ? a : b`.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;

    /// Stores the lanes of `keep` (the first ones of a block) at `at`.
    unsafe fn store(at: *mut f32, keep: Self::Mask, v: Self::V);
}

/// Where one window column's run of an output block starts in an input row (its first
/// lane's column, which may lie in the left padding), with the masks of its one (stride 1)
/// or two (stride 2) loads.
#[derive(Clone, Copy)]
pub(crate) struct Run<M> {
    col: isize,
    lo: M,
    hi: M,
}

/// The lanes of `lanes` columns from input column `c` that lie in a row of `w`, as the
/// range of lane indices `lo..hi`.
fn inside(c: isize, w: usize, lanes: usize) -> (u32, u32) {
    let lanes = lanes as isize;
    let lo = (-c).clamp(0, lanes) as u32;
    let hi = (w as isize - c).clamp(0, lanes) as u32;
    (lo, hi.max(lo))
}

/// The runs of window columns `0..k` (at most [`MAX_K`]) for the block of outputs from
/// column `ox`, with stride `s` and `left` columns of padding, over rows of `w`; the same
/// for every row.
///
/// # Safety
/// As [`Simd`].
#[inline(always)]
pub(crate) unsafe fn runs<S: Simd>(
    ox: usize,
    s: usize,
    left: usize,
    w: usize,
    k: usize,
) -> [Run<S::Mask>; MAX_K] {
    let lanes = S::LANES;
    // SAFETY (the mask calls): forwarded.
    let none = unsafe { S::mask((0, 0)) };
    let mut runs = [Run {
        col: 0,
        lo: none,
        hi: none,
    }; MAX_K];
    for (j, r) in runs.iter_mut().enumerate().take(k) {
        let col = (ox * s + j) as isize - left as isize;
        let (lo, hi) = (
            inside(col, w, lanes),
            inside(col + lanes as isize, w, lanes),
        );
        *r = unsafe {
            Run {
                col,
                lo: S::mask(lo),
                hi: S::mask(hi),
            }
        };
    }
    runs
}

/// AVX-512F: 16 lanes, mask registers.
pub(crate) struct Avx512;

// SAFETY: every method uses AVX-512F only, and callers hold the trait's contract.
unsafe impl Simd for Avx512 {
    type V = __m512;
    type Mask = __mmask16;
    const LANES: usize = 16;

    #[inline(always)]
    unsafe fn mask((lo, hi): (u32, u32)) -> __mmask16 {
        let below = |n: u32| ((1u32 << n) - 1) as u16;
        below(hi) & !below(lo)
    }

    #[inline(always)]
    unsafe fn load(row: *const f32, run: Run<__mmask16>, s: usize, fill: __m512) -> __m512 {
        // SAFETY: only the lanes inside the row are read (the trait's contract).
        unsafe {
            let lo = _mm512_mask_loadu_ps(fill, run.lo, row.wrapping_offset(run.col));
            if s == 1 {
                return lo;
            }
            let hi = _mm512_mask_loadu_ps(fill, run.hi, row.wrapping_offset(run.col + 16));
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            _mm512_permutex2var_ps(lo, even, hi)
        }
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }

    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn store(at: *mut f32, keep: __mmask16, v: __m512) {
        // SAFETY: the caller owns the kept lanes at `at`.
        unsafe { _mm512_mask_storeu_ps(at, keep, v) }
    }
}

/// AVX2 with FMA: 8 lanes; masked loads and stores with `VMASKMOVPS`, which does not
/// touch the masked-off lanes either.
pub(crate) struct Avx2;

// SAFETY: every method uses AVX and AVX2 (and FMA in `fma`) only, and callers hold the
// trait's contract.
unsafe impl Simd for Avx2 {
    type V = __m256;
    /// All bits set in each lane of the set.
    type Mask = __m256i;
    const LANES: usize = 8;

    #[inline(always)]
    unsafe fn mask((lo, hi): (u32, u32)) -> __m256i {
        // SAFETY: AVX2 (the trait's contract).
        unsafe {
            let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let ge = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo as i32 - 1));
            let lt = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), idx);
            _mm256_and_si256(ge, lt)
        }
    }

    #[inline(always)]
    unsafe fn load(row: *const f32, run: Run<__m256i>, s: usize, fill: __m256) -> __m256 {
        // SAFETY: only the lanes inside the row are read (the trait's contract);
        // VMASKMOVPS suppresses faults on the others.
        unsafe {
            let one = |col: isize, m: __m256i| {
                let v = _mm256_maskload_ps(row.wrapping_offset(col), m);
                _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m))
            };
            let lo = one(run.col, run.lo);
            if s == 1 {
                return lo;
            }
            let hi = one(run.col + 8, run.hi);
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs reordered.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                even,
            )))
        }
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }

    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }

    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }

    #[inline(always)]
    unsafe fn store(at: *mut f32, keep: __m256i, v: __m256) {
        // SAFETY: the caller owns the kept lanes at `at`; the others are not touched.
        unsafe { _mm256_maskstore_ps(at, keep, v) }
    }
}
