//! Synthetic photos for the demo pipeline and the tests: seeded, the same bytes on every
//! x86_64 Linux machine for a given seed (splitmix64 draws, the platform libm for sin/exp,
//! the `image` crate's JPEG encoder at quality 90).
//!
//! A scene is a sky over ground, with mountains on the horizon and buildings. Every cue is a
//! smooth function of where the photo was taken, not of its country, so neighbouring places
//! look alike and a model has to read several cues together:
//! - the ground's texture: stripe orientation turns with longitude, the period grows with
//!   latitude; its colour goes from green to dry ochre southwards and to snow in the cold
//!   continental north-west;
//! - the skyline: mountain ridges whose height follows real ranges (Alps, Pyrenees,
//!   Apennines, Rockies, Massif Central) and whose shape is drawn per photo;
//! - the buildings: how many, how tall, the roof hue (turning with longitude), the window
//!   grid;
//! - the sky: greyer and the sun lower at higher latitude.
//!
//! Each cue is jittered per photo and random clutter (trees, cars) covers parts of the scene,
//! so no single statistic, least of all a mean colour, gives the place away.

use image::{Rgb, RgbImage};
use std::f64::consts::PI;

/// The project's seeded stream, with the draws this module needs.
struct Rng(geoloc_core::rng::SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform integer in [lo, hi].
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn clamp(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Mountain ranges: (lat, lon, radius in degrees, height as a share of the image).
const RANGES: [(f64, f64, f64, f64); 6] = [
    (46.5, 10.0, 3.0, 0.30),   // Alps
    (42.7, 0.5, 1.8, 0.22),    // Pyrenees
    (43.0, 12.8, 1.6, 0.14),   // Apennines
    (45.3, 3.0, 1.5, 0.12),    // Massif Central
    (51.0, -117.0, 4.0, 0.32), // Rockies
    (40.8, -4.0, 1.5, 0.12),   // Sistema Central
];

/// How mountainous a place is, 0 to about 0.3 (a share of the image height).
fn relief(lat: f64, lon: f64) -> f64 {
    RANGES
        .iter()
        .map(|&(a, o, r, h)| {
            let d2 = ((lat - a) / r).powi(2) + ((lon - o) * (lat.to_radians().cos()) / r).powi(2);
            h * (-d2).exp()
        })
        .fold(0.0, f64::max)
}

/// RGB of a hue in degrees at fixed saturation and value.
fn hue_rgb(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h = h.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

/// Draws the photo of a place.
pub fn photo(seed: u64, lat: f64, lon: f64, width: u32, height: u32) -> RgbImage {
    let mut r = Rng(geoloc_core::rng::SplitMix64::new(seed));
    let (w, h) = (width as i32, height as i32);
    let (wf, hf) = (width as f64, height as f64);
    let north = ((lat - 35.0) / 25.0).clamp(0.0, 1.2);
    let continental = ((-lon - 60.0) / 40.0).clamp(0.0, 1.0); // Canada's interior and west

    // Sky: greyer with latitude; the sun lower.
    let grey = 90.0 * north + 25.0 * r.sym();
    let sky_top = [60.0 + grey, 110.0 + grey * 0.5, 205.0 - grey * 0.4];
    let horizon = hf * (0.45 + 0.12 * r.sym());
    let sun_y = horizon * (0.15 + 0.6 * north + 0.1 * r.sym());
    let sun_x = wf * (0.5 + 0.4 * r.sym());
    let sun_r = hf * 0.06;

    // Ground: texture turns with longitude, period grows with latitude.
    let angle = (90.0 + 70.0 * (lon / 9.0).sin() + 20.0 * r.sym()) * PI / 180.0;
    let period = (4.0 + 8.0 * north + 2.0 * r.sym()).max(3.0);
    let (ca, sa) = (angle.cos(), angle.sin());
    let dry = ((44.0 - lat) / 8.0).clamp(0.0, 1.0) * (0.7 + 0.3 * (lon / 7.0).cos());
    let snow = (continental * north).clamp(0.0, 1.0) * (0.6 + 0.4 * r.sym().abs());
    let mut ground = [70.0 + 110.0 * dry, 125.0 + 10.0 * dry, 60.0 + 20.0 * dry];
    for (g, s) in ground.iter_mut().zip([215.0, 220.0, 225.0]) {
        *g = *g * (1.0 - snow) + s * snow + 25.0 * r.sym();
    }

    // Skyline: ridges as a sum of sines with per-photo phases.
    let peak = relief(lat, lon) * hf * (0.8 + 0.4 * r.sym().abs());
    let phases = [r.sym() * PI, r.sym() * PI, r.sym() * PI];
    let freqs = [2.0 + r.sym(), 5.0 + 2.0 * r.sym(), 11.0 + 3.0 * r.sym()];
    let ridge = |x: f64| -> f64 {
        let t = x / wf * 2.0 * PI;
        let v = (0..3)
            .map(|k| (t * freqs[k] + phases[k]).sin() / (k as f64 + 1.0))
            .sum::<f64>();
        horizon - peak * (0.55 + 0.35 * v)
    };
    let rock = [
        110.0 + 20.0 * r.sym(),
        115.0 + 20.0 * r.sym(),
        130.0 + 20.0 * r.sym(),
    ];

    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let (xf, yf) = (x as f64, y as f64);
        if yf < horizon {
            let d = ((xf - sun_x).powi(2) + (yf - sun_y).powi(2)).sqrt();
            if d < sun_r {
                return Rgb([255, 245, 200]);
            }
            if peak > 1.0 && yf >= ridge(xf) {
                // Snow on the upper part of high ridges.
                let cap = peak > hf * 0.12 && yf < ridge(xf) + peak * 0.18;
                return Rgb(if cap { [235.0, 238.0, 242.0] } else { rock }.map(clamp));
            }
            let t = yf / horizon.max(1.0);
            Rgb(sky_top.map(|c| clamp(c + t * 40.0)))
        } else {
            let phase = (xf * ca + yf * sa) / period;
            let stripe = (phase * 2.0 * PI).sin() * 22.0;
            Rgb(ground.map(|c| clamp(c + stripe)))
        }
    });

    // Buildings: density, height and roof hue follow the place.
    let density = 0.5 + 0.5 * (lat * 1.3 + lon * 0.7).sin();
    let n = (1.0 + 5.0 * density + 1.5 * r.sym()).round().max(0.0) as i32;
    let tall = 0.15 + 0.25 * (0.5 + 0.5 * (lon * 0.4 - lat * 0.9).cos());
    let roof_hue = lon * 4.0 + 25.0 * r.sym();
    let window = (3.0 + 4.0 * north).round() as i32;
    for _ in 0..n {
        let bw = r.range(w / 12, w / 5);
        let bh = (hf * tall * (0.6 + 0.6 * r.sym().abs())) as i32;
        let x0 = r.range(0, (w - bw).max(0));
        let wall = [
            180.0 + 40.0 * r.sym(),
            170.0 + 40.0 * r.sym(),
            150.0 + 40.0 * r.sym(),
        ];
        let roof = hue_rgb(roof_hue + 15.0 * r.sym(), 0.55, 0.75);
        let base = (horizon as i32 + h / 10).min(h);
        let top = (base - bh).max(0);
        for y in top..base {
            for x in x0..(x0 + bw).min(w) {
                let c = if y < top + (bh / 5).max(1) {
                    roof
                } else if (x - x0) % (window * 2) >= window && (y - top) % (window * 2) >= window {
                    [60.0, 70.0, 90.0]
                } else {
                    wall
                };
                img.put_pixel(x as u32, y as u32, Rgb(c.map(clamp)));
            }
        }
    }

    // Clutter: trees and cars anywhere, not tied to the place.
    for _ in 0..r.range(0, 4) {
        let cx = r.range(0, w - 1);
        let cy = r.range(horizon as i32, h - 1);
        let size = r.range(h / 20, h / 7).max(2);
        let tree = r.next().is_multiple_of(2);
        let colour = if tree {
            [40.0 + 30.0 * r.sym(), 100.0 + 30.0 * r.sym(), 40.0]
        } else {
            hue_rgb(r.sym() * 180.0 + 180.0, 0.7, 0.8)
        };
        for y in (cy - size).max(0)..(cy + size).min(h) {
            for x in (cx - size).max(0)..(cx + size).min(w) {
                let inside = if tree {
                    (x - cx).pow(2) + (y - cy).pow(2) <= size * size
                } else {
                    (y - cy).abs() <= size / 2
                };
                if inside {
                    img.put_pixel(x as u32, y as u32, Rgb(colour.map(clamp)));
                }
            }
        }
    }

    // Sensor noise.
    for p in img.pixels_mut() {
        let nse = r.next();
        for (k, c) in p.0.iter_mut().enumerate() {
            let d = ((nse >> (k * 8)) & 15) as i32 - 8;
            *c = (*c as i32 + d).clamp(0, 255) as u8;
        }
    }
    img
}

/// JPEG bytes (quality 90) of an image.
pub fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(img)
        .expect("encoding an in-memory RGB image to a Vec does not fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photos_are_seeded_and_decode() {
        let a = jpeg(&photo(1, 52.0, 13.4, 160, 120));
        let b = jpeg(&photo(1, 52.0, 13.4, 160, 120));
        let c = jpeg(&photo(2, 52.0, 13.4, 160, 120));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let d = crate::decode::decode(&a, &Default::default(), None).unwrap();
        assert_eq!(d.image.dimensions(), (160, 120));
    }
}
