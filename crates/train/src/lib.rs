//! `geoloc-train`: the train stage. Features (or pixels, for the small CNN) and a samples
//! dataset in; a model directory out (`model.safetensors`, `model.json`, `history.parquet`,
//! committed by `_manifest.json`; see `geoloc_models::card`).
//!
//! Heads: the paper's MLP (country classification, latitude/longitude regression), its
//! baselines (a linear SVM on HOG features, the small CNN on 52x48 pixels), and beyond the
//! paper classification over adaptive S2 geocells. Inputs are joined with the samples by
//! `id` for labels, splits and coordinates; every view of a train photo is a training row,
//! the validation metrics average a photo's views.
//!
//! Training is seeded and reproducible: initialisation, the per-epoch shuffle and the
//! dropout masks come from `geoloc_core::rng` streams derived from `seed` and the epoch, so
//! the same seed gives the same bytes on the CPU, and a run resumed from a checkpoint equals
//! an uninterrupted one. It records the epoch-0 (untrained) validation metrics, keeps the
//! best epoch on validation (country: accuracy; latlon, geocell: median error), stops early
//! on request, and checkpoints every `checkpoint_every` epochs.
//!
//! The public face: [`Config`], [`run`], [`finalize`], [`fingerprint`], [`open`],
//! [`Summary`].

mod data;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use candle_core::{Device, Tensor};
use data::SplitRows;
use geoloc_core::dataset::{Manifest, ManifestInfo};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::geo::{haversine_km, LatLon, SphericalMean};
use geoloc_core::rng::SplitMix64;
use geoloc_core::stage::{Context, Input};
use geoloc_models::card::{
    GeocellInfo, Metrics, ModelCard, TargetScaling, Task, CARD_FILE, CARD_VERSION, HISTORY_FILE,
    WEIGHTS_FILE,
};
use geoloc_models::geocells as geocell;
pub use geoloc_models::geocells::GeocellConfig;
use geoloc_models::heads::{
    argmax, haversine_smoothing, loss_and_grad, CpuMlpTrainer, HeadSpec, Loss, Mlp, MlpConfig,
    SmallCnnConfig, Target,
};
use geoloc_models::optim::{OptimizerConfig, SgdConfig};
use geoloc_models::predict::{softmax_into, PhotoScores};
use geoloc_models::trainer::{CandleTrainer, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The stage kind's name in pipeline files.
pub const KIND: &str = "train";

/// Output-format version: bump when the same config would now train another model.
pub const FORMAT_VERSION: u32 = 1;

/// The artifact schema a model directory's manifest names.
pub const MODEL_SCHEMA: &str = "model";
pub const MODEL_SCHEMA_VERSION: u32 = 1;

/// The artifact schema of a retrieval index directory (head `knn`).
pub const INDEX_SCHEMA: &str = "index";
pub const INDEX_SCHEMA_VERSION: u32 = 1;

/// `checkpoint.json` names its tensors file, `checkpoint-EPOCH.safetensors`, written before
/// it: a kill at any moment leaves the previous pair or the new one, never a mix.
const CHECKPOINT_STATE: &str = "checkpoint.json";

/// Which head to train.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// The paper's `INPUT -> [DROPOUT -> FC] x3` on features.
    #[default]
    Mlp,
    /// A multi-class linear SVM (one-vs-rest squared hinge, L2 weight decay): the paper's
    /// baseline on HOG features.
    LinearSvm,
    /// The paper's small CNN from scratch, on pixels (an images dataset).
    SmallCnn,
    /// No training: the train photos' features become a retrieval index (one unit vector
    /// per photo, its views averaged, with its id and location); a photo is placed by a
    /// kernel-density vote over its nearest train photos (see `vote`).
    Knn,
}

/// Configuration of a train instance. Unset values take the paper's settings for the
/// head and task (see [`Config::resolve`]).
///
/// ```toml
/// [stages.country.config]
/// head = "mlp"            # mlp | linear-svm | small-cnn
/// task = "country"        # country | latlon | geocell
/// epochs = 200
/// optimizer = { kind = "sgd", lr = 0.001, momentum = 0.9, nesterov = true }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which head to train: `mlp` (the paper's), `linear-svm` (its HOG baseline),
    /// `small-cnn` (its CNN from scratch, on pixels), `knn` (a retrieval index over the
    /// train photos' features, no training).
    #[serde(default)]
    pub head: HeadKind,
    /// What it predicts: `country` (the samples' classes), `latlon` (coordinates), `geocell`
    /// (adaptive S2 cells, see `geocells`).
    #[serde(default)]
    pub task: Task,
    /// Passes over the train rows (default: the paper's, 200 for the MLP; 500 for latlon).
    pub epochs: Option<usize>,
    /// Rows per step (default 500, the paper's).
    pub batch: Option<usize>,
    /// `{ kind = "sgd", lr, momentum, nesterov, dampening, weight_decay }` or `{ kind =
    /// "adam", lr, beta1, beta2, eps, weight_decay }` (default: the paper's SGD with Nesterov
    /// momentum 0.9, lr 1e-3; 1e-4 for latlon).
    pub optimizer: Option<OptimizerConfig>,
    /// MLP hidden units (default 800).
    pub hidden: Option<usize>,
    /// MLP dropout before each of its three FC layers (default 0.2, 0.5, 0.5).
    pub dropout: Option<[f32; 3]>,
    /// Standardise each input value by the train split's mean and std (default: on for the
    /// SVM and the small CNN, the paper's per-pixel normalisation; off for the MLP).
    pub standardise: Option<bool>,
    /// Seed of the initial weights, the row order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many epochs without a better validation metric.
    pub early_stop: Option<usize>,
    /// The partition of a `geocell` task.
    pub geocells: Option<GeocellConfig>,
    /// `knn`: how the nearest train photos vote for a location, `{ k = 20, bandwidth_km =
    /// 25 }`: the neighbour with the most neighbours within about a bandwidth wins.
    pub vote: Option<geoloc_models::retrieval::Vote>,
    /// Where to run: `cpu` (default), `cuda`, `cuda:N`. An execution setting (not
    /// fingerprinted), like the two below.
    #[serde(default)]
    pub device: Option<String>,
    /// Write a checkpoint every this many epochs (default 10).
    pub checkpoint_every: Option<usize>,
    /// Keep the training rows in memory up to this many MB (default 4096), else in a
    /// memory-mapped file in the output directory.
    pub memory_mb: Option<u64>,
    /// Require a checkpoint to continue from (`geoloc train --resume`); a usable one is
    /// taken up without it too.
    #[serde(default)]
    pub resume: bool,
    /// Stop after the first epoch that ends past this many seconds of training, with a
    /// checkpoint, and return [`Error::OutOfTime`]: a batch job under a time limit
    /// (`geoloc train --max-seconds`) requeues itself and the rerun continues.
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

/// A config with every default filled in for its head and task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    pub head: HeadKind,
    pub task: Task,
    pub epochs: usize,
    pub batch: usize,
    pub optimizer: OptimizerConfig,
    pub loss: Loss,
    pub hidden: usize,
    pub dropout: [f32; 3],
    pub standardise: bool,
    pub seed: u64,
    pub early_stop: Option<usize>,
    pub geocells: Option<GeocellConfig>,
}

fn nesterov(lr: f64, weight_decay: f64) -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig {
        lr,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay,
        nesterov: true,
    })
}

impl Config {
    /// Fills in the paper's settings: MLP country 200 epochs at lr 1e-3, latlon 500 epochs at
    /// 1e-4 (SGD, Nesterov momentum 0.9, batch 500); the small CNN 20 epochs at lr 0.045
    /// with regularisation 0.01; the SVM (the paper gives none) 50 epochs at lr 0.1 with
    /// weight decay 1e-4 on features standardised to unit mean squared norm.
    pub fn resolve(&self) -> Result<Resolved, Error> {
        let (epochs, opt) = match (self.head, self.task) {
            (HeadKind::Mlp, Task::Latlon) => (500, nesterov(1e-4, 0.0)),
            (HeadKind::Mlp, _) => (200, nesterov(1e-3, 0.0)),
            (HeadKind::SmallCnn, _) => (20, nesterov(0.045, 0.01)),
            (HeadKind::LinearSvm, _) => (50, nesterov(0.1, 1e-4)),
            (HeadKind::Knn, _) => (0, nesterov(1e-3, 0.0)),
        };
        match (self.head, self.vote) {
            (HeadKind::Knn, _) if self.geocells.is_some() => {
                return Err(Error::Config(
                    "head `knn` places photos by their neighbours: `geocells` is for geocell \
                     heads"
                        .into(),
                ))
            }
            (HeadKind::Knn, v) => v.unwrap_or_default().validate().map_err(Error::Config)?,
            (_, Some(_)) => return Err(Error::Config("`vote` is only for head `knn`".into())),
            (_, None) => {}
        }
        let loss = match (self.head, self.task) {
            (HeadKind::LinearSvm, Task::Latlon) => {
                return Err(Error::Config(
                    "a linear SVM classifies: task `country` or `geocell`".into(),
                ))
            }
            (HeadKind::LinearSvm, _) => Loss::SquaredHinge,
            (_, Task::Latlon) => Loss::SquaredError,
            _ => Loss::CrossEntropy,
        };
        let geocells = match (self.task, self.geocells) {
            (Task::Geocell, None) => {
                return Err(Error::Config(
                    "task `geocell` needs `geocells = { t_min = N, t_max = M }`".into(),
                ))
            }
            (Task::Geocell, g) => g,
            (_, Some(_)) => {
                return Err(Error::Config(
                    "`geocells` is only for task `geocell`".into(),
                ))
            }
            (_, None) => None,
        };
        if let Some(tau) = geocells.and_then(|g| g.smoothing_km) {
            if !(tau > 0.0 && tau.is_finite()) {
                return Err(Error::Config(format!(
                    "geocells.smoothing_km must be a positive distance, found {tau}"
                )));
            }
            if loss != Loss::CrossEntropy {
                return Err(Error::Config(
                    "geocells.smoothing_km smooths a softmax head's targets (mlp, small-cnn), \
                     not the SVM's"
                        .into(),
                ));
            }
        }
        let optimizer = self.optimizer.unwrap_or(opt);
        optimizer
            .validate()
            .map_err(|e| Error::Config(format!("optimizer: {e}")))?;
        let r = Resolved {
            head: self.head,
            task: self.task,
            epochs: self.epochs.unwrap_or(epochs),
            batch: self.batch.unwrap_or(500),
            optimizer,
            loss,
            hidden: self.hidden.unwrap_or(800),
            dropout: self.dropout.unwrap_or([0.2, 0.5, 0.5]),
            standardise: self.standardise.unwrap_or(self.head != HeadKind::Mlp),
            seed: self.seed,
            early_stop: self.early_stop,
            geocells,
        };
        if r.batch == 0 {
            return Err(Error::Config("batch must be at least 1".into()));
        }
        if r.dropout.iter().any(|p| !(0.0..1.0).contains(p)) {
            return Err(Error::Config(
                "dropout probabilities must lie in [0, 1)".into(),
            ));
        }
        Ok(r)
    }

    /// The config without execution settings: what the fingerprint covers.
    fn semantic(&self) -> Config {
        Config {
            device: None,
            checkpoint_every: None,
            memory_mb: None,
            resume: false,
            max_seconds: None,
            ..self.clone()
        }
    }
}

/// Errors of the train stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] geoloc_core::Error),
    #[error(transparent)]
    Model(#[from] geoloc_models::backbone::ModelError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("train config: {0}")]
    Config(String),
    #[error("train data: {0}")]
    Data(String),
    /// The time budget (`max_seconds`) ran out: a checkpoint of `epoch` is written; rerun to
    /// continue.
    #[error(
        "time budget spent after epoch {epoch} of {epochs}: checkpoint written, rerun to continue"
    )]
    OutOfTime { epoch: usize, epochs: usize },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub train_rows: usize,
    pub val_rows: usize,
    pub classes: usize,
    /// Epoch the run started from (0, or where a checkpoint left off).
    pub resumed_at: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub epoch0: Metrics,
    pub best: Metrics,
    /// The train rows were spilled to a memory-mapped file (more than `memory_mb`).
    pub spilled: bool,
    pub seconds: f64,
    /// Head `knn`: the index's train photos and width.
    pub index: Option<(usize, usize)>,
}

impl Summary {
    /// One line for logs and the CLI.
    pub fn line(&self) -> String {
        let m = |m: &Metrics| match (m.accuracy, m.median_km) {
            (Some(a), Some(k)) => format!("acc {:.3}, median {:.0} km", a, k),
            (Some(a), None) => format!("acc {a:.3}"),
            (None, Some(k)) => format!("median {k:.0} km"),
            _ => "no validation photos".into(),
        };
        if let Some((photos, dim)) = self.index {
            return format!(
                "index of {photos} train photos ({} rows of {dim} values): val {} ({} photos); {:.1}s",
                self.train_rows,
                m(&self.best),
                self.best.photos,
                self.seconds
            );
        }
        format!(
            "{} train / {} val rows, {} epochs{} (best {}): val {} (epoch 0: {}); {:.1}s",
            self.train_rows,
            self.val_rows,
            self.epochs_run,
            if self.resumed_at > 0 {
                format!(" (resumed at {})", self.resumed_at)
            } else {
                String::new()
            },
            self.best_epoch,
            m(&self.best),
            m(&self.epoch0),
            self.seconds
        )
    }
}

/// The two inputs: (features or images, samples), whatever order the pipeline lists them.
fn inputs(inputs: &[Input]) -> Result<(&Input, &Input), Error> {
    let find = |names: &[&str]| {
        inputs
            .iter()
            .find(|i| names.contains(&i.manifest.schema.as_str()))
    };
    match (
        find(&["features", "images"]),
        find(&["samples"]),
        inputs.len(),
    ) {
        (Some(x), Some(s), 2) => Ok((x, s)),
        _ => Err(Error::Config(format!(
            "a train instance reads two inputs, a features (or images) dataset and a samples \
             dataset; it declares {}",
            inputs
                .iter()
                .map(|i| format!("`{}` ({})", i.name, i.manifest.schema))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The fingerprint: the config without execution settings, the input's `id`, `view` and
/// value columns with what it says of its values (dim, backbone, weights), and the samples'
/// `id`, `split`, `label`, `lat`, `lon` columns with the class list.
pub fn fingerprint(cfg: &Config, _ctx: &Context, ins: &[Input]) -> Result<String, Error> {
    let (x, s) = inputs(ins)?;
    cfg.resolve()?;
    let value_col = if x.manifest.schema == "images" {
        "pixels"
    } else {
        "feature"
    };
    let fp = Fingerprint::new(KIND, FORMAT_VERSION)
        .config(&cfg.semantic())?
        .dataset(
            &x.name,
            &x.manifest,
            &["id", "view", value_col],
            &[
                "dim",
                "backbone",
                "layer",
                "weights_blake3",
                "random_init",
                "width",
                "height",
            ],
        )?
        .dataset(
            &s.name,
            &s.manifest,
            &["id", "split", "label", "lat", "lon"],
            &["classes"],
        )?;
    Ok(fp.finish())
}

/// Rows with their per-row targets, ready for batches.
struct Prepared {
    rows: SplitRows,
    /// Per row: class index (country, geocell), or u32::MAX when the photo has none.
    class: Vec<u32>,
    /// Per row: scaled lat/lon (latlon).
    values: Vec<[f32; 2]>,
    /// Train rows usable as training examples (all; geocell: those in a kept cell).
    usable: Vec<u32>,
    /// Per photo: class index, or u32::MAX.
    photo_class: Vec<u32>,
}

/// The derived per-epoch streams: shuffle and dropout of epoch `e` of a run seeded `seed`.
fn stream(seed: u64, epoch: usize, what: u64) -> SplitMix64 {
    let mut s = SplitMix64::new(seed ^ 0x7472_6169_6e00_0000);
    let a = s.next_u64();
    SplitMix64::new(a ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ what.rotate_left(32))
}

/// Each class's spherical mean location over the photos of that class, in one pass
/// (`u32::MAX`: no class).
fn class_locations(
    photo_class: &[u32],
    coords: &[Option<(f64, f64)>],
    k: usize,
) -> Vec<Option<[f64; 2]>> {
    let mut acc = vec![SphericalMean::default(); k];
    for (&c, p) in photo_class.iter().zip(coords) {
        if let (Some(m), Some(p)) = (acc.get_mut(c as usize), p) {
            m.add(*p, 1.0);
        }
    }
    acc.iter().map(SphericalMean::finish).collect()
}

/// One row of `history.parquet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    pub val: Metrics,
    pub lr: f64,
    pub seconds: f64,
}

/// What a checkpoint records besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    fingerprint: String,
    epoch: usize,
    steps: u64,
    best_epoch: usize,
    best: Metrics,
    since_best: usize,
    history: Vec<EpochRecord>,
    weights_file: String,
    weights_blake3: String,
}

/// Whether `a` is a better validation result than `b` for the task.
fn better(task: Task, a: &Metrics, b: &Metrics) -> bool {
    match task {
        Task::Country => a.accuracy.unwrap_or(0.0) > b.accuracy.unwrap_or(0.0),
        _ => a.median_km.unwrap_or(f64::INFINITY) < b.median_km.unwrap_or(f64::INFINITY),
    }
}

/// The head's spec for the resolved config and the input.
fn head_spec(r: &Resolved, input: &Input, dim: usize, outputs: usize) -> Result<HeadSpec, Error> {
    Ok(match r.head {
        HeadKind::Mlp => HeadSpec::Mlp(MlpConfig {
            input: dim,
            hidden: r.hidden,
            outputs,
            dropout: r.dropout,
        }),
        HeadKind::LinearSvm => HeadSpec::Linear {
            input: dim,
            outputs,
        },
        HeadKind::SmallCnn => {
            if input.manifest.schema != "images" {
                return Err(Error::Config(format!(
                    "the small CNN trains on pixels: its input must be an images dataset \
                     (a preprocess instance, e.g. squash 52x48), `{}` is {}",
                    input.name, input.manifest.schema
                )));
            }
            let (w, h) = geoloc_core::schema::images_size(&input.manifest)?;
            HeadSpec::SmallCnn(SmallCnnConfig::paper(w as usize, h as usize, outputs))
        }
        HeadKind::Knn => {
            return Err(Error::Config(
                "head `knn` builds an index, not a trained head".into(),
            ))
        }
    })
}

/// Everything the epochs need that does not change between them.
struct Setup {
    r: Resolved,
    train: Prepared,
    val: Prepared,
    standard: Option<(Vec<f32>, Vec<f32>)>,
    classes: Vec<String>,
    class_locations: Vec<Option<[f64; 2]>>,
    scaling: Option<TargetScaling>,
    geocells: Option<GeocellInfo>,
    top_k: usize,
    spec: HeadSpec,
    /// Geocell labels smoothed by distance (`geocells.smoothing_km`): tau, km.
    smoothing: Option<f64>,
}

impl Setup {
    /// Target values per row that `gather` writes: the smoothed distribution over the cells,
    /// or latitude and longitude.
    fn value_width(&self) -> usize {
        if self.smoothing.is_some() {
            self.spec.outputs()
        } else {
            2
        }
    }

    /// Gathers rows `idx` of `p` (standardised) into `x`, with their targets.
    fn gather(
        &self,
        p: &Prepared,
        idx: &[u32],
        x: &mut Vec<f32>,
        cls: &mut Vec<u32>,
        vals: &mut Vec<f32>,
    ) {
        x.clear();
        cls.clear();
        vals.clear();
        for &i in idx {
            let row = p.rows.x.row(i as usize);
            match &self.standard {
                Some((m, s)) => x.extend(row.iter().zip(m).zip(s).map(|((v, m), s)| (v - m) / s)),
                None => x.extend_from_slice(row),
            }
            let c = p.class[i as usize];
            cls.push(c);
            match self.smoothing {
                Some(tau) => {
                    let k = self.spec.outputs();
                    let at = vals.len();
                    vals.resize(at + k, 0.0);
                    let photo = p.rows.photo[i as usize] as usize;
                    if let (Some((lat, lon)), true) = (p.rows.coords[photo], c != u32::MAX) {
                        let here = LatLon { lat, lon };
                        let d: Vec<Option<f64>> = self
                            .class_locations
                            .iter()
                            .map(|l| {
                                l.map(|l| {
                                    haversine_km(
                                        here,
                                        LatLon {
                                            lat: l[0],
                                            lon: l[1],
                                        },
                                    )
                                })
                            })
                            .collect();
                        haversine_smoothing(&d, c as usize, tau, &mut vals[at..]);
                    }
                }
                None => vals.extend_from_slice(&p.values[i as usize]),
            }
        }
    }

    fn target<'a>(&self, cls: &'a [u32], vals: &'a [f32]) -> Target<'a> {
        match (self.r.task, self.smoothing) {
            (Task::Latlon, _) => Target::Values(vals),
            (_, Some(_)) => Target::Soft {
                labels: cls,
                probs: vals,
            },
            _ => Target::Classes(cls),
        }
    }

    /// A photo's predicted location from its (view-averaged) outputs.
    fn location(&self, out: &[f32]) -> Option<[f64; 2]> {
        geoloc_models::predict::locate(
            self.r.task,
            &self.class_locations,
            self.scaling.as_ref(),
            self.top_k,
            out,
        )
    }

    /// Validation metrics of the trainer's current parameters: per photo, views averaged
    /// (class probabilities for classifiers, outputs for regression).
    fn evaluate(&self, t: &dyn Trainer) -> Result<Metrics, Error> {
        let p = &self.val;
        let n = p.rows.x.len();
        if n == 0 {
            return Ok(Metrics::default());
        }
        let out_dim = self.spec.outputs();
        let photos = p.rows.ids.len();
        let mut acc = PhotoScores::new(photos, out_dim);
        let mut scores = Vec::with_capacity(out_dim);
        let (mut x, mut cls, mut vals) = (Vec::new(), Vec::new(), Vec::new());
        let mut loss_sum = 0f64;
        let mut loss_rows = 0usize;
        let all: Vec<u32> = (0..n as u32).collect();
        for chunk in all.chunks(self.r.batch.max(256)) {
            self.gather(p, chunk, &mut x, &mut cls, &mut vals);
            let out = t.predict(&x)?;
            // Loss over the rows that have a target.
            let keep: Vec<usize> = (0..chunk.len())
                .filter(|&j| self.r.task == Task::Latlon || cls[j] != u32::MAX)
                .collect();
            if !keep.is_empty() {
                let o: Vec<f32> = keep
                    .iter()
                    .flat_map(|&j| out[j * out_dim..(j + 1) * out_dim].iter().copied())
                    .collect();
                let c: Vec<u32> = keep.iter().map(|&j| cls[j]).collect();
                let w = self.value_width();
                let v: Vec<f32> = keep
                    .iter()
                    .flat_map(|&j| vals[j * w..(j + 1) * w].iter().copied())
                    .collect();
                let (l, _, _) = loss_and_grad(self.r.loss, &o, out_dim, self.target(&c, &v))?;
                loss_sum += l as f64 * keep.len() as f64;
                loss_rows += keep.len();
            }
            for (j, &row) in chunk.iter().enumerate() {
                let ph = p.rows.photo[row as usize] as usize;
                let o = &out[j * out_dim..(j + 1) * out_dim];
                if self.r.task == Task::Latlon {
                    acc.add(ph, o);
                } else {
                    scores.clear();
                    softmax_into(o, &mut scores);
                    acc.add(ph, &scores);
                }
            }
        }
        let mut correct = 0usize;
        let mut labelled = 0usize;
        let mut errors = Vec::new();
        let photo_class = &p.photo_class;
        for (ph, &class) in photo_class.iter().enumerate() {
            let o = acc.mean(ph);
            if self.r.task != Task::Latlon {
                labelled += 1;
                correct += (class != u32::MAX && argmax(&o) == class as usize) as usize;
            }
            if let (Some(pred), Some((lat, lon))) = (self.location(&o), p.rows.coords[ph]) {
                if let (Ok(a), Ok(b)) = (LatLon::new(pred[0], pred[1]), LatLon::new(lat, lon)) {
                    errors.push(haversine_km(a, b));
                } else {
                    // A prediction or truth exactly at (0, 0): measured all the same.
                    errors.push(haversine_km(
                        LatLon {
                            lat: pred[0],
                            lon: pred[1],
                        },
                        LatLon { lat, lon },
                    ));
                }
            }
        }
        errors.sort_by(f64::total_cmp);
        let median = (!errors.is_empty()).then(|| {
            let m = errors.len() / 2;
            if errors.len() % 2 == 1 {
                errors[m]
            } else {
                (errors[m - 1] + errors[m]) / 2.0
            }
        });
        Ok(Metrics {
            loss: (loss_rows > 0).then(|| loss_sum / loss_rows as f64),
            accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
            median_km: median,
            mean_km: (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64),
            within_1000km: (!errors.is_empty()).then(|| {
                errors.iter().filter(|&&e| e <= 1000.0).count() as f64 / errors.len() as f64
            }),
            photos,
        })
    }
}

/// Reads and joins the inputs and derives targets, classes and locations.
fn setup(cfg: &Config, ctx: &Context, x_in: &Input, s_in: &Input) -> Result<Setup, Error> {
    let r = cfg.resolve()?;
    let samples = data::read_samples(s_in)?;
    let task = r.task;
    let keep = |s: &data::SampleInfo| match task {
        Task::Country => s.label.is_some(),
        _ => s.coords.is_some(),
    };
    if task != Task::Country {
        // Rows labelled by a stated country alone (a CSV country column, no coordinates).
        let unlocated = samples
            .by_id
            .values()
            .filter(|s| s.split < 2 && s.coords.is_none())
            .count();
        if unlocated > 0 {
            tracing::info!(
                "train: {unlocated} train/val photos of `{}` have no coordinates (a country label only): the {} task skips them",
                s_in.name,
                match task {
                    Task::Latlon => "latlon",
                    _ => "geocell",
                }
            );
        }
    }
    let memory = cfg.memory_mb.unwrap_or(4096) << 20;
    std::fs::create_dir_all(&ctx.out_dir).map_err(|e| Error::io(&ctx.out_dir, e))?;
    let (joined, dim) = data::join(x_in, &samples, keep, memory, &ctx.out_dir)?;
    if joined.train.x.is_empty() {
        return Err(Error::Data(format!(
            "no train rows: `{}` and `{}` share no photo of the train split with a {}",
            x_in.name,
            s_in.name,
            if task == Task::Country {
                "label"
            } else {
                "location"
            }
        )));
    }
    tracing::info!(
        "train: {} train rows ({} photos), {} val rows, {} test rows left for evaluate{}",
        joined.train.x.len(),
        joined.train.ids.len(),
        joined.val.x.len(),
        joined.test_rows,
        if joined.train.x.is_mapped() {
            " (rows memory-mapped from the output directory)"
        } else {
            ""
        }
    );
    if joined.unknown_ids > 0 {
        tracing::warn!(
            "train: {} rows of `{}` have ids the samples lack (ignored)",
            joined.unknown_ids,
            x_in.name
        );
    }
    let standard = r.standardise.then(|| {
        let (mean, mut std) = data::standardisation(&joined.train.x);
        if r.head == HeadKind::LinearSvm {
            // Unit mean squared norm (each of `dim` values has variance 1 / dim), so one
            // learning rate and weight decay suit HOG's 12,096 values and 16 alike.
            let k = (std.len() as f32).sqrt();
            std.iter_mut().for_each(|s| *s *= k);
        }
        (mean, std)
    });
    let mut geocells = None;
    let mut top_k = 1;
    let (classes, class_locations, scaling, train_class, val_class) = match task {
        Task::Country => {
            if samples.classes.is_empty() {
                return Err(Error::Data(format!(
                    "samples `{}` have no class list (ingest's `classes`): a country head needs one",
                    s_in.name
                )));
            }
            let k = samples.classes.len();
            let cl = |rows: &SplitRows| -> Vec<u32> {
                rows.labels
                    .iter()
                    .map(|l| l.map_or(u32::MAX, |v| v as u32))
                    .collect()
            };
            let (tc, vc) = (cl(&joined.train), cl(&joined.val));
            if let Some(bad) = tc
                .iter()
                .chain(&vc)
                .find(|&&c| c != u32::MAX && c as usize >= k)
            {
                return Err(Error::Data(format!("label {bad} outside the {k} classes")));
            }
            let locs = class_locations(&tc, &joined.train.coords, k);
            (samples.classes.clone(), locs, None, tc, vc)
        }
        Task::Latlon => {
            let pts: Vec<(f64, f64)> = joined.train.coords.iter().flatten().copied().collect();
            let n = pts.len() as f64;
            let mean = |f: fn(&(f64, f64)) -> f64| pts.iter().map(f).sum::<f64>() / n;
            let (lm, om) = (mean(|p| p.0), mean(|p| p.1));
            let sd = |f: fn(&(f64, f64)) -> f64, m: f64| {
                let v = (pts.iter().map(|p| (f(p) - m).powi(2)).sum::<f64>() / n).sqrt();
                if v < 1e-9 {
                    1.0
                } else {
                    v
                }
            };
            let s = TargetScaling {
                lat_mean: lm,
                lat_std: sd(|p| p.0, lm),
                lon_mean: om,
                lon_std: sd(|p| p.1, om),
            };
            let none = |rows: &SplitRows| vec![u32::MAX; rows.ids.len()];
            (
                Vec::new(),
                Vec::new(),
                Some(s),
                none(&joined.train),
                none(&joined.val),
            )
        }
        Task::Geocell => {
            let g = r.geocells.expect("resolve checked");
            top_k = g.top_k;
            let pts: Vec<(f64, f64)> = joined.train.coords.iter().flatten().copied().collect();
            let part = geocell::Partition::build(&pts, &g).map_err(Error::Config)?;
            if part.cells.len() < 2 {
                return Err(Error::Data(format!(
                    "the geocell partition has {} cells (t_min {}, t_max {}, {} train photos): \
                     lower t_max or t_min",
                    part.cells.len(),
                    g.t_min,
                    g.t_max,
                    pts.len()
                )));
            }
            let cl = |rows: &SplitRows| -> Vec<u32> {
                rows.coords
                    .iter()
                    .map(|c| {
                        c.and_then(|(a, b)| part.locate(a, b))
                            .map_or(u32::MAX, |i| i as u32)
                    })
                    .collect()
            };
            let (tc, vc) = (cl(&joined.train), cl(&joined.val));
            let locs = class_locations(&tc, &joined.train.coords, part.cells.len());
            geocells = Some(GeocellInfo {
                t_min: g.t_min,
                t_max: g.t_max,
                max_level: g.max_level,
                dropped_photos: part.dropped,
                levels: part.cells.iter().map(|c| c.level()).collect(),
                counts: part.cells.iter().map(|c| c.count).collect(),
            });
            (
                part.cells.iter().map(|c| c.token()).collect(),
                locs,
                None,
                tc,
                vc,
            )
        }
    };
    let prep = |rows: SplitRows, photo_class: Vec<u32>| -> Prepared {
        let class: Vec<u32> = rows
            .photo
            .iter()
            .map(|&p| photo_class[p as usize])
            .collect();
        let values: Vec<[f32; 2]> = rows
            .photo
            .iter()
            .map(|&p| match (scaling, rows.coords[p as usize]) {
                (Some(s), Some((a, b))) => s.scale(a, b),
                _ => [0.0, 0.0],
            })
            .collect();
        let usable = (0..rows.photo.len() as u32)
            .filter(|&i| task == Task::Latlon || class[i as usize] != u32::MAX)
            .collect();
        Prepared {
            rows,
            class,
            values,
            usable,
            photo_class,
        }
    };
    let train = prep(joined.train, train_class);
    let val = prep(joined.val, val_class);
    let outputs = if task == Task::Latlon {
        2
    } else {
        classes.len()
    };
    let spec = head_spec(&r, x_in, dim, outputs)?;
    let smoothing = r.geocells.and_then(|g| g.smoothing_km);
    Ok(Setup {
        r,
        train,
        val,
        standard,
        classes,
        class_locations,
        scaling,
        geocells,
        top_k,
        spec,
        smoothing,
    })
}

fn build_trainer(s: &Setup, device: &Device) -> Result<Box<dyn Trainer>, Error> {
    let seed = s.r.seed;
    if let (HeadSpec::Mlp(c), true) = (&s.spec, device.is_cpu()) {
        let mlp = Mlp::new(c.clone(), seed, device)?;
        return Ok(Box::new(CpuMlpTrainer::new(&mlp, s.r.optimizer, s.r.loss)?));
    }
    let head = s.spec.init(seed, device)?;
    if let (HeadSpec::SmallCnn(c), true) = (&s.spec, device.is_cpu()) {
        let named = geoloc_models::trainer::named_params(head.as_ref())?;
        return Ok(Box::new(geoloc_models::cnn_trainer::CpuCnnTrainer::new(
            c.clone(),
            &named,
            s.r.optimizer,
            s.r.loss,
        )?));
    }
    Ok(Box::new(CandleTrainer::new(
        head,
        s.spec.input(),
        s.spec.outputs(),
        s.r.optimizer,
        s.r.loss,
        device,
    )?))
}

type Snapshot = geoloc_models::trainer::NamedParams;

fn save_tensors(path: &Path, tensors: Vec<(String, Vec<f32>, Vec<usize>)>) -> Result<(), Error> {
    let mut map: HashMap<String, Tensor> = HashMap::new();
    for (n, v, s) in tensors {
        map.insert(n, Tensor::from_vec(v, s, &Device::Cpu)?);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("bad path {}", path.display())))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let what = format!("the tensors of {name}");
    Ok(geoloc_core::dataset::commit_file(
        &tmp,
        path,
        &what,
        |tmp| {
            candle_core::safetensors::save(&map, tmp)
                .map_err(|e| geoloc_models::candle_message(&e).into())
        },
    )?)
}

fn write_json(dir: &Path, name: &str, v: &impl Serialize) -> Result<(), Error> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| Error::Config(e.to_string()))?;
    Ok(geoloc_core::dataset::write_atomic(dir, name, &bytes)?)
}

fn write_history(path: &Path, history: &[EpochRecord]) -> Result<(), Error> {
    let opt = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(
            history.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::UInt32, false),
        Field::new("train_loss", DataType::Float64, true),
        Field::new("train_accuracy", DataType::Float64, true),
        Field::new("val_loss", DataType::Float64, true),
        Field::new("val_accuracy", DataType::Float64, true),
        Field::new("val_median_km", DataType::Float64, true),
        Field::new("val_within_1000km", DataType::Float64, true),
        Field::new("lr", DataType::Float64, false),
        Field::new("seconds", DataType::Float64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(
            history.iter().map(|h| h.epoch as u32).collect::<Vec<_>>(),
        )),
        opt(&|h| h.train_loss),
        opt(&|h| h.train_accuracy),
        opt(&|h| h.val.loss),
        opt(&|h| h.val.accuracy),
        opt(&|h| h.val.median_km),
        opt(&|h| h.val.within_1000km),
        opt(&|h| Some(h.lr)),
        opt(&|h| Some(h.seconds)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(geoloc_core::Error::from)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".history.parquet.tmp");
    Ok(geoloc_core::dataset::commit_file(
        &tmp,
        path,
        "the training history",
        |tmp| {
            let mut w =
                parquet::arrow::ArrowWriter::try_new(std::fs::File::create(tmp)?, schema, None)?;
            w.write(&batch)?;
            w.close()?;
            Ok(())
        },
    )?)
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Vec<f32>>, Error> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut out = HashMap::new();
    for (k, v) in t {
        out.insert(k, v.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Trains the head (train runs as one process: `ctx.shard` must be 0/1). Resumes from a
/// checkpoint of the same fingerprint when one is in the output directory.
pub fn run(cfg: &Config, ctx: &Context, ins: &[Input]) -> Result<Summary, Error> {
    let t0 = Instant::now();
    if !ctx.shard.is_all() {
        return Err(Error::Config(format!(
            "train runs as one process, not as shard {}",
            ctx.shard
        )));
    }
    let (x_in, s_in) = inputs(ins)?;
    let key = fingerprint(cfg, ctx, ins)?;
    geoloc_core::artifact::uncommit(&ctx.out_dir)?;
    if cfg.head == HeadKind::Knn {
        return build_index(cfg, ctx, x_in, s_in, t0);
    }
    let s = setup(cfg, ctx, x_in, s_in)?;
    let device = geoloc_models::backbone::parse_device(cfg.device.as_deref().unwrap_or("cpu"))?;
    let mut trainer = build_trainer(&s, &device)?;
    let every = cfg.checkpoint_every.unwrap_or(10).max(1);
    let dir = &ctx.out_dir;

    // Resume from a checkpoint of this fingerprint, if one is complete.
    let mut history: Vec<EpochRecord> = Vec::new();
    let mut best_epoch = 0;
    let mut best_params: Snapshot;
    let mut best: Metrics;
    let mut since_best = 0;
    let mut start = 1;
    let resumed = if ctx.recompute {
        None
    } else {
        read_checkpoint(dir, &key)
    };
    if let Some((st, tensors)) = resumed {
        let params = |n: &str| tensors.get(&format!("param.{n}")).cloned();
        let opt = |n: &str| tensors.get(&format!("opt.{n}")).cloned();
        trainer.restore(&params, &opt, st.steps)?;
        best_params = trainer
            .parameters()?
            .into_iter()
            .map(|(n, _, shape)| {
                let v = tensors
                    .get(&format!("best.{n}"))
                    .cloned()
                    .unwrap_or_default();
                (n, v, shape)
            })
            .collect();
        if best_params
            .iter()
            .any(|(_, v, s)| v.len() != s.iter().product::<usize>())
        {
            return Err(Error::Data(
                "checkpoint lacks the best epoch's parameters".into(),
            ));
        }
        history = st.history;
        best_epoch = st.best_epoch;
        best = st.best;
        since_best = st.since_best;
        start = st.epoch + 1;
        tracing::info!(
            "train: resuming after epoch {} from {}",
            st.epoch,
            dir.join(CHECKPOINT_STATE).display()
        );
    } else {
        if cfg.resume {
            return Err(Error::Config(format!(
                "--resume: no checkpoint of this configuration and these inputs in {}",
                dir.display()
            )));
        }
        let m0 = s.evaluate(trainer.as_ref())?;
        history.push(EpochRecord {
            epoch: 0,
            val: m0.clone(),
            lr: s.r.optimizer.lr(),
            ..Default::default()
        });
        best = m0;
        best_params = trainer.parameters()?;
    }
    let epoch0 = history[0].val.clone();
    let resumed_at = start - 1;

    let bar = ctx.progress_bar(KIND, s.r.epochs as u64, "epochs");
    bar.set_position(resumed_at as u64);
    let (mut x, mut cls, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    let stopped_early = |since: usize| s.r.early_stop.is_some_and(|p| since >= p);
    let mut epoch = resumed_at;
    while epoch < s.r.epochs && !stopped_early(since_best) {
        epoch += 1;
        let te = Instant::now();
        let mut order = s.train.usable.clone();
        let mut shuffle = stream(s.r.seed, epoch, 1);
        for i in (1..order.len()).rev() {
            order.swap(i, shuffle.below(i as u64 + 1) as usize);
        }
        let mut drop = stream(s.r.seed, epoch, 2);
        let (mut loss_sum, mut correct, mut rows) = (0f64, 0usize, 0usize);
        for chunk in order.chunks(s.r.batch) {
            s.gather(&s.train, chunk, &mut x, &mut cls, &mut vals);
            let (l, c) = trainer.step(&x, s.target(&cls, &vals), &mut drop)?;
            if !l.is_finite() {
                return Err(Error::Data(format!(
                    "training diverged at epoch {epoch} (loss {l}): lower the learning rate ({})",
                    s.r.optimizer.lr()
                )));
            }
            loss_sum += l as f64 * chunk.len() as f64;
            correct += c;
            rows += chunk.len();
        }
        let val = s.evaluate(trainer.as_ref())?;
        let rec = EpochRecord {
            epoch,
            train_loss: Some(loss_sum / rows.max(1) as f64),
            train_accuracy: (s.r.task != Task::Latlon).then(|| correct as f64 / rows.max(1) as f64),
            val: val.clone(),
            lr: s.r.optimizer.lr(),
            seconds: te.elapsed().as_secs_f64(),
        };
        bar.set_message(format!(
            "loss {:.4}{}",
            rec.train_loss.unwrap_or(0.0),
            match (val.accuracy, val.median_km) {
                (Some(a), _) if s.r.task == Task::Country => format!(", val acc {a:.3}"),
                (_, Some(k)) => format!(", val median {k:.0} km"),
                _ => String::new(),
            }
        ));
        bar.inc(1);
        history.push(rec);
        if better(s.r.task, &val, &best) {
            best = val;
            best_epoch = epoch;
            best_params = trainer.parameters()?;
            since_best = 0;
        } else {
            since_best += 1;
        }
        let out_of_time = cfg
            .max_seconds
            .is_some_and(|m| t0.elapsed().as_secs_f64() > m)
            && epoch < s.r.epochs
            && !stopped_early(since_best);
        if epoch % every == 0 || epoch == s.r.epochs || stopped_early(since_best) || out_of_time {
            write_checkpoint(
                dir,
                trainer.as_ref(),
                &best_params,
                CheckpointState {
                    fingerprint: key.clone(),
                    epoch,
                    steps: trainer.steps(),
                    best_epoch,
                    best: best.clone(),
                    since_best,
                    history: history.clone(),
                    weights_file: String::new(),
                    weights_blake3: String::new(),
                },
            )?;
        }
        if out_of_time {
            bar.finish_and_clear();
            return Err(Error::OutOfTime {
                epoch,
                epochs: s.r.epochs,
            });
        }
    }
    bar.finish_and_clear();

    // The model directory: the kept epoch's parameters, the card, the history.
    let mut tensors = best_params.clone();
    if let Some((m, sd)) = &s.standard {
        tensors.push(("input.mean".into(), m.clone(), vec![m.len()]));
        tensors.push(("input.std".into(), sd.clone(), vec![sd.len()]));
    }
    save_tensors(&dir.join(WEIGHTS_FILE), tensors)?;
    write_history(&dir.join(HISTORY_FILE), &history)?;
    let card = ModelCard {
        card_version: CARD_VERSION,
        task: s.r.task,
        head: s.spec.clone(),
        classes: s.classes.clone(),
        class_locations: s.class_locations.clone(),
        target_scaling: s.scaling,
        standardised: s.standard.is_some(),
        input_kind: x_in.manifest.schema.clone(),
        input: x_in.manifest.info.metadata.clone(),
        input_fingerprint: Some(x_in.manifest.info.fingerprint.clone()),
        input_columns: x_in.manifest.columns.clone(),
        geocells: s.geocells.clone(),
        location_top_k: (s.r.task == Task::Geocell).then_some(s.top_k),
        hyperparameters: serde_json::to_value(&s.r).map_err(|e| Error::Config(e.to_string()))?,
        seed: s.r.seed,
        train_rows: s.train.rows.x.len(),
        val_rows: s.val.rows.x.len(),
        epochs_run: epoch,
        best_epoch,
        epoch0: epoch0.clone(),
        best: best.clone(),
    };
    write_json(dir, CARD_FILE, &card)?;
    Ok(Summary {
        train_rows: card.train_rows,
        val_rows: card.val_rows,
        classes: s.classes.len(),
        resumed_at,
        epochs_run: epoch,
        best_epoch,
        epoch0,
        best,
        spilled: s.train.rows.x.is_mapped(),
        seconds: t0.elapsed().as_secs_f64(),
        index: None,
    })
}

/// Head `knn`: the train photos of `x_in` with a location become a retrieval index (each
/// photo's views normalised, averaged and normalised again), written to the output directory;
/// the validation photos are placed by it for the summary and the card.
fn build_index(
    cfg: &Config,
    ctx: &Context,
    x_in: &Input,
    s_in: &Input,
    t0: Instant,
) -> Result<Summary, Error> {
    use geoloc_models::retrieval::{Index, IndexCard, INDEX_CARD_VERSION};
    if x_in.manifest.schema != "features" {
        return Err(Error::Config(format!(
            "head `knn` indexes features; `{}` is a {} dataset",
            x_in.name, x_in.manifest.schema
        )));
    }
    let vote = cfg.vote.unwrap_or_default();
    let samples = data::read_samples(s_in)?;
    let memory = cfg.memory_mb.unwrap_or(4096) << 20;
    std::fs::create_dir_all(&ctx.out_dir).map_err(|e| Error::io(&ctx.out_dir, e))?;
    let (joined, dim) = data::join(x_in, &samples, |s| s.coords.is_some(), memory, &ctx.out_dir)?;
    let (vectors, keep) = photo_queries(&joined.train, dim);
    if keep.is_empty() {
        return Err(Error::Data(format!(
            "no train photo of `{}` has a location and a nonzero feature vector in `{}`",
            s_in.name, x_in.name
        )));
    }
    let coords: Vec<[f64; 2]> = keep
        .iter()
        .filter_map(|&p| joined.train.coords[p].map(|(a, b)| [a, b]))
        .collect();
    let ids = keep.iter().map(|&p| joined.train.ids[p].clone()).collect();
    let mut card = IndexCard {
        card_version: INDEX_CARD_VERSION,
        input_kind: x_in.manifest.schema.clone(),
        input: x_in.manifest.info.metadata.clone(),
        input_fingerprint: Some(x_in.manifest.info.fingerprint.clone()),
        input_columns: x_in.manifest.columns.clone(),
        dim,
        photos: keep.len(),
        views: joined.train.x.len(),
        vote,
        val_photos: 0,
        val_median_km: None,
    };
    let mut index =
        Index::new(card.clone(), vectors, coords, ids).map_err(|e| Error::Data(e.to_string()))?;
    // Validation: each val photo placed by its neighbours.
    let (queries, val_keep) = photo_queries(&joined.val, dim);
    let mut errors: Vec<f64> = index
        .search(&queries, vote.k)
        .iter()
        .zip(&val_keep)
        .filter_map(|(hits, &p)| {
            let pred = index.place(hits)?;
            let (lat, lon) = joined.val.coords[p]?;
            Some(haversine_km(
                LatLon {
                    lat: pred[0],
                    lon: pred[1],
                },
                LatLon { lat, lon },
            ))
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    let median = (!errors.is_empty()).then(|| {
        let m = errors.len() / 2;
        if errors.len() % 2 == 1 {
            errors[m]
        } else {
            (errors[m - 1] + errors[m]) / 2.0
        }
    });
    card.val_photos = errors.len();
    card.val_median_km = median;
    index.card = card.clone();
    index
        .save(&ctx.out_dir)
        .map_err(|e| Error::Data(e.to_string()))?;
    let best = Metrics {
        loss: None,
        accuracy: None,
        median_km: median,
        mean_km: (!errors.is_empty()).then(|| errors.iter().sum::<f64>() / errors.len() as f64),
        within_1000km: (!errors.is_empty())
            .then(|| errors.iter().filter(|&&e| e <= 1000.0).count() as f64 / errors.len() as f64),
        photos: errors.len(),
    };
    Ok(Summary {
        train_rows: card.views,
        val_rows: joined.val.x.len(),
        classes: 0,
        resumed_at: 0,
        epochs_run: 0,
        best_epoch: 0,
        epoch0: best.clone(),
        best,
        spilled: joined.train.x.is_mapped(),
        seconds: t0.elapsed().as_secs_f64(),
        index: Some((card.photos, dim)),
    })
}

/// Each photo's query vector (its views' unit vectors averaged and normalised, see
/// `retrieval::QueryMean`), row-major, and the photos (indices into `rows.ids`) they belong
/// to; photos whose every view is zero are left out.
fn photo_queries(rows: &SplitRows, dim: usize) -> (Vec<f32>, Vec<usize>) {
    use geoloc_models::retrieval::normalise;
    let n = rows.ids.len();
    let mut sums = vec![0f32; n * dim];
    let mut views = vec![0u32; n];
    let mut buf = vec![0f32; dim];
    for r in 0..rows.x.len() {
        buf.copy_from_slice(rows.x.row(r));
        if normalise(&mut buf) {
            let p = rows.photo[r] as usize;
            views[p] += 1;
            sums[p * dim..(p + 1) * dim]
                .iter_mut()
                .zip(&buf)
                .for_each(|(s, v)| *s += v);
        }
    }
    let mut out = Vec::with_capacity(n * dim);
    let mut keep = Vec::with_capacity(n);
    for (p, row) in sums.chunks_mut(dim).enumerate() {
        if views[p] > 0 && normalise(row) {
            out.extend_from_slice(row);
            keep.push(p);
        }
    }
    (out, keep)
}

fn write_checkpoint(
    dir: &Path,
    t: &dyn Trainer,
    best: &Snapshot,
    mut st: CheckpointState,
) -> Result<(), Error> {
    let mut tensors = Vec::new();
    for (n, v, s) in t.parameters()? {
        tensors.push((format!("param.{n}"), v, s));
    }
    for (n, v) in t.state()? {
        let len = v.len();
        tensors.push((format!("opt.{n}"), v, vec![len]));
    }
    for (n, v, s) in best {
        tensors.push((format!("best.{n}"), v.clone(), s.clone()));
    }
    st.weights_file = format!("checkpoint-{:06}.safetensors", st.epoch);
    let p = dir.join(&st.weights_file);
    save_tensors(&p, tensors)?;
    st.weights_blake3 = geoloc_core::dataset::file_blake3(&p)?;
    write_json(dir, CHECKPOINT_STATE, &st)?;
    remove_checkpoints(dir, Some(&st.weights_file))
}

/// Removes checkpoint tensor files other than `keep` (and the state, when `keep` is None).
fn remove_checkpoints(dir: &Path, keep: Option<&str>) -> Result<(), Error> {
    if keep.is_none() {
        let _ = std::fs::remove_file(dir.join(CHECKPOINT_STATE));
    }
    for e in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("checkpoint-") && name.ends_with(".safetensors") && Some(&*name) != keep
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// The checkpoint in `dir` if it belongs to fingerprint `key` and its tensors are intact.
fn read_checkpoint(dir: &Path, key: &str) -> Option<(CheckpointState, HashMap<String, Vec<f32>>)> {
    let st: CheckpointState =
        serde_json::from_slice(&std::fs::read(dir.join(CHECKPOINT_STATE)).ok()?).ok()?;
    let p = dir.join(&st.weights_file);
    if st.fingerprint != key
        || !st.weights_file.starts_with("checkpoint-")
        || st.weights_file.contains(['/', '\\'])
        || geoloc_core::dataset::file_blake3(&p).ok()? != st.weights_blake3
    {
        return None;
    }
    let tensors = load_tensors(&p).ok()?;
    Some((st, tensors))
}

/// Commits the model directory (after [`run`]) and removes the checkpoint.
pub fn finalize(
    cfg: &Config,
    ctx: &Context,
    ins: &[Input],
    shards: u32,
) -> Result<Manifest, Error> {
    if shards != 1 {
        return Err(Error::Config(format!(
            "train runs as one process, not {shards} shards"
        )));
    }
    if cfg.head == HeadKind::Knn {
        return finalize_index(cfg, ctx, ins);
    }
    let card = ModelCard::load(&ctx.out_dir).map_err(|e| Error::Data(e.to_string()))?;
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx, ins)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: json!({
            "task": card.task,
            "head": card.head,
            "classes": card.classes.len(),
            "best_epoch": card.best_epoch,
            "epoch0": card.epoch0,
            "best": card.best,
        }),
    };
    let m = geoloc_core::artifact::commit(
        &ctx.out_dir,
        MODEL_SCHEMA,
        MODEL_SCHEMA_VERSION,
        &[WEIGHTS_FILE, CARD_FILE, HISTORY_FILE],
        info,
    )?;
    remove_checkpoints(&ctx.out_dir, None)?;
    Ok(m)
}

/// Commits an index directory (head `knn`).
fn finalize_index(cfg: &Config, ctx: &Context, ins: &[Input]) -> Result<Manifest, Error> {
    use geoloc_models::retrieval::{Index, INDEX_CARD_FILE, INDEX_FILE};
    let card = Index::load_card(&ctx.out_dir).map_err(|e| Error::Data(e.to_string()))?;
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx, ins)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: json!({
            "head": "knn",
            "photos": card.photos,
            "dim": card.dim,
            "vote": card.vote,
            "val_median_km": card.val_median_km,
        }),
    };
    Ok(geoloc_core::artifact::commit(
        &ctx.out_dir,
        INDEX_SCHEMA,
        INDEX_SCHEMA_VERSION,
        &[INDEX_FILE, INDEX_CARD_FILE],
        info,
    )?)
}

/// Opens a committed model or index directory (manifest and files checked).
pub fn open(dir: &Path) -> Result<Manifest, Error> {
    let index = dir.join(geoloc_models::retrieval::INDEX_CARD_FILE).exists();
    Ok(if index {
        geoloc_core::artifact::open(dir, INDEX_SCHEMA, INDEX_SCHEMA_VERSION, false)?
    } else {
        geoloc_core::artifact::open(dir, MODEL_SCHEMA, MODEL_SCHEMA_VERSION, false)?
    })
}
