//! The CUDA build without a GPU: `cargo xtask cuda-toolchain` installs a CUDA 13.0 compiler
//! from the Python package index into `target/cuda-toolchain/` (nothing system-wide), and
//! `cargo xtask build-cuda` builds `geoloc --features cuda` with it (or with a cluster's own
//! CUDA, `--cuda-home`) into `target/cuda/`, then checks that the binary starts.
//!
//! What the build needs, and where it comes from here:
//! - candle-kernels compiles its kernels with `nvcc` (found through `NVCC`, `PATH` or
//!   `CUDA_HOME`) for one compute capability (`CUDA_COMPUTE_CAP`; `90` is `sm_90a`, H100/H200
//!   only), against the CUDA headers (cuda_fp16/bf16/fp8.h, cccl). NVIDIA's CUDA 13.0 wheels
//!   (nvcc, nvvm, crt, runtime, cccl: about 104 MB) make one complete `nvidia/cu13` tree.
//! - cudarc (through candle-core's `cuda` feature) links the driver API and cuBLAS, cuBLASLt,
//!   cuRAND and NVRTC at build time (`dynamic-linking`), and reads the CUDA version from
//!   `CUDARC_CUDA_VERSION`. The wheels carry none of those libraries (the driver's comes
//!   with the driver), so the link goes against stub libraries made here: every function
//!   name of cudarc's own bindings (`src/*/sys/mod.rs`) compiled as a C function that
//!   returns an error code, with the real library's soname. They live under
//!   `cu13/lib/stubs`, never on a library path at run time: on a GPU node the binary loads
//!   the real libraries; with the stubs it starts and reports that no GPU can be opened.

use crate::{root, sh};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The CUDA 13.0 wheels and their sha256 (pip checks them: `--require-hashes`).
const WHEELS: &[(&str, &str)] = &[
    (
        "nvidia-cuda-nvcc==13.0.88",
        "56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03",
    ),
    (
        "nvidia-nvvm==13.0.88",
        "c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0",
    ),
    (
        "nvidia-cuda-crt==13.0.88",
        "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4",
    ),
    (
        "nvidia-cuda-runtime==13.0.96",
        "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
    ),
    (
        "nvidia-cuda-cccl==13.0.85",
        "e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649",
    ),
];

/// `CUDARC_CUDA_VERSION` of the wheels' toolkit.
const CUDA_VERSION: &str = "13000";

/// The libraries cudarc links, as (its bindings' module, link name, soname) for CUDA 13.
const LINKED: &[(&str, &str, &str)] = &[
    ("driver", "cuda", "libcuda.so.1"),
    ("cublas", "cublas", "libcublas.so.13"),
    ("cublaslt", "cublasLt", "libcublasLt.so.13"),
    ("curand", "curand", "libcurand.so.10"),
    ("nvrtc", "nvrtc", "libnvrtc.so.13"),
];

/// Where the toolchain goes.
pub fn toolchain_dir() -> PathBuf {
    root().join("target/cuda-toolchain")
}

/// The toolkit root (`bin/nvcc`, `include/`, `lib/`) inside the toolchain.
fn cuda_root() -> PathBuf {
    toolchain_dir().join("nvidia/cu13")
}

/// The link stubs' folder (never put on `LD_LIBRARY_PATH` on a machine with a GPU).
pub fn stubs_dir() -> PathBuf {
    cuda_root().join("lib/stubs")
}

/// What the stamp of a complete install records: the pins and the stubs' source.
fn stamp_text(cudarc: &Path) -> String {
    let mut s: String = WHEELS.iter().map(|(w, h)| format!("{w} {h}\n")).collect();
    s += &format!(
        "stubs (4: soname links, error texts) from {}\n",
        cudarc.display()
    );
    s
}

/// `cargo xtask cuda-toolchain`: installs the toolchain unless a complete one is there.
/// Returns the toolkit root.
pub fn toolchain() -> Result<PathBuf> {
    let dir = toolchain_dir();
    let cudarc = cudarc_source()?;
    let stamp = dir.join("complete.txt");
    let want = stamp_text(&cudarc);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(cuda_root());
    }
    let t0 = Instant::now();
    // A partial install (killed, or other pins) is removed whole.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    let req = dir.join("requirements.txt");
    std::fs::write(
        &req,
        WHEELS
            .iter()
            .map(|(w, h)| format!("{w} --hash=sha256:{h}\n"))
            .collect::<String>(),
    )?;
    let req_s = req.to_string_lossy();
    let st = crate::pip_download(&["--require-hashes", "-r", &req_s], &wheels)?;
    if !st.success() {
        bail!(
            "could not download the CUDA 13.0 wheels with pip ({}); on a cluster with its own \
             CUDA toolkit build with `cargo xtask build-cuda --cuda-home DIR` instead",
            WHEELS.iter().map(|w| w.0).collect::<Vec<_>>().join(", ")
        );
    }
    for e in std::fs::read_dir(&wheels)? {
        let wheel = e?.path();
        sh(Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&dir))?;
    }
    let cuda = cuda_root();
    // Zip archives keep no permissions: the compiler's programs must be executable.
    for sub in ["bin", "bin/crt", "nvvm/bin"] {
        let d = cuda.join(sub);
        for e in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let p = e?.path();
            if p.is_file() {
                set_mode(&p, 0o755)?;
            }
        }
    }
    // The runtime wheel has only the versioned library; the linker looks for libcudart.so.
    let cudart = cuda.join("lib/libcudart.so");
    if !cudart.exists() {
        std::os::unix::fs::symlink("libcudart.so.13", &cudart)?;
    }
    make_stubs(&cudarc, &stubs_dir())?;
    // nvcc must run: a missing piece shows here, not deep in candle-kernels' build script.
    let out = Command::new(cuda.join("bin/nvcc"))
        .arg("--version")
        .output()
        .context("running the installed nvcc")?;
    if !out.status.success() {
        bail!(
            "the installed nvcc does not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let version = String::from_utf8_lossy(&out.stdout);
    let release = version
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    std::fs::write(&stamp, want)?;
    eprintln!(
        "CUDA toolchain: {} ({release}; {} MB on disk, wheels {} MB) in {:.0} s",
        cuda.display(),
        du_mb(&cuda),
        du_mb(&wheels),
        t0.elapsed().as_secs_f64()
    );
    Ok(cuda)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Megabytes under a folder (files only, links not followed).
fn du_mb(p: &Path) -> u64 {
    du_bytes(p) / 1_000_000
}

/// The source folder of the cudarc version Cargo.lock pins (fetched by cargo).
fn cudarc_source() -> Result<PathBuf> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"cudarc\""))
        .and_then(|p| {
            p.lines()
                .find_map(|l| l.strip_prefix("version = \""))
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .context("Cargo.lock pins no cudarc (candle-core's cuda feature pulls it)")?;
    if let Some(p) = find_in_registry(&version)? {
        return Ok(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    sh(Command::new(cargo)
        .current_dir(root())
        .args(["fetch", "--locked", "-q"]))?;
    find_in_registry(&version)?
        .with_context(|| format!("cudarc {version} is not in cargo's registry after cargo fetch"))
}

/// cudarc's source folder of `version` in cargo's registry, if fetched.
fn find_in_registry(version: &str) -> Result<Option<PathBuf>> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let Ok(rd) = std::fs::read_dir(home.join("registry/src")) else {
        return Ok(None);
    };
    for e in rd {
        let p = e?.path().join(format!("cudarc-{version}"));
        if p.join("src/driver/sys/mod.rs").is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// The C functions a cudarc bindings file declares (`extern "C" { fn NAME(...`).
pub fn bound_functions(sys_rs: &str) -> Vec<String> {
    let mut names: Vec<String> = sys_rs
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix("fn ")?;
            let name = &rest[..rest.find('(')?];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One stub library per linked CUDA library: each function returns an error code
/// (`CUDA_ERROR_NO_DEVICE`, 100, for the driver), so a binary started with the stubs on its
/// library path reports that no GPU can be opened.
fn make_stubs(cudarc: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (module, lib, soname) in LINKED {
        let src = cudarc.join("src").join(module).join("sys/mod.rs");
        let text = std::fs::read_to_string(&src).with_context(|| format!("{}", src.display()))?;
        let names = bound_functions(&text);
        if names.len() < 10 {
            bail!(
                "{} declares only {} functions: has cudarc's layout changed?",
                src.display(),
                names.len()
            );
        }
        let c = dir.join(format!("{lib}.c"));
        let body: String = names
            .iter()
            .map(|n| match n.as_str() {
                // Error texts a person reads when the binary runs against the stubs.
                "cuGetErrorString" | "cuGetErrorName" => format!(
                    "int {n}(int e, const char **s) {{ (void)e; *s = \"no NVIDIA driver \
                     (the link stub of libcuda)\"; return 0; }}\n"
                ),
                _ => format!("int {n}(void) {{ return 100; }}\n"),
            })
            .collect();
        std::fs::write(
            &c,
            format!(
                "/* Link stub of {soname}: made by cargo xtask cuda-toolchain from {} */\n{body}",
                src.display()
            ),
        )?;
        sh(Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.join(format!("lib{lib}.so")))
            .arg(&c)
            .arg(format!("-Wl,-soname,{soname}")))?;
        // The loader looks for the soname (the smoke test's start against the stubs).
        let link = dir.join(soname);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(format!("lib{lib}.so"), &link)?;
    }
    Ok(())
}

/// Options of `cargo xtask build-cuda`.
struct BuildArgs {
    cap: String,
    profile: String,
    cuda_home: Option<PathBuf>,
}

/// The environment of a CUDA build with the toolkit at `cuda` for compute capability `cap`.
fn build_env(cmd: &mut Command, cuda: &Path, cap: &str, own_toolkit: bool) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cuda.join("bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).expect("PATH entries"))
        .env("CUDA_HOME", cuda)
        .env("CUDA_PATH", cuda)
        .env("CUDA_ROOT", cuda)
        .env("NVCC", cuda.join("bin/nvcc"))
        .env("CUDA_COMPUTE_CAP", cap);
    if !own_toolkit {
        cmd.env("CUDARC_CUDA_VERSION", CUDA_VERSION);
    }
}

/// The CUDA binary of a profile.
pub fn cuda_binary(profile: &str) -> PathBuf {
    let dir = match profile {
        "dev" => "debug",
        p => p,
    };
    root().join("target/cuda").join(dir).join("geoloc")
}

/// `cargo xtask build-cuda [--cap 90] [--profile release] [--cuda-home DIR]`.
pub fn build(args: &[String]) -> Result<PathBuf> {
    let a = BuildArgs {
        cap: crate::flag(args, "--cap").unwrap_or("90").to_owned(),
        profile: crate::flag(args, "--profile")
            .unwrap_or("release")
            .to_owned(),
        cuda_home: crate::flag(args, "--cuda-home").map(PathBuf::from),
    };
    if !a.cap.bytes().all(|b| b.is_ascii_digit()) || a.cap.len() < 2 {
        bail!(
            "--cap {}: a compute capability as digits (80 A100, 89 L40S, 90 H100/H200)",
            a.cap
        );
    }
    let own = a.cuda_home.is_some();
    let cuda = match &a.cuda_home {
        Some(h) => {
            if !h.join("bin/nvcc").is_file() {
                bail!("--cuda-home {}: no bin/nvcc there", h.display());
            }
            h.clone()
        }
        None => toolchain()?,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args([
            "build",
            "--locked",
            "-p",
            "geoloc-cli",
            "--bin",
            "geoloc",
            "--features",
            "cuda",
        ])
        .args(["--profile", &a.profile])
        // Its own target folder: the CPU build's binary and artifacts stay as they are.
        .arg("--target-dir")
        .arg(root().join("target/cuda"));
    build_env(&mut cmd, &cuda, &a.cap, own);
    eprintln!(
        "building the CUDA geoloc (compute capability {}, profile {}, toolkit {})",
        a.cap,
        a.profile,
        cuda.display()
    );
    let t0 = Instant::now();
    sh(&mut cmd)?;
    let secs = t0.elapsed().as_secs_f64();
    let bin = cuda_binary(&a.profile);
    let size = std::fs::metadata(&bin)
        .with_context(|| format!("the build left no {}", bin.display()))?
        .len();
    eprintln!(
        "CUDA build: {} ({:.0} MB) in {secs:.0} s",
        bin.display(),
        size as f64 / 1e6
    );
    smoke(&bin, &cuda, own)?;
    println!("{}", bin.display());
    Ok(bin)
}

/// The shared libraries a binary names (`NEEDED` entries of its dynamic section).
pub fn needed_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new("objdump")
        .arg("-p")
        .arg(bin)
        .output()
        .context("running objdump (binutils)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(|l| l.trim().to_owned())
        .collect())
}

/// Checks that a CUDA binary starts where its libraries are found (the stubs, on a machine
/// without a GPU) and that asking it for a GPU gives one clear line.
fn smoke(bin: &Path, cuda: &Path, own: bool) -> Result<()> {
    let needed = needed_libraries(bin)?;
    eprintln!("it needs: {}", needed.join(" "));
    // The linker drops what nothing calls (cuBLASLt, NVRTC): these three always remain.
    for soname in ["libcuda.so.1", "libcublas.so.13", "libcurand.so.10"] {
        if !needed.iter().any(|n| n == soname) {
            bail!(
                "{} does not link {soname}: is it the CUDA build?",
                bin.display()
            );
        }
    }
    if own {
        // A cluster's toolkit: the real libraries (and maybe a GPU) are here; just start it.
        sh(Command::new(bin).arg("--version"))?;
        return Ok(());
    }
    let libs = std::env::join_paths([stubs_dir(), cuda.join("lib")])?;
    let out = Command::new(bin)
        .arg("--version")
        .env("LD_LIBRARY_PATH", &libs)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !version.contains("CUDA build") {
        bail!(
            "{} --version with the link stubs: {version} {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("with the link stubs it starts: {version}");
    Ok(())
}

/// The device check's files in this repository (copied into the bundle).
const RUN_SH: &str = include_str!("../gpu/run.sh");
const PEER_PY: &str = include_str!("../gpu/featurize_peer.py");
/// The bundle's limit: what a device machine takes with it.
const BUNDLE_LIMIT: u64 = 60 << 20;

/// `pipelines/demo.toml` with `device = "cuda"` in every featurize and train instance
/// (HOG computes on CPU threads whatever the device).
pub fn cuda_demo_pipeline(text: &str) -> String {
    let mut gpu: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[stages.").and_then(|r| r.strip_suffix(']')) {
            current = (!name.contains('.')).then(|| name.to_owned());
        } else if let Some(name) = &current {
            if l == "kind = \"featurize\"" || l == "kind = \"train\"" {
                gpu.push(name.clone());
            }
        }
    }
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        let l = line.trim();
        if let Some(name) = l
            .strip_prefix("[stages.")
            .and_then(|r| r.strip_suffix(".config]"))
        {
            if gpu.iter().any(|g| g == name) {
                out.push_str("device = \"cuda\"   # cargo xtask gpu-bundle\n");
            }
        }
    }
    out
}

/// `cargo xtask gpu-bundle [--out DIR] [--cap 90] [--photos N]`: the device check as one
/// folder under 60 MiB (README, "The CUDA build"): the release CUDA binary (xz), the CUDA
/// runtime library, the Lite0 checkpoint, 224 crops of the shared real photos with the
/// CPU's reference features, the PyTorch peer script, the demo pipeline set to CUDA, and
/// `run.sh`.
pub fn bundle(args: &[String]) -> Result<()> {
    let out = crate::flag(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/gpu-bundle"));
    let cap = crate::flag(args, "--cap").unwrap_or("90").to_owned();
    let photos = crate::flag(args, "--photos").unwrap_or("64").to_owned();
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(out.join("lib"))?;
    std::fs::create_dir_all(out.join("peer"))?;
    std::fs::create_dir_all(out.join("demo/pipelines"))?;
    let lite0 = crate::fetch_lite0()?;
    let shared = crate::peers_dir()?.join("../../data/photos");
    // The CPU's reference, with the CPU release build.
    let cpu = crate::geoloc()?;
    sh(Command::new(&cpu)
        .args(["--no-progress", "gpu-check", "reference", "--bundle"])
        .arg(out.join("bundle"))
        .arg("--lite0")
        .arg(&lite0)
        .args(["--max-photos", &photos, "--cnn-rows", "16"])
        .arg(&shared))?;
    // The CUDA build, compressed.
    let bin = build(&["--cap".into(), cap, "--profile".into(), "release".into()])?;
    let xz = out.join("geoloc.xz");
    let f = std::fs::File::create(&xz)?;
    sh(Command::new("xz")
        .args(["-9", "-T2", "-c"])
        .arg(&bin)
        .stdout(f))?;
    std::fs::copy(
        cuda_root().join("lib/libcudart.so.13"),
        out.join("lib/libcudart.so.13"),
    )?;
    std::fs::write(out.join("peer/featurize_peer.py"), PEER_PY)?;
    let st = crate::pip_download(&["efficientnet-lite-pytorch==0.1.0"], &out.join("peer"))?;
    if !st.success() {
        bail!("pip could not download efficientnet-lite-pytorch==0.1.0 (the peer's Lite0)");
    }
    let demo = std::fs::read_to_string(root().join("pipelines/demo.toml"))?;
    std::fs::write(
        out.join("demo/pipelines/demo.toml"),
        cuda_demo_pipeline(&demo),
    )?;
    std::fs::write(out.join("run.sh"), RUN_SH)?;
    set_mode(&out.join("run.sh"), 0o755)?;
    let total = du_bytes(&out);
    eprintln!(
        "device check bundle: {} ({:.1} MiB; limit 60 MiB). On the GPU machine: bash run.sh",
        out.display(),
        total as f64 / (1u64 << 20) as f64
    );
    if total > BUNDLE_LIMIT {
        bail!("the bundle is over 60 MiB: fewer photos (--photos N)");
    }
    Ok(())
}

/// Bytes under a folder (files only, links not followed).
fn du_bytes(p: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    walk(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_functions_are_the_extern_declarations() {
        let src = "pub type CUhostFn = Option<unsafe extern \"C\" fn(userData: *mut c_void)>;\n\
                   pub unsafe fn cuInit(Flags: u32) -> CUresult {\n\
                   \x20   #[cfg(not(feature = \"dynamic-loading\"))]\n    {\n\
                   \x20       extern \"C\" {\n            fn cuInit(Flags: u32) -> CUresult;\n        }\n\
                   \x20       cuInit(Flags)\n    }\n}\n\
                   extern \"C\" {\n    fn cuMemAlloc_v2(p: *mut u64, n: usize) -> CUresult;\n}\n";
        assert_eq!(bound_functions(src), vec!["cuInit", "cuMemAlloc_v2"]);
    }

    /// The real cudarc bindings give the functions candle calls.
    #[test]
    fn cudarc_driver_bindings_name_the_functions_candle_calls() {
        let Ok(dir) = cudarc_source() else {
            eprintln!("SKIP: cudarc's source is not in cargo's registry");
            return;
        };
        let text = std::fs::read_to_string(dir.join("src/driver/sys/mod.rs")).unwrap();
        let names = bound_functions(&text);
        for f in [
            "cuInit",
            "cuDeviceGet",
            "cuCtxCreate_v4",
            "cuModuleLoadData",
            "cuLaunchKernel",
        ] {
            assert!(
                names.iter().any(|n| n == f),
                "{f} not among {} names",
                names.len()
            );
        }
    }

    #[test]
    fn the_demo_pipeline_on_cuda_sets_the_device_of_featurize_and_train_only() {
        let text = std::fs::read_to_string(root().join("pipelines/demo.toml")).unwrap();
        let cuda = cuda_demo_pipeline(&text);
        let parsed: Vec<(String, bool)> = {
            let mut out = vec![];
            let mut name = None;
            for l in cuda.lines() {
                if let Some(n) = l
                    .trim()
                    .strip_prefix("[stages.")
                    .and_then(|r| r.strip_suffix(".config]"))
                {
                    name = Some(n.to_owned());
                    out.push((n.to_owned(), false));
                } else if l.starts_with('[') {
                    name = None;
                } else if l.starts_with("device = \"cuda\"") && name.is_some() {
                    out.last_mut().unwrap().1 = true;
                }
            }
            out
        };
        let on: Vec<&str> = parsed
            .iter()
            .filter(|p| p.1)
            .map(|p| p.0.as_str())
            .collect();
        let off: Vec<&str> = parsed
            .iter()
            .filter(|p| !p.1)
            .map(|p| p.0.as_str())
            .collect();
        assert!(
            on.contains(&"lite0") && on.contains(&"country") && on.contains(&"small_cnn"),
            "{on:?}"
        );
        assert!(
            off.contains(&"ingest") && off.contains(&"squash52x48") && off.contains(&"evaluate"),
            "{off:?}"
        );
        assert_eq!(cuda.lines().count(), text.lines().count() + on.len());
    }
}
