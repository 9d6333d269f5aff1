//! Training steps behind one face, so the train stage runs every head the same way.
//!
//! - [`CpuMlpTrainer`] (in `heads`): the MLP on the CPU, forward and backward written out
//!   over `gemm`.
//! - [`CandleTrainer`]: any [`Head`] on any device through candle's autograd (the linear
//!   SVM, the small CNN, the MLP on CUDA). The loss and its gradient with respect to the
//!   outputs come from [`loss_and_grad`], the same code as the CPU trainer's; the backward
//!   pass starts from `sum(outputs * grad)`, whose parameter gradients are the loss's.

use crate::heads::{loss_and_grad, CpuMlpTrainer, Head, Loss, Target};
use crate::optim::OptimizerConfig;
use candle_core::{DType, Device, Result, Tensor, Var};
use geoloc_core::rng::SplitMix64;

/// Parameters by name: (name, values, shape), f32 on the CPU.
pub type NamedParams = Vec<(String, Vec<f32>, Vec<usize>)>;

/// A head's parameters as [`NamedParams`] (what the CPU trainers start from).
pub fn named_params(head: &dyn Head) -> Result<NamedParams> {
    head.named()
        .into_iter()
        .map(|(n, t)| {
            Ok((
                n,
                t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                t.dims().to_vec(),
            ))
        })
        .collect()
}

/// A checkpointed buffer by name, of `len` values, or an error naming it.
pub(crate) fn checkpoint_values(
    f: &dyn Fn(&str) -> Option<Vec<f32>>,
    name: &str,
    len: usize,
) -> Result<Vec<f32>> {
    f(name).filter(|v| v.len() == len).ok_or_else(|| {
        candle_core::Error::Msg(format!("checkpoint: {name} missing or of another size"))
    })
}

/// One head being trained.
pub trait Trainer {
    /// One optimiser step on `x` (`[n, input]`, row-major). Returns the batch loss and how
    /// many rows were classified right before the update (0 for value targets).
    fn step(&mut self, x: &[f32], target: Target, rng: &mut SplitMix64) -> Result<(f32, usize)>;
    /// Outputs without dropout, `[n, outputs]` row-major.
    fn predict(&self, x: &[f32]) -> Result<Vec<f32>>;
    /// The parameters by name (CPU, f32), as the head's spec loads them.
    fn parameters(&self) -> Result<NamedParams>;
    /// The optimiser's state buffers by name, for checkpoints.
    fn state(&self) -> Result<Vec<(String, Vec<f32>)>>;
    /// Restores what [`Trainer::parameters`] and [`Trainer::state`] gave, and the step count.
    fn restore(
        &mut self,
        params: &dyn Fn(&str) -> Option<Vec<f32>>,
        state: &dyn Fn(&str) -> Option<Vec<f32>>,
        steps: u64,
    ) -> Result<()>;
    /// Optimiser steps taken.
    fn steps(&self) -> u64;
}

impl Trainer for CpuMlpTrainer {
    fn step(&mut self, x: &[f32], target: Target, rng: &mut SplitMix64) -> Result<(f32, usize)> {
        CpuMlpTrainer::step(self, x, target, rng)
    }
    fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        CpuMlpTrainer::predict(self, x)
    }
    fn parameters(&self) -> Result<NamedParams> {
        named_params(&self.to_mlp(&Device::Cpu)?)
    }
    fn state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        Ok(CpuMlpTrainer::state(self))
    }
    fn restore(
        &mut self,
        params: &dyn Fn(&str) -> Option<Vec<f32>>,
        state: &dyn Fn(&str) -> Option<Vec<f32>>,
        steps: u64,
    ) -> Result<()> {
        CpuMlpTrainer::restore(self, params, state, steps)
    }
    fn steps(&self) -> u64 {
        CpuMlpTrainer::steps(self)
    }
}

/// Any head through candle's autograd, on any device.
pub struct CandleTrainer {
    head: Box<dyn Head>,
    vars: Vec<Var>,
    names: Vec<String>,
    optimizer: OptimizerConfig,
    loss: Loss,
    /// Per variable: the optimiser's state buffers.
    state: Vec<Vec<Tensor>>,
    device: Device,
    input: usize,
    outputs: usize,
    steps: u64,
}

impl CandleTrainer {
    pub fn new(
        head: Box<dyn Head>,
        input: usize,
        outputs: usize,
        optimizer: OptimizerConfig,
        loss: Loss,
        device: &Device,
    ) -> Result<Self> {
        optimizer.validate()?;
        let vars = head.vars();
        let names = head.named().into_iter().map(|(n, _)| n).collect();
        let k = optimizer.state_buffers();
        let state = vars
            .iter()
            .map(|v| (0..k).map(|_| v.as_tensor().zeros_like()).collect())
            .collect::<Result<Vec<Vec<Tensor>>>>()?;
        Ok(CandleTrainer {
            head,
            vars,
            names,
            optimizer,
            loss,
            state,
            device: device.clone(),
            input,
            outputs,
            steps: 0,
        })
    }

    fn tensor(&self, x: &[f32]) -> Result<Tensor> {
        let n = x.len() / self.input.max(1);
        if n == 0 || x.len() != n * self.input {
            candle_core::bail!("batch of {} values is not [n, {}]", x.len(), self.input);
        }
        Tensor::from_slice(x, (n, self.input), &self.device)
    }

    /// The head being trained.
    pub fn head(&self) -> &dyn Head {
        self.head.as_ref()
    }

    /// One update of every variable from `grads`, as [`OptimizerConfig::update`] (on the
    /// CPU through it; elsewhere the same formulas as tensor operations).
    fn apply(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps;
        for (var, st) in self.vars.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            if p.device().is_cpu() && p.dtype() == DType::F32 {
                let mut pv = p.flatten_all()?.to_vec1::<f32>()?;
                let gv = g.flatten_all()?.to_vec1::<f32>()?;
                let mut sv = st
                    .iter()
                    .map(|s| s.flatten_all()?.to_vec1::<f32>())
                    .collect::<Result<Vec<_>>>()?;
                self.optimizer.update(t, &mut pv, &gv, &mut sv);
                var.set(&Tensor::from_vec(pv, p.shape(), p.device())?)?;
                for (s, v) in st.iter_mut().zip(sv) {
                    *s = Tensor::from_vec(v, p.shape(), p.device())?;
                }
                continue;
            }
            match self.optimizer {
                OptimizerConfig::Sgd(c) => {
                    let mut g = g.clone();
                    if c.weight_decay != 0.0 {
                        g = (g + (p * c.weight_decay)?)?;
                    }
                    if c.momentum != 0.0 {
                        let b = if t == 1 {
                            g.clone()
                        } else {
                            ((&st[0] * c.momentum)? + (&g * (1.0 - c.dampening))?)?
                        };
                        g = if c.nesterov {
                            (g + (&b * c.momentum)?)?
                        } else {
                            b.clone()
                        };
                        st[0] = b;
                    }
                    var.set(&(p - (g * c.lr)?)?)?;
                }
                OptimizerConfig::Adam(c) => {
                    let mut g = g.clone();
                    if c.weight_decay != 0.0 {
                        g = (g + (p * c.weight_decay)?)?;
                    }
                    let m = ((&st[0] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    let v = ((&st[1] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let bc1 = 1.0 - c.beta1.powi(t as i32);
                    let bc2 = 1.0 - c.beta2.powi(t as i32);
                    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let upd = ((&m / denom)? * (c.lr / bc1))?;
                    var.set(&(p - upd)?)?;
                    st[0] = m;
                    st[1] = v;
                }
            }
        }
        Ok(())
    }
}

impl Trainer for CandleTrainer {
    fn step(&mut self, x: &[f32], target: Target, rng: &mut SplitMix64) -> Result<(f32, usize)> {
        let xt = self.tensor(x)?;
        let out = self.head.forward(&xt, Some(rng))?;
        let host = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (loss, grad, correct) = loss_and_grad(self.loss, &host, self.outputs, target)?;
        let g = Tensor::from_vec(grad, out.shape(), &self.device)?.to_dtype(out.dtype())?;
        let surrogate = (out * g)?.sum_all()?;
        let grads = surrogate.backward()?;
        self.apply(&grads)?;
        Ok((loss, correct))
    }

    fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        let out = self.head.forward(&self.tensor(x)?, None)?;
        out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }

    fn parameters(&self) -> Result<NamedParams> {
        named_params(self.head.as_ref())
    }

    fn state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::new();
        for (name, st) in self.names.iter().zip(&self.state) {
            for (j, s) in st.iter().enumerate() {
                out.push((
                    format!("{name}.{j}"),
                    s.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                ));
            }
        }
        Ok(out)
    }

    fn restore(
        &mut self,
        params: &dyn Fn(&str) -> Option<Vec<f32>>,
        state: &dyn Fn(&str) -> Option<Vec<f32>>,
        steps: u64,
    ) -> Result<()> {
        let fetch = |f: &dyn Fn(&str) -> Option<Vec<f32>>, name: &str, like: &Tensor| {
            let v = checkpoint_values(f, name, like.elem_count())?;
            Tensor::from_vec(v, like.shape(), like.device())?.to_dtype(like.dtype())
        };
        for ((name, var), st) in self.names.iter().zip(&self.vars).zip(self.state.iter_mut()) {
            var.set(&fetch(params, name, var.as_tensor())?)?;
            for (j, s) in st.iter_mut().enumerate() {
                *s = fetch(state, &format!("{name}.{j}"), s)?;
            }
        }
        self.steps = steps;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
