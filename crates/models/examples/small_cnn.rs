//! Times the small CNN's training step (forward, backward, update) on random 52x48 input:
//! `cargo run --release -p geoloc-models --example small_cnn -- [BATCH] [STEPS]`.
use candle_core::Device;
use geoloc_core::rng::SplitMix64;
use geoloc_models::heads::{HeadSpec, Loss, SmallCnnConfig, Target};
use geoloc_models::optim::{AdamConfig, OptimizerConfig};
use geoloc_models::trainer::{CandleTrainer, Trainer};

fn main() -> candle_core::Result<()> {
    let mut a = std::env::args().skip(1);
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(50);
    let steps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    let spec = HeadSpec::SmallCnn(SmallCnnConfig::paper(52, 48, 5));
    let dev = Device::Cpu;
    let mut t = CandleTrainer::new(
        spec.init(0, &dev)?,
        spec.input(),
        5,
        OptimizerConfig::Adam(AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }),
        Loss::CrossEntropy,
        &dev,
    )?;
    let mut rng = SplitMix64::new(1);
    let x = rng.uniform_f32(batch * spec.input(), 1.0);
    let y: Vec<u32> = (0..batch).map(|i| (i % 5) as u32).collect();
    for s in 0..steps {
        let t0 = std::time::Instant::now();
        let p = t.predict(&x)?;
        let f = t0.elapsed().as_secs_f64();
        let t1 = std::time::Instant::now();
        let (l, _) = t.step(&x, Target::Classes(&y), &mut rng)?;
        eprintln!(
            "step {s}: forward {f:.3}s, train step {:.3}s, loss {l:.4} ({} outputs)",
            t1.elapsed().as_secs_f64(),
            p.len()
        );
    }
    Ok(())
}
