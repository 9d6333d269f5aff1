//! The convolution every backbone uses: dense or depthwise, symmetric or TensorFlow-style
//! asymmetric zero padding, bias and activation fused.
//!
//! On the CPU with f32 it runs its own kernels, because candle 0.11's CPU convolution copies
//! its im2col single-threaded (upstream issue 3119) and runs grouped convolutions as one
//! convolution per group plus a concatenation: here im2col is done per image on rayon's
//! pool, each image's product is one `gemm` call (the crate candle's matmul uses, with its
//! AVX-512 kernels enabled), 1x1 stride-1 convolutions skip im2col, the bias is the product's
//! initial value and the activation is applied in place; wide 3x3 stride-1 convolutions run
//! as Winograd F(2x2, 3x3) (`winograd.rs`, where [`winograd_pays`]); depthwise convolutions
//! are a direct loop over each channel's plane. With [`Conv::to_bf16`] the products (im2col,
//! 1x1 and Winograd) run in bf16 with f32 accumulation on AVX512-BF16 (`bf16.rs`); the rest
//! stays f32. On other devices or dtypes it runs candle's operations (pad, `conv2d`, add,
//! activation), which give the same values.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::bf16::{self, PackedA};
#[cfg(target_arch = "x86_64")]
use crate::direct;
use crate::winograd::Winograd;

/// When a dense 3x3 stride-1 f32 convolution runs as Winograd F(2x2, 3x3) on the CPU rather
/// than as im2col + gemm: from 64 input channels, on planes of 7x7 and up. Below 64 channels
/// the 16 products are too thin (their depth is the input channels) for the 2.25x fewer
/// multiplications to pay for the transforms; below 7x7 too much of each 4x4 tile lies
/// outside the plane. Measured per layer shape with `examples/conv_paths.rs` (Zen 3, 2
/// threads, batch 16, two runs): VGG16's layers 1.2-1.9x faster; GoogLeNet's layers of
/// 64-192 channels 1.0-1.5x, on every plane from 56x56 to 7x7; its thin branches (16-48
/// channels) 0.55-0.94x, which therefore keep im2col.
pub fn winograd_pays(cin: usize, oh: usize, ow: usize) -> bool {
    cin >= 64 && oh * ow >= 7 * 7
}

/// The activation applied after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// min(max(x, 0), 6): EfficientNet-Lite's.
    Relu6,
}

impl Activation {
    /// Applies the activation to every value of `y` in place: one loop per activation, so
    /// each vectorises.
    pub(crate) fn apply_all(self, y: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Relu6 => y.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }

    fn tensor(self, x: Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(x),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }
}

/// Zero padding per side: top, bottom, left, right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// `p` on every side (PyTorch's `padding=p`).
    pub fn same_all(p: usize) -> Self {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// TensorFlow's `SAME` padding for an `h x w` input (what EfficientNet's
    /// `Conv2dStaticSamePadding` computes): output `ceil(n / s)`, the odd pixel of padding
    /// on the bottom/right.
    pub fn tf_same(h: usize, w: usize, k: usize, s: usize) -> Self {
        let total = |n: usize| ((n.div_ceil(s) - 1) * s + k).saturating_sub(n);
        let (ph, pw) = (total(h), total(w));
        Padding {
            top: ph / 2,
            bottom: ph - ph / 2,
            left: pw / 2,
            right: pw - pw / 2,
        }
    }
}

/// How a [`Conv`] pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    Fixed(Padding),
    /// TensorFlow `SAME`, computed from each input's size.
    TfSame,
}

/// A 2-D convolution (dense, or depthwise when `depthwise`), with bias and activation.
#[derive(Debug, Clone)]
pub struct Conv {
    /// `[out, in, k, k]`, or `[channels, 1, k, k]` when depthwise.
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight as `[out, in * k * k]` row-major f32, and the bias: the CPU kernels' copy.
    packed: Option<(Vec<f32>, Vec<f32>)>,
    /// The weight transformed for Winograd's F(2x2, 3x3), where the CPU kernels may use it,
    /// and whether they always do (else where [`winograd_pays`]).
    winograd: Option<(Winograd, bool)>,
    /// The weight rounded to bf16 and packed for [`bf16::gemm`], when the products run in
    /// bf16 ([`Conv::to_bf16`]).
    bf16: Option<PackedA>,
    k: usize,
    stride: usize,
    pad: PadMode,
    depthwise: bool,
    act: Activation,
}

impl Conv {
    /// Wraps a weight `[out, in, k, k]` (square kernels) and an optional bias `[out]`.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        pad: PadMode,
        depthwise: bool,
        act: Activation,
    ) -> Result<Self> {
        let (cout, cin, kh, kw) = weight.dims4()?;
        if kh != kw {
            candle_core::bail!("square kernels only, got {kh}x{kw}");
        }
        if depthwise && cin != 1 {
            candle_core::bail!("a depthwise weight is [channels, 1, k, k], got {cin} inputs");
        }
        let packed = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = match &bias {
                Some(b) => b.to_vec1::<f32>()?,
                None => vec![0.0; cout],
            };
            Some((w, b))
        } else {
            None
        };
        let mut conv = Conv {
            weight,
            bias,
            packed,
            winograd: None,
            bf16: None,
            k: kh,
            stride,
            pad,
            depthwise,
            act,
        };
        // Kept for layers that can take Winograd on some input size (winograd_pays).
        if cin >= 64 {
            conv.winograd = conv.winograd_weights().map(|u| (u, false));
        }
        Ok(conv)
    }

    /// The weight transformed for Winograd F(2x2, 3x3), where it applies: a dense 3x3
    /// stride-1 convolution with f32 weights on the CPU.
    fn winograd_weights(&self) -> Option<Winograd> {
        match &self.packed {
            Some((w, b)) if self.k == 3 && self.stride == 1 && !self.depthwise => {
                let u = Winograd::new(w, b.len(), w.len() / b.len() / 9);
                Some(if self.bf16.is_some() {
                    u.with_bf16()
                } else {
                    u
                })
            }
            _ => None,
        }
    }

    /// Runs this convolution's products in bf16 on the CPU (bf16 operands, f32 accumulation,
    /// [`crate::bf16`]): the weights are rounded and packed here, once. Depthwise
    /// convolutions have no products and stay f32, as does everything around the products.
    /// An error where this CPU lacks AVX512-BF16 or the weights are not f32 on the CPU.
    pub fn to_bf16(&mut self) -> Result<()> {
        if !bf16::available() {
            candle_core::bail!("bf16 on the CPU needs AVX512-BF16 (and AVX512-F, -BW)");
        }
        let Some((w, b)) = &self.packed else {
            candle_core::bail!("bf16 CPU products need the layer's f32 weights on the CPU");
        };
        if self.depthwise || self.bf16.is_some() {
            return Ok(());
        }
        self.bf16 = Some(PackedA::new(w, b.len(), w.len() / b.len()));
        if let Some((u, _)) = self.winograd.as_mut() {
            *u = u.clone().with_bf16();
        }
        Ok(())
    }

    /// One convolution that computes `convs`, all over the same input, at once: their
    /// outputs stacked on the channels in order. They must be dense with the same kernel
    /// size, stride, padding and activation. GoogLeNet's inception blocks run their three
    /// 1x1 convolutions of the block's input this way: one product with the input read
    /// once, instead of three.
    pub fn stacked(convs: &[&Conv]) -> Result<Conv> {
        let Some(first) = convs.first() else {
            candle_core::bail!("stacking no convolutions");
        };
        let same = |c: &Conv| {
            !c.depthwise
                && (c.k, c.stride, c.pad, c.act) == (first.k, first.stride, first.pad, first.act)
        };
        if !convs.iter().all(|c| same(c)) {
            candle_core::bail!("stacked convolutions differ in kernel, stride, padding or kind");
        }
        let weights: Vec<&Tensor> = convs.iter().map(|c| &c.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if convs.iter().any(|c| c.bias.is_some()) {
            let biases = convs
                .iter()
                .map(|c| match &c.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(c.weight.dim(0)?, c.weight.dtype(), c.weight.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Conv::new(weight, bias, first.stride, first.pad, false, first.act)
    }

    /// Whether the products run in bf16 ([`Conv::to_bf16`]).
    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// Whether the CPU kernels run this convolution, on an `h x w` input, as Winograd
    /// F(2x2, 3x3) (see [`winograd_pays`] and [`Conv::with_winograd`]).
    pub fn is_winograd(&self, h: usize, w: usize) -> bool {
        self.winograd_for(h, w).is_some()
    }

    fn winograd_for(&self, h: usize, w: usize) -> Option<&Winograd> {
        let (wg, always) = self.winograd.as_ref()?;
        // Stride 1: the output is the padded input less the kernel's 2.
        let p = self.padding(h, w);
        let (oh, ow) = (
            (h + p.top + p.bottom).saturating_sub(2),
            (w + p.left + p.right).saturating_sub(2),
        );
        (*always || winograd_pays(wg.cin(), oh, ow)).then_some(wg)
    }

    /// Runs this convolution as Winograd F(2x2, 3x3) always (`true`) or never (`false`)
    /// instead of where [`winograd_pays`]: tests and benchmarks compare the two paths.
    /// Always applies only where Winograd can: a dense 3x3 stride-1 convolution with f32
    /// weights on the CPU.
    pub fn with_winograd(mut self, always: bool) -> Self {
        self.winograd = match (always, self.winograd.take()) {
            (false, _) => None,
            (true, Some((u, _))) => Some((u, true)),
            (true, None) => self.winograd_weights().map(|u| (u, true)),
        };
        self
    }

    fn padding(&self, h: usize, w: usize) -> Padding {
        match self.pad {
            PadMode::Fixed(p) => p,
            PadMode::TfSame => Padding::tf_same(h, w, self.k, self.stride),
        }
    }

    /// candle's operations: any device and dtype.
    fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let p = self.padding(h, w);
        let x = x
            .pad_with_zeros(2, p.top, p.bottom)?
            .pad_with_zeros(3, p.left, p.right)?;
        let groups = if self.depthwise { c } else { 1 };
        let y = x.conv2d(&self.weight, 0, self.stride, 1, groups)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        };
        self.act.tensor(y)
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.packed {
            Some((w, b)) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                let (_, _, h, wd) = x.dims4()?;
                let cout = self.weight.dim(0)?;
                x.apply_op1_no_bwd(&CpuConv {
                    weight: w,
                    winograd: self.winograd_for(h, wd),
                    bf16: self.bf16.as_ref(),
                    bias: b,
                    cout,
                    k: self.k,
                    stride: self.stride,
                    pad: self.padding(h, wd),
                    depthwise: self.depthwise,
                    act: self.act,
                })
            }
            _ => self.forward_candle(x),
        }
    }
}

/// Output rows the direct depthwise kernel computes together.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 4;

/// Target size of one band of im2col columns.
const BAND_BYTES: usize = 2 << 20;

/// `n` f32s made on rayon's pool a `block` at a time (the last block may be shorter): each
/// block is first filled, row by row of `row` values, with `fill[r % fill.len()]` for row
/// `r` of the whole vector (a bias per output plane, say), then handed to `f` with its
/// index and the thread's `init()` state while it is still in cache. Unlike `vec![0.0; n]`
/// and a fill, no thread first zeroes the whole vector on its own: that serial pass over
/// every layer's output was 5% of GoogLeNet's forward pass at 2 threads (perf).
///
/// # Panics
/// If `block` is not a multiple of `row`, or `fill` is empty.
pub(crate) fn par_blocks<T>(
    n: usize,
    block: usize,
    (row, fill): (usize, &[f32]),
    init: impl Fn() -> T + Sync + Send,
    f: impl Fn(&mut T, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    assert!(row > 0 && block.is_multiple_of(row) && !fill.is_empty());
    let mut y: Vec<f32> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n]
        .par_chunks_mut(block)
        .enumerate()
        .for_each_init(init, |state, (i, c)| {
            for (r, part) in c.chunks_mut(row).enumerate() {
                let v = fill[(i * (block / row) + r) % fill.len()];
                part.fill(std::mem::MaybeUninit::new(v));
            }
            // SAFETY: every element of c was written just above, and MaybeUninit<f32> has
            // f32's layout.
            let c = unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            f(state, i, c);
        });
    // SAFETY: each of the n elements lies in one block, written in full above.
    unsafe { y.set_len(n) };
    y
}

thread_local! {
    /// Each thread's im2col buffer, kept between calls.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct CpuConv<'a> {
    weight: &'a [f32],
    winograd: Option<&'a Winograd>,
    bf16: Option<&'a PackedA>,
    bias: &'a [f32],
    cout: usize,
    k: usize,
    stride: usize,
    pad: Padding,
    depthwise: bool,
    act: Activation,
}

impl CpuConv<'_> {
    fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let oh = (h + self.pad.top + self.pad.bottom - self.k) / self.stride + 1;
        let ow = (w + self.pad.left + self.pad.right - self.k) / self.stride + 1;
        (oh, ow)
    }

    /// Writes the columns of output rows `rows` of one image: `[c, k*k, rows.len() * ow]`
    /// (zeros where the window lies in the padding).
    fn im2col(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        rows: std::ops::Range<usize>,
        cols: &mut [f32],
    ) {
        let (_, ow) = self.out_size(h, w);
        let (k, s) = (self.k, self.stride);
        let n = rows.len() * ow;
        let pt = self.pad.top as isize;
        for ci in 0..c {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ki in 0..k {
                for kj in 0..k {
                    let row = ((ci * k + ki) * k + kj) * n;
                    let dst = &mut cols[row..row + n];
                    // ox range whose input column ix = ox*s + kj - left lies in [0, w).
                    let off = kj as isize - self.pad.left as isize;
                    let lo = if off >= 0 {
                        0
                    } else {
                        ((-off) as usize).div_ceil(s)
                    };
                    let hi = if (w as isize) - off <= 0 {
                        0
                    } else {
                        ((w as isize - off) as usize).div_ceil(s).min(ow)
                    };
                    let lo = lo.min(hi);
                    for (r, oy) in rows.clone().enumerate() {
                        let iy = (oy * s) as isize + ki as isize - pt;
                        let out = &mut dst[r * ow..(r + 1) * ow];
                        if iy < 0 || iy >= h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if s == 1 {
                            let start = (lo as isize + off) as usize;
                            out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                        } else {
                            for (ox, o) in out[lo..hi].iter_mut().enumerate() {
                                *o = src[(ox + lo) * s + kj - self.pad.left];
                            }
                        }
                    }
                }
            }
        }
    }

    /// One image of a dense convolution: `y[cout, oh*ow] = W @ cols + bias`, activated,
    /// with `y` holding the bias on entry ([`par_blocks`] puts it there). The columns are
    /// built a band of output rows at a time (about [`BAND_BYTES`]), so they are still in
    /// cache when the product reads them and the buffer stays small.
    fn dense_image(
        &self,
        x: &[f32],
        (c, h, w): (usize, usize, usize),
        y: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let (oh, ow) = self.out_size(h, w);
        let n = oh * ow;
        let kdim = c * self.k * self.k;
        let direct = self.k == 1 && self.stride == 1 && self.pad == Padding::same_all(0);
        if direct {
            // SAFETY: y is [cout, n], weight [cout, kdim], x [kdim, n], all row-major.
            unsafe { self.gemm(y.as_mut_ptr(), n, x.as_ptr(), n, n, kdim, par) };
        } else {
            let band = (BAND_BYTES / (4 * kdim * ow)).clamp(1, oh);
            COLS.with(|cols| {
                let mut cols = cols.borrow_mut();
                let need = kdim * band * ow;
                if cols.len() < need {
                    cols.resize(need, 0.0);
                }
                let mut r0 = 0;
                while r0 < oh {
                    let r1 = (r0 + band).min(oh);
                    let nb = (r1 - r0) * ow;
                    self.im2col(x, (c, h, w), r0..r1, &mut cols[..kdim * nb]);
                    // SAFETY: the destination is the [cout, nb] block of y starting at
                    // column r0*ow (row stride n), cols is [kdim, nb].
                    unsafe {
                        self.gemm(
                            y.as_mut_ptr().add(r0 * ow),
                            n,
                            cols.as_ptr(),
                            nb,
                            nb,
                            kdim,
                            par,
                        )
                    };
                    r0 = r1;
                }
            });
        }
        self.act.apply_all(y);
    }

    /// `dst[cout, n] += weight[cout, kdim] @ rhs[kdim, n]`, row-major with the given row
    /// strides.
    ///
    /// # Safety
    /// `dst` and `rhs` must hold the matrices their strides describe.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        &self,
        dst: *mut f32,
        dst_rs: usize,
        rhs: *const f32,
        rhs_rs: usize,
        n: usize,
        kdim: usize,
        par: gemm::Parallelism,
    ) {
        if let Some(a) = self.bf16 {
            let b = bf16::B::Rows {
                ptr: rhs,
                rs: rhs_rs,
            };
            // SAFETY: forwarded from the caller; `to_bf16` checked the CPU, and the packed
            // weight is [cout, kdim].
            unsafe {
                match par {
                    gemm::Parallelism::None => bf16::gemm(a, b, n, dst, dst_rs, true),
                    _ => bf16::gemm_par(a, b, n, dst, dst_rs, true),
                }
            }
            return;
        }
        // SAFETY: forwarded from the caller; the weight is [cout, kdim] row-major.
        unsafe {
            gemm::gemm(
                self.cout,
                n,
                kdim,
                dst,
                1,
                dst_rs as isize,
                true,
                self.weight.as_ptr(),
                1,
                kdim as isize,
                rhs,
                1,
                rhs_rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    }

    /// One channel plane of a depthwise convolution (`y` holding its bias on entry): the
    /// direct kernel where the stride is 1 or 2 (every depthwise layer of the backbones),
    /// in AVX-512 where the CPU has AVX-512F, else in AVX2 where it has AVX2 and FMA; else
    /// the row kernel.
    fn depthwise_plane(&self, x: &[f32], h: usize, w: usize, ch: usize, y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.stride <= 2 && self.k <= direct::MAX_K {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked), the stride and kernel fit.
                return unsafe { self.depthwise_plane_avx512(x, h, w, ch, y) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked), the stride and kernel fit.
                return unsafe { self.depthwise_plane_avx2(x, h, w, ch, y) };
            }
        }
        self.depthwise_plane_any(x, h, w, ch, y)
    }

    /// The direct kernel in AVX-512 (16 lanes).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; the stride is 1 or 2 and `k` at most [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn depthwise_plane_avx512(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        ch: usize,
        y: &mut [f32],
    ) {
        // SAFETY: forwarded; compiled for AVX-512F.
        unsafe { self.depthwise_direct::<direct::Avx512>(x, h, w, ch, y) }
    }

    /// The direct kernel in AVX2 (8 lanes).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the stride is 1 or 2 and `k` at most
    /// [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn depthwise_plane_avx2(&self, x: &[f32], h: usize, w: usize, ch: usize, y: &mut [f32]) {
        // SAFETY: forwarded; compiled for AVX2 and FMA.
        unsafe { self.depthwise_direct::<direct::Avx2>(x, h, w, ch, y) }
    }

    /// Direct: each block of `S::LANES` outputs of a row starts as the bias and takes the
    /// `k x k` window's products in a register (FMAs over the input runs loaded straight
    /// from the plane, [`direct`]), is activated there and stored once; four output rows at
    /// a time, so there are four independent FMA chains (one alone waits on each FMA's
    /// latency) and each input vector is loaded once for all the rows it feeds. With the
    /// row kernel, Lite0's twelve depthwise shapes took 156.8 ms per batch of 16 at 2
    /// threads on an AVX-512 Xeon (`examples/depthwise.rs`), 55.2 with this.
    ///
    /// # Safety
    /// The CPU must have what `S` uses, and the caller be compiled for it; the stride is 1
    /// or 2 and `k` at most [`direct::MAX_K`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn depthwise_direct<S: direct::Simd>(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        ch: usize,
        y: &mut [f32],
    ) {
        let (oh, ow) = self.out_size(h, w);
        let (k, s) = (self.k, self.stride);
        let top = self.pad.top as isize;
        assert!(x.len() >= h * w && y.len() >= oh * ow);
        assert!((s == 1 || s == 2) && k <= direct::MAX_K);
        let wk = &self.weight[ch * k * k..(ch + 1) * k * k];
        // SAFETY (every S:: call below): the CPU has what S uses and this function is
        // compiled for it (caller); loads read only a row of x inside x (asserted), stores
        // only outputs of y.
        let (bias, zero, six) = unsafe { (S::splat(self.bias[ch]), S::splat(0.0), S::splat(6.0)) };
        for ox in (0..ow).step_by(S::LANES) {
            let runs = unsafe { direct::runs::<S>(ox, s, self.pad.left, w, k) };
            let n = (ow - ox).min(S::LANES);
            let keep = unsafe { S::mask((0, n as u32)) };
            for oy0 in (0..oh).step_by(ROWS) {
                let nr = (oh - oy0).min(ROWS);
                let mut acc = [bias; ROWS];
                let first = (oy0 * s) as isize - top;
                for t in 0..(nr - 1) * s + k {
                    let iy = first + t as isize;
                    if iy < 0 || iy >= h as isize {
                        continue; // a row of padding: zeros
                    }
                    // The window row of input row iy for each output row (k: none).
                    let ki: [usize; ROWS] = std::array::from_fn(|r| {
                        let ki = t.wrapping_sub(r * s);
                        if r < nr && ki < k {
                            ki
                        } else {
                            k
                        }
                    });
                    let row = x[iy as usize * w..].as_ptr();
                    for (kj, run) in runs[..k].iter().enumerate() {
                        let v = unsafe { S::load(row, *run, s, zero) };
                        for (a, &ki) in acc.iter_mut().zip(&ki) {
                            if ki < k {
                                *a = unsafe { S::fma(S::splat(wk[ki * k + kj]), v, *a) };
                            }
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate().take(nr) {
                    let a = unsafe {
                        match self.act {
                            Activation::None => *a,
                            Activation::Relu => S::max(*a, zero),
                            Activation::Relu6 => S::min(S::max(*a, zero), six),
                        }
                    };
                    let at = (oy0 + r) * ow + ox;
                    unsafe { S::store(y[at..at + n].as_mut_ptr(), keep, a) };
                }
            }
        }
    }

    /// The row kernel, for CPUs without AVX2 and FMA, strides over 2 and windows over 16:
    /// each output row takes the window's `k x k` products as passes over a padded copy of
    /// the plane;
    /// stride 2 reads the plane split into its even and odd columns, so every inner loop is
    /// over contiguous slices.
    #[inline(always)]
    fn depthwise_plane_any(&self, x: &[f32], h: usize, w: usize, ch: usize, y: &mut [f32]) {
        let (oh, ow) = self.out_size(h, w);
        let (k, s) = (self.k, self.stride);
        let (ph, pw) = (
            h + self.pad.top + self.pad.bottom,
            w + self.pad.left + self.pad.right,
        );
        // The plane with its padding, so the inner loops have no bounds to check; for
        // stride 2, each row as its even columns then its odd ones.
        let mut padded = vec![0.0f32; ph * pw];
        for iy in 0..h {
            let d = (iy + self.pad.top) * pw + self.pad.left;
            padded[d..d + w].copy_from_slice(&x[iy * w..(iy + 1) * w]);
        }
        let half = pw.div_ceil(2);
        if s == 2 {
            let mut split = vec![0.0f32; ph * 2 * half];
            for (row, dst) in padded
                .chunks_exact(pw)
                .zip(split.chunks_exact_mut(2 * half))
            {
                let (even, odd) = dst.split_at_mut(half);
                for (i, v) in row.iter().enumerate() {
                    if i % 2 == 0 {
                        even[i / 2] = *v;
                    } else {
                        odd[i / 2] = *v;
                    }
                }
            }
            padded = split;
        }
        let row_len = if s == 2 { 2 * half } else { pw };
        let wk = &self.weight[ch * k * k..(ch + 1) * k * k];
        for oy in 0..oh {
            let out = &mut y[oy * ow..(oy + 1) * ow];
            for ki in 0..k {
                let src = &padded[(oy * s + ki) * row_len..(oy * s + ki + 1) * row_len];
                for kj in 0..k {
                    let wv = wk[ki * k + kj];
                    // Input column ox*s + kj: for stride 2, column ox + kj/2 of the even
                    // (kj even) or odd (kj odd) half.
                    let from = match s {
                        1 => kj,
                        2 => (kj % 2) * half + kj / 2,
                        _ => {
                            for (ox, o) in out.iter_mut().enumerate() {
                                *o += wv * src[ox * s + kj];
                            }
                            continue;
                        }
                    };
                    for (o, v) in out.iter_mut().zip(&src[from..from + ow]) {
                        *o += wv * v;
                    }
                }
            }
        }
        self.act.apply_all(y);
    }
}

impl CustomOp1 for CpuConv<'_> {
    fn name(&self) -> &'static str {
        "geoloc-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let plane_in = c * h * w;
        // Each image's [c, h, w] must be contiguous; the images may lie further apart, as
        // in a narrowed range of another tensor's channels (GoogLeNet's fused 1x1
        // convolutions feed their outputs' channel ranges on without copying them).
        let (start, stride) = (layout.start_offset(), layout.stride());
        let image = match stride {
            [si, sc, sh, 1] if *sc == h * w && *sh == w && (*si >= plane_in || b == 1) => *si,
            _ => candle_core::bail!("the CPU convolution takes each image's [c, h, w] contiguous"),
        };
        let x = match storage {
            CpuStorage::F32(v) if b == 0 => &v[..0],
            CpuStorage::F32(v) if start + (b - 1) * image + plane_in <= v.len() => {
                &v[start..start + (b - 1) * image + plane_in]
            }
            CpuStorage::F32(_) => candle_core::bail!("conv input layout outside its storage"),
            _ => candle_core::bail!("the CPU convolution takes f32"),
        };
        // Image i's [c, h, w].
        let img = |i: usize| &x[i * image..i * image + plane_in];
        let (pad_h, pad_w) = (
            self.pad.top + self.pad.bottom,
            self.pad.left + self.pad.right,
        );
        if h + pad_h < self.k || w + pad_w < self.k {
            candle_core::bail!("input {h}x{w} smaller than the {0}x{0} kernel", self.k);
        }
        let (oh, ow) = self.out_size(h, w);
        let plane_out = self.cout * oh * ow;
        let n = b * plane_out;
        // Each output plane starts as its bias.
        let bias = (oh * ow, self.bias);
        let y = if self.depthwise {
            if c != self.cout {
                candle_core::bail!("depthwise weight for {} channels, input has {c}", self.cout);
            }
            par_blocks(
                n,
                oh * ow,
                bias,
                || (),
                |_, i, out| {
                    let ch = i % c;
                    let src = &img(i / c)[ch * h * w..(ch + 1) * h * w];
                    self.depthwise_plane(src, h, w, ch, out);
                },
            )
        } else {
            if c * self.k * self.k != self.weight.len() / self.cout {
                candle_core::bail!(
                    "weight for {} input channels, input has {c}",
                    self.weight.len() / self.cout / self.k / self.k
                );
            }
            let threads = rayon::current_num_threads();
            if let Some(wg) = self.winograd {
                // Winograd writes every output (the bias with it), in bands across images.
                let mut y = par_blocks(n, oh * ow, (oh * ow, &[0.0]), || (), |_, _, _| {});
                wg.forward(
                    (x, image),
                    (b, h, w),
                    self.pad,
                    self.bias,
                    self.act,
                    &mut y,
                    (oh, ow),
                );
                y
            } else if b >= threads {
                // Images in parallel, one single-threaded product each.
                par_blocks(
                    n,
                    plane_out,
                    bias,
                    || (),
                    |_, i, out| self.dense_image(img(i), (c, h, w), out, gemm::Parallelism::None),
                )
            } else {
                let mut y = par_blocks(n, plane_out, bias, || (), |_, _, _| {});
                for (i, out) in y.chunks_mut(plane_out).enumerate() {
                    let par = gemm::Parallelism::Rayon(threads);
                    self.dense_image(img(i), (c, h, w), out, par);
                }
                y
            }
        };
        Ok((CpuStorage::F32(y), Shape::from((b, self.cout, oh, ow))))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    /// `n` deterministic values in [-0.5, 0.5) (a linear congruential sequence).
    pub(crate) fn seq(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The CPU kernels agree with candle's operations (the path other devices take) on
    /// every kind of convolution the backbones use, including odd sizes and asymmetric pads.
    #[test]
    fn cpu_kernels_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (batch, cin, cout, h, w, k, stride, pad, depthwise, act)
            (
                3,
                4,
                5,
                9,
                7,
                3,
                1,
                PadMode::Fixed(Padding::same_all(1)),
                false,
                Activation::Relu,
            ),
            (
                2,
                3,
                6,
                11,
                10,
                7,
                2,
                PadMode::Fixed(Padding::same_all(3)),
                false,
                Activation::None,
            ),
            (
                1,
                8,
                4,
                5,
                6,
                1,
                1,
                PadMode::Fixed(Padding::same_all(0)),
                false,
                Activation::Relu6,
            ),
            (
                2,
                3,
                8,
                13,
                12,
                3,
                2,
                PadMode::TfSame,
                false,
                Activation::Relu6,
            ),
            (
                2,
                6,
                6,
                9,
                8,
                3,
                1,
                PadMode::TfSame,
                true,
                Activation::Relu6,
            ),
            (
                3,
                5,
                5,
                11,
                9,
                5,
                2,
                PadMode::TfSame,
                true,
                Activation::None,
            ),
            (1, 4, 4, 7, 7, 3, 2, PadMode::TfSame, true, Activation::Relu),
        ];
        for (b, cin, cout, h, w, k, s, pad, dw, act) in cases {
            let wshape = if dw {
                (cout, 1, k, k)
            } else {
                (cout, cin, k, k)
            };
            let n = wshape.0 * wshape.1 * k * k;
            let weight = Tensor::from_vec(seq(n, 1), wshape, &dev)?;
            let bias = Tensor::from_vec(seq(cout, 2), cout, &dev)?;
            let x = Tensor::from_vec(seq(b * cin * h * w, 3), (b, cin, h, w), &dev)?;
            let conv = Conv::new(weight, Some(bias), s, pad, dw, act)?;
            let slow = conv.forward_candle(&x)?;
            // Each case on the kernels' own choice, forced to im2col, and (3x3 stride 1
            // dense) forced to Winograd.
            let winograd = k == 3 && s == 1 && !dw;
            for (always, path) in [
                (None, "auto"),
                (Some(false), "im2col"),
                (Some(true), "winograd"),
            ] {
                let conv = match always {
                    Some(a) => conv.clone().with_winograd(a),
                    None => conv.clone(),
                };
                assert_eq!(conv.is_winograd(h, w), winograd && always == Some(true));
                let fast = conv.forward(&x)?;
                assert_eq!(
                    fast.dims(),
                    slow.dims(),
                    "case {b} {cin} {cout} {h} {w} {k} {s}"
                );
                let err = max_error(&fast, &slow)?;
                assert!(err < 1e-5, "case k{k} s{s} dw{dw} {path}: max error {err}");
            }
        }
        Ok(())
    }

    /// Every depthwise kernel this CPU can run (the direct one in AVX-512 and in AVX2 with
    /// FMA, the row kernel) agrees with candle's grouped convolution, on
    /// planes narrower and wider than a vector, strides 1 and 2, 3x3 and 5x5, TF-SAME's
    /// asymmetric padding and PyTorch's symmetric one, each activation.
    #[test]
    fn every_depthwise_kernel_matches_candle() -> Result<()> {
        type Kernel = unsafe fn(&CpuConv, &[f32], usize, usize, usize, &mut [f32]);
        let mut kernels: Vec<(&str, Kernel)> = vec![("rows", |c, x, h, w, ch, y| {
            c.depthwise_plane_any(x, h, w, ch, y)
        })];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                kernels.push(("direct avx512", |c, x, h, w, ch, y| unsafe {
                    c.depthwise_plane_avx512(x, h, w, ch, y)
                }));
            } else {
                println!("skipped the direct AVX-512 kernel: this CPU lacks AVX-512F");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                kernels.push(("direct avx2", |c, x, h, w, ch, y| unsafe {
                    c.depthwise_plane_avx2(x, h, w, ch, y)
                }));
            } else {
                println!("skipped the direct AVX2 kernel: this CPU lacks AVX2 or FMA");
            }
        }
        let names: Vec<&str> = kernels.iter().map(|k| k.0).collect();
        println!("depthwise kernels run: {names:?}");
        let dev = Device::Cpu;
        let cases = [
            // (channels, h, w, k, stride, pad, act)
            (3, 9, 8, 3, 1, PadMode::TfSame, Activation::Relu6),
            (2, 11, 9, 5, 2, PadMode::TfSame, Activation::None),
            (3, 6, 37, 5, 2, PadMode::TfSame, Activation::Relu6),
            (
                2,
                5,
                40,
                3,
                1,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::Relu,
            ),
            (
                2,
                8,
                33,
                3,
                2,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::None,
            ),
            (2, 7, 7, 5, 1, PadMode::TfSame, Activation::Relu6),
            (2, 4, 56, 5, 1, PadMode::TfSame, Activation::None),
        ];
        for (c, h, w, k, s, pad, act) in cases {
            let weight = Tensor::from_vec(seq(c * k * k, 1), (c, 1, k, k), &dev)?;
            // Biases large enough that Relu6 clips above as well as below.
            let bias: Vec<f32> = seq(c, 2).iter().map(|v| v * 16.0).collect();
            let x = Tensor::from_vec(seq(c * h * w, 3), (1, c, h, w), &dev)?;
            let conv = Conv::new(
                weight,
                Some(Tensor::new(bias.as_slice(), &dev)?),
                s,
                pad,
                true,
                act,
            )?;
            let want = conv.forward_candle(&x)?;
            let (w_packed, b_packed) = conv.packed.as_ref().expect("f32 CPU weights");
            let cpu = CpuConv {
                weight: w_packed,
                winograd: None,
                bf16: None,
                bias: b_packed,
                cout: c,
                k,
                stride: s,
                pad: conv.padding(h, w),
                depthwise: true,
                act,
            };
            let (oh, ow) = cpu.out_size(h, w);
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            for (name, kernel) in &kernels {
                let mut got = Vec::new();
                for ch in 0..c {
                    let mut plane = vec![bias[ch]; oh * ow];
                    // SAFETY: the CPU has what each listed kernel needs (checked above).
                    unsafe {
                        kernel(
                            &cpu,
                            &xs[ch * h * w..(ch + 1) * h * w],
                            h,
                            w,
                            ch,
                            &mut plane,
                        )
                    };
                    got.extend(plane);
                }
                assert_eq!(got.len(), want.dims().iter().product::<usize>());
                let err = max_error(&Tensor::from_vec(got, want.dims(), &dev)?, &want)?;
                assert!(
                    err < 1e-5,
                    "{name}: {c}x{h}x{w} k{k} s{s} {pad:?}: max error {err}"
                );
            }
        }
        Ok(())
    }

    /// A range of another tensor's channels (images not adjacent, each image contiguous)
    /// goes through every CPU path as its contiguous copy does, bit for bit, and a layout
    /// with other strides is refused rather than misread.
    #[test]
    fn channel_ranges_are_taken_without_a_copy() -> Result<()> {
        let dev = Device::Cpu;
        let (b, total, h, w) = (3, 80, 9, 8);
        let x = Tensor::from_vec(seq(b * total * h * w, 5), (b, total, h, w), &dev)?;
        let cases = [
            // (first channel, channels, cout, k, depthwise, Winograd always)
            (3, 70, 12, 3, false, true),
            (5, 70, 12, 3, false, false),
            (1, 64, 16, 1, false, false),
            (7, 9, 9, 5, true, false),
        ];
        for (from, c, cout, k, dw, wino) in cases {
            let part = x.narrow(1, from, c)?;
            assert!(!part.is_contiguous());
            let wshape = if dw { (cout, 1, k, k) } else { (cout, c, k, k) };
            let n = wshape.0 * wshape.1 * k * k;
            let weight = Tensor::from_vec(seq(n, 1), wshape, &dev)?;
            let bias = Tensor::from_vec(seq(cout, 2), cout, &dev)?;
            let pad = PadMode::Fixed(Padding::same_all(k / 2));
            let conv =
                Conv::new(weight, Some(bias), 1, pad, dw, Activation::Relu)?.with_winograd(wino);
            assert_eq!(conv.is_winograd(h, w), wino);
            let got = conv.forward(&part)?.flatten_all()?.to_vec1::<f32>()?;
            let want = conv
                .forward(&part.contiguous()?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_eq!(
                got,
                want,
                "channels {from}..{} k{k} dw {dw} winograd {wino}",
                from + c
            );
        }
        // Rows of the plane not adjacent: refused.
        let weight = Tensor::from_vec(seq(4 * 80 * 9, 1), (4, 80, 3, 3), &dev)?;
        let conv = Conv::new(
            weight,
            None,
            1,
            PadMode::Fixed(Padding::same_all(1)),
            false,
            Activation::None,
        )?;
        let err = conv.forward(&x.narrow(3, 1, 6)?).unwrap_err();
        assert!(err.to_string().contains("contiguous"), "{err}");
        Ok(())
    }

    fn max_error(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The bf16 products (`Conv::to_bf16`) on every dense path: im2col (3x3, 7x7 stride 2,
    /// TF-SAME), 1x1 direct, Winograd, with batches above and below the thread count (one
    /// product per image, or one product split across the pool). im2col and 1x1 round the
    /// same operands as candle's convolution of the bf16-rounded weight and input, so they
    /// match it to f32 accumulation error; Winograd rounds the transformed operands, so it
    /// matches the f32 convolution to bf16's precision. Each differs from the f32 kernels
    /// (the bf16 path did run). Depthwise layers stay f32.
    #[test]
    fn bf16_products_match_candle_on_rounded_operands() -> Result<()> {
        if !bf16::available() {
            eprintln!("SKIPPED: bf16 conv test: this CPU has no AVX512-BF16");
            return Ok(());
        }
        let dev = Device::Cpu;
        let round =
            |t: &Tensor| -> Result<Tensor> { t.to_dtype(DType::BF16)?.to_dtype(DType::F32) };
        let same = |p| PadMode::Fixed(Padding::same_all(p));
        let cases = [
            // (batch, cin, cout, h, w, k, stride, pad, winograd)
            (3, 4, 5, 9, 7, 3, 1, same(1), false),
            (1, 3, 16, 23, 21, 7, 2, same(3), false),
            (4, 24, 40, 13, 12, 3, 2, PadMode::TfSame, false),
            (3, 33, 20, 6, 5, 1, 1, same(0), false),
            (1, 96, 130, 9, 11, 1, 1, same(0), false),
            (1, 64, 24, 14, 14, 3, 1, same(1), true),
            (5, 72, 64, 7, 9, 3, 1, same(1), true),
        ];
        for (b, cin, cout, h, w, k, s, pad, wino) in cases {
            let weight = Tensor::from_vec(seq(cout * cin * k * k, 1), (cout, cin, k, k), &dev)?;
            let bias = Tensor::from_vec(seq(cout, 2), cout, &dev)?;
            let x = Tensor::from_vec(seq(b * cin * h * w, 3), (b, cin, h, w), &dev)?;
            let f32_conv = Conv::new(
                weight.clone(),
                Some(bias.clone()),
                s,
                pad,
                false,
                Activation::Relu,
            )?
            .with_winograd(wino);
            let mut conv = f32_conv.clone();
            conv.to_bf16()?;
            assert!(conv.is_bf16() && conv.is_winograd(h, w) == wino);
            let got = conv.forward(&x)?;
            let full = f32_conv.forward(&x)?;
            let range = full.abs()?.max_all()?.to_scalar::<f32>()?;
            let case = format!("case {b} {cin}->{cout} {h}x{w} k{k} s{s} winograd={wino}");
            assert!(
                max_error(&got, &full)? > 0.0,
                "{case}: bf16 gave the f32 result"
            );
            if wino {
                let err = max_error(&got, &full)?;
                assert!(err < 1e-2 * range, "{case}: {err} of {range} from f32");
            } else {
                let rounded =
                    Conv::new(round(&weight)?, Some(bias), s, pad, false, Activation::Relu)?;
                let want = rounded.forward_candle(&round(&x)?)?;
                let err = max_error(&got, &want)?;
                assert!(
                    err < 1e-5 * range.max(1.0),
                    "{case}: {err} from rounded operands"
                );
            }
        }
        // Depthwise: no products, f32 unchanged.
        let dw = Tensor::from_vec(seq(6 * 9, 4), (6, 1, 3, 3), &dev)?;
        let mut conv = Conv::new(dw, None, 1, same(1), true, Activation::None)?;
        let x = Tensor::from_vec(seq(2 * 6 * 5 * 5, 5), (2, 6, 5, 5), &dev)?;
        let before = conv.forward(&x)?;
        conv.to_bf16()?;
        assert!(!conv.is_bf16());
        assert_eq!(max_error(&conv.forward(&x)?, &before)?, 0.0);
        Ok(())
    }

    /// Winograd F(2x2, 3x3) against candle's convolution where its tiling has edges: odd
    /// planes (the last tile row and column half outside), planes smaller than a tile,
    /// TensorFlow and asymmetric padding, more bands than images and the reverse, each
    /// activation; error relative to the output's largest value.
    #[test]
    fn winograd_matches_candle_at_the_edges_of_its_tiles() -> Result<()> {
        let dev = Device::Cpu;
        let asym = Padding {
            top: 0,
            bottom: 2,
            left: 2,
            right: 0,
        };
        let cases = [
            // (batch, cin, cout, h, w, pad, act)
            (
                2,
                64,
                40,
                7,
                7,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::Relu,
            ),
            (3, 80, 72, 14, 13, PadMode::TfSame, Activation::None),
            (
                1,
                64,
                64,
                1,
                1,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::None,
            ),
            (
                1,
                96,
                33,
                2,
                5,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::Relu6,
            ),
            (5, 64, 16, 9, 6, PadMode::Fixed(asym), Activation::None),
            (
                1,
                64,
                64,
                30,
                31,
                PadMode::Fixed(Padding::same_all(0)),
                Activation::Relu,
            ),
            (
                4,
                256,
                48,
                3,
                3,
                PadMode::Fixed(Padding::same_all(1)),
                Activation::Relu,
            ),
        ];
        // An empty batch gives an empty output, as on the other paths.
        let conv = |cin: usize| {
            let weight = Tensor::from_vec(seq(64 * cin * 9, 4), (64, cin, 3, 3), &dev)?;
            Conv::new(weight, None, 1, PadMode::TfSame, false, Activation::None)
        };
        let empty = Tensor::zeros((0, 64, 8, 8), candle_core::DType::F32, &dev)?;
        assert_eq!(
            conv(64)?.with_winograd(true).forward(&empty)?.dims(),
            [0, 64, 8, 8]
        );
        for (b, cin, cout, h, w, pad, act) in cases {
            let weight = Tensor::from_vec(seq(cout * cin * 9, 4), (cout, cin, 3, 3), &dev)?;
            let bias = Tensor::from_vec(seq(cout, 5), cout, &dev)?;
            let x = Tensor::from_vec(seq(b * cin * h * w, 6), (b, cin, h, w), &dev)?;
            let conv = Conv::new(weight, Some(bias), 1, pad, false, act)?.with_winograd(true);
            assert!(conv.is_winograd(h, w));
            let (fast, slow) = (conv.forward(&x)?, conv.forward_candle(&x)?);
            assert_eq!(fast.dims(), slow.dims(), "case {b} {cin} {cout} {h}x{w}");
            let scale = slow.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let err = max_error(&fast, &slow)? / scale;
            assert!(
                err < 1e-5,
                "case {b} {cin} {cout} {h}x{w} {pad:?}: error {err}"
            );
        }
        Ok(())
    }

    /// The kernels' own choice follows `winograd_pays`: VGG16's and GoogLeNet's wide layers
    /// take Winograd, thin ones and planes under 7x7 keep im2col, and other kernel sizes,
    /// strides and depthwise convolutions never take it.
    #[test]
    fn winograd_is_chosen_where_it_pays() -> Result<()> {
        let dev = Device::Cpu;
        let conv = |cin: usize, k: usize, s: usize, dw: bool| {
            let shape = if dw { (cin, 1, k, k) } else { (64, cin, k, k) };
            let n = shape.0 * shape.1 * k * k;
            let weight = Tensor::from_vec(seq(n, 7), shape, &dev)?;
            Conv::new(
                weight,
                None,
                s,
                PadMode::Fixed(Padding::same_all(k / 2)),
                dw,
                Activation::None,
            )
        };
        assert!(conv(64, 3, 1, false)?.is_winograd(224, 224));
        assert!(conv(96, 3, 1, false)?.is_winograd(7, 7));
        assert!(!conv(512, 3, 1, false)?.is_winograd(4, 4));
        assert!(!conv(48, 3, 1, false)?.is_winograd(56, 56));
        assert!(!conv(64, 3, 2, false)?.is_winograd(56, 56));
        assert!(!conv(64, 5, 1, false)?.is_winograd(56, 56));
        assert!(!conv(64, 3, 1, true)?.is_winograd(56, 56));
        assert!(!conv(512, 3, 1, false)?
            .with_winograd(false)
            .is_winograd(56, 56));
        assert!(conv(16, 3, 1, false)?.with_winograd(true).is_winograd(7, 7));
        assert!(!conv(64, 1, 1, false)?
            .with_winograd(true)
            .is_winograd(56, 56));
        Ok(())
    }

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        // 224 -> 112 with a 3x3 stride-2 kernel: one pixel, at the bottom/right.
        assert_eq!(
            Padding::tf_same(224, 224, 3, 2),
            Padding {
                top: 0,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        // 5x5 stride 2 on 56: output 28, total 3 -> 1 top, 2 bottom.
        assert_eq!(
            Padding::tf_same(56, 56, 5, 2),
            Padding {
                top: 1,
                bottom: 2,
                left: 1,
                right: 2
            }
        );
        // Stride 1 keeps the size: k - 1 split evenly.
        assert_eq!(Padding::tf_same(14, 14, 5, 1), Padding::same_all(2));
    }
}
