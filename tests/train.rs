//! The train stage through the real binary: the chain ingest -> squash -> HOG -> MLP of a
//! generated demo project, a training run killed (SIGKILL) after a checkpoint and rerun,
//! which resumes and ends with the same model bytes as an uninterrupted run.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{copy_dir, demo_project, geoloc, stdout};

const PIPELINE: &str = r#"
[pipeline]
name = "t"
root = ".."

[stages.ingest]
kind = "ingest"
[stages.ingest.config]
images_root = "data/demo/images"
classes = { list = ["DE", "CA", "IT", "ES", "FR"] }
split = { train = 0.8, val = 0.2 }
[[stages.ingest.config.sources]]
format = "mediaeval-locale"
path = "data/demo/train.tsv"

[stages.squash]
kind = "preprocess"
inputs = ["ingest"]
[stages.squash.config]
geometry = { kind = "squash", width = 150, height = 90 }

[stages.hog]
kind = "featurize"
inputs = ["squash"]
[stages.hog.config]
backbone = "hog"

[stages.mlp]
kind = "train"
inputs = ["hog", "ingest"]
[stages.mlp.config]
hidden = 256
epochs = 40
batch = 100
standardise = true
optimizer = { kind = "adam", lr = 0.0005 }
checkpoint_every = 2
"#;

fn checkpoint_epoch(dir: &Path) -> Option<u64> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("checkpoint.json")).ok()?).ok()?;
    v["epoch"].as_u64()
}

#[test]
fn a_killed_training_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run() {
    let p = demo_project(500);
    let root = p.path();
    std::fs::write(root.join("pipelines/t.toml"), PIPELINE).unwrap();
    let pipe = "pipelines/t.toml";
    let out = stdout(&geoloc(
        &[
            "run", pipe, "--only", "ingest", "--only", "squash", "--only", "hog",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("hog: ran"), "{out}");
    // `--resume` with nothing to resume from is an error that says so.
    let e = support::stderr(&geoloc(
        &["train", "--pipeline", pipe, "--instance", "mlp", "--resume"],
        root,
        &[],
        false,
    ));
    assert!(e.contains("no checkpoint"), "{e}");

    // Uninterrupted reference.
    let out = stdout(&geoloc(&["run", pipe, "--only", "mlp"], root, &[], true));
    assert!(
        out.contains("mlp: ran") && !out.contains("resumed"),
        "{out}"
    );
    let reference = root.join("runs/t/mlp");
    assert!(
        !reference.join("checkpoint.json").exists(),
        "finalize removes the checkpoint"
    );
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference.join("model.json")).unwrap()).unwrap();
    let (acc, acc0) = (
        card["best"]["accuracy"].as_f64().unwrap(),
        card["epoch0"]["accuracy"].as_f64().unwrap(),
    );
    assert!(acc > acc0 + 0.1, "trained {acc} vs epoch 0 {acc0}");

    // The same run in another runs dir, killed once a checkpoint is on disk.
    let other = root.join("runs-killed");
    for up in ["ingest", "squash", "hog"] {
        copy_dir(&root.join("runs/t").join(up), &other.join(up));
    }
    let dir = other.join("mlp");
    let mut child = Command::new(env!("CARGO_BIN_EXE_geoloc"))
        .args([
            "--no-progress",
            "-q",
            "run",
            pipe,
            "--only",
            "mlp",
            "--runs-dir",
        ])
        .arg(&other)
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let killed_after = loop {
        if let Some(e) = checkpoint_epoch(&dir) {
            if e >= 4 {
                let _ = child.kill();
                let _ = child.wait();
                break e;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(killed_after < 40, "{killed_after}");
    // Killed: nothing committed, the runner says so, a reader refuses it.
    assert!(geoloc_train::open(&dir).is_err());
    let st = stdout(&geoloc(
        &["status", pipe, "--runs-dir", "runs-killed"],
        root,
        &[],
        true,
    ));
    assert!(st.contains("mlp") && st.contains("missing"), "{st}");

    // The rerun resumes after a checkpointed epoch and ends where the reference ended.
    let out = stdout(&geoloc(
        &[
            "train",
            "--pipeline",
            pipe,
            "--instance",
            "mlp",
            "--runs-dir",
            "runs-killed",
            "--resume",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("resumed at"), "{out}");
    geoloc_train::open(&dir).unwrap();
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(
        read(&reference, "model.safetensors"),
        read(&dir, "model.safetensors")
    );
    let strip = |d: &Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&read(d, "model.json")).unwrap();
        v.as_object_mut().unwrap().remove("hyperparameters");
        v
    };
    assert_eq!(strip(&reference), strip(&dir));
    let st = stdout(&geoloc(
        &["status", pipe, "--runs-dir", "runs-killed"],
        root,
        &[],
        true,
    ));
    assert!(st.contains("4 of 4 instances fresh"), "{st}");
}
