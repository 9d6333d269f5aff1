//! `geoloc gpu-check`: the device check of a CUDA build. Its inputs are made on a machine
//! without a GPU (`cargo xtask gpu-bundle` calls [`make_reference`]); [`run`] then runs on
//! a GPU machine with the CUDA binary. The same code runs on the CPU device in the tests, so
//! what the GPU machine runs has been run before.
//!
//! A bundle folder holds:
//! - `crops/NNNN.png`: 224x224 RGB centre crops of real photos (made by `geoloc-imaging`
//!   here, so both machines read the same pixels; PNG is lossless);
//! - `weights/efficientnet-lite0.pth`: the real Lite0 checkpoint;
//! - `reference.safetensors`: the CPU's f32 features of those crops: `lite0` (real weights,
//!   logits, every crop), `vgg16` and `googlenet` (seeded random weights, logits, the first
//!   crops);
//! - `reference.json`: how they were made.
//!
//! [`run`] checks, on the device: every backbone's features in f32 (max |error| / std of
//! the reference below 1e-3, TF32 off) and in f16 and bf16 (cosine per row above 0.999; on
//! Lite0's real logits, the same top-5 classes for more than 99% of photos); the images/s
//! of each backbone at each batch and dtype (upload of the 8-bit pixels and download of the
//! features included: what featurize pays); and ten steps of the paper's MLP trained on the
//! device against the CPU trainer (loss and parameters within 1e-4, relative).

use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use geoloc_core::rng::SplitMix64;
use geoloc_imaging::{Geometry, Greyscale, PrepareOptions, Views};
use geoloc_models::backbone::{
    self, Backbone, BackboneKind, BackboneSpec, HogParams, Layer, WeightsSource,
};
use geoloc_models::heads::{CpuMlpTrainer, Loss, Mlp, MlpConfig, Target};
use geoloc_models::optim::{OptimizerConfig, SgdConfig};
use geoloc_models::trainer::{CandleTrainer, Trainer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The crops' side.
pub const SIDE: u32 = 224;
/// The seed of the random VGG16 and GoogLeNet weights (the same draws on both machines).
pub const SEED: u64 = 7;
/// Where the Lite0 checkpoint sits in a bundle.
pub const LITE0_IN_BUNDLE: &str = "weights/efficientnet-lite0.pth";

/// Goals of the parity checks.
pub const F32_MAX_ERR_OVER_STD: f64 = 1e-3;
pub const REDUCED_MIN_COSINE: f64 = 0.999;
pub const REDUCED_TOP5_SHARE: f64 = 0.99;
pub const MLP_MAX_RELATIVE: f64 = 1e-4;

/// How a bundle's reference was made (`reference.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReferenceInfo {
    /// Crops in `crops/`, all with Lite0 reference rows.
    pub crops: usize,
    /// The first this many crops have VGG16 and GoogLeNet reference rows.
    pub cnn_rows: usize,
    pub seed: u64,
    /// The photos the crops were cut from, in crop order.
    pub photos: Vec<String>,
    /// Photos that could not be used, with the reason.
    pub skipped: Vec<String>,
}

fn spec(kind: BackboneKind) -> BackboneSpec {
    BackboneSpec {
        kind,
        layer: Some(Layer::Logits),
        normalisation: None,
        hog: HogParams::default(),
    }
}

fn load(kind: BackboneKind, bundle: &Path, device: &Device, dtype: DType) -> Result<Backbone> {
    let source = match kind {
        BackboneKind::Lite0 => WeightsSource::File {
            path: bundle.join(LITE0_IN_BUNDLE),
            key: None,
        },
        _ => WeightsSource::Random { seed: SEED },
    };
    Backbone::load(spec(kind), Some(&source), device, dtype)
        .with_context(|| format!("loading {} on {device:?} in {dtype:?}", kind.name()))
}

/// Features of `crops` in batches of `batch`.
fn features(net: &Backbone, crops: &[Vec<u8>], batch: usize) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in crops.chunks(batch.max(1)) {
        let refs: Vec<&[u8]> = chunk.iter().map(|c| c.as_slice()).collect();
        out.extend(net.features(&refs, SIDE, SIDE)?);
    }
    Ok(out)
}

/// Cuts the 224 centre crop of each photo (in the order given, up to `max_photos`), writes
/// them as PNGs under `bundle/crops/`, copies the Lite0 checkpoint, and computes the CPU's
/// f32 reference features. `cnn_rows`: how many crops VGG16 and GoogLeNet run on here
/// (they are slow on a CPU).
pub fn make_reference(
    photos: &[PathBuf],
    lite0: &Path,
    bundle: &Path,
    max_photos: usize,
    cnn_rows: usize,
) -> Result<ReferenceInfo> {
    let opts = PrepareOptions {
        decode: geoloc_imaging::DecodeOptions {
            limits: Default::default(),
            greyscale: Greyscale::Convert,
        },
        geometry: Geometry::ResizeCrop {
            resize: 256,
            crop: SIDE,
        },
        views: Views::Centre,
        dct_scaling: true,
    };
    let crops_dir = bundle.join("crops");
    std::fs::create_dir_all(&crops_dir)?;
    std::fs::create_dir_all(bundle.join("weights"))?;
    std::fs::copy(lite0, bundle.join(LITE0_IN_BUNDLE))
        .with_context(|| format!("copying {}", lite0.display()))?;
    let mut crops = Vec::new();
    let mut info = ReferenceInfo {
        crops: 0,
        cnn_rows: 0,
        seed: SEED,
        photos: vec![],
        skipped: vec![],
    };
    for p in photos {
        if crops.len() == max_photos {
            break;
        }
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        match geoloc_imaging::prepare(&bytes, &opts, 0) {
            Ok(mut pr) => {
                let px = pr.views.swap_remove(0).pixels;
                let img = image::RgbImage::from_raw(SIDE, SIDE, px.clone())
                    .ok_or_else(|| anyhow!("a crop of {} is not {SIDE}x{SIDE}", p.display()))?;
                img.save(crops_dir.join(format!("{:04}.png", crops.len())))?;
                crops.push(px);
                info.photos.push(p.display().to_string());
            }
            Err(e) => info
                .skipped
                .push(format!("{}: {}", p.display(), e.reason())),
        }
    }
    if crops.is_empty() {
        bail!("none of the {} photos could be cut", photos.len());
    }
    info.crops = crops.len();
    info.cnn_rows = cnn_rows.min(crops.len());
    let mut tensors = HashMap::new();
    for (kind, rows) in [
        (BackboneKind::Lite0, info.crops),
        (BackboneKind::Vgg16, info.cnn_rows),
        (BackboneKind::Googlenet, info.cnn_rows),
    ] {
        if rows == 0 {
            continue;
        }
        let net = load(kind, bundle, &Device::Cpu, DType::F32)?;
        let f = features(&net, &crops[..rows], 8)?;
        let dim = f.len() / rows;
        tensors.insert(
            kind.name().to_owned(),
            Tensor::from_vec(f, (rows, dim), &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&tensors, bundle.join("reference.safetensors"))?;
    std::fs::write(
        bundle.join("reference.json"),
        serde_json::to_vec_pretty(&info)?,
    )?;
    Ok(info)
}

/// The crops of a bundle, in order.
fn read_crops(bundle: &Path, n: usize) -> Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let p = bundle.join(format!("crops/{i:04}.png"));
            let img = image::open(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .to_rgb8();
            if img.dimensions() != (SIDE, SIDE) {
                bail!("{} is not {SIDE}x{SIDE}", p.display());
            }
            Ok(img.into_raw())
        })
        .collect()
}

/// One parity result.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    pub model: String,
    pub dtype: String,
    pub rows: usize,
    /// max |device - reference| / std(reference).
    pub max_err_over_std: f64,
    /// The smallest cosine similarity of a row with its reference.
    pub min_cosine: f64,
    /// Rows whose top-5 classes are the reference's (Lite0's real logits only).
    pub top5_share: Option<f64>,
    pub pass: bool,
}

/// One throughput result.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub model: String,
    pub dtype: String,
    pub batch: usize,
    pub images_per_s: f64,
}

/// The MLP's steps on the device against the CPU trainer.
#[derive(Debug, Clone, Serialize)]
pub struct MlpCheck {
    pub steps: usize,
    pub max_loss_relative: f64,
    pub max_param_relative: f64,
    pub pass: bool,
}

/// Everything [`run`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub build: String,
    pub parity: Vec<Parity>,
    pub throughput: Vec<Throughput>,
    pub mlp: Option<MlpCheck>,
}

impl Report {
    pub fn pass(&self) -> bool {
        self.parity.iter().all(|p| p.pass) && self.mlp.as_ref().is_none_or(|m| m.pass)
    }

    /// The report as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# geoloc gpu-check on `{}` ({})\n\n",
            self.device, self.build
        );
        s += "| model | dtype | rows | max err / std | min cosine | top-5 same | pass |\n|---|---|---|---|---|---|---|\n";
        for p in &self.parity {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2e} | {:.6} | {} | {} |",
                p.model,
                p.dtype,
                p.rows,
                p.max_err_over_std,
                p.min_cosine,
                p.top5_share
                    .map(|v| format!("{:.1}%", v * 100.0))
                    .unwrap_or_else(|| "-".into()),
                if p.pass { "yes" } else { "NO" }
            );
        }
        s += "\n| model | dtype | batch | images/s |\n|---|---|---|---|\n";
        for t in &self.throughput {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} |",
                t.model, t.dtype, t.batch, t.images_per_s
            );
        }
        if let Some(m) = &self.mlp {
            let _ = writeln!(
                s,
                "\nMLP, {} steps on the device against the CPU trainer: loss {:.2e}, parameters {:.2e} relative ({})",
                m.steps,
                m.max_loss_relative,
                m.max_param_relative,
                if m.pass { "pass" } else { "FAIL" }
            );
        }
        s
    }
}

fn compare(model: &str, dtype: &str, got: &[f32], want: &[f32], dim: usize) -> Parity {
    let rows = want.len() / dim;
    let mean = want.iter().map(|&v| v as f64).sum::<f64>() / want.len() as f64;
    let std = (want.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / want.len() as f64)
        .sqrt()
        .max(1e-12);
    let max_err = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .fold(0.0, f64::max);
    let mut min_cosine = 1.0f64;
    // Top-5 agreement means something on real logits only (Lite0's real weights).
    let real_logits = model == "lite0";
    let mut top5_same = 0;
    for (g, w) in got.chunks_exact(dim).zip(want.chunks_exact(dim)) {
        let dot: f64 = g.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum();
        let ng: f64 = g.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        let nw: f64 = w.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        min_cosine = min_cosine.min(dot / (ng * nw).max(1e-30));
        if real_logits {
            top5_same += (top5(g) == top5(w)) as usize;
        }
    }
    let top5_share = real_logits.then(|| top5_same as f64 / rows.max(1) as f64);
    let max_err_over_std = max_err / std;
    let pass = if dtype == "f32" {
        max_err_over_std < F32_MAX_ERR_OVER_STD
    } else {
        min_cosine > REDUCED_MIN_COSINE && top5_share.is_none_or(|s| s > REDUCED_TOP5_SHARE)
    };
    Parity {
        model: model.into(),
        dtype: dtype.into(),
        rows,
        max_err_over_std,
        min_cosine,
        top5_share,
        pass,
    }
}

/// The indices of the five largest values, as a sorted set.
fn top5(row: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(5);
    idx.sort_unstable();
    idx
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: String,
    /// Batches of the throughput runs.
    pub batches: Vec<usize>,
    /// Dtypes of the parity runs (f32 first).
    pub parity_dtypes: Vec<String>,
    /// Dtypes of the throughput runs.
    pub throughput_dtypes: Vec<String>,
    /// Models of the reduced-precision parity and of the throughput runs.
    pub models: Vec<BackboneKind>,
    /// Seconds each throughput measurement runs for, at least (after one warm-up batch).
    pub seconds: f64,
}

impl RunOptions {
    /// What the GPU machine runs.
    pub fn full(device: &str) -> Self {
        RunOptions {
            device: device.into(),
            batches: vec![64, 256],
            parity_dtypes: vec!["f32".into(), "f16".into(), "bf16".into()],
            throughput_dtypes: vec!["f32".into(), "bf16".into()],
            models: vec![
                BackboneKind::Vgg16,
                BackboneKind::Googlenet,
                BackboneKind::Lite0,
            ],
            seconds: 3.0,
        }
    }
}

/// Runs the checks on `opts.device` against the bundle's reference.
pub fn run(bundle: &Path, opts: &RunOptions) -> Result<Report> {
    let info: ReferenceInfo = serde_json::from_slice(
        &std::fs::read(bundle.join("reference.json"))
            .with_context(|| format!("{}: not a gpu-check bundle", bundle.display()))?,
    )?;
    let device = backbone::parse_device(&opts.device)?;
    // Full f32 precision in cuBLAS (no TF32), as the parity goal assumes.
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(false);
    let reference =
        candle_core::safetensors::load(bundle.join("reference.safetensors"), &Device::Cpu)?;
    let crops = read_crops(bundle, info.crops)?;
    let mut report = Report {
        device: opts.device.clone(),
        build: crate::BUILD.into(),
        parity: vec![],
        throughput: vec![],
        mlp: None,
    };
    for kind in [
        BackboneKind::Lite0,
        BackboneKind::Vgg16,
        BackboneKind::Googlenet,
    ] {
        let Some(want) = reference.get(kind.name()) else {
            continue;
        };
        let (rows, dim) = want.dims2()?;
        let want: Vec<f32> = want.flatten_all()?.to_vec1()?;
        for dtype in &opts.parity_dtypes {
            if dtype != "f32" && !opts.models.contains(&kind) {
                continue;
            }
            let net = load(kind, bundle, &device, backbone::parse_dtype(dtype)?)?;
            let got = features(&net, &crops[..rows], 32)?;
            let p = compare(kind.name(), dtype, &got, &want, dim);
            tracing::info!(
                "parity {} {}: max err/std {:.2e}, min cosine {:.6}{}",
                p.model,
                p.dtype,
                p.max_err_over_std,
                p.min_cosine,
                if p.pass { "" } else { " FAIL" }
            );
            report.parity.push(p);
        }
    }
    for kind in &opts.models {
        for dtype in &opts.throughput_dtypes {
            let net = load(*kind, bundle, &device, backbone::parse_dtype(dtype)?)?;
            for &batch in &opts.batches {
                let imgs: Vec<Vec<u8>> =
                    (0..batch).map(|i| crops[i % crops.len()].clone()).collect();
                let refs: Vec<&[u8]> = imgs.iter().map(|c| c.as_slice()).collect();
                net.features(&refs, SIDE, SIDE)?; // warm-up: kernels load, memory grows
                let t0 = Instant::now();
                let mut n = 0;
                while n < 3 || t0.elapsed().as_secs_f64() < opts.seconds {
                    net.features(&refs, SIDE, SIDE)?;
                    n += 1;
                }
                let t = Throughput {
                    model: kind.name().into(),
                    dtype: dtype.clone(),
                    batch,
                    images_per_s: (n * batch) as f64 / t0.elapsed().as_secs_f64(),
                };
                tracing::info!(
                    "throughput {} {} batch {}: {:.1} images/s",
                    t.model,
                    t.dtype,
                    t.batch,
                    t.images_per_s
                );
                report.throughput.push(t);
            }
        }
    }
    report.mlp = Some(mlp_check(&device, 10)?);
    Ok(report)
}

/// `steps` steps of the paper's MLP (1000 inputs, 5 classes, dropout, Nesterov SGD) on
/// `device` through candle's autograd against the CPU trainer, from the same initial
/// weights, batches and dropout draws.
pub fn mlp_check(device: &Device, steps: usize) -> Result<MlpCheck> {
    let (d, k, n) = (1000, 5, 200);
    let opt = OptimizerConfig::Sgd(SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: true,
    });
    let mut data = SplitMix64::new(2024);
    let x = data.uniform_f32(n * d, 1.7);
    let y: Vec<u32> = (0..n)
        .map(|_| (data.next_u64() % k as u64) as u32)
        .collect();
    let cpu_mlp = Mlp::new(MlpConfig::paper(d, k), 0, &Device::Cpu)?;
    let mut cpu = CpuMlpTrainer::new(&cpu_mlp, opt, Loss::CrossEntropy)?;
    let dev_mlp = Mlp::new(MlpConfig::paper(d, k), 0, device)?;
    let mut dev = CandleTrainer::new(Box::new(dev_mlp), d, k, opt, Loss::CrossEntropy, device)?;
    let (mut r1, mut r2) = (SplitMix64::new(1), SplitMix64::new(1));
    let mut max_loss = 0f64;
    for _ in 0..steps {
        let (a, _) = Trainer::step(&mut cpu, &x, Target::Classes(&y), &mut r1)?;
        let (b, _) = dev.step(&x, Target::Classes(&y), &mut r2)?;
        max_loss = max_loss.max((a as f64 - b as f64).abs() / (a as f64).abs().max(1e-12));
    }
    let mut max_param = 0f64;
    let want = Trainer::parameters(&cpu)?;
    let got = dev.parameters()?;
    for ((name, a, _), (_, b, _)) in want.iter().zip(&got) {
        let scale = a
            .iter()
            .fold(0f64, |m, &v| m.max((v as f64).abs()))
            .max(1e-12);
        let err = a
            .iter()
            .zip(b)
            .fold(0f64, |m, (&p, &q)| m.max((p as f64 - q as f64).abs()));
        tracing::debug!("mlp {name}: max error {err:e} of {scale:e}");
        max_param = max_param.max(err / scale);
    }
    Ok(MlpCheck {
        steps,
        max_loss_relative: max_loss,
        max_param_relative: max_param,
        pass: max_loss < MLP_MAX_RELATIVE && max_param < MLP_MAX_RELATIVE,
    })
}
