//! Named tensors handed to a model's constructor, with bookkeeping: every tensor the model
//! asks for and does not find (or finds with another shape), and every tensor of the file it
//! never asked for, is collected and reported together, so a wrong or mismatched weights file
//! gives one error naming each problem.

use candle_core::{DType, Tensor};
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
        }
    }

    /// The tensor `name` with shape `shape`; `None` (and a recorded problem) when it is
    /// missing or of another shape.
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Option<Tensor> {
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
        match t.to_dtype(self.dtype) {
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
