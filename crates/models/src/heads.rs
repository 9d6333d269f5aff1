//! Heads trained on features. So far the paper's MLP: `INPUT -> [DROPOUT -> FC] x3`, dropout
//! 0.2, 0.5, 0.5, 800 hidden units, a ReLU after each hidden FC (the paper's framework,
//! Lasagne, rectifies dense layers by default); its output is class scores (country) or two
//! coordinates (regression), the loss is chosen by the trainer.

use crate::rng::SplitMix64;
use candle_core::{DType, Device, Result, Tensor, Var};

/// The MLP's shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MlpConfig {
    pub input: usize,
    pub hidden: usize,
    pub outputs: usize,
    /// Dropout probability before each of the three FC layers.
    pub dropout: [f32; 3],
}

impl MlpConfig {
    /// The paper's head for `input` features and `outputs` outputs.
    pub fn paper(input: usize, outputs: usize) -> Self {
        MlpConfig {
            input,
            hidden: 800,
            outputs,
            dropout: [0.2, 0.5, 0.5],
        }
    }

    fn dims(&self) -> [(usize, usize); 3] {
        [
            (self.input, self.hidden),
            (self.hidden, self.hidden),
            (self.hidden, self.outputs),
        ]
    }
}

/// The paper's MLP head, its parameters as trainable variables.
pub struct Mlp {
    pub config: MlpConfig,
    /// (weight `[out, in]`, bias `[out]`) per FC layer.
    layers: Vec<(Var, Var)>,
}

impl Mlp {
    /// Seeded initialisation as PyTorch's `nn.Linear`: weight and bias uniform in
    /// +-1/sqrt(fan_in).
    pub fn new(config: MlpConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        let mut layers = Vec::new();
        for (i, o) in config.dims() {
            let bound = 1.0 / (i as f32).sqrt();
            let w = Tensor::from_vec(rng.uniform(i * o, bound), (o, i), device)?;
            let b = Tensor::from_vec(rng.uniform(o, bound), o, device)?;
            layers.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
        }
        Ok(Mlp { config, layers })
    }

    /// From named tensors `fc{0,1,2}.{weight,bias}` (a saved model), shapes checked.
    pub fn from_tensors(config: MlpConfig, get: impl Fn(&str) -> Option<Tensor>) -> Result<Self> {
        let mut layers = Vec::new();
        for (k, (i, o)) in config.dims().into_iter().enumerate() {
            let w = get(&format!("fc{k}.weight"))
                .ok_or_else(|| candle_core::Error::Msg(format!("fc{k}.weight missing")))?;
            let b = get(&format!("fc{k}.bias"))
                .ok_or_else(|| candle_core::Error::Msg(format!("fc{k}.bias missing")))?;
            if w.dims() != [o, i] || b.dims() != [o] {
                candle_core::bail!(
                    "fc{k}: expected [{o}, {i}] and [{o}], found {:?} and {:?}",
                    w.dims(),
                    b.dims()
                );
            }
            layers.push((
                Var::from_tensor(&w.to_dtype(DType::F32)?)?,
                Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            ));
        }
        Ok(Mlp { config, layers })
    }

    /// The trainable variables, weight then bias per layer.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// The parameters by name (`fc{k}.weight`, `fc{k}.bias`), for saving.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(k, (w, b))| {
                [
                    (format!("fc{k}.weight"), w.as_tensor().clone()),
                    (format!("fc{k}.bias"), b.as_tensor().clone()),
                ]
            })
            .collect()
    }

    /// `[N, input] -> [N, outputs]`. With `train`, dropout masks are drawn from it (inverted
    /// dropout: kept values scaled by 1 / (1 - p)); without, dropout is the identity.
    pub fn forward(&self, x: &Tensor, mut train: Option<&mut SplitMix64>) -> Result<Tensor> {
        let mut h = x.clone();
        for (k, (w, b)) in self.layers.iter().enumerate() {
            if let Some(rng) = train.as_deref_mut() {
                h = dropout(&h, self.config.dropout[k], rng)?;
            }
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if k < 2 {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// Inverted dropout with a mask from `rng`.
pub fn dropout(x: &Tensor, p: f32, rng: &mut SplitMix64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.next_f32() < p { 0.0 } else { scale })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}
