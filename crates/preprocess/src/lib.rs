//! `geoloc-preprocess`: the preprocess stage. A samples dataset and its images root in, an
//! images dataset out (see `geoloc_core::schema::images`): one row per photo and view, raw
//! 8-bit RGB, HWC, in Arrow IPC parts.
//!
//! Every photo goes through `geoloc_imaging::prepare` (decode, EXIF orientation, colour
//! conversion, greyscale policy, limits, resize-crop or squash, views). A photo that gives no
//! image (missing, empty, truncated, corrupt, unsupported, too large, greyscale) becomes a
//! reject row with its reason; nothing stops the run.
//!
//! Shards take contiguous ranges of the samples rows, so output order is samples order and
//! does not depend on thread timing. Decoding runs on rayon's pool, a chunk of images at a
//! time, ahead of the writer thread (`geoloc_core::ahead`): at most three chunks are in memory.
//!
//! The public face: [`Config`], [`run`], [`finalize`], [`fingerprint`], [`Summary`].

use arrow::array::{ArrayRef, FixedSizeBinaryBuilder, RecordBatch, StringBuilder, UInt8Builder};
use geoloc_core::ahead::Ahead;
use geoloc_core::dataset::{
    self, Dataset, DatasetWriter, Manifest, ManifestInfo, PartFormat, WriterOptions,
};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::photos::{self, Selection};
use geoloc_core::schema;
use geoloc_core::stage::{Context, Input};
use geoloc_imaging::{Geometry, Greyscale, Limits, PrepareOptions, Views};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The stage kind's name in pipeline files.
pub const KIND: &str = "preprocess";

/// Output-format version: bump when the same config would now produce other pixels.
pub const FORMAT_VERSION: u32 = 1;

/// Configuration of a preprocess instance.
///
/// ```toml
/// [stages.crop224.config]
/// geometry = { kind = "resize-crop", resize = 224, crop = 224 }
/// views = { kind = "ten-crop" }          # or centre (default), five-crop, random
/// greyscale = "reject"                   # or "convert"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Output geometry: `resize-crop` (shorter side to `resize`, `crop` x `crop` windows) or
    /// `squash` (`width` x `height`, aspect not kept).
    pub geometry: Geometry,
    /// Views per photo besides the centre one.
    #[serde(default)]
    pub views: Views,
    /// Photos without colour channels: `reject` (the paper's choice) or `convert`.
    #[serde(default)]
    pub greyscale: Greyscale,
    /// Decompression-bomb limits.
    #[serde(default)]
    pub limits: Limits,
    /// Decode large JPEGs at a reduced DCT scale when the target is at most half their size.
    #[serde(default = "yes")]
    pub dct_scaling: bool,
    /// Images root; default: the one the samples dataset records.
    #[serde(default)]
    pub images_root: Option<PathBuf>,
    /// Only rows of these splits (default: all).
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// Close a part at about this many MB.
    #[serde(default)]
    pub part_cap_mb: Option<u64>,
    /// Images decoded per chunk (default 64).
    #[serde(default)]
    pub chunk: Option<usize>,
}

fn yes() -> bool {
    true
}

/// Errors of the preprocess stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] geoloc_core::Error),
    #[error("preprocess config: {0}")]
    Config(String),
}

/// What one run (one shard) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Samples rows this shard was given.
    pub photos: u64,
    /// Photos that gave pixels.
    pub decoded: u64,
    /// Rows written (photos x views).
    pub rows: u64,
    /// Rejected photos by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Photos decoded at a reduced DCT scale.
    pub dct_scaled: u64,
    /// Photos turned upright by their EXIF orientation.
    pub reoriented: u64,
    pub seconds: f64,
}

impl Summary {
    /// One line for logs and the CLI.
    pub fn line(&self) -> String {
        let rej = dataset::reasons_line(&self.rejects);
        format!(
            "{} photos, {} decoded ({} rows; {} DCT-scaled, {} reoriented); rejected: {rej}; {:.1} photos/s",
            self.photos,
            self.decoded,
            self.rows,
            self.dct_scaled,
            self.reoriented,
            self.photos as f64 / self.seconds.max(1e-9)
        )
    }
}

fn validate(cfg: &Config) -> Result<(), Error> {
    cfg.geometry
        .validate(&cfg.views)
        .map_err(|e| Error::Config(e.to_string()))
}

impl Config {
    /// How each photo is made ready.
    pub fn prepare_options(&self) -> PrepareOptions {
        PrepareOptions {
            decode: geoloc_imaging::DecodeOptions {
                limits: self.limits,
                greyscale: self.greyscale,
            },
            geometry: self.geometry,
            views: self.views,
            dct_scaling: self.dct_scaling,
        }
    }

    fn selection<'a>(&'a self, samples: &'a Input) -> Selection<'a> {
        Selection {
            samples,
            splits: self.splits.as_deref(),
        }
    }
}

/// The fingerprint: config, the samples' `id` and `image` columns (and `split` when the
/// config selects splits) and images root, and every listed image file's size and
/// modification time. Labels, coordinates and splits do not enter: changing them reruns no
/// preprocess.
pub fn fingerprint(cfg: &Config, ctx: &Context, samples: &Input) -> Result<String, Error> {
    let root = photos::images_root(cfg.images_root.as_deref(), ctx, samples)?;
    let fp = Fingerprint::new(KIND, FORMAT_VERSION).config(cfg)?;
    Ok(cfg.selection(samples).fingerprint(fp, &root)?.finish())
}

/// Runs preprocess for `ctx.shard`: writes that shard's parts, rejects and marker.
pub fn run(cfg: &Config, ctx: &Context, samples: &Input) -> Result<Summary, Error> {
    validate(cfg)?;
    let t0 = Instant::now();
    let root = photos::images_root(cfg.images_root.as_deref(), ctx, samples)?;
    let selection = cfg.selection(samples);
    let mine = selection.range(ctx.shard.range(selection.count()?))?;
    let (w, h) = cfg.geometry.output_size();
    let opts = cfg.prepare_options();
    let schema = schema::images(w, h);
    let wopts = WriterOptions {
        format: PartFormat::ArrowIpc,
        part_cap_bytes: cfg.part_cap_mb.unwrap_or(1024) << 20,
        ..Default::default()
    };
    let mut writer = DatasetWriter::create(&ctx.out_dir, schema.clone(), ctx.shard, wopts)?;
    let bar = ctx.progress_bar(KIND, mine.len() as u64, "photos");
    let chunk = cfg.chunk.unwrap_or(64).max(1);
    let tensor = cfg.geometry.tensor_bytes();
    let mut summary = Summary {
        photos: mine.len() as u64,
        ..Default::default()
    };

    // Decoders fill the next chunks on rayon's pool while this thread writes this one.
    let ahead = Ahead { chunk, depth: 1 };
    ahead.run(
        &mine,
        |p| geoloc_imaging::prepare_photo(p, &root, &opts).map(|prep| (p.id.clone(), prep)),
        |outcomes| -> Result<(), Error> {
            let n = outcomes.len() as u64;
            let mut ids = StringBuilder::new();
            let mut views = UInt8Builder::new();
            let mut pixels = FixedSizeBinaryBuilder::with_capacity(outcomes.len(), tensor as i32);
            for o in outcomes {
                match o {
                    Ok((id, prep)) => {
                        summary.decoded += 1;
                        summary.dct_scaled += (prep.info.dct_scale > 1) as u64;
                        summary.reoriented +=
                            (prep.info.orientation != geoloc_imaging::Orientation::Normal) as u64;
                        for v in prep.views {
                            ids.append_value(&id);
                            views.append_value(v.view);
                            pixels
                                .append_value(&v.pixels)
                                .map_err(geoloc_core::Error::from)?;
                        }
                    }
                    Err(r) => {
                        *summary.rejects.entry(r.reason.to_string()).or_default() += 1;
                        writer.reject(r)?;
                    }
                }
            }
            let cols: Vec<ArrayRef> = vec![
                Arc::new(ids.finish()),
                Arc::new(views.finish()),
                Arc::new(pixels.finish()),
            ];
            let batch = RecordBatch::try_new(schema.arrow.clone(), cols)
                .map_err(geoloc_core::Error::from)?;
            summary.rows += batch.num_rows() as u64;
            if batch.num_rows() > 0 {
                writer.write(&batch)?;
            }
            bar.inc(n);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    writer.finish(metadata(cfg))?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// What readers need to know about the pixels; identical in every shard.
fn metadata(cfg: &Config) -> serde_json::Value {
    let (w, h) = cfg.geometry.output_size();
    json!({
        "width": w,
        "height": h,
        "channels": 3,
        "layout": "HWC",
        "dtype": "u8",
        "colour": "RGB",
        "normalised": false,
        "geometry": cfg.geometry,
        "views": cfg.views,
        "view_count": cfg.views.count(),
        "filter": "bilinear (triangle kernel widened by the reduction factor, as Pillow's BILINEAR)",
        "greyscale": cfg.greyscale,
        "dct_scaling": cfg.dct_scaling,
        "orientation": "EXIF orientation applied",
    })
}

/// Commits the dataset once all `shards` shards have run.
pub fn finalize(
    cfg: &Config,
    ctx: &Context,
    samples: &Input,
    shards: u32,
) -> Result<Manifest, Error> {
    let (w, h) = cfg.geometry.output_size();
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx, samples)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: serde_json::Value::Null,
    };
    Ok(dataset::finalize(
        &ctx.out_dir,
        &schema::images(w, h),
        shards,
        info,
    )?)
}

/// Opens a committed images dataset, reading its size from the manifest.
pub fn open(dir: &Path) -> Result<Dataset, Error> {
    if !dir.join(dataset::MANIFEST).exists() {
        // No size to read: the reader names what is there instead (an unfinished run's
        // parts and markers, or no directory).
        return Ok(Dataset::open(dir, &schema::images(1, 1))?);
    }
    let m = Manifest::load(dir)?;
    let (w, h) = schema::images_size(&m)?;
    Ok(Dataset::open(dir, &schema::images(w, h))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_from_toml() {
        let c: Config = toml::from_str(
            "geometry = { kind = 'resize-crop', resize = 256, crop = 224 }\nviews = { kind = 'ten-crop' }\ngreyscale = 'convert'\nlimits = { max_pixels = 1000 }",
        )
        .unwrap();
        assert_eq!(
            c.geometry,
            Geometry::ResizeCrop {
                resize: 256,
                crop: 224
            }
        );
        assert_eq!(c.views, Views::TenCrop);
        assert_eq!(c.greyscale, Greyscale::Convert);
        assert_eq!(c.limits.max_pixels, 1000);
        assert_eq!(c.limits.max_side, Limits::default().max_side);
        assert!(c.dct_scaling);
        let bad: Result<Config, _> = toml::from_str("geometry = { kind = 'squash', width = 52 }");
        assert!(bad.is_err());
    }
}
