//! End to end through the real binary, over one shared run of the `tiny` demo (1500
//! generated rows) by the pipeline runner: what it committed, what it learned, the report,
//! and the runner's staleness on a copy of it.

mod support;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type};
use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use support::{geoloc, shared_tiny_demo, stdout};

const PIPE: &str = "pipelines/demo.toml";

/// Every instance of the demo pipeline, in file order.
const INSTANCES: [&str; 12] = [
    "ingest",
    "squash52x48",
    "lite0",
    "hog",
    "country",
    "latlon",
    "geocells",
    "geocells_smooth",
    "hog_svm",
    "small_cnn",
    "knn",
    "evaluate",
];

fn metrics(root: &Path) -> geoloc_evaluate::Metrics {
    geoloc_evaluate::read_metrics(&root.join("runs/demo/evaluate")).expect("committed metrics")
}

#[test]
fn every_manifest_is_complete_and_the_features_use_the_real_lite0() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let out = stdout(&geoloc(&["status", PIPE], &root, &[], true));
    assert!(out.contains("12 of 12 instances fresh"), "{out}");
    for name in INSTANCES {
        let dir = root.join("runs/demo").join(name);
        let m =
            geoloc_core::dataset::Manifest::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!m.info.fingerprint.is_empty(), "{name}");
    }
    // The committed samples: the paper's five countries, balanced, labelled, split.
    let ds = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    ds.verify().unwrap();
    assert_eq!(
        ds.manifest.info.metadata["classes"],
        serde_json::json!(["DE", "CA", "IT", "ES", "FR"])
    );
    let mut per_class: BTreeMap<i32, usize> = BTreeMap::new();
    let mut per_split: BTreeMap<String, usize> = BTreeMap::new();
    for b in ds.read_all().unwrap() {
        let labels = b.column(9).as_primitive::<Int32Type>();
        let splits = b.column(8).as_string::<i32>();
        for k in 0..b.num_rows() {
            assert!(!labels.is_null(k));
            *per_class.entry(labels.value(k)).or_default() += 1;
            *per_split.entry(splits.value(k).to_owned()).or_default() += 1;
        }
    }
    let counts: Vec<usize> = per_class.values().copied().collect();
    assert_eq!(counts.len(), 5);
    assert!(counts.iter().all(|&c| c == counts[0]), "{per_class:?}");
    assert!(counts[0] > 100, "{per_class:?}");
    assert_eq!(
        per_split.keys().cloned().collect::<Vec<_>>(),
        ["test", "train", "val"]
    );
    assert_eq!(
        ds.manifest.rejects, 5,
        "the generator plants five broken lines"
    );

    // Features from the real checkpoint, never silently random.
    let lite0 = support::lite0().unwrap();
    let m = geoloc_featurize::open(&root.join("runs/demo/lite0"))
        .unwrap()
        .manifest;
    assert_eq!(m.info.metadata["random_init"], serde_json::json!(false));
    assert_eq!(
        m.info.metadata["weights_blake3"].as_str(),
        Some(
            geoloc_models::backbone::weights_checksum(&lite0)
                .unwrap()
                .as_str()
        )
    );
    // Every head's model directory opens and names the features it read (its content too);
    // the index's card does the same.
    let mut heads = 0;
    for name in INSTANCES {
        let dir = root.join("runs/demo").join(name);
        match geoloc_train::open(&dir).map(|m| m.schema) {
            Ok(kind) if kind == "model" => {
                let card = geoloc_models::card::ModelCard::load(&dir).unwrap();
                assert!(card.train_rows > 500 && card.val_rows > 50, "{name}");
                assert!(card.input_fingerprint.is_some(), "{name}");
                assert!(
                    card.input_columns.contains_key("feature")
                        || card.input_columns.contains_key("pixels"),
                    "{name}"
                );
                heads += 1;
            }
            Ok(kind) => {
                assert_eq!((name, kind.as_str()), ("knn", "index"));
                let card = geoloc_models::retrieval::Index::load(&dir).unwrap().card;
                assert!(
                    card.input_fingerprint.is_some() && card.input_columns.contains_key("feature")
                );
            }
            // Not a train stage's output.
            Err(_) => {}
        }
    }
    assert_eq!(
        heads, 6,
        "country, latlon, geocells, geocells_smooth, hog_svm, small_cnn"
    );
    geoloc_evaluate::open(&root.join("runs/demo/evaluate")).unwrap();
}

#[test]
fn the_heads_beat_their_untrained_selves_and_the_trivial_predictors() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let m = metrics(&root);
    assert!(m.test_photos > 100, "{}", m.test_photos);
    let model = |n: &str| m.models.iter().find(|r| r.name == n).unwrap();
    let prior = m
        .baselines
        .iter()
        .find(|b| b.name.starts_with("class prior"))
        .unwrap();
    let mean = m
        .baselines
        .iter()
        .find(|b| b.name == "train-mean location")
        .unwrap();
    let acc = |s: &geoloc_evaluate::Scored| s.country.as_ref().unwrap().accuracy;
    let median = |s: &geoloc_evaluate::Scored| s.location.as_ref().unwrap().median_km;

    // The class prior on balanced classes is about 1/5.
    assert!((acc(prior) - 0.2).abs() < 0.08, "prior {}", acc(prior));
    let country = model("country");
    let (a, a0) = (
        acc(&country.trained),
        acc(country
            .epoch0
            .as_ref()
            .expect("a head has its 0-epoch self")),
    );
    assert!(
        a > a0 + 0.25 && a > acc(prior) + 0.25,
        "country head {a} vs epoch 0 {a0}, prior {}",
        acc(prior)
    );
    // Its interval is honest: it contains the accuracy and is narrower than 0.2 here.
    let ci = country.trained.country.as_ref().unwrap().ci95;
    assert!(ci[0] < a && a < ci[1] && ci[1] - ci[0] < 0.2, "{ci:?}");
    // The location heads beat the train-mean location's median error by a wide margin.
    for n in ["latlon", "geocells", "geocells_smooth"] {
        let r = model(n);
        assert!(
            median(&r.trained) < 0.7 * median(mean),
            "{n}: {} km vs the train mean's {} km",
            median(&r.trained),
            median(mean)
        );
        assert!(
            median(&r.trained) < median(r.epoch0.as_ref().expect("0 epochs")),
            "{n}"
        );
    }
    // Retrieval (no training, so no 0-epoch self) beats the train mean too, and the geocell
    // head refined by it inside its top cell beats the plain head on the median and on the
    // share within 25 km (the issue's goal; on this seeded data: 40 against 93 km, 28%
    // against 7%).
    let within_25 = |s: &geoloc_evaluate::Scored| {
        let l = s.location.as_ref().unwrap();
        l.within.iter().find(|w| w.km == 25.0).unwrap().share
    };
    for n in ["knn", "geocells+knn"] {
        let r = model(n);
        assert!(r.epoch0.is_none(), "{n}");
        assert!(
            median(&r.trained) < 0.7 * median(mean),
            "{n}: {} km vs the train mean's {} km",
            median(&r.trained),
            median(mean)
        );
    }
    let (plain, refined) = (&model("geocells").trained, &model("geocells+knn").trained);
    assert!(
        median(refined) < median(plain) && within_25(refined) > within_25(plain),
        "refined {} km, {} within 25 km; geocells {} km, {}",
        median(refined),
        within_25(refined),
        median(plain),
        within_25(plain)
    );

    // The paper's baselines learned something too.
    for n in ["hog_svm", "small_cnn"] {
        let r = model(n);
        assert!(
            acc(&r.trained) > acc(prior) + 0.1,
            "{n}: {}",
            acc(&r.trained)
        );
    }

    // The predictions agree with the metrics: one row per model and predicted photo,
    // probabilities summing to one, the country head's accuracy recomputed from them.
    let f = std::fs::File::open(root.join("runs/demo/evaluate/predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let (mut right, mut total) = (0usize, 0usize);
    let mut per_model: BTreeMap<String, usize> = BTreeMap::new();
    for b in reader {
        let b = b.unwrap();
        let models = b.column(0).as_string::<i32>();
        let truth = b.column(3).as_string::<i32>();
        let pred = b.column(11).as_string::<i32>();
        let probs = b.column(8).as_list::<i32>();
        for i in 0..b.num_rows() {
            *per_model.entry(models.value(i).to_owned()).or_default() += 1;
            if models.value(i) == "country" {
                let p = probs.value(i);
                let p = p.as_primitive::<Float32Type>();
                assert_eq!(p.len(), 5);
                let sum: f32 = p.values().iter().sum();
                assert!((sum - 1.0).abs() < 1e-3, "{sum}");
                total += 1;
                right += (truth.value(i) == pred.value(i)) as usize;
            }
        }
    }
    assert_eq!(per_model.len(), 8, "{per_model:?}");
    let c = country.trained.country.as_ref().unwrap();
    assert_eq!((right as u64, total as u64), (c.correct, c.photos));
    // The MediaEval run files: `hash;lat;lon` per predicted photo.
    let run = std::fs::read_to_string(root.join("runs/demo/evaluate/runs/latlon.txt")).unwrap();
    assert_eq!(run.lines().count(), model("latlon").trained.photos);
    let first: Vec<&str> = run.lines().next().unwrap().split(';').collect();
    assert_eq!(first.len(), 3);
    assert!(first[1].parse::<f64>().is_ok() && first[2].parse::<f64>().is_ok());
}

/// Every PNG of the report: decodes, at least 400x300, more than a handful of colours.
#[test]
fn the_report_has_real_pictures_and_a_self_contained_page() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let dir = root.join("runs/demo/evaluate");
    let plots: Vec<PathBuf> = std::fs::read_dir(dir.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let names: BTreeSet<String> = plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "accuracy-by-model.png",
        "error-cdf.png",
        "curves-country.png",
        "map-latlon.png",
        "confusion-country.png",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    for p in &plots {
        let img = image::open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8();
        let (w, h) = img.dimensions();
        assert!(w >= 400 && h >= 300, "{}: {w}x{h}", p.display());
        let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(
            colours.len() > 16,
            "{}: {} colours",
            p.display(),
            colours.len()
        );
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for n in &names {
        assert!(md.contains(&format!("plots/{n}")), "report.md lacks {n}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        names.len(),
        "every plot inlined"
    );
    for external in ["http://", "https://", "<script", "src=\"plots/"] {
        assert!(!html.contains(external), "report.html holds {external}");
    }
}

/// The HTML report opens in headless Chromium (Debian's `chromium`): it renders the page's
/// title, its tables and every picture, and logs no error.
#[test]
fn the_html_report_opens_in_headless_chromium() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let Some(chromium) = geoloc_core::fixtures::program(
        "chromium",
        "install Debian's chromium package: apt-get install chromium",
    ) else {
        return;
    };
    let html = root.join("runs/demo/evaluate/report.html");
    let profile = tempfile::tempdir().unwrap();
    // The page's own script-free DOM, after load, with each image's decoded width: a
    // picture that failed to decode has naturalWidth 0. --dump-dom prints the DOM only, so
    // the widths are read through a data-URL page that frames the report.
    let out = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    assert!(
        dom.contains("<h1>geoloc demo"),
        "{}",
        &dom[..dom.len().min(500)]
    );
    assert!(dom.matches("<table>").count() >= 2);
    let images = std::fs::read_dir(root.join("runs/demo/evaluate/plots"))
        .unwrap()
        .count();
    assert_eq!(dom.matches("<img ").count(), images);
    // Page errors (a broken resource, a bad image) show in the console log.
    for line in log.lines() {
        let l = line.to_ascii_lowercase();
        assert!(
            !(l.contains("err_file_not_found") || l.contains("console") && l.contains("error")),
            "chromium logged: {line}"
        );
    }
    // A screenshot of the page is a real picture.
    let shot = profile.path().join("shot.png");
    let st = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("p2").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 50,
        "screenshot has {} colours",
        colours.len()
    );
}

#[test]
fn a_second_run_does_nothing() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let out = stdout(&geoloc(&["run", PIPE], &root, &[], true));
    assert!(!out.contains(": ran"), "{out}");
    assert_eq!(out.matches(": fresh").count(), INSTANCES.len(), "{out}");
}

/// On a copy of the shared run: one train parameter changed reruns that train instance and
/// evaluate, nothing else; config and source changes show in `status` with their reason;
/// an interrupted instance is missing; selection flags.
#[test]
fn the_runner_reruns_only_what_a_change_touches() {
    let Some(shared) = shared_tiny_demo() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    support::copy_tree(&shared, root);
    let pipe = root.join(PIPE);
    let text = std::fs::read_to_string(&pipe).unwrap();

    // One train parameter: latlon's epochs.
    let marker =
        "[stages.latlon.config]\nhead = \"mlp\"\ntask = \"latlon\"\nhidden = 256\nepochs = 30";
    assert!(
        text.contains(marker),
        "the demo pipeline's latlon table changed"
    );
    // The changed file is the base of what follows.
    let text = text.replace(marker, &marker.replace("epochs = 30", "epochs = 25"));
    std::fs::write(&pipe, &text).unwrap();
    let out = stdout(&geoloc(&["status", PIPE], root, &[], true));
    assert!(out.contains("10 of 12 instances fresh"), "{out}");
    let out = stdout(&geoloc(&["run", PIPE], root, &[], true));
    let ran: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(": ran"))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(ran, ["latlon", "evaluate"], "{out}");
    let card = geoloc_models::card::ModelCard::load(&root.join("runs/demo/latlon")).unwrap();
    assert_eq!(card.epochs_run, 25);

    // A config change upstream: stale, with the reason (not run: it would redo everything).
    std::fs::write(
        &pipe,
        text.replace("balance = { seed = 7 }", "balance = { seed = 8 }"),
    )
    .unwrap();
    let out = stdout(&geoloc(&["status", PIPE], root, &[], true));
    assert!(out.contains("stale: its config changed"), "{out}");
    std::fs::write(&pipe, &text).unwrap();

    // A changed source file (regenerated with more rows) makes ingest stale; regenerating
    // the same data leaves the files alone, fresh again.
    support::synth(root, support::TINY_ROWS + 100);
    let out = stdout(&geoloc(&["status", PIPE], root, &[], true));
    assert!(out.contains("stale: its inputs changed"), "{out}");
    support::synth(root, support::TINY_ROWS);
    let out = stdout(&geoloc(&["status", PIPE], root, &[], true));
    assert!(
        out.contains("ingest") && out.contains("stale: its inputs changed"),
        "{out}"
    );
    // (The regenerated files have new modification times: ingest reruns, and its output
    // equals the old, so nothing downstream does.)
    let out = stdout(&geoloc(&["run", PIPE], root, &[], true));
    assert!(out.contains("ingest: ran"), "{out}");
    assert_eq!(out.matches(": ran").count(), 1, "{out}");

    // An interrupted run (no manifest) is missing, and a reader refuses it.
    std::fs::remove_file(root.join("runs/demo/ingest/_manifest.json")).unwrap();
    let out = stdout(&geoloc(&["status", PIPE], root, &[], true));
    assert!(out.contains("missing: no committed output"), "{out}");
    assert!(Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).is_err());
    let out = stdout(&geoloc(&["run", PIPE, "--only", "ingest"], root, &[], true));
    assert!(out.contains("ingest: ran"), "{out}");

    // Selection: --force, --only, unknown names.
    let out = stdout(&geoloc(
        &["run", PIPE, "--force", "--only", "evaluate"],
        root,
        &[],
        true,
    ));
    assert!(out.contains("evaluate: ran"), "{out}");
    let out = stdout(&geoloc(&["run", PIPE], root, &[], true));
    assert!(!out.contains(": ran"), "{out}");
    let err = support::stderr(&geoloc(&["run", PIPE, "--only", "nope"], root, &[], false));
    assert!(err.contains("has no instance `nope`"), "{err}");
}

/// `geoloc predict` on the real photos of ../shared/data/photos with the demo's country
/// model: one row per decodable photo, the others named with a reason.
#[test]
fn predict_runs_the_whole_chain_on_real_photos() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let photos = shared.join("data/photos");
    let t = tempfile::tempdir().unwrap();
    let model = root.join("runs/demo/country");
    let model_s = model.to_str().unwrap();
    let photos_s = photos.to_str().unwrap();
    let out_pq = t.path().join("p.parquet");
    let o = geoloc(
        &[
            "predict",
            photos_s,
            "--model",
            model_s,
            "-o",
            out_pq.to_str().unwrap(),
        ],
        &root,
        &[],
        true,
    );
    // Every image file under photos/ is either predicted or skipped with a reason.
    let files: Vec<PathBuf> = walk(&photos)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e != "csv"))
        .collect();
    let err = support::stderr(&o);
    let skipped: Vec<&str> = err.lines().filter(|l| l.starts_with("skipped ")).collect();
    // The two HEIF photos decode through libheif (`cargo xtask fetch-heif`; CI has it);
    // without it they are skipped, saying how to get it.
    match geoloc_imaging::heif::available() {
        Ok(_) => assert!(skipped.is_empty(), "{err}"),
        Err(e) => {
            if std::env::var("GEOLOC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
                panic!("{e}, and GEOLOC_REQUIRE_SHARED=1 requires libheif");
            }
            assert_eq!(skipped.len(), 2, "{err}");
            assert!(
                skipped
                    .iter()
                    .all(|l| l.contains(".heif: unsupported-format") && l.contains("fetch-heif")),
                "{err}"
            );
        }
    }
    let f = std::fs::File::open(&out_pq).unwrap();
    let batches: Vec<_> = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows + skipped.len(), files.len(), "{}", stdout(&o));
    assert!(rows >= 60);
    if skipped.is_empty() {
        assert_eq!(
            rows,
            files.len(),
            "every photo predicted, the HEIF ones included"
        );
    }
    let classes = ["DE", "CA", "IT", "ES", "FR"];
    for b in &batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no column {n}"))
        };
        let country = col("country").as_string::<i32>();
        let top = col("top_classes").as_list::<i32>();
        let probs = col("top_probs").as_list::<i32>();
        let places = col("top_places").as_list::<i32>();
        let place = col("place").as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(classes.contains(&country.value(i)));
            assert_eq!(top.value(i).len(), 5);
            let p = probs.value(i);
            let p = p.as_primitive::<Float32Type>();
            let v = p.values();
            assert!(v.windows(2).all(|w| w[0] >= w[1]), "sorted: {v:?}");
            assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-3);
            let pl = places.value(i);
            let pl = pl.as_string::<i32>();
            assert_eq!(pl.len(), 5);
            assert!(pl
                .iter()
                .flatten()
                .all(|p| ["Germany", "Canada", "Italy", "Spain", "France"].contains(&p)));
            assert_eq!(
                Some(place.value(i)),
                pl.iter().next().flatten(),
                "the top class's place"
            );
        }
    }
    // CSV and GeoJSON hold the same photos.
    let csv = t.path().join("p.csv");
    geoloc(
        &[
            "predict",
            photos_s,
            "--model",
            model_s,
            "-o",
            csv.to_str().unwrap(),
        ],
        &root,
        &[],
        true,
    );
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap().lines().count(),
        rows + 1
    );
    // Readable places: a country head's classes are countries by name.
    let names = ["Germany", "Canada", "Italy", "Spain", "France"];
    let mut r = csv::Reader::from_path(&csv).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| {
        h.iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("no {n} in {h:?}"))
    };
    let (place, top_places) = (col("place"), col("top_places"));
    for rec in r.records() {
        let rec = rec.unwrap();
        assert!(names.contains(&&rec[place]), "{rec:?}");
        let tops: Vec<&str> = rec[top_places].split('|').collect();
        assert_eq!(tops.len(), 5);
        assert!(tops.iter().all(|t| names.contains(t)), "{tops:?}");
    }
    let gj = t.path().join("p.geojson");
    geoloc(
        &[
            "predict",
            photos_s,
            "--model",
            model_s,
            "-o",
            gj.to_str().unwrap(),
        ],
        &root,
        &[],
        true,
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&gj).unwrap()).unwrap();
    assert_eq!(doc["type"], "FeatureCollection");
    assert_eq!(doc["features"].as_array().unwrap().len(), rows);
    let c = &doc["features"][0]["geometry"]["coordinates"];
    assert!(c[0].as_f64().unwrap().abs() <= 180.0 && c[1].as_f64().unwrap().abs() <= 90.0);
    let top = &doc["features"][0]["properties"]["top"][0];
    assert!(
        names.contains(&top["country_name"].as_str().unwrap()),
        "{top}"
    );
    assert_eq!(top["place"], top["country_name"]);

    // A geocell head: each top cell placed where the head puts its photos, with that
    // location's country (and region where the boundaries know one), in CSV and GeoJSON.
    let cells = root.join("runs/demo/geocells");
    for out in [&csv, &gj] {
        geoloc(
            &[
                "predict",
                photos_s,
                "--model",
                cells.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            &root,
            &[],
            true,
        );
    }
    let mut r = csv::Reader::from_path(&csv).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (classes, places, locs) = (col("top_classes"), col("top_places"), col("top_locations"));
    let (mut regions, mut known, mut all) = (0, 0, 0);
    for rec in r.records() {
        let rec = rec.unwrap();
        let cells: Vec<&str> = rec[classes].split('|').collect();
        let places: Vec<&str> = rec[places].split('|').collect();
        assert_eq!(cells.len(), places.len());
        for (c, p) in cells.iter().zip(&places) {
            // A cell token reads as a place, not as itself (unless it lies at sea).
            assert!(p != c && !p.is_empty(), "cell {c} has no place");
            regions += usize::from(p.contains(", "));
            known += usize::from(names.iter().any(|n| p.ends_with(n)));
            all += 1;
        }
        for l in rec[locs].split('|') {
            let (a, b) = l.split_once(',').unwrap();
            let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(a.abs() <= 90.0 && b.abs() <= 180.0);
        }
    }
    assert!(
        regions > 0,
        "no region named (US states, Canadian provinces, ...)"
    );
    // The demo's photos are in its five countries: most top cells are placed there.
    assert!(
        known * 10 >= all * 8,
        "{known} of {all} top cells in the demo's countries"
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&gj).unwrap()).unwrap();
    let top = &doc["features"][0]["properties"]["top"][0];
    assert!(top["lat"].is_f64() && top["country"].is_string(), "{top}");
    assert!(top["class"] != top["place"], "{top}");

    // The small CNN reads pixels: the chain without a backbone.
    let cnn = root.join("runs/demo/small_cnn");
    let o = geoloc(
        &[
            "predict",
            photos_s,
            "--model",
            cnn.to_str().unwrap(),
            "-o",
            csv.to_str().unwrap(),
        ],
        &root,
        &[],
        true,
    );
    assert!(
        stdout(&o).contains(&format!("predicted {rows} photos")),
        "{}",
        stdout(&o)
    );

    // Other weights than the card's: refused, with both checksums.
    let fake = t.path().join("other.pth");
    std::fs::write(&fake, b"not the checkpoint").unwrap();
    let o = geoloc(
        &[
            "predict",
            photos_s,
            "--model",
            model_s,
            "-o",
            csv.to_str().unwrap(),
            "--weights",
            fake.to_str().unwrap(),
        ],
        &root,
        &[],
        false,
    );
    let err = support::stderr(&o);
    assert!(
        err.contains("is not the backbone this model was trained on"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The README's worked example: `pipelines/photos.toml` over a folder of real geotagged photos
/// (the 67 of ../shared/data/photos), then `geoloc predict` with its geocell head: every step
/// a user runs, on their kind of input.
#[test]
fn the_own_photos_pipeline_trains_and_predicts() {
    if support::lite0().is_none() {
        return;
    }
    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::copy(
        support::workspace().join("pipelines/photos.toml"),
        root.join("pipelines/photos.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(shared.join("data/photos"), root.join("photos")).unwrap();
    support::link_weights(root);
    let o = geoloc(&["run", "pipelines/photos.toml"], root, &[], true);
    let out = stdout(&o);
    for i in ["ingest", "lite0", "geocells", "country", "knn", "evaluate"] {
        assert!(
            root.join("runs/photos")
                .join(i)
                .join("_manifest.json")
                .is_file(),
            "{i}:\n{out}"
        );
    }
    let report = std::fs::read_to_string(root.join("runs/photos/evaluate/report.md")).unwrap();
    assert!(report.contains("geocells"), "{report}");
    let o = geoloc(
        &[
            "predict",
            "photos",
            "--model",
            "runs/photos/geocells",
            "-o",
            "where.csv",
            "--top-k",
            "3",
        ],
        root,
        &[],
        true,
    );
    let text = std::fs::read_to_string(root.join("where.csv")).unwrap();
    let rows = text.lines().count() - 1;
    assert!(rows >= 60, "{rows} predicted:\n{}", stdout(&o));
    assert!(text.lines().next().unwrap().contains("top_places"));

    // The retrieval index predicts too. A train photo's nearest neighbour is itself (cosine
    // 1 up to rounding), and the vote places it within a kilometre of where it was taken.
    geoloc(
        &[
            "predict",
            "photos",
            "--model",
            "runs/photos/knn",
            "-o",
            "near.csv",
            "--top-k",
            "3",
        ],
        root,
        &[],
        true,
    );
    let mut r = csv::Reader::from_path(root.join("near.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (lat, lon, probs, locs) = (
        col("lat"),
        col("lon"),
        col("top_probs"),
        col("top_locations"),
    );
    let (mut rows, mut themselves) = (0, 0);
    for row in r.records() {
        let row = row.unwrap();
        rows += 1;
        let first: f64 = row[probs].split('|').next().unwrap().parse().unwrap();
        if first < 0.9995 {
            continue;
        }
        themselves += 1;
        let (a, b) = row[locs]
            .split('|')
            .next()
            .unwrap()
            .split_once(',')
            .unwrap();
        let here = geoloc_core::geo::LatLon {
            lat: row[lat].parse().unwrap(),
            lon: row[lon].parse().unwrap(),
        };
        let nearest = geoloc_core::geo::LatLon {
            lat: a.parse().unwrap(),
            lon: b.parse().unwrap(),
        };
        let km = geoloc_core::geo::haversine_km(here, nearest);
        assert!(km < 1.0, "{}: placed {km} km from itself", &row[0]);
    }
    // 80% of the photos are train photos (a few are rejected or share a file).
    assert!(
        rows >= 60 && themselves >= 40 && themselves < rows,
        "{themselves} of {rows} photos found themselves"
    );
}

/// Refinement's config errors are named, from the cards, before anything is scored or the
/// previous result is touched: a head that is not over geocells, an index built from other
/// features than the head, a model or index that is not among evaluate's inputs. The shared
/// run is only read; its committed evaluate output is copied to where the refused runs
/// write, and must still be committed and unchanged after each refusal.
#[test]
fn refine_refuses_what_it_cannot_search() {
    let Some(root) = shared_tiny_demo() else {
        return;
    };
    let runs = root.join("runs/demo");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // A retrieval index over the HOG features (the demo's geocell head reads Lite0's).
    std::fs::write(dir.join("knn.toml"), "head = \"knn\"\n").unwrap();
    let hog_knn = dir.join("hog_knn");
    let arg = |p: &Path| p.to_str().unwrap().to_owned();
    geoloc(
        &[
            "train",
            "--config",
            &arg(&dir.join("knn.toml")),
            "--input",
            &arg(&runs.join("hog")),
            "--input",
            &arg(&runs.join("ingest")),
            "--out",
            &arg(&hog_knn),
            "--no-progress",
        ],
        &root,
        &[],
        true,
    );
    let out = dir.join("evaluate");
    support::copy_tree(&runs.join("evaluate"), &out);
    let before = support::evaluation_result(&out).unwrap();
    let evaluate = |refine: &str, inputs: &[PathBuf]| -> String {
        let cfg = dir.join("evaluate.toml");
        std::fs::write(&cfg, format!("refine = [{refine}]\n")).unwrap();
        let mut args = vec![
            "evaluate".to_owned(),
            "--config".into(),
            arg(&cfg),
            "--out".into(),
            arg(&out),
            "--no-progress".into(),
        ];
        for i in inputs {
            args.extend(["--input".to_owned(), arg(i)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = geoloc(&args, &root, &[], false);
        assert!(!o.status.success(), "evaluate accepted refine = [{refine}]");
        assert_eq!(
            support::evaluation_result(&out).as_ref(),
            Ok(&before),
            "evaluate touched its previous result before refusing refine = [{refine}]"
        );
        support::stderr(&o)
    };
    let base = ["ingest", "lite0", "hog", "geocells", "latlon", "knn"].map(|n| runs.join(n));
    let mut with_hog_knn = base.to_vec();
    with_hog_knn.push(hog_knn.clone());

    let e = evaluate(r#"{ model = "latlon", index = "knn" }"#, &base);
    assert!(
        e.contains(
            "refine `latlon+knn`: `latlon` is a latlon head; refinement searches within geocells"
        ),
        "{e}"
    );
    let e = evaluate(
        r#"{ model = "geocells", index = "hog_knn" }"#,
        &with_hog_knn,
    );
    assert!(
        e.contains(
            "the head reads `lite0` and the index `hog`; they must be built from the same features"
        ),
        "{e}"
    );
    let e = evaluate(r#"{ model = "geocells", index = "knn", cells = 0 }"#, &base);
    assert!(e.contains("cells must be at least 1"), "{e}");
    let e = evaluate(r#"{ model = "geocells_smooth", index = "knn" }"#, &base);
    assert!(
        e.contains(
            "no model `geocells_smooth` among evaluate's inputs (its models: geocells, latlon)"
        ),
        "{e}"
    );
    let e = evaluate(r#"{ model = "geocells", index = "nn" }"#, &base);
    assert!(
        e.contains("no index `nn` among evaluate's inputs (its indexes: knn)"),
        "{e}"
    );
}
