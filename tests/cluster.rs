//! Cluster submissions: the Slurm scripts and Kubernetes manifests `geoloc slurm` and
//! `geoloc k8s` write, and (where a Slurm cluster answers: CI starts one with
//! `.ci/slurm/start.sh`) the `tiny` demo run through `geoloc slurm --submit --wait` with 4
//! shards, equal to a local run, then a failure drill and its resubmission.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use support::{geoloc, stderr, stdout};

/// A project with the demo pipeline and `rows` rows of demo data, no runs.
fn fresh_project(rows: usize) -> tempfile::TempDir {
    support::demo_project(rows)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn slurm_scripts_shard_chain_and_requeue() {
    let t = support::metadata_project(200);
    let root = t.path();
    // GPU jobs want the CUDA build: this CPU build refuses to be their binary.
    let err = stderr(&geoloc(
        &["slurm", "pipelines/demo.toml", "--gpus-per-task", "1"],
        root,
        &[],
        false,
    ));
    assert!(
        err.contains("the CPU build") && err.contains("--gpu-binary"),
        "{err}"
    );
    std::fs::write(root.join("geoloc-cuda"), "").unwrap();
    let out = stdout(&geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--shards",
            "3",
            "--max-parallel",
            "2",
            "--gpu-binary",
            "geoloc-cuda",
            "--gpus-per-task",
            "1",
            "--partition",
            "gpu",
            "--account",
            "geo",
            "--time",
            "2:00:00",
            "--sbatch-arg=--qos=long",
            "--out",
            "sub",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("for 12 instances"), "{out}");
    let sub = root.join("sub");
    // Sharded kinds: an array and a finalize; the others one job each.
    let crop = read(&sub.join("03-squash52x48.sbatch"));
    assert!(crop.contains("#SBATCH --array=0-2%2"), "{crop}");
    assert!(crop.contains("--no-finalize"), "{crop}");
    assert!(!crop.contains("--gres"), "preprocess needs no GPU: {crop}");
    for want in [
        "#SBATCH --partition=gpu",
        "#SBATCH --account=geo",
        "#SBATCH --time=2:00:00",
        "#SBATCH --qos=long",
        "#SBATCH --kill-on-invalid-dep=yes",
        "squash52x48-%A_%a.out",
    ] {
        assert!(crop.contains(want), "{want}: {crop}");
    }
    let fin = read(&sub.join("03-squash52x48.finalize.sbatch"));
    assert!(
        fin.contains("finalize") && fin.contains("--shards 3"),
        "{fin}"
    );
    assert!(!fin.contains("--array"), "{fin}");
    let lite0 = read(&sub.join("02-lite0.sbatch"));
    assert!(
        lite0.contains("#SBATCH --gres=gpu:1") && lite0.contains("--device cuda"),
        "{lite0}"
    );
    // Train: the GPU, and under the time limit a budget, then requeue on exit 75.
    let train = read(&sub.join("04-country.sbatch"));
    assert!(train.contains("#SBATCH --gres=gpu:1") && train.contains("#SBATCH --requeue"));
    assert!(train.contains("#SBATCH --open-mode=append"), "{train}");
    assert!(
        train.contains("--max-seconds 6600"),
        "2 h less 10 min: {train}"
    );
    assert!(
        train.contains("= 75 ]") && train.contains("scontrol requeue"),
        "{train}"
    );
    assert!(!read(&sub.join("11-evaluate.sbatch")).contains("--gres"));
    // submit.sh: each job after its inputs' last jobs (the finalize of a sharded one).
    let submit = read(&sub.join("submit.sh"));
    assert!(submit.contains("submit squash52x48 shards 03-squash52x48.sbatch \"${J[ingest]}\""));
    assert!(submit.contains("submit squash52x48 finalize 03-squash52x48.finalize.sbatch \"$LAST\""));
    assert!(
        submit.contains("submit country run 04-country.sbatch \"${J[lite0]}\" \"${J[ingest]}\"")
    );
    assert!(submit.contains("--dependency=afterok:"));
    // The scripts are valid shell.
    for e in std::fs::read_dir(&sub).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "sbatch" || x == "sh") {
            let st = std::process::Command::new("bash")
                .arg("-n")
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success(), "{}", p.display());
        }
    }
    // A time limit Slurm would not take is refused before anything is written.
    let err = stderr(&geoloc(
        &["slurm", "pipelines/demo.toml", "--time", "soon"],
        root,
        &[],
        false,
    ));
    assert!(err.contains("not a Slurm time limit"), "{err}");
}

/// Kubernetes Indexed Jobs: every manifest parses and has the fields the Job API requires.
#[test]
fn k8s_manifests_are_indexed_jobs_the_api_accepts() {
    let t = support::metadata_project(200);
    let root = t.path();
    let out = stdout(&geoloc(
        &[
            "k8s",
            "pipelines/demo.toml",
            "--shards",
            "4",
            "--max-parallel",
            "2",
            "--image",
            "registry.example/geoloc:1",
            "--namespace",
            "geo",
            "--pvc",
            "geoloc-data",
            "--gpus-per-task",
            "1",
            "--out",
            "k8s",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("15 Job manifests for 12 instances"), "{out}");
    let dir = root.join("k8s");
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".job.json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 15);
    for f in &files {
        let j: Value = serde_json::from_str(&read(f)).unwrap();
        assert_eq!(j["apiVersion"], "batch/v1", "{}", f.display());
        assert_eq!(j["kind"], "Job");
        let name = j["metadata"]["name"].as_str().unwrap();
        assert!(
            name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-'),
            "DNS-1123 label: {name}"
        );
        assert_eq!(j["metadata"]["namespace"], "geo");
        let pod = &j["spec"]["template"]["spec"];
        assert!(
            ["Never", "OnFailure"].contains(&pod["restartPolicy"].as_str().unwrap()),
            "a Job's pods must not restart Always"
        );
        let c = &pod["containers"][0];
        assert!(c["name"].is_string());
        assert_eq!(c["image"], "registry.example/geoloc:1");
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(cmd[0], "geoloc");
        assert!(cmd.contains(&"/work/pipelines/demo.toml"), "{cmd:?}");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "geoloc-data"
        );
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/work");
        let indexed = j["spec"]["completionMode"] == "Indexed";
        let sharded_run = cmd.contains(&"--no-finalize");
        assert_eq!(indexed, sharded_run, "{}", f.display());
        if indexed {
            assert_eq!(j["spec"]["completions"], 4);
            assert_eq!(j["spec"]["parallelism"], 2);
            // The shard count the binary pairs with JOB_COMPLETION_INDEX.
            assert_eq!(c["env"][0]["name"], "GEOLOC_SHARD_COUNT");
            assert_eq!(c["env"][0]["value"], "4");
        }
        let gpu = &c["resources"]["limits"]["nvidia.com/gpu"];
        // HOG runs on CPU threads and the retrieval index (`knn`) trains nothing: their jobs
        // ask for no GPU.
        let wants_gpu = (cmd.contains(&"featurize") || cmd.contains(&"train"))
            && !cmd.contains(&"finalize")
            && !cmd.contains(&"hog")
            && !cmd.contains(&"knn");
        assert_eq!(gpu.as_u64() == Some(1), wants_gpu, "{}", f.display());
        names.push(name.to_owned());
    }
    let apply = read(&dir.join("apply.sh"));
    for n in &names {
        assert!(
            apply.contains(&format!("job/{n}")),
            "apply.sh waits for {n}"
        );
    }
    // Applied in dependency order: ingest before squash52x48 and lite0, lite0 before evaluate.
    let pos = |s: &str| apply.find(s).unwrap();
    assert!(pos("00-ingest") < pos("03-squash52x48") && pos("02-lite0") < pos("11-evaluate"));
}

/// One submission, two kinds of node: with `--gpu-binary`, `--gpu-partition` (Slurm) and
/// `--gpu-image` (Kubernetes), featurize and train run the CUDA build on the GPU partition
/// (or image) with a GPU, and every other job runs the CPU build on the CPU partition with
/// none, so that no CPU node has to start a binary that links the NVIDIA driver.
#[test]
fn gpu_jobs_take_the_gpu_binary_partition_and_image_the_others_the_cpu_ones() {
    let t = support::metadata_project(100);
    let root = t.path();
    let gpu_bin = root.join("geoloc-cuda");
    std::fs::write(&gpu_bin, "#!/bin/sh\n").unwrap();
    let cpu_bin = root.join("geoloc-cpu");
    std::fs::write(&cpu_bin, "#!/bin/sh\n").unwrap();
    let out = stdout(&geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--shards",
            "2",
            "--gpus-per-task",
            "1",
            "--partition",
            "cpu",
            "--gpu-partition",
            "h200",
            "--binary",
            "geoloc-cpu",
            "--gpu-binary",
            "geoloc-cuda",
            "--out",
            "sub",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("for 12 instances"), "{out}");
    let (mut gpu_jobs, mut cpu_jobs) = (0, 0);
    for e in std::fs::read_dir(root.join("sub")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "sbatch") {
            continue;
        }
        let text = read(&p);
        let exec = text
            .lines()
            .find(|l| l.starts_with("exec ") || l.contains(" --max-seconds "))
            .unwrap_or_else(|| panic!("no command in {}", p.display()));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let finalize = name.contains(".finalize.");
        // HOG features are computed on CPU threads, and the retrieval index (`knn`) trains
        // nothing: CPU jobs.
        let instance = exec
            .split_whitespace()
            .skip_while(|w| *w != "--instance")
            .nth(1)
            .unwrap_or_default();
        let gpu_kind = (exec.contains(" featurize ") || exec.contains(" train "))
            && instance != "hog"
            && instance != "knn";
        if gpu_kind && !finalize {
            gpu_jobs += 1;
            assert!(
                exec.contains(&gpu_bin.display().to_string()),
                "{name}: {exec}"
            );
            assert!(exec.contains("--device cuda"), "{name}: {exec}");
            for want in ["#SBATCH --gres=gpu:1", "#SBATCH --partition=h200", "ldd "] {
                assert!(text.contains(want), "{name}: {want}\n{text}");
            }
            assert!(!text.contains("--partition=cpu"), "{name}");
        } else {
            cpu_jobs += 1;
            assert!(
                exec.contains(&cpu_bin.display().to_string()),
                "{name}: {exec}"
            );
            assert!(!text.contains("geoloc-cuda"), "{name}: {text}");
            assert!(
                !text.contains("--device cuda") && !text.contains("--gres"),
                "{name}"
            );
            assert!(text.contains("#SBATCH --partition=cpu"), "{name}: {text}");
            assert!(!text.contains("ldd "), "{name}: CPU jobs need no preflight");
        }
        let st = std::process::Command::new("bash")
            .arg("-n")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success(), "{name} is not valid shell");
    }
    // Lite0's featurize and the six train jobs on GPUs; ingest, the 52x48 preprocess, HOG,
    // their finalizes, Lite0's finalize, the knn index and evaluate on CPUs.
    assert_eq!((gpu_jobs, cpu_jobs), (7, 8));

    // Kubernetes: the GPU jobs' image holds the CUDA build.
    geoloc(
        &[
            "k8s",
            "pipelines/demo.toml",
            "--image",
            "reg.example/geoloc:cpu",
            "--gpu-image",
            "reg.example/geoloc:cuda",
            "--gpus-per-task",
            "1",
            "--out",
            "k8s",
        ],
        root,
        &[],
        true,
    );
    let mut seen = (0, 0);
    for e in std::fs::read_dir(root.join("k8s")).unwrap() {
        let p = e.unwrap().path();
        if !p.to_string_lossy().ends_with(".job.json") {
            continue;
        }
        let j: Value = serde_json::from_str(&read(&p)).unwrap();
        let c = &j["spec"]["template"]["spec"]["containers"][0];
        let gpu = c["resources"]["limits"]["nvidia.com/gpu"].as_u64() == Some(1);
        let image = c["image"].as_str().unwrap();
        if gpu {
            seen.0 += 1;
            assert_eq!(image, "reg.example/geoloc:cuda", "{}", p.display());
        } else {
            seen.1 += 1;
            assert_eq!(image, "reg.example/geoloc:cpu", "{}", p.display());
        }
    }
    assert_eq!(seen, (7, 8));

    // The GPU settings without GPUs, or a GPU binary that is not there: refused.
    for (args, want) in [
        (vec!["--gpu-binary", "geoloc-cuda"], "give --gpus-per-task"),
        (vec!["--gpu-partition", "h200"], "give --gpus-per-task"),
        (
            vec!["--gpus-per-task", "1", "--gpu-binary", "nowhere/geoloc"],
            "no such file",
        ),
    ] {
        let mut a = vec!["slurm", "pipelines/demo.toml", "--out", "sub2"];
        a.extend(args);
        let err = stderr(&geoloc(&a, root, &[], false));
        assert!(err.contains(want), "{a:?}: {err}");
    }
}

/// `geoloc slurm --force`: every job recomputes (`--force`), but a train job under a time
/// limit only on its first start, so that its requeued runs continue from its checkpoint.
#[test]
fn slurm_force_recomputes_but_requeued_training_continues() {
    let t = support::metadata_project(100);
    let root = t.path();
    geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--force",
            "--time",
            "1:00:00",
            "--out",
            "sub",
        ],
        root,
        &[],
        true,
    );
    // The script of a job: NN-NAME[.finalize].sbatch.
    let script = |suffix: &str| -> PathBuf {
        std::fs::read_dir(root.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix}"))
    };
    let hog = read(&script("-hog.sbatch"));
    let exec = hog.lines().find(|l| l.starts_with("exec ")).unwrap();
    assert!(exec.contains(" --force"), "{hog}");
    assert!(!read(&script("-hog.finalize.sbatch")).contains("--force"));
    let train = read(&script("-country.sbatch"));
    assert!(
        train.contains(r#"$([ "${SLURM_RESTART_COUNT:-0}" = 0 ] && echo --force)"#),
        "{train}"
    );
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(script("-country.sbatch"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// The Slurm cluster the tests use, if one answers (`scontrol ping`).
fn slurm() -> bool {
    let up = std::process::Command::new("scontrol")
        .arg("ping")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("is UP"));
    if up {
        return true;
    }
    let msg = "no Slurm cluster answers `scontrol ping` (start one: sudo .ci/slurm/start.sh, then \
               source /tmp/geoloc-slurm/env.sh)";
    if std::env::var("GEOLOC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
        panic!("{msg}, and GEOLOC_REQUIRE_SHARED=1 requires it");
    }
    eprintln!("SKIP: {msg}");
    false
}

/// A run's results without timings: per instance, what a rerun must reproduce. (Not the
/// fingerprints: ingest's and preprocess's cover their source files' modification times,
/// which differ between two projects generated with the same bytes.)
fn results(runs: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(runs).unwrap() {
        let dir = e.unwrap().path();
        let Ok(m) = geoloc_core::dataset::Manifest::load(&dir) else {
            continue;
        };
        let mut v = serde_json::json!({
            "rows": m.rows,
            "rejects": m.rejects,
            "columns": m.columns,
            "config": m.info.config,
        });
        // Artifacts: every file but those holding timings (history: seconds per epoch); the
        // model card and the index card but the fingerprint of their input (which covers
        // source times, above).
        let cards = ["model.json", "index.json"];
        if let Some(files) = m.info.metadata.get("files").and_then(|f| f.as_object()) {
            let kept: BTreeMap<&String, &Value> = files
                .iter()
                .filter(|(k, _)| !k.ends_with("history.parquet") && !cards.contains(&k.as_str()))
                .map(|(k, f)| (k, &f["blake3"]))
                .collect();
            v["files"] = serde_json::to_value(kept).unwrap();
            for name in cards.iter().filter(|c| files.contains_key(**c)) {
                let mut card: Value = serde_json::from_str(&read(&dir.join(name))).unwrap();
                card["input_fingerprint"] = Value::Null;
                v[*name] = card;
            }
        }
        out.insert(dir.file_name().unwrap().to_string_lossy().into_owned(), v);
    }
    out
}

#[test]
fn the_tiny_demo_through_slurm_equals_a_local_run_and_recovers_from_a_failed_shard() {
    let Some(local) = support::shared_tiny_demo() else {
        return;
    };
    if !slurm() {
        return;
    }
    let t = fresh_project(support::TINY_ROWS);
    let root = t.path();
    let t0 = std::time::Instant::now();
    let o = geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--shards",
            "4",
            "--submit",
            "--wait",
        ],
        root,
        &[],
        true,
    );
    let out = stdout(&o);
    assert!(out.contains("submitted lite0 shards"), "{out}");
    assert!(out.contains("all 24 jobs completed"), "{out}");
    eprintln!(
        "tiny demo through Slurm: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // Every instance: the same rows, column checksums, configs, model and metrics bytes as
    // the local run; the sharded datasets have 4 shards' parts.
    let (a, b) = (
        results(&root.join("runs/demo")),
        results(&local.join("runs/demo")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert_eq!(v, &b[k], "{k} differs from the local run");
    }
    let m = geoloc_core::dataset::Manifest::load(&root.join("runs/demo/lite0")).unwrap();
    assert_eq!(m.shards, 4);
    let out = stdout(&geoloc(&["slurm", "pipelines/demo.toml"], root, &[], true));
    assert!(out.contains("every instance is fresh"), "{out}");

    // A failure drill: shard 2 of lite0 fails. Its finalize and everything downstream of
    // it are cancelled; the failure is named with its shard and log.
    let t2 = fresh_project(support::TINY_ROWS);
    let root = t2.path();
    let o = geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--shards",
            "4",
            "--submit",
            "--wait",
        ],
        root,
        &[("GEOLOC_FAULT", "lite0:2")],
        false,
    );
    let err = stderr(&o);
    assert!(err.contains("`lite0` shard 2"), "{err}");
    assert!(err.contains("FAILED exit 1:0"), "{err}");
    assert!(
        err.contains("logs/lite0-") && err.contains("fails on purpose"),
        "{err}"
    );
    assert!(
        err.contains("`lite0` finalize") && err.contains("cancelled because"),
        "{err}"
    );
    for downstream in [
        "country",
        "latlon",
        "geocells",
        "geocells_smooth",
        "knn",
        "evaluate",
    ] {
        assert!(
            err.contains(&format!("`{downstream}` (job")),
            "{downstream}: {err}"
        );
        assert!(!root
            .join("runs/demo")
            .join(downstream)
            .join("_manifest.json")
            .exists());
    }
    // What did not depend on lite0 completed.
    assert!(root.join("runs/demo/hog_svm/_manifest.json").exists());
    // The resubmission plans only what is not fresh, and finishes it: equal to local.
    let o = geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--shards",
            "4",
            "--submit",
            "--wait",
        ],
        root,
        &[],
        true,
    );
    let out = stdout(&o);
    assert!(
        out.contains("for 7 instances"),
        "lite0 and its six dependants: {out}"
    );
    assert!(!out.contains("submitted hog_svm"), "{out}");
    let a = results(&root.join("runs/demo"));
    for (k, v) in &a {
        assert_eq!(
            v, &b[k],
            "{k} differs from the local run after the resubmission"
        );
    }
    // The resubmitted lite0 kept the parts the surviving shards had closed.
    let logs = std::fs::read_dir(root.join("runs/demo/_slurm/logs")).unwrap();
    let kept = logs
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|t| t.contains("(0 computed, "));
    assert!(kept, "a resubmitted lite0 shard reused its closed parts");
}

/// Under a Slurm time limit a train job trains for its budget, checkpoints, requeues itself
/// (same job id: the evaluate job waiting on it keeps waiting) and resumes until done.
#[test]
fn a_train_job_under_a_time_limit_requeues_itself_until_done() {
    let Some(local) = support::shared_tiny_demo() else {
        return;
    };
    if !slurm() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    support::copy_tree(&local, root);
    // Six epochs of the small CNN take longer than the 20 s a 40 s limit leaves.
    let pipe = root.join("pipelines/demo.toml");
    let text = read(&pipe);
    let old = "head = \"small-cnn\"\nepochs = 2";
    assert!(text.contains(old));
    std::fs::write(&pipe, text.replace(old, "head = \"small-cnn\"\nepochs = 6")).unwrap();
    let o = geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--time",
            "0:40",
            "--submit",
            "--wait",
        ],
        root,
        &[],
        true,
    );
    let out = stdout(&o);
    assert!(
        out.contains("for 2 instances"),
        "small_cnn and evaluate: {out}"
    );
    assert!(out.contains("all 2 jobs completed"), "{out}");
    let logs: Vec<String> = std::fs::read_dir(root.join("runs/demo/_slurm/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("small_cnn-")
        })
        .map(|p| read(&p))
        .collect();
    assert_eq!(logs.len(), 1, "one job id across its runs");
    let log = &logs[0];
    assert!(log.contains("time budget spent after epoch"), "{log}");
    assert!(log.contains("requeueing job"), "{log}");
    assert!(log.contains("(resumed at "), "{log}");
    let card = geoloc_models::card::ModelCard::load(&root.join("runs/demo/small_cnn")).unwrap();
    assert_eq!(card.epochs_run, 6);
    geoloc_evaluate::open(&root.join("runs/demo/evaluate")).unwrap();
}
