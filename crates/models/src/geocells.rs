//! A geocell head's cells as a lookup: which of its S2 cells (the card's classes, S2 tokens)
//! holds a point. Evaluate uses it to search a retrieval index within a head's top cells.

use s2::cellid::CellID;
use s2::latlng::LatLng;

/// The cells of a partition, by their id ranges (cells do not overlap).
#[derive(Debug, Clone)]
pub struct CellLookup {
    /// (first leaf, last leaf, class) sorted by first leaf.
    ranges: Vec<(u64, u64, usize)>,
}

impl CellLookup {
    /// The cells named by `tokens` (in class order); an unreadable token is an error.
    pub fn from_tokens(tokens: &[String]) -> Result<CellLookup, String> {
        let mut ranges = Vec::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id = CellID::from_token(t);
            if !id.is_valid() {
                return Err(format!("class {i} ({t:?}) is not an S2 cell token"));
            }
            ranges.push((id.range_min().0, id.range_max().0, i));
        }
        ranges.sort_unstable();
        if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err("the cells overlap: not a partition".into());
        }
        Ok(CellLookup { ranges })
    }

    /// The class of the cell holding `(lat, lon)` (degrees), if any.
    pub fn locate(&self, lat: f64, lon: f64) -> Option<usize> {
        let l = CellID::from(LatLng::from_degrees(lat, lon)).0;
        let i = self.ranges.partition_point(|r| r.1 < l);
        self.ranges.get(i).filter(|r| r.0 <= l).map(|r| r.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fall_in_their_cells() {
        let paris = CellID::from(LatLng::from_degrees(48.8566, 2.3522)).parent(8);
        let nyc = CellID::from(LatLng::from_degrees(40.7128, -74.006)).parent(5);
        let cells = CellLookup::from_tokens(&[nyc.to_token(), paris.to_token()]).unwrap();
        assert_eq!(cells.locate(48.86, 2.35), Some(1));
        assert_eq!(cells.locate(40.71, -74.0), Some(0));
        assert_eq!(cells.locate(-33.9, 151.2), None);
        assert!(CellLookup::from_tokens(&["zz".into()]).is_err());
        let child = paris.children()[0].to_token();
        assert!(CellLookup::from_tokens(&[paris.to_token(), child]).is_err());
    }
}
