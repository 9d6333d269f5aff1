//! The `geoloc` binary's stage commands: a single stage call from a config file, sharded
//! runs (flag, Slurm and Kubernetes environments) with a separate finalize, and its errors.

mod support;

use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use support::{geoloc, stderr, stdout};

#[test]
fn ingest_from_a_config_file() {
    let t = tempfile::tempdir().unwrap();
    let mut csv = String::from("IMG_FILE,LAT,LON\nbad.jpg,95,1\n");
    for i in 0..30 {
        csv.push_str(&format!("p{i}.jpg,48.{i:02},2.35\n"));
    }
    std::fs::write(t.path().join("p.csv"), csv).unwrap();
    std::fs::write(
        t.path().join("ingest.toml"),
        "[[sources]]\nformat = 'csv'\npath = 'p.csv'\n",
    )
    .unwrap();
    let out = stdout(&geoloc(
        &["ingest", "--config", "ingest.toml", "--out", "samples"],
        t.path(),
        &[],
        true,
    ));
    assert!(
        out.contains("committed 30 rows (1 rejects)"),
        "one out-of-range row is rejected, not a reason to swap: {out}"
    );
    let ds = Dataset::open(&t.path().join("samples"), &schema::samples()).unwrap();
    assert_eq!(ds.manifest.rows, 30);
}

#[test]
fn errors_name_the_problem() {
    let t = tempfile::tempdir().unwrap();
    let err = stderr(&geoloc(
        &["ingest", "--config", "missing.toml", "--out", "x"],
        t.path(),
        &[],
        false,
    ));
    assert!(err.starts_with("error: reading missing.toml"), "{err}");
    std::fs::write(
        t.path().join("bad.toml"),
        "[[sources]]\nformat = 'csv'\npth = 'p.csv'\n",
    )
    .unwrap();
    let err = stderr(&geoloc(
        &["ingest", "--config", "bad.toml", "--out", "x"],
        t.path(),
        &[],
        false,
    ));
    assert!(
        err.contains("parsing bad.toml") && err.contains("pth"),
        "{err}"
    );
    std::fs::write(
        t.path().join("nofile.toml"),
        "[[sources]]\nformat = 'csv'\npath = 'nope.csv'\n",
    )
    .unwrap();
    let err = stderr(&geoloc(
        &["ingest", "--config", "nofile.toml", "--out", "x"],
        t.path(),
        &[],
        false,
    ));
    assert!(err.contains("nope.csv"), "{err}");
    let err = stderr(&geoloc(
        &[
            "ingest",
            "--config",
            "nofile.toml",
            "--out",
            "x",
            "--shard",
            "2/2",
        ],
        t.path(),
        &[],
        false,
    ));
    assert!(err.contains("shard index 2 is out of range"), "{err}");
}

#[test]
fn sharded_ingest_commits_only_after_finalize() {
    let p = support::metadata_project(1200);
    let root = p.path();
    let pipe = "pipelines/demo.toml";
    // One process for comparison.
    geoloc(
        &["run", pipe, "--only", "ingest", "--runs-dir", "single"],
        root,
        &[],
        true,
    );
    // Shard 0 by flag, shard 1 the way a Slurm array task would get it.
    geoloc(
        &[
            "ingest",
            "--pipeline",
            pipe,
            "--instance",
            "ingest",
            "--shard",
            "0/2",
        ],
        root,
        &[],
        true,
    );
    let out = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(
        out.contains("missing"),
        "one shard written, nothing committed: {out}"
    );
    let err = stderr(&geoloc(
        &["finalize", pipe, "--instance", "ingest", "--shards", "2"],
        root,
        &[],
        false,
    ));
    assert!(err.contains("shard 1 of 2 has not finished"), "{err}");
    geoloc(
        &["ingest", "--pipeline", pipe, "--instance", "ingest"],
        root,
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ],
        true,
    );
    let out = stdout(&geoloc(
        &["finalize", pipe, "--instance", "ingest", "--shards", "2"],
        root,
        &[],
        true,
    ));
    assert!(out.contains("committed"), "{out}");
    let st = stdout(&geoloc(&["status", pipe], root, &[], true));
    assert!(
        st.lines()
            .any(|l| l.starts_with("ingest ") && l.ends_with("fresh")),
        "{st}"
    );
    let two = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    let one = Dataset::open(&root.join("single/ingest"), &schema::samples()).unwrap();
    assert_eq!(two.manifest.shards, 2);
    assert_eq!(two.manifest.rows, one.manifest.rows);
    assert_eq!(
        two.manifest.columns, one.manifest.columns,
        "same rows, same values"
    );
    // A rerun with another N (Kubernetes indexed job, 3 shards) discards the N=2 parts.
    for i in 0..3 {
        let idx = i.to_string();
        geoloc(
            &["ingest", "--pipeline", pipe, "--instance", "ingest"],
            root,
            &[
                ("JOB_COMPLETION_INDEX", idx.as_str()),
                ("GEOLOC_SHARD_COUNT", "3"),
            ],
            true,
        );
    }
    geoloc(
        &["finalize", pipe, "--instance", "ingest", "--shards", "3"],
        root,
        &[],
        true,
    );
    let three = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    assert_eq!(three.manifest.columns, one.manifest.columns);
    let names: Vec<String> = std::fs::read_dir(root.join("runs/demo/ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains("-of-00002")), "{names:?}");
}

/// The paper's pipeline parses, every config is valid for its stage, and without its data
/// `status` says each instance is missing (and `run` says which file is absent).
#[test]
fn the_papers_pipeline_is_valid_and_says_what_it_lacks() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("pipelines")).unwrap();
    let name = "mediaeval2015-5country.toml";
    std::fs::copy(
        support::workspace().join("pipelines").join(name),
        t.path().join("pipelines").join(name),
    )
    .unwrap();
    let pipe = format!("pipelines/{name}");
    let out = stdout(&geoloc(&["status", &pipe], t.path(), &[], true));
    assert!(out.contains("0 of 13 instances fresh"), "{out}");
    assert_eq!(out.matches("missing: ").count(), 13, "{out}");
    assert!(
        out.contains("ingest             ingest      missing: never run"),
        "{out}"
    );
    for kind in ["ingest", "preprocess", "featurize", "train", "evaluate"] {
        assert!(out.contains(kind), "{out}");
    }
    let err = stderr(&geoloc(&["run", &pipe], t.path(), &[], false));
    assert!(
        err.contains("mediaeval2015_placing_locale_train"),
        "names the missing file: {err}"
    );
}

/// Logs a job log and a log collector can read: no colour codes when stderr is not a
/// terminal (job logs, files, pipes), JSON objects with `--log-format json`, and an error's
/// causes each said once (`(os error 2)` used to come twice).
#[test]
fn logs_are_plain_or_json_off_a_terminal_and_errors_say_each_cause_once() {
    let t = tempfile::tempdir().unwrap();
    let mut csv = String::from("IMG_FILE,LAT,LON\n");
    for i in 0..10 {
        csv.push_str(&format!("p{i}.jpg,48.{i:02},2.35\n"));
    }
    std::fs::write(t.path().join("p.csv"), csv).unwrap();
    std::fs::write(
        t.path().join("p.toml"),
        "[pipeline]\nname = 'p'\nruns_dir = 'runs'\n[stages.ingest]\nkind = 'ingest'\n\
         [stages.ingest.config]\n[[stages.ingest.config.sources]]\nformat = 'csv'\npath = 'p.csv'\n",
    )
    .unwrap();
    let args = ["run", "p.toml", "--force"];
    let text = stderr(&geoloc(&args, t.path(), &[], true));
    assert!(text.contains("INFO") && text.contains("running"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");
    let mut json_args = args.to_vec();
    json_args.extend(["--log-format", "json"]);
    let json = stderr(&geoloc(&json_args, t.path(), &[], true));
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let err = stderr(&geoloc(&["status", "nowhere.toml"], t.path(), &[], false));
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("nowhere.toml"),
        "{err}"
    );
}
