//! featurize end to end through the real binary: the demo's Lite0 (the real checkpoint,
//! recorded by its checksum) and HOG instances, straight from the photos; the same features
//! bit for bit as preprocess followed by featurize, on the demo photos and the shared real
//! ones; sharding; a kill mid-run and a rerun that keeps the parts already closed (mid-photo
//! too); and the errors a user meets first.

mod support;

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use geoloc_core::dataset::{Dataset, Manifest};
use geoloc_core::schema;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{demo_project, geoloc, stderr, stdout, PIXEL_DEMO};

const PIPE: &str = "pipelines/demo.toml";

fn features(dir: &Path) -> Dataset {
    let m = Manifest::load(dir).unwrap();
    let ds = Dataset::open(dir, &schema::features(schema::features_dim(&m).unwrap())).unwrap();
    ds.verify().unwrap();
    ds
}

/// (id, view) of every row, in order.
fn keys(ds: &Dataset) -> Vec<(String, u8)> {
    let mut v = Vec::new();
    for b in ds.read_all().unwrap() {
        let ids = b.column(0).as_string::<i32>();
        let views = b.column(1).as_primitive::<arrow::datatypes::UInt8Type>();
        for i in 0..b.num_rows() {
            v.push((ids.value(i).to_owned(), views.value(i)));
        }
    }
    v
}

#[test]
fn demo_featurize_lite0_and_hog_with_shards() {
    let Some(lite0) = support::lite0() else {
        return;
    };
    let p = demo_project(700);
    let root = p.path();
    for inst in ["ingest", "lite0", "hog"] {
        geoloc(&["run", PIPE, "--only", inst], root, &[], true);
    }
    // One row per usable photo, in samples order, and a reject for each of the others.
    let samples = Dataset::open(&root.join("runs/demo/ingest"), &schema::samples()).unwrap();
    let mut sample_ids = Vec::new();
    samples
        .for_each_sample(|r| sample_ids.push(r.id.to_owned()))
        .unwrap();

    let ds = features(&root.join("runs/demo/lite0"));
    let meta = &ds.manifest.info.metadata;
    assert_eq!(meta["backbone"], "lite0");
    assert_eq!(meta["layer"], "pool");
    assert_eq!(meta["dim"], 1280);
    assert_eq!(meta["normalisation"], "tf-lite");
    assert_eq!(meta["random_init"], false);
    let want = blake3::hash(&std::fs::read(&lite0).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(
        meta["weights_blake3"],
        want.as_str(),
        "the real checkpoint, by content"
    );
    assert_eq!(meta["samples"], "ingest");
    assert_eq!(meta["width"], 224);
    assert_eq!(meta["geometry"]["kind"], "resize-crop");
    let rejected: Vec<String> = ds
        .read_rejects()
        .unwrap()
        .iter()
        .flat_map(|b| {
            let ids = b.column_by_name("id").unwrap().as_string::<i32>().clone();
            (0..b.num_rows()).map(move |i| ids.value(i).to_owned())
        })
        .collect();
    let usable: Vec<(String, u8)> = sample_ids
        .iter()
        .filter(|id| !rejected.contains(id))
        .map(|id| (id.clone(), 0))
        .collect();
    assert_eq!(keys(&ds), usable, "one row per usable photo, in order");
    assert_eq!(
        usable.len() + rejected.len(),
        sample_ids.len(),
        "every photo is a row or a reject"
    );
    // Pool features after ReLU6 lie in [0, 6], differ between photos, and are not constant.
    let b = &ds.read_all().unwrap()[0];
    let list = b.column(2).as_fixed_size_list();
    let first = list.value(0);
    let second = list.value(1);
    let (a, c) = (
        first.as_primitive::<Float32Type>().values(),
        second.as_primitive::<Float32Type>().values(),
    );
    assert!(a.iter().chain(c.iter()).all(|v| (0.0..=6.0).contains(v)));
    assert_ne!(a, c);
    assert!(a.iter().filter(|v| **v > 0.0).count() > 100);

    let hog = features(&root.join("runs/demo/hog"));
    assert_eq!(hog.manifest.info.metadata["dim"], 24 * 14 * 36);
    assert_eq!(hog.manifest.rows, ds.manifest.rows);

    // Every part records the kernels that computed it: this CPU's f32 gemm path, or HOG.
    let cpu = format!(
        "cpu f32 {}",
        geoloc_models::cpu::CpuFeatures::detect().f32_path()
    );
    for (m, want) in [(&ds.manifest, cpu.as_str()), (&hog.manifest, "hog")] {
        assert!(!m.parts.is_empty());
        for part in &m.parts {
            assert_eq!(part.compute.as_deref(), Some(want), "{}", part.file);
        }
    }

    // Two shards, then finalize: the same rows and bit-identical values.
    let runs = root.join("sharded");
    support::copy_dir(&root.join("runs/demo/ingest"), &runs.join("ingest"));
    for s in ["0/2", "1/2"] {
        let out = geoloc(
            &[
                "featurize",
                "--pipeline",
                PIPE,
                "--instance",
                "lite0",
                "--runs-dir",
                runs.to_str().unwrap(),
                "--shard",
                s,
            ],
            root,
            &[],
            true,
        );
        assert!(
            stdout(&out).contains(&format!("lite0 shard {s}")),
            "{}",
            stdout(&out)
        );
    }
    geoloc(
        &[
            "finalize",
            PIPE,
            "--instance",
            "lite0",
            "--shards",
            "2",
            "--runs-dir",
            runs.to_str().unwrap(),
        ],
        root,
        &[],
        true,
    );
    let sharded = features(&runs.join("lite0"));
    assert_eq!(sharded.manifest.rows, ds.manifest.rows);
    assert_eq!(sharded.manifest.columns, ds.manifest.columns);
    assert_eq!(
        sharded.manifest.info.fingerprint,
        ds.manifest.info.fingerprint
    );

    bf16_on_the_cpu(root, &ds);
}

/// The demo's Lite0 with `dtype = "bf16"`: where the CPU has AVX512-BF16, every row within
/// cosine 0.999 of the f32 run's (`f32`), the parts recording the bf16 kernels and the dtype
/// in the fingerprint; elsewhere one clear refusal naming what the CPU has.
fn bf16_on_the_cpu(root: &Path, f32: &Dataset) {
    let pipe = std::fs::read_to_string(root.join(PIPE)).unwrap().replace(
        "[stages.lite0.config]\n",
        "[stages.lite0.config]\ndtype = \"bf16\"\n",
    );
    assert!(pipe.contains("dtype = \"bf16\""));
    std::fs::write(root.join("pipelines/demo_bf16.toml"), pipe).unwrap();
    let runs = root.join("bf16");
    support::copy_dir(&root.join("runs/demo/ingest"), &runs.join("ingest"));
    let cpu = geoloc_models::cpu::CpuFeatures::detect();
    let args = [
        "featurize",
        "--pipeline",
        "pipelines/demo_bf16.toml",
        "--instance",
        "lite0",
        "--runs-dir",
        runs.to_str().unwrap(),
    ];
    let Some(_) = cpu.bf16_path() else {
        let out = geoloc(&args, root, &[], false);
        let e = stderr(&out);
        assert!(e.contains("dtype bf16 on the CPU needs AVX512-BF16"), "{e}");
        eprintln!("SKIPPED: featurize in bf16: this CPU has no AVX512-BF16 (refusal checked)");
        return;
    };
    // The dot-product kernel by name: the process would otherwise time both (they give the
    // same values bit for bit, `bf16.rs`'s tests) and may pick either.
    let out = geoloc(&args, root, &[("GEOLOC_BF16_KERNEL", "dot")], true);
    let kernels = "cpu bf16 avx512-bf16".to_owned();
    assert!(stdout(&out).contains(&kernels), "{}", stdout(&out));
    let bf = features(&runs.join("lite0"));
    assert_eq!(bf.manifest.info.metadata["dtype"], "bf16");
    assert_ne!(bf.manifest.info.fingerprint, f32.manifest.info.fingerprint);
    for part in &bf.manifest.parts {
        assert_eq!(
            part.compute.as_deref(),
            Some(kernels.as_str()),
            "{}",
            part.file
        );
    }
    assert_eq!(keys(&bf), keys(f32));
    let rows = |ds: &Dataset| -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        for b in ds.read_all().unwrap() {
            let list = b.column(2).as_fixed_size_list();
            for i in 0..b.num_rows() {
                v.push(
                    list.value(i)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                );
            }
        }
        v
    };
    let mut worst = 1.0f64;
    for (a, b) in rows(f32).iter().zip(rows(&bf)) {
        let dot: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let c = dot / (norm(a) * norm(&b));
        assert!(c > 0.999, "a row's cosine to f32 is {c}");
        worst = worst.min(c);
    }
    eprintln!("featurize bf16 ({kernels}): lowest cosine to f32 {worst:.6}");
}

/// A config file run of Lite0 on random weights (no checkpoint needed), small parts; from
/// photos with five views each when `geometry` is given.
fn random_lite0_config(root: &Path, geometry: &str) -> std::path::PathBuf {
    let cfg = root.join("lite0-random.toml");
    std::fs::write(
        &cfg,
        format!(
            "backbone = 'lite0'\nlayer = 'pool'\nrandom_init = true\nseed = 5\nbatch = 16\npart_cap_mb = 1\n{geometry}"
        ),
    )
    .unwrap();
    cfg
}

/// From photos, five views each, batches of 16 rows: parts end mid-photo, and the rerun
/// after a kill continues from the view after the last one kept.
#[test]
fn killed_featurize_keeps_closed_parts_and_equals_an_uninterrupted_run() {
    let p = demo_project(600);
    let root = p.path();
    geoloc(&["run", PIPE, "--only", "ingest"], root, &[], true);
    // Small crops keep the run short; the rows are 1280 features all the same.
    let cfg = random_lite0_config(
        root,
        "geometry = { kind = 'resize-crop', resize = 128, crop = 112 }\nviews = { kind = 'five-crop' }\n",
    );
    let input = root.join("runs/demo/ingest");
    let args = |out: &str| {
        vec![
            "featurize".to_string(),
            "--config".into(),
            cfg.to_str().unwrap().into(),
            "--input".into(),
            input.to_str().unwrap().into(),
            "--out".into(),
            out.into(),
        ]
    };
    let whole = root.join("whole");
    let a = args(whole.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    geoloc(&a, root, &[], true);
    let reference = features(&whole);
    assert!(
        reference.manifest.parts.len() >= 3,
        "small parts: {}",
        reference.manifest.parts.len()
    );
    assert_eq!(reference.manifest.info.metadata["random_init"], true);
    assert_eq!(reference.manifest.info.metadata["seed"], 5);
    assert!(reference.manifest.info.metadata["weights_blake3"].is_null());

    // Kill once the first part has closed (its sidecar is in place).
    let killed = root.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_geoloc"))
        .arg("--no-progress")
        .args(args(killed.to_str().unwrap()))
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = killed.join("part-00000-of-00001-0000.json");
    let t0 = Instant::now();
    while !first.exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(first.exists(), "no part closed in 120 s");
    if status.success() {
        panic!("featurize finished before the kill; make the run longer");
    }
    assert!(
        Dataset::open(&killed, &schema::features(1280)).is_err(),
        "no commit yet"
    );

    let a = args(killed.to_str().unwrap());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = stdout(&geoloc(&a, root, &[], true));
    let kept: u64 = out
        .split(" computed, ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no kept count in {out}"));
    assert!(
        kept > 0 && kept < reference.manifest.rows,
        "kept {kept}: {out}"
    );
    let cursors: Vec<serde_json::Value> = reference
        .manifest
        .parts
        .iter()
        .map(|p| p.cursor.clone().unwrap())
        .collect();
    assert!(
        cursors.iter().any(|c| c["view"] != 0),
        "some part ends mid-photo: {cursors:?}"
    );
    let resumed = features(&killed);
    assert_eq!(resumed.manifest.rows, reference.manifest.rows);
    assert_eq!(
        resumed.manifest.columns, reference.manifest.columns,
        "bit-identical"
    );
    let tmp: Vec<_> = std::fs::read_dir(&killed)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty());
}

#[test]
fn featurize_errors_name_the_fix() {
    let p = demo_project(60);
    let root = p.path();
    geoloc(&["run", PIXEL_DEMO, "--only", "ingest"], root, &[], true);
    geoloc(&["run", PIXEL_DEMO, "--only", "crop224"], root, &[], true);
    let input = root.join("runs/demo/crop224");
    let samples = root.join("runs/demo/ingest");
    let run_on = |cfg: &str, input: &Path| {
        let f = root.join("c.toml");
        std::fs::write(&f, cfg).unwrap();
        stderr(&geoloc(
            &[
                "featurize",
                "--config",
                f.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                root.join("o").to_str().unwrap(),
            ],
            root,
            &[],
            false,
        ))
    };
    let run = |cfg: &str| run_on(cfg, &input);
    // From photos: the geometry is required; over pixels, the photo keys are refused.
    let e = run_on("backbone = 'hog'", &samples);
    assert!(
        e.contains("needs `geometry`") && e.contains("resize-crop"),
        "{e}"
    );
    let e = run("backbone = 'hog'\ngeometry = { kind = 'squash', width = 150, height = 90 }");
    assert!(
        e.contains("is an images dataset") && e.contains("only when featurizing from photos"),
        "{e}"
    );
    let e = run("backbone = 'lite0'");
    assert!(
        e.contains("cargo xtask fetch-lite0") && e.contains("random_init"),
        "{e}"
    );
    let e = run("backbone = 'vgg16'\nweights = 'nowhere/vgg16.pth'");
    assert!(e.contains("nowhere/vgg16.pth not found"), "{e}");
    let e = run("backbone = 'googlenet'\nlayer = 'fc7'\nrandom_init = true");
    assert!(e.contains("googlenet has no layer Fc7"), "{e}");
    // A checkpoint of another architecture: every problem named.
    let e = run(&format!(
        "backbone = 'lite0'\nweights = '{}'",
        support::workspace()
            .join("crates/models/tests/fixtures/googlenet_tiny_zip.pth")
            .display()
    ));
    assert!(e.contains("missing: _blocks.0._bn1.bias [32]"), "{e}");
    assert_eq!(e.matches("weights do not fit").count(), 1, "said once: {e}");
    assert!(e.contains("unexpected: "), "{e}");
    // HOG needs a whole number of cells: 224 / 6 is not.
    let e = run("backbone = 'hog'");
    assert!(e.contains("hog on 224x224"), "{e}");
    // --random-init on the command line replaces the weights of the config.
    let f = root.join("c.toml");
    std::fs::write(
        &f,
        "backbone = 'googlenet'\nlayer = 'pool'\nweights = 'nowhere.pth'\n",
    )
    .unwrap();
    let out = stdout(&geoloc(
        &[
            "featurize",
            "--config",
            f.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            root.join("o").to_str().unwrap(),
            "--random-init",
            "--seed",
            "3",
            "--batch",
            "4",
        ],
        root,
        &[],
        true,
    ));
    assert!(out.contains("of 1024 features"), "{out}");
    let ds = features(&root.join("o"));
    assert_eq!(ds.manifest.info.metadata["random_init"], true);
    assert_eq!(ds.manifest.info.config["batch"], 4);
}

/// `geoloc run --force` recomputes: a forced rerun of a committed featurize instance keeps
/// none of its parts (it used to keep them all and compute nothing), and gives the same
/// features; without --force a fresh instance is skipped.
#[test]
fn run_force_recomputes_featurize_instead_of_keeping_its_parts() {
    let p = demo_project(200);
    let root = p.path();
    for inst in ["ingest", "hog"] {
        geoloc(&["run", PIPE, "--only", inst], root, &[], true);
    }
    let dir = root.join("runs/demo/hog");
    let before = keys(&features(&dir));
    let checksum = |d: &Path| {
        Manifest::load(d)
            .unwrap()
            .column_checksum("feature")
            .unwrap()
            .to_owned()
    };
    let sum_before = checksum(&dir);
    let skipped = stdout(&geoloc(&["run", PIPE, "--only", "hog"], root, &[], true));
    assert!(skipped.contains("hog: fresh"), "{skipped}");
    let forced = stdout(&geoloc(
        &["run", PIPE, "--only", "hog", "--force"],
        root,
        &[],
        true,
    ));
    let n = before.len();
    assert!(
        forced.contains(&format!(
            "{n} rows of 12096 features ({n} computed, 0 kept from an earlier run)"
        )),
        "{forced}"
    );
    assert_eq!(keys(&features(&dir)), before);
    assert_eq!(checksum(&dir), sum_before);
    // The stage command takes --force too (what `geoloc slurm --force` gives its jobs).
    let stage = stdout(&geoloc(
        &[
            "featurize",
            "--pipeline",
            PIPE,
            "--instance",
            "hog",
            "--force",
        ],
        root,
        &[],
        true,
    ));
    assert!(stage.contains(&format!("({n} computed, 0 kept")), "{stage}");
    assert_eq!(checksum(&dir), sum_before);
}

/// (id, reason) of every reject of a dataset, in order.
fn rejects(ds: &Dataset) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for b in ds.read_rejects().unwrap() {
        let ids = b.column_by_name("id").unwrap().as_string::<i32>();
        let reasons = b.column_by_name("reason").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            v.push((ids.value(i).to_owned(), reasons.value(i).to_owned()));
        }
    }
    v
}

/// Featurizes `samples` twice, through a pixel dataset (preprocess, then featurize) and
/// from the photos, with the same settings; asserts the two are the same: every row and
/// view in order, every feature value (the manifests' per-column checksums of xxh3-128 row
/// hashes), and the same rejects. Returns the rows and rejects.
fn assert_photos_equal_pixels(
    root: &Path,
    name: &str,
    samples: &Path,
    photo_keys: &str,
    backbone: &str,
) -> (usize, usize) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Config files resolve their paths (the samples' images root) against their folder.
    let write = |file: &str, text: String| {
        let f = root.join(format!("{name}-{file}"));
        std::fs::write(&f, text).unwrap();
        f
    };
    let pre = write("pre.toml", photo_keys.to_string());
    let feat = write("feat.toml", backbone.to_string());
    let direct = write("direct.toml", format!("{backbone}\n{photo_keys}"));
    let run = |args: &[&Path]| {
        let [stage_cfg, input, out] = args else {
            unreachable!()
        };
        let cmd = if *stage_cfg == pre {
            "preprocess"
        } else {
            "featurize"
        };
        stdout(&geoloc(
            &[
                cmd,
                "--config",
                stage_cfg.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            root,
            &[],
            true,
        ))
    };
    let (pixels, via, from) = (dir.join("pixels"), dir.join("via"), dir.join("from"));
    run(&[&pre, samples, &pixels]);
    run(&[&feat, &pixels, &via]);
    let line = run(&[&direct, samples, &from]);
    assert!(line.contains("from photos:"), "{line}");
    let pixels = geoloc_preprocess::open(&pixels).unwrap();
    let (via, from) = (features(&via), features(&from));
    assert_eq!(keys(&from), keys(&via), "{name}: rows and views, in order");
    assert_eq!(
        from.manifest.columns, via.manifest.columns,
        "{name}: every value the same (column checksums)"
    );
    assert_eq!(
        rejects(&from),
        rejects(&pixels),
        "{name}: the same rejects with the same reasons"
    );
    assert_eq!(
        from.manifest.info.metadata["geometry"],
        via.manifest.info.metadata["geometry"]
    );
    assert_eq!(
        from.manifest.info.metadata["views"],
        via.manifest.info.metadata["views"]
    );
    assert!(from.manifest.rows > 0, "{name}: no rows: {line}");
    (from.manifest.rows as usize, rejects(&from).len())
}

/// Featurize from photos equals preprocess followed by featurize, bit for bit: on the demo
/// photos (ten-crop views, batches that split photos, greyscale converted) and on the real
/// photos of `../shared/data/photos` (EXIF orientations, large JPEGs at a DCT scale); the
/// demo's broken photos give the same rejects. Lite0 on random weights (the kernels are those of the real
/// checkpoint) and HOG.
#[test]
fn featurize_from_photos_equals_preprocess_then_featurize() {
    let p = demo_project(120);
    let root = p.path();
    geoloc(&["run", PIPE, "--only", "ingest"], root, &[], true);
    let demo = root.join("runs/demo/ingest");
    let lite0 = "backbone = 'lite0'\nlayer = 'pool'\nrandom_init = true\nseed = 11\nbatch = 7";
    let (rows, _) = assert_photos_equal_pixels(
        root,
        "demo-lite0",
        &demo,
        "geometry = { kind = 'resize-crop', resize = 256, crop = 224 }\nviews = { kind = 'ten-crop' }\ngreyscale = 'convert'",
        lite0,
    );
    assert!(rows >= 500, "ten views of 50+ photos: {rows}");
    assert_photos_equal_pixels(
        root,
        "demo-hog",
        &demo,
        "geometry = { kind = 'squash', width = 150, height = 90 }",
        "backbone = 'hog'",
    );

    let Some(shared) = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR")) else {
        return;
    };
    std::os::unix::fs::symlink(shared.join("data/photos"), root.join("photos")).unwrap();
    let pipe = root.join("pipelines/photos.toml");
    std::fs::copy(support::workspace().join("pipelines/photos.toml"), &pipe).unwrap();
    geoloc(
        &["run", "pipelines/photos.toml", "--only", "ingest"],
        root,
        &[],
        true,
    );
    let real = root.join("runs/photos/ingest");
    let (rows, rejected) = assert_photos_equal_pixels(
        root,
        "real-lite0",
        &real,
        "geometry = { kind = 'resize-crop', resize = 224, crop = 224 }\nviews = { kind = 'five-crop' }",
        lite0,
    );
    eprintln!("real photos: {rows} rows, {rejected} rejects, identical");
    assert!(rows >= 5 * 50, "five views of the real photos: {rows}");
    assert_photos_equal_pixels(
        root,
        "real-hog",
        &real,
        "geometry = { kind = 'squash', width = 150, height = 90 }\ngreyscale = 'convert'",
        "backbone = 'hog'",
    );
}
