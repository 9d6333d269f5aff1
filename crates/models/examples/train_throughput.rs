//! Seconds per epoch of the paper's MLP head (the CPU trainer: forward, backward and SGD
//! written out over gemm) on random features, to compare with the peers' `train_torch.py` (same N, D, batch, Nesterov SGD):
//! `RAYON_NUM_THREADS=T cargo run --release -p geoloc-models --example train_throughput --
//! [N] [D] [EPOCHS]`.
use candle_core::Device;
use geoloc_core::rng::SplitMix64;
use geoloc_models::heads::{CpuMlpTrainer, Loss, Mlp, MlpConfig, Target};
use geoloc_models::optim::{OptimizerConfig, SgdConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> candle_core::Result<()> {
    let mut a = std::env::args().skip(1);
    let n: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(130_000);
    let d: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let epochs: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(2024);
    let x = rng.uniform_f32(n * d, 1.7);
    let y: Vec<u32> = (0..n).map(|_| (rng.next_u64() % 5) as u32).collect();
    let mlp = Mlp::new(MlpConfig::paper(d, 5), 0, &dev)?;
    let mut trainer = CpuMlpTrainer::new(
        &mlp,
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: true,
        }),
        Loss::CrossEntropy,
    )?;
    let mut xb = Vec::with_capacity(500 * d);
    let mut yb = Vec::with_capacity(500);
    let mut drop = SplitMix64::new(1);
    let mut times = Vec::new();
    for ep in 0..epochs {
        let t0 = std::time::Instant::now();
        // Shuffle (Fisher-Yates on our generator), then gather batches of 500.
        let mut perm: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            perm.swap(i, (drop.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut tot = 0f32;
        let mut nb = 0;
        for chunk in perm.chunks(500) {
            xb.clear();
            yb.clear();
            for &r in chunk {
                xb.extend_from_slice(&x[r as usize * d..(r as usize + 1) * d]);
                yb.push(y[r as usize]);
            }
            tot += trainer.step(&xb, Target::Classes(&yb), &mut drop)?.0;
            nb += 1;
        }
        let s = t0.elapsed().as_secs_f64();
        eprintln!("epoch {ep}: {s:.2}s loss {:.4}", tot / nb as f32);
        times.push(s);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "train mlp n={n} d={d} s_per_epoch={:.3}",
        times[times.len() / 2]
    );
    Ok(())
}
