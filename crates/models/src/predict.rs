//! Running a trained head on rows it has not seen: standardise the inputs as the model was
//! trained, forward, turn class scores into probabilities, average each photo's views
//! (test-time augmentation), and read a photo's averaged scores as top-k classes and a
//! location. Shared by train (validation), evaluate (the test split) and predict (new photos).

use crate::card::{CardError, LoadedModel, ModelCard, TargetScaling, Task};
use crate::cnn_trainer::CpuCnnTrainer;
use crate::heads::{Head, HeadSpec, Loss};
use crate::optim::{OptimizerConfig, SgdConfig};
use crate::trainer::{named_params, Trainer};
use candle_core::{Device, Tensor};
use geoloc_core::geo::spherical_mean;
use std::path::Path;

/// Rows per forward pass: bounds memory for wide inputs (the small CNN's pixels).
const CHUNK: usize = 256;

/// A model ready to score rows.
pub struct Predictor {
    pub card: ModelCard,
    head: Box<dyn Head>,
    standardisation: Option<(Vec<f32>, Vec<f32>)>,
    device: Device,
    /// The small CNN on the CPU runs through [`CpuCnnTrainer`]'s forward (gemm; candle's
    /// im2col by concatenation allocates ~300 MB per 256 images and layer).
    fast: Option<CpuCnnTrainer>,
}

impl Predictor {
    /// Loads a model directory on `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Predictor, CardError> {
        Ok(Self::from_loaded(LoadedModel::load(dir, device)?, device))
    }

    /// Wraps a loaded model.
    pub fn from_loaded(m: LoadedModel, device: &Device) -> Predictor {
        let fast = fast_path(&m.card.head, m.head.as_ref(), device);
        Predictor {
            card: m.card,
            head: m.head,
            standardisation: m.standardisation,
            device: device.clone(),
            fast,
        }
    }

    /// The same model before training: the head re-initialised from the card's seed (the
    /// draws train made), with the trained model's input standardisation. The paper's
    /// "0 epochs" baseline.
    pub fn untrained(&self) -> candle_core::Result<Predictor> {
        let head = self.card.head.init(self.card.seed, &self.device)?;
        Ok(Predictor {
            card: self.card.clone(),
            fast: fast_path(&self.card.head, head.as_ref(), &self.device),
            head,
            standardisation: self.standardisation.clone(),
            device: self.device.clone(),
        })
    }

    /// Values per input row.
    pub fn input_dim(&self) -> usize {
        self.card.head.input()
    }

    /// Values per output row.
    pub fn output_dim(&self) -> usize {
        self.card.head.outputs()
    }

    /// Scores of `x` (row-major, `input_dim` wide): class probabilities (softmax) for
    /// classifiers, the raw (scaled) coordinates for latlon.
    pub fn scores(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let d = self.input_dim();
        if d == 0 || !x.len().is_multiple_of(d) {
            candle_core::bail!("{} values are not rows of {d}", x.len());
        }
        let mut out = Vec::with_capacity(x.len() / d * self.output_dim());
        let mut buf = Vec::new();
        for chunk in x.chunks(CHUNK * d) {
            let rows = chunk.len() / d;
            let input = match &self.standardisation {
                Some((m, s)) => {
                    buf.clear();
                    for row in chunk.chunks(d) {
                        buf.extend(row.iter().zip(m).zip(s).map(|((v, m), s)| (v - m) / s));
                    }
                    &buf[..]
                }
                None => chunk,
            };
            let o = match &self.fast {
                Some(f) => f.predict(input)?,
                None => {
                    let t = Tensor::from_slice(input, (rows, d), &self.device)?;
                    self.head
                        .forward(&t, None)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                }
            };
            if self.card.task == Task::Latlon {
                out.extend_from_slice(&o);
            } else {
                for row in o.chunks(self.output_dim()) {
                    softmax_into(row, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// A photo's location from its averaged scores.
    pub fn locate(&self, scores: &[f32]) -> Option<[f64; 2]> {
        locate(
            self.card.task,
            &self.card.class_locations,
            self.card.target_scaling.as_ref(),
            self.card.location_top_k.unwrap_or(1),
            scores,
        )
    }
}

fn fast_path(spec: &HeadSpec, head: &dyn Head, device: &Device) -> Option<CpuCnnTrainer> {
    let HeadSpec::SmallCnn(c) = spec else {
        return None;
    };
    if !device.is_cpu() {
        return None;
    }
    // The optimiser is never stepped: any valid one will do.
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        lr: 1.0,
        momentum: 0.0,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    });
    let named = named_params(head).ok()?;
    CpuCnnTrainer::new(c.clone(), &named, sgd, Loss::CrossEntropy).ok()
}

/// Appends the softmax of `row` (max-subtracted, in f64).
pub fn softmax_into(row: &[f32], out: &mut Vec<f32>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|v| ((v - max) as f64).exp()).sum();
    out.extend(row.iter().map(|v| (((v - max) as f64).exp() / sum) as f32));
}

/// The `k` highest scores as `(class, score)`, best first (ties: the lower class first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.into_iter().map(|c| (c, scores[c])).collect()
}

/// A photo's predicted location from its (view-averaged) scores:
/// - latlon: the outputs unscaled to degrees;
/// - country: the top class's mean train location;
/// - geocell: the top cell's mean location, or with `top_k` > 1 the probability-weighted
///   spherical mean of the top k cells' locations.
pub fn locate(
    task: Task,
    class_locations: &[Option<[f64; 2]>],
    scaling: Option<&TargetScaling>,
    top: usize,
    scores: &[f32],
) -> Option<[f64; 2]> {
    match task {
        Task::Latlon => scaling.map(|s| s.unscale(scores)),
        Task::Country | Task::Geocell => {
            let best = top_k(scores, top.max(1).min(scores.len()));
            if task == Task::Country || best.len() == 1 {
                return class_locations.get(best.first()?.0).copied().flatten();
            }
            spherical_mean(best.iter().filter_map(|&(c, p)| {
                let l = class_locations.get(c).copied().flatten()?;
                Some(((l[0], l[1]), p as f64))
            }))
        }
    }
}

/// Per-photo running sums of view scores: [`PhotoScores::add`] each view's scores, then
/// [`PhotoScores::mean`] averages them.
#[derive(Debug, Clone)]
pub struct PhotoScores {
    dim: usize,
    sums: Vec<f64>,
    views: Vec<u32>,
}

impl PhotoScores {
    /// Sums for `photos` photos of `dim` scores each.
    pub fn new(photos: usize, dim: usize) -> Self {
        PhotoScores {
            dim,
            sums: vec![0.0; photos * dim],
            views: vec![0; photos],
        }
    }

    /// Adds one view's scores to `photo`.
    pub fn add(&mut self, photo: usize, scores: &[f32]) {
        self.views[photo] += 1;
        let s = &mut self.sums[photo * self.dim..(photo + 1) * self.dim];
        s.iter_mut().zip(scores).for_each(|(a, v)| *a += *v as f64);
    }

    /// Views added to `photo`.
    pub fn views(&self, photo: usize) -> u32 {
        self.views[photo]
    }

    /// The mean of `photo`'s views (zeros without a view).
    pub fn mean(&self, photo: usize) -> Vec<f32> {
        let n = self.views[photo].max(1) as f64;
        self.sums[photo * self.dim..(photo + 1) * self.dim]
            .iter()
            .map(|v| (v / n) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_class() {
        assert_eq!(
            top_k(&[0.1, 0.4, 0.4, 0.1], 3),
            vec![(1, 0.4), (2, 0.4), (0, 0.1)]
        );
        assert_eq!(top_k(&[0.5], 5), vec![(0, 0.5)]);
    }

    #[test]
    fn locations_by_task() {
        let locs = [Some([10.0, 20.0]), None, Some([-10.0, 20.0])];
        assert_eq!(
            locate(Task::Country, &locs, None, 1, &[0.7, 0.2, 0.1]),
            Some([10.0, 20.0])
        );
        // A class without a location predicts none.
        assert_eq!(
            locate(Task::Country, &locs, None, 1, &[0.1, 0.8, 0.1]),
            None
        );
        // Geocell top 2, equal weights: the spherical mean of (10, 20) and (-10, 20).
        let l = locate(Task::Geocell, &locs, None, 2, &[0.45, 0.1, 0.45]).unwrap();
        assert!(l[0].abs() < 1e-9 && (l[1] - 20.0).abs() < 1e-9, "{l:?}");
        let s = TargetScaling {
            lat_mean: 40.0,
            lat_std: 10.0,
            lon_mean: 170.0,
            lon_std: 20.0,
        };
        // Unscaled and wrapped across the antimeridian: 170 + 0.75 * 20 = 185 -> -175.
        let l = locate(Task::Latlon, &[], Some(&s), 1, &[1.0, 0.75]).unwrap();
        assert!(
            (l[0] - 50.0).abs() < 1e-6 && (l[1] + 175.0).abs() < 1e-6,
            "{l:?}"
        );
    }

    #[test]
    fn photo_scores_average_views() {
        let mut p = PhotoScores::new(2, 2);
        p.add(0, &[1.0, 0.0]);
        p.add(0, &[0.0, 1.0]);
        p.add(1, &[0.2, 0.8]);
        assert_eq!(p.mean(0), vec![0.5, 0.5]);
        assert_eq!(p.mean(1), vec![0.2, 0.8]);
        assert_eq!(p.views(0), 2);
    }
}
