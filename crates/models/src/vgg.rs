//! VGG16 as torchvision builds it (`torchvision.models.vgg16`, configuration "D"), batched,
//! with torchvision's tensor names so its published weights load as they are:
//!
//! ```text
//! features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   3x3 convolutions, padding 1,
//!                                                                each followed by ReLU;
//!                                                                2x2 max-pools between blocks
//! avgpool                                                        adaptive average pool to 7x7
//! classifier.0  Linear(512*7*7, 4096)  ReLU  Dropout             -> fc6
//! classifier.3  Linear(4096, 4096)     ReLU  Dropout             -> fc7 (after its ReLU)
//! classifier.6  Linear(4096, 1000)                               -> logits
//! ```
//!
//! Input: `[N, 3, H, W]` f32, already normalised the way the weights expect (torchvision:
//! RGB / 255, ImageNet mean and std). Dropout is the identity at inference.

use crate::conv::{Activation, Conv, PadMode, Padding};
use crate::dense::Dense;
use crate::weights::{WeightMap, WeightsError};
use candle_core::{Module, Result, Tensor, D};

/// The layer a forward pass stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VggLayer {
    /// The adaptive-pooled convolutional features, flattened (`512*7*7`).
    Pool5,
    /// The second fully connected layer after its ReLU (4096).
    Fc7,
    /// The 1000 class scores before the softmax (what the paper used).
    Logits,
}

/// Channel plan and head sizes. [`VggConfig::vgg16`] is torchvision's; smaller ones serve
/// as test fixtures with the same code paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VggConfig {
    /// Output channels of each convolution; `None` is a 2x2 max-pool.
    pub features: Vec<Option<usize>>,
    pub hidden: usize,
    pub classes: usize,
}

impl VggConfig {
    /// torchvision's VGG16.
    pub fn vgg16() -> Self {
        Self::vgg16_divided(1, 4096, 1000)
    }

    /// VGG16's plan with every convolution's width divided by `div` and the given head.
    pub fn vgg16_divided(div: usize, hidden: usize, classes: usize) -> Self {
        let d = |c: usize| Some((c / div).max(1));
        let m = None;
        VggConfig {
            features: vec![
                d(64),
                d(64),
                m,
                d(128),
                d(128),
                m,
                d(256),
                d(256),
                d(256),
                m,
                d(512),
                d(512),
                d(512),
                m,
                d(512),
                d(512),
                d(512),
                m,
            ],
            hidden,
            classes,
        }
    }

    /// Channels of the last convolution.
    pub fn last_channels(&self) -> usize {
        self.features
            .iter()
            .rev()
            .flatten()
            .next()
            .copied()
            .unwrap_or(3)
    }

    /// Width of the output of `layer`.
    pub fn output_dim(&self, layer: VggLayer) -> usize {
        match layer {
            VggLayer::Pool5 => self.last_channels() * 49,
            VggLayer::Fc7 => self.hidden,
            VggLayer::Logits => self.classes,
        }
    }
}

/// Images per pass through the convolutional trunk on the CPU (see [`Vgg::forward`]).
const TRUNK_BATCH: usize = 4;

enum Stage {
    Conv(Box<Conv>),
    Pool,
}

/// A loaded VGG16.
pub struct Vgg {
    stages: Vec<Stage>,
    fc6: Dense,
    fc7: Dense,
    fc8: Dense,
    pub config: VggConfig,
}

fn linear(w: &mut WeightMap, name: &str, i: usize, o: usize) -> Option<Dense> {
    let weight = w.get(&format!("{name}.weight"), &[o, i]);
    let bias = w.get(&format!("{name}.bias"), &[o]);
    Some(Dense::new(weight?, Some(bias?)))
}

impl Vgg {
    /// Builds the network from torchvision-named weights; every missing, mismatched or
    /// unexpected tensor is named in the error.
    pub fn load(mut w: WeightMap, config: VggConfig) -> std::result::Result<Self, WeightsError> {
        let mut stages = Vec::new();
        let mut complete = true;
        let mut cin = 3;
        // torchvision's Sequential index: a conv and its ReLU take two slots, a pool one.
        let mut index = 0;
        for f in &config.features {
            match f {
                Some(c) => {
                    let weight = w.get(&format!("features.{index}.weight"), &[*c, cin, 3, 3]);
                    let bias = w.get(&format!("features.{index}.bias"), &[*c]);
                    let conv = match (weight, bias) {
                        (Some(wt), Some(b)) => Conv::new(
                            wt,
                            Some(b),
                            1,
                            PadMode::Fixed(Padding::same_all(1)),
                            false,
                            Activation::Relu,
                        )
                        .ok(),
                        _ => None,
                    };
                    match conv {
                        Some(c) => stages.push(Stage::Conv(Box::new(c))),
                        None => complete = false,
                    }
                    cin = *c;
                    index += 2;
                }
                None => {
                    stages.push(Stage::Pool);
                    index += 1;
                }
            }
        }
        let flat = config.last_channels() * 49;
        let fc6 = linear(&mut w, "classifier.0", flat, config.hidden);
        let fc7 = linear(&mut w, "classifier.3", config.hidden, config.hidden);
        let fc8 = linear(&mut w, "classifier.6", config.hidden, config.classes);
        w.finish("VGG16")?;
        match (fc6, fc7, fc8, complete) {
            (Some(fc6), Some(fc7), Some(fc8), true) => Ok(Vgg {
                stages,
                fc6,
                fc7,
                fc8,
                config,
            }),
            _ => unreachable!("finish() reports every missing tensor"),
        }
    }

    /// Runs every convolution's and linear layer's products in bf16 on the CPU (see
    /// [`Conv::to_bf16`]).
    pub fn to_bf16(&mut self) -> Result<()> {
        for s in &mut self.stages {
            if let Stage::Conv(c) = s {
                c.to_bf16()?;
            }
        }
        for fc in [&mut self.fc6, &mut self.fc7, &mut self.fc8] {
            fc.to_bf16()?;
        }
        Ok(())
    }

    /// The convolutions, pools and the adaptive pool to 7x7, flattened.
    fn trunk(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for s in &self.stages {
            x = match s {
                Stage::Conv(c) => c.forward(&x)?,
                // torchvision's MaxPool2d(2, 2), floor mode.
                Stage::Pool => crate::googlenet::max_pool(&x, 2, 2, 0, false)?,
            };
        }
        adaptive_avg_pool2d(&x, 7, 7)?.flatten_from(1)
    }

    /// Runs `[N, 3, H, W]` up to `layer`; returns `[N, output_dim(layer)]`.
    pub fn forward(&self, x: &Tensor, layer: VggLayer) -> Result<Tensor> {
        // The convolutional trunk runs at most TRUNK_BATCH images at a time on the CPU: its
        // activations (12.8 MB per image after the first layers) then stay a few hundred MB,
        // where a batch of 32 allocated and faulted in gigabytes per layer (3.1 against 3.8
        // images/s at one thread). The fully connected layers take the whole batch.
        let n = x.dim(0)?;
        let x = if x.device().is_cpu() && n > TRUNK_BATCH {
            let mut parts = Vec::new();
            for start in (0..n).step_by(TRUNK_BATCH) {
                let len = TRUNK_BATCH.min(n - start);
                parts.push(self.trunk(&x.narrow(0, start, len)?)?);
            }
            Tensor::cat(&parts, 0)?
        } else {
            self.trunk(x)?
        };
        if layer == VggLayer::Pool5 {
            return Ok(x);
        }
        let x = self.fc6.forward(&x)?.relu()?;
        let x = self.fc7.forward(&x)?.relu()?;
        if layer == VggLayer::Fc7 {
            return Ok(x);
        }
        self.fc8.forward(&x)
    }
}

/// PyTorch's `AdaptiveAvgPool2d((oh, ow))`: output cell (i, j) averages input rows
/// `floor(i*H/oh) .. ceil((i+1)*H/oh)` and the columns likewise.
pub fn adaptive_avg_pool2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    if h % oh == 0 && w % ow == 0 {
        return x.avg_pool2d((h / oh, w / ow));
    }
    let mut rows = Vec::with_capacity(oh);
    for i in 0..oh {
        let (r0, r1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
        let band = x.narrow(2, r0, r1 - r0)?.mean_keepdim(2)?;
        let mut cells = Vec::with_capacity(ow);
        for j in 0..ow {
            let (c0, c1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
            cells.push(band.narrow(3, c0, c1 - c0)?.mean_keepdim(D::Minus1)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&rows, 2)
}
