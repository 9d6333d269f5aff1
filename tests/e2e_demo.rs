//! End to end through the real binary: the `tiny` demo (1500 generated rows) run by the
//! pipeline runner, then staleness, selection and recovery on the same project.

mod support;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;
use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use std::collections::BTreeMap;
use support::{demo_project, geoloc, stdout};

#[test]
fn tiny_demo_runs_and_the_runner_tracks_staleness() {
    // The demo's featurize runs the real Lite0 checkpoint.
    if support::lite0().is_none() {
        return;
    }
    let p = demo_project(1500);
    let root = p.path();
    let pipe = "pipelines/demo.toml";

    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(out.contains("missing: never run"), "{out}");

    let out = stdout(&geoloc(&["run", pipe], root, &[], true));
    assert!(out.contains("ingest: ran"), "{out}");

    // The committed samples: the paper's five countries, balanced, labelled, split.
    let ds = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples())
        .expect("committed dataset");
    ds.verify().unwrap();
    assert_eq!(ds.manifest.info.stage, "ingest");
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
    assert_eq!(per_class.len(), 5);
    let counts: Vec<usize> = per_class.values().copied().collect();
    assert!(
        counts.iter().all(|&c| c == counts[0]),
        "balanced: {per_class:?}"
    );
    assert!(counts[0] > 100, "{per_class:?}");
    assert_eq!(
        per_split.keys().cloned().collect::<Vec<_>>(),
        ["test", "train", "val"]
    );
    assert_eq!(
        ds.manifest.rejects, 5,
        "the generator plants five broken lines"
    );

    // Every head trained, committed, and the country head learned: beyond its untrained
    // epoch 0 and the class prior (0.2) by a wide margin on the demo's country-styled photos.
    for head in ["country", "latlon", "geocells", "hog_svm", "small_cnn"] {
        let dir = root.join("runs/demo").join(head);
        geoloc_train::open(&dir).unwrap_or_else(|e| panic!("{head}: {e}"));
        let card = geoloc_models::card::ModelCard::load(&dir).unwrap();
        assert!(
            card.train_rows > 500 && card.val_rows > 50,
            "{head}: {card:?}"
        );
        assert!(card.best.median_km.is_some(), "{head}");
    }
    let card = geoloc_models::card::ModelCard::load(&root.join("runs/demo/country")).unwrap();
    let (acc, acc0) = (card.best.accuracy.unwrap(), card.epoch0.accuracy.unwrap());
    assert!(
        acc > acc0 + 0.3 && acc > 0.2 + 0.3,
        "country head {acc} (epoch 0 {acc0})"
    );
    assert_eq!(
        card.input["weights_blake3"].as_str().map(str::len),
        Some(64),
        "real Lite0 weights"
    );

    // Fresh: nothing reruns.
    let out = stdout(&geoloc(&["run", pipe], root, &[], true));
    assert!(
        out.contains("ingest: fresh") && !out.contains("ran"),
        "{out}"
    );
    assert!(
        stdout(&geoloc(&["status", pipe], root, &[], true)).contains("11 of 11 instances fresh")
    );

    // A config change makes it stale, with the reason.
    let text = std::fs::read_to_string(root.join(pipe)).unwrap();
    std::fs::write(
        root.join(pipe),
        text.replace("balance = { seed = 7 }", "balance = { seed = 8 }"),
    )
    .unwrap();
    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(out.contains("stale: its config changed"), "{out}");
    assert!(stdout(&geoloc(&["run", pipe], root, &[], true)).contains("ingest: ran"));

    // A changed source file (here: regenerated with more rows) makes it stale.
    support::synth(root, 1600);
    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(out.contains("stale: its inputs changed"), "{out}");
    // Regenerating identical data leaves the files alone: fresh again after one run.
    geoloc(&["run", pipe], root, &[], true);
    support::synth(root, 1600);
    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(out.contains("11 of 11 instances fresh"), "{out}");

    // An interrupted run (no manifest) is missing, and a reader refuses it.
    std::fs::remove_file(root.join("runs/demo/ingest/_manifest.json")).unwrap();
    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(out.contains("missing: no committed output"), "{out}");
    assert!(Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).is_err());
    assert!(stdout(&geoloc(&["run", pipe], root, &[], true)).contains("ingest: ran"));

    // Selection: --force, --only, --downstream, and unknown names.
    // (--force on one instance: the whole demo forced reruns Lite0, which the --downstream
    // case below does anyway.)
    assert!(stdout(&geoloc(
        &["run", pipe, "--force", "--only", "ingest"],
        root,
        &[],
        true
    ))
    .contains("ingest: ran"));
    assert!(
        stdout(&geoloc(&["run", pipe, "--only", "ingest"], root, &[], true))
            .contains("ingest: fresh")
    );
    assert!(stdout(&geoloc(
        &["run", pipe, "--downstream", "ingest", "--force"],
        root,
        &[],
        true
    ))
    .contains("ingest: ran"));
    let err = support::stderr(&geoloc(&["run", pipe, "--only", "nope"], root, &[], false));
    assert!(err.contains("has no instance `nope`"), "{err}");
}
