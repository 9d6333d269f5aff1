//! One face for every feature extractor: the CNN backbones (VGG16, GoogLeNet,
//! EfficientNet-Lite0/1/2) and HOG. featurize and predict build a [`Backbone`] from a
//! [`BackboneSpec`] and a weights source, and turn batches of 8-bit RGB images (HWC, as the
//! images dataset stores them) into feature rows; the backbone owns the normalisation its
//! weights expect.

use crate::checkpoint;
use crate::efficientnet::{EfficientNetLite, LiteConfig, LiteLayer, LiteVariant};
use crate::googlenet::{GoogLeNet, GoogLeNetConfig, GoogLeNetLayer};
use crate::vgg::{Vgg, VggConfig, VggLayer};
use crate::weights::{WeightMap, WeightsError};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The feature extractors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    /// torchvision's VGG16 (the paper's).
    Vgg16,
    /// torchvision's GoogLeNet (the paper's).
    Googlenet,
    /// EfficientNet-Lite0 (`efficientnet_lite_pytorch`; the demo's, real weights; 224 pixels).
    Lite0,
    /// EfficientNet-Lite1 (real weights; trained at 240 pixels).
    Lite1,
    /// EfficientNet-Lite2 (real weights; trained at 260 pixels).
    Lite2,
    /// Histogram of oriented gradients (the paper's baseline features).
    Hog,
}

impl BackboneKind {
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::Vgg16 => "vgg16",
            BackboneKind::Googlenet => "googlenet",
            BackboneKind::Lite0 => "lite0",
            BackboneKind::Lite1 => "lite1",
            BackboneKind::Lite2 => "lite2",
            BackboneKind::Hog => "hog",
        }
    }

    /// The EfficientNet-Lite variant, for the Lite kinds.
    pub fn lite(self) -> Option<LiteVariant> {
        match self {
            BackboneKind::Lite0 => Some(LiteVariant::Lite0),
            BackboneKind::Lite1 => Some(LiteVariant::Lite1),
            BackboneKind::Lite2 => Some(LiteVariant::Lite2),
            _ => None,
        }
    }
}

/// Where a CNN stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Layer {
    /// The 1000 class scores before the softmax ("the input to the final softmax", the
    /// paper's features).
    Logits,
    /// VGG16's second fully connected layer after its ReLU (4096).
    Fc7,
    /// VGG16's adaptive-pooled convolutional output, flattened (25088).
    Pool5,
    /// GoogLeNet's (1024) or EfficientNet-Lite's (1280) global average pool.
    Pool,
}

/// How 8-bit RGB becomes the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Normalisation {
    /// torchvision: RGB / 255, minus ImageNet mean (0.485, 0.456, 0.406), over std (0.229,
    /// 0.224, 0.225). GoogLeNet's `transform_input` is applied inside the network.
    Imagenet,
    /// Caffe: BGR in 0-255 minus (104, 117, 123), for weights converted from Caffe.
    CaffeBgr,
    /// TensorFlow's EfficientNet-Lite: (RGB - 127) / 128.
    TfLite,
}

impl Normalisation {
    /// Per output channel: the source channel, scale and shift (`x * scale + shift`).
    fn plan(self) -> [(usize, f32, f32); 3] {
        match self {
            Normalisation::Imagenet => {
                let mean = [0.485f32, 0.456, 0.406];
                let std = [0.229f32, 0.224, 0.225];
                [0, 1, 2].map(|c| (c, 1.0 / (255.0 * std[c]), -mean[c] / std[c]))
            }
            Normalisation::CaffeBgr => [(2, 1.0, -104.0), (1, 1.0, -117.0), (0, 1.0, -123.0)],
            Normalisation::TfLite => [0, 1, 2].map(|c| (c, 1.0 / 128.0, -127.0 / 128.0)),
        }
    }
}

/// HOG parameters (`imageproc::hog`): gradients of the greyscale image, `orientations`
/// bins per `cell_side` pixel cell, blocks of `block_side` cells every `block_stride` cells,
/// each block scaled to unit L2 norm. The image size must be a whole number of cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HogParams {
    pub orientations: usize,
    pub signed: bool,
    pub cell_side: usize,
    pub block_side: usize,
    pub block_stride: usize,
}

impl Default for HogParams {
    /// 9 unsigned bins, 6-pixel cells (they tile the paper's 150x90), 2x2-cell blocks
    /// every cell (Dalal and Triggs' layout).
    fn default() -> Self {
        HogParams {
            orientations: 9,
            signed: false,
            cell_side: 6,
            block_side: 2,
            block_stride: 1,
        }
    }
}

impl HogParams {
    fn options(&self) -> imageproc::hog::HogOptions {
        imageproc::hog::HogOptions::new(
            self.orientations,
            self.signed,
            self.cell_side,
            self.block_side,
            self.block_stride,
        )
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub kind: BackboneKind,
    /// CNNs only; default [`BackboneSpec::default_layer`].
    pub layer: Option<Layer>,
    /// CNNs only; default [`BackboneSpec::default_normalisation`].
    pub normalisation: Option<Normalisation>,
    /// HOG only.
    pub hog: HogParams,
}

impl BackboneSpec {
    /// The paper's features: the logits.
    pub fn default_layer(kind: BackboneKind) -> Option<Layer> {
        (kind != BackboneKind::Hog).then_some(Layer::Logits)
    }

    /// What the weights each backbone loads were trained with.
    pub fn default_normalisation(kind: BackboneKind) -> Option<Normalisation> {
        match kind {
            BackboneKind::Vgg16 | BackboneKind::Googlenet => Some(Normalisation::Imagenet),
            BackboneKind::Lite0 | BackboneKind::Lite1 | BackboneKind::Lite2 => {
                Some(Normalisation::TfLite)
            }
            BackboneKind::Hog => None,
        }
    }

    pub fn layer(&self) -> Option<Layer> {
        self.layer.or(Self::default_layer(self.kind))
    }

    pub fn normalisation(&self) -> Option<Normalisation> {
        self.normalisation
            .or(Self::default_normalisation(self.kind))
    }

    /// Checks the combination; returns the feature width for a `width x height` input.
    pub fn output_dim(&self, width: u32, height: u32) -> Result<usize, ModelError> {
        let bad = |msg: String| Err(ModelError::Spec(msg));
        match (self.kind, self.layer()) {
            (BackboneKind::Hog, _) => {
                if self.layer.is_some() || self.normalisation.is_some() {
                    return bad("hog takes no `layer` or `normalisation`".into());
                }
                imageproc::hog::HogSpec::from_options(width, height, self.hog.options())
                    .map(|s| s.descriptor_length())
                    .map_err(|e| ModelError::Spec(format!("hog on {width}x{height}: {e}")))
            }
            (_, None) => bad("a CNN needs a layer".into()),
            (kind, Some(layer)) => {
                if width < 32 || height < 32 {
                    return bad(format!(
                        "{} needs at least 32x32 input, got {width}x{height}",
                        kind.name()
                    ));
                }
                match (kind, layer) {
                    (BackboneKind::Vgg16, Layer::Logits) => Ok(1000),
                    (BackboneKind::Vgg16, Layer::Fc7) => Ok(4096),
                    (BackboneKind::Vgg16, Layer::Pool5) => Ok(25088),
                    (BackboneKind::Googlenet, Layer::Logits) => Ok(1000),
                    (BackboneKind::Googlenet, Layer::Pool) => Ok(1024),
                    (k, Layer::Logits) if k.lite().is_some() => Ok(1000),
                    (k, Layer::Pool) if k.lite().is_some() => Ok(1280),
                    (k, l) => bad(format!(
                        "{} has no layer {l:?} (vgg16: logits, fc7, pool5; googlenet and lite0/1/2: logits, pool)",
                        k.name()
                    )),
                }
            }
        }
    }
}

/// Where a CNN's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// A checkpoint file (legacy or zip `.pth`, `.safetensors`), optionally nested under
    /// `key` (a training checkpoint's `state_dict`).
    File { path: PathBuf, key: Option<String> },
    /// Seeded random weights: only on request (`--random-init`), never as a fallback.
    Random { seed: u64 },
}

/// Why a backbone could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("backbone spec: {0}")]
    Spec(String),
    // `error`, not `source`: the message already carries it (no repetition in chains).
    #[error("weights file {path}: {error}")]
    Checkpoint {
        path: PathBuf,
        error: checkpoint::CheckpointError,
    },
    #[error("weights file {path}: {error}")]
    Weights {
        path: PathBuf,
        error: Box<WeightsError>,
    },
    /// A device that cannot be used here: the reason is one line, for a person.
    #[error("device `{0}`: {1}")]
    Device(String, String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

enum Net {
    Vgg(Box<Vgg>, VggLayer),
    Inception(Box<GoogLeNet>, GoogLeNetLayer),
    Lite(Box<EfficientNetLite>, LiteLayer),
    Hog(HogParams),
}

/// A built feature extractor.
pub struct Backbone {
    pub spec: BackboneSpec,
    net: Net,
    device: Device,
    dtype: DType,
}

/// Whether this build has candle's CUDA backend (the `cuda` feature, `cargo xtask
/// build-cuda`).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// `cpu`, `cuda`, `cuda:N`: the candle device. Asking for CUDA where it cannot be had is one
/// clear error, never a silent fallback to the CPU: the CPU build says it is the CPU build,
/// the CUDA build says which GPU could not be opened and why.
pub fn parse_device(s: &str) -> Result<Device, ModelError> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ModelError::Spec(format!("unknown device `{s}` (cpu, cuda, cuda:N)")))?,
    };
    if !CUDA_BUILD {
        return Err(ModelError::Device(
            s.to_owned(),
            "this geoloc is the CPU build; CUDA needs the CUDA build (`cargo xtask build-cuda`, \
             run on a node with an NVIDIA GPU and driver)"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        // candle's CUDA errors can span lines (and carry a backtrace): keep the first.
        let why = e.to_string();
        let why = why.lines().next().unwrap_or("unknown error").trim().to_owned();
        let visible = std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| format!("; CUDA_VISIBLE_DEVICES={v:?}"))
            .unwrap_or_default();
        ModelError::Device(
            s.to_owned(),
            format!("CUDA GPU {ordinal} cannot be opened ({why}): no NVIDIA GPU or driver visible to this process{visible}"),
        )
    })
}

/// `f32`, `f16`, `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType, ModelError> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(ModelError::Spec(format!(
            "unknown dtype `{s}` (f32, f16, bf16)"
        ))),
    }
}

impl Backbone {
    /// Builds the backbone; a CNN loads its weights from `weights` (required for a CNN).
    ///
    /// bf16 on the CPU keeps the weights and activations f32 and runs every matrix product
    /// in bf16 with f32 accumulation (`geoloc_models::cpu`: AVX512-BF16); a CPU without it is
    /// refused with what it has. f16 on the CPU runs candle's generic operations.
    pub fn load(
        spec: BackboneSpec,
        weights: Option<&WeightsSource>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let cpu_bf16 = device.is_cpu() && dtype == DType::BF16 && spec.kind != BackboneKind::Hog;
        if cpu_bf16 {
            let cpu = crate::cpu::CpuFeatures::detect();
            if let Some(why) = cpu.bf16_refusal("bf16") {
                return Err(ModelError::Device("cpu".into(), why));
            }
        }
        // The tensors' dtype: the CPU's bf16 rounds inside the products only.
        let dtype = if cpu_bf16 { DType::F32 } else { dtype };
        let mut net = match spec.kind {
            BackboneKind::Hog => Net::Hog(spec.hog),
            kind => {
                let layer = spec
                    .layer()
                    .ok_or_else(|| ModelError::Spec("no layer".into()))?;
                // Validates the layer for the kind (the size check does not matter here).
                spec.output_dim(224, 224)?;
                let source = weights.ok_or_else(|| {
                    ModelError::Spec(format!(
                        "{} needs a weights file (or random initialisation, asked for explicitly)",
                        kind.name()
                    ))
                })?;
                let (map, path) = match source {
                    WeightsSource::File { path, key } => {
                        let ck = checkpoint::load(path, key.as_deref()).map_err(|e| {
                            ModelError::Checkpoint {
                                path: path.clone(),
                                error: e,
                            }
                        })?;
                        (WeightMap::new(ck.tensors, dtype), path.clone())
                    }
                    WeightsSource::Random { seed } => (
                        WeightMap::random(*seed).with_dtype(dtype),
                        PathBuf::from("<random>"),
                    ),
                };
                let map = map.on(device);
                let wrap = |e| ModelError::Weights {
                    path: path.clone(),
                    error: Box::new(e),
                };
                match (kind, layer) {
                    (BackboneKind::Vgg16, l) => Net::Vgg(
                        Box::new(Vgg::load(map, VggConfig::vgg16()).map_err(wrap)?),
                        match l {
                            Layer::Fc7 => VggLayer::Fc7,
                            Layer::Pool5 => VggLayer::Pool5,
                            _ => VggLayer::Logits,
                        },
                    ),
                    (BackboneKind::Googlenet, l) => Net::Inception(
                        Box::new(GoogLeNet::load(map, GoogLeNetConfig::googlenet()).map_err(wrap)?),
                        if l == Layer::Pool {
                            GoogLeNetLayer::Pool
                        } else {
                            GoogLeNetLayer::Logits
                        },
                    ),
                    (k, l) => {
                        let v = k.lite().ok_or_else(|| {
                            ModelError::Spec(format!("{} is not a CNN", k.name()))
                        })?;
                        let net = EfficientNetLite::load(map, LiteConfig::variant(v));
                        Net::Lite(
                            Box::new(net.map_err(wrap)?),
                            if l == Layer::Pool {
                                LiteLayer::Pool
                            } else {
                                LiteLayer::Logits
                            },
                        )
                    }
                }
            }
        };
        if cpu_bf16 {
            match &mut net {
                Net::Vgg(n, _) => n.to_bf16()?,
                Net::Inception(n, _) => n.to_bf16()?,
                Net::Lite(n, _) => n.to_bf16()?,
                Net::Hog(_) => {}
            }
        }
        Ok(Backbone {
            spec,
            net,
            device: device.clone(),
            dtype,
        })
    }

    /// Whether it runs on the CPU.
    pub fn on_cpu(&self) -> bool {
        self.device.is_cpu()
    }

    /// Feature rows for a batch of `width x height` 8-bit RGB images (HWC), row-major
    /// `[images, dim]`.
    pub fn features(
        &self,
        images: &[&[u8]],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, ModelError> {
        let (w, h) = (width as usize, height as usize);
        if let Some(bad) = images.iter().position(|p| p.len() != w * h * 3) {
            return Err(ModelError::Spec(format!(
                "image {bad} has {} bytes, expected {w}x{h}x3",
                images[bad].len()
            )));
        }
        if let Net::Hog(p) = &self.net {
            let rows: Result<Vec<Vec<f32>>, String> = images
                .par_iter()
                .map(|px| {
                    let rgb = image::RgbImage::from_raw(width, height, px.to_vec())
                        .ok_or_else(|| "image size".to_string())?;
                    let grey = image::DynamicImage::ImageRgb8(rgb).to_luma8();
                    imageproc::hog::hog(&grey, p.options())
                })
                .collect();
            return Ok(rows.map_err(ModelError::Spec)?.concat());
        }
        let norm = self
            .spec
            .normalisation()
            .ok_or_else(|| ModelError::Spec("no normalisation".into()))?;
        let x = if self.device.is_cpu() {
            let x = to_nchw(images, w, h, norm);
            Tensor::from_vec(x, (images.len(), 3, h, w), &Device::Cpu)?.to_dtype(self.dtype)?
        } else {
            to_nchw_on(images, w, h, norm, &self.device, self.dtype)?
        };
        let y = match &self.net {
            Net::Vgg(n, l) => n.forward(&x, *l)?,
            Net::Inception(n, l) => n.forward(&x, *l)?,
            Net::Lite(n, l) => n.forward(&x, *l)?,
            Net::Hog(_) => unreachable!("handled above"),
        };
        Ok(y.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?)
    }
}

/// HWC u8 images -> normalised NCHW f32.
fn to_nchw(images: &[&[u8]], w: usize, h: usize, norm: Normalisation) -> Vec<f32> {
    let plan = norm.plan();
    let plane = w * h;
    let mut out = vec![0f32; images.len() * 3 * plane];
    out.par_chunks_mut(3 * plane)
        .zip(images.par_iter())
        .for_each(|(dst, px)| {
            for (c, &(src, scale, shift)) in plan.iter().enumerate() {
                let d = &mut dst[c * plane..(c + 1) * plane];
                for (o, p) in d.iter_mut().zip(px.chunks_exact(3)) {
                    *o = p[src] as f32 * scale + shift;
                }
            }
        });
    out
}

/// HWC u8 images -> normalised NCHW on `device` in `dtype`, for devices other than the
/// CPU: the 8-bit pixels cross to the device in one transfer (a quarter of the bytes of the
/// f32 tensor) and are converted, reordered and normalised there, with the same two
/// roundings (`x * scale`, then `+ shift`) as [`to_nchw`], so the values are equal.
fn to_nchw_on(
    images: &[&[u8]],
    w: usize,
    h: usize,
    norm: Normalisation,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let plan = norm.plan();
    let bytes: Vec<u8> = images.concat();
    let x = Tensor::from_vec(bytes, (images.len(), h, w, 3), device)?.to_dtype(DType::F32)?;
    let source = Tensor::new(&plan.map(|p| p.0 as u32), device)?;
    let scale = Tensor::new(&plan.map(|p| p.1), device)?.reshape((1, 1, 1, 3))?;
    let shift = Tensor::new(&plan.map(|p| p.2), device)?.reshape((1, 1, 1, 3))?;
    x.index_select(&source, 3)?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift)?
        .permute((0, 3, 1, 2))?
        .contiguous()?
        .to_dtype(dtype)
}

/// The checksum featurize records for a weights file: blake3 of its bytes.
pub fn weights_checksum(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path)?;
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device path (8-bit upload, normalisation as tensor operations) gives the CPU
    /// path's values exactly, for each normalisation; run here on the CPU device.
    #[test]
    fn device_normalisation_equals_the_cpu_path() {
        let mut rng = geoloc_core::rng::SplitMix64::new(3);
        let (w, h) = (5, 3);
        let imgs: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                (0..w * h * 3)
                    .map(|_| (rng.next_u64() % 256) as u8)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u8]> = imgs.iter().map(|v| v.as_slice()).collect();
        for norm in [
            Normalisation::Imagenet,
            Normalisation::CaffeBgr,
            Normalisation::TfLite,
        ] {
            let want = to_nchw(&refs, w, h, norm);
            let got = to_nchw_on(&refs, w, h, norm, &Device::Cpu, DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got, want, "{norm:?}");
        }
    }

    /// One 2x1 image, pixels (R, G, B) = (10, 20, 30) and (200, 100, 0), through each
    /// normalisation, against the formulas written out by hand.
    #[test]
    fn normalisations_match_their_definitions() {
        let px: &[u8] = &[10, 20, 30, 200, 100, 0];
        let close = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
        };
        let imagenet = to_nchw(&[px], 2, 1, Normalisation::Imagenet);
        let want: Vec<f32> = [(0, 0.485, 0.229), (1, 0.456, 0.224), (2, 0.406, 0.225)]
            .iter()
            .flat_map(|&(c, m, s)| [px[c], px[3 + c]].map(|v| (v as f32 / 255.0 - m) / s))
            .collect();
        assert!(close(&imagenet, &want), "{imagenet:?} vs {want:?}");
        // Caffe: channel 0 is blue minus 104, then green minus 117, red minus 123.
        let caffe = to_nchw(&[px], 2, 1, Normalisation::CaffeBgr);
        assert!(
            close(
                &caffe,
                &[
                    30.0 - 104.0,
                    0.0 - 104.0,
                    20.0 - 117.0,
                    100.0 - 117.0,
                    10.0 - 123.0,
                    200.0 - 123.0
                ]
            ),
            "{caffe:?}"
        );
        let lite = to_nchw(&[px], 2, 1, Normalisation::TfLite);
        assert!(
            close(
                &lite,
                &[
                    -117.0 / 128.0,
                    73.0 / 128.0,
                    -107.0 / 128.0,
                    -27.0 / 128.0,
                    -97.0 / 128.0,
                    -127.0 / 128.0
                ]
            ),
            "{lite:?}"
        );
    }
}
