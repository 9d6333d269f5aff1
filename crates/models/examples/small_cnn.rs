//! Times the small CNN's training step (forward, backward, update) on random 52x48 input,
//! through the written-out CPU trainer (`cpu`, what train uses on the CPU) or candle's
//! autograd (`autograd`, what it uses elsewhere):
//! `cargo run --release -p geoloc-models --example small_cnn -- [BATCH] [STEPS] [cpu|autograd]`.
use candle_core::Device;
use geoloc_core::rng::SplitMix64;
use geoloc_models::cnn_trainer::CpuCnnTrainer;
use geoloc_models::heads::{HeadSpec, Loss, SmallCnnConfig, Target};
use geoloc_models::optim::{AdamConfig, OptimizerConfig};
use geoloc_models::trainer::{CandleTrainer, Trainer};

fn main() -> candle_core::Result<()> {
    let mut a = std::env::args().skip(1);
    let batch: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(50);
    let steps: usize = a.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    let cpu = a.next().is_none_or(|m| m == "cpu");
    let spec = HeadSpec::SmallCnn(SmallCnnConfig::paper(52, 48, 5));
    let dev = Device::Cpu;
    let opt = OptimizerConfig::Adam(AdamConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    let head = spec.init(0, &dev)?;
    let mut t: Box<dyn Trainer> = if cpu {
        let named = geoloc_models::trainer::named_params(head.as_ref())?;
        let HeadSpec::SmallCnn(c) = &spec else {
            unreachable!()
        };
        Box::new(CpuCnnTrainer::new(
            c.clone(),
            &named,
            opt,
            Loss::CrossEntropy,
        )?)
    } else {
        Box::new(CandleTrainer::new(
            head,
            spec.input(),
            5,
            opt,
            Loss::CrossEntropy,
            &dev,
        )?)
    };
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
