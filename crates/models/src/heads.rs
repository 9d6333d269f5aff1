//! Heads trained on features. So far the paper's MLP: `INPUT -> [DROPOUT -> FC] x3`, dropout
//! 0.2, 0.5, 0.5, 800 hidden units, a ReLU after each hidden FC (the paper's framework,
//! Lasagne, rectifies dense layers by default); its output is class scores (country) or two
//! coordinates (regression), the loss is chosen by the trainer.

use candle_core::{DType, Device, Result, Tensor, Var};
use geoloc_core::rng::SplitMix64;

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
            let w = Tensor::from_vec(rng.uniform_f32(i * o, bound), (o, i), device)?;
            let b = Tensor::from_vec(rng.uniform_f32(o, bound), o, device)?;
            layers.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
        }
        Ok(Mlp { config, layers })
    }

    /// From named tensors `fc{0,1,2}.{weight,bias}` (a saved model), shapes checked.
    pub fn from_tensors(config: MlpConfig, get: impl Fn(&str) -> Option<Tensor>) -> Result<Self> {
        let mut layers = Vec::new();
        for (k, (i, o)) in config.dims().into_iter().enumerate() {
            layers.push((
                take(&get, &format!("fc{k}.weight"), &[o, i])?,
                take(&get, &format!("fc{k}.bias"), &[o])?,
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

/// A trainable head: features (or flattened pixels) in, class scores or coordinates out.
pub trait Head: Send + Sync {
    /// `[N, input] -> [N, outputs]`; with `train`, dropout (if any) draws its masks from it.
    fn forward(&self, x: &Tensor, train: Option<&mut SplitMix64>) -> Result<Tensor>;
    /// The trainable variables, in the order of [`Head::named`].
    fn vars(&self) -> Vec<Var>;
    /// The parameters by name, as saved in `model.safetensors`.
    fn named(&self) -> Vec<(String, Tensor)>;
}

impl Head for Mlp {
    fn forward(&self, x: &Tensor, train: Option<&mut SplitMix64>) -> Result<Tensor> {
        Mlp::forward(self, x, train)
    }
    fn vars(&self) -> Vec<Var> {
        Mlp::vars(self)
    }
    fn named(&self) -> Vec<(String, Tensor)> {
        Mlp::named(self)
    }
}

/// `n` values uniform in +-1/sqrt(fan_in), PyTorch's default for `nn.Linear` and `nn.Conv2d`.
fn init_uniform(
    rng: &mut SplitMix64,
    shape: &[usize],
    fan_in: usize,
    device: &Device,
) -> Result<Var> {
    let n = shape.iter().product();
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    Var::from_tensor(&Tensor::from_vec(rng.uniform_f32(n, bound), shape, device)?)
}

/// Looks up a named tensor with its expected shape.
fn take(get: &dyn Fn(&str) -> Option<Tensor>, name: &str, shape: &[usize]) -> Result<Var> {
    let t = get(name).ok_or_else(|| candle_core::Error::Msg(format!("{name} missing")))?;
    if t.dims() != shape {
        candle_core::bail!("{name}: expected {shape:?}, found {:?}", t.dims());
    }
    Var::from_tensor(&t.to_dtype(DType::F32)?)
}

/// A linear map `[N, input] -> [N, outputs]`: the multi-class linear SVM of the paper's
/// baseline when trained with [`Loss::SquaredHinge`] (one-vs-rest, as LIBLINEAR's and
/// scikit-learn's `LinearSVC` default) and weight decay as its regularisation.
pub struct Linear {
    pub input: usize,
    pub outputs: usize,
    weight: Var,
    bias: Var,
}

impl Linear {
    pub fn new(input: usize, outputs: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SplitMix64::new(seed);
        Ok(Linear {
            input,
            outputs,
            weight: init_uniform(&mut rng, &[outputs, input], input, device)?,
            bias: init_uniform(&mut rng, &[outputs], input, device)?,
        })
    }

    pub fn from_tensors(
        input: usize,
        outputs: usize,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<Self> {
        Ok(Linear {
            input,
            outputs,
            weight: take(get, "linear.weight", &[outputs, input])?,
            bias: take(get, "linear.bias", &[outputs])?,
        })
    }
}

impl Head for Linear {
    fn forward(&self, x: &Tensor, _train: Option<&mut SplitMix64>) -> Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }
    fn vars(&self) -> Vec<Var> {
        vec![self.weight.clone(), self.bias.clone()]
    }
    fn named(&self) -> Vec<(String, Tensor)> {
        vec![
            ("linear.weight".into(), self.weight.as_tensor().clone()),
            ("linear.bias".into(), self.bias.as_tensor().clone()),
        ]
    }
}

/// The paper's "vanilla CNN" on small squashed photos.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmallCnnConfig {
    /// Input width and height in pixels (the paper: 52 x 48); 3 channels, HWC rows.
    pub width: usize,
    pub height: usize,
    /// Filters of every 3x3 convolution (the paper: 32).
    pub filters: usize,
    /// Units of each of the two hidden fully connected layers (the paper: 256).
    pub hidden: usize,
    pub outputs: usize,
}

impl SmallCnnConfig {
    /// The paper's network for `width` x `height` RGB inputs and `outputs` classes.
    pub fn paper(width: usize, height: usize, outputs: usize) -> Self {
        SmallCnnConfig {
            width,
            height,
            filters: 32,
            hidden: 256,
            outputs,
        }
    }

    /// Values per input row (`height * width * 3`).
    pub fn input(&self) -> usize {
        self.width * self.height * 3
    }

    /// Width of the flattened output of the three conv blocks (each halves, floor).
    fn flat(&self) -> usize {
        (self.width / 8) * (self.height / 8) * self.filters
    }
}

/// `3 x [conv3x3 -> ReLU -> conv3x3 -> ReLU -> maxpool 2x2] -> FC -> ReLU -> FC -> ReLU ->
/// FC`: the paper's small CNN trained from scratch (convolutions zero-padded to keep the
/// size, pools dropping an odd last row or column; the last block's output flattened in HWC
/// order). Weights are stored as PyTorch lays them out (`[F, C, 3, 3]`, `[out, in]`).
pub struct SmallCnn {
    pub config: SmallCnnConfig,
    /// `conv{block}{0,1}`: (weight `[F, C, 3, 3]`, bias `[F]`).
    convs: Vec<(Var, Var)>,
    /// `fc{0,1,2}`: (weight `[out, in]`, bias `[out]`).
    fcs: Vec<(Var, Var)>,
}

impl SmallCnn {
    /// The named shapes of the convolutions and of the fully connected layers.
    #[allow(clippy::type_complexity)]
    fn shapes(c: &SmallCnnConfig) -> (Vec<(String, [usize; 4])>, Vec<(String, [usize; 2])>) {
        let mut convs = Vec::new();
        let mut cin = 3;
        for block in 0..3 {
            for j in 0..2 {
                convs.push((format!("conv{block}{j}"), [c.filters, cin, 3, 3]));
                cin = c.filters;
            }
        }
        let fcs = vec![
            ("fc0".to_string(), [c.hidden, c.flat()]),
            ("fc1".to_string(), [c.hidden, c.hidden]),
            ("fc2".to_string(), [c.outputs, c.hidden]),
        ];
        (convs, fcs)
    }

    pub fn new(config: SmallCnnConfig, seed: u64, device: &Device) -> Result<Self> {
        if config.width < 8 || config.height < 8 {
            candle_core::bail!("small CNN needs at least 8x8 inputs (three 2x2 pools)");
        }
        let mut rng = SplitMix64::new(seed);
        let (cs, fs) = Self::shapes(&config);
        let mut convs = Vec::new();
        for (_, s) in cs {
            let fan_in = s[1] * 9;
            convs.push((
                init_uniform(&mut rng, &s, fan_in, device)?,
                init_uniform(&mut rng, &[s[0]], fan_in, device)?,
            ));
        }
        let mut fcs = Vec::new();
        for (_, s) in fs {
            fcs.push((
                init_uniform(&mut rng, &s, s[1], device)?,
                init_uniform(&mut rng, &[s[0]], s[1], device)?,
            ));
        }
        Ok(SmallCnn { config, convs, fcs })
    }

    pub fn from_tensors(
        config: SmallCnnConfig,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<Self> {
        let (cs, fs) = Self::shapes(&config);
        let mut convs = Vec::new();
        for (n, s) in cs {
            convs.push((
                take(get, &format!("{n}.weight"), &s)?,
                take(get, &format!("{n}.bias"), &[s[0]])?,
            ));
        }
        let mut fcs = Vec::new();
        for (n, s) in fs {
            fcs.push((
                take(get, &format!("{n}.weight"), &s)?,
                take(get, &format!("{n}.bias"), &[s[0]])?,
            ));
        }
        Ok(SmallCnn { config, convs, fcs })
    }
}

impl Head for SmallCnn {
    /// Runs in NHWC: each 3x3 convolution is an im2col (the nine shifted windows of the
    /// zero-padded input concatenated along channels) and one matrix product, and each
    /// 2x2 max-pool a max over a reshape. Every step has candle's autograd, and the matrix
    /// products run on `gemm`'s threads: candle's `conv2d` backward on the CPU took about 9x
    /// as long for this network.
    fn forward(&self, x: &Tensor, _train: Option<&mut SplitMix64>) -> Result<Tensor> {
        let c = &self.config;
        let n = x.dim(0)?;
        let (mut hh, mut ww, mut ch) = (c.height, c.width, 3);
        let mut h = x.reshape((n, hh, ww, ch))?;
        for (k, (w, b)) in self.convs.iter().enumerate() {
            // [F, C, 3, 3] -> [(dy, dx, c), F], the order of the concatenated windows.
            let wm = w
                .as_tensor()
                .permute((2, 3, 1, 0))?
                .reshape((9 * ch, c.filters))?;
            let padded = h.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
            let mut windows = Vec::with_capacity(9);
            for dy in 0..3 {
                for dx in 0..3 {
                    windows.push(padded.narrow(1, dy, hh)?.narrow(2, dx, ww)?);
                }
            }
            let cols = Tensor::cat(&windows, 3)?.reshape((n * hh * ww, 9 * ch))?;
            h = cols
                .matmul(&wm)?
                .broadcast_add(b.as_tensor())?
                .relu()?
                .reshape((n, hh, ww, c.filters))?;
            ch = c.filters;
            if k % 2 == 1 {
                let (ph, pw) = (hh / 2, ww / 2);
                h = h
                    .narrow(1, 0, ph * 2)?
                    .narrow(2, 0, pw * 2)?
                    .reshape((n, ph, 2, pw, 2, ch))?
                    .max(4)?
                    .max(2)?;
                hh = ph;
                ww = pw;
            }
        }
        let mut h = h.reshape((n, hh * ww * ch))?;
        for (k, (w, b)) in self.fcs.iter().enumerate() {
            h = h
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            if k < 2 {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
    fn vars(&self) -> Vec<Var> {
        self.convs
            .iter()
            .chain(&self.fcs)
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }
    fn named(&self) -> Vec<(String, Tensor)> {
        let (cs, fs) = Self::shapes(&self.config);
        let names = cs
            .into_iter()
            .map(|x| x.0)
            .chain(fs.into_iter().map(|x| x.0));
        names
            .zip(self.convs.iter().chain(&self.fcs))
            .flat_map(|(n, (w, b))| {
                [
                    (format!("{n}.weight"), w.as_tensor().clone()),
                    (format!("{n}.bias"), b.as_tensor().clone()),
                ]
            })
            .collect()
    }
}

/// Which head, with its shape: what `model.json` records so that evaluate and predict can
/// rebuild it from `model.safetensors`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HeadSpec {
    /// The paper's MLP on CNN features.
    Mlp(MlpConfig),
    /// A linear map (the linear SVM on HOG features).
    Linear { input: usize, outputs: usize },
    /// The paper's small CNN on pixels.
    SmallCnn(SmallCnnConfig),
}

impl HeadSpec {
    /// The kind's name as `model.json` writes it: `mlp`, `linear`, `small-cnn`.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadSpec::Mlp(_) => "mlp",
            HeadSpec::Linear { .. } => "linear",
            HeadSpec::SmallCnn(_) => "small-cnn",
        }
    }

    /// Values per input row.
    pub fn input(&self) -> usize {
        match self {
            HeadSpec::Mlp(c) => c.input,
            HeadSpec::Linear { input, .. } => *input,
            HeadSpec::SmallCnn(c) => c.input(),
        }
    }

    /// Values per output row.
    pub fn outputs(&self) -> usize {
        match self {
            HeadSpec::Mlp(c) => c.outputs,
            HeadSpec::Linear { outputs, .. } => *outputs,
            HeadSpec::SmallCnn(c) => c.outputs,
        }
    }

    /// A freshly initialised head (seeded).
    pub fn init(&self, seed: u64, device: &Device) -> Result<Box<dyn Head>> {
        Ok(match self {
            HeadSpec::Mlp(c) => Box::new(Mlp::new(c.clone(), seed, device)?),
            HeadSpec::Linear { input, outputs } => {
                Box::new(Linear::new(*input, *outputs, seed, device)?)
            }
            HeadSpec::SmallCnn(c) => Box::new(SmallCnn::new(c.clone(), seed, device)?),
        })
    }

    /// The head from its named parameters (a saved model), every shape checked.
    pub fn load(&self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<Box<dyn Head>> {
        Ok(match self {
            HeadSpec::Mlp(c) => Box::new(Mlp::from_tensors(c.clone(), get)?),
            HeadSpec::Linear { input, outputs } => {
                Box::new(Linear::from_tensors(*input, *outputs, get)?)
            }
            HeadSpec::SmallCnn(c) => Box::new(SmallCnn::from_tensors(c.clone(), get)?),
        })
    }
}

/// What a training batch is scored against.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Class indices, one per row.
    Classes(&'a [u32]),
    /// `[N, outputs]` values, row-major.
    Values(&'a [f32]),
    /// A distribution over the classes per row (`[N, outputs]`, each row summing to 1),
    /// with the true class of each row (for the accuracy): cross-entropy against soft
    /// labels, e.g. [`haversine_smoothing`]'s.
    Soft { labels: &'a [u32], probs: &'a [f32] },
}

/// PIGEON's haversine label smoothing (Haas et al. 2024): the target of a photo at
/// distance `d_i` from class `i`'s location, whose true class lies `d_true` away, is
/// `exp(-(d_i - d_true) / tau)` over the classes, normalised; classes without a location
/// get 0. Written into `out` (one row of `distances.len()`). As `tau -> 0` it tends to the
/// one-hot target of the true class when that is the nearest; `tau` in km (PIGEON: 75).
pub fn haversine_smoothing(distances: &[Option<f64>], truth: usize, tau: f64, out: &mut [f32]) {
    let d_true = distances.get(truth).copied().flatten();
    // Exponents relative to the nearest class, so the largest term is exp(0) = 1 and
    // nothing overflows whatever tau.
    let nearest = distances
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let mut sum = 0f64;
    for (o, d) in out.iter_mut().zip(distances) {
        let v = match (d, d_true) {
            (Some(d), Some(_)) if tau > 0.0 => (-(d - nearest) / tau).exp(),
            _ => 0.0,
        };
        *o = v as f32;
        sum += v;
    }
    if sum > 0.0 && sum.is_finite() {
        out.iter_mut().for_each(|o| *o = (*o as f64 / sum) as f32);
    } else {
        // tau = 0, or the true class has no location: the one-hot target.
        out.iter_mut().for_each(|o| *o = 0.0);
        if let Some(o) = out.get_mut(truth) {
            *o = 1.0;
        }
    }
}

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Softmax cross-entropy over class scores, mean over the batch (`nn.CrossEntropyLoss`).
    CrossEntropy,
    /// Squared error, mean over all values (`nn.MSELoss`).
    SquaredError,
    /// One-vs-rest squared hinge, `sum_c max(0, 1 - y_c s_c)^2` with `y_c = +1` for the true
    /// class and -1 for the others, mean over the batch (LIBLINEAR's L2-loss SVM).
    SquaredHinge,
}

/// A batch's loss, its gradient with respect to the outputs, and how many rows' highest
/// score is their class (0 for values).
pub fn loss_and_grad(
    loss: Loss,
    out: &[f32],
    out_dim: usize,
    target: Target,
) -> Result<(f32, Vec<f32>, usize)> {
    let n = out.len() / out_dim.max(1);
    if n == 0 || out.len() != n * out_dim {
        candle_core::bail!("{} outputs are not [n, {out_dim}]", out.len());
    }
    let mut g = vec![0f32; out.len()];
    match (loss, target) {
        (Loss::CrossEntropy | Loss::SquaredHinge, Target::Classes(labels)) => {
            if labels.len() != n {
                candle_core::bail!("{} labels for {n} rows", labels.len());
            }
            let mut total = 0f64;
            let mut correct = 0;
            for (r, (row, &y)) in out.chunks_exact(out_dim).zip(labels).enumerate() {
                let y = y as usize;
                if y >= out_dim {
                    candle_core::bail!("label {y} outside {out_dim} classes");
                }
                correct += (argmax(row) == y) as usize;
                let gr = &mut g[r * out_dim..(r + 1) * out_dim];
                if loss == Loss::CrossEntropy {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
                    total += (sum.ln() + max - row[y]) as f64;
                    for (j, v) in row.iter().enumerate() {
                        let p = (v - max).exp() / sum;
                        gr[j] = (p - (j == y) as u8 as f32) / n as f32;
                    }
                } else {
                    for (j, s) in row.iter().enumerate() {
                        let t = if j == y { 1.0 } else { -1.0 };
                        let m = (1.0 - t * s).max(0.0);
                        total += (m * m) as f64;
                        gr[j] = -2.0 * t * m / n as f32;
                    }
                }
            }
            Ok(((total / n as f64) as f32, g, correct))
        }
        (Loss::CrossEntropy, Target::Soft { labels, probs }) => {
            if labels.len() != n || probs.len() != out.len() {
                candle_core::bail!(
                    "{} labels and {} target values for {n} rows of {out_dim}",
                    labels.len(),
                    probs.len()
                );
            }
            let mut total = 0f64;
            let mut correct = 0;
            for (r, ((row, q), &y)) in out
                .chunks_exact(out_dim)
                .zip(probs.chunks_exact(out_dim))
                .zip(labels)
                .enumerate()
            {
                correct += (argmax(row) == y as usize) as usize;
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
                let log_sum = sum.ln() + max;
                let gr = &mut g[r * out_dim..(r + 1) * out_dim];
                for (j, (v, &t)) in row.iter().zip(q).enumerate() {
                    // -sum_j q_j log p_j, log p_j = v_j - logsumexp
                    if t > 0.0 {
                        total += (t * (log_sum - v)) as f64;
                    }
                    let p = (v - max).exp() / sum;
                    gr[j] = (p - t) / n as f32;
                }
            }
            Ok(((total / n as f64) as f32, g, correct))
        }
        (Loss::SquaredError, Target::Values(t)) => {
            if t.len() != out.len() {
                candle_core::bail!("{} targets for {} outputs", t.len(), out.len());
            }
            let count = out.len() as f32;
            let mut total = 0f64;
            for ((gi, a), b) in g.iter_mut().zip(out).zip(t) {
                total += ((a - b) * (a - b)) as f64;
                *gi = 2.0 * (a - b) / count;
            }
            Ok(((total / count as f64) as f32, g, 0))
        }
        (l, _) => candle_core::bail!("loss {l:?} does not take this kind of target"),
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// The MLP's training step on the CPU in f32, written out (forward, backward, optimiser
/// update) over plain buffers: candle's autograd spent half of an epoch outside the matrix
/// products (zero-filled gradient stores, accumulation, an allocation per operation). The
/// same arithmetic as [`Mlp::forward`] + candle's backward + [`crate::optim`]'s update, with
/// the same dropout masks from the same generator (a test holds them equal).
pub struct CpuMlpTrainer {
    pub config: MlpConfig,
    optimizer: crate::optim::OptimizerConfig,
    loss: Loss,
    /// Per layer: weight `[out, in]` and bias.
    w: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    /// Per layer: the optimiser's state buffers of the weight and of the bias.
    sw: Vec<Vec<Vec<f32>>>,
    sb: Vec<Vec<Vec<f32>>>,
    steps: u64,
}

/// `c[m, n] (+)= a[m, k] @ b[k, n]` with arbitrary strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
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
    pub fn new(mlp: &Mlp, optimizer: crate::optim::OptimizerConfig, loss: Loss) -> Result<Self> {
        optimizer.validate()?;
        let mut w = Vec::new();
        let mut b = Vec::new();
        for (wv, bv) in &mlp.layers {
            w.push(wv.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            b.push(bv.as_tensor().to_vec1::<f32>()?);
        }
        let k = optimizer.state_buffers();
        let sw = w.iter().map(|v| vec![vec![0.0; v.len()]; k]).collect();
        let sb = b.iter().map(|v| vec![vec![0.0; v.len()]; k]).collect();
        Ok(CpuMlpTrainer {
            config: mlp.config.clone(),
            optimizer,
            loss,
            w,
            b,
            sw,
            sb,
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

    /// The forward pass without dropout: `x` `[n, input]` to `[n, outputs]`, row-major.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<f32>> {
        let dims = self.config.dims();
        let n = x.len() / dims[0].0;
        if x.len() != n * dims[0].0 {
            candle_core::bail!("batch of {} values is not [n, {}]", x.len(), dims[0].0);
        }
        let mut h = x.to_vec();
        for (k, (i, o)) in dims.into_iter().enumerate() {
            let mut z = vec![0f32; n * o];
            for row in z.chunks_exact_mut(o) {
                row.copy_from_slice(&self.b[k]);
            }
            gemm_strided(n, o, i, &mut z, true, &h, (i, 1), &self.w[k], (1, i));
            if k < 2 {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h = z;
        }
        Ok(h)
    }

    /// One optimiser step on a batch `x` (`[n, input]`, row-major); returns the batch loss
    /// and how many rows the pre-update network classified right (for class targets).
    pub fn step(
        &mut self,
        x: &[f32],
        target: Target,
        rng: &mut SplitMix64,
    ) -> Result<(f32, usize)> {
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
        let (loss, mut grad, correct) = loss_and_grad(self.loss, &h, dims[2].1, target)?;
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
        self.steps += 1;
        for k in 0..3 {
            self.optimizer
                .update(self.steps, &mut self.w[k], &grads_w[k], &mut self.sw[k]);
            self.optimizer
                .update(self.steps, &mut self.b[k], &grads_b[k], &mut self.sb[k]);
        }
        Ok((loss, correct))
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimiser's state buffers by name (`fc{k}.{weight,bias}.{j}`), for checkpoints.
    pub fn state(&self) -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        for k in 0..3 {
            for (j, s) in self.sw[k].iter().enumerate() {
                out.push((format!("fc{k}.weight.{j}"), s.clone()));
            }
            for (j, s) in self.sb[k].iter().enumerate() {
                out.push((format!("fc{k}.bias.{j}"), s.clone()));
            }
        }
        out
    }

    /// Restores parameters, optimiser state and step count from a checkpoint.
    pub fn restore(
        &mut self,
        params: &dyn Fn(&str) -> Option<Vec<f32>>,
        state: &dyn Fn(&str) -> Option<Vec<f32>>,
        steps: u64,
    ) -> Result<()> {
        let fetch = crate::trainer::checkpoint_values;
        for k in 0..3 {
            self.w[k] = fetch(params, &format!("fc{k}.weight"), self.w[k].len())?;
            self.b[k] = fetch(params, &format!("fc{k}.bias"), self.b[k].len())?;
            for j in 0..self.sw[k].len() {
                self.sw[k][j] = fetch(state, &format!("fc{k}.weight.{j}"), self.w[k].len())?;
                self.sb[k][j] = fetch(state, &format!("fc{k}.bias.{j}"), self.b[k].len())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}
