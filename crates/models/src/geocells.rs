//! Adaptive S2 geocells (PlaNet's partition): starting from the six cube faces, a cell
//! holding more than `t_max` train photos is split into its four children (down to
//! `max_level`), and a cell holding fewer than `t_min` is dropped with its photos. Every
//! kept photo lies in exactly one kept cell; cells come out in S2 cell-id order. Train
//! builds the partition; evaluate reads it back from a geocell head's classes (its S2
//! tokens) to search a retrieval index within the head's top cells.

use s2::cellid::CellID;
use s2::latlng::LatLng;

/// The partition's parameters.
#[derive(
    Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct GeocellConfig {
    /// Drop cells with fewer train photos than this.
    pub t_min: usize,
    /// Split cells with more train photos than this.
    pub t_max: usize,
    /// Never split below this S2 level (level 30 is about a square centimetre).
    #[serde(default = "max_level")]
    pub max_level: u8,
    /// How a predicted distribution becomes a location: the top cell's mean location
    /// (`top_k = 1`, the default), or the probability-weighted spherical mean of the top
    /// `top_k` cells' locations.
    #[serde(default = "one")]
    pub top_k: usize,
    /// PIGEON's haversine label smoothing: train against `exp(-(d(cell, photo) - d(true
    /// cell, photo)) / tau)` over the cells, normalised (cell locations: their photos'
    /// mean), with `tau` this many km (PIGEON: 75), so a near miss costs less than a far
    /// one. Unset: one-hot targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothing_km: Option<f64>,
}

fn max_level() -> u8 {
    18
}
fn one() -> usize {
    1
}

/// One kept cell.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoCell {
    pub id: CellID,
    /// Train photos inside it.
    pub count: usize,
}

impl GeoCell {
    /// The cell's token (S2's short hex name).
    pub fn token(&self) -> String {
        self.id.to_token()
    }
    pub fn level(&self) -> u8 {
        self.id.level() as u8
    }
}

/// A partition of the train photos.
#[derive(Debug, Clone)]
pub struct Partition {
    pub cells: Vec<GeoCell>,
    /// Train photos in dropped cells.
    pub dropped: usize,
}

/// The leaf cell of a point.
pub fn leaf(lat: f64, lon: f64) -> CellID {
    CellID::from(LatLng::from_degrees(lat, lon))
}

impl Partition {
    /// Builds the partition of `points` (lat, lon in degrees).
    pub fn build(points: &[(f64, f64)], cfg: &GeocellConfig) -> Result<Partition, String> {
        if cfg.t_min == 0 || cfg.t_max < cfg.t_min || cfg.t_max == 0 {
            return Err(format!(
                "geocells need 0 < t_min <= t_max (t_min = {}, t_max = {})",
                cfg.t_min, cfg.t_max
            ));
        }
        if cfg.max_level > 30 {
            return Err(format!("geocells: max_level {} > 30", cfg.max_level));
        }
        let mut leaves: Vec<u64> = points.iter().map(|&(a, b)| leaf(a, b).0).collect();
        leaves.sort_unstable();
        let count = |c: &CellID| {
            let lo = leaves.partition_point(|&v| v < c.range_min().0);
            let hi = leaves.partition_point(|&v| v <= c.range_max().0);
            hi - lo
        };
        let mut cells = Vec::new();
        let mut dropped = 0;
        // Depth-first in id order: a cell's children are in id order, and faces are too.
        let mut stack: Vec<CellID> = (0..6u64).rev().map(CellID::from_face).collect();
        while let Some(c) = stack.pop() {
            let n = count(&c);
            if n == 0 {
                continue;
            }
            if n > cfg.t_max && (c.level() as u8) < cfg.max_level {
                stack.extend(c.children().iter().rev().copied());
            } else if n >= cfg.t_min {
                cells.push(GeoCell { id: c, count: n });
            } else {
                dropped += n;
            }
        }
        Ok(Partition { cells, dropped })
    }

    /// The partition a geocell head was trained over, from its classes (S2 tokens, in the
    /// cell-id order [`Partition::build`] gives them); counts are not recorded there (0).
    pub fn from_tokens(tokens: &[String]) -> Result<Partition, String> {
        let mut cells = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id = CellID::from_token(t);
            if !id.is_valid() {
                return Err(format!("class {i} ({t:?}) is not an S2 cell token"));
            }
            cells.push(GeoCell { id, count: 0 });
        }
        if cells
            .windows(2)
            .any(|w| w[1].id.range_min().0 <= w[0].id.range_max().0)
        {
            return Err("the cells overlap or are out of cell-id order: not a partition".into());
        }
        Ok(Partition { cells, dropped: 0 })
    }

    /// The index of the kept cell containing a point, if any.
    pub fn locate(&self, lat: f64, lon: f64) -> Option<usize> {
        let l = leaf(lat, lon).0;
        let i = self.cells.partition_point(|c| c.id.range_max().0 < l);
        (i < self.cells.len() && self.cells[i].id.range_min().0 <= l).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geoloc_core::rng::SplitMix64;

    fn cfg(t_min: usize, t_max: usize) -> GeocellConfig {
        GeocellConfig {
            t_min,
            t_max,
            max_level: 18,
            top_k: 1,
            smoothing_km: None,
        }
    }

    #[test]
    fn respects_thresholds_and_covers_every_kept_photo() {
        // Clusters of very different density (cities) plus scattered photos.
        let mut r = SplitMix64::new(5);
        let mut pts = Vec::new();
        for &(lat, lon, n, spread) in &[
            (48.85, 2.35, 3000, 0.3),
            (52.52, 13.40, 800, 0.5),
            (41.90, 12.49, 200, 1.0),
            (-33.87, 151.2, 40, 2.0),
        ] {
            for _ in 0..n {
                pts.push((lat + r.normal() * spread, lon + r.normal() * spread));
            }
        }
        for _ in 0..300 {
            pts.push((r.uniform() * 160.0 - 80.0, r.uniform() * 360.0 - 180.0));
        }
        let c = cfg(20, 400);
        let p = Partition::build(&pts, &c).unwrap();
        assert!(p.cells.len() > 10, "{}", p.cells.len());
        for cell in &p.cells {
            assert!(cell.count >= c.t_min, "{cell:?}");
            assert!(
                cell.count <= c.t_max || cell.level() == c.max_level,
                "{cell:?}"
            );
        }
        // Cells are disjoint and in id order.
        for w in p.cells.windows(2) {
            assert!(w[0].id.range_max().0 < w[1].id.range_min().0);
        }
        // Every photo is either in exactly one kept cell or counted as dropped.
        let mut per_cell = vec![0usize; p.cells.len()];
        let mut unplaced = 0;
        for &(a, b) in &pts {
            match p.locate(a, b) {
                Some(i) => {
                    assert!(p.cells[i].id.contains(&leaf(a, b)));
                    assert_eq!(
                        p.cells
                            .iter()
                            .filter(|c| c.id.contains(&leaf(a, b)))
                            .count(),
                        1
                    );
                    per_cell[i] += 1;
                }
                None => unplaced += 1,
            }
        }
        assert_eq!(unplaced, p.dropped);
        assert_eq!(
            per_cell,
            p.cells.iter().map(|c| c.count).collect::<Vec<_>>()
        );
        assert_eq!(per_cell.iter().sum::<usize>() + p.dropped, pts.len());
        // The dense city was split finer than the sparse one.
        let paris = p.cells[p.locate(48.85, 2.35).unwrap()].level();
        let rome = p.cells[p.locate(41.90, 12.49).unwrap()].level();
        assert!(paris > rome, "paris level {paris}, rome level {rome}");
    }

    #[test]
    fn a_partition_read_back_from_its_tokens_locates_as_built() {
        let paris = CellID::from(LatLng::from_degrees(48.8566, 2.3522)).parent(8);
        let nyc = CellID::from(LatLng::from_degrees(40.7128, -74.006)).parent(5);
        let (a, b) = if nyc < paris {
            (nyc, paris)
        } else {
            (paris, nyc)
        };
        let cells = Partition::from_tokens(&[a.to_token(), b.to_token()]).unwrap();
        let (i_paris, i_nyc) = if a == paris { (0, 1) } else { (1, 0) };
        assert_eq!(cells.locate(48.86, 2.35), Some(i_paris));
        assert_eq!(cells.locate(40.71, -74.0), Some(i_nyc));
        assert_eq!(cells.locate(-33.9, 151.2), None);
        assert!(Partition::from_tokens(&["zz".into()]).is_err());
        // Overlapping cells, and cells out of id order, are not a partition.
        let child = paris.children()[0].to_token();
        assert!(Partition::from_tokens(&[paris.to_token(), child]).is_err());
        assert!(Partition::from_tokens(&[b.to_token(), a.to_token()]).is_err());
        // A built partition's tokens give back the same cells.
        let mut r = SplitMix64::new(9);
        let pts: Vec<(f64, f64)> = (0..2000)
            .map(|_| (r.uniform() * 120.0 - 60.0, r.uniform() * 360.0 - 180.0))
            .collect();
        let built = Partition::build(&pts, &cfg(5, 100)).unwrap();
        let tokens: Vec<String> = built.cells.iter().map(|c| c.token()).collect();
        let back = Partition::from_tokens(&tokens).unwrap();
        for &(lat, lon) in &pts {
            assert_eq!(back.locate(lat, lon), built.locate(lat, lon));
        }
    }

    #[test]
    fn refuses_bad_thresholds_and_caps_the_level() {
        assert!(Partition::build(&[(1.0, 1.0)], &cfg(0, 5)).is_err());
        assert!(Partition::build(&[(1.0, 1.0)], &cfg(6, 5)).is_err());
        // 50 photos at one spot cannot be split below t_max: one cell at max_level.
        let pts = vec![(45.0, 7.0); 50];
        let mut c = cfg(1, 10);
        c.max_level = 12;
        let p = Partition::build(&pts, &c).unwrap();
        assert_eq!(p.cells.len(), 1);
        assert_eq!(p.cells[0].level(), 12);
        assert_eq!(p.cells[0].count, 50);
    }
}
