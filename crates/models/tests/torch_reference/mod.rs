//! What the model tests share: the fixtures PyTorch wrote, and how outputs are compared.
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A tensor's values as f64, row-major.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |ours - reference| / std(reference): the parity measure of the backbone tests.
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> f64 {
    let (a, b) = (values(ours), values(reference));
    assert_eq!(a.len(), b.len());
    let mean = b.iter().sum::<f64>() / b.len() as f64;
    let std = (b.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    max / std.max(1e-12)
}
