//! Helpers of the end-to-end tests: run the real `geoloc` binary, read datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn workspace() -> PathBuf {
    geoloc_core::fixtures::workspace_root(Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Runs `geoloc ARGS` (no progress bars), returns the output; panics with both streams when
/// `expect_ok` does not match the exit status.
pub fn geoloc(args: &[&str], cwd: &Path, envs: &[(&str, &str)], expect_ok: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_geoloc"));
    c.arg("--no-progress").args(args).current_dir(cwd);
    for (k, v) in envs {
        c.env(k, v);
    }
    // The test process may itself run under a scheduler: do not inherit shard variables.
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
        "GEOLOC_SHARD_COUNT",
    ] {
        if !envs.iter().any(|(k, _)| k == &v) {
            c.env_remove(v);
        }
    }
    let out = c.output().expect("geoloc runs");
    if out.status.success() != expect_ok {
        panic!(
            "geoloc {args:?} exited {} (expected {}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            if expect_ok { "success" } else { "failure" },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A project-shaped temporary folder with the demo pipeline and `rows` rows of demo data
/// (metadata and photos).
pub fn demo_project(rows: usize) -> tempfile::TempDir {
    project(rows, &[])
}

/// Like [`demo_project`], with the metadata files only (no photos): for tests of ingest.
pub fn metadata_project(rows: usize) -> tempfile::TempDir {
    project(rows, &["--no-photos"])
}

fn project(rows: usize, synth_flags: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("pipelines")).unwrap();
    std::fs::copy(
        workspace().join("pipelines/demo.toml"),
        t.path().join("pipelines/demo.toml"),
    )
    .unwrap();
    std::fs::write(t.path().join(PIXEL_DEMO), pixel_demo()).unwrap();
    synth_with(t.path(), rows, synth_flags);
    link_weights(t.path());
    t
}

/// The demo pipeline with pixel datasets between the photos and the features (each test
/// project has it): preprocess instances `crop224` and `squash150x90`, which `lite0` and
/// `hog` read, the layout users who want pixel datasets keep, and which the tests of
/// preprocess and of featurize over an images dataset run.
pub const PIXEL_DEMO: &str = "pipelines/demo-pixels.toml";

/// The text of [`PIXEL_DEMO`], made from the demo's.
pub fn pixel_demo() -> String {
    let demo = std::fs::read_to_string(workspace().join("pipelines/demo.toml")).unwrap();
    let swaps = [
        (
            "[stages.lite0]\nkind = \"featurize\"\ninputs = [\"ingest\"]",
            "[stages.lite0]\nkind = \"featurize\"\ninputs = [\"crop224\"]",
        ),
        (
            "[stages.hog]\nkind = \"featurize\"\ninputs = [\"ingest\"]",
            "[stages.hog]\nkind = \"featurize\"\ninputs = [\"squash150x90\"]",
        ),
        (
            "weights = \"data/weights/efficientnet-lite0.pth\"\ngeometry = { kind = \"resize-crop\", resize = 224, crop = 224 }\n",
            "weights = \"data/weights/efficientnet-lite0.pth\"\n",
        ),
        (
            "backbone = \"hog\"\ngeometry = { kind = \"squash\", width = 150, height = 90 }\n",
            "backbone = \"hog\"\n",
        ),
    ];
    let mut text = demo;
    for (from, to) in swaps {
        assert!(
            text.contains(from),
            "the demo pipeline changed: no {from:?}"
        );
        text = text.replace(from, to);
    }
    text + r#"
[stages.crop224]
kind = "preprocess"
inputs = ["ingest"]

[stages.crop224.config]
geometry = { kind = "resize-crop", resize = 224, crop = 224 }

[stages.squash150x90]
kind = "preprocess"
inputs = ["ingest"]

[stages.squash150x90.config]
geometry = { kind = "squash", width = 150, height = 90 }
"#
}

/// Links the workspace's `data/weights` (the Lite0 checkpoint, `cargo xtask fetch-lite0`)
/// into a test project, where the demo pipeline looks for it.
pub fn link_weights(root: &Path) {
    let from = workspace().join("data/weights");
    let to = root.join("data/weights");
    if from.is_dir() && !to.exists() {
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink(&from, &to).unwrap();
    }
}

/// The Lite0 checkpoint, or `None` (the test skips with a message; CI requires it).
pub fn lite0() -> Option<PathBuf> {
    geoloc_core::fixtures::lite0_checkpoint(env!("CARGO_MANIFEST_DIR"))
}

/// `geoloc synth mediaeval` into `root/data/demo` (seed 7).
pub fn synth(root: &Path, rows: usize) {
    synth_with(root, rows, &[]);
}

fn synth_with(root: &Path, rows: usize, flags: &[&str]) {
    let rows = rows.to_string();
    let mut args = vec![
        "synth",
        "mediaeval",
        "--out",
        "data/demo",
        "--rows",
        &rows,
        "--seed",
        "7",
    ];
    args.extend_from_slice(flags);
    geoloc(&args, root, &[], true);
}

/// Copies a directory's files (one level, as dataset directories are).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Copies a directory tree (a whole project, runs included), keeping modification times
/// (source files' times are part of ingest's and preprocess's fingerprints).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
            let mtime = e.metadata().unwrap().modified().unwrap();
            std::fs::File::options()
                .write(true)
                .open(&dst)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    }
}

/// Rows of the `tiny` demo the end-to-end tests share.
pub const TINY_ROWS: usize = 1500;

/// One run of the `tiny` demo through the runner, shared by every end-to-end test (nextest
/// runs each test in its own process: the first to take the lock builds it, the others wait
/// and reuse it). It lives under Cargo's per-target temporary directory and is reused by
/// later test runs while the binary, the demo pipeline and the Lite0 checkpoint are the
/// same; anything else rebuilds it. Tests must not change it: copy it ([`copy_tree`]) to
/// change anything. `None` when the Lite0 checkpoint is absent (the test skips; CI
/// requires it).
pub fn shared_tiny_demo() -> Option<PathBuf> {
    let lite0 = lite0()?;
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-shared");
    std::fs::create_dir_all(&base).unwrap();
    let lock = std::fs::File::create(base.join(".lock")).unwrap();
    lock.lock().unwrap();
    let dir = base.join("tiny-demo");
    let stamp = {
        let file = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            format!("{} {} {:?}", p.display(), m.len(), m.modified().ok())
        };
        format!(
            "{}\n{}\n{}\nrows {TINY_ROWS}\n",
            file(Path::new(env!("CARGO_BIN_EXE_geoloc"))),
            file(&workspace().join("pipelines/demo.toml")),
            file(&lite0)
        )
    };
    let marker = dir.join(".complete");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
        return Some(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::copy(
        workspace().join("pipelines/demo.toml"),
        dir.join("pipelines/demo.toml"),
    )
    .unwrap();
    synth(&dir, TINY_ROWS);
    link_weights(&dir);
    let t0 = std::time::Instant::now();
    let out = geoloc(&["run", "pipelines/demo.toml"], &dir, &[], true);
    eprintln!(
        "shared tiny demo ({TINY_ROWS} rows) built in {:.1}s:\n{}",
        t0.elapsed().as_secs_f64(),
        stdout(&out)
    );
    std::fs::write(&marker, stamp).unwrap();
    Some(dir)
}

/// What a committed output holds, to compare a rerun with an uninterrupted run: a dataset's
/// rows and column checksums (after verifying it).
pub fn dataset_result(
    ds: Result<geoloc_core::dataset::Dataset, String>,
) -> Result<serde_json::Value, String> {
    let ds = ds?;
    ds.verify().map_err(|e| e.to_string())?;
    Ok(serde_json::json!({"rows": ds.manifest.rows, "columns": ds.manifest.columns}))
}

/// A model directory's result: its fingerprint and its files' checksums, but the history's
/// (it records seconds per epoch).
pub fn model_result(dir: &Path) -> Result<serde_json::Value, String> {
    let m = geoloc_train::open(dir).map_err(|e| e.to_string())?;
    let mut files = m.info.metadata["files"].clone();
    files
        .as_object_mut()
        .ok_or("no files")?
        .remove("history.parquet");
    Ok(serde_json::json!({"fingerprint": m.info.fingerprint, "files": files}))
}

/// An evaluation's result: its files' checksums (metrics, predictions, run files, report and
/// plots), as its manifest lists them.
pub fn evaluation_result(dir: &Path) -> Result<serde_json::Value, String> {
    let m = geoloc_evaluate::open(dir).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({"fingerprint": m.info.fingerprint, "files": m.info.metadata["files"]}))
}

/// The demo pipeline (in `root`) with evaluate over the HOG head only, so that no Lite0 is
/// needed: its inputs cut to ingest, hog and hog_svm and its refinement (of Lite0 models)
/// dropped. Panics when the demo's evaluate table changed shape.
pub fn hog_only_demo(root: &Path) -> String {
    let demo = std::fs::read_to_string(root.join("pipelines/demo.toml")).unwrap();
    let all = r#"inputs = ["ingest", "lite0", "hog", "squash52x48", "country", "latlon", "geocells", "geocells_smooth", "hog_svm", "small_cnn", "knn"]"#;
    let refine = "refine = [{ model = \"geocells\", index = \"knn\", cells = 1 }]\n";
    assert!(
        demo.contains(all) && demo.contains(refine),
        "the demo's evaluate inputs changed"
    );
    demo.replace(all, r#"inputs = ["ingest", "hog", "hog_svm"]"#)
        .replace(refine, "")
}
