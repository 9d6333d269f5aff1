//! Runs the ingest stage on a config and reads its output back as plain rows.
#![allow(dead_code)]

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, UInt64Type};
use geoloc_core::dataset::{Dataset, Manifest};
use geoloc_core::schema;
use geoloc_core::shard::Shard;
use geoloc_core::stage::Context;
use geoloc_ingest::Config;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub user: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub country: Option<String>,
    pub country_code: Option<String>,
    pub place: Option<String>,
    pub image: String,
    pub split: String,
    pub label: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RejectRow {
    pub id: Option<String>,
    pub input: String,
    pub line: Option<u64>,
    pub reason: String,
    pub detail: String,
}

pub fn config(toml_text: &str) -> Config {
    toml::from_str(toml_text).expect("valid ingest config")
}

pub fn context(root: &Path, out: &Path, shard: Shard) -> Context {
    Context {
        root: root.to_owned(),
        out_dir: out.to_owned(),
        shard,
        build: "test".into(),
        progress: false,
        recompute: false,
    }
}

/// Runs all `shards` shards, finalizes, and reads the dataset.
pub fn ingest(
    cfg: &Config,
    root: &Path,
    out: &Path,
    shards: u32,
) -> (Manifest, Vec<Sample>, Vec<RejectRow>) {
    for i in 0..shards {
        let ctx = context(root, out, Shard::new(i, shards).unwrap());
        geoloc_ingest::run(cfg, &ctx).expect("ingest runs");
    }
    let ctx = context(root, out, Shard::ALL);
    geoloc_ingest::finalize(cfg, &ctx, shards).expect("finalize");
    read(out)
}

pub fn read(out: &Path) -> (Manifest, Vec<Sample>, Vec<RejectRow>) {
    let ds = Dataset::open(out, &schema::samples()).expect("dataset opens");
    let mut rows = Vec::new();
    for b in ds.read_all().unwrap() {
        let s = |i: usize| b.column(i).as_string::<i32>().clone();
        let f = |i: usize| b.column(i).as_primitive::<Float64Type>().clone();
        let (id, user, lat, lon, country, cc, place, image, split) =
            (s(0), s(1), f(2), f(3), s(4), s(5), s(6), s(7), s(8));
        let label = b.column(9).as_primitive::<Int32Type>().clone();
        let opt_s = |a: &arrow::array::StringArray, k: usize| {
            (!a.is_null(k)).then(|| a.value(k).to_owned())
        };
        let opt_f = |a: &arrow::array::Float64Array, k: usize| (!a.is_null(k)).then(|| a.value(k));
        for k in 0..b.num_rows() {
            rows.push(Sample {
                id: id.value(k).to_owned(),
                user: opt_s(&user, k),
                lat: opt_f(&lat, k),
                lon: opt_f(&lon, k),
                country: opt_s(&country, k),
                country_code: opt_s(&cc, k),
                place: opt_s(&place, k),
                image: image.value(k).to_owned(),
                split: split.value(k).to_owned(),
                label: (!label.is_null(k)).then(|| label.value(k)),
            });
        }
    }
    let mut rejects = Vec::new();
    for b in ds.read_rejects().unwrap() {
        let s = |i: usize| b.column(i).as_string::<i32>().clone();
        let (id, input, reason, detail) = (s(0), s(1), s(3), s(4));
        let line = b.column(2).as_primitive::<UInt64Type>().clone();
        for k in 0..b.num_rows() {
            rejects.push(RejectRow {
                id: (!id.is_null(k)).then(|| id.value(k).to_owned()),
                input: input.value(k).to_owned(),
                line: (!line.is_null(k)).then(|| line.value(k)),
                reason: reason.value(k).to_owned(),
                detail: detail.value(k).to_owned(),
            });
        }
    }
    (ds.manifest, rows, rejects)
}
