//! Winograd's minimal filtering F(2x2, 3x3) for dense 3x3 stride-1 convolutions on the CPU
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2x2 block of outputs comes from a 4x4 input tile with 16 products per pair of
//! channels instead of 36: the input tile is transformed (`V = Bᵀ d B`, additions only), the
//! 16 positions of the transformed tiles are 16 independent matrix products with the
//! transformed weights (`M[ξ] = U[ξ] · V[ξ]`, `U = G g Gᵀ`, computed once at load), and each
//! 4x4 product tile is transformed back (`Y = Aᵀ M A`, additions only). The products, where
//! the time goes, do 2.25 times less work than im2col's. F(2x2, 3x3) is the variant whose
//! transforms have no coefficient larger than 1, so f32 rounding stays at the level of the
//! direct convolution (the tests hold it to the same 1e-5 of the output's range as the other
//! kernels). Larger tiles (F(4x4, 3x3), 4x fewer products) have transform coefficients up to
//! 8 and lose precision accordingly; they are not used. Where Winograd runs and where
//! im2col stays is [`crate::conv::winograd_pays`].
//!
//! Tiles are taken a band of tile rows at a time, across the images of the batch, so the
//! products stay large when the planes are small (14x14 and 7x7 late in the networks): each
//! band is transformed, multiplied and transformed back by one thread with the band's
//! buffers in its cache, and the bands run in parallel on rayon's pool.

use crate::bf16::{self, PackedA};
use crate::conv::{Activation, Padding};
use rayon::prelude::*;

/// Bytes of transformed input and product per band (both together), so a band's buffers
/// stay in cache between the transforms and the products. Measured with the `conv_paths`
/// example at 1, 2 and 6 MB (Zen 3, 2 threads, on a shared machine): 2 MB was best or near
/// it on most shapes; 6 MB was up to 1.6x slower on the wide-plane layers and 1 MB slower on
/// the 512-channel ones.
const BAND_BYTES: usize = 2 << 20;

thread_local! {
    /// Each thread's transformed-input and product buffers, kept between calls.
    static BUFS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The transformed weights of one 3x3 convolution: `U[ξ]`, 16 matrices `[cout, cin]`.
#[derive(Debug, Clone)]
pub(crate) struct Winograd {
    u: Vec<f32>,
    cout: usize,
    cin: usize,
    /// `U[ξ]` rounded to bf16 and packed, when the products run in bf16.
    bf16: Option<Vec<PackedA>>,
}

/// An output pointer shared by parallel tasks that write disjoint parts of it: Winograd's
/// bands (their own tile rows, see `forward`) and `bf16::gemm_par`'s tasks (their own rows or
/// columns). Each user keeps the parts disjoint.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
// SAFETY: the users write disjoint parts only (above).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Out`, which is `Sync`).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl Winograd {
    /// Transforms a `[cout, cin, 3, 3]` row-major weight.
    pub(crate) fn new(weight: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * 9, "a [cout, cin, 3, 3] weight");
        let plane = cout * cin;
        let mut u = vec![0.0f32; 16 * plane];
        for (pair, g) in weight.chunks_exact(9).enumerate() {
            // G g: 4x3.
            let mut t = [[0.0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                t[0][c] = g0;
                t[1][c] = 0.5 * (g0 + g1 + g2);
                t[2][c] = 0.5 * (g0 - g1 + g2);
                t[3][c] = g2;
            }
            // (G g) Gᵀ: 4x4.
            for (r, row) in t.iter().enumerate() {
                let [t0, t1, t2] = *row;
                let v = [t0, 0.5 * (t0 + t1 + t2), 0.5 * (t0 - t1 + t2), t2];
                for (c, v) in v.into_iter().enumerate() {
                    u[(r * 4 + c) * plane + pair] = v;
                }
            }
        }
        Winograd {
            u,
            cout,
            cin,
            bf16: None,
        }
    }

    /// The same weights, the 16 products to run in bf16 ([`crate::bf16`]; the caller checks
    /// that the CPU has it). The transforms stay f32: the weights are transformed first, then
    /// rounded, so bf16 rounds each product's operands once, as im2col's.
    pub(crate) fn with_bf16(mut self) -> Self {
        let plane = self.cout * self.cin;
        self.bf16 = Some(
            self.u
                .chunks_exact(plane)
                .map(|u| PackedA::new(u, self.cout, self.cin))
                .collect(),
        );
        self
    }

    /// Input channels.
    pub(crate) fn cin(&self) -> usize {
        self.cin
    }

    /// The convolution of a batch `x` `[b, cin, h, w]` (each image's `[cin, h, w]`
    /// contiguous, the images `image` values apart) with padding `pad`, into `y`
    /// `[b, cout, oh, ow]`, plus `bias`, activated.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        (x, image): (&[f32], usize),
        (b, h, w): (usize, usize, usize),
        pad: Padding,
        bias: &[f32],
        act: Activation,
        y: &mut [f32],
        (oh, ow): (usize, usize),
    ) {
        let (cin, cout) = (self.cin, self.cout);
        assert!(image >= cin * h * w || b <= 1, "images overlap");
        assert!(
            b == 0 || x.len() >= (b - 1) * image + cin * h * w,
            "input [b, cin, h, w]"
        );
        assert_eq!(y.len(), b * cout * oh * ow, "output [b, cout, oh, ow]");
        assert_eq!(bias.len(), cout, "one bias per output channel");
        let geo = Geometry {
            image,
            h,
            w,
            oh,
            ow,
            ty_n: oh.div_ceil(2),
            tx_n: ow.div_ceil(2),
            pad,
        };
        let rows = b * geo.ty_n;
        if rows == 0 {
            return; // an empty batch (or plane): nothing to write
        }
        // Bands of about BAND_BYTES of buffers each...
        let per_row = 16 * (cin + cout) * geo.tx_n * 4;
        let threads = rayon::current_num_threads();
        // As many bands as that takes, rounded up to a multiple of the threads so none idles
        // at the end, then as even as they can be.
        let bands = (rows * per_row)
            .div_ceil(BAND_BYTES)
            .next_multiple_of(threads)
            .clamp(1, rows);
        let band = rows.div_ceil(bands);
        let out = Out(y.as_mut_ptr());
        let avx2 = avx2();
        (0..rows.div_ceil(band)).into_par_iter().for_each(|k| {
            let tile_rows = k * band..((k + 1) * band).min(rows);
            let t = tile_rows.len() * geo.tx_n;
            BUFS.with(|bufs| {
                let (v, m) = &mut *bufs.borrow_mut();
                if v.len() < 16 * cin * t {
                    v.resize(16 * cin * t, 0.0);
                }
                if m.len() < 16 * cout * t {
                    m.resize(16 * cout * t, 0.0);
                }
                let (v, m) = (&mut v[..16 * cin * t], &mut m[..16 * cout * t]);
                let job = Band {
                    x,
                    geo,
                    tile_rows,
                    bias,
                    act,
                    out,
                };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2 (checked at run time).
                    unsafe { self.band_avx2(job, v, m) };
                    return;
                }
                self.band(job, v, m);
            });
        });
    }

    /// [`Self::band`] compiled for AVX2: the transforms are additions along rows of tiles,
    /// which then go 8 lanes at a time instead of 4.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn band_avx2(&self, job: Band<'_>, v: &mut [f32], m: &mut [f32]) {
        self.band(job, v, m)
    }

    /// One band of tile rows: its input tiles transformed into `v` (`V[ξ]`, `[cin, t]`
    /// each), the 16 products into `m` (`M[ξ]`, `[cout, t]`), transformed back into the
    /// output.
    #[inline(always)]
    fn band(&self, job: Band<'_>, v: &mut [f32], m: &mut [f32]) {
        let Band {
            x,
            geo,
            tile_rows,
            bias,
            act,
            out,
        } = job;
        let (cin, cout) = (self.cin, self.cout);
        let t = tile_rows.len() * geo.tx_n;
        let mut scratch = vec![0.0f32; 16 * (geo.tx_n + 1)];
        self.input_band(x, geo, tile_rows.clone(), &mut scratch, v);
        for xi in 0..16 {
            if let Some(u) = &self.bf16 {
                let b = bf16::B::Rows {
                    ptr: v[xi * cin * t..].as_ptr(),
                    rs: t,
                };
                // SAFETY: as below; `to_bf16`'s caller checked the CPU.
                unsafe { bf16::gemm(&u[xi], b, t, m.as_mut_ptr().add(xi * cout * t), t, false) };
                continue;
            }
            // SAFETY: U[ξ] is [cout, cin], V[ξ] [cin, t] and M[ξ] [cout, t], all
            // row-major and within their buffers.
            unsafe {
                gemm::gemm(
                    cout,
                    t,
                    cin,
                    m.as_mut_ptr().add(xi * cout * t),
                    1,
                    t as isize,
                    false,
                    self.u.as_ptr().add(xi * cout * cin),
                    1,
                    cin as isize,
                    v.as_ptr().add(xi * cin * t),
                    1,
                    t as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        }
        let (oh, ow) = (geo.oh, geo.ow);
        for (i, g) in tile_rows.enumerate() {
            let (img, ty) = (g / geo.ty_n, g % geo.ty_n);
            let (oy0, oy1) = (2 * ty, (2 * ty + 2).min(oh));
            for (co, &bias) in bias.iter().enumerate() {
                let at = (img * cout + co) * oh * ow + oy0 * ow;
                // SAFETY: output rows 2ty and 2ty+1 (those < oh) of each plane of image img
                // belong to tile row g, which only this band holds; they lie within the
                // output, whose length `forward` checked.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.at(at), (oy1 - oy0) * ow) };
                output_tiles(
                    m,
                    (co * t + i * geo.tx_n, cout * t),
                    (geo.tx_n, ow),
                    &mut scratch,
                    dst,
                    bias,
                    act,
                );
            }
        }
    }

    /// Transforms the input tiles of tile rows `tile_rows` (across the batch): all input
    /// channels, into `V[ξ][ci][tile]`.
    #[inline(always)]
    fn input_band(
        &self,
        x: &[f32],
        geo: Geometry,
        tile_rows: std::ops::Range<usize>,
        scratch: &mut [f32],
        v: &mut [f32],
    ) {
        let (cin, hw) = (self.cin, geo.h * geo.w);
        let t = tile_rows.len() * geo.tx_n;
        for (i, g) in tile_rows.enumerate() {
            let (img, ty) = (g / geo.ty_n, g % geo.ty_n);
            for ci in 0..cin {
                let at = img * geo.image + ci * hw;
                let plane = &x[at..at + hw];
                input_tiles(plane, geo, ty, scratch, v, (ci * t + i * geo.tx_n, cin * t));
            }
        }
    }
}

/// One band's share of a [`Winograd::forward`] call.
struct Band<'a> {
    x: &'a [f32],
    geo: Geometry,
    tile_rows: std::ops::Range<usize>,
    bias: &'a [f32],
    act: Activation,
    out: Out,
}

/// Whether the CPU has AVX2 (std caches the answer).
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The shape of one convolution's tiling.
#[derive(Clone, Copy)]
struct Geometry {
    /// Values between the starts of two images of the input.
    image: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    /// Tile rows and tile columns per image.
    ty_n: usize,
    tx_n: usize,
    pad: Padding,
}

/// Transforms the tiles of tile row `ty` of one input channel plane: writes
/// `V[ξ][at + tx]` for the `tx_n` tiles, `V[ξ]` starting at `ξ * stride`.
#[inline(always)]
fn input_tiles(
    plane: &[f32],
    geo: Geometry,
    ty: usize,
    scratch: &mut [f32],
    v: &mut [f32],
    (at, stride): (usize, usize),
) {
    let (h, w, tx_n, pad) = (geo.h, geo.w, geo.tx_n, geo.pad);
    let l = tx_n + 1;
    // The four input rows of the tile row, split into even and odd columns of the padded
    // row: tile tx covers padded columns 2tx..2tx+4 = even[tx], odd[tx], even[tx+1],
    // odd[tx+1]. Columns and rows outside the input are zeros.
    let (eo, rest) = scratch.split_at_mut(8 * l);
    for r in 0..4 {
        let (e, o) = eo[r * 2 * l..(r + 1) * 2 * l].split_at_mut(l);
        e.fill(0.0);
        o.fill(0.0);
        let iy = (2 * ty + r) as isize - pad.top as isize;
        if iy < 0 || iy >= h as isize {
            continue;
        }
        let row = &plane[iy as usize * w..(iy as usize + 1) * w];
        // Padded column p = ix + left: even columns to e, odd ones to o.
        let n = w.min((2 * l).saturating_sub(pad.left));
        let (mut ix, mut p) = (0, pad.left);
        if p % 2 == 1 && ix < n {
            o[p / 2] = row[ix];
            ix += 1;
            p += 1;
        }
        let pairs = (n - ix) / 2;
        for ((ev, od), pair) in e[p / 2..p / 2 + pairs]
            .iter_mut()
            .zip(&mut o[p / 2..p / 2 + pairs])
            .zip(row[ix..ix + 2 * pairs].chunks_exact(2))
        {
            *ev = pair[0];
            *od = pair[1];
        }
        if ix + 2 * pairs < n {
            e[(p + 2 * pairs) / 2] = row[ix + 2 * pairs];
        }
    }
    // Bᵀ d down the rows, for the even and the odd columns: rows d0..d3 become
    // d0-d2, d1+d2, d2-d1, d1-d3.
    let row = |r: usize, odd: usize| &eo[(r * 2 + odd) * l..(r * 2 + odd + 1) * l];
    let (cols, _) = rest.split_at_mut(8 * l);
    for odd in 0..2 {
        let (d0, d1, d2, d3) = (row(0, odd), row(1, odd), row(2, odd), row(3, odd));
        let out = &mut cols[odd * 4 * l..(odd + 1) * 4 * l];
        let (t0, out) = out.split_at_mut(l);
        let (t1, out) = out.split_at_mut(l);
        let (t2, t3) = out.split_at_mut(l);
        for j in 0..l {
            t0[j] = d0[j] - d2[j];
            t1[j] = d1[j] + d2[j];
            t2[j] = d2[j] - d1[j];
            t3[j] = d1[j] - d3[j];
        }
    }
    // ... then (Bᵀ d) B across the columns: columns c0..c3 = E[tx], O[tx], E[tx+1],
    // O[tx+1] become c0-c2, c1+c2, c2-c1, c1-c3.
    for i in 0..4 {
        let e = &cols[i * l..(i + 1) * l];
        let o = &cols[(4 + i) * l..(5 + i) * l];
        let (e0, e1, o0, o1) = (&e[..tx_n], &e[1..], &o[..tx_n], &o[1..]);
        let base = (i * 4) * stride + at;
        let dst = |j: usize| base + j * stride;
        for (d, (a, b)) in v[dst(0)..dst(0) + tx_n].iter_mut().zip(e0.iter().zip(e1)) {
            *d = a - b;
        }
        for (d, (a, b)) in v[dst(1)..dst(1) + tx_n].iter_mut().zip(o0.iter().zip(e1)) {
            *d = a + b;
        }
        for (d, (a, b)) in v[dst(2)..dst(2) + tx_n].iter_mut().zip(e1.iter().zip(o0)) {
            *d = a - b;
        }
        for (d, (a, b)) in v[dst(3)..dst(3) + tx_n].iter_mut().zip(o0.iter().zip(o1)) {
            *d = a - b;
        }
    }
}

/// Transforms one output channel's product tiles of one tile row back (`Aᵀ M A`) and writes
/// the 2x2 blocks to `dst`, the tile row's one or two output rows of width `ow` (those
/// inside the output), plus the bias, activated. `M[ξ][at + tx]`, `M[ξ]` starting at
/// `ξ * stride`.
#[inline(always)]
fn output_tiles(
    m: &[f32],
    (at, stride): (usize, usize),
    (tx_n, ow): (usize, usize),
    scratch: &mut [f32],
    dst: &mut [f32],
    bias: f32,
    act: Activation,
) {
    let tile = |xi: usize| &m[xi * stride + at..xi * stride + at + tx_n];
    let (s, rest) = scratch.split_at_mut(8 * tx_n);
    // Aᵀ M down the rows: rows m0..m3 become m0+m1+m2 and m1-m2-m3, per column j.
    for j in 0..4 {
        let (m0, m1, m2, m3) = (tile(j), tile(4 + j), tile(8 + j), tile(12 + j));
        let (s0, s1) = s[2 * j * tx_n..(2 * j + 2) * tx_n].split_at_mut(tx_n);
        for t in 0..tx_n {
            s0[t] = m0[t] + m1[t] + m2[t];
            s1[t] = m1[t] - m2[t] - m3[t];
        }
    }
    // ... then across the columns, into the 2x2 block: y[r][0] = s0+s1+s2, y[r][1] =
    // s1-s2-s3 of row r's sums, then the bias and activation.
    let y = &mut rest[..4 * tx_n];
    for r in 0..2 {
        let col = |j: usize| &s[(2 * j + r) * tx_n..(2 * j + r + 1) * tx_n];
        let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
        let (y0, y1) = y[2 * r * tx_n..(2 * r + 2) * tx_n].split_at_mut(tx_n);
        for t in 0..tx_n {
            y0[t] = c0[t] + c1[t] + c2[t] + bias;
            y1[t] = c1[t] - c2[t] - c3[t] + bias;
        }
    }
    act.apply_all(y);
    for (r, out) in dst.chunks_exact_mut(ow).enumerate() {
        let (y0, y1) = y[2 * r * tx_n..(2 * r + 2) * tx_n].split_at(tx_n);
        let mut pairs = out.chunks_exact_mut(2);
        for (o, (a, b)) in (&mut pairs).zip(y0.iter().zip(y1)) {
            o[0] = *a;
            o[1] = *b;
        }
        if let [last] = pairs.into_remainder() {
            *last = y0[tx_n - 1];
        }
    }
}
