//! The CUDA path without a GPU: what the CPU build says when asked for CUDA, the device
//! check (`geoloc gpu-check`) run on the CPU device against a reference made from the shared
//! photos, and the CUDA build itself (`cargo xtask build-cuda`; `$GEOLOC_CUDA_BINARY` names
//! it, `.ci/run` builds it and sets it): its libraries, its start with the link stubs, its
//! one-line answer when no GPU can be opened, and the preflight of the Slurm GPU jobs on a
//! node without the NVIDIA driver.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{geoloc, stderr, stdout};

/// The CUDA binary `.ci/run` built, or `None` (skip with a message; CI requires it).
fn cuda_binary() -> Option<PathBuf> {
    match std::env::var_os("GEOLOC_CUDA_BINARY") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "GEOLOC_CUDA_BINARY={} is no file", p.display());
            Some(p)
        }
        None => {
            let msg = "GEOLOC_CUDA_BINARY is not set (cargo xtask build-cuda builds the CUDA \
                       binary and prints its path)";
            if std::env::var("GEOLOC_REQUIRE_SHARED").is_ok_and(|v| v == "1") {
                panic!("{msg}, and GEOLOC_REQUIRE_SHARED=1 requires it");
            }
            eprintln!("SKIP: {msg}");
            None
        }
    }
}

/// The link stubs and the toolkit's runtime library (`cargo xtask cuda-toolchain`), as a
/// library path.
fn stub_library_path() -> String {
    let cu = support::workspace().join("target/cuda-toolchain/nvidia/cu13/lib");
    format!("{}:{}", cu.join("stubs").display(), cu.display())
}

/// A machine with the NVIDIA driver: the no-driver checks do not apply there.
fn has_driver() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

/// A gpu-check bundle from the first shared photos (Lite0 on all, VGG16 and GoogLeNet on
/// one), or `None` when the shared data or the checkpoint is absent.
fn small_bundle(dir: &Path, photos: usize) -> Option<PathBuf> {
    let shared = geoloc_core::fixtures::shared_dir(env!("CARGO_MANIFEST_DIR"))?;
    let lite0 = support::lite0()?;
    let bundle = dir.join("bundle");
    let max = photos.to_string();
    let out = stdout(&geoloc(
        &[
            "gpu-check",
            "reference",
            "--bundle",
            bundle.to_str().unwrap(),
            "--lite0",
            lite0.to_str().unwrap(),
            "--max-photos",
            &max,
            "--cnn-rows",
            "1",
            shared.join("data/photos").to_str().unwrap(),
        ],
        dir,
        &[],
        true,
    ));
    assert!(out.contains(&format!("{photos} crops (1 with")), "{out}");
    Some(bundle)
}

#[test]
fn cpu_build_says_what_it_is_and_refuses_cuda_in_one_line() {
    let t = tempfile::tempdir().unwrap();
    let v = stdout(&geoloc(&["--version"], t.path(), &[], true));
    assert!(v.contains("(CPU build)"), "{v}");
    // Asking the CPU build for a GPU: one line naming the CUDA build, no fallback.
    let bundle = t.path().join("b");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("reference.json"),
        r#"{"crops":0,"cnn_rows":0,"seed":7,"photos":[],"skipped":[]}"#,
    )
    .unwrap();
    let err = stderr(&geoloc(
        &["gpu-check", "run", "--bundle", "b", "--device", "cuda"],
        t.path(),
        &[],
        false,
    ));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("device `cuda`: this geoloc is the CPU build")
            && lines[0].contains("cargo xtask build-cuda"),
        "{err}"
    );
}

/// The device check's code path on the CPU device: the reference made from real photos,
/// then the checks against it, all passing (f32 to 1e-3 of the reference's spread, f16 by
/// cosine and top-5: candle's CPU matmul has no bf16), with the MLP through candle's
/// autograd equal to the CPU trainer. Reduced precision takes candle's operations, the
/// path a GPU takes, not the CPU's own f32 kernels.
#[test]
fn gpu_check_passes_on_the_cpu_device() {
    let t = tempfile::tempdir().unwrap();
    let Some(bundle) = small_bundle(t.path(), 4) else {
        return;
    };
    for f in [
        "crops/0000.png",
        "crops/0003.png",
        "reference.safetensors",
        "weights/efficientnet-lite0.pth",
    ] {
        assert!(bundle.join(f).is_file(), "{f}");
    }
    let out = stdout(&geoloc(
        &[
            "gpu-check",
            "run",
            "--bundle",
            "bundle",
            "--device",
            "cpu",
            "--quick",
            "--out",
            "res",
        ],
        t.path(),
        &[],
        true,
    ));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("res/gpu-check.json")).unwrap())
            .unwrap();
    let parity = report["parity"].as_array().unwrap();
    // Lite0 in f32 and f16, VGG16 and GoogLeNet in f32.
    assert_eq!(parity.len(), 4, "{out}");
    for p in parity {
        assert_eq!(p["pass"], true, "{p}");
        if p["dtype"] == "f32" {
            assert!(p["max_err_over_std"].as_f64().unwrap() < 1e-3, "{p}");
        }
    }
    let lite_f16 = parity
        .iter()
        .find(|p| p["model"] == "lite0" && p["dtype"] == "f16")
        .unwrap();
    // f16 is not f32: the comparison measured a real difference.
    assert!(
        lite_f16["max_err_over_std"].as_f64().unwrap() > 0.0,
        "{lite_f16}"
    );
    assert_eq!(lite_f16["rows"], 4);
    assert_eq!(lite_f16["top5_share"], 1.0, "{lite_f16}");
    assert!(report["throughput"][0]["images_per_s"].as_f64().unwrap() > 0.0);
    let mlp = &report["mlp"];
    assert_eq!(mlp["pass"], true, "{mlp}");
    assert!(out.contains("| lite0 | f32 | 4 |"), "{out}");
}

#[test]
fn cuda_binary_links_cuda_starts_with_stubs_and_says_no_gpu_in_one_line() {
    let Some(bin) = cuda_binary() else {
        return;
    };
    let dump = Command::new("objdump")
        .arg("-p")
        .arg(&bin)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    for lib in ["libcuda.so.1", "libcublas.so.13", "libcurand.so.10"] {
        assert!(dump.contains(lib), "{} does not link {lib}", bin.display());
    }
    let libs = stub_library_path();
    let run = |args: &[&str], cwd: &Path| {
        Command::new(&bin)
            .args(args)
            .current_dir(cwd)
            .env("LD_LIBRARY_PATH", &libs)
            .output()
            .unwrap()
    };
    let t = tempfile::tempdir().unwrap();
    let v = run(&["--version"], t.path());
    let v = String::from_utf8_lossy(&v.stdout);
    assert!(v.contains("(CUDA build, compute capability 90)"), "{v}");
    if has_driver() {
        eprintln!("SKIP: the no-GPU answer (this machine has the NVIDIA driver)");
        return;
    }
    // The stubs answer every call with CUDA_ERROR_NO_DEVICE: what a node without a usable
    // GPU says. One line, naming the device and why.
    let Some(_) = small_bundle(t.path(), 1) else {
        return;
    };
    let out = run(
        &["gpu-check", "run", "--bundle", "bundle", "--device", "cuda"],
        t.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("device `cuda`: CUDA GPU 0 cannot be opened"),
        "{err}"
    );
    // Without the libraries the loader refuses it before geoloc runs: why GPU jobs check
    // first (next test) and CPU jobs run the CPU build.
    let bare = Command::new(&bin)
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(!bare.status.success());
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("error while loading shared libraries"),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
}

/// A GPU job of `geoloc slurm --gpu-binary CUDA_BUILD` that lands on a node without the
/// driver stops with one line naming the node and the missing libraries.
#[test]
fn slurm_gpu_job_on_a_node_without_the_driver_stops_in_one_line() {
    let Some(bin) = cuda_binary() else {
        return;
    };
    if has_driver() {
        eprintln!("SKIP: this machine has the NVIDIA driver");
        return;
    }
    let t = support::metadata_project(100);
    let root = t.path();
    geoloc(
        &[
            "slurm",
            "pipelines/demo.toml",
            "--gpus-per-task",
            "1",
            "--gpu-binary",
            bin.to_str().unwrap(),
            "--out",
            "sub",
        ],
        root,
        &[],
        true,
    );
    let script = root.join("sub/02-lite0.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains(&format!("exec {}", bin.display())), "{text}");
    let out = Command::new("bash")
        .arg(&script)
        .env_remove("LD_LIBRARY_PATH")
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("SLURM_ARRAY_TASK_COUNT", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("this GPU job cannot start")
            && lines[0].contains("libcuda.so.1")
            && lines[0].contains("--gpu-partition"),
        "{err}"
    );
}
