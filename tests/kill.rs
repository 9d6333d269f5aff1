//! Crash safety of the commit protocol through the real binary: a stage killed (SIGKILL) at
//! several moments leaves nothing a reader accepts as complete unless it had committed, and
//! a rerun finishes with the same values as an uninterrupted run.

mod support;

use geoloc_core::dataset::{Dataset, Manifest};
use geoloc_core::schema;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{geoloc, metadata_project};

/// Runs `geoloc run PIPE --only INSTANCE` into `killed-<delay>/` and kills it after each
/// delay; then checks: the output is refused (and `status` says the instance is missing) or
/// whole; a rerun commits the same rows and column checksums as `reference`; no temporary
/// files remain. `prepare` readies each runs dir (the instance's committed inputs).
/// Returns the delays at which a reader refused the killed output.
fn kill_then_rerun(
    root: &Path,
    instance: &str,
    delays: &[u64],
    reference: &Manifest,
    open: impl Fn(&Path) -> Result<Dataset, String>,
    prepare: impl Fn(&Path),
) -> Vec<u64> {
    let pipe = "pipelines/demo.toml";
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
            Ok(ds) => {
                ds.verify().unwrap();
                assert_eq!(ds.manifest.columns, reference.columns);
            }
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
        let ds = open(&dir).unwrap();
        ds.verify().unwrap();
        assert_eq!(ds.manifest.rows, reference.rows);
        assert_eq!(
            ds.manifest.columns, reference.columns,
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
    eprintln!("killed {instance} runs refused at {refused:?} ms");
    assert!(
        refused.contains(&0),
        "a run killed at once cannot have committed"
    );
    assert!(refused.len() >= 2, "no kill landed mid-run: {refused:?}");
    refused
}

fn run_reference(root: &Path, instance: &str) {
    geoloc(
        &[
            "run",
            "pipelines/demo.toml",
            "--only",
            instance,
            "--runs-dir",
            "reference",
        ],
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
    let reference = Dataset::open(&root.join("reference/ingest"), &schema::samples()).unwrap();
    kill_then_rerun(
        root,
        "ingest",
        &[0, 20, 60, 150],
        &reference.manifest,
        |d| Dataset::open(d, &schema::samples()).map_err(|e| e.to_string()),
        |_| {},
    );
}

#[test]
fn killed_preprocess_is_refused_then_rerun_equals_an_uninterrupted_run() {
    let p = support::demo_project(800);
    let root = p.path();
    run_reference(root, "ingest");
    run_reference(root, "crop224");
    let reference = geoloc_preprocess::open(&root.join("reference/crop224")).unwrap();
    kill_then_rerun(
        root,
        "crop224",
        &[0, 150, 400, 900],
        &reference.manifest,
        |d| geoloc_preprocess::open(d).map_err(|e| e.to_string()),
        |out| support::copy_dir(&root.join("reference/ingest"), &out.join("ingest")),
    );
}
