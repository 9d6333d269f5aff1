//! Country codes from coordinates, offline.
//!
//! Through the `country-boundaries` crate (a raster index over OpenStreetMap boundaries,
//! ODbL, (c) OpenStreetMap contributors; 360x180 cells, exact polygons inside border cells).
//! It needs no network and no data files at run time: the boundaries are compiled in.

use crate::geo::LatLon;
use country_boundaries::{CountryBoundaries, LatLon as CbLatLon, BOUNDARIES_ODBL_360X180};
use std::sync::OnceLock;

fn boundaries() -> &'static CountryBoundaries {
    static B: OnceLock<CountryBoundaries> = OnceLock::new();
    B.get_or_init(|| {
        CountryBoundaries::from_reader(BOUNDARIES_ODBL_360X180)
            .expect("the country boundaries compiled into the binary are valid")
    })
}

/// The ISO 3166-1 alpha-2 code of the country containing `p`, or `None` at sea or in
/// territory no country claims (Antarctica, international waters).
///
/// Where OpenStreetMap nests areas (a US state inside the US), the country-level code is
/// returned.
pub fn country_code(p: LatLon) -> Option<String> {
    let ll = CbLatLon::new(p.lat, p.lon).ok()?;
    boundaries()
        .ids(ll)
        .into_iter()
        .find(|id| id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase()))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_countries() {
        let cc = |lat, lon| country_code(LatLon { lat, lon });
        assert_eq!(cc(48.8566, 2.3522).as_deref(), Some("FR"));
        assert_eq!(cc(33.0, -97.0).as_deref(), Some("US"));
        assert_eq!(cc(43.467448, 11.885127).as_deref(), Some("IT"));
        assert_eq!(cc(49.2827, -123.1207).as_deref(), Some("CA"));
        assert_eq!(cc(30.0, -40.0), None); // mid-Atlantic
    }
}
