//! What the direct AVX-512 kernels share (the depthwise convolution in `conv`, the max-pool
//! in `pool`): a block of 16 outputs of a row computed in a register from the input plane
//! itself, each window column's input run loaded with the lanes outside the plane masked
//! (never read, filled with the padding's value), so no padded copy of the plane is made.
//! Stride 2 loads 32 columns and keeps the even ones.

use std::arch::x86_64::*;

/// The widest window the direct kernels take (the backbones' are 2, 3 and 5).
pub(crate) const MAX_K: usize = 16;

/// Where one window column's run of a 16-output block starts in an input row (its first
/// lane's column, which may lie in the left padding) and the masks of its one (stride 1) or
/// two (stride 2) 16-lane loads.
#[derive(Clone, Copy)]
pub(crate) struct Run {
    col: isize,
    lo: __mmask16,
    hi: __mmask16,
}

/// The lanes of 16 columns from input column `c` that lie in a row of `w`.
fn inside(c: isize, w: usize) -> __mmask16 {
    let lo = (-c).clamp(0, 16) as u32;
    let hi = (w as isize - c).clamp(0, 16) as u32;
    let below = |n: u32| ((1u32 << n) - 1) as u16;
    below(hi) & !below(lo)
}

/// The first `n` of 16 lanes (`n` at most 16): the outputs a block stores.
pub(crate) fn first(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// The runs of window columns `0..k` for the block of outputs from column `ox`, with stride
/// `s` and `left` columns of padding, over rows of `w`; the same for every row.
pub(crate) fn runs(ox: usize, s: usize, left: usize, w: usize, k: usize) -> [Run; MAX_K] {
    let mut runs = [Run {
        col: 0,
        lo: 0,
        hi: 0,
    }; MAX_K];
    for (j, r) in runs.iter_mut().enumerate().take(k) {
        let col = (ox * s + j) as isize - left as isize;
        *r = Run {
            col,
            lo: inside(col, w),
            hi: inside(col + 16, w),
        };
    }
    runs
}

/// The 16 lanes of `run` in `row`: columns `col + s * l` (stride `s` 1 or 2), `fill` where
/// they lie outside the row.
///
/// # Safety
/// The CPU must have AVX-512F; `row` must point at a row of the `w` columns `run` was made
/// for (the lanes outside it are not accessed).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn load(row: *const f32, run: Run, s: usize, fill: __m512) -> __m512 {
    // SAFETY: only the lanes inside the row are read (caller).
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
