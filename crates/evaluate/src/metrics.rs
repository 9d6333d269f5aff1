//! The numbers of `metrics.json`, as pure functions of predictions and truth: country
//! accuracy with its Wilson interval, per-class precision and recall, the confusion matrix,
//! accuracy within distance radii, median and mean error, and the GeoGuessr-style score.

use serde::{Deserialize, Serialize};

/// The paper's radii (Sy & Day report 10, 100, 1000 and 10000 km) and the standard ones of
/// later work (1 street, 25 city, 200 region, 750 country, 2500 continent), ascending.
pub const DEFAULT_RADII_KM: [f64; 9] = [
    1.0, 10.0, 25.0, 100.0, 200.0, 750.0, 1000.0, 2500.0, 10000.0,
];

/// The GeoGuessr-style score of an error: `5000 * exp(-d / 1492.7)` (5000 at 0 km).
pub fn geoscore(d_km: f64) -> f64 {
    5000.0 * (-d_km / 1492.7).exp()
}

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `k` successes in `n` trials at normal quantile `z`
/// (`(0, 0)` when `n` is 0). Unlike the normal approximation it stays inside [0, 1] and is
/// not degenerate at 0 or n successes.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let d = 1.0 + z2 / n;
    (
        ((centre - half) / d).max(0.0),
        ((centre + half) / d).min(1.0),
    )
}

/// Share of errors within a radius.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Within {
    pub km: f64,
    pub share: f64,
}

/// Location error statistics over the photos that have both a prediction and a truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistanceMetrics {
    pub photos: usize,
    pub median_km: f64,
    pub mean_km: f64,
    /// Accuracy within each radius, ascending (a photo at exactly the radius counts).
    pub within: Vec<Within>,
    /// Mean GeoGuessr-style score (0-5000).
    pub geoscore: f64,
}

impl DistanceMetrics {
    /// The statistics of `errors_km` (`None` without any error).
    pub fn of(errors_km: &[f64], radii_km: &[f64]) -> Option<DistanceMetrics> {
        if errors_km.is_empty() {
            return None;
        }
        let mut e = errors_km.to_vec();
        e.sort_by(f64::total_cmp);
        let n = e.len();
        let median = if n % 2 == 1 {
            e[n / 2]
        } else {
            (e[n / 2 - 1] + e[n / 2]) / 2.0
        };
        Some(DistanceMetrics {
            photos: n,
            median_km: median,
            mean_km: e.iter().sum::<f64>() / n as f64,
            within: radii_km
                .iter()
                .map(|&km| Within {
                    km,
                    share: e.partition_point(|&d| d <= km) as f64 / n as f64,
                })
                .collect(),
            geoscore: e.iter().map(|&d| geoscore(d)).sum::<f64>() / n as f64,
        })
    }

    /// The share within `km` if it is one of the radii.
    pub fn share_within(&self, km: f64) -> Option<f64> {
        self.within.iter().find(|w| w.km == km).map(|w| w.share)
    }
}

/// One class's precision and recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Test photos of the class.
    pub support: u64,
    /// Photos predicted as the class.
    pub predicted: u64,
    /// Right / predicted (`None` when nothing was predicted as the class).
    pub precision: Option<f64>,
    /// Right / support (`None` without support).
    pub recall: Option<f64>,
}

/// Country classification results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountryMetrics {
    pub correct: u64,
    pub photos: u64,
    pub accuracy: f64,
    /// Wilson 95% interval of the accuracy.
    pub ci95: [f64; 2],
    pub per_class: Vec<ClassMetrics>,
    /// Row and column labels of `confusion`: the classes, then `other` (a predicted
    /// location outside every class's country).
    pub labels: Vec<String>,
    /// `confusion[true][predicted]` photo counts.
    pub confusion: Vec<Vec<u64>>,
}

/// A confusion matrix being filled: classes `0..k`, and `k` for "other".
#[derive(Debug, Clone)]
pub struct Confusion {
    classes: Vec<String>,
    m: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: &[String]) -> Self {
        let k = classes.len() + 1;
        Confusion {
            classes: classes.to_vec(),
            m: vec![vec![0; k]; k],
        }
    }

    /// Adds a photo of class `truth` predicted as `pred` (`None`: other).
    pub fn add(&mut self, truth: usize, pred: Option<usize>) {
        let k = self.classes.len();
        let p = pred.filter(|&p| p < k).unwrap_or(k);
        if let Some(row) = self.m.get_mut(truth.min(k)) {
            row[p] += 1;
        }
    }

    /// The metrics (`None` without a photo).
    pub fn finish(&self) -> Option<CountryMetrics> {
        let k = self.classes.len();
        let photos: u64 = self.m.iter().flatten().sum();
        if photos == 0 {
            return None;
        }
        let correct: u64 = (0..k).map(|c| self.m[c][c]).sum();
        let (lo, hi) = wilson(correct, photos, Z95);
        let per_class = (0..k)
            .map(|c| {
                let support: u64 = self.m[c].iter().sum();
                let predicted: u64 = self.m.iter().map(|r| r[c]).sum();
                let right = self.m[c][c];
                ClassMetrics {
                    class: self.classes[c].clone(),
                    support,
                    predicted,
                    precision: (predicted > 0).then(|| right as f64 / predicted as f64),
                    recall: (support > 0).then(|| right as f64 / support as f64),
                }
            })
            .collect();
        let mut labels = self.classes.clone();
        labels.push("other".into());
        Some(CountryMetrics {
            correct,
            photos,
            accuracy: correct as f64 / photos as f64,
            ci95: [lo, hi],
            per_class,
            labels,
            confusion: self.m.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geoloc_core::geo::{DistanceMetric, LatLon};

    /// Newcombe (1998), "Two-sided confidence intervals for the single proportion",
    /// Statistics in Medicine 17, table I, method 3 (Wilson score without continuity
    /// correction), to the four places the table gives.
    #[test]
    fn wilson_matches_newcombes_table() {
        for (k, n, lo, hi) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0000, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let (l, h) = wilson(k, n, Z95);
            assert!(
                (l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5,
                "{k}/{n}: ({l:.4}, {h:.4}), table ({lo}, {hi})"
            );
        }
        assert_eq!(wilson(0, 0, Z95), (0.0, 0.0));
        let (l, h) = wilson(20, 20, Z95);
        assert!(h == 1.0 && (l - 0.8389).abs() < 5e-5, "{l}");
    }

    #[test]
    fn distances_by_hand() {
        // Errors 0, 5, 50, 500, 5000 km: median 50, mean 1111.
        let m = DistanceMetrics::of(&[500.0, 0.0, 5000.0, 50.0, 5.0], &DEFAULT_RADII_KM).unwrap();
        assert_eq!(m.photos, 5);
        assert_eq!(m.median_km, 50.0);
        assert_eq!(m.mean_km, 1111.0);
        let shares: Vec<f64> = m.within.iter().map(|w| w.share).collect();
        // radii 1, 10, 25, 100, 200, 750, 1000, 2500, 10000
        assert_eq!(shares, [0.2, 0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 0.8, 1.0]);
        let score =
            (5000.0 + geoscore(5.0) + geoscore(50.0) + geoscore(500.0) + geoscore(5000.0)) / 5.0;
        assert!((m.geoscore - score).abs() < 1e-9);
        assert!((geoscore(1492.7) - 5000.0 / std::f64::consts::E).abs() < 1e-9);
        // An even count takes the mean of the middle two; a radius is inclusive.
        let m = DistanceMetrics::of(&[10.0, 20.0, 30.0, 40.0], &[20.0]).unwrap();
        assert_eq!(m.median_km, 25.0);
        assert_eq!(m.share_within(20.0), Some(0.5));
        assert!(DistanceMetrics::of(&[], &[1.0]).is_none());
    }

    /// The real GeoEstimation rows (`real-sample-lines.txt`, block 8): their
    /// great_circle_distance column, 422.60 and 0.35 km, reproduced through the metrics.
    #[test]
    fn geoestimation_rows_reproduce() {
        let rows = [
            (31.893581, 30.600370, -85.141124, -89.321708, 422.60),
            (42.346571, 42.345046, -71.097228, -71.093559, 0.35),
        ];
        let errors: Vec<f64> = rows
            .iter()
            .map(|&(gt_lat, p_lat, gt_lon, p_lon, want)| {
                let d = DistanceMetric::Haversine.km(
                    LatLon::new(gt_lat, gt_lon).unwrap(),
                    LatLon::new(p_lat, p_lon).unwrap(),
                );
                assert!((d - want).abs() < 0.01, "{d} vs {want}");
                d
            })
            .collect();
        let m = DistanceMetrics::of(&errors, &DEFAULT_RADII_KM).unwrap();
        assert_eq!(m.share_within(1.0), Some(0.5));
        assert_eq!(m.share_within(200.0), Some(0.5));
        assert_eq!(m.share_within(750.0), Some(1.0));
        assert!((m.median_km - (422.60 + 0.35) / 2.0).abs() < 0.01);
    }

    #[test]
    fn confusion_by_hand() {
        let classes: Vec<String> = ["DE", "FR", "IT"].map(String::from).to_vec();
        let mut c = Confusion::new(&classes);
        // DE: 2 right, 1 as FR; FR: 1 right, 1 other; IT: none right, 1 as DE.
        for (t, p) in [
            (0, Some(0)),
            (0, Some(0)),
            (0, Some(1)),
            (1, Some(1)),
            (1, None),
            (2, Some(0)),
        ] {
            c.add(t, p);
        }
        let m = c.finish().unwrap();
        assert_eq!((m.correct, m.photos), (3, 6));
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.labels, ["DE", "FR", "IT", "other"]);
        assert_eq!(m.confusion[0], [2, 1, 0, 0]);
        assert_eq!(m.confusion[1], [0, 1, 0, 1]);
        assert_eq!(m.confusion[2], [1, 0, 0, 0]);
        let de = &m.per_class[0];
        assert_eq!((de.support, de.predicted), (3, 3));
        assert_eq!(de.precision, Some(2.0 / 3.0));
        assert_eq!(de.recall, Some(2.0 / 3.0));
        let it = &m.per_class[2];
        assert_eq!((it.precision, it.recall), (None, Some(0.0)));
        let (lo, hi) = wilson(3, 6, Z95);
        assert_eq!(m.ci95, [lo, hi]);
        assert!(Confusion::new(&classes).finish().is_none());
    }
}
