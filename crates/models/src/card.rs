//! `model.json`: what a trained head is and everything needed to run it again (evaluate,
//! predict) from its directory alone: the head's shape, the task and its classes (countries
//! or geocells) with a location each, how targets and inputs were scaled, which features it
//! expects (backbone, layer, weights checksum, geometry), the hyperparameters and seed, and
//! the validation metrics at epoch 0 and at the kept epoch.
//!
//! The parameters are in `model.safetensors` under the names [`HeadSpec::load`] reads, plus
//! `input.mean` and `input.std` when inputs are standardised.

use crate::heads::{Head, HeadSpec};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// `model.json`'s format version.
pub const CARD_VERSION: u32 = 1;
/// File names inside a model directory.
pub const CARD_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const HISTORY_FILE: &str = "history.parquet";

/// What a head predicts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// One of the samples' classes (countries); its location is the class's mean train
    /// location.
    #[default]
    Country,
    /// Latitude and longitude, standardised by the train split's mean and std.
    Latlon,
    /// One of an adaptive S2 partition's cells; its location is the mean of its train photos.
    Geocell,
}

/// How the two regression outputs map back to degrees: `lat = out0 * lat_std + lat_mean`,
/// `lon = out1 * lon_std + lon_mean`, latitude clamped to [-90, 90] and longitude wrapped
/// to [-180, 180).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetScaling {
    pub lat_mean: f64,
    pub lat_std: f64,
    pub lon_mean: f64,
    pub lon_std: f64,
}

impl TargetScaling {
    /// Degrees to the standardised targets.
    pub fn scale(&self, lat: f64, lon: f64) -> [f32; 2] {
        [
            ((lat - self.lat_mean) / self.lat_std) as f32,
            ((lon - self.lon_mean) / self.lon_std) as f32,
        ]
    }

    /// Outputs back to degrees.
    pub fn unscale(&self, out: &[f32]) -> [f64; 2] {
        let lat = (out[0] as f64 * self.lat_std + self.lat_mean).clamp(-90.0, 90.0);
        let lon = out[1] as f64 * self.lon_std + self.lon_mean;
        let lon = (lon + 180.0).rem_euclid(360.0) - 180.0;
        [lat, lon]
    }
}

/// Validation metrics of one epoch (per photo: views averaged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss over the rows that have a target.
    pub loss: Option<f64>,
    /// Share of photos whose top class is right (country, geocell).
    pub accuracy: Option<f64>,
    /// Median and mean great-circle error (haversine) of the predicted location, km.
    pub median_km: Option<f64>,
    pub mean_km: Option<f64>,
    /// Share of photos within 1000 km (the paper's headline radius).
    pub within_1000km: Option<f64>,
    pub photos: usize,
}

/// The adaptive partition a geocell head classifies over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeocellInfo {
    pub t_min: usize,
    pub t_max: usize,
    pub max_level: u8,
    /// Train photos in cells dropped for having fewer than `t_min`.
    pub dropped_photos: usize,
    /// S2 level of each cell, in class order.
    pub levels: Vec<u8>,
    /// Train photos of each cell, in class order.
    pub counts: Vec<usize>,
}

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub card_version: u32,
    pub task: Task,
    pub head: HeadSpec,
    /// Class names: country codes (country), S2 cell tokens (geocell); empty for latlon.
    pub classes: Vec<String>,
    /// Per class, `[lat, lon]`: the mean location of its train photos (spherical mean);
    /// null for a class without located train photos.
    pub class_locations: Vec<Option<[f64; 2]>>,
    pub target_scaling: Option<TargetScaling>,
    /// Inputs are standardised by `input.mean` / `input.std` (saved with the weights).
    pub standardised: bool,
    /// `features` or `images`: the kind of dataset the head reads.
    pub input_kind: String,
    /// The input dataset's metadata as its manifest recorded it (backbone, layer, dim,
    /// weights and their blake3, normalisation, geometry, width and height).
    pub input: serde_json::Value,
    /// The input dataset's fingerprint (its manifest's): evaluate finds the features it
    /// must score by it.
    #[serde(default)]
    pub input_fingerprint: Option<String>,
    /// The input dataset's column checksums (its manifest's): its content, which stays the
    /// same when the dataset is recomputed to equal values under a new fingerprint (the
    /// photos touched, say). Evaluate accepts an input that matches either.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub input_columns: std::collections::BTreeMap<String, String>,
    pub geocells: Option<GeocellInfo>,
    /// Geocell heads: how many top cells a location averages (1: the top cell's).
    #[serde(default)]
    pub location_top_k: Option<usize>,
    /// The train stage's resolved config (optimizer, epochs, batch, seed, ...).
    pub hyperparameters: serde_json::Value,
    pub seed: u64,
    pub train_rows: usize,
    pub val_rows: usize,
    pub epochs_run: usize,
    /// The epoch whose parameters were kept (best on validation; 0 = untrained).
    pub best_epoch: usize,
    pub epoch0: Metrics,
    pub best: Metrics,
}

/// Errors of loading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: model.json version {found}, this build reads {CARD_VERSION}")]
    Version {
        path: std::path::PathBuf,
        found: u32,
    },
    #[error("{path}: {source}")]
    Weights {
        path: std::path::PathBuf,
        source: candle_core::Error,
    },
}

/// A loaded model: its card, its head and the input standardisation.
pub struct LoadedModel {
    pub card: ModelCard,
    pub head: Box<dyn Head>,
    /// `(mean, std)` per input value when the card says `standardised`.
    pub standardisation: Option<(Vec<f32>, Vec<f32>)>,
}

impl ModelCard {
    /// Reads `dir/model.json`.
    pub fn load(dir: &Path) -> Result<ModelCard, CardError> {
        let path = dir.join(CARD_FILE);
        let bytes = std::fs::read(&path).map_err(|e| CardError::Io {
            path: path.clone(),
            source: e,
        })?;
        let card: ModelCard = serde_json::from_slice(&bytes).map_err(|e| CardError::Json {
            path: path.clone(),
            source: e,
        })?;
        if card.card_version != CARD_VERSION {
            return Err(CardError::Version {
                path,
                found: card.card_version,
            });
        }
        Ok(card)
    }
}

impl LoadedModel {
    /// Loads `model.json` and `model.safetensors` from a model directory (shapes checked
    /// against the card).
    pub fn load(dir: &Path, device: &Device) -> Result<LoadedModel, CardError> {
        let card = ModelCard::load(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let werr = |e| CardError::Weights {
            path: path.clone(),
            source: e,
        };
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&path, device).map_err(werr)?;
        let head = card
            .head
            .load(&|n: &str| tensors.get(n).cloned())
            .map_err(werr)?;
        let standardisation = if card.standardised {
            let get = |n: &str| -> Result<Vec<f32>, CardError> {
                let t = tensors
                    .get(n)
                    .ok_or_else(|| werr(candle_core::Error::Msg(format!("{n} missing"))))?;
                let v = t.to_vec1::<f32>().map_err(werr)?;
                if v.len() != card.head.input() {
                    return Err(werr(candle_core::Error::Msg(format!(
                        "{n} has {} values, the head reads {}",
                        v.len(),
                        card.head.input()
                    ))));
                }
                Ok(v)
            };
            Some((get("input.mean")?, get("input.std")?))
        } else {
            None
        };
        Ok(LoadedModel {
            card,
            head,
            standardisation,
        })
    }
}
