//! GoogLeNet as torchvision builds it (`torchvision.models.googlenet`), with its tensor
//! names, so torchvision's published weights load as they are. Hold it beside
//! `torchvision/models/googlenet.py`:
//!
//! ```text
//! conv1  BasicConv2d(3, 64, k7, s2, p3)       BasicConv2d = conv (no bias) + BatchNorm
//! maxpool1  MaxPool2d(3, 2, ceil_mode)                       (eps 1e-3) + ReLU
//! conv2  BasicConv2d(64, 64, k1)
//! conv3  BasicConv2d(64, 192, k3, p1)
//! maxpool2  MaxPool2d(3, 2, ceil_mode)
//! inception3a, 3b, maxpool3 (3, 2, ceil), 4a-4e, maxpool4 (2, 2, ceil), 5a, 5b
//! avgpool (adaptive to 1x1) -> pool (1024)   dropout   fc -> logits (1000)
//!
//! Inception: branch1 1x1 | branch2 1x1 -> 3x3 | branch3 1x1 -> 3x3 (torchvision's, where the
//! paper has 5x5) | branch4 max-pool 3x3 s1 p1 (ceil) -> 1x1; concatenated on channels.
//! ```
//!
//! BatchNorm is folded into the convolutions at load time. torchvision's pretrained weights
//! expect `transform_input`: the input normalised with ImageNet mean/std is mapped back to
//! the (x - 0.5) / 0.5 scaling the weights were trained on. The auxiliary heads (`aux1`,
//! `aux2`) are untrained in torchvision's file and ignored. candle has no ceil-mode max-pool:
//! the input is padded by replicating its edges, which is exact for a maximum.

use crate::conv::{Activation, Conv, PadMode, Padding};
use crate::dense::Dense;
pub use crate::pool::{max_pool, max_pool_ceil};
use crate::weights::{WeightMap, WeightsError};
use candle_core::{Module, Result, Tensor};

/// The layer a forward pass stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoogLeNetLayer {
    /// The global average pool (1024).
    Pool,
    /// The 1000 class scores before the softmax.
    Logits,
}

/// Channel plan. [`GoogLeNetConfig::googlenet`] is torchvision's; divided ones are test
/// fixtures with the same code paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogLeNetConfig {
    /// conv1, conv2, conv3 output channels.
    pub stem: [usize; 3],
    /// Per inception block (3a, 3b, 4a-4e, 5a, 5b): ch1x1, ch3x3red, ch3x3, ch5x5red,
    /// ch5x5, pool_proj.
    pub inception: [[usize; 6]; 9],
    pub classes: usize,
    /// Apply torchvision's `transform_input` (true for its pretrained weights).
    pub transform_input: bool,
}

const INCEPTION: [[usize; 6]; 9] = [
    [64, 96, 128, 16, 32, 32],
    [128, 128, 192, 32, 96, 64],
    [192, 96, 208, 16, 48, 64],
    [160, 112, 224, 24, 64, 64],
    [128, 128, 256, 24, 64, 64],
    [112, 144, 288, 32, 64, 64],
    [256, 160, 320, 32, 128, 128],
    [256, 160, 320, 32, 128, 128],
    [384, 192, 384, 48, 128, 128],
];
const NAMES: [&str; 9] = [
    "inception3a",
    "inception3b",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "inception5a",
    "inception5b",
];

impl GoogLeNetConfig {
    /// torchvision's GoogLeNet with its pretrained weights' `transform_input`.
    pub fn googlenet() -> Self {
        Self::divided(1, 1000)
    }

    /// Every width divided by `div`.
    pub fn divided(div: usize, classes: usize) -> Self {
        let d = |c: usize| (c / div).max(1);
        GoogLeNetConfig {
            stem: [d(64), d(64), d(192)],
            inception: INCEPTION.map(|b| b.map(d)),
            classes,
            transform_input: true,
        }
    }

    /// Channels out of an inception block.
    fn block_out(b: &[usize; 6]) -> usize {
        b[0] + b[2] + b[4] + b[5]
    }

    /// Width of the output of `layer`.
    pub fn output_dim(&self, layer: GoogLeNetLayer) -> usize {
        match layer {
            GoogLeNetLayer::Pool => Self::block_out(&self.inception[8]),
            GoogLeNetLayer::Logits => self.classes,
        }
    }
}

/// A convolution with its BatchNorm folded in, then ReLU.
struct BasicConv(Conv);

impl BasicConv {
    fn load(
        w: &mut WeightMap,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Option<Self> {
        let weight = w.get(&format!("{name}.conv.weight"), &[cout, cin, k, k]);
        let gamma = w.get(&format!("{name}.bn.weight"), &[cout]);
        let beta = w.get(&format!("{name}.bn.bias"), &[cout]);
        let mean = w.get(&format!("{name}.bn.running_mean"), &[cout]);
        let var = w.get(&format!("{name}.bn.running_var"), &[cout]);
        let (weight, gamma, beta, mean, var) = (weight?, gamma?, beta?, mean?, var?);
        let fold = || -> Result<(Tensor, Tensor)> {
            let scale = (gamma / (var + 1e-3)?.sqrt()?)?;
            let w = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
            let b = (beta - (mean * &scale)?)?;
            Ok((w, b))
        };
        let (wf, bf) = fold().ok()?;
        let pad = PadMode::Fixed(Padding::same_all(padding));
        Conv::new(wf, Some(bf), stride, pad, false, Activation::Relu)
            .ok()
            .map(BasicConv)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

struct Inception {
    /// branch1, branch2.0 and branch3.0: the three 1x1 convolutions of the block's input,
    /// run as one ([`Conv::stacked`]), whose output channels are branch1's, then the two
    /// 3x3 convolutions' inputs.
    reduce: Conv,
    /// Output channels of branch1, branch2.0 and branch3.0.
    widths: [usize; 3],
    b2: BasicConv,
    b3: BasicConv,
    b4: BasicConv,
}

impl Inception {
    fn load(w: &mut WeightMap, name: &str, cin: usize, c: &[usize; 6]) -> Option<Self> {
        let b1 = BasicConv::load(w, &format!("{name}.branch1"), cin, c[0], 1, 1, 0);
        let b2a = BasicConv::load(w, &format!("{name}.branch2.0"), cin, c[1], 1, 1, 0);
        let b2b = BasicConv::load(w, &format!("{name}.branch2.1"), c[1], c[2], 3, 1, 1);
        let b3a = BasicConv::load(w, &format!("{name}.branch3.0"), cin, c[3], 1, 1, 0);
        let b3b = BasicConv::load(w, &format!("{name}.branch3.1"), c[3], c[4], 3, 1, 1);
        let b4 = BasicConv::load(w, &format!("{name}.branch4.1"), cin, c[5], 1, 1, 0);
        let (b1, b2a, b3a) = (b1?, b2a?, b3a?);
        Some(Inception {
            reduce: Conv::stacked(&[&b1.0, &b2a.0, &b3a.0]).ok()?,
            widths: [c[0], c[1], c[3]],
            b2: b2b?,
            b3: b3b?,
            b4: b4?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [c1, c2, c3] = self.widths;
        // The CPU convolutions read the channel ranges in place.
        let r = self.reduce.forward(x)?;
        let b2 = self.b2.forward(&r.narrow(1, c1, c2)?)?;
        let b3 = self.b3.forward(&r.narrow(1, c1 + c2, c3)?)?;
        let b4 = self.b4.forward(&max_pool_ceil(x, 3, 1, 1)?)?;
        Tensor::cat(&[r.narrow(1, 0, c1)?, b2, b3, b4], 1)
    }
}

/// A loaded GoogLeNet.
pub struct GoogLeNet {
    conv1: BasicConv,
    conv2: BasicConv,
    conv3: BasicConv,
    blocks: Vec<Inception>,
    fc: Dense,
    pub config: GoogLeNetConfig,
}

impl GoogLeNet {
    /// Builds the network from torchvision-named weights, folding BatchNorm; every missing,
    /// mismatched or unexpected tensor is named in the error. `num_batches_tracked` and the
    /// auxiliary heads are ignored.
    pub fn load(
        mut w: WeightMap,
        config: GoogLeNetConfig,
    ) -> std::result::Result<Self, WeightsError> {
        w.ignore(|n| {
            n.ends_with("num_batches_tracked") || n.starts_with("aux1.") || n.starts_with("aux2.")
        });
        let [s1, s2, s3] = config.stem;
        let conv1 = BasicConv::load(&mut w, "conv1", 3, s1, 7, 2, 3);
        let conv2 = BasicConv::load(&mut w, "conv2", s1, s2, 1, 1, 0);
        let conv3 = BasicConv::load(&mut w, "conv3", s2, s3, 3, 1, 1);
        let mut cin = s3;
        let mut blocks = Vec::new();
        for (name, c) in NAMES.iter().zip(&config.inception) {
            blocks.push(Inception::load(&mut w, name, cin, c));
            cin = GoogLeNetConfig::block_out(c);
        }
        let fc_w = w.get("fc.weight", &[config.classes, cin]);
        let fc_b = w.get("fc.bias", &[config.classes]);
        w.finish("GoogLeNet")?;
        let blocks: Option<Vec<Inception>> = blocks.into_iter().collect();
        match (conv1, conv2, conv3, blocks, fc_w, fc_b) {
            (Some(conv1), Some(conv2), Some(conv3), Some(blocks), Some(fw), Some(fb)) => {
                Ok(GoogLeNet {
                    conv1,
                    conv2,
                    conv3,
                    blocks,
                    fc: Dense::new(fw, Some(fb)),
                    config,
                })
            }
            _ => unreachable!("finish() reports every missing tensor"),
        }
    }

    /// Runs every convolution's and the linear layer's products in bf16 on the CPU (see
    /// [`Conv::to_bf16`]).
    pub fn to_bf16(&mut self) -> Result<()> {
        for c in [&mut self.conv1, &mut self.conv2, &mut self.conv3] {
            c.0.to_bf16()?;
        }
        for b in &mut self.blocks {
            b.reduce.to_bf16()?;
            for c in [&mut b.b2, &mut b.b3, &mut b.b4] {
                c.0.to_bf16()?;
            }
        }
        self.fc.to_bf16()
    }

    /// Runs `[N, 3, H, W]` (normalised with ImageNet mean/std) up to `layer`.
    pub fn forward(&self, x: &Tensor, layer: GoogLeNetLayer) -> Result<Tensor> {
        let x = if self.config.transform_input {
            transform_input(x)?
        } else {
            x.clone()
        };
        let x = self.conv1.forward(&x)?;
        let x = max_pool_ceil(&x, 3, 2, 0)?;
        let x = self.conv2.forward(&x)?;
        let x = self.conv3.forward(&x)?;
        let mut x = max_pool_ceil(&x, 3, 2, 0)?;
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x)?;
            // maxpool3 after 3b, maxpool4 after 4e.
            if i == 1 {
                x = max_pool_ceil(&x, 3, 2, 0)?;
            } else if i == 6 {
                x = max_pool_ceil(&x, 2, 2, 0)?;
            }
        }
        let x = x.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
        if layer == GoogLeNetLayer::Pool {
            return Ok(x);
        }
        self.fc.forward(&x)
    }
}

/// torchvision's `_transform_input`: channel c becomes `x * (std_c / 0.5) + (mean_c - 0.5) / 0.5`.
fn transform_input(x: &Tensor) -> Result<Tensor> {
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let scale: Vec<f32> = std.iter().map(|s| s / 0.5).collect();
    let shift: Vec<f32> = mean.iter().map(|m| (m - 0.5) / 0.5).collect();
    let dev = x.device();
    let scale = Tensor::from_vec(scale, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    let shift = Tensor::from_vec(shift, (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift)
}
