//! The preprocess stage end to end through the real binary, on the generated demo photos
//! (which include a missing, an empty, a truncated and a greyscale one, and a PNG named
//! `.jpg`).

mod support;

use arrow::array::AsArray;
use arrow::datatypes::UInt8Type;
use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use std::collections::BTreeMap;
use support::{demo_project, geoloc, stdout};

/// (id, view) -> pixels.
type Pixels = BTreeMap<(String, u8), Vec<u8>>;

/// The pixels of an images dataset, and its ids in stored order.
fn rows(dir: &std::path::Path) -> (Pixels, Vec<String>) {
    let ds = geoloc_preprocess::open(dir).expect("committed images dataset");
    ds.verify().unwrap();
    let mut m = BTreeMap::new();
    let mut order = Vec::new();
    for b in ds.read_all().unwrap() {
        let id = b.column(0).as_string::<i32>();
        let view = b.column(1).as_primitive::<UInt8Type>();
        let px = b.column(2).as_fixed_size_binary();
        for i in 0..b.num_rows() {
            order.push(id.value(i).to_owned());
            m.insert(
                (id.value(i).to_owned(), view.value(i)),
                px.value(i).to_vec(),
            );
        }
    }
    (m, order)
}

#[test]
fn preprocess_writes_pixels_rejects_broken_photos_and_shards_alike() {
    let p = demo_project(600);
    let root = p.path();
    let pipe = support::PIXEL_DEMO;
    geoloc(&["run", pipe, "--only", "ingest"], root, &[], true);
    let out = stdout(&geoloc(
        &["preprocess", "--pipeline", pipe, "--instance", "crop224"],
        root,
        &[],
        true,
    ));
    assert!(out.contains("committed"), "{out}");

    let dir = root.join("runs/demo/crop224");
    let (single, order) = rows(&dir);
    let ds = geoloc_preprocess::open(&dir).unwrap();
    let meta = &ds.manifest.info.metadata;
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(224), Some(224))
    );
    assert!(single.values().all(|p| p.len() == 224 * 224 * 3));
    assert!(single.keys().all(|(_, v)| *v == 0));

    // Every samples row is either a pixels row or a reject, in samples order.
    let samples = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    let mut ids = Vec::new();
    for b in samples.read_all().unwrap() {
        let c = b.column(0).as_string::<i32>();
        ids.extend((0..b.num_rows()).map(|i| c.value(i).to_owned()));
    }
    let mut reasons = BTreeMap::new();
    let mut rejected = Vec::new();
    for b in ds.read_rejects().unwrap() {
        let id = b.column(0).as_string::<i32>();
        let reason = b.column(3).as_string::<i32>();
        for i in 0..b.num_rows() {
            *reasons.entry(reason.value(i).to_owned()).or_insert(0) += 1;
            rejected.push(id.value(i).to_owned());
        }
    }
    let kept: Vec<&String> = ids.iter().filter(|i| !rejected.contains(i)).collect();
    assert_eq!(
        order.iter().collect::<Vec<_>>(),
        kept,
        "samples order, rejects left out"
    );
    // The planted faults that survived ingest's filters (which ones do depends on the
    // balancing): each with its own reason, and nothing else rejected.
    let allowed = ["missing-file", "empty-file", "truncated-image", "greyscale"];
    assert!(
        reasons.keys().all(|r| allowed.contains(&r.as_str())),
        "{reasons:?}"
    );
    assert!(!reasons.is_empty(), "{reasons:?}");
    assert_eq!(ds.manifest.rows as usize + rejected.len(), ids.len());

    // Pixels are not a constant: a real photo went through.
    let first = single.values().next().unwrap();
    let mean = first.iter().map(|&v| v as f64).sum::<f64>() / first.len() as f64;
    let var = first
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / first.len() as f64;
    assert!(var > 100.0, "variance {var}");

    // Two shards and a finalize give the same rows, bit for bit, and the same checksums.
    // They write to another runs dir, which gets a copy of the committed samples.
    support::copy_dir(&root.join("runs/demo/ingest"), &root.join("sharded/ingest"));
    for s in ["0/2", "1/2"] {
        geoloc(
            &[
                "preprocess",
                "--pipeline",
                pipe,
                "--instance",
                "crop224",
                "--shard",
                s,
                "--runs-dir",
                "sharded",
            ],
            root,
            &[],
            true,
        );
    }
    // Not committed until finalize.
    assert!(geoloc_preprocess::open(&root.join("sharded/crop224")).is_err());
    geoloc(
        &[
            "finalize",
            pipe,
            "--instance",
            "crop224",
            "--shards",
            "2",
            "--runs-dir",
            "sharded",
        ],
        root,
        &[],
        true,
    );
    let (two, _) = rows(&root.join("sharded/crop224"));
    assert_eq!(two, single);
    let two_ds = geoloc_preprocess::open(&root.join("sharded/crop224")).unwrap();
    assert_eq!(two_ds.manifest.columns, ds.manifest.columns);
    assert_eq!(two_ds.manifest.shards, 2);
}

#[test]
fn changing_splits_reruns_no_preprocess_but_a_changed_photo_does() {
    let p = demo_project(400);
    let root = p.path();
    let pipe = "pipelines/demo.toml";
    let text = std::fs::read_to_string(root.join(pipe)).unwrap();
    // Keep the test quick: only the smallest geometry.
    let text = text
        .split("[stages.squash52x48]")
        .next()
        .unwrap()
        .to_string()
        + "[stages.small]\nkind = \"preprocess\"\ninputs = [\"ingest\"]\n[stages.small.config]\ngeometry = { kind = \"squash\", width = 52, height = 48 }\n"
        + "[stages.five]\nkind = \"preprocess\"\ninputs = [\"ingest\"]\n[stages.five.config]\ngeometry = { kind = \"resize-crop\", resize = 64, crop = 48 }\nviews = { kind = \"five-crop\" }\npart_cap_mb = 1\n";
    std::fs::write(root.join(pipe), &text).unwrap();
    let out = stdout(&geoloc(&["run", pipe], root, &[], true));
    assert!(out.contains("small: ran"), "{out}");

    // Five views per photo, numbered 0-4; parts closed at the 1 MB cap.
    let (five, order) = rows(&root.join("runs/demo/five"));
    let small = geoloc_preprocess::open(&root.join("runs/demo/small")).unwrap();
    let five_ds = geoloc_preprocess::open(&root.join("runs/demo/five")).unwrap();
    assert_eq!(five.len() as u64, 5 * small.manifest.rows);
    assert_eq!(five_ds.manifest.info.metadata["view_count"], 5);
    for (id, _) in five.keys().filter(|(_, v)| *v == 0) {
        for v in 1..5u8 {
            assert!(five.contains_key(&(id.clone(), v)), "{id} view {v}");
        }
        // Corners differ from the centre: the views are real windows.
        assert_ne!(five[&(id.clone(), 0)], five[&(id.clone(), 1)]);
    }
    // A photo's five rows are stored together.
    assert!(order.chunks(5).all(|c| c.iter().all(|id| *id == c[0])));
    // A part is closed once it holds 1 MB, after the chunk (64 photos x 5 views) that
    // crossed the cap: every part but the last holds between 1 MB and 1 MB + one chunk.
    let parts = &five_ds.manifest.parts;
    let chunk = 64 * 5 * 48 * 48 * 3;
    assert!(parts.len() > 2, "{} parts", parts.len());
    for p in &parts[..parts.len() - 1] {
        assert!(
            p.bytes >= 1 << 20 && p.bytes < (1 << 20) + chunk + 65536,
            "{}: {}",
            p.file,
            p.bytes
        );
    }

    // New split fractions: ingest reruns, preprocess does not (it reads id and image only).
    std::fs::write(
        root.join(pipe),
        text.replace(
            "split = { train = 0.9, val = 0.1 }",
            "split = { train = 0.8, val = 0.2 }",
        ),
    )
    .unwrap();
    let out = stdout(&geoloc(&["run", pipe], root, &[], true));
    assert!(out.contains("ingest: ran"), "{out}");
    assert!(
        out.contains("small: fresh") && out.contains("five: fresh"),
        "{out}"
    );

    // A photo rewritten with other bytes: preprocess is stale, with the reason.
    let ds = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    let b = &ds.read_all().unwrap()[0];
    let image = b.column(7).as_string::<i32>().value(20).to_owned();
    let path = root.join("data/demo/images").join(&image);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"trailing bytes");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, bytes).unwrap();
    let st = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(
        st.lines()
            .any(|l| l.starts_with("small") && l.contains("stale: its inputs changed")),
        "{st}"
    );
}

#[test]
fn preprocess_from_a_config_file_and_clear_config_errors() {
    let p = demo_project(300);
    let root = p.path();
    geoloc(
        &["run", "pipelines/demo.toml", "--only", "ingest"],
        root,
        &[],
        true,
    );
    std::fs::write(
        root.join("small.toml"),
        "geometry = { kind = 'squash', width = 52, height = 48 }\ngreyscale = 'convert'\nimages_root = 'data/demo/images'\n",
    )
    .unwrap();
    let out = stdout(&geoloc(
        &[
            "preprocess",
            "--config",
            "small.toml",
            "--input",
            "runs/demo/ingest",
            "--out",
            "mine/small",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("committed"), "{out}");
    let ds = geoloc_preprocess::open(&root.join("mine/small")).unwrap();
    assert_eq!(ds.manifest.info.metadata["width"], 52);
    // greyscale = convert: the planted greyscale photo, if ingest kept it, is not a reject.
    for b in ds.read_rejects().unwrap() {
        let reason = b.column(3).as_string::<i32>();
        assert!((0..b.num_rows()).all(|i| reason.value(i) != "greyscale"));
    }

    for (text, needle) in [
        ("geometry = { kind = 'squash', width = 0, height = 48 }", "squash needs sizes"),
        ("geometry = { kind = 'resize-crop', resize = 200, crop = 224 }", "crop <= resize"),
        ("geometry = { kind = 'squash', width = 52, height = 48 }\nviews = { kind = 'ten-crop' }", "only the centre view"),
        ("geometry = { kind = 'circle' }", "parsing bad.toml"),
    ] {
        std::fs::write(root.join("bad.toml"), text).unwrap();
        let err = support::stderr(&geoloc(
            &["preprocess", "--config", "bad.toml", "--input", "runs/demo/ingest", "--out", "mine/bad"],
            root,
            &[],
            false,
        ));
        assert!(err.starts_with("error: ") && err.contains(needle), "{text}: {err}");
    }
}
