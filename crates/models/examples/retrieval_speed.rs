//! Exact retrieval speed: `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example
//! retrieval_speed -- ROWS DIM QUERIES K`. Builds an index of ROWS random unit vectors of DIM
//! values (seeded), searches QUERIES random unit queries for their K nearest rows with
//! `retrieval::exact_top_k` (the search evaluate and predict run), and prints queries per
//! second, the index's bytes and the process's peak resident memory. Random vectors cost
//! the same as real features: every product is computed whatever the values.
use geoloc_core::rng::SplitMix64;
use geoloc_models::retrieval::{exact_top_k, normalise};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    v.chunks_mut(dim).for_each(|r| {
        normalise(r);
    });
    v
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROWS DIM QUERIES K (numbers)"))
        .collect();
    let [rows, dim, queries, k] = args[..] else {
        eprintln!("usage: retrieval_speed ROWS DIM QUERIES K");
        std::process::exit(2);
    };
    let t = Instant::now();
    let base = unit_rows(rows, dim, 1);
    let q = unit_rows(queries, dim, 2);
    eprintln!("made {rows} x {dim} in {:.1}s", t.elapsed().as_secs_f64());
    // One warm-up block, then the timed search.
    let _ = exact_top_k(&q[..dim.min(q.len())], &base, dim, k);
    let t = Instant::now();
    let hits = exact_top_k(&q, &base, dim, k);
    let s = t.elapsed().as_secs_f64();
    assert_eq!(hits.len(), queries);
    let flops = 2.0 * rows as f64 * dim as f64 * queries as f64;
    println!(
        "{rows} rows x {dim}, {queries} queries, k {k}, {} threads: {:.2} s, {:.1} queries/s, \
         {:.1} GFLOP/s; index {:.2} GB; peak RSS {:.0} MB",
        rayon::current_num_threads(),
        s,
        queries as f64 / s,
        flops / s / 1e9,
        (rows * dim * 4) as f64 / 1e9,
        peak_rss_mb()
    );
}
