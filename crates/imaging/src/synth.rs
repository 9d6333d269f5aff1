//! Synthetic photos for the demo pipeline and the tests: seeded, the same bytes on every
//! machine for a given seed (splitmix64 draws, integer pixel arithmetic, the `image` crate's
//! JPEG encoder at quality 90).
//!
//! A scene is a sky over ground with buildings. What tells the countries apart is spread
//! over several cues, none decisive alone: ground colour and its stripe texture (angle and
//! frequency), building count, height and roof colour, and how grey the sky is (latitude).
//! Every cue is jittered per photo, so no single colour statistic separates the classes.

use image::{Rgb, RgbImage};

/// The project's seeded stream, with the draw this module needs.
struct Rng(geoloc_core::rng::SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform integer in [lo, hi].
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
}

/// (ground RGB, stripe angle in degrees, stripe period in pixels, buildings, roof RGB)
fn style(country: &str) -> ([i32; 3], i32, i32, i32, [i32; 3]) {
    match country {
        "Germany" => ([70, 120, 60], 0, 9, 4, [150, 60, 50]),
        "Canada" => ([200, 205, 210], 60, 14, 1, [90, 90, 100]),
        "Italy" => ([150, 130, 80], 30, 6, 5, [190, 100, 60]),
        "Spain" => ([175, 120, 70], 90, 11, 3, [200, 190, 170]),
        "France" => ([110, 130, 90], 135, 7, 4, [70, 80, 110]),
        "United Kingdom" => ([80, 110, 70], 20, 12, 6, [120, 60, 40]),
        "Japan" => ([120, 120, 110], 150, 5, 7, [60, 60, 70]),
        _ => ([128, 128, 128], 45, 10, 2, [128, 128, 128]),
    }
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Draws the photo of one demo row.
pub fn photo(seed: u64, country: &str, lat: f64, width: u32, height: u32) -> RgbImage {
    let mut r = Rng(geoloc_core::rng::SplitMix64::new(seed));
    let (ground, angle, period, buildings, roof) = style(country);
    let ground = ground.map(|c| c + r.range(-30, 30));
    let roof = roof.map(|c| c + r.range(-30, 30));
    let angle = (angle + r.range(-20, 20)) as f64 * std::f64::consts::PI / 180.0;
    let period = (period + r.range(-2, 2)).max(3) as f64;
    let (ca, sa) = (angle.cos(), angle.sin());
    let (w, h) = (width as i32, height as i32);
    let horizon = h * r.range(30, 60) / 100;
    // Higher latitudes: greyer skies.
    let grey = ((lat.abs() - 35.0).clamp(0.0, 30.0) * 3.0) as i32 + r.range(-20, 20);
    let sky_top = [60 + grey, 110 + grey / 2, 200 - grey / 2];
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as i32, y as i32);
        if y < horizon {
            let t = y * 100 / horizon.max(1);
            Rgb(sky_top.map(|c| clamp(c + t * 40 / 100)))
        } else {
            let phase = (x as f64 * ca + y as f64 * sa) / period;
            let stripe = ((phase * 2.0 * std::f64::consts::PI).sin() * 22.0) as i32;
            Rgb(ground.map(|c| clamp(c + stripe)))
        }
    });
    let n = (buildings + r.range(-1, 1)).max(0);
    for _ in 0..n {
        let bw = r.range(w / 12, w / 5);
        let bh = r.range(h / 8, h / 2);
        let x0 = r.range(0, (w - bw).max(0));
        let wall = [r.range(150, 230), r.range(140, 220), r.range(120, 200)];
        for y in (horizon - bh).max(0)..(horizon + h / 10).min(h) {
            for x in x0..(x0 + bw).min(w) {
                let is_roof = y < horizon - bh + bh / 5;
                let c = if is_roof { roof } else { wall };
                img.put_pixel(x as u32, y as u32, Rgb(c.map(clamp)));
            }
        }
    }
    for p in img.pixels_mut() {
        let nse = r.next();
        for (k, c) in p.0.iter_mut().enumerate() {
            let d = ((nse >> (k * 8)) & 15) as i32 - 8;
            *c = clamp(*c as i32 + d);
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
        let a = jpeg(&photo(1, "Germany", 52.0, 160, 120));
        let b = jpeg(&photo(1, "Germany", 52.0, 160, 120));
        let c = jpeg(&photo(2, "Germany", 52.0, 160, 120));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let d = crate::decode::decode(&a, &Default::default(), None).unwrap();
        assert_eq!(d.image.dimensions(), (160, 120));
    }
}
