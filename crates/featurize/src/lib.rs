//! `geoloc-featurize`: the featurize stage. An images dataset in (see
//! `geoloc_core::schema::images`), a features dataset out (`geoloc_core::schema::features`):
//! one feature vector per (photo, view), from a CNN backbone of `geoloc_models` (VGG16,
//! GoogLeNet, EfficientNet-Lite0) or HOG.
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
use arrow::datatypes::{Field, UInt8Type};
use geoloc_core::dataset::{self, Dataset, DatasetWriter, Manifest, ManifestInfo, WriterOptions};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::schema;
use geoloc_core::stage::{Context, Input};
use geoloc_models::backbone::{
    self, Backbone, BackboneKind, BackboneSpec, HogParams, Layer, Normalisation, WeightsSource,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
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
/// backbone = "lite0"                 # vgg16, googlenet, lite0, hog
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
    /// `f32` (default), `f16`, `bf16` (reduced precision on CUDA).
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
            ..self.clone()
        }
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
    /// Rows of the images dataset this shard was given.
    pub rows: u64,
    /// Rows kept from a killed earlier run (not recomputed).
    pub resumed: u64,
    /// Rows computed now.
    pub computed: u64,
    pub dim: usize,
    pub seconds: f64,
}

impl Summary {
    /// One line for logs and the CLI.
    pub fn line(&self) -> String {
        format!(
            "{} rows of {} features ({} computed, {} kept from an earlier run); {:.1} images/s",
            self.rows,
            self.dim,
            self.computed,
            self.resumed,
            self.computed as f64 / self.seconds.max(1e-9)
        )
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
        (kind, None, false) => Err(Error::Config(format!(
            "{} needs `weights = \"FILE\"` (for EfficientNet-Lite0: `cargo xtask fetch-lite0` \
             puts it at {}), or `random_init = true` to run on random weights on purpose",
            kind.name(),
            geoloc_core::fixtures::LITE0_PATH
        ))),
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
                    if path.ends_with(geoloc_core::fixtures::LITE0_PATH) {
                        " (run `cargo xtask fetch-lite0`)"
                    } else {
                        ""
                    }
                )));
            }
            backbone::weights_checksum(path).map_err(|e| Error::Weights {
                path: path.clone(),
                error: e,
            })
        }
    }
}

/// The input images' size, checked against the backbone.
fn input_size(cfg: &Config, images: &Input) -> Result<(u32, u32, usize), Error> {
    let (w, h) = schema::images_size(&images.manifest)?;
    let dim = cfg.spec().output_dim(w, h)?;
    Ok((w, h, dim))
}

/// The fingerprint: the config without execution settings, the images dataset's `id`,
/// `view` and `pixels` columns and its size, and the weights file's content (blake3).
pub fn fingerprint(cfg: &Config, ctx: &Context, images: &Input) -> Result<String, Error> {
    input_size(cfg, images)?;
    let identity = weights_identity(weights_source(cfg, ctx)?.as_ref())?;
    let fp = Fingerprint::new(KIND, FORMAT_VERSION)
        .config(&(cfg.semantic(), identity))?
        .dataset(
            &images.name,
            &images.manifest,
            &["id", "view", "pixels"],
            &["width", "height"],
        )?;
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

/// Runs featurize for `ctx.shard`: writes that shard's parts and marker, keeping the parts
/// a killed earlier run of the same fingerprint closed.
pub fn run(cfg: &Config, ctx: &Context, images: &Input) -> Result<Summary, Error> {
    let t0 = Instant::now();
    let (w, h, dim) = input_size(cfg, images)?;
    let source = weights_source(cfg, ctx)?;
    let identity = weights_identity(source.as_ref())?;
    let key = fingerprint(cfg, ctx, images)?;
    let device = backbone::parse_device(&cfg.device)?;
    let dtype = backbone::parse_dtype(&cfg.dtype)?;
    let net = Backbone::load(cfg.spec(), source.as_ref(), &device, dtype)?;
    let ds = Dataset::open(&images.dir, &schema::images(w, h))?;
    let range = ctx.shard.range(ds.manifest.rows);
    let out_schema = schema::features(dim);
    let wopts = WriterOptions {
        format: dataset::PartFormat::Parquet,
        part_cap_bytes: cfg.part_cap_mb.unwrap_or(256) << 20,
        ..Default::default()
    };
    let (mut writer, done) = if ctx.recompute {
        let w = DatasetWriter::restart(&ctx.out_dir, out_schema.clone(), ctx.shard, wopts, &key)?;
        (w, 0)
    } else {
        DatasetWriter::resume(&ctx.out_dir, out_schema.clone(), ctx.shard, wopts, &key)?
    };
    let todo = (range.start + done.min(range.end - range.start))..range.end;
    let mut summary = Summary {
        rows: range.end - range.start,
        resumed: todo.start - range.start,
        dim,
        ..Default::default()
    };
    if summary.resumed > 0 {
        tracing::info!(
            "featurize shard {}: keeping {} rows from an earlier run",
            ctx.shard,
            summary.resumed
        );
    }
    let bar = ctx.progress_bar(KIND, todo.end - todo.start, "images");
    let batch = cfg.batch.unwrap_or(default_batch(net.on_cpu())).max(1);
    let item = Arc::new(Field::new(
        "item",
        arrow::datatypes::DataType::Float32,
        false,
    ));
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    let flush = |pending: &mut Vec<RecordBatch>, writer: &mut DatasetWriter| -> Result<(), Error> {
        if pending.is_empty() {
            return Ok(());
        }
        let b = arrow::compute::concat_batches(&pending[0].schema(), pending.iter())
            .map_err(geoloc_core::Error::from)?;
        pending.clear();
        let ids = b
            .column_by_name("id")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| Error::Config("images without utf8 `id`".into()))?;
        let views = b
            .column_by_name("view")
            .and_then(|c| c.as_primitive_opt::<UInt8Type>())
            .ok_or_else(|| Error::Config("images without u8 `view`".into()))?;
        let pixels = b
            .column_by_name("pixels")
            .and_then(|c| c.as_fixed_size_binary_opt())
            .ok_or_else(|| Error::Config("images without `pixels`".into()))?;
        let imgs: Vec<&[u8]> = (0..b.num_rows()).map(|i| pixels.value(i)).collect();
        let feats = net.features(&imgs, w, h)?;
        let values = Float32Array::from(feats);
        let list = FixedSizeListArray::try_new(item.clone(), dim as i32, Arc::new(values), None)
            .map_err(geoloc_core::Error::from)?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids.clone())),
            Arc::new(UInt8Array::from(views.clone())),
            Arc::new(list),
        ];
        let out = RecordBatch::try_new(out_schema.arrow.clone(), cols)
            .map_err(geoloc_core::Error::from)?;
        writer.write(&out)?;
        bar.inc(out.num_rows() as u64);
        Ok(())
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
                if let Err(e) = flush(&mut pending, &mut writer) {
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
    flush(&mut pending, &mut writer)?;
    bar.finish_and_clear();
    summary.computed = todo.end - todo.start;
    writer.finish(metadata(cfg, images, dim, &identity))?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// What readers need to know about the features; identical in every shard.
fn metadata(cfg: &Config, images: &Input, dim: usize, identity: &str) -> serde_json::Value {
    let spec = cfg.spec();
    let m = &images.manifest.info.metadata;
    json!({
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
        "images": images.name,
        "width": m.get("width"),
        "height": m.get("height"),
        "geometry": m.get("geometry"),
        "views": m.get("views"),
        "view_count": m.get("view_count"),
    })
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
    }
}
