//! Country codes from coordinates, offline.
//!
//! Through the `country-boundaries` crate (a raster index over OpenStreetMap boundaries,
//! ODbL, (c) OpenStreetMap contributors; 360x180 cells, exact polygons inside border cells).
//! It needs no network and no data files at run time: the boundaries are compiled in.
//! Names of countries and regions (ISO 3166-1 short names, ISO 3166-2 subdivision names)
//! come from `rust_iso3166`.

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
        .find(|id| is_country(id))
        .map(str::to_owned)
}

/// Whether a boundaries id is a country's (an alpha-2 code), not a subdivision's (`US-TX`).
fn is_country(id: &str) -> bool {
    id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase())
}

/// Where a location is, in words a person reads: the country's code and name, and the
/// region (state, province, ...) where the boundaries know one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Place {
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// The country's ISO 3166 short name (`France`).
    pub country_name: String,
    /// ISO 3166-2 code of the region, where the boundaries hold one (`US-TX`, `CA-BC`).
    pub region: Option<String>,
    /// The region's name (`Texas`).
    pub region_name: Option<String>,
    /// The location itself is at sea (or on unclaimed land): this is the nearest place
    /// found around it ([`place_near`]).
    pub near: bool,
}

impl Place {
    /// `Texas, United States of America`; `France`; `near British Columbia, Canada` for a
    /// location off the coast.
    pub fn label(&self) -> String {
        let name = match &self.region_name {
            Some(r) => format!("{r}, {}", self.country_name),
            None => self.country_name.clone(),
        };
        if self.near {
            format!("near {name}")
        } else {
            name
        }
    }
}

/// The country's ISO 3166 short name for an alpha-2 code (`FR` -> `France`), or `None` for a
/// code ISO 3166-1 does not assign (OpenStreetMap's `XK` for Kosovo is named here too).
pub fn country_name(code: &str) -> Option<String> {
    match code {
        "XK" => Some("Kosovo".into()),
        c => rust_iso3166::from_alpha2(c).map(|c| c.name.to_owned()),
    }
}

/// The [`Place`] of a country code alone (a country head's class).
pub fn place_of_code(code: &str) -> Place {
    Place {
        country: code.to_owned(),
        country_name: country_name(code).unwrap_or_else(|| code.to_owned()),
        region: None,
        region_name: None,
        near: false,
    }
}

/// The [`Place`] of `p`, or `None` at sea or where no country claims the land.
pub fn place(p: LatLon) -> Option<Place> {
    let ll = CbLatLon::new(p.lat, p.lon).ok()?;
    let ids = boundaries().ids(ll);
    let country = ids.iter().find(|id| is_country(id))?;
    // The smallest subdivision of that country (ids come smallest first).
    let region = ids
        .iter()
        .find(|id| id.len() > 3 && id.starts_with(*country) && id.as_bytes()[2] == b'-')
        .map(|r| r.to_string());
    let region_name = region
        .as_deref()
        .and_then(rust_iso3166::iso3166_2::from_code)
        .map(|s| s.name.to_owned());
    Some(Place {
        country: country.to_string(),
        country_name: country_name(country).unwrap_or_else(|| country.to_string()),
        region,
        region_name,
        near: false,
    })
}

/// The [`Place`] of `p`, or where `p` is at sea, the place nearest it within about
/// `max_km`: points on rings of growing radius (2, 5, 10, 25, 50, 100 km ..., 16 bearings
/// each) are looked up, and the first ring that meets land gives the place its closest
/// bearing found (marked [`Place::near`]).
pub fn place_near(p: LatLon, max_km: f64) -> Option<Place> {
    if let Some(pl) = place(p) {
        return Some(pl);
    }
    for r in [2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0] {
        if r > max_km {
            break;
        }
        for k in 0..16 {
            let bearing = k as f64 * std::f64::consts::TAU / 16.0;
            let dlat = r / 111.2 * bearing.cos();
            let dlon = r / (111.2 * p.lat.to_radians().cos().max(0.05)) * bearing.sin();
            let lat = (p.lat + dlat).clamp(-90.0, 90.0);
            let lon = (p.lon + dlon + 540.0).rem_euclid(360.0) - 180.0;
            if let Some(mut pl) = place(LatLon { lat, lon }) {
                pl.near = true;
                return Some(pl);
            }
        }
    }
    None
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

    #[test]
    fn places_read_as_names() {
        let at = |lat, lon| place(LatLon { lat, lon });
        let texas = at(30.27, -97.74).unwrap();
        assert_eq!(texas.country, "US");
        assert_eq!(texas.region.as_deref(), Some("US-TX"));
        assert_eq!(texas.label(), "Texas, United States of America");
        let bc = at(49.2827, -123.1207).unwrap();
        assert_eq!(bc.label(), "British Columbia, Canada");
        assert_eq!(at(48.8566, 2.3522).unwrap().country_name, "France");
        assert_eq!(at(30.0, -40.0), None);
        assert_eq!(place_of_code("IT").label(), "Italy");
        // Off Vancouver Island, in the Pacific: the nearest land.
        let near = place_near(
            LatLon {
                lat: 48.9,
                lon: -126.2,
            },
            100.0,
        )
        .unwrap();
        assert!(near.near && near.label().starts_with("near "), "{near:?}");
        assert_eq!(near.country, "CA");
        assert_eq!(
            place_near(
                LatLon {
                    lat: 30.0,
                    lon: -40.0
                },
                100.0
            ),
            None
        );
        assert_eq!(place_of_code("ZZ").label(), "ZZ");
    }
}
