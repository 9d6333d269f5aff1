//! Forward throughput of the backbones on random weights and inputs (the cost does not depend
//! on the values): `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example
//! throughput -- vgg16|googlenet|lite0|lite1|lite2 BATCH REPS`. Prints images/s (median of REPS
//! after a warm-up); compare with the peers' `featurize_torch.py random T --models ... --batches
//! BATCH` (and `xtask/peers/lite_torch.py` for Lite1 and Lite2). The EfficientNet-Lite
//! variants run their real checkpoints (`cargo xtask fetch-liteN`) at their own input sizes
//! (224, 240, 260); VGG16 and GoogLeNet run at 224. On x86 it also prints the core's clock
//! (measured) and the f32 peak that makes per core, for the benchmark's fraction of peak.
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
    let cpu = geoloc_models::cpu::CpuFeatures::detect();
    println!("cpu {}; f32 path {}", cpu.line(), cpu.f32_path());
    if let Some(ghz) = clock_ghz() {
        // Two FMA pipes of the f32 path's width (Zen 3 and 4, Xeon Gold/Platinum; Zen 4
        // splits a 512-bit FMA in two, so its real figure is half the AVX-512 one).
        let flop_per_cycle = match cpu.f32_path() {
            "avx512f" => 64.0,
            "avx2+fma" => 32.0,
            _ => 4.0,
        };
        println!(
            "peak clock_ghz={ghz:.2} flop_per_cycle={flop_per_cycle} gflops_per_core={:.1}",
            ghz * flop_per_cycle
        );
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
            let m = Vgg::load(
                WeightMap::new(names("vgg16_names.tsv"), DType::F32),
                VggConfig::vgg16(),
            )
            .expect("vgg16");
            Box::new(move || m.forward(&x, VggLayer::Logits).expect("forward"))
        }
        "lite0" | "lite1" | "lite2" => {
            // The real checkpoint (cargo xtask fetch-liteN): the peer runs it too.
            let v = lite.expect("a Lite name");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(format!("data/weights/efficientnet-{model}.pth"));
            let ck = geoloc_models::checkpoint::load(&path, None).expect("the checkpoint");
            let m = EfficientNetLite::load(
                WeightMap::new(ck.tensors, DType::F32),
                LiteConfig::variant(v),
            )
            .expect("the checkpoint's network");
            Box::new(move || m.forward(&x, LiteLayer::Logits).expect("forward"))
        }
        _ => {
            let m = GoogLeNet::load(
                WeightMap::new(names("googlenet_names.tsv"), DType::F32),
                GoogLeNetConfig::googlenet(),
            )
            .expect("googlenet");
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
        "{model} batch={batch} size={size} seconds={s:.3} images_per_s={:.2}",
        batch as f64 / s
    );
}

/// The core's clock while it runs, from a chain of dependent integer adds (one a cycle on
/// every x86 core): best of 5 passes of 400M adds.
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> Option<f64> {
    let n: u64 = 400_000_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let mut x: u64 = 0;
        // SAFETY: register arithmetic only; the loop counter ends at zero.
        unsafe {
            std::arch::asm!(
                "2:",
                "add {x}, 1",
                "add {x}, 1",
                "add {x}, 1",
                "add {x}, 1",
                "sub {n}, 4",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) n => _,
                options(nomem, nostack),
            );
        }
        std::hint::black_box(x);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Some(n as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn clock_ghz() -> Option<f64> {
    None
}
