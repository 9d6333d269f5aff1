//! PyTorch's `MaxPool2d`, in both rounding modes, which GoogLeNet (ceil mode) and VGG16
//! (floor mode) share. On the CPU in f32 it is its own kernel: the planes in parallel on
//! rayon's pool (candle's max-pool is single-threaded), each plane by the direct kernel
//! ([`crate::direct`], AVX-512 or AVX2, detected at run time) or, elsewhere, a separable
//! one. The earlier per-output scalar loop was 19% of GoogLeNet's forward pass on an
//! AVX-512 Xeon (perf); `examples/pools.rs` times GoogLeNet's 13 pools.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

#[cfg(target_arch = "x86_64")]
use crate::direct;

/// PyTorch's `MaxPool2d(k, stride, padding, ceil_mode=True)`. Output size per side:
/// `ceil((n + 2p - k) / s) + 1`, less one when the last window would start in the right
/// padding. Windows are clipped to the input, which equals PyTorch's -inf padding (each
/// window holds at least one real element). On the CPU in f32 the planes are pooled in
/// parallel; elsewhere the input is padded by replicating its edges (exact for a maximum)
/// and candle pools it.
pub fn max_pool_ceil(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    max_pool(x, k, s, p, true)
}

/// PyTorch's `MaxPool2d(k, stride, padding, ceil_mode)`; see [`max_pool_ceil`]. In floor
/// mode the output is `floor((n + 2p - k) / s) + 1` per side.
pub fn max_pool(x: &Tensor, k: usize, s: usize, p: usize, ceil: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("max-pool: {h}x{w} input smaller than the {k}x{k} window");
    }
    if s == 0 {
        candle_core::bail!("max-pool: stride 0");
    }
    let out = |n: usize| -> usize {
        if !ceil {
            return (n + 2 * p - k) / s + 1;
        }
        let mut o = (n + 2 * p).saturating_sub(k).div_ceil(s) + 1;
        if (o - 1) * s >= n + p {
            o -= 1;
        }
        o
    };
    let (oh, ow) = (out(h), out(w));
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let x = x.contiguous()?;
        let geom = Geom {
            k,
            s,
            p,
            h,
            w,
            oh,
            ow,
        };
        return x.apply_op1_no_bwd(&MaxPool(geom));
    }
    let need_h = (oh - 1) * s + k;
    let need_w = (ow - 1) * s + k;
    let x = x.pad_with_same(2, p, need_h.saturating_sub(h + p))?;
    let x = x.pad_with_same(3, p, need_w.saturating_sub(w + p))?;
    x.max_pool2d_with_stride(k, s)
}

struct MaxPool(Geom);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "geoloc-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (b, c, h, w) = layout.shape().dims4()?;
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, z))) => &v[a..z],
            _ => candle_core::bail!("the CPU max-pool takes contiguous f32"),
        };
        if (h, w) != (g.h, g.w) {
            candle_core::bail!("max-pool set up for {}x{}, given {h}x{w}", g.h, g.w);
        }
        let plane = g.oh * g.ow;
        let y = crate::conv::par_blocks(
            b * c * plane,
            plane,
            (plane, &[f32::NEG_INFINITY]),
            Vec::new,
            |scratch, i, out| g.plane(&x[i * h * w..(i + 1) * h * w], out, scratch),
        );
        Ok((CpuStorage::F32(y), Shape::from((b, c, g.oh, g.ow))))
    }
}

/// One max-pool's geometry, and its per-plane kernels.
#[derive(Clone, Copy)]
struct Geom {
    k: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

/// `if v > m { v } else { m }`: one `maxps`, where `f32::max`'s NaN handling keeps the
/// loops scalar. The same result here: every window starts from -inf, so a NaN is skipped
/// either way.
#[inline(always)]
fn greater(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

impl Geom {
    /// The length of a padded row: the left padding, the row, and -inf up to the end of the
    /// last window (which may pass the right padding in ceil mode).
    fn padded(&self) -> usize {
        ((self.ow - 1) * self.s + self.k).max(self.p + self.w)
    }

    /// A thread's scratch for the separable kernel, made on its first use: one padded row
    /// (-inf outside the input's columns, which are rewritten per row), then its `s`
    /// phases.
    fn scratch<'a>(&self, scratch: &'a mut Vec<f32>) -> &'a mut [f32] {
        if scratch.is_empty() {
            let pw = self.padded();
            *scratch = vec![f32::NEG_INFINITY; pw + self.s * pw.div_ceil(self.s)];
        }
        scratch
    }

    /// Input rows in output row `o`'s window, clipped to the plane.
    fn rows(&self, o: usize) -> std::ops::Range<usize> {
        let lo = (o * self.s).saturating_sub(self.p);
        let hi = (o * self.s + self.k).saturating_sub(self.p).min(self.h);
        lo..hi
    }

    /// Pools one plane `x` (`h x w`) into `y` (`oh x ow`): the direct kernel where the
    /// stride is 1 or 2 (every pool of the backbones), in AVX-512 where the CPU has
    /// AVX-512F, else in AVX2 where it has AVX2 and FMA; else the separable one.
    fn plane(&self, x: &[f32], y: &mut [f32], scratch: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if self.s <= 2 && self.k <= direct::MAX_K {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked), the stride and window fit.
                return unsafe { self.plane_avx512(x, y) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked), the stride and window fit.
                return unsafe { self.plane_avx2(x, y) };
            }
        }
        self.separable(x, y, self.scratch(scratch))
    }

    /// The direct kernel in AVX-512 (16 lanes).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `s` is 1 or 2, `k` at most [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn plane_avx512(&self, x: &[f32], y: &mut [f32]) {
        // SAFETY: forwarded; compiled for AVX-512F.
        unsafe { self.direct::<direct::Avx512>(x, y) }
    }

    /// The direct kernel in AVX2 (8 lanes).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `s` is 1 or 2, `k` at most [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_avx2(&self, x: &[f32], y: &mut [f32]) {
        // SAFETY: forwarded; compiled for AVX2 and FMA.
        unsafe { self.direct::<direct::Avx2>(x, y) }
    }

    /// Separable: per output row, the maximum down the window's input rows into a padded
    /// row (-inf in the padding, which equals clipping each window to the input); then, for
    /// stride `s`, that row split into its `s` phases, so that window column `j` of every
    /// output in the row is the contiguous run `phase[j % s][j / s..]`. Each output block is
    /// the maximum of all its sources at once ([`max_of`]), stored once. `scratch` is
    /// [`Geom::scratch`]'s.
    #[inline(always)]
    fn separable(&self, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
        let (k, s, p, w, ow) = (self.k, self.s, self.p, self.w, self.ow);
        let pw = self.padded();
        let plen = pw.div_ceil(s);
        let (down, phases) = scratch.split_at_mut(pw);
        for (oy, out) in y.chunks_exact_mut(ow).enumerate() {
            max_of(
                &mut down[p..p + w],
                self.rows(oy).map(|iy| &x[iy * w..(iy + 1) * w]),
            );
            let (src, run): (&[f32], usize) = if s == 1 {
                (&*down, pw)
            } else {
                for (r, phase) in phases.chunks_exact_mut(plen).enumerate() {
                    for (d, v) in phase.iter_mut().zip(down[r..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
                (&*phases, plen)
            };
            // Window column j of output ow - 1 is column (ow - 1) * s + j < pw of the
            // padded row, inside its phase.
            max_of(
                out,
                (0..k).map(|j| {
                    let from = (j % s) * run + j / s;
                    &src[from..from + ow]
                }),
            );
        }
    }

    /// Direct: each block of `S::LANES` outputs of a row is the maximum of the `k x k`
    /// window's input runs, loaded straight from the plane with the lanes outside it masked
    /// to -inf ([`direct`]), kept in a register and stored once. A separable version with
    /// a pass per window row and column over a padded row spent its time (perf) on the
    /// masked loads that reread blocks just stored; GoogLeNet's 13 pools (`examples/
    /// pools.rs`, batch 16, 2 threads, AVX-512 Xeon) took 87.4 ms with the scalar loop
    /// before, 28.6 ms with this.
    ///
    /// # Safety
    /// The CPU must have what `S` uses, and the caller be compiled for it; `s` is 1 or 2,
    /// `k` at most [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn direct<S: direct::Simd>(&self, x: &[f32], y: &mut [f32]) {
        let (k, s, p, w, ow) = (self.k, self.s, self.p, self.w, self.ow);
        assert!(x.len() >= self.h * w && y.len() >= self.oh * ow);
        assert!((s == 1 || s == 2) && k <= direct::MAX_K);
        // SAFETY (every S:: call below): the CPU has what S uses and this function is
        // compiled for it (caller); loads read only a row of x inside x (asserted), stores
        // only outputs of y.
        let ninf = unsafe { S::splat(f32::NEG_INFINITY) };
        for ox in (0..ow).step_by(S::LANES) {
            let runs = unsafe { direct::runs::<S>(ox, s, p, w, k) };
            let n = (ow - ox).min(S::LANES);
            let keep = unsafe { S::mask((0, n as u32)) };
            for oy in 0..self.oh {
                let mut acc = ninf;
                for iy in self.rows(oy) {
                    let row = x[iy * w..].as_ptr();
                    for run in &runs[..k] {
                        // max(v, acc) is v > acc ? v : acc, as `greater`.
                        acc = unsafe { S::max(S::load(row, *run, s, ninf), acc) };
                    }
                }
                let at = oy * ow + ox;
                unsafe { S::store(y[at..at + n].as_mut_ptr(), keep, acc) };
            }
        }
    }
}

/// `dst` = the maximum of all `srcs` (each at least as long) and -inf, in 8-lane blocks
/// that the compiler vectorises: each block is the maximum of all its sources in
/// registers and is stored once.
#[inline(always)]
fn max_of<'a>(dst: &mut [f32], srcs: impl Iterator<Item = &'a [f32]> + Clone) {
    const L: usize = 8;
    let n = dst.len();
    let mut i = 0;
    while i < n {
        let m = L.min(n - i);
        let mut acc = [f32::NEG_INFINITY; L];
        for src in srcs.clone() {
            if m == L {
                let v: &[f32; L] = src[i..i + L].try_into().expect("a block of L");
                for (a, v) in acc.iter_mut().zip(v) {
                    *a = greater(*a, *v);
                }
            } else {
                for (a, v) in acc.iter_mut().zip(&src[i..i + m]) {
                    *a = greater(*a, *v);
                }
            }
        }
        dst[i..i + m].copy_from_slice(&acc[..m]);
        i += m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each output as the maximum over its window clipped to the input, the definition.
    fn reference(g: &Geom, x: &[f32]) -> Vec<f32> {
        let mut y = Vec::with_capacity(g.oh * g.ow);
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let lo = (ox * g.s).saturating_sub(g.p);
                let hi = (ox * g.s + g.k).saturating_sub(g.p).min(g.w);
                let mut m = f32::NEG_INFINITY;
                for iy in g.rows(oy) {
                    for v in &x[iy * g.w + lo..iy * g.w + hi] {
                        m = m.max(*v);
                    }
                }
                y.push(m);
            }
        }
        y
    }

    /// Every kernel this CPU can run equals the definition, bit for bit, on the shapes the
    /// backbones pool (GoogLeNet's 3x3 stride 1 and 2 in ceil mode, its 2x2 and VGG16's
    /// floor-mode 2x2) and odd ones, windows of more than eight rows or columns, on planes
    /// narrower and wider than a vector.
    #[test]
    fn every_kernel_equals_the_definition() {
        type Kernel = unsafe fn(&Geom, &[f32], &mut [f32], &mut Vec<f32>);
        let mut kernels: Vec<(&str, Kernel)> =
            vec![("separable", |g, x, y, s| g.separable(x, y, g.scratch(s)))];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("direct avx2", |g, x, y, _| unsafe { g.plane_avx2(x, y) }));
            } else {
                println!("skipped the direct AVX2 kernel: this CPU lacks AVX2 or FMA");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("direct avx512", |g, x, y, _| unsafe {
                    g.plane_avx512(x, y)
                }));
            } else {
                println!("skipped the direct AVX-512 kernel: this CPU lacks AVX-512F");
            }
        }
        let names: Vec<&str> = kernels.iter().map(|k| k.0).collect();
        println!("max-pool kernels run: {names:?}");
        let mut cases = 0;
        for (h, w) in [
            (5, 7),
            (14, 14),
            (9, 19),
            (28, 28),
            (13, 37),
            (8, 56),
            (4, 112),
        ] {
            let x = crate::conv::tests::seq(h * w, (h * 131 + w) as u64);
            let other: Vec<f32> = x.iter().map(|v| v + 10.0).collect();
            for (k, s, p, ceil) in [
                (3, 1, 1, true),
                (3, 2, 0, true),
                (2, 2, 0, true),
                (2, 2, 0, false),
                (3, 2, 1, false),
                (3, 3, 1, true),
                (5, 3, 2, false),
                (1, 2, 0, true),
                // A window wider than the AVX2 vector, at a stride only the separable
                // kernel takes.
                (9, 4, 4, true),
            ] {
                let t = Tensor::zeros(
                    (1, 1, h, w),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                );
                let y = max_pool(&t.unwrap(), k, s, p, ceil).unwrap();
                let (_, _, oh, ow) = y.dims4().unwrap();
                let g = Geom {
                    k,
                    s,
                    p,
                    h,
                    w,
                    oh,
                    ow,
                };
                let want = reference(&g, &x);
                for (name, kernel) in &kernels {
                    if name.starts_with("direct") && s > 2 {
                        continue; // plane() sends these to the separable kernel
                    }
                    let mut got = vec![f32::NAN; oh * ow];
                    let mut scratch = Vec::new();
                    // Another plane first, with the same scratch: nothing of it may leak.
                    // SAFETY: the CPU has what each listed kernel needs (checked above).
                    unsafe { kernel(&g, &other, &mut got, &mut scratch) };
                    unsafe { kernel(&g, &x, &mut got, &mut scratch) };
                    assert_eq!(got, want, "{name}: {h}x{w} k{k} s{s} p{p} ceil {ceil}");
                }
                cases += 1;
            }
        }
        assert_eq!(cases, 63);
    }
}
