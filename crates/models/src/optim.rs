//! Optimisers for the heads, defined as PyTorch defines them so that a training run can be
//! checked step by step against PyTorch (candle-nn 0.11 has plain SGD and AdamW only).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// `torch.optim.SGD`'s hyperparameters.
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub lr: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub dampening: f64,
    /// L2 penalty added to the gradient (the paper's "regularization strength").
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub nesterov: bool,
}

/// Stochastic gradient descent with momentum, dampening, Nesterov and weight decay. Per
/// parameter `p` with gradient `g`, as `torch.optim.SGD` (PyTorch 2):
///
/// ```text
/// g = g + weight_decay * p
/// b = g                                  (first step)
/// b = momentum * b + (1 - dampening) * g (later steps)
/// g = g + momentum * b  if nesterov  else  g = b      (when momentum != 0)
/// p = p - lr * g
/// ```
pub struct Sgd {
    pub config: SgdConfig,
    vars: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    pub fn new(vars: Vec<Var>, config: SgdConfig) -> Result<Self> {
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            candle_core::bail!("Nesterov momentum requires a momentum and zero dampening");
        }
        let buffers = vec![None; vars.len()];
        Ok(Sgd {
            config,
            vars,
            buffers,
        })
    }

    /// The momentum buffers (for checkpoints): `None` before a parameter's first step.
    pub fn buffers(&self) -> &[Option<Tensor>] {
        &self.buffers
    }

    /// Restores momentum buffers saved from [`Sgd::buffers`].
    pub fn set_buffers(&mut self, buffers: Vec<Option<Tensor>>) -> Result<()> {
        if buffers.len() != self.vars.len() {
            candle_core::bail!(
                "{} buffers for {} parameters",
                buffers.len(),
                self.vars.len()
            );
        }
        self.buffers = buffers;
        Ok(())
    }

    /// One update from the gradients of a backward pass; parameters without a gradient are
    /// left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        for (var, buf) in self.vars.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            if p.device().is_cpu() && p.dtype() == candle_core::DType::F32 {
                // One pass over parameter, gradient and buffer instead of a tensor per
                // operation (the update's arithmetic is the same, element by element).
                let mut pv = p.flatten_all()?.to_vec1::<f32>()?;
                let gv = g.flatten_all()?.to_vec1::<f32>()?;
                let mut bv = match buf.take() {
                    Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
                    None => None,
                };
                let first = bv.is_none();
                let (lr, m, d, wd) = (
                    c.lr as f32,
                    c.momentum as f32,
                    c.dampening as f32,
                    c.weight_decay as f32,
                );
                if m != 0.0 && first {
                    bv = Some(vec![0.0; pv.len()]);
                }
                for i in 0..pv.len() {
                    let mut gi = gv[i];
                    if wd != 0.0 {
                        gi += wd * pv[i];
                    }
                    if let Some(b) = bv.as_mut() {
                        b[i] = if first { gi } else { m * b[i] + (1.0 - d) * gi };
                        gi = if c.nesterov { gi + m * b[i] } else { b[i] };
                    }
                    pv[i] -= lr * gi;
                }
                var.set(&Tensor::from_vec(pv, p.shape(), p.device())?)?;
                if let Some(b) = bv {
                    *buf = Some(Tensor::from_vec(b, p.shape(), p.device())?);
                }
                continue;
            }
            let mut g = g.clone();
            if c.weight_decay != 0.0 {
                g = (g + (var.as_tensor() * c.weight_decay)?)?;
            }
            if c.momentum != 0.0 {
                let b = match buf.take() {
                    None => g.clone(),
                    Some(b) => ((b * c.momentum)? + (&g * (1.0 - c.dampening))?)?,
                };
                g = if c.nesterov {
                    (g + (&b * c.momentum)?)?
                } else {
                    b.clone()
                };
                *buf = Some(b);
            }
            var.set(&(var.as_tensor() - (g * c.lr)?)?)?;
        }
        Ok(())
    }
}

/// `torch.optim.Adam`'s hyperparameters (L2 `weight_decay` added to the gradient, as Adam
/// does; not AdamW's decoupled decay).
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

/// The optimiser of a training run, as pipeline files write it:
/// `{ kind = "sgd", lr = 0.001, momentum = 0.9, nesterov = true }` or
/// `{ kind = "adam", lr = 0.001 }`.
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

impl OptimizerConfig {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) => c.lr,
        }
    }

    /// How many state buffers of a parameter's size the optimiser keeps (momentum; Adam's
    /// two moments).
    pub fn state_buffers(&self) -> usize {
        match self {
            OptimizerConfig::Sgd(c) if c.momentum != 0.0 => 1,
            OptimizerConfig::Sgd(_) => 0,
            OptimizerConfig::Adam(_) => 2,
        }
    }

    /// Checks what PyTorch also refuses.
    pub fn validate(&self) -> Result<()> {
        match self {
            OptimizerConfig::Sgd(c) if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) => {
                candle_core::bail!("Nesterov momentum requires a momentum and zero dampening")
            }
            OptimizerConfig::Adam(c)
                if !(0.0..1.0).contains(&c.beta1) || !(0.0..1.0).contains(&c.beta2) =>
            {
                candle_core::bail!("Adam betas must lie in [0, 1)")
            }
            c if c.lr().is_nan() || c.lr() <= 0.0 => {
                candle_core::bail!("learning rate must be positive")
            }
            _ => Ok(()),
        }
    }

    /// One update of a parameter buffer `p` from its gradient `g`, as PyTorch's optimiser
    /// (see [`Sgd`]; Adam with bias correction). `step` counts from 1 and `state` holds
    /// [`OptimizerConfig::state_buffers`] buffers of `p`'s length, zeros before step 1.
    pub fn update(&self, step: u64, p: &mut [f32], g: &[f32], state: &mut [Vec<f32>]) {
        match *self {
            OptimizerConfig::Sgd(c) => {
                let (lr, m, d, wd) = (
                    c.lr as f32,
                    c.momentum as f32,
                    c.dampening as f32,
                    c.weight_decay as f32,
                );
                let first = step <= 1;
                let mut none: [f32; 0] = [];
                let buf: &mut [f32] = match state.first_mut() {
                    Some(b) => b,
                    None => &mut none,
                };
                for (i, (pi, gi)) in p.iter_mut().zip(g).enumerate() {
                    let mut gi = *gi;
                    if wd != 0.0 {
                        gi += wd * *pi;
                    }
                    if m != 0.0 {
                        let b = &mut buf[i];
                        *b = if first { gi } else { m * *b + (1.0 - d) * gi };
                        gi = if c.nesterov { gi + m * *b } else { *b };
                    }
                    *pi -= lr * gi;
                }
            }
            OptimizerConfig::Adam(c) => {
                let (lr, b1, b2, eps, wd) = (
                    c.lr,
                    c.beta1 as f32,
                    c.beta2 as f32,
                    c.eps as f32,
                    c.weight_decay as f32,
                );
                let t = step.max(1) as i32;
                let bc1 = 1.0 - c.beta1.powi(t);
                let bc2 = 1.0 - c.beta2.powi(t);
                let step_size = (lr / bc1) as f32;
                let bc2_sqrt = bc2.sqrt() as f32;
                let (ms, vs) = state.split_at_mut(1);
                let (ms, vs) = (&mut ms[0], &mut vs[0]);
                for (((pi, gi), mi), vi) in p.iter_mut().zip(g).zip(ms.iter_mut()).zip(vs) {
                    let mut gi = *gi;
                    if wd != 0.0 {
                        gi += wd * *pi;
                    }
                    *mi = b1 * *mi + (1.0 - b1) * gi;
                    *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                    let denom = vi.sqrt() / bc2_sqrt + eps;
                    *pi -= step_size * *mi / denom;
                }
            }
        }
    }
}
