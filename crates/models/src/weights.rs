//! Named tensors handed to a model's constructor, with bookkeeping: every tensor the model
//! asks for and does not find (or finds with another shape), and every tensor of the file it
//! never asked for, is collected and reported together, so a wrong or mismatched weights file
//! gives one error naming each problem.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// Why a weight set does not fit a model. Each list is sorted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weights do not fit {model}: {}", describe(.missing, .mismatched, .unexpected))]
pub struct WeightsError {
    pub model: String,
    /// Tensors the model needs that the file lacks, with the shape expected.
    pub missing: Vec<String>,
    /// `name: expected [..], found [..]`.
    pub mismatched: Vec<String>,
    /// Tensors in the file the model does not use.
    pub unexpected: Vec<String>,
}

fn describe(missing: &[String], mismatched: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    let list = |v: &[String]| {
        let shown: Vec<&str> = v.iter().take(12).map(String::as_str).collect();
        let more = v.len().saturating_sub(12);
        if more > 0 {
            format!("{} (and {more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    if !missing.is_empty() {
        parts.push(format!("{} missing: {}", missing.len(), list(missing)));
    }
    if !mismatched.is_empty() {
        parts.push(format!(
            "{} of another shape: {}",
            mismatched.len(),
            list(mismatched)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected: {}",
            unexpected.len(),
            list(unexpected)
        ));
    }
    parts.join("; ")
}

/// The tensors of a weights file, as a model takes them.
#[derive(Debug)]
pub struct WeightMap {
    tensors: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
    dtype: DType,
    device: Device,
    /// Seeded random weights instead of a file's: every requested tensor exists.
    random: Option<u64>,
}

impl WeightMap {
    /// Wraps named tensors; [`WeightMap::get`] converts what it hands out to `dtype`.
    pub fn new(tensors: impl IntoIterator<Item = (String, Tensor)>, dtype: DType) -> Self {
        WeightMap {
            tensors: tensors.into_iter().collect(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
            dtype,
            device: Device::Cpu,
            random: None,
        }
    }

    /// Seeded random weights (f32): each tensor's values depend only on the seed and its
    /// name. Weights of rank >= 2 are uniform in +-1/sqrt(fan_in); BatchNorm scales and
    /// running variances are 1, biases and running means 0. candle's CPU generator cannot be
    /// seeded, hence the project's own (splitmix64).
    pub fn random(seed: u64) -> Self {
        let mut w = Self::new(std::iter::empty(), DType::F32);
        w.random = Some(seed);
        w
    }

    /// Hands tensors out as `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Hands tensors out on `device` (CPU by default).
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }

    fn random_tensor(seed: u64, name: &str, shape: &[usize]) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let last = name.rsplit('.').next().unwrap_or(name);
        let fill = |v: f32| Tensor::full(v, shape, &Device::Cpu);
        if shape.len() < 2 {
            return match last {
                "running_var" | "weight" => fill(1.0),
                _ => fill(0.0),
            };
        }
        let fan_in: usize = shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        // FNV-1a of the name, mixed with the seed, seeds a splitmix64 stream.
        let s = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        }) ^ seed.wrapping_mul(0x9e3779b97f4a7c15);
        let v = geoloc_core::rng::SplitMix64::new(s).uniform_f32(n, bound);
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    /// The tensor `name` with shape `shape`; `None` (and a recorded problem) when it is
    /// missing or of another shape.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Option<Tensor> {
        if let Some(seed) = self.random {
            let t = Self::random_tensor(seed, name, shape)
                .and_then(|t| t.to_device(&self.device))
                .and_then(|t| t.to_dtype(self.dtype));
            return match t {
                Ok(t) => Some(t),
                Err(e) => {
                    self.mismatched.push(format!("{name}: {e}"));
                    None
                }
            };
        }
        let Some(t) = self.tensors.get(name) else {
            self.missing.push(format!("{name} {shape:?}"));
            return None;
        };
        self.used.insert(name.to_owned());
        if t.dims() != shape {
            self.mismatched
                .push(format!("{name}: expected {shape:?}, found {:?}", t.dims()));
            return None;
        }
        match t
            .to_device(&self.device)
            .and_then(|t| t.to_dtype(self.dtype))
        {
            Ok(t) => Some(t),
            Err(e) => {
                self.mismatched.push(format!("{name}: {e}"));
                None
            }
        }
    }

    /// Marks tensors the model knows and ignores on purpose (BatchNorm's
    /// `num_batches_tracked`, untrained auxiliary heads).
    pub fn ignore(&mut self, keep: impl Fn(&str) -> bool) {
        let names: Vec<String> = self.tensors.keys().filter(|n| keep(n)).cloned().collect();
        self.used.extend(names);
    }

    /// Ends construction: `Ok` when nothing was missing, mismatched or left over.
    pub fn finish(self, model: &str) -> Result<(), WeightsError> {
        let unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| !self.used.contains(*n))
            .cloned()
            .collect();
        let (mut missing, mut mismatched) = (self.missing, self.mismatched);
        missing.sort();
        mismatched.sort();
        if missing.is_empty() && mismatched.is_empty() && unexpected.is_empty() {
            Ok(())
        } else {
            Err(WeightsError {
                model: model.to_owned(),
                missing,
                mismatched,
                unexpected,
            })
        }
    }
}
