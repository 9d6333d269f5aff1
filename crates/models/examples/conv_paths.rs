//! The CPU convolution's two paths for 3x3 stride-1 layers, im2col + gemm and Winograd
//! F(2x2, 3x3), timed on the layer shapes of VGG16 and GoogLeNet:
//! `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example conv_paths -- [BATCH]
//! [REPS]`. Prints, per shape, the fastest of REPS passes of each path (the minimum: the
//! least disturbed by other work on the machine) and their ratio. This is how
//! `conv::winograd_pays` was chosen. Where the CPU has AVX512-BF16 it also times both paths
//! with bf16 products (`Conv::to_bf16`, the kernel this process picks, or the one
//! `GEOLOC_BF16_KERNEL=dot|widened` names).
use candle_core::Module;
use geoloc_models::conv::{Activation, Conv, PadMode, Padding};

mod common;
use common::random;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut a = std::env::args().skip(1);
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(16);
    let reps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    // (network, cin, cout, size): every 3x3 stride-1 shape of the two networks at 224.
    let shapes = [
        ("vgg16", 64, 64, 224),
        ("vgg16", 64, 128, 112),
        ("vgg16", 128, 128, 112),
        ("vgg16", 128, 256, 56),
        ("vgg16", 256, 256, 56),
        ("vgg16", 256, 512, 28),
        ("vgg16", 512, 512, 28),
        ("vgg16", 512, 512, 14),
        ("googlenet", 64, 192, 56),
        ("googlenet", 96, 128, 28),
        ("googlenet", 16, 32, 28),
        ("googlenet", 128, 192, 28),
        ("googlenet", 32, 96, 28),
        ("googlenet", 96, 208, 14),
        ("googlenet", 16, 48, 14),
        ("googlenet", 112, 224, 14),
        ("googlenet", 24, 64, 14),
        ("googlenet", 144, 288, 14),
        ("googlenet", 160, 320, 14),
        ("googlenet", 32, 128, 14),
        ("googlenet", 160, 320, 7),
        ("googlenet", 192, 384, 7),
        ("googlenet", 48, 128, 7),
    ];
    println!(
        "batch {batch}, {} threads, best of {reps}",
        rayon::current_num_threads()
    );
    let bf16 = geoloc_models::cpu::kernels("bf16").ok();
    if let Some(k) = &bf16 {
        println!("bf16 kernel: {k}");
    }
    println!(
        "network    cin  cout  size   im2col ms  winograd ms  speed-up  im2col bf16  winograd bf16"
    );
    for (net, cin, cout, size) in shapes {
        let x = random(&[batch, cin, size, size], 1);
        let conv = |on| {
            Conv::new(
                random(&[cout, cin, 3, 3], 2),
                Some(random(&[cout], 3)),
                1,
                PadMode::Fixed(Padding::same_all(1)),
                false,
                Activation::Relu,
            )
            .expect("conv")
            .with_winograd(on)
        };
        let mut convs = vec![conv(false), conv(true)];
        if bf16.is_some() {
            for on in [false, true] {
                let mut c = conv(on);
                c.to_bf16().expect("bf16");
                convs.push(c);
            }
        }
        let mut best = vec![f64::MAX; convs.len()];
        for _ in 0..reps {
            for (i, c) in convs.iter().enumerate() {
                let t = std::time::Instant::now();
                c.forward(&x).expect("forward");
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
        }
        let ms = |i: usize| {
            best.get(i)
                .map_or("-".into(), |t| format!("{:.1}", t * 1e3))
        };
        println!(
            "{net:<9} {cin:>4} {cout:>5} {size:>5} {:>11.1} {:>12.1} {:>9.2} {:>12} {:>14}",
            best[0] * 1e3,
            best[1] * 1e3,
            best[0] / best[1],
            ms(2),
            ms(3)
        );
    }
}
