//! The ingest stage's configuration (the `config` table of an `ingest` instance).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Configuration of one ingest instance.
///
/// ```toml
/// [[stages.ingest.config.sources]]
/// format = "mediaeval-locale"
/// path = "data/mediaeval/train.tsv"
/// [[stages.ingest.config.sources]]
/// format = "mediaeval-locale"
/// path = "data/mediaeval/test.tsv"
/// split = "test"
/// truth = "data/mediaeval/truth.csv"
/// [stages.ingest.config]
/// images_root = "data/mediaeval/images"
/// classes = { list = ["DE", "CA", "IT", "ES", "FR"] }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The inputs, read in order; ids must be unique across all of them.
    pub sources: Vec<Source>,
    /// The folder that `image` paths are relative to (recorded in the manifest; preprocess
    /// reads images from it). Image paths that would leave it are rejected.
    #[serde(default)]
    pub images_root: Option<PathBuf>,
    /// A YFCC100M file in the 25-column layout, joined by `photo_hash` to fill `user`
    /// (MediaEval's locale files carry no user).
    #[serde(default)]
    pub yfcc_users: Option<PathBuf>,
    /// Keep photos only (drop videos). Default true.
    #[serde(default = "yes")]
    pub photos_only: bool,
    /// The class list and how rows are matched to it.
    #[serde(default)]
    pub classes: Classes,
    /// Per-class balancing: keep the same number of photos of every class.
    #[serde(default)]
    pub balance: Option<Balance>,
    /// How rows without a fixed split are split.
    #[serde(default)]
    pub split: SplitConfig,
    /// Keep rows without coordinates (photos to predict). Default false: they are rejected
    /// with `no-coordinates`, except in sources with a fixed `test` split.
    #[serde(default)]
    pub keep_unlocated: bool,
    /// Close a part once it holds about this many MB. Default 1024.
    #[serde(default)]
    pub part_cap_mb: Option<u64>,
}

fn yes() -> bool {
    true
}

/// One input.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub format: Format,
    /// A file, or for `exif-folder` a directory.
    pub path: PathBuf,
    /// Put every row of this source in this split (a MediaEval test file: `test`).
    #[serde(default)]
    pub split: Option<Split>,
    /// A ground-truth file (`hash,lat,lon` or `hash<TAB>lon<TAB>lat`) that gives this source's
    /// rows their coordinates, joined by id.
    #[serde(default)]
    pub truth: Option<PathBuf>,
    /// Where each row's image is, relative to `images_root`: a template over the id
    /// (`{id}`, `{id[0:3]}`) or a preset: `hash-path` (`{id[0:3]}/{id[3:6]}/{id}.jpg`, the
    /// public mirror of MediaEval/YFCC100M images), `flat` (`{id}.jpg`), `id` (`{id}`: the id is
    /// already a path, as in CSV files and photo folders). Default: `hash-path` for
    /// MediaEval, YFCC100M and truth files, `id` otherwise.
    #[serde(default)]
    pub layout: Option<String>,
    /// CSV only: `true` reads the latitude column as longitude and vice versa, `false` trusts
    /// the header; default: detected from the value ranges.
    #[serde(default)]
    pub swap_lat_lon: Option<bool>,
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// MediaEval 2015 Placing locale train/test file (7 tab-separated columns).
    MediaevalLocale,
    /// YFCC100M metadata, 23 or 25 columns.
    Yfcc,
    /// A ground-truth file used as a source on its own.
    Truth,
    /// CSV with a header (`IMG_ID,LAT,LON`, `IMG_FILE,LAT,LON`, ...).
    Csv,
    /// A folder of photos with EXIF GPS.
    ExifFolder,
}

impl Format {
    pub(crate) fn default_layout(self) -> &'static str {
        match self {
            Format::MediaevalLocale | Format::Yfcc | Format::Truth => "hash-path",
            Format::Csv | Format::ExifFolder => "id",
        }
    }
}

/// A split name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// The class list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// An explicit list, in label order (the paper: `["DE", "CA", "IT", "ES", "FR"]`).
    #[serde(default)]
    pub list: Option<Vec<String>>,
    /// Or the K most frequent values (ties by name).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// What is matched: the computed `country_code` (default) or the source's `country`.
    #[serde(default)]
    pub field: ClassField,
    /// Drop rows outside the list (default true, as the paper); false keeps them with a
    /// null label.
    #[serde(default = "yes")]
    pub drop_unlisted: bool,
}

/// Which column the class list matches.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClassField {
    #[default]
    CountryCode,
    Country,
}

/// Per-class balancing.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Balance {
    /// Seed of the keyed hash that orders each class's photos; the first N are kept.
    pub seed: u64,
    /// Photos kept per class; default: the smallest class's count.
    #[serde(default)]
    pub per_class: Option<usize>,
}

/// How rows are split.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Fraction of train (default 0.8).
    #[serde(default = "train_frac")]
    pub train: f64,
    /// Fraction of val (default 0.1); test gets the rest.
    #[serde(default = "val_frac")]
    pub val: f64,
    /// Hash the id (default) or the user: `user` keeps every user's photos in one split.
    #[serde(default)]
    pub by: SplitBy,
    /// Key of the split hash (xxh64 seed). Changing it reshuffles every split.
    #[serde(default = "split_key")]
    pub key: u64,
}

fn train_frac() -> f64 {
    0.8
}
fn val_frac() -> f64 {
    0.1
}
fn split_key() -> u64 {
    crate::split::DEFAULT_SPLIT_KEY
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            train: train_frac(),
            val: val_frac(),
            by: SplitBy::Id,
            key: split_key(),
        }
    }
}

/// What the split hash reads.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SplitBy {
    #[default]
    Id,
    User,
}
