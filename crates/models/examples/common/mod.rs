//! What the benchmark examples share.

use candle_core::{Device, Tensor};

/// A CPU tensor of `shape` with values in [-0.025, 0.025) from a seeded LCG: the cost of a
/// forward pass does not depend on the values, and the same seed gives the same tensor.
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}
