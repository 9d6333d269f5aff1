//! bf16 matrix products on the CPU: bf16 operands, f32 accumulation and f32 results, on
//! AVX512-BF16's dot-product instruction (`VDPBF16PS`: 16 lanes, each adding two bf16
//! products to an f32 accumulator, twice the multiplications of an f32 FMA per instruction).
//!
//! The backbones' bf16 CPU path (`dtype = "bf16"` on the CPU) runs every dense convolution
//! (im2col, 1x1 and Winograd products) and linear layer through [`gemm`]: the weights are
//! rounded to bf16 once, at load ([`PackedA`]), the activations when a block of them is
//! packed for the kernel, and everything between the products (bias, activation, pooling,
//! depthwise convolutions, the Winograd transforms) stays f32. Rounding is to nearest even,
//! as PyTorch's and oneDNN's are.
//!
//! The kernel: an 8 x 48 tile of the output in 24 accumulator registers; each step loads
//! three vectors of 16 column pairs of B and broadcasts one pair of A per row. Products are
//! blocked by 128 pairs of the depth, so a packed panel of B (24 KB) stays in L1 while every
//! row panel of A passes over it. The AMX tiles of Sapphire Rapids and later are not used
//! yet (no machine this project has run on exposes them): such CPUs all have AVX512-BF16 and
//! run this kernel, and the manifest records which kernel ran.
//!
//! Two kernels compute the same products (the same values on Intel's `VDPBF16PS`, bit for bit
//! as the tests check there: each bf16 product is exact in f32, and both add them in the same
//! order with f32 rounding; other vendors' may round differently, within f32's error):
//! - [`Kernel::Dot`]: `VDPBF16PS`, where it is fast (where it issues as often as an FMA, it
//!   does twice the multiplications);
//! - [`Kernel::Widened`]: the bf16 operands widened back to f32 (a shift or a mask: bf16 is
//!   the top half of an f32) and multiplied by ordinary FMAs, where `VDPBF16PS` is slow.
//!   Intel's Sapphire and Emerald Rapids issue it once every 2.3 cycles against 1.85 FMAs a
//!   cycle (measured on an Emerald Rapids vCPU), so there it does half the f32 rate; those
//!   CPUs' fast bf16 unit is AMX.
//!
//! [`kernel`] picks one per process by timing both on a small product (a few milliseconds,
//! once); `GEOLOC_BF16_KERNEL=dot|widened` forces one. Chosen at run time: [`available`] says
//! whether this CPU has AVX512-F, -BW and -BF16 (the widened kernel needs only AVX512-F, but
//! one bf16 path needs one check). Callers must check it; the entry points assert it.

use crate::winograd::Out;
use rayon::prelude::*;

/// Rows of A per micro-tile.
pub(crate) const MR: usize = 8;
/// Vectors of 16 columns per micro-tile.
const NV: usize = 3;
/// Columns per micro-tile.
const NR: usize = 16 * NV;
/// Pairs of the depth per block.
const KC: usize = 128;

/// Whether this CPU runs the bf16 kernels (AVX512-F, AVX512-BW and AVX512-BF16). std caches
/// the detection.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which instructions multiply (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX512-BF16's `VDPBF16PS`.
    Dot,
    /// bf16 widened to f32, AVX-512 FMAs.
    Widened,
}

impl Kernel {
    /// `avx512-bf16` or `avx512-bf16 widened`: the path name featurize records.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Dot => "avx512-bf16",
            Kernel::Widened => "avx512-bf16 widened",
        }
    }
}

/// This process's kernel: `GEOLOC_BF16_KERNEL` (`dot` or `widened`) where set, else the faster
/// of the two on a `[64, 512] x [512, 192]` product (best of 3 each), decided once. `None`
/// where the CPU has no bf16 path ([`available`]).
pub fn kernel() -> Option<Kernel> {
    static CHOSEN: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if !available() {
            return None;
        }
        match std::env::var("GEOLOC_BF16_KERNEL").as_deref() {
            Ok("dot") => return Some(Kernel::Dot),
            Ok("widened") => return Some(Kernel::Widened),
            _ => {}
        }
        let (m, k, n) = (64, 512, 192);
        let a = PackedA::pairs(&vec![0.5; m * k], m, k).with_wide();
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let mut time = |kernel| {
            (0..3)
                .map(|_| {
                    let t = std::time::Instant::now();
                    let src = B::Rows {
                        ptr: b.as_ptr(),
                        rs: n,
                    };
                    // SAFETY: available() above; c is [m, n], b [k, n].
                    unsafe {
                        drive(
                            kernel,
                            &a,
                            0..a.panels(),
                            src,
                            0..n,
                            c.as_mut_ptr(),
                            n,
                            false,
                        )
                    };
                    t.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        let (dot, widened) = (time(Kernel::Dot), time(Kernel::Widened));
        Some(if dot <= widened {
            Kernel::Dot
        } else {
            Kernel::Widened
        })
    })
}

/// `x` rounded to bf16 (to nearest, ties to even), as its 16 bits. NaN stays NaN.
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and widened back to f32 (what the kernels multiply).
#[cfg(test)]
fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Two bf16 values in one 32-bit word, the low half first: the pair one lane of
/// `VDPBF16PS` multiplies.
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// The left operand `[m, k]` of [`gemm`] (a layer's weights), rounded to bf16 and packed
/// once: panels of [`MR`] rows, each `[pairs of k][MR]` words of two bf16 (zero past `m`
/// and `k`), and for [`Kernel::Widened`] the same values widened to f32 once, here, rather
/// than on every product.
#[derive(Debug, Clone)]
pub(crate) struct PackedA {
    words: Vec<u32>,
    /// `words` as f32, `[panel][pair][MR][low, high]`: [`Kernel::Widened`]'s operand (empty
    /// where this process runs [`Kernel::Dot`]).
    wide: Vec<f32>,
    m: usize,
    k: usize,
    /// Pairs of k: `ceil(k / 2)`.
    kp: usize,
}

impl PackedA {
    /// Packs a row-major `[m, k]` f32 matrix for this process's [`kernel`].
    pub(crate) fn new(a: &[f32], m: usize, k: usize) -> Self {
        let packed = PackedA::pairs(a, m, k);
        match kernel() {
            Some(Kernel::Widened) => packed.with_wide(),
            _ => packed,
        }
    }

    /// The bf16 pairs alone ([`Kernel::Dot`]'s operand).
    fn pairs(a: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(a.len(), m * k, "an [m, k] matrix");
        let kp = k.div_ceil(2);
        let panels = m.div_ceil(MR);
        let mut words = vec![0u32; panels * kp * MR];
        for (p, panel) in words.chunks_exact_mut(kp * MR).enumerate() {
            for r in 0..MR.min(m - p * MR) {
                let row = &a[(p * MR + r) * k..(p * MR + r + 1) * k];
                for q in 0..kp {
                    let hi = row.get(2 * q + 1).copied().unwrap_or(0.0);
                    panel[q * MR + r] = pair(row[2 * q], hi);
                }
            }
        }
        PackedA {
            words,
            wide: Vec::new(),
            m,
            k,
            kp,
        }
    }

    /// With [`Kernel::Widened`]'s f32 copy too.
    fn with_wide(mut self) -> Self {
        self.wide = self
            .words
            .iter()
            .flat_map(|&w| [f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000)])
            .collect();
        self
    }

    /// Rows.
    pub(crate) fn m(&self) -> usize {
        self.m
    }

    /// Columns (the products' depth).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }
}

/// The right operand `[k, n]` of [`gemm`].
#[derive(Clone, Copy)]
pub(crate) enum B<'a> {
    /// Row-major f32, rows `rs` apart: rounded to bf16 a block at a time as the kernel
    /// takes it. `ptr` must hold `k` rows of the columns asked for.
    Rows { ptr: *const f32, rs: usize },
    /// The transpose of a row-major `[n, k]` matrix already rounded and paired,
    /// `[n][pairs of k]` (see [`pair_rows`]): a linear layer's input.
    Pairs(&'a [u32]),
}

// SAFETY: `Rows` is read only, by calls that each read disjoint columns or the same data.
unsafe impl Send for B<'_> {}
unsafe impl Sync for B<'_> {}

/// The rows of a row-major `[n, k]` f32 matrix rounded to bf16 and paired along `k`:
/// `[n][ceil(k / 2)]`, the form [`B::Pairs`] takes.
pub(crate) fn pair_rows(x: &[f32], n: usize, k: usize) -> Vec<u32> {
    assert_eq!(x.len(), n * k, "an [n, k] matrix");
    let kp = k.div_ceil(2);
    let mut out = vec![0u32; n * kp];
    out.par_chunks_mut(kp.max(1))
        .zip(x.par_chunks(k.max(1)))
        .for_each(|(dst, row)| {
            for (q, d) in dst.iter_mut().enumerate() {
                *d = pair(row[2 * q], row.get(2 * q + 1).copied().unwrap_or(0.0));
            }
        });
    out
}

thread_local! {
    /// Each thread's packed panel of B, kept between calls.
    static PANEL: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c[m, n] (+)= a @ b` on this thread: `c` row-major with rows `ldc` apart, added to when
/// `accumulate`, else overwritten.
///
/// # Safety
/// [`available`] must be true; `c` must hold `a.m()` rows of `n` columns `ldc` apart, and
/// `b` the `[a.k(), n]` matrix its variant describes.
pub(crate) unsafe fn gemm(
    a: &PackedA,
    b: B<'_>,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let kernel = kernel().expect("the bf16 kernels need AVX512-BF16");
    // SAFETY: forwarded.
    unsafe { drive(kernel, a, 0..a.panels(), b, 0..n, c, ldc, accumulate) }
}

/// [`gemm`] on rayon's pool: split by columns when there are enough of them, else by row
/// panels (a linear layer's small batch).
///
/// # Safety
/// As [`gemm`].
pub(crate) unsafe fn gemm_par(
    a: &PackedA,
    b: B<'_>,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let kernel = kernel().expect("the bf16 kernels need AVX512-BF16");
    let threads = rayon::current_num_threads();
    let col_tiles = n.div_ceil(NR);
    let out = Out(c);
    if col_tiles >= 2 * threads || col_tiles >= a.panels() {
        let per = col_tiles.div_ceil(threads).max(1) * NR;
        (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
            let cols = t * per..((t + 1) * per).min(n);
            // SAFETY: each task writes its own columns of c.
            unsafe {
                drive(
                    kernel,
                    a,
                    0..a.panels(),
                    b,
                    cols,
                    out.at(0),
                    ldc,
                    accumulate,
                )
            }
        });
    } else {
        let per = a.panels().div_ceil(threads).max(1);
        (0..a.panels().div_ceil(per)).into_par_iter().for_each(|t| {
            let panels = t * per..((t + 1) * per).min(a.panels());
            // SAFETY: each task writes its own rows of c.
            unsafe { drive(kernel, a, panels, b, 0..n, out.at(0), ldc, accumulate) }
        });
    }
}

/// Row panels `panels` of A times columns `cols` of B into the same block of C.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn drive(
    kernel: Kernel,
    a: &PackedA,
    panels: std::ops::Range<usize>,
    b: B<'_>,
    cols: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    PANEL.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < KC * NR {
            buf.resize(KC * NR, 0);
        }
        assert!(
            kernel == Kernel::Dot || a.wide.len() == 2 * a.words.len(),
            "the widened kernel needs PackedA's f32 copy"
        );
        // SAFETY: forwarded; the CPU has the features (checked by the entry points).
        unsafe { x86::drive(kernel, a, panels, b, cols, c, ldc, accumulate, &mut buf) }
    });
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernel, a, panels, b, cols, c, ldc, accumulate);
        unreachable!("the bf16 kernels are x86-64 only, and `available` says so");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kernel, PackedA, B, KC, MR, NR, NV};
    use std::arch::x86_64::*;

    /// See [`super::drive`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn drive(
        kernel: Kernel,
        a: &PackedA,
        panels: std::ops::Range<usize>,
        b: B<'_>,
        cols: std::ops::Range<usize>,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        buf: &mut [u32],
    ) {
        let kp = a.kp;
        let mut tile = [0f32; MR * NR];
        for q0 in (0..kp).step_by(KC) {
            let kq = KC.min(kp - q0);
            // The first block of the depth starts from zero unless adding to c.
            let load = accumulate || q0 > 0;
            let mut j0 = cols.start;
            while j0 < cols.end {
                let nc = NR.min(cols.end - j0);
                // SAFETY: b holds the [k, n] matrix (caller); buf holds KC * NR words.
                unsafe { pack_b(b, a.k, q0, kq, j0, nc, buf.as_mut_ptr()) };
                let vecs = nc.div_ceil(16);
                let mask = match nc % 16 {
                    0 => 0xffff,
                    r => (1u16 << r) - 1,
                };
                for p in panels.clone() {
                    let rows = MR.min(a.m - p * MR);
                    let ap = a.words.as_ptr().wrapping_add((p * kp + q0) * MR);
                    let aw = a.wide.as_ptr().wrapping_add((p * kp + q0) * MR * 2);
                    let cp = c.wrapping_add(p * MR * ldc + j0);
                    // Full panels work on c; the last, short one on a tile copy of its rows.
                    let (dst, ld) = if rows == MR {
                        (cp, ldc)
                    } else {
                        tile.fill(0.0);
                        if load {
                            for r in 0..rows {
                                // SAFETY: row r < rows of c's block exists (caller).
                                unsafe {
                                    std::ptr::copy_nonoverlapping(
                                        cp.add(r * ldc),
                                        tile.as_mut_ptr().add(r * NR),
                                        nc,
                                    )
                                };
                            }
                        }
                        (tile.as_mut_ptr(), NR)
                    };
                    // SAFETY: ap holds kq pairs of MR rows, buf kq pairs of NR columns,
                    // dst MR rows of at least nc columns ld apart.
                    // (Widened: aw holds kq pairs of MR rows as f32.)
                    unsafe {
                        let bp = buf.as_ptr();
                        match (kernel, vecs) {
                            (Kernel::Dot, 1) => micro::<1>(kq, ap, bp, dst, ld, mask, load),
                            (Kernel::Dot, 2) => micro::<2>(kq, ap, bp, dst, ld, mask, load),
                            (Kernel::Dot, _) => micro::<NV>(kq, ap, bp, dst, ld, mask, load),
                            (Kernel::Widened, 1) => widened::<1>(kq, aw, bp, dst, ld, mask, load),
                            (Kernel::Widened, 2) => widened::<2>(kq, aw, bp, dst, ld, mask, load),
                            (Kernel::Widened, _) => widened::<NV>(kq, aw, bp, dst, ld, mask, load),
                        }
                    }
                    if rows < MR {
                        for r in 0..rows {
                            // SAFETY: as the copy in.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    tile.as_ptr().add(r * NR),
                                    cp.add(r * ldc),
                                    nc,
                                )
                            };
                        }
                    }
                }
                j0 += nc;
            }
        }
    }

    /// Packs pairs `q0..q0 + kq` of the depth and columns `j0..j0 + nc` of B into `dst`,
    /// `[kq][NR]` words of two bf16 (zero past `k` and `nc`).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_b(
        b: B<'_>,
        k: usize,
        q0: usize,
        kq: usize,
        j0: usize,
        nc: usize,
        dst: *mut u32,
    ) {
        match b {
            B::Rows { ptr, rs } => {
                // Lane i of the result takes bf16 i of row 2q and bf16 i of row 2q + 1.
                let idx: [i16; 32] = std::array::from_fn(|i| ((i % 2) * 16 + i / 2) as i16);
                // SAFETY: 32 i16 are 64 bytes.
                let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
                let zero = _mm512_setzero_ps();
                for q in 0..kq {
                    let r0 = 2 * (q0 + q);
                    for v in 0..NV {
                        let left = nc.saturating_sub(16 * v).min(16);
                        let m: __mmask16 = if left == 16 {
                            0xffff
                        } else {
                            (1u16 << left) - 1
                        };
                        let at = |r: usize| ptr.wrapping_add(r * rs + j0 + 16 * v);
                        // SAFETY: masked loads touch only columns < nc of rows < k.
                        let lo = if left > 0 && r0 < k {
                            unsafe { _mm512_maskz_loadu_ps(m, at(r0)) }
                        } else {
                            zero
                        };
                        let hi = if left > 0 && r0 + 1 < k {
                            unsafe { _mm512_maskz_loadu_ps(m, at(r0 + 1)) }
                        } else {
                            zero
                        };
                        let packed: __m512i =
                            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                        let w = _mm512_permutexvar_epi16(idx, packed);
                        // SAFETY: dst holds kq rows of NR words.
                        unsafe { _mm512_storeu_si512(dst.add(q * NR + 16 * v).cast(), w) };
                    }
                }
            }
            B::Pairs(rows) => {
                let kp = k.div_ceil(2);
                for q in 0..kq {
                    // SAFETY: dst holds kq rows of NR words.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst.add(q * NR), NR) };
                    for (j, w) in d.iter_mut().enumerate() {
                        *w = if j < nc {
                            rows[(j0 + j) * kp + q0 + q]
                        } else {
                            0
                        };
                    }
                }
            }
        }
    }

    /// The lanes of vector `v` of a row of `V` vectors that lie in the product: all but the
    /// last vector's, which `mask` trims.
    #[inline(always)]
    fn lanes<const V: usize>(v: usize, mask: __mmask16) -> __mmask16 {
        if v + 1 == V {
            mask
        } else {
            0xffff
        }
    }

    /// An MR x V*16 tile of `c` (rows `ldc` apart, the last vector of each row masked), or
    /// zeros when not `load`.
    ///
    /// # Safety
    /// `c` must hold the tile.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_tile<const V: usize>(
        c: *const f32,
        ldc: usize,
        mask: __mmask16,
        load: bool,
    ) -> [[__m512; V]; MR] {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    let at = c.wrapping_add(r * ldc + 16 * v);
                    // SAFETY: the tile lies in c (caller).
                    *x = unsafe { _mm512_maskz_loadu_ps(lanes::<V>(v, mask), at) };
                }
            }
        }
        acc
    }

    /// Writes a tile back where [`load_tile`] read it.
    ///
    /// # Safety
    /// As [`load_tile`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile<const V: usize>(
        acc: &[[__m512; V]; MR],
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
    ) {
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                let at = c.wrapping_add(r * ldc + 16 * v);
                // SAFETY: the tile lies in c (caller).
                unsafe { _mm512_mask_storeu_ps(at, lanes::<V>(v, mask), *x) };
            }
        }
    }

    /// `c[MR, V*16] += a[kq pairs][MR] @ b[kq pairs][NR]` (or `=` when not `load`), the
    /// last vector of each row masked by `mask`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn micro<const V: usize>(
        kq: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
        load: bool,
    ) {
        // SAFETY: c holds MR rows of V*16 columns `ldc` apart (caller).
        let mut acc = unsafe { load_tile::<V>(c, ldc, mask, load) };
        for q in 0..kq {
            // SAFETY: b holds kq rows of NR words, a kq rows of MR words.
            let bv: [__m512bh; V] = std::array::from_fn(|v| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(q * NR + 16 * v).cast(),
                ))
            });
            for (r, row) in acc.iter_mut().enumerate() {
                let w = unsafe { *a.add(q * MR + r) } as i32;
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(w));
                for (x, bv) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, *bv);
                }
            }
        }
        // SAFETY: as the load.
        unsafe { store_tile(&acc, c, ldc, mask) };
    }

    /// [`micro`] with the bf16 pairs widened to f32 and multiplied by FMAs: A from `aw`,
    /// `[kq][MR][2]` f32 (`PackedA`'s copy), B's words split into their two halves here. Each
    /// pair's high product is added first, then its low one, as Intel's `VDPBF16PS` does (the
    /// tests check the two kernels agree bit for bit on Intel CPUs).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn widened<const V: usize>(
        kq: usize,
        aw: *const f32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        mask: __mmask16,
        load: bool,
    ) {
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        // SAFETY: c holds MR rows of V*16 columns `ldc` apart (caller).
        let mut acc = unsafe { load_tile::<V>(c, ldc, mask, load) };
        for q in 0..kq {
            // SAFETY: b holds kq rows of NR words.
            let w: [__m512i; V] = std::array::from_fn(|v| unsafe {
                _mm512_loadu_si512(b.add(q * NR + 16 * v).cast())
            });
            let lo: [__m512; V] =
                std::array::from_fn(|v| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w[v])));
            let hi: [__m512; V] =
                std::array::from_fn(|v| _mm512_castsi512_ps(_mm512_and_si512(w[v], high)));
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: aw holds kq rows of MR pairs.
                let (al, ah) = unsafe {
                    (
                        _mm512_set1_ps(*aw.add((q * MR + r) * 2)),
                        _mm512_set1_ps(*aw.add((q * MR + r) * 2 + 1)),
                    )
                };
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(ah, hi[v], *x);
                    *x = _mm512_fmadd_ps(al, lo[v], *x);
                }
            }
        }
        // SAFETY: as the load.
        unsafe { store_tile(&acc, c, ldc, mask) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::tests::seq;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties to even, 1.
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to even, 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    }

    /// The products against f64 sums of the bf16-rounded operands, on shapes with every
    /// edge: rows not a multiple of 8, columns of 1-3 vectors and a masked tail, odd depth,
    /// depth over one block, accumulating and overwriting, one thread and rayon's pool, and
    /// the paired (linear layer) form of B.
    #[test]
    fn products_match_f64_sums_of_the_rounded_operands() {
        if !available() {
            eprintln!(
                "SKIPPED: the bf16 CPU kernels need AVX512-F, -BW and -BF16; this CPU has \
                 not got them (bf16 product tests skipped)"
            );
            return;
        }
        eprintln!(
            "bf16 CPU kernels: dot and widened run; this process uses {:?}",
            kernel()
        );
        for &(m, k, n) in &[
            (8, 2, 16),
            (5, 3, 1),
            (16, 9, 47),
            (24, 257, 49),
            (13, 300, 100),
            (64, 576, 196),
            (3, 1, 33),
        ] {
            let a = seq(m * k, 1 + m as u64);
            let b = seq(k * n, 2 + n as u64);
            let init = seq(m * n, 3);
            let pa = PackedA::pairs(&a, m, k).with_wide();
            let exact = |i: usize, j: usize| -> f64 {
                (0..k)
                    .map(|t| round_bf16(a[i * k + t]) as f64 * round_bf16(b[t * n + j]) as f64)
                    .sum()
            };
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let paired = pair_rows(&bt, n, k);
            for (accumulate, par, pairs) in [
                (true, false, false),
                (false, false, false),
                (true, true, false),
                (false, true, true),
                (true, false, true),
            ] {
                // Stride wider than n: the product must write only its columns.
                let ldc = n + 3;
                let mut c = vec![f32::NAN; m * ldc];
                for i in 0..m {
                    c[i * ldc..i * ldc + n].copy_from_slice(&init[i * n..(i + 1) * n]);
                }
                let src = if pairs {
                    B::Pairs(&paired)
                } else {
                    B::Rows {
                        ptr: b.as_ptr(),
                        rs: n,
                    }
                };
                // One thread: each kernel, which agree bit for bit on Intel's VDPBF16PS; the
                // pool: this process's choice.
                let mut outs = Vec::new();
                for kernel in [Kernel::Dot, Kernel::Widened] {
                    let mut c = c.clone();
                    // SAFETY: the CPU has the features; c is [m, ldc], b [k, n].
                    unsafe {
                        if par {
                            gemm_par(&pa, src, n, c.as_mut_ptr(), ldc, accumulate)
                        } else {
                            drive(
                                kernel,
                                &pa,
                                0..pa.panels(),
                                src,
                                0..n,
                                c.as_mut_ptr(),
                                ldc,
                                accumulate,
                            )
                        }
                    }
                    outs.push(c);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                if intel() {
                    assert_eq!(
                        bits(&outs[0]),
                        bits(&outs[1]),
                        "m={m} k={k} n={n}: the kernels differ"
                    );
                } else if bits(&outs[0]) != bits(&outs[1]) {
                    eprintln!("m={m} k={k} n={n}: the kernels differ in rounding on this CPU");
                }
                for c in &outs {
                    for i in 0..m {
                        for j in 0..n {
                            let want = exact(i, j)
                                + if accumulate {
                                    init[i * n + j] as f64
                                } else {
                                    0.0
                                };
                            let got = c[i * ldc + j] as f64;
                            // f32 accumulation over k terms of size <= 0.25.
                            let tol = 1e-6 * (k as f64).max(1.0) + 1e-6;
                            assert!(
                                (got - want).abs() <= tol,
                                "m={m} k={k} n={n} acc={accumulate} par={par} pairs={pairs}: \
                             c[{i},{j}] = {got}, want {want}"
                            );
                        }
                        for j in n..ldc {
                            assert!(c[i * ldc + j].is_nan(), "wrote past column {n}");
                        }
                    }
                }
            }
        }
    }

    /// Whether the CPU is Intel's (CPUID's vendor string), whose `VDPBF16PS` rounding the
    /// widened kernel follows exactly.
    #[cfg(not(target_arch = "x86_64"))]
    fn intel() -> bool {
        false
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    fn intel() -> bool {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        vendor == b"GenuineIntel"
    }
}

/// The kernels' speed against the f32 `gemm` crate on single-thread products of the
/// networks' shapes: `cargo test --release -p geoloc-models --lib bf16::speed -- --ignored
/// --nocapture`. Prints GFLOP/s; asserts nothing.
#[cfg(test)]
mod speed {
    use super::*;

    #[test]
    #[ignore]
    fn speed() {
        if !available() {
            return;
        }
        for &(m, k, n) in &[
            (64, 576, 896),
            (256, 2304, 784),
            (512, 4608, 196),
            (128, 64, 3136),
            (512, 512, 400),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut c = vec![0f32; m * n];
            let pa = PackedA::pairs(&a, m, k).with_wide();
            let flop = 2.0 * (m * k * n) as f64;
            let best = |f: &mut dyn FnMut()| {
                (0..5)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::MAX, f64::min)
            };
            let f32_s = best(&mut || unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            });
            let mut out = vec![];
            for kernel in [Kernel::Dot, Kernel::Widened] {
                let s = best(&mut || unsafe {
                    drive(
                        kernel,
                        &pa,
                        0..pa.panels(),
                        B::Rows {
                            ptr: b.as_ptr(),
                            rs: n,
                        },
                        0..n,
                        c.as_mut_ptr(),
                        n,
                        false,
                    )
                });
                out.push(flop / s / 1e9);
            }
            eprintln!(
                "[{m}, {k}] x [{k}, {n}]: f32 gemm {:.1} GFLOP/s, dot {:.1}, widened {:.1}",
                flop / f32_s / 1e9,
                out[0],
                out[1]
            );
        }
    }
}
