//! Retrieval end to end on real photos: the shared geotagged photos are the train split,
//! re-encoded, cropped and shrunk copies of some of them the test split; the index (train's
//! head `knn`) over Lite0 features from photos must place every copy within 1 km of its
//! original, with the original as its nearest neighbour.

mod support;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use support::{geoloc, stdout};

const PIPE: &str = r#"
[pipeline]
name = "near"
root = ".."

[stages.ingest]
kind = "ingest"

[stages.ingest.config]
images_root = "."

[[stages.ingest.config.sources]]
format = "csv"
path = "train.csv"
split = "train"

[[stages.ingest.config.sources]]
format = "csv"
path = "test.csv"
split = "test"

[stages.lite0]
kind = "featurize"
inputs = ["ingest"]

[stages.lite0.config]
backbone = "lite0"
layer = "pool"
weights = "data/weights/efficientnet-lite0.pth"
geometry = { kind = "resize-crop", resize = 224, crop = 224 }

[stages.knn]
kind = "train"
inputs = ["lite0", "ingest"]

[stages.knn.config]
head = "knn"

[stages.evaluate]
kind = "evaluate"
inputs = ["ingest", "lite0", "knn"]
"#;

/// A copy of `src` changed the way photos are when they are shared again: `how` 0 re-encodes
/// at JPEG quality 40, 1 crops the centre 80% and re-encodes, 2 halves the size.
fn altered(src: &Path, dst: &Path, how: usize) {
    let img = image::open(src).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let img = match how {
        0 => img,
        1 => image::imageops::crop_imm(&img, w / 10, h / 10, w * 8 / 10, h * 8 / 10).to_image(),
        _ => image::imageops::resize(&img, w / 2, h / 2, image::imageops::FilterType::Triangle),
    };
    let mut out = std::fs::File::create(dst).unwrap();
    let q = if how == 0 { 40 } else { 85 };
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q)
        .encode_image(&img)
        .unwrap();
}

#[test]
fn a_near_duplicate_of_a_train_photo_is_placed_at_it() {
    if support::lite0().is_none() {
        return;
    }
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let photos = shared.join("data/photos");
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::create_dir_all(root.join("dups")).unwrap();
    std::fs::write(root.join("pipelines/near.toml"), PIPE).unwrap();
    std::os::unix::fs::symlink(&photos, root.join("orig")).unwrap();
    support::link_weights(root);

    // Every shared photo with coordinates is a train photo; every seventh colour JPEG of at
    // least 320 px gets an altered copy in the test split, at the original's coordinates.
    // The search and the vote run with their defaults (k = 20, 25 km, temperature 0.02).
    let mut rdr = csv::Reader::from_path(photos.join("manifest.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = |n: &str| header.iter().position(|h| h == n).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let (file, lat, lon, format) = (col("file"), col("lat"), col("lon"), col("format"));
    // A file listed twice (two sequences' frames of one name, one file on disk) has no one
    // true location: left out.
    let mut listed: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *listed.entry(r[file].to_owned()).or_default() += 1;
    }
    let mut train = std::fs::File::create(root.join("train.csv")).unwrap();
    let mut test = std::fs::File::create(root.join("test.csv")).unwrap();
    writeln!(train, "IMG_FILE,LAT,LON").unwrap();
    writeln!(test, "IMG_FILE,LAT,LON").unwrap();
    let mut originals: HashMap<String, String> = HashMap::new();
    let mut jpegs = 0;
    for r in &rows {
        if r[lat].is_empty() || r[lon].is_empty() || listed[&r[file]] > 1 {
            continue;
        }
        let id = format!("orig/{}", &r[file]);
        writeln!(train, "{id},{},{}", &r[lat], &r[lon]).unwrap();
        if &r[format] != "JPEG" {
            continue;
        }
        let Ok(img) = image::open(photos.join(&r[file])) else {
            continue;
        };
        if img.color() != image::ColorType::Rgb8 || img.width().min(img.height()) < 320 {
            continue;
        }
        jpegs += 1;
        if jpegs % 7 != 1 {
            continue;
        }
        let how = originals.len() % 3;
        let dup = format!("dups/{}-{how}.jpg", originals.len());
        altered(&photos.join(&r[file]), &root.join(&dup), how);
        writeln!(test, "{dup},{},{}", &r[lat], &r[lon]).unwrap();
        originals.insert(dup, id);
    }
    drop((train, test));
    assert!(originals.len() >= 5, "{} near-duplicates", originals.len());

    let out = stdout(&geoloc(&["run", "pipelines/near.toml"], root, &[], true));
    assert!(out.contains("knn: ran"), "{out}");
    assert!(out.contains("index of"), "{out}");
    let st = stdout(&geoloc(&["status", "pipelines/near.toml"], root, &[], true));
    assert!(st.contains("4 of 4 instances fresh"), "{st}");

    // Each copy: within 1 km of its original, and the original its nearest neighbour.
    let f = std::fs::File::open(root.join("runs/near/evaluate/predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut seen = 0;

    for b in reader {
        let b = b.unwrap();
        let model = b.column_by_name("model").unwrap().as_string::<i32>();
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        let err = b
            .column_by_name("error_km")
            .unwrap()
            .as_primitive::<Float64Type>();
        let top = b.column_by_name("top_classes").unwrap().as_list::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(model.value(i), "knn");
            let want = &originals[id.value(i)];
            let first = top.value(i);
            let first = first.as_string::<i32>();
            assert_eq!(
                first.value(0),
                want,
                "{}'s nearest train photo",
                id.value(i)
            );
            assert!(
                !err.is_null(i) && err.value(i) < 1.0,
                "{} placed {} km from its original",
                id.value(i),
                err.value(i)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, originals.len());
    let metrics = geoloc_evaluate::read_metrics(&root.join("runs/near/evaluate")).unwrap();
    let knn = &metrics.models[0];
    assert_eq!((knn.head.as_str(), knn.task.as_str()), ("knn", "location"));
    assert!(knn.epoch0.is_none());
    let report = std::fs::read_to_string(root.join("runs/near/evaluate/report.md")).unwrap();
    assert!(report.contains("knn"), "{report}");

    // A touched photo: the features are recomputed to equal values under a new fingerprint,
    // the index stays fresh, and evaluate, forced, still finds the features it was built
    // from (by their content) and scores the same.
    let before = support::evaluation_result(&root.join("runs/near/evaluate")).unwrap();
    let touched = root.join(originals.keys().next().unwrap());
    std::fs::File::options()
        .append(true)
        .open(&touched)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(60))
        .unwrap();
    let out = stdout(&geoloc(&["run", "pipelines/near.toml"], root, &[], true));
    assert!(out.contains("lite0: ran"), "{out}");
    assert_eq!(out.matches(": ran").count(), 1, "{out}");
    let out = stdout(&geoloc(
        &[
            "run",
            "pipelines/near.toml",
            "--force",
            "--only",
            "evaluate",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("evaluate: ran"), "{out}");
    let after = support::evaluation_result(&root.join("runs/near/evaluate")).unwrap();
    assert_eq!(before["files"], after["files"]);
}
