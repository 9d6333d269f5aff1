//! Optimisers for the heads, defined as PyTorch defines them so that a training run can be
//! checked step by step against PyTorch (candle-nn 0.11 has plain SGD and AdamW only).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// `torch.optim.SGD`'s hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
