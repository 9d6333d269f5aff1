//! `cargo xtask bench-scale --rows N`: the pipeline at N generated photos, stage by stage,
//! with what a projection to MediaEval's 4.7 million photos needs: photos per second, peak
//! resident memory, bytes on disk per photo, and where featurize's time goes.
//!
//! It generates N demo photos (`geoloc synth mediaeval`, 10% of them the test split) under
//! `target/bench-scale/rows-N/` (kept for the next run of the same size), writes a pipeline
//! there, and runs each instance on its own
//! (`geoloc run --only`), timing it and sampling its memory every 10 ms until the process
//! exits: the kernel's high-water mark of resident memory (`VmHWM`, which counts the pages
//! of memory-mapped files: train's spilled rows) and the largest anonymous resident memory
//! (`RssAnon`: what the process allocated):
//!
//! - `ingest`: the metadata files to samples (every row);
//! - `hog`: HOG features straight from the photos (every photo);
//! - `lite0`: EfficientNet-Lite0 features straight from the photos, on the test split only
//!   (a CNN on two cores takes minutes per thousand photos; `--lite0-split` picks another);
//! - `crop224`: the 224 pixel dataset of the same photos, which featurize from photos no
//!   longer writes: its bytes per photo are what the photo path saves;
//! - `hog_svm`: the paper's linear SVM on HOG (`--epochs`, default 5);
//! - `evaluate`: the SVM on the test split;
//! - `status`: the runner fingerprinting every instance (it stats every photo).
//!
//! The table goes to stdout and `result.json` beside the runs, for comparing two sizes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One measured command.
struct Measured {
    seconds: f64,
    /// The kernel's high-water mark of resident memory (`VmHWM`): anonymous memory plus
    /// the pages of files the process has mapped.
    peak_rss_mb: f64,
    /// The largest anonymous resident memory seen (`RssAnon`, sampled): what the process
    /// allocated, without mapped files (a memory-mapped spill file, say).
    peak_anon_mb: f64,
    stdout: String,
}

/// Runs `bin args` in `cwd`, sampling its peak RSS until it exits; fails when it fails.
fn measure(bin: &Path, args: &[&str], cwd: &Path) -> Result<Measured> {
    let t0 = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {args:?}", bin.display()))?;
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak_kb = 0u64;
    let mut anon_kb = 0u64;
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let kb = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if let Some(k) = kb("VmHWM:") {
                peak_kb = peak_kb.max(k);
            }
            if let Some(k) = kb("RssAnon:") {
                anon_kb = anon_kb.max(k);
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("{} {args:?} failed ({status}):\n{stderr}", bin.display());
    }
    Ok(Measured {
        seconds,
        peak_rss_mb: peak_kb as f64 / 1024.0,
        peak_anon_mb: anon_kb as f64 / 1024.0,
        stdout,
    })
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The number after `key` in `text` (`key=123` or `key 123`), if any.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches(['=', ' '])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

fn pipeline(lite0_split: &str, epochs: u32) -> String {
    format!(
        r#"# Written by `cargo xtask bench-scale`: the demo's stages at scale.
[pipeline]
name = "scale"
root = ".."

[stages.ingest]
kind = "ingest"

[stages.ingest.config]
images_root = "data/demo/images"
photos_only = true
classes = {{ list = ["DE", "CA", "IT", "ES", "FR"] }}
split = {{ train = 0.9, val = 0.1 }}

[[stages.ingest.config.sources]]
format = "mediaeval-locale"
path = "data/demo/train.tsv"

[[stages.ingest.config.sources]]
format = "mediaeval-locale"
path = "data/demo/test.tsv"
split = "test"
truth = "data/demo/truth.csv"

[stages.hog]
kind = "featurize"
inputs = ["ingest"]

[stages.hog.config]
backbone = "hog"
geometry = {{ kind = "squash", width = 150, height = 90 }}

[stages.lite0]
kind = "featurize"
inputs = ["ingest"]

[stages.lite0.config]
backbone = "lite0"
layer = "pool"
weights = "data/weights/efficientnet-lite0.pth"
geometry = {{ kind = "resize-crop", resize = 224, crop = 224 }}
splits = ["{lite0_split}"]

# The pixel dataset featurize from photos does without, for its bytes per photo.
[stages.crop224]
kind = "preprocess"
inputs = ["ingest"]

[stages.crop224.config]
geometry = {{ kind = "resize-crop", resize = 224, crop = 224 }}
splits = ["{lite0_split}"]

[stages.hog_svm]
kind = "train"
inputs = ["hog", "ingest"]

[stages.hog_svm.config]
head = "linear-svm"
epochs = {epochs}

[stages.evaluate]
kind = "evaluate"
inputs = ["ingest", "hog", "hog_svm"]

[stages.evaluate.config]
title = "bench-scale"
"#
    )
}

pub fn bench_scale(args: &[String]) -> Result<()> {
    let rows: usize = crate::flag(args, "--rows")
        .unwrap_or("10000")
        .parse()
        .context("--rows N")?;
    let lite0_split = crate::flag(args, "--lite0-split").unwrap_or("test");
    let epochs: u32 = crate::flag(args, "--epochs")
        .unwrap_or("5")
        .parse()
        .context("--epochs N")?;
    let weights = crate::fetch_lite0()?;
    let bin = crate::geoloc()?;
    let dir = crate::root().join(format!("target/bench-scale/rows-{rows}"));
    // A rerun keeps the generated photos (the generator leaves identical files alone, so
    // their times and the fingerprints hold) and recomputes every stage.
    let _ = std::fs::remove_dir_all(dir.join("runs"));
    let _ = std::fs::remove_dir_all(dir.join("data/weights"));
    std::fs::create_dir_all(dir.join("pipelines"))?;
    std::fs::create_dir_all(dir.join("data/weights"))?;
    std::os::unix::fs::symlink(&weights, dir.join("data/weights/efficientnet-lite0.pth"))?;
    std::fs::write(
        dir.join("pipelines/scale.toml"),
        pipeline(lite0_split, epochs),
    )?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "bench-scale: {rows} photos in {} ({threads} threads)",
        dir.display()
    );

    let rows_s = rows.to_string();
    let made = dir.join("data/demo/bench-scale-rows.txt");
    if std::fs::read_to_string(&made).is_ok_and(|r| r == rows_s) {
        eprintln!("synth: the {rows} photos of an earlier run, kept");
    } else {
        let synth = measure(
            &bin,
            &[
                "synth",
                "mediaeval",
                "--out",
                "data/demo",
                "--rows",
                &rows_s,
                "--seed",
                "7",
            ],
            &dir,
        )?;
        std::fs::write(&made, &rows_s)?;
        eprintln!("synth: {:.1} s", synth.seconds);
    }
    let photo_bytes = du(&dir.join("data/demo/images"));

    let mut table = Vec::new();
    let mut json = Vec::new();
    let mut samples_rows = 0f64;
    let split_rows = |out: &str, split: &str| number_after(out, &format!("{split}="));
    let (mut train_rows, mut subset_rows) = (0f64, 0f64);
    let mut test_rows = 0f64;
    for inst in ["ingest", "hog", "lite0", "crop224", "hog_svm", "evaluate"] {
        let m = measure(
            &bin,
            &[
                "--no-progress",
                "run",
                "pipelines/scale.toml",
                "--only",
                inst,
            ],
            &dir,
        )?;
        let line = m
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{inst}: ran")))
            .unwrap_or("")
            .to_owned();
        if inst == "ingest" {
            samples_rows = line
                .split(" rows read, ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            train_rows = split_rows(&line, "train").unwrap_or(0.0);
            test_rows = split_rows(&line, "test").unwrap_or(0.0);
            subset_rows = split_rows(&line, lite0_split).unwrap_or(0.0);
        }
        // The photos each instance reads.
        let photos = match inst {
            "ingest" => rows as f64,
            "hog" => samples_rows,
            "lite0" | "crop224" => subset_rows,
            "hog_svm" => train_rows,
            _ => test_rows,
        };
        let disk = du(&dir.join("runs/scale").join(inst));
        let shares = if line.contains("decode ") {
            format!(
                "decode {:.0} cpu-s, backbone {:.0} s, write {:.0} s, wait {:.0} s",
                number_after(&line, "decode").unwrap_or(0.0),
                number_after(&line, "backbone").unwrap_or(0.0),
                number_after(&line, "write").unwrap_or(0.0),
                number_after(&line, "waiting for photos").unwrap_or(0.0)
            )
        } else {
            String::new()
        };
        eprintln!("{line}");
        table.push(format!(
            "| {inst} | {photos:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} | {:.1} | {shares} |",
            m.seconds,
            photos / m.seconds,
            m.peak_rss_mb,
            m.peak_anon_mb,
            disk as f64 / 1e6,
            disk as f64 / photos.max(1.0) / 1e3,
        ));
        json.push(format!(
            r#"{{"instance": "{inst}", "photos": {photos}, "seconds": {:.3}, "peak_rss_mb": {:.1}, "peak_anon_mb": {:.1}, "disk_bytes": {disk}}}"#,
            m.seconds, m.peak_rss_mb, m.peak_anon_mb
        ));
    }
    let st = measure(&bin, &["status", "pipelines/scale.toml"], &dir)?;
    table.push(format!(
        "| status (fingerprints: stats {:.0} photo files) | {samples_rows:.0} | {:.1} | {:.0} | {:.0} | {:.0} | | | |",
        samples_rows + 2.0 * subset_rows,
        st.seconds,
        samples_rows / st.seconds,
        st.peak_rss_mb,
        st.peak_anon_mb
    ));
    json.push(format!(
        r#"{{"instance": "status", "photos": {samples_rows}, "seconds": {:.3}, "peak_rss_mb": {:.1}, "peak_anon_mb": {:.1}, "disk_bytes": 0}}"#,
        st.seconds, st.peak_rss_mb, st.peak_anon_mb
    ));
    println!(
        "\n{rows} generated photos ({:.1} KB each), {threads} threads, lite0 and crop224 on the \
         {lite0_split} split ({subset_rows:.0} photos)\n",
        photo_bytes as f64 / rows as f64 / 1e3
    );
    println!("| instance | photos | seconds | photos/s | peak RSS MB | peak anon MB | disk MB | disk KB/photo | featurize's time |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for l in &table {
        println!("{l}");
    }
    std::fs::write(
        dir.join("result.json"),
        format!(
            "{{\"rows\": {rows}, \"threads\": {threads}, \"photo_bytes\": {photo_bytes}, \"stages\": [\n  {}\n]}}\n",
            json.join(",\n  ")
        ),
    )?;
    Ok(())
}
