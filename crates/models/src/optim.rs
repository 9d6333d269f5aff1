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
