//! The world map under the prediction plots, drawn offline from the country boundaries
//! compiled into `geoloc_core::country` (OpenStreetMap's, through `country-boundaries`):
//! each pixel of an equirectangular raster is looked up, land is filled, and a pixel whose
//! country differs from its right or lower neighbour is drawn as a border. No map tiles and
//! no shapefile: the same picture on every machine.

use geoloc_core::country::country_code;
use geoloc_core::geo::LatLon;
use image::{Rgb, RgbImage};
use std::sync::OnceLock;

pub const SEA: Rgb<u8> = Rgb([214, 231, 245]);
pub const LAND: Rgb<u8> = Rgb([238, 236, 228]);
pub const BORDER: Rgb<u8> = Rgb([140, 140, 140]);

/// The raster's width and height (0.3 degrees a pixel).
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 600;

/// The pixel of a location.
pub fn pixel(lat: f64, lon: f64) -> (f64, f64) {
    (
        (lon + 180.0) / 360.0 * WIDTH as f64,
        (90.0 - lat) / 180.0 * HEIGHT as f64,
    )
}

/// The map (computed once per process: 720,000 lookups).
pub fn base() -> &'static RgbImage {
    static MAP: OnceLock<RgbImage> = OnceLock::new();
    MAP.get_or_init(|| {
        let (w, h) = (WIDTH as usize, HEIGHT as usize);
        // Country code per pixel centre, as a small integer (0: none).
        let mut names: Vec<String> = vec![String::new()];
        let mut ids = vec![0u16; w * h];
        for y in 0..h {
            let lat = 90.0 - (y as f64 + 0.5) * 180.0 / h as f64;
            for x in 0..w {
                let lon = -180.0 + (x as f64 + 0.5) * 360.0 / w as f64;
                if let Some(c) = country_code(LatLon { lat, lon }) {
                    let id = match names.iter().position(|n| *n == c) {
                        Some(i) => i,
                        None => {
                            names.push(c);
                            names.len() - 1
                        }
                    };
                    ids[y * w + x] = id as u16;
                }
            }
        }
        RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
            let (x, y) = (x as usize, y as usize);
            let id = ids[y * w + x];
            let right = if x + 1 < w { ids[y * w + x + 1] } else { id };
            let down = if y + 1 < h { ids[(y + 1) * w + x] } else { id };
            if id != right || id != down {
                BORDER
            } else if id == 0 {
                SEA
            } else {
                LAND
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn land_sea_and_borders_where_they_are() {
        let m = base();
        let at = |lat, lon| {
            let (x, y) = pixel(lat, lon);
            *m.get_pixel(x as u32, y as u32)
        };
        assert_eq!(at(48.0, 2.5), LAND); // France, inland
        assert_eq!(at(30.0, -40.0), SEA); // mid-Atlantic
        assert_eq!(at(-60.0, -140.0), SEA); // Southern Ocean
                                            // Borders exist, and are a small share of the pixels.
        let borders = m.pixels().filter(|p| **p == BORDER).count();
        let land = m.pixels().filter(|p| **p == LAND).count();
        assert!(borders > 5_000 && borders < land / 4, "{borders} / {land}");
    }
}
