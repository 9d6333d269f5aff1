//! `geoloc-ingest`: the ingest stage. Photo metadata in, a samples dataset out.
//!
//! Inputs ([`config::Format`]): MediaEval 2015 locale files (with ground-truth files joined by
//! hash for the test set), YFCC100M metadata (23 or 25 columns; also joined by hash to give
//! locale rows their `user`), CSV files with a header, and folders of photos with EXIF GPS.
//! Rows are validated (bad ones go to the rejects of the part with their line and reason),
//! given a country code from their coordinates, filtered (photos only, a class list or the
//! top K, per-class balancing), labelled, and split 80/10/10 by a keyed hash of the id (or
//! the user). See `geoloc_core::schema::samples` for the output.
//!
//! The public face: [`Config`], [`run`], [`finalize`], [`fingerprint`], [`Summary`]; the
//! format parsers in [`formats`] for single lines; [`raw`] for the benchmark's raw mode;
//! [`synth`] for the demo's synthetic inputs.

pub mod config;
pub mod formats;
pub mod layout;
mod process;
pub mod raw;
pub mod split;
pub mod synth;
mod text;

pub use config::{
    Balance, ClassField, Classes, Config, Format, Source, Split, SplitBy, SplitConfig,
};
pub use text::url_decode;

use geoloc_core::dataset::{self, DatasetWriter, Manifest, ManifestInfo, WriterOptions};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::schema;
use geoloc_core::stage::Context;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The stage kind's name in pipeline files.
pub const KIND: &str = "ingest";

/// Output-format version: bump when the same config would now produce other rows.
pub const FORMAT_VERSION: u32 = 1;

/// Errors of the ingest stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] geoloc_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("ingest config: {0}")]
    Config(String),
}

/// What one run (one shard) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Rows read from the sources (all shards' rows: every shard reads every input).
    pub rows_read: u64,
    /// Rows this shard wrote.
    pub rows_written: u64,
    /// Rejected rows of this shard by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Valid rows of this shard left out on purpose, by why (`video`, `unlisted-class`,
    /// `balanced-out`).
    pub filtered: BTreeMap<String, u64>,
    /// Rows written per split.
    pub splits: BTreeMap<String, u64>,
    /// The class list, in label order.
    pub classes: Vec<String>,
    /// Rows written per class.
    pub class_counts: BTreeMap<String, u64>,
    pub seconds: f64,
}

impl Summary {
    /// One line for logs and the CLI.
    pub fn line(&self) -> String {
        let kv = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        format!(
            "{} rows read, {} written (splits: {}); rejected: {}; filtered: {}; classes: [{}]",
            self.rows_read,
            self.rows_written,
            kv(&self.splits),
            kv(&self.rejects),
            kv(&self.filtered),
            self.classes.join(", ")
        )
    }
}

/// The fingerprint of an ingest instance: its config and its source files' sizes and
/// modification times.
pub fn fingerprint(cfg: &Config, ctx: &Context) -> Result<String, Error> {
    let mut fp = Fingerprint::new(KIND, FORMAT_VERSION).config(cfg)?;
    for s in &cfg.sources {
        let p = ctx.resolve(&s.path);
        let label = s.path.display().to_string();
        fp = if s.format == Format::ExifFolder {
            fp.tree(&label, &p)?
        } else {
            fp.file(&label, &p)?
        };
        if let Some(t) = &s.truth {
            fp = fp.file(&t.display().to_string(), &ctx.resolve(t))?;
        }
    }
    if let Some(y) = &cfg.yfcc_users {
        fp = fp.file(&y.display().to_string(), &ctx.resolve(y))?;
    }
    Ok(fp.finish())
}

fn validate(cfg: &Config) -> Result<(), Error> {
    if cfg.sources.is_empty() {
        return Err(Error::Config("no sources".into()));
    }
    let s = &cfg.split;
    if !(0.0..=1.0).contains(&s.train)
        || !(0.0..=1.0).contains(&s.val)
        || s.train + s.val > 1.0 + 1e-12
    {
        return Err(Error::Config(format!(
            "split fractions train={} val={} must be in [0, 1] and sum to at most 1",
            s.train, s.val
        )));
    }
    if cfg.classes.list.is_some() && cfg.classes.top_k.is_some() {
        return Err(Error::Config(
            "classes: give `list` or `top_k`, not both".into(),
        ));
    }
    if cfg.balance.is_some() && cfg.classes.list.is_none() && cfg.classes.top_k.is_none() {
        return Err(Error::Config(
            "balance needs a class list (`classes.list` or `classes.top_k`)".into(),
        ));
    }
    for src in &cfg.sources {
        layout::Layout::parse(src.layout.as_deref().unwrap_or(src.format.default_layout()))
            .map_err(Error::Config)?;
    }
    Ok(())
}

/// Runs ingest for `ctx.shard`: writes that shard's parts, rejects and marker under
/// `ctx.out_dir`. Rows are assigned to shards by a hash of their id, so duplicates meet in
/// one shard; every shard reads every input (ingest is I/O-light next to the image stages).
pub fn run(cfg: &Config, ctx: &Context) -> Result<Summary, Error> {
    validate(cfg)?;
    let t0 = Instant::now();
    let users = match &cfg.yfcc_users {
        Some(y) => Some(process::load_users(cfg, ctx, &ctx.resolve(y))?),
        None => None,
    };
    let total = process::total_bytes(cfg, ctx);
    let needs_count = cfg.classes.top_k.is_some() || cfg.balance.is_some();
    let mut sources = process::Sources {
        cfg,
        ctx,
        users,
        progress: counting_progress(ctx, total, needs_count, "counting"),
    };

    // The class list: given, or the top K of a counting pass.
    let mut thresholds = hashbrown::HashMap::new();
    let classes: Option<Vec<String>> = if needs_count {
        let (counts, mut hashes) = process::count(cfg, &sources)?;
        sources.progress.finish_and_clear();
        let list = match (&cfg.classes.list, cfg.classes.top_k) {
            (Some(l), _) => l.clone(),
            (None, Some(k)) => {
                let mut v: Vec<(&String, &u64)> = counts.iter().collect();
                v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                v.into_iter().take(k).map(|(c, _)| c.clone()).collect()
            }
            (None, None) => unreachable!("validated"),
        };
        if let Some(b) = &cfg.balance {
            let smallest = list
                .iter()
                .map(|c| counts.get(c).copied().unwrap_or(0))
                .min()
                .unwrap_or(0) as usize;
            let quota = b.per_class.unwrap_or(smallest);
            for c in &list {
                // The largest balancing hash kept; None keeps no row (a quota of 0).
                let mut h = hashes.remove(c).unwrap_or_default();
                let t = if h.len() <= quota {
                    Some(u64::MAX)
                } else if quota == 0 {
                    None
                } else {
                    Some(*h.select_nth_unstable(quota - 1).1)
                };
                thresholds.insert(c.clone(), t);
            }
            tracing::info!(per_class = quota, "balancing classes");
        }
        Some(list)
    } else {
        cfg.classes.list.clone()
    };
    sources.progress = process::progress(ctx, total, "ingest");

    let opts = WriterOptions {
        part_cap_bytes: cfg.part_cap_mb.unwrap_or(1024) << 20,
        ..Default::default()
    };
    let mut writer = DatasetWriter::create(&ctx.out_dir, schema::samples(), ctx.shard, opts)?;
    let mut summary = Summary {
        classes: classes.clone().unwrap_or_default(),
        ..Default::default()
    };
    process::write(
        cfg,
        ctx,
        &sources,
        classes.as_deref(),
        &thresholds,
        &mut writer,
        &mut summary,
    )?;
    sources.progress.finish_and_clear();
    writer.finish(metadata(cfg, classes.as_deref()))?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

fn counting_progress(ctx: &Context, total: u64, show: bool, msg: &str) -> indicatif::ProgressBar {
    if show {
        process::progress(ctx, total, msg)
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Facts about the dataset that readers need, identical in every shard.
fn metadata(cfg: &Config, classes: Option<&[String]>) -> serde_json::Value {
    json!({
        "classes": classes,
        "class_field": cfg.classes.field,
        "split": {
            "hash": split::SPLIT_HASH_NAME,
            "key": cfg.split.key,
            "train": cfg.split.train,
            "val": cfg.split.val,
            "by": cfg.split.by,
        },
        "images_root": cfg.images_root,
    })
}

/// Commits the dataset once all `shards` shards have run: writes `_manifest.json`.
pub fn finalize(cfg: &Config, ctx: &Context, shards: u32) -> Result<Manifest, Error> {
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: serde_json::Value::Null,
    };
    Ok(dataset::finalize(
        &ctx.out_dir,
        &schema::samples(),
        shards,
        info,
    )?)
}
