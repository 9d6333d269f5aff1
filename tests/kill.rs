//! Crash safety of the commit protocol through the real binary: a stage killed (SIGKILL) at
//! several moments leaves nothing a reader accepts as complete unless it had committed, and
//! a rerun finishes with the same values as an uninterrupted run.

mod support;

use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{dataset_result, evaluation_result, geoloc, metadata_project, model_result};

/// Runs `geoloc run PIPE --only INSTANCE` into `killed-<delay>/` and kills it after each
/// delay; then checks: the output is refused (and `status` says the instance is missing) or
/// whole; a rerun commits what `reference` holds (`open` reads an output's result: rows and
/// column checksums of a dataset, the files of a model but its timings); no temporary files
/// remain. `prepare` readies each runs dir (the instance's committed inputs). Returns the
/// delays at which a reader refused the killed output.
fn kill_then_rerun(
    root: &Path,
    instance: &str,
    delays: &[u64],
    reference: &Value,
    open: impl Fn(&Path) -> Result<Value, String>,
    prepare: impl Fn(&Path),
) -> Vec<u64> {
    kill_then_rerun_in(
        root,
        "pipelines/demo.toml",
        instance,
        delays,
        reference,
        open,
        prepare,
    )
}

/// [`kill_then_rerun`] on another pipeline file of the project.
fn kill_then_rerun_in(
    root: &Path,
    pipe: &str,
    instance: &str,
    delays: &[u64],
    reference: &Value,
    open: impl Fn(&Path) -> Result<Value, String>,
    prepare: impl Fn(&Path),
) -> Vec<u64> {
    let mut refused = Vec::new();
    for &delay_ms in delays {
        let out = root.join(format!("killed-{delay_ms}"));
        prepare(&out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_geoloc"))
            .args([
                "--no-progress",
                "-q",
                "run",
                pipe,
                "--only",
                instance,
                "--runs-dir",
            ])
            .arg(&out)
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        let dir = out.join(instance);
        match open(&dir) {
            // Killed after the commit: then it must be whole.
            Ok(result) => assert_eq!(&result, reference, "killed after its commit"),
            Err(e) => {
                refused.push(delay_ms);
                assert!(
                    e.contains("no _manifest.json") || e.contains("does not exist"),
                    "{e}"
                );
                let st = support::stdout(&geoloc(
                    &["status", pipe, "--runs-dir", out.to_str().unwrap()],
                    root,
                    &[],
                    true,
                ));
                assert!(
                    st.lines()
                        .any(|l| l.starts_with(&format!("{instance} ")) && l.contains("missing")),
                    "{st}"
                );
            }
        }
        geoloc(
            &[
                "run",
                pipe,
                "--only",
                instance,
                "--runs-dir",
                out.to_str().unwrap(),
            ],
            root,
            &[],
            true,
        );
        let result = open(&dir).unwrap();
        assert_eq!(&result, reference, "same rows, bit-identical values");
        let leftovers: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files of the killed run remain: {leftovers:?}"
        );
    }
    eprintln!("killed {instance} runs refused at {refused:?} ms");
    assert!(
        refused.contains(&0),
        "a run killed at once cannot have committed"
    );
    assert!(refused.len() >= 2, "no kill landed mid-run: {refused:?}");
    refused
}

fn run_reference(root: &Path, instance: &str) {
    run_reference_in(root, "pipelines/demo.toml", instance);
}

fn run_reference_in(root: &Path, pipe: &str, instance: &str) {
    geoloc(
        &["run", pipe, "--only", instance, "--runs-dir", "reference"],
        root,
        &[],
        true,
    );
}

#[test]
fn killed_ingest_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = metadata_project(60_000);
    let root = p.path();
    run_reference(root, "ingest");
    let open =
        |d: &Path| dataset_result(Dataset::open(d, &schema::samples()).map_err(|e| e.to_string()));
    let reference = open(&root.join("reference/ingest")).unwrap();
    kill_then_rerun(root, "ingest", &[0, 20, 60, 150], &reference, open, |_| {});
}

#[test]
fn killed_preprocess_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = support::demo_project(800);
    let root = p.path();
    run_reference(root, "ingest");
    run_reference_in(root, support::PIXEL_DEMO, "crop224");
    let open = |d: &Path| dataset_result(geoloc_preprocess::open(d).map_err(|e| e.to_string()));
    let reference = open(&root.join("reference/crop224")).unwrap();
    kill_then_rerun_in(
        root,
        support::PIXEL_DEMO,
        "crop224",
        &[0, 150, 400, 900],
        &reference,
        open,
        |out| support::copy_dir(&root.join("reference/ingest"), &out.join("ingest")),
    );
}

/// featurize (HOG, from the photos) and train (the linear SVM on it) killed at several
/// moments: refused until committed, and a rerun (featurize keeping closed parts, train
/// resuming its checkpoint) equals the uninterrupted run.
#[test]
fn killed_featurize_and_train_are_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = support::demo_project(800);
    let root = p.path();
    for i in ["ingest", "hog", "hog_svm"] {
        run_reference(root, i);
    }
    let copy = |out: &Path, insts: &[&str]| {
        for i in insts {
            support::copy_dir(&root.join("reference").join(i), &out.join(i));
        }
    };
    let open = |d: &Path| dataset_result(geoloc_featurize::open(d).map_err(|e| e.to_string()));
    let reference = open(&root.join("reference/hog")).unwrap();
    kill_then_rerun(root, "hog", &[0, 300, 700, 1500], &reference, open, |out| {
        copy(out, &["ingest"])
    });
    let reference = model_result(&root.join("reference/hog_svm")).unwrap();
    kill_then_rerun(
        root,
        "hog_svm",
        &[0, 400, 1200, 2500],
        &reference,
        model_result,
        |out| copy(out, &["ingest", "hog"]),
    );
}

/// evaluate (the HOG + SVM head on the demo's test split, its report and plots) killed at
/// several moments: refused until committed, and a rerun writes every file as an
/// uninterrupted run does.
#[test]
fn killed_evaluate_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = support::demo_project(800);
    let root = p.path();
    // The demo pipeline with evaluate over the HOG head only (no Lite0 needed).
    let pipe = "pipelines/kill-evaluate.toml";
    std::fs::write(root.join(pipe), support::hog_only_demo(root)).unwrap();
    for i in ["ingest", "hog", "hog_svm", "evaluate"] {
        geoloc(
            &["run", pipe, "--only", i, "--runs-dir", "reference"],
            root,
            &[],
            true,
        );
    }
    let reference = evaluation_result(&root.join("reference/evaluate")).unwrap();
    kill_then_rerun_in(
        root,
        pipe,
        "evaluate",
        &[0, 60, 150, 300],
        &reference,
        evaluation_result,
        |out| {
            for i in ["ingest", "hog", "hog_svm"] {
                support::copy_dir(&root.join("reference").join(i), &out.join(i));
            }
        },
    );
}
