//! The CPU's max-pools timed on GoogLeNet's shapes (batch 16 at 224), the four between its
//! stages and the nine inside its inception blocks: `RAYON_NUM_THREADS=T cargo run --release
//! -p geoloc-models --example pools -- [BATCH] [REPS]`. Prints the fastest of REPS passes
//! per shape and their sum.
use geoloc_models::googlenet::max_pool_ceil;

mod common;
use common::random;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut a = std::env::args().skip(1);
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(16);
    let reps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    // (channels, input size, kernel, stride, padding), in the order the network runs them.
    let shapes = [
        (64, 112, 3, 2, 0),
        (192, 56, 3, 2, 0),
        (192, 28, 3, 1, 1),
        (256, 28, 3, 1, 1),
        (480, 28, 3, 2, 0),
        (480, 14, 3, 1, 1),
        (512, 14, 3, 1, 1),
        (512, 14, 3, 1, 1),
        (512, 14, 3, 1, 1),
        (528, 14, 3, 1, 1),
        (832, 14, 2, 2, 0),
        (832, 7, 3, 1, 1),
        (832, 7, 3, 1, 1),
    ];
    println!(
        "batch {batch}, {} threads, best of {reps}",
        rayon::current_num_threads()
    );
    println!("channels  size  k  s       ms");
    let mut total = 0.0;
    for (c, size, k, s, p) in shapes {
        let x = random(&[batch, c, size, size], 1);
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = std::time::Instant::now();
            let y = max_pool_ceil(&x, k, s, p).expect("pool");
            std::hint::black_box(&y);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        total += best;
        println!("{c:>8}  {size:>4}  {k}  {s}  {best:>7.2}");
    }
    println!("total {total:.1} ms");
}
