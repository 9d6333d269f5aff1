//! Forward throughput of the backbones on random weights and inputs (the cost does not depend
//! on the values): `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example
//! throughput -- vgg16|googlenet|lite0|lite1|lite2 BATCH REPS [f32|bf16]`. Prints images/s
//! (median of REPS after a warm-up); `bf16` runs the products in bf16 (`to_bf16`, AVX512-BF16
//! CPUs only). Compare with the peers' `featurize_torch.py random T --models ... --batches
//! BATCH` (and `xtask/peers/lite_torch.py` for Lite1 and Lite2). The EfficientNet-Lite
//! variants run their real checkpoints (`cargo xtask fetch-liteN`) at their own input sizes
//! (224, 240, 260); VGG16 and GoogLeNet run at 224. On x86 it also prints the core's clock
//! (measured) and the f32 peak that makes per core, for the benchmark's fraction of peak, and
//! where the CPU has AVX512-BF16 the bf16 peak, from the measured rate of independent
//! `VDPBF16PS` instructions.
use candle_core::{DType, Tensor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use geoloc_models::efficientnet::{EfficientNetLite, LiteConfig, LiteLayer, LiteVariant};
use geoloc_models::googlenet::{GoogLeNet, GoogLeNetConfig, GoogLeNetLayer};
use geoloc_models::vgg::{Vgg, VggConfig, VggLayer};
use geoloc_models::weights::WeightMap;

mod common;
use common::random;

fn names(file: &str) -> Vec<(String, Tensor)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    std::fs::read_to_string(path)
        .expect("names list")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            let (name, dims) = l.split_once('\t').expect("name<TAB>dims");
            let shape: Vec<usize> = dims
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().expect("dim"))
                .collect();
            let t = if name.ends_with("running_var") {
                (random(&shape, i as u64).abs().expect("abs") + 1.0).expect("add")
            } else {
                random(&shape, i as u64)
            };
            (name.to_owned(), t)
        })
        .collect()
}

fn main() {
    let mut a = std::env::args().skip(1);
    let model = a.next().unwrap_or_else(|| "googlenet".into());
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(8);
    let reps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(3);
    let bf16 = match a.next().as_deref() {
        None | Some("f32") => false,
        Some("bf16") => true,
        Some(other) => panic!("dtype {other}: f32 or bf16"),
    };
    let cpu = geoloc_models::cpu::CpuFeatures::detect();
    println!(
        "cpu {}; f32 path {}; bf16 kernel {}",
        cpu.line(),
        cpu.f32_path(),
        geoloc_models::cpu::kernels("bf16").unwrap_or_else(|_| "none".into())
    );
    if bf16 && cpu.bf16_path().is_none() {
        panic!("bf16 on this CPU: no AVX512-BF16 ({})", cpu.line());
    }
    if let Some(ghz) = clock_ghz() {
        // The f32 peak: measured AVX-512 FMAs where the CPU has them; else two FMA pipes of
        // the path's width (AVX2: Zen 3, Haswell and later).
        let f32_per_s = fma512_flops().unwrap_or(
            match cpu.f32_path() {
                "avx2+fma" => 32.0,
                _ => 4.0,
            } * ghz
                * 1e9,
        );
        println!(
            "peak clock_ghz={ghz:.2} flop_per_cycle={:.0} gflops_per_core={:.1}",
            f32_per_s / (ghz * 1e9),
            f32_per_s / 1e9
        );
        // The bf16 peak: the faster of VDPBF16PS and the f32 FMAs (the widened kernel).
        if let Some(dot) = bf16_flops() {
            let best = dot.max(f32_per_s);
            println!(
                "bf16peak dot_flop_per_cycle={:.0} flop_per_cycle={:.0} gflops_per_core={:.1}",
                dot / (ghz * 1e9),
                best / (ghz * 1e9),
                best / 1e9
            );
        }
    }
    let lite = match model.as_str() {
        "lite0" => Some(LiteVariant::Lite0),
        "lite1" => Some(LiteVariant::Lite1),
        "lite2" => Some(LiteVariant::Lite2),
        _ => None,
    };
    let size = lite.map_or(224, |v| v.native_size() as usize);
    let x = random(&[batch, 3, size, size], 99);
    let run: Box<dyn Fn() -> Tensor> = match model.as_str() {
        "vgg16" => {
            let mut m = Vgg::load(
                WeightMap::new(names("vgg16_names.tsv"), DType::F32),
                VggConfig::vgg16(),
            )
            .expect("vgg16");
            if bf16 {
                m.to_bf16().expect("bf16");
            }
            Box::new(move || m.forward(&x, VggLayer::Logits).expect("forward"))
        }
        "lite0" | "lite1" | "lite2" => {
            // The real checkpoint (cargo xtask fetch-liteN): the peer runs it too.
            let v = lite.expect("a Lite name");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(format!("data/weights/efficientnet-{model}.pth"));
            let ck = geoloc_models::checkpoint::load(&path, None).expect("the checkpoint");
            let mut m = EfficientNetLite::load(
                WeightMap::new(ck.tensors, DType::F32),
                LiteConfig::variant(v),
            )
            .expect("the checkpoint's network");
            if bf16 {
                m.to_bf16().expect("bf16");
            }
            Box::new(move || m.forward(&x, LiteLayer::Logits).expect("forward"))
        }
        _ => {
            let mut m = GoogLeNet::load(
                WeightMap::new(names("googlenet_names.tsv"), DType::F32),
                GoogLeNetConfig::googlenet(),
            )
            .expect("googlenet");
            if bf16 {
                m.to_bf16().expect("bf16");
            }
            Box::new(move || m.forward(&x, GoogLeNetLayer::Logits).expect("forward"))
        }
    };
    run();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    println!(
        "{model} batch={batch} size={size} dtype={} seconds={s:.3} images_per_s={:.2}",
        if bf16 { "bf16" } else { "f32" },
        batch as f64 / s
    );
}

/// The core's clock while it runs, from a chain of dependent integer multiplies (3 cycles
/// each on every x86-64 core of the last 15 years; dependent adds are not a clock on Intel's
/// Golden Cove, whose renamer folds immediate adds): best of 5 passes of 300M multiplies.
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> Option<f64> {
    let n: u64 = 300_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let mut x: u64 = 3;
        // SAFETY: register arithmetic only; the loop counter ends at zero.
        unsafe {
            std::arch::asm!(
                "2:",
                "imul {x}, {x}",
                "imul {x}, {x}",
                "sub {n}, 2",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n => _,
                options(nomem, nostack),
            );
        }
        std::hint::black_box(x);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Some(3.0 * n as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn clock_ghz() -> Option<f64> {
    None
}

/// Instructions per second of one core issuing `$ins zmmN, zmm16, zmm17` for N in 0..16 (16
/// independent chains, enough to cover any latency), best of 5 passes.
#[cfg(target_arch = "x86_64")]
macro_rules! zmm_rate {
    ($ins:literal) => {{
        let n: u64 = 10_000_000;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            // SAFETY: register arithmetic on clobbered vector registers; the caller checked
            // that the CPU has the instruction.
            unsafe {
                std::arch::asm!(
                    "vpxord zmm16, zmm16, zmm16",
                    "vpxord zmm17, zmm17, zmm17",
                    "2:",
                    concat!($ins, " zmm0, zmm16, zmm17"),
                    concat!($ins, " zmm1, zmm16, zmm17"),
                    concat!($ins, " zmm2, zmm16, zmm17"),
                    concat!($ins, " zmm3, zmm16, zmm17"),
                    concat!($ins, " zmm4, zmm16, zmm17"),
                    concat!($ins, " zmm5, zmm16, zmm17"),
                    concat!($ins, " zmm6, zmm16, zmm17"),
                    concat!($ins, " zmm7, zmm16, zmm17"),
                    concat!($ins, " zmm8, zmm16, zmm17"),
                    concat!($ins, " zmm9, zmm16, zmm17"),
                    concat!($ins, " zmm10, zmm16, zmm17"),
                    concat!($ins, " zmm11, zmm16, zmm17"),
                    concat!($ins, " zmm12, zmm16, zmm17"),
                    concat!($ins, " zmm13, zmm16, zmm17"),
                    concat!($ins, " zmm14, zmm16, zmm17"),
                    concat!($ins, " zmm15, zmm16, zmm17"),
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) n => _,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                    out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
                    out("zmm16") _, out("zmm17") _,
                    options(nomem, nostack),
                );
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        16.0 * n as f64 / best
    }};
}

/// AVX-512 f32 FMAs per second of one core (32 FLOP each); `None` without AVX-512F.
#[cfg(target_arch = "x86_64")]
fn fma512_flops() -> Option<f64> {
    #[target_feature(enable = "avx512f")]
    fn rate() -> f64 {
        zmm_rate!("vfmadd231ps")
    }
    // SAFETY: the CPU has AVX-512F (checked first).
    std::arch::is_x86_feature_detected!("avx512f").then(|| 32.0 * unsafe { rate() })
}

#[cfg(not(target_arch = "x86_64"))]
fn fma512_flops() -> Option<f64> {
    None
}

/// bf16 FLOP per second of one core on `VDPBF16PS` (64 FLOP each: 16 lanes, two products and
/// two additions); `None` without AVX512-BF16.
#[cfg(target_arch = "x86_64")]
fn bf16_flops() -> Option<f64> {
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn rate() -> f64 {
        zmm_rate!("vdpbf16ps")
    }
    let has = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16");
    // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked first).
    has.then(|| 64.0 * unsafe { rate() })
}

#[cfg(not(target_arch = "x86_64"))]
fn bf16_flops() -> Option<f64> {
    None
}
