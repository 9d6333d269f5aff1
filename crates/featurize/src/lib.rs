//! `geoloc-featurize`: the featurize stage. An images dataset (see
//! `geoloc_core::schema::images`) or a samples dataset and its photos in, a features dataset
//! out (`geoloc_core::schema::features`): one feature vector per (photo, view), from a CNN
//! backbone of `geoloc_models` (VGG16, GoogLeNet, EfficientNet-Lite0/1/2) or HOG.
//!
//! From photos (the input is a samples dataset, and the config gives preprocess's
//! `geometry`, `views`, ... keys), each photo is read, decoded, oriented, resized and cut
//! into views through `geoloc_imaging` exactly as preprocess does, on rayon's pool, ahead of
//! the backbone through a bounded queue (`geoloc_core::ahead`); no pixel dataset is written.
//! The features equal, bit for bit, those of preprocess followed by featurize with the same
//! settings (rows are batched the same way), and photos that give no image become the same
//! reject rows. Each closed part records where in the shard's photos it ends (a cursor), so a
//! rerun after a kill continues from there.
//!
//! Weights come from a file (the fingerprint and the manifest record its blake3), or from a
//! seeded generator when `random_init` is asked for; a CNN without either is an error, never
//! a silent random network. Shards take contiguous row ranges of the images dataset; each
//! shard closes a part every `part_cap_mb` and a rerun after a kill keeps the parts already
//! closed under the same fingerprint (`DatasetWriter::resume`), so only the rest is redone.
//!
//! The public face: [`Config`], [`run`], [`finalize`], [`fingerprint`], [`open`],
//! [`Summary`].

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::array::{AsArray, UInt8Array};
use arrow::datatypes::Field;
use geoloc_core::ahead::Ahead;
use geoloc_core::dataset::{
    self, Dataset, DatasetWriter, Manifest, ManifestInfo, Reject, WriterOptions,
};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::photos::{self, Selection};
use geoloc_core::schema;
use geoloc_core::stage::{Context, Input};
use geoloc_imaging::{Geometry, Greyscale, Limits, PrepareOptions, Views};
use geoloc_models::backbone::{
    self, Backbone, BackboneKind, BackboneSpec, HogParams, Layer, Normalisation, WeightsSource,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The stage kind's name in pipeline files.
pub const KIND: &str = "featurize";

/// Output-format version: bump when the same config would now produce other features.
pub const FORMAT_VERSION: u32 = 1;

/// Configuration of a featurize instance.
///
/// ```toml
/// [stages.lite0.config]
/// backbone = "lite0"                 # vgg16, googlenet, lite0, lite1, lite2, hog
/// layer = "pool"                     # logits (default), fc7 / pool5 (vgg16), pool
/// weights = "data/weights/efficientnet-lite0.pth"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub backbone: BackboneKind,
    /// Output layer of a CNN (default `logits`, the paper's "input to the final softmax").
    #[serde(default)]
    pub layer: Option<Layer>,
    /// Input normalisation (default: what the backbone's weights were trained with).
    #[serde(default)]
    pub normalisation: Option<Normalisation>,
    /// HOG parameters (backbone `hog` only).
    #[serde(default)]
    pub hog: Option<HogParams>,
    /// The weights file of a CNN (legacy or zip `.pth`, `.safetensors`).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// The key of the state dict inside the weights file, when nested.
    #[serde(default)]
    pub weights_key: Option<String>,
    /// Seeded random weights instead of a file (recorded in the manifest).
    #[serde(default)]
    pub random_init: bool,
    /// Seed of `random_init`.
    #[serde(default)]
    pub seed: u64,
    /// `f32` (default), `bf16`, `f16`. On the CPU, bf16 runs every matrix product in bf16
    /// with f32 accumulation on AVX512-BF16 (refused, naming what the CPU has, where it has
    /// not), and f16 is refused; on CUDA both run candle's kernels.
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// Where to run: `cpu` (default), `cuda`, `cuda:N`. An execution setting: not part of
    /// the fingerprint (recorded in the manifest).
    #[serde(default = "cpu_name")]
    pub device: String,
    /// Images per forward pass (default 32 on the CPU, 128 on a GPU, which needs large
    /// batches to be busy). An execution setting, like `device`.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Close a part at about this many MB (default 256): the unit a killed run keeps.
    #[serde(default)]
    pub part_cap_mb: Option<u64>,

    // From photos (the input is a samples dataset): preprocess's keys, same meanings and
    // defaults. `geometry` is required then, and refused over an images dataset.
    /// From photos: the output geometry, as preprocess's `geometry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<Geometry>,
    /// From photos: views per photo besides the centre one (default centre only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Views>,
    /// From photos: photos without colour channels, `reject` (default) or `convert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greyscale: Option<Greyscale>,
    /// From photos: decompression-bomb limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// From photos: decode large JPEGs at a reduced DCT scale (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dct_scaling: Option<bool>,
    /// From photos: the images root (default: the one the samples dataset records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_root: Option<PathBuf>,
    /// From photos: only rows of these splits (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub splits: Option<Vec<String>>,
    /// From photos: photos decoded together on the CPU threads (default 64). An execution
    /// setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_chunk: Option<usize>,
    /// From photos: decoded chunks that may wait for the backbone (default 2); at most
    /// `(queue + 2) * decode_chunk` photos are decoded and not yet featurized. An execution
    /// setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<usize>,
}

fn f32_name() -> String {
    "f32".into()
}

fn cpu_name() -> String {
    "cpu".into()
}

impl Config {
    /// The backbone spec this config asks for.
    pub fn spec(&self) -> BackboneSpec {
        BackboneSpec {
            kind: self.backbone,
            layer: self.layer,
            normalisation: self.normalisation,
            hog: self.hog.unwrap_or_default(),
        }
    }

    /// The config without its execution settings: what the fingerprint covers.
    fn semantic(&self) -> Config {
        Config {
            device: String::new(),
            batch: None,
            part_cap_mb: None,
            decode_chunk: None,
            queue: None,
            ..self.clone()
        }
    }

    /// The photo settings given (any of preprocess's keys).
    fn has_photo_settings(&self) -> bool {
        self.geometry.is_some()
            || self.views.is_some()
            || self.greyscale.is_some()
            || self.limits.is_some()
            || self.dct_scaling.is_some()
            || self.images_root.is_some()
            || self.splits.is_some()
            || self.decode_chunk.is_some()
            || self.queue.is_some()
    }

    /// How each photo is made ready, from photos; the same as preprocess's for the same
    /// keys.
    pub fn prepare_options(&self) -> Result<PrepareOptions, Error> {
        let geometry = self.geometry.ok_or_else(|| {
            Error::Config(
                "featurizing a samples dataset (from photos) needs `geometry`, as preprocess \
                 takes it, e.g. geometry = { kind = \"resize-crop\", resize = 224, crop = 224 }"
                    .into(),
            )
        })?;
        let views = self.views.unwrap_or_default();
        geometry
            .validate(&views)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(PrepareOptions {
            decode: geoloc_imaging::DecodeOptions {
                limits: self.limits.unwrap_or_default(),
                greyscale: self.greyscale.unwrap_or_default(),
            },
            geometry,
            views,
            dct_scaling: self.dct_scaling.unwrap_or(true),
        })
    }
}

/// What a featurize instance reads: pixels preprocess wrote, or photos.
enum Source<'a> {
    Images(&'a Input),
    Photos {
        selection: Selection<'a>,
        opts: PrepareOptions,
    },
}

/// The source `input` is, checked against the config.
fn source<'a>(cfg: &'a Config, input: &'a Input) -> Result<Source<'a>, Error> {
    match input.manifest.schema.as_str() {
        "samples" => Ok(Source::Photos {
            selection: Selection {
                samples: input,
                splits: cfg.splits.as_deref(),
            },
            opts: cfg.prepare_options()?,
        }),
        "images" if cfg.has_photo_settings() => Err(Error::Config(format!(
            "`{}` is an images dataset (already preprocessed): `geometry`, `views`, \
             `greyscale`, `limits`, `dct_scaling`, `images_root`, `splits`, `decode_chunk` and \
             `queue` apply only when featurizing from photos (a samples dataset)",
            input.name
        ))),
        "images" => Ok(Source::Images(input)),
        other => Err(Error::Config(format!(
            "`{}` is a {other} dataset: featurize reads an images dataset (preprocess) or a \
             samples dataset (ingest, to featurize from photos)",
            input.name
        ))),
    }
}

/// Errors of the featurize stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] geoloc_core::Error),
    #[error(transparent)]
    Model(#[from] geoloc_models::backbone::ModelError),
    #[error("featurize config: {0}")]
    Config(String),
    #[error("weights file {path}: {error}")]
    Weights {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What one run (one shard) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows of features this shard holds (from photos: photos x views, rejects excluded).
    pub rows: u64,
    /// Rows kept from a killed earlier run (not recomputed).
    pub resumed: u64,
    /// Rows computed now.
    pub computed: u64,
    pub dim: usize,
    pub seconds: f64,
    /// From photos: the shard's photos, and those read now.
    pub photos: u64,
    pub photos_read: u64,
    /// From photos: rejected photos (read now) by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Where the time went: decoding (CPU seconds summed over the threads), the backbone,
    /// writing, and the backbone's thread waiting for decoded photos (wall seconds).
    pub decode_cpu_s: f64,
    pub backbone_s: f64,
    pub write_s: f64,
    pub wait_s: f64,
    /// The compute path the backbone ran on: `cpu f32 avx2+fma` (the `gemm` kernels this
    /// CPU's features select), `cpu bf16 avx512-bf16`, `cuda:0 bf16`, or `hog` (see
    /// `geoloc_models::cpu`).
    pub kernels: String,
}

impl Summary {
    /// One line for logs and the CLI.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} rows of {} features ({} computed, {} kept from an earlier run); {:.1} images/s",
            self.rows,
            self.dim,
            self.computed,
            self.resumed,
            self.computed as f64 / self.seconds.max(1e-9)
        );
        if self.photos > 0 {
            let rej = dataset::reasons_line(&self.rejects);
            line.push_str(&format!(
                "; from photos: {} of {} read now, rejected: {rej}; time: decode {:.1} cpu-s, \
                 backbone {:.1} s, write {:.1} s, waiting for photos {:.1} s",
                self.photos_read,
                self.photos,
                self.decode_cpu_s,
                self.backbone_s,
                self.write_s,
                self.wait_s
            ));
        } else {
            line.push_str(&format!(
                "; time: backbone {:.1} s, write {:.1} s",
                self.backbone_s, self.write_s
            ));
        }
        if !self.kernels.is_empty() {
            line.push_str(&format!("; kernels: {}", self.kernels));
        }
        line
    }
}

/// The weights source of `cfg`, its path resolved against the project root.
fn weights_source(cfg: &Config, ctx: &Context) -> Result<Option<WeightsSource>, Error> {
    match (cfg.backbone, &cfg.weights, cfg.random_init) {
        (BackboneKind::Hog, None, false) => Ok(None),
        (BackboneKind::Hog, _, _) => Err(Error::Config(
            "hog takes no `weights` or `random_init`".into(),
        )),
        (_, Some(_), true) => Err(Error::Config(
            "give `weights` or `random_init = true`, not both".into(),
        )),
        (_, Some(p), false) => Ok(Some(WeightsSource::File {
            path: ctx.resolve(p),
            key: cfg.weights_key.clone(),
        })),
        (_, None, true) => Ok(Some(WeightsSource::Random { seed: cfg.seed })),
        (kind, None, false) => {
            let hint = match kind.lite() {
                Some(v) => format!(
                    " (for {}: `cargo xtask fetch-{}` puts it at {})",
                    kind.name(),
                    kind.name(),
                    geoloc_core::fixtures::LITE_PATHS[v.index()]
                ),
                None => String::new(),
            };
            Err(Error::Config(format!(
                "{} needs `weights = \"FILE\"`{hint}, or `random_init = true` to run on random \
                 weights on purpose",
                kind.name(),
            )))
        }
    }
}

/// The weights' identity: the file's blake3, `random:SEED`, or `none` (HOG).
fn weights_identity(src: Option<&WeightsSource>) -> Result<String, Error> {
    match src {
        None => Ok("none".into()),
        Some(WeightsSource::Random { seed }) => Ok(format!("random:{seed}")),
        Some(WeightsSource::File { path, .. }) => {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "weights file {} not found{}",
                    path.display(),
                    geoloc_core::fixtures::LITE_PATHS
                        .iter()
                        .position(|p| path.ends_with(p))
                        .map(|n| format!(" (run `cargo xtask fetch-lite{n}`)"))
                        .unwrap_or_default()
                )));
            }
            backbone::weights_checksum(path).map_err(|e| Error::Weights {
                path: path.clone(),
                error: e,
            })
        }
    }
}

/// The backbone's input size (the images dataset's, or the geometry's from photos) and
/// output width, checked against the backbone.
fn input_size(cfg: &Config, input: &Input) -> Result<(u32, u32, usize), Error> {
    let (w, h) = match source(cfg, input)? {
        Source::Images(images) => schema::images_size(&images.manifest)?,
        Source::Photos { opts, .. } => opts.geometry.output_size(),
    };
    let dim = cfg.spec().output_dim(w, h)?;
    Ok((w, h, dim))
}

/// The fingerprint: the config without execution settings, the weights file's content
/// (blake3), and the input: an images dataset's `id`, `view` and `pixels` columns and its
/// size; from photos, the samples' `id` and `image` columns and every photo's size and
/// modification time (as preprocess's fingerprint).
pub fn fingerprint(cfg: &Config, ctx: &Context, input: &Input) -> Result<String, Error> {
    let identity = weights_identity(weights_source(cfg, ctx)?.as_ref())?;
    fingerprint_with(cfg, ctx, input, &identity)
}

/// [`fingerprint`] given the weights' identity (a run has hashed the file already).
fn fingerprint_with(
    cfg: &Config,
    ctx: &Context,
    input: &Input,
    identity: &str,
) -> Result<String, Error> {
    input_size(cfg, input)?;
    let fp = Fingerprint::new(KIND, FORMAT_VERSION).config(&(cfg.semantic(), identity))?;
    let fp = match source(cfg, input)? {
        Source::Images(images) => fp.dataset(
            &images.name,
            &images.manifest,
            &["id", "view", "pixels"],
            &["width", "height"],
        )?,
        Source::Photos { selection, .. } => {
            let root = photos::images_root(cfg.images_root.as_deref(), ctx, input)?;
            selection.fingerprint(fp, &root)?
        }
    };
    Ok(fp.finish())
}

/// Images per forward pass when the config names none: 32 on the CPU (larger batches only
/// grow the activations), 128 on a GPU.
fn default_batch(on_cpu: bool) -> usize {
    if on_cpu {
        32
    } else {
        128
    }
}

/// The compute path `cfg` runs on (for the summary line and the parts), or why it cannot: bf16
/// on a CPU without AVX512-BF16, and f16 on any CPU, are refused with what the CPU has, never
/// run slowly through generic operations without saying so (`geoloc_models::cpu`).
fn kernels(cfg: &Config) -> Result<String, Error> {
    if cfg.backbone == BackboneKind::Hog {
        return Ok("hog".into());
    }
    // `parse_device` takes only "cpu" for the CPU.
    if cfg.device != "cpu" {
        return Ok(format!("{} {}", cfg.device, cfg.dtype));
    }
    geoloc_models::cpu::kernels(&cfg.dtype)
        .map(|p| format!("cpu {p}"))
        .map_err(Error::Config)
}

/// Runs featurize for `ctx.shard`: writes that shard's parts and marker, keeping the parts
/// a killed earlier run of the same fingerprint closed.
pub fn run(cfg: &Config, ctx: &Context, input: &Input) -> Result<Summary, Error> {
    let t0 = Instant::now();
    let (w, h, dim) = input_size(cfg, input)?;
    let source_kind = source(cfg, input)?;
    let weights = weights_source(cfg, ctx)?;
    let identity = weights_identity(weights.as_ref())?;
    let key = fingerprint_with(cfg, ctx, input, &identity)?;
    let device = backbone::parse_device(&cfg.device)?;
    let dtype = backbone::parse_dtype(&cfg.dtype)?;
    let kernels = kernels(cfg)?;
    let net = Backbone::load(cfg.spec(), weights.as_ref(), &device, dtype)?;
    let wopts = WriterOptions {
        format: dataset::PartFormat::Parquet,
        part_cap_bytes: cfg.part_cap_mb.unwrap_or(256) << 20,
        compute: Some(kernels.clone()),
        ..Default::default()
    };
    let out_schema = schema::features(dim);
    let (writer, done) = if ctx.recompute {
        let w = DatasetWriter::restart(
            &ctx.out_dir,
            out_schema.clone(),
            ctx.shard,
            wopts.clone(),
            &key,
        )?;
        (w, 0)
    } else {
        DatasetWriter::resume(
            &ctx.out_dir,
            out_schema.clone(),
            ctx.shard,
            wopts.clone(),
            &key,
        )?
    };
    let mut out = Output {
        wopts,
        net,
        w,
        h,
        dim,
        schema: out_schema,
        item: Arc::new(Field::new(
            "item",
            arrow::datatypes::DataType::Float32,
            false,
        )),
        writer,
        bar: indicatif::ProgressBar::hidden(),
        summary: Summary {
            dim,
            kernels,
            ..Default::default()
        },
    };
    let batch = cfg.batch.unwrap_or(default_batch(out.net.on_cpu())).max(1);
    match source_kind {
        Source::Images(images) => from_images(&mut out, ctx, images, batch, done)?,
        Source::Photos { selection, opts } => {
            let root = photos::images_root(cfg.images_root.as_deref(), ctx, input)?;
            let ahead = Ahead {
                chunk: cfg.decode_chunk.unwrap_or(64).max(1),
                depth: cfg.queue.unwrap_or(2).max(1),
            };
            from_photos(
                &mut out, ctx, &selection, &root, &opts, ahead, batch, done, &key,
            )?
        }
    }
    out.bar.finish_and_clear();
    let Output {
        writer,
        mut summary,
        ..
    } = out;
    let t = Instant::now();
    writer.finish(metadata(cfg, input, dim, &identity)?)?;
    summary.write_s += t.elapsed().as_secs_f64();
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// The backbone and the writer of one run, and what it has done so far.
struct Output {
    wopts: WriterOptions,
    net: Backbone,
    w: u32,
    h: u32,
    dim: usize,
    schema: geoloc_core::schema::DatasetSchema,
    item: Arc<Field>,
    writer: DatasetWriter,
    bar: indicatif::ProgressBar,
    summary: Summary,
}

impl Output {
    /// Runs the backbone on one batch of rows and writes their features.
    fn write(&mut self, ids: ArrayRef, views: ArrayRef, pixels: &[&[u8]]) -> Result<(), Error> {
        let t = Instant::now();
        let feats = self.net.features(pixels, self.w, self.h)?;
        self.summary.backbone_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let values = Float32Array::from(feats);
        let list =
            FixedSizeListArray::try_new(self.item.clone(), self.dim as i32, Arc::new(values), None)
                .map_err(geoloc_core::Error::from)?;
        let out = RecordBatch::try_new(self.schema.arrow.clone(), vec![ids, views, Arc::new(list)])
            .map_err(geoloc_core::Error::from)?;
        self.writer.write(&out)?;
        self.summary.write_s += t.elapsed().as_secs_f64();
        self.summary.computed += pixels.len() as u64;
        self.bar.inc(pixels.len() as u64);
        Ok(())
    }
}

/// Featurizes the shard's rows of an images dataset after the `done` rows kept.
fn from_images(
    out: &mut Output,
    ctx: &Context,
    images: &Input,
    batch: usize,
    done: u64,
) -> Result<(), Error> {
    let ds = Dataset::open(&images.dir, &schema::images(out.w, out.h))?;
    let range = ctx.shard.range(ds.manifest.rows);
    let todo = (range.start + done.min(range.end - range.start))..range.end;
    out.summary.rows = range.end - range.start;
    out.summary.resumed = todo.start - range.start;
    if out.summary.resumed > 0 {
        tracing::info!(
            "featurize shard {}: keeping {} rows from an earlier run",
            ctx.shard,
            out.summary.resumed
        );
    }
    out.bar = ctx.progress_bar(KIND, todo.end - todo.start, "images");
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let flush = |pending: &mut Vec<RecordBatch>, out: &mut Output| -> Result<(), Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let b = arrow::compute::concat_batches(&pending[0].schema(), pending.iter())
            .map_err(geoloc_core::Error::from)?;
        pending.clear();
        let (ids, views) = match (b.column_by_name("id"), b.column_by_name("view")) {
            (Some(i), Some(v)) => (i.clone(), v.clone()),
            _ => return Err(Error::Config("images without `id` and `view`".into())),
        };
        let pixels = b
            .column_by_name("pixels")
            .and_then(|c| c.as_fixed_size_binary_opt())
            .ok_or_else(|| Error::Config("images without `pixels`".into()))?;
        let imgs: Vec<&[u8]> = (0..b.num_rows()).map(|i| pixels.value(i)).collect();
        out.write(ids, views, &imgs)
    };
    // The reader's callback returns core errors; a model error is kept here and returned.
    let mut failure: Option<Error> = None;
    let read = ds.for_each_batch_in(todo.clone(), |b| {
        let mut off = 0;
        while off < b.num_rows() {
            let take = (batch - pending_rows).min(b.num_rows() - off);
            pending.push(b.slice(off, take));
            pending_rows += take;
            off += take;
            if pending_rows == batch {
                pending_rows = 0;
                if let Err(e) = flush(&mut pending, out) {
                    failure = Some(e);
                    return Err(geoloc_core::Error::Config("featurize stopped".into()));
                }
            }
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    read?;
    flush(&mut pending, out)?;
    out.summary.rows = out.summary.resumed + out.summary.computed;
    Ok(())
}

/// Where a part ends in the shard's photos: the next photo to read, and its first view
/// not yet written (0: the whole photo).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    photo: u64,
    view: u8,
}

/// One decoded view waiting for its batch.
struct Row {
    photo: u64,
    view: u8,
    id: Arc<str>,
    pixels: Vec<u8>,
}

/// Featurizes the shard's photos, decoding them ahead of the backbone. Rows are batched
/// exactly as over an images dataset (every `batch` views in order), so the features are
/// the same bit for bit. A photo's reject is handed to the writer only once every row
/// before it is written, and each write records the cursor after its last row: a closed
/// part then holds exactly the rows and rejects before its cursor.
#[allow(clippy::too_many_arguments)]
fn from_photos(
    out: &mut Output,
    ctx: &Context,
    selection: &Selection<'_>,
    root: &Path,
    opts: &PrepareOptions,
    ahead: Ahead,
    batch: usize,
    done: u64,
    key: &str,
) -> Result<(), Error> {
    let range = ctx.shard.range(selection.count()?);
    let mine = selection.range(range)?;
    let views = opts.views.count() as u8;
    out.summary.photos = mine.len() as u64;
    let start = if done == 0 {
        Cursor::default()
    } else {
        match out
            .writer
            .cursor()
            .and_then(|c| serde_json::from_value::<Cursor>(c.clone()).ok())
        {
            Some(c) if c.photo <= mine.len() as u64 => c,
            _ => {
                // Parts without a usable cursor: keep nothing.
                tracing::warn!(
                    "featurize shard {}: the kept parts record no position; starting over",
                    ctx.shard
                );
                out.writer = DatasetWriter::restart(
                    &ctx.out_dir,
                    out.schema.clone(),
                    ctx.shard,
                    out.wopts.clone(),
                    key,
                )?;
                return from_photos(out, ctx, selection, root, opts, ahead, batch, 0, key);
            }
        }
    };
    out.summary.resumed = done;
    if done > 0 {
        tracing::info!(
            "featurize shard {}: keeping {done} rows from an earlier run (up to photo {} of {})",
            ctx.shard,
            start.photo,
            mine.len()
        );
    }
    let todo = &mine[start.photo as usize..];
    out.summary.photos_read = todo.len() as u64;
    out.bar = ctx.progress_bar(KIND, todo.len() as u64 * views as u64, "images");

    let decode_ns = AtomicU64::new(0);
    let mut pending: VecDeque<Row> = VecDeque::new();
    // Rejects waiting for the rows before them: (rows queued before the photo, reject).
    let mut held: VecDeque<(u64, Reject)> = VecDeque::new();
    let (mut queued, mut written) = (0u64, 0u64);
    let mut next_photo = start.photo;
    let mut busy = 0f64;
    let t_loop = Instant::now();

    let flush = |out: &mut Output,
                 pending: &mut VecDeque<Row>,
                 held: &mut VecDeque<(u64, Reject)>,
                 written: &mut u64,
                 n: usize|
     -> Result<(), Error> {
        let rows: Vec<Row> = pending.drain(..n).collect();
        let Some(last) = rows.last() else {
            return Ok(());
        };
        *written += rows.len() as u64;
        let cursor = if last.view + 1 >= views {
            Cursor {
                photo: last.photo + 1,
                view: 0,
            }
        } else {
            Cursor {
                photo: last.photo,
                view: last.view + 1,
            }
        };
        out.writer.set_cursor(json!(cursor));
        while held.front().is_some_and(|(at, _)| *at < *written) {
            if let Some((_, r)) = held.pop_front() {
                out.writer.reject(r)?;
            }
        }
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &*r.id)));
        let vs: ArrayRef = Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.view)));
        let px: Vec<&[u8]> = rows.iter().map(|r| r.pixels.as_slice()).collect();
        out.write(ids, vs, &px)
    };

    ahead.run(
        todo,
        |p| {
            let t = Instant::now();
            let r = geoloc_imaging::prepare_photo(p, root, opts);
            decode_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            r
        },
        |prepared| -> Result<(), Error> {
            let t = Instant::now();
            for (p, r) in todo[(next_photo - start.photo) as usize..]
                .iter()
                .zip(prepared)
            {
                let photo = next_photo;
                next_photo += 1;
                match r {
                    Ok(prep) => {
                        let id: Arc<str> = Arc::from(p.id.as_str());
                        for v in prep.views {
                            if photo == start.photo && v.view < start.view {
                                continue; // written before the kill
                            }
                            pending.push_back(Row {
                                photo,
                                view: v.view,
                                id: id.clone(),
                                pixels: v.pixels,
                            });
                            queued += 1;
                        }
                    }
                    Err(reject) => {
                        *out.summary
                            .rejects
                            .entry(reject.reason.to_string())
                            .or_default() += 1;
                        held.push_back((queued, reject));
                    }
                }
                while pending.len() >= batch {
                    flush(out, &mut pending, &mut held, &mut written, batch)?;
                }
            }
            busy += t.elapsed().as_secs_f64();
            Ok(())
        },
    )?;
    let n = pending.len();
    flush(out, &mut pending, &mut held, &mut written, n)?;
    out.writer.set_cursor(json!(Cursor {
        photo: mine.len() as u64,
        view: 0
    }));
    for (_, r) in held {
        out.writer.reject(r)?;
    }
    out.summary.decode_cpu_s = decode_ns.load(Ordering::Relaxed) as f64 * 1e-9;
    out.summary.wait_s = (t_loop.elapsed().as_secs_f64() - busy).max(0.0);
    out.summary.rows = out.summary.resumed + out.summary.computed;
    Ok(())
}

/// What readers need to know about the features; identical in every shard. The geometry
/// keys are the pixels' (the images dataset's, or the config's from photos): a model card
/// carries them, and predict makes a new photo's pixels from them.
fn metadata(
    cfg: &Config,
    input: &Input,
    dim: usize,
    identity: &str,
) -> Result<serde_json::Value, Error> {
    let spec = cfg.spec();
    let mut v = json!({
        "dim": dim,
        "backbone": spec.kind,
        "layer": spec.layer(),
        "normalisation": spec.normalisation(),
        "hog": (spec.kind == BackboneKind::Hog).then_some(spec.hog),
        "weights": cfg.weights,
        "weights_blake3": cfg.weights.as_ref().map(|_| identity),
        "random_init": cfg.random_init,
        "seed": cfg.random_init.then_some(cfg.seed),
        "dtype": cfg.dtype,
    });
    let pixels = match source(cfg, input)? {
        Source::Images(images) => {
            let m = &images.manifest.info.metadata;
            json!({
                "images": images.name,
                "width": m.get("width"),
                "height": m.get("height"),
                "geometry": m.get("geometry"),
                "views": m.get("views"),
                "view_count": m.get("view_count"),
            })
        }
        Source::Photos { opts, .. } => {
            let (w, h) = opts.geometry.output_size();
            json!({
                "images": null,
                "samples": input.name,
                "width": w,
                "height": h,
                "geometry": opts.geometry,
                "views": opts.views,
                "view_count": opts.views.count(),
                "greyscale": opts.decode.greyscale,
                "dct_scaling": opts.dct_scaling,
            })
        }
    };
    if let (Some(v), serde_json::Value::Object(p)) = (v.as_object_mut(), pixels) {
        v.extend(p);
    }
    Ok(v)
}

/// Commits the dataset once all `shards` shards have run; records the device used.
pub fn finalize(
    cfg: &Config,
    ctx: &Context,
    images: &Input,
    shards: u32,
) -> Result<Manifest, Error> {
    let (_, _, dim) = input_size(cfg, images)?;
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx, images)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: serde_json::Value::Null,
    };
    Ok(dataset::finalize(
        &ctx.out_dir,
        &schema::features(dim),
        shards,
        info,
    )?)
}

/// Opens a committed features dataset, reading its width from the manifest.
pub fn open(dir: &Path) -> Result<Dataset, Error> {
    if !dir.join(dataset::MANIFEST).exists() {
        return Ok(Dataset::open(dir, &schema::features(1))?);
    }
    let m = Manifest::load(dir)?;
    Ok(Dataset::open(
        dir,
        &schema::features(schema::features_dim(&m)?),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_toml_and_fingerprints_without_execution_settings() {
        let c: Config = toml::from_str(
            "backbone = 'vgg16'\nlayer = 'fc7'\nweights = 'w/vgg16.pth'\ndevice = 'cuda:1'\nbatch = 8",
        )
        .unwrap();
        assert_eq!(c.backbone, BackboneKind::Vgg16);
        assert_eq!(c.layer, Some(Layer::Fc7));
        assert_eq!(c.dtype, "f32");
        let mut other = c.clone();
        other.device = "cpu".into();
        other.batch = Some(64);
        assert_eq!(c.semantic(), other.semantic());
        other.dtype = "f16".into();
        assert_ne!(c.semantic(), other.semantic());
        assert!(toml::from_str::<Config>("backbone = 'resnet'").is_err());
        assert!(toml::from_str::<Config>("backbone = 'hog'\nwieghts = 'x'").is_err());
    }

    /// bf16 on the CPU runs where the CPU has AVX512-BF16 and is refused before anything
    /// loads elsewhere, naming this CPU's features; f16 on the CPU is refused; f32 names the
    /// `gemm` path it runs; HOG and CUDA pass through.
    #[test]
    fn reduced_precision_on_the_cpu_is_refused_and_kernels_are_named() {
        let cpu = geoloc_models::cpu::CpuFeatures::detect();
        let c: Config = toml::from_str("backbone = 'lite0'\ndtype = 'bf16'").unwrap();
        match cpu.bf16_path() {
            Some(p) => {
                let k = kernels(&c).unwrap();
                eprintln!("bf16 CPU path {p}: named as {k}");
                assert!(k.starts_with(&format!("cpu bf16 {p}")), "{k}");
            }
            None => {
                eprintln!("no bf16 CPU path here: its refusal checked");
                let e = kernels(&c).unwrap_err().to_string();
                assert!(
                    e.contains("dtype bf16 on the CPU needs AVX512-BF16")
                        && e.contains(&cpu.line()),
                    "{e}"
                );
            }
        }
        let c: Config = toml::from_str("backbone = 'lite0'\ndtype = 'f16'").unwrap();
        assert!(kernels(&c)
            .unwrap_err()
            .to_string()
            .contains("dtype f16 on the CPU"));
        let c: Config = toml::from_str("backbone = 'vgg16'").unwrap();
        assert_eq!(kernels(&c).unwrap(), format!("cpu f32 {}", cpu.f32_path()));
        let c: Config =
            toml::from_str("backbone = 'vgg16'\ndtype = 'bf16'\ndevice = 'cuda:1'").unwrap();
        assert_eq!(kernels(&c).unwrap(), "cuda:1 bf16");
        let c: Config = toml::from_str("backbone = 'hog'").unwrap();
        assert_eq!(kernels(&c).unwrap(), "hog");
    }

    #[test]
    fn weights_are_required_for_a_cnn_and_named() {
        let ctx = Context {
            root: PathBuf::from("/project"),
            out_dir: PathBuf::from("/tmp/x"),
            shard: geoloc_core::shard::Shard::new(0, 1).unwrap(),
            build: String::new(),
            progress: false,
            recompute: false,
        };
        let c: Config = toml::from_str("backbone = 'lite0'").unwrap();
        let e = weights_source(&c, &ctx).unwrap_err().to_string();
        assert!(
            e.contains("cargo xtask fetch-lite0") && e.contains("random_init"),
            "{e}"
        );
        let c: Config = toml::from_str("backbone = 'lite0'\nrandom_init = true\nseed = 3").unwrap();
        assert_eq!(
            weights_source(&c, &ctx).unwrap(),
            Some(WeightsSource::Random { seed: 3 })
        );
        let c: Config =
            toml::from_str("backbone = 'lite0'\nrandom_init = true\nweights = 'x.pth'").unwrap();
        assert!(weights_source(&c, &ctx).is_err());
        let c: Config = toml::from_str("backbone = 'lite0'\nweights = 'data/w.pth'").unwrap();
        let e = weights_identity(weights_source(&c, &ctx).unwrap().as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/project/data/w.pth not found"), "{e}");
        // Each Lite variant names its own fetch, for a missing `weights` and a missing file.
        let c: Config = toml::from_str("backbone = 'lite2'").unwrap();
        let e = weights_source(&c, &ctx).unwrap_err().to_string();
        assert!(
            e.contains("cargo xtask fetch-lite2") && e.contains("efficientnet-lite2.pth"),
            "{e}"
        );
        let c: Config =
            toml::from_str("backbone = 'lite1'\nweights = 'data/weights/efficientnet-lite1.pth'")
                .unwrap();
        let e = weights_identity(weights_source(&c, &ctx).unwrap().as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("(run `cargo xtask fetch-lite1`)"), "{e}");
    }
}
