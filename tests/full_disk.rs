//! Full disks: preprocess, featurize and train writing onto a small tmpfs that fills up
//! mid-run stop with an error naming the path and what was being written, commit nothing
//! (no manifest), leave no temporary files behind, and a rerun after space is freed commits
//! output equal to an uninterrupted run.
//!
//! Mounting a tmpfs needs root (CI runs as root): elsewhere the test skips with a message;
//! with `GEOLOC_REQUIRE_SHARED=1` (CI) it must run.

mod support;

use geoloc_core::dataset::Dataset;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::{dataset_result, evaluation_result, geoloc, model_result, stderr};

/// A tmpfs mounted for the test's life, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_owned()))
    }

    fn resize(&self, bytes: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Whether tmpfs mounts work here; `None` after printing why not (a failure under
/// `GEOLOC_REQUIRE_SHARED=1`).
fn can_mount(root: &Path) -> Option<()> {
    let probe = root.join("probe");
    match Tmpfs::mount(&probe, 1 << 20) {
        Ok(_) => Some(()),
        Err(e) => {
            let msg = format!("full-disk tests need a tmpfs mount (root): {e}");
            if std::env::var(geoloc_core::fixtures::REQUIRE_VAR).is_ok_and(|v| v == "1") {
                panic!("{msg}, and GEOLOC_REQUIRE_SHARED=1 requires it");
            }
            eprintln!("SKIP: {msg}");
            None
        }
    }
}

/// Bytes under `dir`, each file rounded up to tmpfs's 4 KiB pages.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path()) + 4096
            } else {
                m.len().div_ceil(4096) * 4096
            }
        })
        .sum()
}

/// Runs `instance` into a runs dir on a tmpfs of `inputs + fraction x its output` bytes
/// (its inputs copied there), expects the failure, frees space and reruns.
fn fill_then_rerun(
    root: &Path,
    pipe: &str,
    instance: &str,
    inputs: &[&str],
    fraction: f64,
    open: impl Fn(&Path) -> Result<Value, String>,
) {
    let reference = open(&root.join("reference").join(instance)).unwrap();
    let disk = root.join(format!("disk-{instance}"));
    // tmpfs counts pages: the inputs' files rounded up, then part of the output.
    let input_bytes: u64 = inputs
        .iter()
        .map(|i| dir_bytes(&root.join("reference").join(i)) + 8192)
        .sum();
    let out_bytes = dir_bytes(&root.join("reference").join(instance));
    let size = input_bytes + (out_bytes as f64 * fraction) as u64;
    let fs = Tmpfs::mount(&disk, size).unwrap();
    for i in inputs {
        support::copy_tree(&root.join("reference").join(i), &disk.join(i));
    }
    let runs = disk.to_str().unwrap();
    let out = geoloc(
        &["run", pipe, "--only", instance, "--runs-dir", runs],
        root,
        &[],
        false,
    );
    let err = stderr(&out);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    eprintln!("{instance} on a full disk ({size} bytes): {last}");
    assert!(
        last.contains("No space left on device") && last.contains(&format!("{runs}/{instance}")),
        "{instance}: the error names neither the cause nor the path:\n{err}"
    );
    assert!(
        last.contains("writing"),
        "{instance}: the error does not say what it was writing:\n{err}"
    );
    let dir = disk.join(instance);
    assert!(
        !dir.join("_manifest.json").exists(),
        "{instance}: a failed run left a manifest"
    );
    assert!(
        open(&dir).is_err(),
        "{instance}: a reader accepts the output"
    );
    let temps: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        temps.is_empty(),
        "{instance}: the failed run left temporary files: {temps:?}"
    );
    // Space freed: the rerun commits what an uninterrupted run committed.
    fs.resize(size + 4 * out_bytes + (16 << 20));
    geoloc(
        &["run", pipe, "--only", instance, "--runs-dir", runs],
        root,
        &[],
        true,
    );
    assert_eq!(
        open(&dir).unwrap(),
        reference,
        "{instance}: rerun after a full disk"
    );
}

#[test]
fn full_disks_stop_with_the_path_commit_nothing_and_rerun_equal() {
    let p = support::demo_project(600);
    let root = p.path();
    if can_mount(root).is_none() {
        return;
    }
    // The demo pipeline with evaluate over the HOG head only (no Lite0 needed).
    let pipe = "pipelines/hog-only.toml";
    std::fs::write(root.join(pipe), support::hog_only_demo(root)).unwrap();
    for i in ["ingest", "hog", "hog_svm", "squash52x48", "evaluate"] {
        geoloc(
            &["run", pipe, "--only", i, "--runs-dir", "reference"],
            root,
            &[],
            true,
        );
    }
    let samples = |d: &Path| {
        dataset_result(Dataset::open(d, &geoloc_core::schema::samples()).map_err(|e| e.to_string()))
    };
    let images = |d: &Path| dataset_result(geoloc_preprocess::open(d).map_err(|e| e.to_string()));
    let features = |d: &Path| dataset_result(geoloc_featurize::open(d).map_err(|e| e.to_string()));
    fill_then_rerun(root, pipe, "ingest", &[], 0.4, samples);
    fill_then_rerun(root, pipe, "squash52x48", &["ingest"], 0.4, images);
    // HOG from the photos: the photos are read from the project, not the small disk.
    fill_then_rerun(root, pipe, "hog", &["ingest"], 0.4, features);
    fill_then_rerun(root, pipe, "hog_svm", &["ingest", "hog"], 0.3, model_result);
    fill_then_rerun(
        root,
        pipe,
        "evaluate",
        &["ingest", "hog", "hog_svm"],
        0.5,
        evaluation_result,
    );
}
