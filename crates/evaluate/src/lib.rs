//! `geoloc-evaluate`: the evaluate stage. Trained heads (model directories from train), the
//! datasets they read (features, or pixels for the small CNN) and the samples in; out, one
//! directory committed like a model directory (`_manifest.json` listing every file with its
//! blake3):
//!
//! - `predictions.parquet`: per model and test photo, views averaged (test-time
//!   augmentation): top-k classes with probabilities, the predicted location and country,
//!   the truth and the error ([`schema`]);
//! - `metrics.json` ([`Metrics`]): country accuracy with a Wilson 95% interval, per-class
//!   precision and recall, the confusion matrix; accuracy within radii, median and mean
//!   error, the GeoGuessr-style score; beside each model its untrained "0 epochs" self (the
//!   paper's baseline, the head re-initialised from the card's seed) and the trivial
//!   predictors (the train split's most common class, the train split's mean location);
//! - `report.md` and `report.html` (self-contained: the plots inlined) with `plots/*.png`;
//! - with `run_files`, MediaEval run files `runs/<model>.txt` (`hash;lat;lon`).
//!
//! A model finds its input among the stage's inputs by the fingerprint its card records, so
//! one evaluate instance takes any number of models over any number of feature sets.
//!
//! The public face: [`Config`], [`run`], [`finalize`], [`fingerprint`], [`open`],
//! [`Summary`], and the [`metrics`] module.

pub mod metrics;
mod plots;
mod report;
mod worldmap;

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, Float64Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use geoloc_core::dataset::{Dataset, Manifest, ManifestInfo};
use geoloc_core::fingerprint::Fingerprint;
use geoloc_core::geo::{DistanceMetric, LatLon, SphericalMean};
use geoloc_core::stage::{Context, Input};
use geoloc_models::card::Task;
use geoloc_models::predict::{top_k, PhotoScores, Predictor};
use geoloc_models::retrieval::{self, Index};
use metrics::{Confusion, CountryMetrics, DistanceMetrics, DEFAULT_RADII_KM};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The stage kind's name in pipeline files.
pub const KIND: &str = "evaluate";

/// Output-format version: bump when the same inputs would now give other results.
pub const FORMAT_VERSION: u32 = 1;

/// The committed directory's schema name and version.
pub const SCHEMA: &str = "evaluation";
pub const SCHEMA_VERSION: u32 = 1;

/// File names in the output directory.
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
pub const METRICS_FILE: &str = "metrics.json";
pub const REPORT_MD: &str = "report.md";
pub const REPORT_HTML: &str = "report.html";

/// Configuration of an evaluate instance.
///
/// ```toml
/// [stages.evaluate]
/// kind = "evaluate"
/// inputs = ["ingest", "lite0", "hog", "squash52x48", "country", "latlon", "hog_svm"]
///
/// [stages.evaluate.config]
/// distance = "haversine"     # or equirectangular (the paper's), geodesic (WGS84, MediaEval's)
/// top_k = 5
/// run_files = true           # MediaEval `hash;lat;lon` files under runs/
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The distance every error is measured with.
    #[serde(default)]
    pub distance: DistanceMetric,
    /// Radii of the "accuracy within" figures, km (default [`DEFAULT_RADII_KM`]).
    #[serde(default)]
    pub radii_km: Option<Vec<f64>>,
    /// Classes kept per photo in the predictions (default 5).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Write MediaEval run files.
    #[serde(default)]
    pub run_files: bool,
    /// Write the report (Markdown, HTML, plots); metrics and predictions are always written.
    #[serde(default = "yes")]
    pub report: bool,
    /// The report's title (default: the pipeline's instance name).
    #[serde(default)]
    pub title: Option<String>,
    /// Geocell heads refined by a retrieval index (Kordopatis-Zilos et al. 2021; PIGEON
    /// refines in its top 5 cells): `[{ model = "geocells", index = "knn", cells = 5 }]`; the
    /// head picks its top `cells` cells, the photo is placed by the index's vote over its
    /// nearest train photos inside them. Scored as `MODEL+INDEX` (or the entry's `name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refine: Vec<Refine>,
}

impl Config {
    /// The refined predictors' names, in order: each entry's `name`, else `MODEL+INDEX`;
    /// an error when two are the same.
    pub fn refine_names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = Vec::with_capacity(self.refine.len());
        for rf in &self.refine {
            let name = rf.name();
            if names.contains(&name) {
                return Err(Error::Config(format!(
                    "refine: two entries are named `{name}`; give each a `name`"
                )));
            }
            names.push(name);
        }
        Ok(names)
    }
}

/// One refined predictor: see [`Config::refine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Refine {
    /// A geocell head among the inputs (a train instance's name).
    pub model: String,
    /// A retrieval index among the inputs (train's `head = "knn"`) over the same features.
    pub index: String,
    /// The head's top cells the search stays in (default 5).
    #[serde(default = "five")]
    pub cells: usize,
    /// The predictor's name in the metrics, predictions and report (default `MODEL+INDEX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Refine {
    /// Its name: `name`, else `MODEL+INDEX`.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}+{}", self.model, self.index))
    }
}

fn five() -> usize {
    5
}

fn default_top_k() -> usize {
    5
}
fn yes() -> bool {
    true
}

impl Default for Config {
    fn default() -> Self {
        Config {
            distance: DistanceMetric::default(),
            radii_km: None,
            top_k: default_top_k(),
            run_files: false,
            report: true,
            title: None,
            refine: Vec::new(),
        }
    }
}

impl Config {
    fn radii(&self) -> Result<Vec<f64>, Error> {
        let mut r = self.radii_km.clone().unwrap_or(DEFAULT_RADII_KM.to_vec());
        if r.is_empty() || r.iter().any(|&k| !(k > 0.0 && k.is_finite())) {
            return Err(Error::Config(format!(
                "radii_km must be positive distances, found {r:?}"
            )));
        }
        r.sort_by(f64::total_cmp);
        r.dedup();
        Ok(r)
    }
}

/// Errors of the evaluate stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Core(#[from] geoloc_core::Error),
    #[error(transparent)]
    Card(#[from] geoloc_models::card::CardError),
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("evaluate config: {0}")]
    Config(String),
    #[error("evaluate data: {0}")]
    Data(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plot {name}: {reason}")]
    Plot { name: String, reason: String },
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
    pub models: usize,
    pub test_photos: usize,
    /// Per model: name, country accuracy, median km.
    pub results: Vec<(String, Option<f64>, Option<f64>)>,
    pub seconds: f64,
}

impl Summary {
    /// One line for the runner.
    pub fn line(&self) -> String {
        let each: Vec<String> = self
            .results
            .iter()
            .map(|(n, a, m)| {
                let mut s = n.clone();
                if let Some(a) = a {
                    s += &format!(" acc {a:.3}");
                }
                if let Some(m) = m {
                    s += &format!(" median {m:.0} km");
                }
                s
            })
            .collect();
        format!(
            "{} models on {} test photos: {}; {:.1}s",
            self.models,
            self.test_photos,
            each.join(", "),
            self.seconds
        )
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub distance: DistanceMetric,
    pub radii_km: Vec<f64>,
    /// The samples' class list.
    pub classes: Vec<String>,
    /// Test photos in the samples (with a location or a label).
    pub test_photos: usize,
    pub models: Vec<ModelResult>,
    /// The trivial predictors, over every test photo.
    pub baselines: Vec<Scored>,
}

/// One model's results, trained and untrained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// The train instance's name.
    pub name: String,
    /// `country`, `latlon`, `geocell`; `location` for an index (head `knn`).
    pub task: String,
    /// `mlp`, `linear`, `small-cnn`, `knn`.
    pub head: String,
    /// The input instance it read (features or images).
    pub input: String,
    /// Test photos without a row in the input (rejected upstream, say).
    pub missing_photos: usize,
    pub trained: Scored,
    /// The same head before training (the paper's "0 epochs"); none for an index.
    #[serde(default)]
    pub epoch0: Option<Scored>,
}

/// The scores of one predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub name: String,
    /// Photos predicted.
    pub photos: usize,
    /// How the country was decided: `class` (a country head's top class) or `location`
    /// (the country containing the predicted location).
    pub country_from: String,
    pub country: Option<CountryMetrics>,
    pub location: Option<DistanceMetrics>,
}

/// The predictions' Arrow schema.
///
/// One row per (model, test photo):
/// - `model` (utf8): the train instance; `id` (utf8); `views` (u32): views averaged;
/// - `true_class` (utf8?), `true_lat`, `true_lon` (f64?): the samples' label and location;
/// - `pred_class` (utf8?): the top class (a country, an S2 cell token; null for latlon);
/// - `top_classes` (list<utf8>), `top_probs` (list<f32>): the top-k classes and their
///   probabilities, best first (empty for latlon);
/// - `pred_lat`, `pred_lon` (f64?): the predicted location;
/// - `pred_country` (utf8?): the country decided (see [`Scored::country_from`]), `other`
///   outside the classes;
/// - `error_km` (f64?): distance from truth under the configured metric.
pub fn schema() -> Arc<Schema> {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    Arc::new(Schema::new(vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("views", DataType::UInt32, false),
        Field::new("true_class", DataType::Utf8, true),
        Field::new("true_lat", DataType::Float64, true),
        Field::new("true_lon", DataType::Float64, true),
        Field::new("pred_class", DataType::Utf8, true),
        Field::new("top_classes", list(DataType::Utf8), false),
        Field::new("top_probs", list(DataType::Float32), false),
        Field::new("pred_lat", DataType::Float64, true),
        Field::new("pred_lon", DataType::Float64, true),
        Field::new("pred_country", DataType::Utf8, true),
        Field::new("error_km", DataType::Float64, true),
    ]))
}

/// A task's name as `metrics.json` writes it.
fn task_name(t: Task) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The distance of a prediction from the truth under `metric` (points at exactly (0, 0),
/// which `LatLon::new` refuses as a null island, are measured all the same).
pub fn error_km(metric: DistanceMetric, pred: [f64; 2], truth: [f64; 2]) -> f64 {
    let p = |x: [f64; 2]| LatLon {
        lat: x[0],
        lon: x[1],
    };
    metric.km(p(pred), p(truth))
}

/// The inputs by kind: the samples, the models, and the datasets they read.
struct Sorted<'a> {
    samples: &'a Input,
    models: Vec<&'a Input>,
    /// Retrieval indexes (train's head `knn`).
    indexes: Vec<&'a Input>,
    data: Vec<&'a Input>,
}

fn sort_inputs(ins: &[Input]) -> Result<Sorted<'_>, Error> {
    let mut samples = Vec::new();
    let mut models = Vec::new();
    let mut indexes = Vec::new();
    let mut data = Vec::new();
    for i in ins {
        match i.manifest.schema.as_str() {
            "samples" => samples.push(i),
            "model" => models.push(i),
            "index" => indexes.push(i),
            "features" | "images" => data.push(i),
            other => {
                return Err(Error::Config(format!(
                    "input `{}` is a {other} dataset; evaluate reads samples, models, and \
                     the features or images they were trained on",
                    i.name
                )))
            }
        }
    }
    let [samples] = samples[..] else {
        return Err(Error::Config(format!(
            "evaluate reads exactly one samples dataset, its inputs hold {}",
            samples.len()
        )));
    };
    if models.is_empty() && indexes.is_empty() {
        return Err(Error::Config(
            "evaluate has no model among its inputs (add train instances to `inputs`)".into(),
        ));
    }
    Ok(Sorted {
        samples,
        models,
        indexes,
        data,
    })
}

/// Checks each `refine` entry against the inputs before anything is scored, from the cards
/// alone: its model and index are among the inputs, the model is a geocell head, `cells` is
/// at least 1, and head and index were built from the same features dataset.
fn check_refine(cfg: &Config, s: &Sorted<'_>) -> Result<(), Error> {
    for (rf, name) in cfg.refine.iter().zip(cfg.refine_names()?) {
        let missing = |what: &str, n: &str, have: &[&Input]| {
            let names: Vec<&str> = have.iter().map(|i| i.name.as_str()).collect();
            let whats = if what == "index" { "indexes" } else { "models" };
            Error::Config(format!(
                "refine `{name}`: no {what} `{n}` among evaluate's inputs (its {whats}: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        };
        let head_in = s
            .models
            .iter()
            .find(|i| i.name == rf.model)
            .ok_or_else(|| missing("model", &rf.model, &s.models))?;
        let index_in = s
            .indexes
            .iter()
            .find(|i| i.name == rf.index)
            .ok_or_else(|| missing("index", &rf.index, &s.indexes))?;
        let head = geoloc_models::card::ModelCard::load(&head_in.dir)?;
        if head.task != Task::Geocell {
            return Err(Error::Config(format!(
                "refine `{name}`: `{}` is a {} head; refinement searches within geocells",
                rf.model,
                task_name(head.task)
            )));
        }
        if rf.cells == 0 {
            return Err(Error::Config(format!(
                "refine `{name}`: cells must be at least 1"
            )));
        }
        let index = Index::load_card(&index_in.dir).map_err(|e| Error::Data(e.to_string()))?;
        let data = find_input(&rf.model, InputRef::of_model(&head), &s.data)?;
        let index_data = find_input(&rf.index, InputRef::of_index(&index), &s.data)?;
        if !std::ptr::eq(data, index_data) {
            return Err(Error::Config(format!(
                "refine `{name}`: the head reads `{}` and the index `{}`; they must be built \
                 from the same features",
                data.name, index_data.name
            )));
        }
    }
    Ok(())
}

/// The fingerprint: the config, the samples' columns read, each model's files, each data
/// input's columns.
pub fn fingerprint(cfg: &Config, _ctx: &Context, ins: &[Input]) -> Result<String, Error> {
    cfg.radii()?;
    cfg.refine_names()?;
    let s = sort_inputs(ins)?;
    let mut fp = Fingerprint::new(KIND, FORMAT_VERSION)
        .config(cfg)?
        .dataset(
            &s.samples.name,
            &s.samples.manifest,
            &["id", "split", "label", "lat", "lon"],
            &["classes"],
        )?;
    for m in s.models.iter().chain(&s.indexes) {
        fp = fp.dataset(&m.name, &m.manifest, &[], &["files"])?;
    }
    for d in &s.data {
        let col = if d.manifest.schema == "images" {
            "pixels"
        } else {
            "feature"
        };
        fp = fp.dataset(&d.name, &d.manifest, &["id", "view", col], &[])?;
    }
    Ok(fp.finish())
}

/// What the samples say: the test photos, and the train split's class counts and
/// locations (for the trivial predictors).
struct Truth {
    classes: Vec<String>,
    /// Test photo id -> index.
    index: HashMap<String, usize>,
    ids: Vec<String>,
    labels: Vec<Option<usize>>,
    coords: Vec<Option<[f64; 2]>>,
    train_counts: Vec<u64>,
    train_class_locations: Vec<Option<[f64; 2]>>,
    train_mean: Option<[f64; 2]>,
}

fn read_truth(input: &Input) -> Result<Truth, Error> {
    let ds = Dataset::open(&input.dir, &geoloc_core::schema::samples())?;
    let classes = input.manifest.classes();
    let k = classes.len();
    let mut t = Truth {
        classes,
        index: HashMap::new(),
        ids: Vec::new(),
        labels: Vec::new(),
        coords: Vec::new(),
        train_counts: vec![0; k],
        train_class_locations: Vec::new(),
        train_mean: None,
    };
    let mut per_class = vec![SphericalMean::default(); k];
    let mut all = SphericalMean::default();
    ds.for_each_sample(|r| {
        let coords = r.coords.map(|(lat, lon)| [lat, lon]);
        let lab = r
            .label
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l < k);
        match r.split {
            "train" => {
                if let Some(c) = coords {
                    all.add((c[0], c[1]), 1.0);
                }
                if let Some(l) = lab {
                    t.train_counts[l] += 1;
                    if let Some(c) = coords {
                        per_class[l].add((c[0], c[1]), 1.0);
                    }
                }
            }
            "test" if coords.is_some() || lab.is_some() => {
                t.index.insert(r.id.to_owned(), t.ids.len());
                t.ids.push(r.id.to_owned());
                t.labels.push(lab);
                t.coords.push(coords);
            }
            _ => {}
        }
    })?;
    let unlocated = t.coords.iter().filter(|c| c.is_none()).count();
    if unlocated > 0 {
        tracing::info!(
            "evaluate: {unlocated} of {} test photos have no coordinates (a country label only): scored for the country, left out of the distance metrics",
            t.ids.len()
        );
    }
    t.train_class_locations = per_class.iter().map(SphericalMean::finish).collect();
    t.train_mean = all.finish();
    Ok(t)
}

/// What scores photos: a trained head, or a retrieval index (head `knn`).
#[derive(Clone, Copy)]
enum Scorer<'a> {
    Head(&'a Predictor),
    Index(&'a Index),
    /// A geocell head whose top `cells` cells a search of the index stays in; `cell_of_row`:
    /// each index row's cell (class) under the head's partition.
    Refined {
        head: &'a Predictor,
        index: &'a Index,
        cells: usize,
        cell_of_row: &'a [Option<u32>],
    },
}

impl Scorer<'_> {
    fn input_dim(&self) -> usize {
        match self {
            Scorer::Head(p) | Scorer::Refined { head: p, .. } => p.input_dim(),
            Scorer::Index(i) => i.dim(),
        }
    }

    /// Values per scored row: a head's outputs; an index's unit view vectors (averaged per
    /// photo, then normalised again into the photo's query).
    fn output_dim(&self) -> usize {
        match self {
            Scorer::Head(p) => p.output_dim(),
            Scorer::Index(i) => i.dim(),
            Scorer::Refined { head, index, .. } => head.output_dim() + index.dim(),
        }
    }

    fn scores(&self, x: &[f32]) -> Result<Vec<f32>, Error> {
        let unit = |x: &[f32], d: usize| {
            let mut v = x.to_vec();
            v.chunks_mut(d).for_each(|r| {
                // A zero row stays zero: it adds nothing to the photo's mean.
                retrieval::normalise(r);
            });
            v
        };
        match self {
            Scorer::Head(p) => Ok(p.scores(x)?),
            Scorer::Index(i) => Ok(unit(x, i.dim())),
            // Per row: the head's probabilities, then the row's unit vector.
            Scorer::Refined { head, index, .. } => {
                let (a, b) = (head.output_dim(), index.dim());
                let probs = head.scores(x)?;
                let v = unit(x, b);
                Ok(probs
                    .chunks(a)
                    .zip(v.chunks(b))
                    .flat_map(|(p, v)| p.iter().chain(v).copied())
                    .collect())
            }
        }
    }
}

/// Photos whose queries wait for one batched search.
const SEARCH_BATCH: usize = 256;

/// The photos being scored: the open photo's view sums per scorer, the decisions so far,
/// and per index the photos waiting for a batched search.
struct Photos<'a> {
    scorers: &'a [Scorer<'a>],
    how: &'a Deciding<'a>,
    truth: &'a Truth,
    data: &'a str,
    open: Vec<PhotoScores>,
    current: Option<usize>,
    done: Vec<bool>,
    decided: Vec<Vec<Decided>>,
    waiting: Vec<Vec<(usize, u32, Vec<f32>)>>,
}

impl<'a> Photos<'a> {
    fn new(
        scorers: &'a [Scorer<'a>],
        how: &'a Deciding<'a>,
        truth: &'a Truth,
        data: &'a str,
    ) -> Self {
        Photos {
            scorers,
            how,
            truth,
            data,
            open: scorers
                .iter()
                .map(|p| PhotoScores::new(1, p.output_dim()))
                .collect(),
            current: None,
            done: vec![false; truth.ids.len()],
            decided: scorers.iter().map(|_| Vec::new()).collect(),
            waiting: scorers.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// Scores rows `x` of test photos `photos` (one per row).
    fn rows(&mut self, x: &[f32], photos: &[usize]) -> Result<(), Error> {
        if photos.is_empty() {
            return Ok(());
        }
        let scores: Vec<Vec<f32>> = self
            .scorers
            .iter()
            .map(|p| p.scores(x))
            .collect::<Result<_, _>>()?;
        for (j, &ph) in photos.iter().enumerate() {
            if self.current != Some(ph) {
                if self.done[ph] {
                    return Err(Error::Data(format!(
                        "input `{}`: the views of photo {} are not adjacent rows",
                        self.data, self.truth.ids[ph]
                    )));
                }
                if let Some(c) = self.current {
                    self.close(c)?;
                }
                self.done[ph] = true;
                self.current = Some(ph);
            }
            for ((p, o), s) in self.scorers.iter().zip(self.open.iter_mut()).zip(&scores) {
                let d = p.output_dim();
                o.add(0, &s[j * d..(j + 1) * d]);
            }
        }
        Ok(())
    }

    /// The photo's views are all scored: a head decides it now, an index queues its query.
    fn close(&mut self, ph: usize) -> Result<(), Error> {
        for i in 0..self.scorers.len() {
            let p = self.scorers[i];
            let o = std::mem::replace(&mut self.open[i], PhotoScores::new(1, p.output_dim()));
            match p {
                Scorer::Head(h) => {
                    let d = self.how.decide(h, ph, &o.mean(0), o.views(0), self.truth);
                    self.decided[i].push(d);
                }
                Scorer::Index(_) | Scorer::Refined { .. } => {
                    self.waiting[i].push((ph, o.views(0), o.mean(0)));
                    if self.waiting[i].len() >= SEARCH_BATCH {
                        self.search(i);
                    }
                }
            }
        }
        Ok(())
    }

    /// Searches index `i` for its waiting photos in one batch and decides them.
    fn search(&mut self, i: usize) {
        if let Scorer::Refined {
            head,
            index,
            cells,
            cell_of_row,
        } = self.scorers[i]
        {
            return self.search_refined(i, head, index, cells, cell_of_row);
        }
        let Scorer::Index(index) = self.scorers[i] else {
            return;
        };
        let waiting = std::mem::take(&mut self.waiting[i]);
        let mut queries = Vec::with_capacity(waiting.len() * index.dim());
        let mut asked = Vec::with_capacity(waiting.len());
        for (ph, views, mut q) in waiting {
            if retrieval::normalise(&mut q) {
                queries.extend_from_slice(&q);
                asked.push((ph, views));
            } else {
                // Every view's features are zero: no direction to search in.
                let d = self.how.decide_hits(index, ph, views, &[], self.truth);
                self.decided[i].push(d);
            }
        }
        let k = index.card.vote.k.max(self.how.cfg.top_k);
        for ((ph, views), hits) in asked.into_iter().zip(index.search(&queries, k)) {
            let d = self.how.decide_hits(index, ph, views, &hits, self.truth);
            self.decided[i].push(d);
        }
    }

    /// Searches the refined predictor `i`'s waiting photos, each within its head's top
    /// cells, and decides them: the vote over the neighbours found there, or the head's own
    /// location when none of its top cells holds a train photo of the index.
    fn search_refined(
        &mut self,
        i: usize,
        head: &Predictor,
        index: &Index,
        cells: usize,
        cell_of_row: &[Option<u32>],
    ) {
        let waiting = std::mem::take(&mut self.waiting[i]);
        let a = head.output_dim();
        let mut queries = Vec::with_capacity(waiting.len() * index.dim());
        let mut asked = Vec::with_capacity(waiting.len());
        let mut tops: Vec<Vec<u32>> = Vec::with_capacity(waiting.len());
        for (ph, views, mean) in waiting {
            let (probs, q) = mean.split_at(a);
            let mut q = q.to_vec();
            // The head's own decision, the fallback; its top-k are cells, not train photos.
            let mut d = self.how.decide(head, ph, probs, views, self.truth);
            d.top.clear();
            if retrieval::normalise(&mut q) {
                queries.extend_from_slice(&q);
                tops.push(top_k(probs, cells).iter().map(|c| c.0 as u32).collect());
                asked.push(d);
            } else {
                self.decided[i].push(d);
            }
        }
        let k = index.card.vote.k.max(self.how.cfg.top_k);
        let hits = index.search_where(&queries, k, |q, row| {
            cell_of_row[row as usize].is_some_and(|c| tops[q].contains(&c))
        });
        for (d, hits) in asked.into_iter().zip(hits) {
            if hits.is_empty() {
                self.decided[i].push(d);
                continue;
            }
            let r = self
                .how
                .decide_hits(index, d.photo, d.views, &hits, self.truth);
            self.decided[i].push(r);
        }
    }

    /// Decides the last photo and the waiting queries; decisions in photo order.
    fn finish(mut self) -> Result<Vec<Vec<Decided>>, Error> {
        if let Some(c) = self.current.take() {
            self.close(c)?;
        }
        for i in 0..self.scorers.len() {
            self.search(i);
        }
        for d in &mut self.decided {
            d.sort_by_key(|d| d.photo);
        }
        Ok(self.decided)
    }
}

/// Scores every test photo's rows in `data` with each scorer, views averaged, and decides
/// each photo as soon as its last view is scored (an index: in batches of
/// [`SEARCH_BATCH`] photos). A photo's views are adjacent rows (as preprocess and
/// featurize write them), so memory holds one photo's scores per scorer and each photo's
/// decision (its top-k and location), not every photo's score vector: a geocell head of
/// thousands of cells over 931k test photos would otherwise hold gigabytes.
fn score_test_photos(
    data: &Input,
    truth: &Truth,
    scorers: &[Scorer<'_>],
    how: &Deciding<'_>,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Vec<Decided>>, Error> {
    let (ds, dim, pixels) = match data.manifest.schema.as_str() {
        "images" => {
            let (w, h) = geoloc_core::schema::images_size(&data.manifest)?;
            (
                Dataset::open(&data.dir, &geoloc_core::schema::images(w, h))?,
                (w * h * 3) as usize,
                true,
            )
        }
        _ => {
            let dim = geoloc_core::schema::features_dim(&data.manifest)?;
            (
                Dataset::open(&data.dir, &geoloc_core::schema::features(dim))?,
                dim,
                false,
            )
        }
    };
    for p in scorers {
        if p.input_dim() != dim {
            return Err(Error::Data(format!(
                "input `{}` has rows of {dim} values, the model reads {}",
                data.name,
                p.input_dim()
            )));
        }
    }
    let mut state = Photos::new(scorers, how, truth, &data.name);
    let mut x: Vec<f32> = Vec::new();
    let mut photos: Vec<usize> = Vec::new();
    ds.for_each_batch(|b| {
        let ids = b.column(0).as_string::<i32>();
        let px = pixels.then(|| b.column(2).as_fixed_size_binary());
        let feats = (!pixels).then(|| {
            let l = b.column(2).as_fixed_size_list();
            (l, l.values().as_primitive::<Float32Type>())
        });
        for i in 0..b.num_rows() {
            let Some(&ph) = truth.index.get(ids.value(i)) else {
                continue;
            };
            match (&px, &feats) {
                (Some(px), _) => x.extend(px.value(i).iter().map(|&v| v as f32)),
                (_, Some((l, v))) => {
                    let off = l.value_offset_at(i);
                    x.extend_from_slice(&v.values()[off..off + dim]);
                }
                _ => unreachable!("one value column is set"),
            }
            photos.push(ph);
            if photos.len() >= 256 {
                state
                    .rows(&x, &photos)
                    .map_err(|e| geoloc_core::Error::Config(e.to_string()))?;
                progress.inc(photos.len() as u64);
                x.clear();
                photos.clear();
            }
        }
        Ok(())
    })?;
    state.rows(&x, &photos)?;
    progress.inc(photos.len() as u64);
    state.finish()
}

/// A decided prediction of one photo.
struct Decided {
    photo: usize,
    views: u32,
    top: Vec<(usize, f32)>,
    location: Option<[f64; 2]>,
    /// Class index of the decided country; `None`: other.
    country: Option<usize>,
    error_km: Option<f64>,
}

/// The class a location falls in (by its country code), `None` outside every class.
fn class_of_location(classes: &[String], loc: Option<[f64; 2]>) -> Option<usize> {
    let l = loc?;
    let code = geoloc_core::country::country_code(LatLon {
        lat: l[0],
        lon: l[1],
    })?;
    classes.iter().position(|c| *c == code)
}

/// Decides each photo of a predictor: top-k, location, country, error.
/// How a photo's mean scores become its decision.
struct Deciding<'a> {
    cfg: &'a Config,
    /// The head's classes are the countries (a country head).
    country_classes: bool,
}

impl Deciding<'_> {
    /// Decides photo `ph` from its views' mean scores `s`.
    fn decide(&self, p: &Predictor, ph: usize, s: &[f32], views: u32, truth: &Truth) -> Decided {
        let top = if p.card.task == Task::Latlon {
            Vec::new()
        } else {
            top_k(s, self.cfg.top_k.max(1))
        };
        let location = p.locate(s);
        let country = if self.country_classes {
            top.first().map(|t| t.0)
        } else {
            class_of_location(&truth.classes, location)
        };
        let error_km = match (location, truth.coords[ph]) {
            (Some(a), Some(b)) => Some(error_km(self.cfg.distance, a, b)),
            _ => None,
        };
        Decided {
            photo: ph,
            views,
            top,
            location,
            country,
            error_km,
        }
    }

    /// Decides photo `ph` from its nearest train photos `hits` (best first): the location
    /// by the index's density vote; the top-k are the nearest photos and their similarity.
    fn decide_hits(
        &self,
        index: &Index,
        ph: usize,
        views: u32,
        hits: &[retrieval::Hit],
        truth: &Truth,
    ) -> Decided {
        let location = index.place(hits);
        let error_km = match (location, truth.coords[ph]) {
            (Some(a), Some(b)) => Some(error_km(self.cfg.distance, a, b)),
            _ => None,
        };
        Decided {
            photo: ph,
            views,
            top: hits
                .iter()
                .take(self.cfg.top_k.max(1))
                .map(|h| (h.row as usize, h.sim))
                .collect(),
            location,
            country: class_of_location(&truth.classes, location),
            error_km,
        }
    }
}

/// Scores decided predictions.
fn score(
    name: &str,
    decided: &[Decided],
    truth: &Truth,
    radii: &[f64],
    country_from: &str,
) -> Scored {
    let mut conf = Confusion::new(&truth.classes);
    let mut errors = Vec::new();
    for d in decided {
        if let Some(l) = truth.labels[d.photo] {
            conf.add(l, d.country);
        }
        if let Some(e) = d.error_km {
            errors.push(e);
        }
    }
    Scored {
        name: name.into(),
        photos: decided.len(),
        country_from: country_from.into(),
        country: conf.finish(),
        location: DistanceMetrics::of(&errors, radii),
    }
}

/// The trivial predictors: every photo gets the train split's most common class (and its
/// mean location), or the train split's mean location.
fn baselines(truth: &Truth, cfg: &Config, radii: &[f64]) -> Vec<Scored> {
    let mut out = Vec::new();
    let fixed = |loc: Option<[f64; 2]>, country: Option<usize>| -> Vec<Decided> {
        (0..truth.ids.len())
            .map(|ph| Decided {
                photo: ph,
                views: 0,
                top: Vec::new(),
                location: loc,
                country,
                error_km: match (loc, truth.coords[ph]) {
                    (Some(a), Some(b)) => Some(error_km(cfg.distance, a, b)),
                    _ => None,
                },
            })
            .collect()
    };
    if let Some((top, _)) = truth
        .train_counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
    {
        let loc = truth.train_class_locations[top];
        out.push(score(
            &format!("class prior ({})", truth.classes[top]),
            &fixed(loc, Some(top)),
            truth,
            radii,
            "class",
        ));
    }
    if truth.train_mean.is_some() {
        let d = fixed(
            truth.train_mean,
            class_of_location(&truth.classes, truth.train_mean),
        );
        out.push(score("train-mean location", &d, truth, radii, "location"));
    }
    out
}

/// Runs the stage: scores every model on the test photos, writes predictions, metrics,
/// run files and the report into `ctx.out_dir`.
pub fn run(cfg: &Config, ctx: &Context, ins: &[Input]) -> Result<Summary, Error> {
    let t0 = Instant::now();
    let radii = cfg.radii()?;
    let s = sort_inputs(ins)?;
    // A config the inputs cannot serve is refused while the previous result still stands.
    check_refine(cfg, &s)?;
    let dir = &ctx.out_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    geoloc_core::artifact::uncommit(dir)?;
    let truth = read_truth(s.samples)?;
    if truth.ids.is_empty() {
        return Err(Error::Data(format!(
            "the samples `{}` hold no test photo with a location or label",
            s.samples.name
        )));
    }
    let device = candle_core::Device::Cpu;
    let mut results = Vec::new();
    let mut batches = Vec::new();
    let mut run_files = Vec::new();
    let mut histories = Vec::new();
    for m in &s.models {
        let tm = Instant::now();
        geoloc_core::artifact::open(&m.dir, "model", 1, false)?;
        let trained = Predictor::load(&m.dir, &device)?;
        let data = find_input(&m.name, InputRef::of_model(&trained.card), &s.data)?;
        if trained.card.classes.len() != trained.output_dim() && trained.card.task != Task::Latlon {
            return Err(Error::Data(format!(
                "model `{}`: {} classes, {} outputs",
                m.name,
                trained.card.classes.len(),
                trained.output_dim()
            )));
        }
        let untrained = trained.untrained()?;
        let country_classes = trained.card.task == Task::Country;
        if country_classes && trained.card.classes != truth.classes {
            return Err(Error::Data(format!(
                "model `{}` classifies {:?}, the samples' classes are {:?}",
                m.name, trained.card.classes, truth.classes
            )));
        }
        let how = Deciding {
            cfg,
            country_classes,
        };
        let bar = ctx.progress_bar(&format!("evaluate {}", m.name), 0, "rows");
        let scorers = [Scorer::Head(&trained), Scorer::Head(&untrained)];
        let mut pp = score_test_photos(data, &truth, &scorers, &how, &bar)?;
        bar.finish_and_clear();
        let d0 = pp.pop().expect("two predictors");
        let d1 = pp.pop().expect("two predictors");
        let from = if country_classes { "class" } else { "location" };
        let missing = truth.ids.len() - d1.len();
        if missing == truth.ids.len() {
            return Err(Error::Data(format!(
                "model `{}`: its input `{}` has no row of any test photo",
                m.name, data.name
            )));
        }
        let result = ModelResult {
            name: m.name.clone(),
            task: task_name(trained.card.task),
            head: trained.card.head.kind().into(),
            input: data.name.clone(),
            missing_photos: missing,
            trained: score(&m.name, &d1, &truth, &radii, from),
            epoch0: Some(score(
                &format!("{} (0 epochs)", m.name),
                &d0,
                &truth,
                &radii,
                from,
            )),
        };
        let class = |c: usize| trained.card.classes.get(c).cloned();
        batches.push(prediction_batch(&m.name, &class, &d1, &truth)?);
        if cfg.run_files {
            run_files.push((m.name.clone(), run_file(&d1, &truth)));
        }
        histories.push((m.name.clone(), read_history(&m.dir)?));
        tracing::info!(
            model = %m.name,
            input = %data.name,
            seconds = format!("{:.2}", tm.elapsed().as_secs_f64()),
            "scored"
        );
        results.push(result);
    }
    // Indexes a refinement searches again are kept, not read twice.
    let mut kept: HashMap<&str, Index> = HashMap::new();
    for ix in &s.indexes {
        let tm = Instant::now();
        geoloc_core::artifact::open(&ix.dir, "index", 1, false)?;
        let index = Index::load(&ix.dir).map_err(|e| Error::Data(e.to_string()))?;
        let data = find_input(&ix.name, InputRef::of_index(&index.card), &s.data)?;
        let how = Deciding {
            cfg,
            country_classes: false,
        };
        let bar = ctx.progress_bar(&format!("evaluate {}", ix.name), 0, "rows");
        let d = score_test_photos(data, &truth, &[Scorer::Index(&index)], &how, &bar)?
            .pop()
            .unwrap_or_default();
        bar.finish_and_clear();
        let missing = truth.ids.len() - d.len();
        if missing == truth.ids.len() {
            return Err(Error::Data(format!(
                "index `{}`: its input `{}` has no row of any test photo",
                ix.name, data.name
            )));
        }
        let result = ModelResult {
            name: ix.name.clone(),
            task: "location".into(),
            head: "knn".into(),
            input: data.name.clone(),
            missing_photos: missing,
            trained: score(&ix.name, &d, &truth, &radii, "location"),
            epoch0: None,
        };
        let neighbour = |r: usize| Some(index.id(r as u32).to_owned());
        batches.push(prediction_batch(&ix.name, &neighbour, &d, &truth)?);
        if cfg.run_files {
            run_files.push((ix.name.clone(), run_file(&d, &truth)));
        }
        tracing::info!(
            index = %ix.name,
            input = %data.name,
            photos = index.len(),
            seconds = format!("{:.2}", tm.elapsed().as_secs_f64()),
            "searched"
        );
        results.push(result);
        if cfg.refine.iter().any(|rf| rf.index == ix.name) {
            kept.insert(&ix.name, index);
        }
    }
    for (rf, name) in cfg.refine.iter().zip(cfg.refine_names()?) {
        let tm = Instant::now();
        // check_refine has found both and checked them.
        let head_in = s
            .models
            .iter()
            .find(|i| i.name == rf.model)
            .ok_or_else(|| Error::Config(format!("refine `{name}`: no model `{}`", rf.model)))?;
        let head = Predictor::load(&head_in.dir, &device)?;
        let index = kept
            .get(rf.index.as_str())
            .ok_or_else(|| Error::Config(format!("refine `{name}`: no index `{}`", rf.index)))?;
        let data = find_input(&rf.model, InputRef::of_model(&head.card), &s.data)?;
        let lookup = geoloc_models::geocells::Partition::from_tokens(&head.card.classes)
            .map_err(|e| Error::Data(format!("refine `{name}`: {e}")))?;
        let cell_of_row = index.classes_of_rows(|lat, lon| lookup.locate(lat, lon));
        let how = Deciding {
            cfg,
            country_classes: false,
        };
        let scorer = Scorer::Refined {
            head: &head,
            index,
            cells: rf.cells,
            cell_of_row: &cell_of_row,
        };
        let bar = ctx.progress_bar(&format!("evaluate {name}"), 0, "rows");
        let d = score_test_photos(data, &truth, &[scorer], &how, &bar)?
            .pop()
            .unwrap_or_default();
        bar.finish_and_clear();
        let result = ModelResult {
            name: name.clone(),
            task: "location".into(),
            head: format!("{} refined by knn", head.card.head.kind()),
            input: data.name.clone(),
            missing_photos: truth.ids.len() - d.len(),
            trained: score(&name, &d, &truth, &radii, "location"),
            epoch0: None,
        };
        // A photo's top-k: the nearest train photos inside its cells (or, where none, the
        // head's cells).
        let label = |r: usize| Some(index.id(r as u32).to_owned());
        batches.push(prediction_batch(&name, &label, &d, &truth)?);
        if cfg.run_files {
            run_files.push((name.clone(), run_file(&d, &truth)));
        }
        tracing::info!(
            refined = %name,
            seconds = format!("{:.2}", tm.elapsed().as_secs_f64()),
            "searched within cells"
        );
        results.push(result);
    }
    let metrics = Metrics {
        distance: cfg.distance,
        radii_km: radii.clone(),
        classes: truth.classes.clone(),
        test_photos: truth.ids.len(),
        models: results,
        baselines: baselines(&truth, cfg, &radii),
    };

    write_predictions(&dir.join(PREDICTIONS_FILE), &batches)?;
    let json = serde_json::to_vec_pretty(&metrics).map_err(|e| Error::Data(e.to_string()))?;
    geoloc_core::dataset::write_atomic(dir, METRICS_FILE, &json)?;
    if cfg.run_files {
        std::fs::create_dir_all(dir.join("runs")).map_err(|e| Error::io(dir.join("runs"), e))?;
        for (name, text) in &run_files {
            geoloc_core::dataset::write_atomic(
                &dir.join("runs"),
                &format!("{name}.txt"),
                text.as_bytes(),
            )?;
        }
    }
    if cfg.report {
        let title = cfg
            .title
            .clone()
            .unwrap_or_else(|| format!("geoloc evaluation: {}", ctx_name(ctx)));
        let tr = Instant::now();
        let points = report::points(&batches);
        report::write(dir, &title, &metrics, &histories, &points)?;
        tracing::info!(
            seconds = format!("{:.2}", tr.elapsed().as_secs_f64()),
            "report written"
        );
    }
    Ok(Summary {
        models: metrics.models.len(),
        test_photos: metrics.test_photos,
        results: metrics
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.trained.country.as_ref().map(|c| c.accuracy),
                    m.trained.location.as_ref().map(|l| l.median_km),
                )
            })
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn ctx_name(ctx: &Context) -> String {
    ctx.out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| KIND.into())
}

/// What a model or index card records of the dataset it was built from.
struct InputRef<'a> {
    fingerprint: Option<&'a str>,
    /// Column checksums (empty in cards written before they were recorded).
    columns: &'a BTreeMap<String, String>,
    metadata: &'a serde_json::Value,
    kind: &'a str,
}

impl<'a> InputRef<'a> {
    fn of_model(c: &'a geoloc_models::card::ModelCard) -> Self {
        InputRef {
            fingerprint: c.input_fingerprint.as_deref(),
            columns: &c.input_columns,
            metadata: &c.input,
            kind: &c.input_kind,
        }
    }

    fn of_index(c: &'a geoloc_models::retrieval::IndexCard) -> Self {
        InputRef {
            fingerprint: c.input_fingerprint.as_deref(),
            columns: &c.input_columns,
            metadata: &c.input,
            kind: &c.input_kind,
        }
    }
}

/// The data input a model or index was built from: the one with its recorded fingerprint,
/// else the one with its recorded content (column checksums: a dataset recomputed to equal
/// values gets a new fingerprint, and the runner leaves what was trained on it fresh); cards
/// without either are matched by the input's metadata.
fn find_input<'a>(name: &str, want: InputRef<'_>, data: &[&'a Input]) -> Result<&'a Input, Error> {
    let found: Vec<&&Input> = data
        .iter()
        .filter(|d| match want.fingerprint {
            Some(f) => {
                d.manifest.info.fingerprint == f
                    || (!want.columns.is_empty() && d.manifest.columns == *want.columns)
            }
            None => d.manifest.info.metadata == *want.metadata,
        })
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(Error::Config(format!(
            "model `{}` was trained on a {} dataset (fingerprint {}) that is not among \
             evaluate's inputs ({}); add the instance it was trained on",
            name,
            want.kind,
            want.fingerprint.unwrap_or("not recorded"),
            data.iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Ok(found[0]),
    }
}

/// The history of a model directory: (epoch, train loss, train acc, val loss, val acc,
/// val median km) rows.
pub(crate) type History = Vec<[Option<f64>; 6]>;

fn read_history(dir: &Path) -> Result<History, Error> {
    let path = dir.join(geoloc_models::card::HISTORY_FILE);
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let perr = |e: parquet::errors::ParquetError| Error::Data(format!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(perr)?
        .build()
        .map_err(perr)?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        let col = |name: &str| -> Option<Vec<Option<f64>>> {
            let c = b.column_by_name(name)?;
            let c = arrow::compute::cast(c, &DataType::Float64).ok()?;
            let c = c.as_primitive::<Float64Type>();
            Some(
                (0..c.len())
                    .map(|i| (!c.is_null(i)).then(|| c.value(i)))
                    .collect(),
            )
        };
        let names = [
            "epoch",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_median_km",
        ];
        let cols: Vec<Vec<Option<f64>>> = names
            .iter()
            .map(|n| col(n).unwrap_or_else(|| vec![None; b.num_rows()]))
            .collect();
        out.extend((0..b.num_rows()).map(|i| std::array::from_fn(|k| cols[k][i])));
    }
    Ok(out)
}

/// The prediction rows of one predictor; `class` names a top-k entry (a class, or for an
/// index the neighbour's photo id).
fn prediction_batch(
    model: &str,
    class: &dyn Fn(usize) -> Option<String>,
    decided: &[Decided],
    truth: &Truth,
) -> Result<RecordBatch, Error> {
    let tclass = |ph: usize| truth.labels[ph].map(|l| truth.classes[l].clone());
    let mut top_c = ListBuilder::new(StringBuilder::new());
    let mut top_p = ListBuilder::new(Float32Builder::new());
    for d in decided {
        for &(c, pr) in &d.top {
            top_c.values().append_option(class(c));
            top_p.values().append_value(pr);
        }
        top_c.append(true);
        top_p.append(true);
    }
    let f64s = |f: &dyn Fn(&Decided) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(
            decided.iter().map(f).collect::<Vec<_>>(),
        ))
    };
    let strs = |f: &dyn Fn(&Decided) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(decided.iter().map(f).collect::<Vec<_>>()))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![model; decided.len()])),
        Arc::new(StringArray::from(
            decided
                .iter()
                .map(|d| truth.ids[d.photo].as_str())
                .collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from(
            decided.iter().map(|d| d.views).collect::<Vec<_>>(),
        )),
        strs(&|d| tclass(d.photo)),
        f64s(&|d| truth.coords[d.photo].map(|c| c[0])),
        f64s(&|d| truth.coords[d.photo].map(|c| c[1])),
        strs(&|d| d.top.first().and_then(|t| class(t.0))),
        Arc::new(top_c.finish()),
        Arc::new(top_p.finish()),
        f64s(&|d| d.location.map(|l| l[0])),
        f64s(&|d| d.location.map(|l| l[1])),
        strs(&|d| {
            Some(match d.country {
                Some(c) => truth.classes[c].clone(),
                None => "other".into(),
            })
        }),
        f64s(&|d| d.error_km),
    ];
    RecordBatch::try_new(schema(), cols).map_err(|e| Error::Data(e.to_string()))
}

fn write_predictions(path: &Path, batches: &[RecordBatch]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".predictions.parquet.tmp");
    Ok(geoloc_core::dataset::commit_file(
        &tmp,
        path,
        "the predictions",
        |tmp| {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let f = std::fs::File::create(tmp)?;
            let mut w = parquet::arrow::ArrowWriter::try_new(f, schema(), Some(props))?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
            Ok(())
        },
    )?)
}

/// A MediaEval run file: `hash;lat;lon` per predicted photo, in test order.
fn run_file(decided: &[Decided], truth: &Truth) -> String {
    let mut s = String::new();
    for d in decided {
        if let Some(l) = d.location {
            s += &format!("{};{:.6};{:.6}\n", truth.ids[d.photo], l[0], l[1]);
        }
    }
    s
}

/// The files of the committed directory (those that exist).
fn output_files(dir: &Path) -> Vec<String> {
    let mut files = vec![PREDICTIONS_FILE.to_string(), METRICS_FILE.to_string()];
    for sub in ["plots", "runs"] {
        let d = dir.join(sub);
        if let Ok(rd) = std::fs::read_dir(&d) {
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .map(|n| format!("{sub}/{n}"))
                .collect();
            names.sort();
            files.extend(names);
        }
    }
    for f in [REPORT_MD, REPORT_HTML] {
        if dir.join(f).exists() {
            files.push(f.into());
        }
    }
    files
}

/// Commits the output directory: every file listed with its blake3.
pub fn finalize(
    cfg: &Config,
    ctx: &Context,
    ins: &[Input],
    shards: u32,
) -> Result<Manifest, Error> {
    if shards != 1 {
        return Err(Error::Config(format!(
            "evaluate runs as one process, not {shards} shards"
        )));
    }
    let dir = &ctx.out_dir;
    let bytes = std::fs::read(dir.join(METRICS_FILE)).map_err(|e| Error::io(dir, e))?;
    let metrics: Metrics =
        serde_json::from_slice(&bytes).map_err(|e| Error::Data(format!("metrics.json: {e}")))?;
    let files = output_files(dir);
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let info = ManifestInfo {
        stage: KIND.into(),
        stage_format_version: FORMAT_VERSION,
        fingerprint: fingerprint(cfg, ctx, ins)?,
        config: serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?,
        build: ctx.build.clone(),
        metadata: json!({
            "test_photos": metrics.test_photos,
            "models": metrics.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            "distance": metrics.distance,
        }),
    };
    Ok(geoloc_core::artifact::commit(
        dir,
        SCHEMA,
        SCHEMA_VERSION,
        &refs,
        info,
    )?)
}

/// Opens a committed evaluation directory (manifest and files checked).
pub fn open(dir: &Path) -> Result<Manifest, Error> {
    Ok(geoloc_core::artifact::open(
        dir,
        SCHEMA,
        SCHEMA_VERSION,
        false,
    )?)
}

/// Reads a committed evaluation's `metrics.json`.
pub fn read_metrics(dir: &Path) -> Result<Metrics, Error> {
    open(dir)?;
    let p = dir.join(METRICS_FILE);
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Data(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refined_predictors_are_named_and_names_do_not_repeat() {
        let cfg: Config = toml::from_str(
            r#"refine = [{ model = "geocells", index = "knn" }, { model = "geocells", index = "knn", cells = 1, name = "top1" }]"#,
        )
        .unwrap();
        assert_eq!(cfg.refine[0].cells, 5);
        assert_eq!(cfg.refine_names().unwrap(), ["geocells+knn", "top1"]);
        let twice: Config = toml::from_str(
            r#"refine = [{ model = "geocells", index = "knn" }, { model = "geocells", index = "knn", cells = 1 }]"#,
        )
        .unwrap();
        let e = twice.refine_names().unwrap_err().to_string();
        assert!(e.contains("two entries are named `geocells+knn`"), "{e}");
    }

    /// Antimeridian and pole cases, under all three distances.
    #[test]
    fn errors_across_the_antimeridian_and_at_the_poles() {
        use DistanceMetric::*;
        // One degree of longitude across the antimeridian at the equator: 111.19 km.
        let one_deg = 6371.0 * std::f64::consts::PI / 180.0;
        for m in [Haversine, Equirectangular] {
            let d = error_km(m, [0.0, 179.5], [0.0, -179.5]);
            assert!((d - one_deg).abs() < 1e-6, "{m}: {d}");
        }
        let d = error_km(Geodesic, [0.0, 179.5], [0.0, -179.5]);
        assert!((d - 111.32).abs() < 0.01, "geodesic {d}"); // the WGS84 equator is longer
                                                            // The pole is one point whatever the longitude.
        for m in [Haversine, Geodesic] {
            let d = error_km(m, [90.0, 0.0], [90.0, 180.0]);
            assert!(d.abs() < 1e-6, "{m}: {d}");
        }
        // Across the pole: 89N 0E to 89N 180E is two degrees of arc over the pole.
        let d = error_km(Haversine, [89.0, 0.0], [89.0, 180.0]);
        assert!((d - 2.0 * one_deg).abs() < 1e-6, "{d}");
        // The paper's approximation goes around instead: 180 degrees at cos(89).
        let d = error_km(Equirectangular, [89.0, 0.0], [89.0, 180.0]);
        let around = 180.0 * 89f64.to_radians().cos() * one_deg;
        assert!((d - around).abs() < 1e-6, "{d} vs {around}");
        // (0, 0), refused as a location by LatLon::new, is measured.
        let d = error_km(Haversine, [0.0, 0.0], [0.0, 1.0]);
        assert!((d - one_deg).abs() < 1e-6);
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.radii().unwrap(), DEFAULT_RADII_KM.to_vec());
        let c: Config = toml::from_str("radii_km = [100.0, 1.0, 1.0]").unwrap();
        assert_eq!(c.radii().unwrap(), vec![1.0, 100.0]);
        let c: Config = toml::from_str("radii_km = [-1.0]").unwrap();
        assert!(c.radii().unwrap_err().to_string().contains("positive"));
        assert!(toml::from_str::<Config>("distance = \"manhattan\"").is_err());
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }
}
