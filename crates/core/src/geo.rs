//! Geodesy: points on the Earth and the distances between them.
//!
//! Three distances, selectable by [`DistanceMetric`]:
//! - [`haversine_km`]: great circle on a sphere of radius [`EARTH_RADIUS_KM`] (6371 km), the
//!   default everywhere;
//! - [`equirectangular_km`]: the approximation the seed report (Sy & Day) used,
//!   `R * |((lon1 - lon2) * cos((lat1 + lat2) / 2), lat1 - lat2)|` in radians, with the longitude
//!   difference wrapped to [-180, 180] degrees so that pairs across the antimeridian stay close
//!   (the report's five countries never cross it, so its figures are unaffected);
//! - [`geodesic_km`]: the WGS84 ellipsoid geodesic (Karney's algorithm, through the
//!   `geographiclib-rs` crate), as MediaEval scored.

use std::fmt;
use std::str::FromStr;

/// Mean Earth radius used by the haversine and equirectangular distances.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// A point in degrees: latitude in [-90, 90], longitude in [-180, 180].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// Why a coordinate pair is not a usable location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordError {
    #[error("latitude {0} is not a finite number in [-90, 90]")]
    Latitude(f64),
    #[error("longitude {0} is not a finite number in [-180, 180]")]
    Longitude(f64),
    /// Exactly (0, 0): "Null Island", the value broken geotaggers write for "unknown".
    #[error("coordinates are exactly (0, 0), a placeholder for an unknown location")]
    NullIsland,
}

impl LatLon {
    /// A checked point: finite, in range, and not exactly (0, 0).
    pub fn new(lat: f64, lon: f64) -> Result<Self, CoordError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(CoordError::Latitude(lat));
        }
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(CoordError::Longitude(lon));
        }
        if lat == 0.0 && lon == 0.0 {
            return Err(CoordError::NullIsland);
        }
        Ok(LatLon { lat, lon })
    }
}

/// Great-circle distance in km on a sphere of radius [`EARTH_RADIUS_KM`].
pub fn haversine_km(a: LatLon, b: LatLon) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// The seed report's equirectangular approximation in km (see the module docs).
pub fn equirectangular_km(a: LatLon, b: LatLon) -> f64 {
    let mut dlon = a.lon - b.lon;
    if dlon > 180.0 {
        dlon -= 360.0;
    } else if dlon < -180.0 {
        dlon += 360.0;
    }
    let x = dlon.to_radians() * ((a.lat + b.lat) / 2.0).to_radians().cos();
    let y = (a.lat - b.lat).to_radians();
    EARTH_RADIUS_KM * (x * x + y * y).sqrt()
}

/// WGS84 geodesic distance in km (Karney 2013, through `geographiclib-rs`).
pub fn geodesic_km(a: LatLon, b: LatLon) -> f64 {
    use geographiclib_rs::{Geodesic, InverseGeodesic};
    let g = Geodesic::wgs84();
    let s12: f64 = g.inverse(a.lat, a.lon, b.lat, b.lon);
    s12 / 1000.0
}

/// Which distance to use; parsed from `haversine`, `equirectangular` or `geodesic`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum DistanceMetric {
    #[default]
    Haversine,
    Equirectangular,
    Geodesic,
}

impl DistanceMetric {
    /// The distance between two points in km under this metric.
    pub fn km(self, a: LatLon, b: LatLon) -> f64 {
        match self {
            DistanceMetric::Haversine => haversine_km(a, b),
            DistanceMetric::Equirectangular => equirectangular_km(a, b),
            DistanceMetric::Geodesic => geodesic_km(a, b),
        }
    }
}

impl fmt::Display for DistanceMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DistanceMetric::Haversine => "haversine",
            DistanceMetric::Equirectangular => "equirectangular",
            DistanceMetric::Geodesic => "geodesic",
        })
    }
}

impl FromStr for DistanceMetric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "haversine" => Ok(DistanceMetric::Haversine),
            "equirectangular" => Ok(DistanceMetric::Equirectangular),
            "geodesic" => Ok(DistanceMetric::Geodesic),
            _ => Err(format!(
                "unknown distance {s:?}: expected haversine, equirectangular or geodesic"
            )),
        }
    }
}

/// A running spherical mean: the weighted mean of unit vectors, back to degrees.
#[derive(Debug, Clone, Copy, Default)]
pub struct SphericalMean {
    x: f64,
    y: f64,
    z: f64,
    w: f64,
}

impl SphericalMean {
    /// Adds a point `(lat, lon)` in degrees with weight `wt`.
    pub fn add(&mut self, (lat, lon): (f64, f64), wt: f64) {
        let (la, lo) = (lat.to_radians(), lon.to_radians());
        self.x += wt * la.cos() * lo.cos();
        self.y += wt * la.cos() * lo.sin();
        self.z += wt * la.sin();
        self.w += wt;
    }

    /// `None` without weight, or when the vectors cancel out.
    pub fn finish(&self) -> Option<[f64; 2]> {
        let h = (self.x * self.x + self.y * self.y).sqrt();
        if self.w <= 0.0 || (h < 1e-12 && self.z.abs() < 1e-12) {
            return None;
        }
        Some([
            self.z.atan2(h).to_degrees(),
            self.y.atan2(self.x).to_degrees(),
        ])
    }
}

/// The spherical mean of weighted points; `None` if empty.
pub fn spherical_mean(points: impl Iterator<Item = ((f64, f64), f64)>) -> Option<[f64; 2]> {
    let mut m = SphericalMean::default();
    points.for_each(|(p, w)| m.add(p, w));
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lon: f64) -> LatLon {
        LatLon { lat, lon }
    }

    #[test]
    fn haversine_reproduces_geoestimation_rows() {
        // ../shared/data/formats/real-sample-lines.txt block 8 (TIBHannover/GeoEstimation
        // results/im2gps/base_M-m.csv): great_circle_distance 422.60 and 0.35 km.
        let d = haversine_km(p(31.893581, -85.141124), p(30.600370, -89.321708));
        assert!((d - 422.60).abs() < 0.01, "{d}");
        let d = haversine_km(p(42.346571, -71.097228), p(42.345046, -71.093559));
        assert!((d - 0.35).abs() < 0.01, "{d}");
    }

    #[test]
    fn known_distances() {
        // A quarter meridian on the sphere is pi/2 * R.
        let q = std::f64::consts::FRAC_PI_2 * EARTH_RADIUS_KM;
        assert!((haversine_km(p(0.0, 10.0), p(90.0, 10.0)) - q).abs() < 1e-9);
        // Antipodes: half the circumference.
        let half = std::f64::consts::PI * EARTH_RADIUS_KM;
        assert!((haversine_km(p(10.0, 20.0), p(-10.0, -160.0)) - half).abs() < 1e-3);
        // Across the antimeridian: 1 degree of longitude on the equator, not 359.
        let one = EARTH_RADIUS_KM * 1f64.to_radians();
        assert!((haversine_km(p(0.0, 179.5), p(0.0, -179.5)) - one).abs() < 1e-9);
        assert!((equirectangular_km(p(0.0, 179.5), p(0.0, -179.5)) - one).abs() < 1e-9);
        // Near a pole every longitude is close.
        assert!(haversine_km(p(89.999, 0.0), p(89.999, 180.0)) < 0.25);
        // WGS84: one degree of latitude at the equator is 110.574 km, at the pole 111.694 km.
        assert!((geodesic_km(p(0.0, 0.0), p(1.0, 0.0)) - 110.574).abs() < 0.001);
        assert!((geodesic_km(p(89.0, 0.0), p(90.0, 0.0)) - 111.694).abs() < 0.001);
    }

    #[test]
    fn equirectangular_is_close_at_short_range() {
        let (a, b) = (p(48.8566, 2.3522), p(48.1351, 11.5820));
        let (h, e) = (haversine_km(a, b), equirectangular_km(a, b));
        assert!((h - e).abs() / h < 0.002, "{h} vs {e}");
    }

    #[test]
    fn checks_ranges() {
        assert_eq!(LatLon::new(0.0, 0.0), Err(CoordError::NullIsland));
        assert!(matches!(
            LatLon::new(90.1, 0.0),
            Err(CoordError::Latitude(_))
        ));
        assert!(matches!(
            LatLon::new(1.0, -180.5),
            Err(CoordError::Longitude(_))
        ));
        assert!(matches!(
            LatLon::new(f64::NAN, 1.0),
            Err(CoordError::Latitude(_))
        ));
        assert!(LatLon::new(-90.0, 180.0).is_ok());
    }
}
