//! The CPU's depthwise convolutions timed on EfficientNet-Lite0's shapes (batch 16 at 224):
//! `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example depthwise -- [BATCH]
//! [REPS]`. Prints the fastest of REPS passes per shape and their sum.
use candle_core::Module;
use geoloc_models::conv::{Activation, Conv, PadMode};

mod common;
use common::random;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut a = std::env::args().skip(1);
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(16);
    let reps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    // (channels, input size, kernel, stride): Lite0's depthwise layers.
    let shapes = [
        (32, 112, 3, 1),
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (144, 56, 5, 2),
        (240, 28, 5, 1),
        (240, 28, 3, 2),
        (480, 14, 3, 1),
        (480, 14, 5, 1),
        (672, 14, 5, 1),
        (672, 14, 5, 2),
        (1152, 7, 5, 1),
        (1152, 7, 3, 1),
    ];
    println!(
        "batch {batch}, {} threads, best of {reps}",
        rayon::current_num_threads()
    );
    println!("channels  size  k  s       ms");
    let mut total = 0.0;
    for (c, size, k, s) in shapes {
        let x = random(&[batch, c, size, size], 1);
        let conv = Conv::new(
            random(&[c, 1, k, k], 2),
            Some(random(&[c], 3)),
            s,
            PadMode::TfSame,
            true,
            Activation::Relu6,
        )
        .expect("conv");
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = std::time::Instant::now();
            conv.forward(&x).expect("forward");
            best = best.min(t.elapsed().as_secs_f64());
        }
        total += best;
        println!("{c:>8} {size:>5} {k:>2} {s:>2} {:>8.2}", best * 1e3);
    }
    println!("total ms {:.1}", total * 1e3);
}
