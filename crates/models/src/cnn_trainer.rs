//! The small CNN's training step on the CPU in f32, written out over `gemm` like the MLP's
//! ([`crate::heads::CpuMlpTrainer`]): NHWC activations, each 3x3 convolution an im2col and
//! one matrix product (its backward two more and a col2im), 2x2 max-pools that remember
//! their winners, the fully connected layers as in the MLP. The same arithmetic as
//! [`SmallCnn`]'s forward + candle's autograd + the optimiser's update (a test holds the two
//! trainers equal); parameters and optimiser state go in and out in PyTorch's layouts.

use crate::heads::{gemm_strided, loss_and_grad, Loss, SmallCnnConfig, Target};
use crate::optim::OptimizerConfig;
use crate::trainer::{NamedParams, Trainer};
use candle_core::Result;
use geoloc_core::rng::SplitMix64;
use rayon::prelude::*;

/// One parameter buffer: its name, its PyTorch shape, and whether it is a convolution
/// weight (kept internally as `[(dy, dx, c), F]`, the im2col order).
struct Param {
    name: String,
    shape: Vec<usize>,
    conv: bool,
}

pub struct CpuCnnTrainer {
    config: SmallCnnConfig,
    optimizer: OptimizerConfig,
    loss: Loss,
    params: Vec<Param>,
    values: Vec<Vec<f32>>,
    state: Vec<Vec<Vec<f32>>>,
    steps: u64,
}

/// `[n, h, w, c]` -> `[n * h * w, 9 * c]`: the nine zero-padded 3x3 neighbours of each pixel.
fn im2col(x: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let k = 9 * c;
    let mut cols = vec![0f32; n * h * w * k];
    cols.par_chunks_mut(w * k)
        .enumerate()
        .for_each(|(row, out)| {
            let (img, y) = (row / h, row % h);
            for xx in 0..w {
                for dy in 0..3 {
                    let sy = y as isize + dy as isize - 1;
                    if sy < 0 || sy >= h as isize {
                        continue;
                    }
                    for dx in 0..3 {
                        let sx = xx as isize + dx as isize - 1;
                        if sx < 0 || sx >= w as isize {
                            continue;
                        }
                        let src = ((img * h + sy as usize) * w + sx as usize) * c;
                        let dst = xx * k + (dy * 3 + dx) * c;
                        out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                    }
                }
            }
        });
    cols
}

/// The adjoint of [`im2col`]: sums each column's gradient back onto the pixel it came from.
fn col2im(cols: &[f32], n: usize, h: usize, w: usize, c: usize) -> Vec<f32> {
    let k = 9 * c;
    let mut x = vec![0f32; n * h * w * c];
    x.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(img, out)| {
            for y in 0..h {
                for xx in 0..w {
                    let row = &cols[((img * h + y) * w + xx) * k..][..k];
                    for dy in 0..3 {
                        let sy = y as isize + dy as isize - 1;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        for dx in 0..3 {
                            let sx = xx as isize + dx as isize - 1;
                            if sx < 0 || sx >= w as isize {
                                continue;
                            }
                            let dst = (sy as usize * w + sx as usize) * c;
                            let src = (dy * 3 + dx) * c;
                            out[dst..dst + c]
                                .iter_mut()
                                .zip(&row[src..src + c])
                                .for_each(|(a, b)| *a += b);
                        }
                    }
                }
            }
        });
    x
}

/// 2x2 max-pool of `[n, h, w, c]` (an odd last row or column dropped); returns the pooled
/// values and, per output, the index of its winner in the input.
fn pool(x: &[f32], n: usize, h: usize, w: usize, c: usize) -> (Vec<f32>, Vec<u32>) {
    let (ph, pw) = (h / 2, w / 2);
    let mut out = vec![0f32; n * ph * pw * c];
    let mut arg = vec![0u32; n * ph * pw * c];
    out.par_chunks_mut(pw * c)
        .zip(arg.par_chunks_mut(pw * c))
        .enumerate()
        .for_each(|(row, (o, a))| {
            let (img, py) = (row / ph, row % ph);
            for px in 0..pw {
                for ch in 0..c {
                    let mut best = f32::NEG_INFINITY;
                    let mut at = 0;
                    // The window in row-major order; the first maximum wins, as candle's.
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let i = ((img * h + 2 * py + dy) * w + 2 * px + dx) * c + ch;
                        if x[i] > best {
                            best = x[i];
                            at = i;
                        }
                    }
                    o[px * c + ch] = best;
                    a[px * c + ch] = at as u32;
                }
            }
        });
    (out, arg)
}

/// `z[n, o] = x[n, i] @ W^T + b` with `W` `[o, i]`.
fn linear(x: &[f32], n: usize, w: &[f32], b: &[f32], i: usize, o: usize) -> Vec<f32> {
    let mut z = vec![0f32; n * o];
    for row in z.chunks_exact_mut(o) {
        row.copy_from_slice(b);
    }
    gemm_strided(n, o, i, &mut z, true, x, (i, 1), w, (1, i));
    z
}

impl CpuCnnTrainer {
    /// Takes over a head's parameters, named and shaped as [`crate::heads::SmallCnn`] names
    /// them (PyTorch layouts).
    pub fn new(
        config: SmallCnnConfig,
        named: &NamedParams,
        optimizer: OptimizerConfig,
        loss: Loss,
    ) -> Result<Self> {
        optimizer.validate()?;
        let mut params = Vec::new();
        let mut values = Vec::new();
        for (name, v, shape) in named {
            let conv = name.starts_with("conv") && name.ends_with(".weight");
            params.push(Param {
                name: name.clone(),
                shape: shape.clone(),
                conv,
            });
            values.push(if conv { to_cols(v, shape) } else { v.clone() });
        }
        if params.len() != 18 {
            candle_core::bail!("small CNN: {} parameter tensors, expected 18", params.len());
        }
        let k = optimizer.state_buffers();
        let state = values.iter().map(|v| vec![vec![0.0; v.len()]; k]).collect();
        Ok(CpuCnnTrainer {
            config,
            optimizer,
            loss,
            params,
            values,
            state,
            steps: 0,
        })
    }

    /// Forward; with `keep`, the caches the backward pass needs.
    fn forward(&self, x: &[f32], keep: bool) -> Result<(Vec<f32>, Caches)> {
        let c = &self.config;
        let n = x.len() / c.input();
        if n == 0 || x.len() != n * c.input() {
            candle_core::bail!("batch of {} values is not [n, {}]", x.len(), c.input());
        }
        let f = c.filters;
        let (mut hh, mut ww, mut ch) = (c.height, c.width, 3);
        let mut h = x.to_vec();
        let mut caches = Caches::default();
        for k in 0..6 {
            let cols = im2col(&h, n, hh, ww, ch);
            let rows = n * hh * ww;
            let mut z = vec![0f32; rows * f];
            let b = &self.values[2 * k + 1];
            for r in z.chunks_exact_mut(f) {
                r.copy_from_slice(b);
            }
            let kk = 9 * ch;
            gemm_strided(
                rows,
                f,
                kk,
                &mut z,
                true,
                &cols,
                (kk, 1),
                &self.values[2 * k],
                (f, 1),
            );
            z.iter_mut().for_each(|v| *v = v.max(0.0));
            if keep {
                caches.convs.push((cols, (hh, ww, ch)));
            }
            ch = f;
            if k % 2 == 1 {
                let (p, arg) = pool(&z, n, hh, ww, f);
                if keep {
                    caches.acts.push(z);
                    caches.pools.push((arg, (hh, ww)));
                }
                hh /= 2;
                ww /= 2;
                h = p;
            } else {
                if keep {
                    caches.acts.push(z.clone());
                }
                h = z;
            }
        }
        let dims = [
            (hh * ww * f, c.hidden),
            (c.hidden, c.hidden),
            (c.hidden, c.outputs),
        ];
        for (j, (i, o)) in dims.into_iter().enumerate() {
            let z = linear(
                &h,
                n,
                &self.values[12 + 2 * j],
                &self.values[13 + 2 * j],
                i,
                o,
            );
            if keep {
                caches.fc_in.push(h);
            }
            h = if j < 2 {
                z.iter().map(|v| v.max(0.0)).collect()
            } else {
                z
            };
            if keep && j < 2 {
                caches.fc_act.push(h.clone());
            }
        }
        Ok((h, caches))
    }
}

#[derive(Default)]
struct Caches {
    /// Per conv: its im2col and its input's (h, w, c).
    convs: Vec<(Vec<f32>, (usize, usize, usize))>,
    /// Per conv: its output after ReLU.
    acts: Vec<Vec<f32>>,
    /// Per pool: winners and the input's (h, w).
    pools: Vec<(Vec<u32>, (usize, usize))>,
    fc_in: Vec<Vec<f32>>,
    fc_act: Vec<Vec<f32>>,
}

/// `[F, C, 3, 3]` -> `[(dy, dx, c), F]`.
fn to_cols(v: &[f32], s: &[usize]) -> Vec<f32> {
    let (f, c) = (s[0], s[1]);
    let mut out = vec![0f32; v.len()];
    for fi in 0..f {
        for ci in 0..c {
            for t in 0..9 {
                out[(t * c + ci) * f + fi] = v[(fi * c + ci) * 9 + t];
            }
        }
    }
    out
}

/// `[(dy, dx, c), F]` -> `[F, C, 3, 3]`.
fn from_cols(v: &[f32], s: &[usize]) -> Vec<f32> {
    let (f, c) = (s[0], s[1]);
    let mut out = vec![0f32; v.len()];
    for fi in 0..f {
        for ci in 0..c {
            for t in 0..9 {
                out[(fi * c + ci) * 9 + t] = v[(t * c + ci) * f + fi];
            }
        }
    }
    out
}

impl Trainer for CpuCnnTrainer {
    fn step(&mut self, x: &[f32], target: Target, _rng: &mut SplitMix64) -> Result<(f32, usize)> {
        let cfg = self.config.clone();
        let n = x.len() / cfg.input().max(1);
        let (out, cache) = self.forward(x, true)?;
        let (loss, mut grad, correct) = loss_and_grad(self.loss, &out, cfg.outputs, target)?;
        let mut grads: Vec<Vec<f32>> = vec![Vec::new(); 18];
        // Fully connected layers, last first.
        let f = cfg.filters;
        let flat = cache.fc_in[0].len() / n;
        let dims = [
            (flat, cfg.hidden),
            (cfg.hidden, cfg.hidden),
            (cfg.hidden, cfg.outputs),
        ];
        for j in (0..3).rev() {
            let (i, o) = dims[j];
            if j < 2 {
                grad.iter_mut().zip(&cache.fc_act[j]).for_each(|(g, a)| {
                    if *a <= 0.0 {
                        *g = 0.0
                    }
                });
            }
            let mut dw = vec![0f32; o * i];
            gemm_strided(
                o,
                i,
                n,
                &mut dw,
                false,
                &grad,
                (1, o),
                &cache.fc_in[j],
                (i, 1),
            );
            let mut db = vec![0f32; o];
            for r in grad.chunks_exact(o) {
                db.iter_mut().zip(r).for_each(|(d, g)| *d += g);
            }
            let mut dx = vec![0f32; n * i];
            gemm_strided(
                n,
                i,
                o,
                &mut dx,
                false,
                &grad,
                (o, 1),
                &self.values[12 + 2 * j],
                (i, 1),
            );
            grads[12 + 2 * j] = dw;
            grads[13 + 2 * j] = db;
            grad = dx;
        }
        // Convolutions, last first; `grad` is the gradient of the last pool's output.
        for k in (0..6).rev() {
            let (cols, (hh, ww, ch)) = &cache.convs[k];
            let (hh, ww, ch) = (*hh, *ww, *ch);
            let act = &cache.acts[k];
            // The gradient of this conv's (post-ReLU) output.
            let mut g = if k % 2 == 1 {
                let (arg, _) = &cache.pools[k / 2];
                let mut g = vec![0f32; act.len()];
                for (a, v) in arg.iter().zip(&grad) {
                    g[*a as usize] += v;
                }
                g
            } else {
                std::mem::take(&mut grad)
            };
            g.iter_mut().zip(act).for_each(|(g, a)| {
                if *a <= 0.0 {
                    *g = 0.0
                }
            });
            let rows = n * hh * ww;
            let kk = 9 * ch;
            let mut dw = vec![0f32; kk * f];
            gemm_strided(kk, f, rows, &mut dw, false, cols, (1, kk), &g, (f, 1));
            let mut db = vec![0f32; f];
            for r in g.chunks_exact(f) {
                db.iter_mut().zip(r).for_each(|(d, v)| *d += v);
            }
            grads[2 * k] = dw;
            grads[2 * k + 1] = db;
            if k > 0 {
                let mut dcols = vec![0f32; rows * kk];
                gemm_strided(
                    rows,
                    kk,
                    f,
                    &mut dcols,
                    false,
                    &g,
                    (f, 1),
                    &self.values[2 * k],
                    (1, f),
                );
                grad = col2im(&dcols, n, hh, ww, ch);
            }
        }
        self.steps += 1;
        for ((p, g), st) in self
            .values
            .iter_mut()
            .zip(&grads)
            .zip(self.state.iter_mut())
        {
            self.optimizer.update(self.steps, p, g, st);
        }
        Ok((loss, correct))
    }

    fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        Ok(self.forward(x, false)?.0)
    }

    fn parameters(&self) -> Result<NamedParams> {
        Ok(self
            .params
            .iter()
            .zip(&self.values)
            .map(|(p, v)| {
                let v = if p.conv {
                    from_cols(v, &p.shape)
                } else {
                    v.clone()
                };
                (p.name.clone(), v, p.shape.clone())
            })
            .collect())
    }

    fn state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let mut out = Vec::new();
        for (p, st) in self.params.iter().zip(&self.state) {
            for (j, s) in st.iter().enumerate() {
                let v = if p.conv {
                    from_cols(s, &p.shape)
                } else {
                    s.clone()
                };
                out.push((format!("{}.{j}", p.name), v));
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
        let fetch = crate::trainer::checkpoint_values;
        for ((p, v), st) in self
            .params
            .iter()
            .zip(self.values.iter_mut())
            .zip(self.state.iter_mut())
        {
            let conv = |x: Vec<f32>| if p.conv { to_cols(&x, &p.shape) } else { x };
            let len = v.len();
            *v = conv(fetch(params, &p.name, len)?);
            for (j, s) in st.iter_mut().enumerate() {
                let name = format!("{}.{j}", p.name);
                *s = conv(fetch(state, &name, len)?);
            }
        }
        self.steps = steps;
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }
}
