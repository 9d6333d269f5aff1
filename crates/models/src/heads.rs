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

/// What a training batch is scored against.
pub enum Target<'a> {
    /// Class indices: softmax cross-entropy, mean over the batch.
    Classes(&'a [u32]),
    /// `[N, outputs]` values, row-major: squared error, mean over all values.
    Values(&'a [f32]),
}

/// The MLP's training step on the CPU in f32, written out (forward, backward, SGD) over
/// plain buffers: candle's autograd spent half of an epoch outside the matrix products
/// (zero-filled gradient stores, accumulation, an allocation per operation). The same
/// arithmetic as [`Mlp::forward`] + candle's backward + [`crate::optim::Sgd`], with the same
/// dropout masks from the same generator (a test holds them equal).
pub struct CpuMlpTrainer {
    pub config: MlpConfig,
    sgd: crate::optim::SgdConfig,
    /// Per layer: weight `[out, in]` and bias, and their momentum buffers.
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    mw: Vec<Vec<f32>>,
    mb: Vec<Vec<f32>>,
    steps: u64,
}

/// `c[m, n] (+)= a[m, k] @ b[k, n]` with arbitrary strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    assert!(c.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above bound every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

impl CpuMlpTrainer {
    /// Takes over `mlp`'s current parameters (f32, CPU).
    pub fn new(mlp: &Mlp, sgd: crate::optim::SgdConfig) -> Result<Self> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (wv, bv) in &mlp.layers {
            w.push(wv.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            b.push(bv.as_tensor().to_vec1::<f32>()?);
        }
        let mw = w.iter().map(|v| vec![0.0; v.len()]).collect();
        let mb = b.iter().map(|v| vec![0.0; v.len()]).collect();
        Ok(CpuMlpTrainer {
            config: mlp.config.clone(),
            sgd,
            w,
            b,
            mw,
            mb,
            steps: 0,
        })
    }

    /// The parameters as an [`Mlp`] (for evaluation and saving).
    pub fn to_mlp(&self, device: &Device) -> Result<Mlp> {
        let dims = self.config.dims();
        let mut layers = Vec::new();
        for (k, (i, o)) in dims.into_iter().enumerate() {
            let w = Tensor::from_vec(self.w[k].clone(), (o, i), device)?;
            let b = Tensor::from_vec(self.b[k].clone(), o, device)?;
            layers.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
        }
        Ok(Mlp {
            config: self.config.clone(),
            layers,
        })
    }

    /// One SGD step on a batch `x` (`[n, input]`, row-major); returns the batch loss.
    pub fn step(&mut self, x: &[f32], target: Target, rng: &mut SplitMix64) -> Result<f32> {
        let dims = self.config.dims();
        let n = x.len() / dims[0].0;
        if n == 0 || x.len() != n * dims[0].0 {
            candle_core::bail!("batch of {} values is not [n, {}]", x.len(), dims[0].0);
        }
        // Forward, keeping each layer's (dropped-out) input and pre-activation.
        let mut inputs: Vec<Vec<f32>> = Vec::with_capacity(3);
        let mut masks: Vec<Vec<f32>> = Vec::with_capacity(3);
        let mut pre: Vec<Vec<f32>> = Vec::with_capacity(3);
        let mut h = x.to_vec();
        for (k, (i, o)) in dims.into_iter().enumerate() {
            let p = self.config.dropout[k];
            let mask: Vec<f32> = if p > 0.0 {
                let scale = 1.0 / (1.0 - p);
                (0..h.len())
                    .map(|_| if rng.next_f32() < p { 0.0 } else { scale })
                    .collect()
            } else {
                Vec::new()
            };
            if !mask.is_empty() {
                h.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
            }
            let mut z = vec![0f32; n * o];
            for row in z.chunks_exact_mut(o) {
                row.copy_from_slice(&self.b[k]);
            }
            // z[n, o] += h[n, i] @ W^T (W is [o, i]: as [i, o] its strides are (1, i)).
            gemm_strided(n, o, i, &mut z, true, &h, (i, 1), &self.w[k], (1, i));
            let next = if k < 2 {
                z.iter().map(|v| v.max(0.0)).collect()
            } else {
                z.clone()
            };
            inputs.push(h);
            masks.push(mask);
            pre.push(z);
            h = next;
        }
        // Loss and its gradient with respect to the output.
        let out_dim = dims[2].1;
        let (loss, mut grad) = match target {
            Target::Classes(labels) => {
                if labels.len() != n {
                    candle_core::bail!("{} labels for {n} rows", labels.len());
                }
                let mut g = vec![0f32; n * out_dim];
                let mut loss = 0f64;
                for (r, (row, &y)) in h.chunks_exact(out_dim).zip(labels).enumerate() {
                    let y = y as usize;
                    if y >= out_dim {
                        candle_core::bail!("label {y} outside {out_dim} classes");
                    }
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
                    loss += (sum.ln() + max - row[y]) as f64;
                    for (j, v) in row.iter().enumerate() {
                        let p = (v - max).exp() / sum;
                        g[r * out_dim + j] = (p - (j == y) as u8 as f32) / n as f32;
                    }
                }
                ((loss / n as f64) as f32, g)
            }
            Target::Values(t) => {
                if t.len() != h.len() {
                    candle_core::bail!("{} targets for {} outputs", t.len(), h.len());
                }
                let count = h.len() as f32;
                let loss = h.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / count;
                let g = h
                    .iter()
                    .zip(t)
                    .map(|(a, b)| 2.0 * (a - b) / count)
                    .collect();
                (loss, g)
            }
        };
        // Backward, last layer first; each layer's parameter gradients, then the update.
        let mut grads_w: Vec<Vec<f32>> = vec![Vec::new(); 3];
        let mut grads_b: Vec<Vec<f32>> = vec![Vec::new(); 3];
        for k in (0..3).rev() {
            let (i, o) = dims[k];
            // dW[o, i] = grad^T[o, n] @ input[n, i]; db = column sums of grad.
            let mut dw = vec![0f32; o * i];
            gemm_strided(o, i, n, &mut dw, false, &grad, (1, o), &inputs[k], (i, 1));
            let mut db = vec![0f32; o];
            for row in grad.chunks_exact(o) {
                db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
            }
            grads_w[k] = dw;
            grads_b[k] = db;
            if k > 0 {
                // dInput[n, i] = grad[n, o] @ W[o, i], through the dropout mask and ReLU.
                let mut dx = vec![0f32; n * i];
                gemm_strided(n, i, o, &mut dx, false, &grad, (o, 1), &self.w[k], (i, 1));
                if !masks[k].is_empty() {
                    dx.iter_mut().zip(&masks[k]).for_each(|(d, m)| *d *= m);
                }
                dx.iter_mut().zip(&pre[k - 1]).for_each(|(d, z)| {
                    if *z <= 0.0 {
                        *d = 0.0
                    }
                });
                grad = dx;
            }
        }
        let c = self.sgd;
        let first = self.steps == 0;
        for k in 0..3 {
            sgd_update(&mut self.w[k], &grads_w[k], &mut self.mw[k], c, first);
            sgd_update(&mut self.b[k], &grads_b[k], &mut self.mb[k], c, first);
        }
        self.steps += 1;
        Ok(loss)
    }
}

/// PyTorch's SGD update over one parameter buffer (see [`crate::optim::Sgd`]).
fn sgd_update(p: &mut [f32], g: &[f32], buf: &mut [f32], c: crate::optim::SgdConfig, first: bool) {
    let (lr, m, d, wd) = (
        c.lr as f32,
        c.momentum as f32,
        c.dampening as f32,
        c.weight_decay as f32,
    );
    for ((pi, gi), bi) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
        let mut gi = *gi;
        if wd != 0.0 {
            gi += wd * *pi;
        }
        if m != 0.0 {
            *bi = if first { gi } else { m * *bi + (1.0 - d) * gi };
            gi = if c.nesterov { gi + m * *bi } else { *bi };
        }
        *pi -= lr * gi;
    }
}
