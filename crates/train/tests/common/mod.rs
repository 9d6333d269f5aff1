//! Generated datasets for the train tests: samples, features and images written through
//! the real dataset writer and committed, as the upstream stages would.
#![allow(dead_code)]

use arrow::array::{
    ArrayRef, FixedSizeBinaryArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array,
    RecordBatch, StringArray, UInt8Array,
};
use arrow::datatypes::{DataType, Field};
use geoloc_core::dataset::{self, DatasetWriter, Manifest, ManifestInfo, WriterOptions};
use geoloc_core::schema::{self, DatasetSchema};
use geoloc_core::shard::Shard;
use geoloc_core::stage::{Context, Input};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

/// One generated photo.
#[derive(Debug, Clone)]
pub struct Photo {
    pub id: String,
    pub split: &'static str,
    pub label: Option<i32>,
    pub lat: f64,
    pub lon: f64,
}

fn commit(
    dir: &Path,
    s: &DatasetSchema,
    batch: RecordBatch,
    metadata: serde_json::Value,
    stage: &str,
) -> Input {
    let mut w = DatasetWriter::create(
        dir,
        s.clone(),
        Shard::ALL,
        WriterOptions {
            format: if s.name == "images" {
                dataset::PartFormat::ArrowIpc
            } else {
                dataset::PartFormat::Parquet
            },
            ..Default::default()
        },
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish(metadata).unwrap();
    let m: Manifest = dataset::finalize(
        dir,
        s,
        1,
        ManifestInfo {
            stage: stage.into(),
            stage_format_version: 1,
            fingerprint: format!("test-{}", s.name),
            config: json!({}),
            build: "test".into(),
            metadata: serde_json::Value::Null,
        },
    )
    .unwrap();
    Input {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.to_owned(),
        manifest: m,
    }
}

/// A samples dataset with the given class list.
pub fn samples(dir: &Path, photos: &[Photo], classes: &[&str]) -> Input {
    let s = schema::samples();
    let n = photos.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            photos.iter().map(|p| p.id.clone()),
        )),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(Float64Array::from_iter_values(photos.iter().map(|p| p.lat))),
        Arc::new(Float64Array::from_iter_values(photos.iter().map(|p| p.lon))),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from(
            photos
                .iter()
                .map(|p| p.label.map(|l| classes[l as usize]))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from_iter_values(
            photos.iter().map(|p| format!("{}.jpg", p.id)),
        )),
        Arc::new(StringArray::from_iter_values(
            photos.iter().map(|p| p.split),
        )),
        Arc::new(Int32Array::from(
            photos.iter().map(|p| p.label).collect::<Vec<_>>(),
        )),
    ];
    let b = RecordBatch::try_new(s.arrow.clone(), cols).unwrap();
    commit(dir, &s, b, json!({"classes": classes}), "ingest")
}

/// A features dataset: one row per (photo, view).
pub fn features(dir: &Path, rows: &[(String, u8, Vec<f32>)]) -> Input {
    let dim = rows[0].2.len();
    let s = schema::features(dim);
    let values = Float32Array::from_iter_values(rows.iter().flat_map(|r| r.2.iter().copied()));
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        dim as i32,
        Arc::new(values),
        None,
    )
    .unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.clone()),
        )),
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(list),
    ];
    let b = RecordBatch::try_new(s.arrow.clone(), cols).unwrap();
    commit(
        dir,
        &s,
        b,
        json!({"dim": dim, "backbone": "test", "layer": "test", "weights_blake3": "none"}),
        "featurize",
    )
}

/// An images dataset of `w` x `h` RGB rows (view 0).
pub fn images(dir: &Path, w: u32, h: u32, rows: &[(String, Vec<u8>)]) -> Input {
    let s = schema::images(w, h);
    let px = FixedSizeBinaryArray::try_from_iter(rows.iter().map(|r| r.1.clone())).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.clone()),
        )),
        Arc::new(UInt8Array::from(vec![0u8; rows.len()])),
        Arc::new(px),
    ];
    let b = RecordBatch::try_new(s.arrow.clone(), cols).unwrap();
    commit(dir, &s, b, json!({"width": w, "height": h}), "preprocess")
}

pub fn context(out: &Path) -> Context {
    Context {
        root: out.parent().unwrap().to_owned(),
        out_dir: out.to_owned(),
        shard: Shard::ALL,
        build: "test".into(),
        progress: false,
        recompute: false,
    }
}

/// The split of the i-th photo: 80% train, 20% val (independent of `i % 5`, the classes).
pub fn split(i: usize) -> &'static str {
    if (i / 5) % 5 == 4 {
        "val"
    } else {
        "train"
    }
}

/// Oriented stripes for class `c` of `classes`: the orientation carries the class, while
/// both colours, the stripes' period and phase, and pixel noise are random per image, so no
/// colour statistic tells the classes apart.
pub fn stripes(
    w: usize,
    h: usize,
    c: usize,
    classes: usize,
    rng: &mut geoloc_core::rng::SplitMix64,
) -> Vec<u8> {
    let angle = std::f64::consts::PI * c as f64 / classes as f64 + (rng.uniform() - 0.5) * 0.15;
    let period = 4.0 + rng.uniform() * 4.0;
    let phase = rng.uniform() * std::f64::consts::TAU;
    let a: [f64; 3] = [
        rng.uniform() * 255.0,
        rng.uniform() * 255.0,
        rng.uniform() * 255.0,
    ];
    let b: [f64; 3] = [
        rng.uniform() * 255.0,
        rng.uniform() * 255.0,
        rng.uniform() * 255.0,
    ];
    let (s, co) = angle.sin_cos();
    let mut px = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let t = ((x as f64 * co + y as f64 * s) / period * std::f64::consts::TAU + phase).sin()
                * 0.5
                + 0.5;
            for k in 0..3 {
                let v = a[k] * t + b[k] * (1.0 - t) + rng.normal() * 12.0;
                px.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    px
}
