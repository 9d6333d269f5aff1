//! Crash safety of the commit protocol through the real binary: an ingest killed (SIGKILL)
//! at several moments leaves nothing a reader accepts as complete unless it had committed,
//! and a rerun finishes with the same values as an uninterrupted run.

mod support;

use geoloc_core::dataset::Dataset;
use geoloc_core::schema;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{geoloc, metadata_project};

#[test]
fn killed_ingest_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = metadata_project(60_000);
    let root = p.path();
    let pipe = "pipelines/demo.toml";
    geoloc(
        &["run", pipe, "--only", "ingest", "--runs-dir", "reference"],
        root,
        &[],
        true,
    );
    let reference = Dataset::open(&root.join("reference/ingest"), &schema::samples()).unwrap();

    let mut refused = Vec::new();
    for delay_ms in [0u64, 20, 60, 150] {
        let out = root.join(format!("killed-{delay_ms}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_geoloc"))
            .args([
                "--no-progress",
                "-q",
                "run",
                pipe,
                "--only",
                "ingest",
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
        let dir = out.join("ingest");
        match Dataset::open(&dir, &schema::samples()) {
            // Killed after the commit: then it must be whole.
            Ok(ds) => {
                ds.verify().unwrap();
                assert_eq!(ds.manifest.columns, reference.manifest.columns);
            }
            Err(e) => {
                refused.push(delay_ms);
                let e = e.to_string();
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
                assert!(st.contains("missing"), "{st}");
            }
        }
        geoloc(
            &[
                "run",
                pipe,
                "--only",
                "ingest",
                "--runs-dir",
                out.to_str().unwrap(),
            ],
            root,
            &[],
            true,
        );
        let ds = Dataset::open(&dir, &schema::samples()).unwrap();
        ds.verify().unwrap();
        assert_eq!(ds.manifest.rows, reference.manifest.rows);
        assert_eq!(
            ds.manifest.columns, reference.manifest.columns,
            "same rows, bit-identical values"
        );
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
    eprintln!("killed runs refused at {refused:?} ms");
    assert!(
        refused.contains(&0),
        "a run killed at once cannot have committed"
    );
    assert!(refused.len() >= 2, "no kill landed mid-run: {refused:?}");
}

#[test]
fn killed_preprocess_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = support::demo_project(800);
    let root = p.path();
    let pipe = "pipelines/demo.toml";
    geoloc(
        &["run", pipe, "--only", "ingest", "--runs-dir", "reference"],
        root,
        &[],
        true,
    );
    geoloc(
        &["run", pipe, "--only", "crop224", "--runs-dir", "reference"],
        root,
        &[],
        true,
    );
    let reference = geoloc_preprocess::open(&root.join("reference/crop224")).unwrap();

    let mut refused = Vec::new();
    for delay_ms in [0u64, 150, 400, 900] {
        let out = root.join(format!("killed-{delay_ms}"));
        support::copy_dir(&root.join("reference/ingest"), &out.join("ingest"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_geoloc"))
            .args([
                "--no-progress",
                "-q",
                "run",
                pipe,
                "--only",
                "crop224",
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
        let dir = out.join("crop224");
        match geoloc_preprocess::open(&dir) {
            Ok(ds) => {
                ds.verify().unwrap();
                assert_eq!(ds.manifest.columns, reference.manifest.columns);
            }
            Err(e) => {
                refused.push(delay_ms);
                let e = e.to_string();
                assert!(
                    e.contains("no _manifest.json") || e.contains("does not exist"),
                    "{e}"
                );
            }
        }
        geoloc(
            &[
                "run",
                pipe,
                "--only",
                "crop224",
                "--runs-dir",
                out.to_str().unwrap(),
            ],
            root,
            &[],
            true,
        );
        let ds = geoloc_preprocess::open(&dir).unwrap();
        ds.verify().unwrap();
        assert_eq!(ds.manifest.rows, reference.manifest.rows);
        assert_eq!(
            ds.manifest.columns, reference.manifest.columns,
            "same rows, bit-identical pixels"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporaries remain: {leftovers:?}");
    }
    eprintln!("killed runs refused at {refused:?} ms");
    assert!(
        refused.contains(&0),
        "a run killed at once cannot have committed"
    );
    assert!(refused.len() >= 2, "no kill landed mid-run: {refused:?}");
}
