//! From an upright RGB image to the fixed-size tensors a model reads.
//!
//! - [`Geometry::ResizeCrop`]: shorter side to `resize` (the longer one rounded like
//!   Pillow's `round(h * S / w)`), then a `crop` x `crop` window; view 0 is the centre window
//!   with the crop box Pillow and torchvision use (`left = (w - crop) / 2`, floored).
//! - [`Geometry::Squash`]: the whole image to `width` x `height`, aspect ratio not kept (the
//!   paper's "compressed" 52x48 and 150x90 inputs).
//!
//! Resizing is a separable convolution with a bilinear (triangle) kernel whose support
//! widens with the reduction factor, as Pillow's `resize(BILINEAR)` does: area-aware, so no
//! aliasing on large reductions. `fast_image_resize` does it with SIMD.
//!
//! Extra views ([`Views`]) are windows of the same resized image: the four corners (five-crop),
//! their mirror images (ten-crop), or seeded random windows with a random mirror.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The output geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Geometry {
    /// Shorter side to `resize`, then `crop` x `crop` windows (`crop <= resize`).
    ResizeCrop { resize: u32, crop: u32 },
    /// The whole image to `width` x `height`.
    Squash { width: u32, height: u32 },
}

/// Which views to make of each image, besides view 0 (the centre crop, or the squashed
/// image).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Views {
    /// View 0 only.
    #[default]
    Centre,
    /// Views 1-4: top-left, top-right, bottom-left, bottom-right windows.
    FiveCrop,
    /// Views 1-4 as five-crop, views 5-9: views 0-4 mirrored left to right.
    TenCrop,
    /// Views 1..=n: windows at seeded random positions, each mirrored with probability 1/2.
    /// The seed of an image's views is derived from `seed` and the image's id, so views do
    /// not depend on sharding or order.
    Random { n: u8, seed: u64 },
}

impl Views {
    /// Number of rows each image gives.
    pub fn count(&self) -> usize {
        match self {
            Views::Centre => 1,
            Views::FiveCrop => 5,
            Views::TenCrop => 10,
            Views::Random { n, .. } => 1 + *n as usize,
        }
    }
}

/// A geometry that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("geometry: {0}")]
pub struct GeometryError(pub String);

impl Geometry {
    /// Output width and height.
    pub fn output_size(&self) -> (u32, u32) {
        match *self {
            Geometry::ResizeCrop { crop, .. } => (crop, crop),
            Geometry::Squash { width, height } => (width, height),
        }
    }

    /// Bytes of one output tensor (H x W x 3).
    pub fn tensor_bytes(&self) -> usize {
        let (w, h) = self.output_size();
        w as usize * h as usize * 3
    }

    /// Checks the sizes and that the views make sense for this geometry.
    pub fn validate(&self, views: &Views) -> Result<(), GeometryError> {
        match *self {
            Geometry::ResizeCrop { resize, crop } => {
                if crop == 0 || resize == 0 || crop > resize || resize > 16384 {
                    return Err(GeometryError(format!(
                        "resize-crop needs 0 < crop <= resize <= 16384, got resize={resize} crop={crop}"
                    )));
                }
            }
            Geometry::Squash { width, height } => {
                if width == 0 || height == 0 || width > 16384 || height > 16384 {
                    return Err(GeometryError(format!(
                        "squash needs sizes in 1..=16384, got {width}x{height}"
                    )));
                }
                if *views != Views::Centre {
                    return Err(GeometryError(
                        "squash keeps the whole image: only the centre view is possible".into(),
                    ));
                }
            }
        }
        if let Views::Random { n: 0, .. } = views {
            return Err(GeometryError("random views need n >= 1".into()));
        }
        Ok(())
    }

    /// The size the whole image is resized to, given its upright size.
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        match *self {
            Geometry::ResizeCrop { resize, .. } => shorter_side_to(w, h, resize),
            Geometry::Squash { width, height } => (width, height),
        }
    }
}

/// Pillow/torchvision's size for "shorter side to `s`": the longer side is rounded
/// half-to-even like Python's `round`, and never below `s`.
pub fn shorter_side_to(w: u32, h: u32, s: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| -> u32 {
        let v = long as f64 * s as f64 / short as f64;
        (v.round_ties_even() as u32).max(s)
    };
    if w <= h {
        (s, scaled(h, w))
    } else {
        (scaled(w, h), s)
    }
}

/// One output tensor: the view number and its H x W x 3 bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub view: u8,
    pub pixels: Vec<u8>,
}

/// Makes every view of `img`. `image_seed` seeds random views (derive it from the image's
/// id). Returns the views in view order.
pub fn render(
    img: &RgbImage,
    geometry: &Geometry,
    views: &Views,
    image_seed: u64,
) -> Result<Vec<View>, GeometryError> {
    let (w, h) = img.dimensions();
    let (rw, rh) = geometry.resized_size(w, h);
    let mut resizer = Resizer::new();
    let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3)
        .map_err(|e| GeometryError(e.to_string()))?;
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let resize = |resizer: &mut Resizer, opts: &ResizeOptions, ow: u32, oh: u32| {
        let mut dst = Image::new(ow, oh, PixelType::U8x3);
        if (ow, oh) == (w, h) && matches!(opts.cropping, fast_image_resize::SrcCropping::None) {
            dst.buffer_mut().copy_from_slice(img.as_raw());
        } else {
            resizer
                .resize(&src, &mut dst, opts)
                .map_err(|e| GeometryError(e.to_string()))?;
        }
        Ok::<_, GeometryError>(dst.into_vec())
    };
    match *geometry {
        Geometry::Squash { width, height } => Ok(vec![View {
            view: 0,
            pixels: resize(&mut resizer, &opts, width, height)?,
        }]),
        Geometry::ResizeCrop { crop, .. } if *views == Views::Centre => {
            // Resize only the source window that becomes the centre crop: same scale and
            // sample positions as resizing all and cropping (the kernel is still clipped at
            // the image's edges, not the window's), a third less work on 3:2 photos.
            let (left, top) = ((rw - crop) / 2, (rh - crop) / 2);
            let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
            // Clamp to the image: floating-point error may push the far edge past it.
            let (bx, by) = (left as f64 * sx, top as f64 * sy);
            let bw = (crop as f64 * sx).min(w as f64 - bx);
            let bh = (crop as f64 * sy).min(h as f64 - by);
            let opts = opts.crop(bx, by, bw, bh);
            Ok(vec![View {
                view: 0,
                pixels: resize(&mut resizer, &opts, crop, crop)?,
            }])
        }
        Geometry::ResizeCrop { crop, .. } => {
            let full = resize(&mut resizer, &opts, rw, rh)?;
            let boxes = windows(rw, rh, crop, views, image_seed);
            Ok(boxes
                .into_iter()
                .enumerate()
                .map(|(i, (x, y, mirror))| View {
                    view: i as u8,
                    pixels: cut(&full, rw, x, y, crop, mirror),
                })
                .collect())
        }
    }
}

/// (left, top, mirrored) of each view's window in a `rw` x `rh` image.
fn windows(rw: u32, rh: u32, c: u32, views: &Views, seed: u64) -> Vec<(u32, u32, bool)> {
    let centre = ((rw - c) / 2, (rh - c) / 2, false);
    let corners = [
        (0, 0, false),
        (rw - c, 0, false),
        (0, rh - c, false),
        (rw - c, rh - c, false),
    ];
    match *views {
        Views::Centre => vec![centre],
        Views::FiveCrop => std::iter::once(centre).chain(corners).collect(),
        Views::TenCrop => {
            let five: Vec<_> = std::iter::once(centre).chain(corners).collect();
            let mirrored: Vec<_> = five.iter().map(|&(x, y, _)| (x, y, true)).collect();
            five.into_iter().chain(mirrored).collect()
        }
        Views::Random { n, .. } => {
            // splitmix64: a fixed, documented sequence for a given seed.
            let mut rng = geoloc_core::rng::SplitMix64::new(seed);
            let mut next = || rng.next_u64();
            let mut v = vec![centre];
            for _ in 0..n {
                let x = (next() % (rw - c + 1) as u64) as u32;
                let y = (next() % (rh - c + 1) as u64) as u32;
                v.push((x, y, next() & 1 == 1));
            }
            v
        }
    }
}

fn cut(full: &[u8], rw: u32, x: u32, y: u32, c: u32, mirror: bool) -> Vec<u8> {
    let (rw, x, y, c) = (rw as usize, x as usize, y as usize, c as usize);
    let mut out = Vec::with_capacity(c * c * 3);
    for row in y..y + c {
        let line = &full[(row * rw + x) * 3..(row * rw + x + c) * 3];
        if mirror {
            for px in line.chunks_exact(3).rev() {
                out.extend_from_slice(px);
            }
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_rounds_like_python() {
        assert_eq!(shorter_side_to(500, 333, 224), (336, 224)); // 336.336...
        assert_eq!(shorter_side_to(333, 500, 224), (224, 336));
        assert_eq!(shorter_side_to(500, 375, 224), (299, 224)); // 298.67
        assert_eq!(shorter_side_to(160, 107, 224), (335, 224)); // upscale: 334.95
        assert_eq!(shorter_side_to(1000, 224, 224), (1000, 224));
        assert_eq!(shorter_side_to(7, 2, 4), (14, 4));
        assert_eq!(shorter_side_to(10, 4, 5), (12, 5)); // 12.5 -> 12 (half to even)
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]))
    }

    #[test]
    fn crop_at_scale_one_is_an_exact_window() {
        // No resize (shorter side already 4): the centre crop is the middle of the image.
        let img = gradient(8, 4);
        let g = Geometry::ResizeCrop { resize: 4, crop: 4 };
        let v = render(&img, &g, &Views::Centre, 0).unwrap();
        assert_eq!(v.len(), 1);
        let px: Vec<u8> = v[0].pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(px, [2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5]);
    }

    #[test]
    fn ten_crop_windows_and_mirrors() {
        let img = gradient(6, 4);
        let g = Geometry::ResizeCrop { resize: 4, crop: 2 };
        let v = render(&img, &g, &Views::TenCrop, 0).unwrap();
        assert_eq!(v.len(), 10);
        let first_row = |i: usize| -> Vec<(u8, u8)> {
            v[i].pixels[..6].chunks(3).map(|p| (p[0], p[1])).collect()
        };
        assert_eq!(first_row(0), [(2, 1), (3, 1)]); // centre: left (6-2)/2=2, top 1
        assert_eq!(first_row(1), [(0, 0), (1, 0)]); // top-left
        assert_eq!(first_row(2), [(4, 0), (5, 0)]); // top-right
        assert_eq!(first_row(3), [(0, 2), (1, 2)]); // bottom-left
        assert_eq!(first_row(4), [(4, 2), (5, 2)]); // bottom-right
        assert_eq!(first_row(5), [(3, 1), (2, 1)]); // centre mirrored
        assert_eq!(first_row(9), [(5, 2), (4, 2)]);
        for (i, view) in v.iter().enumerate() {
            assert_eq!(view.view as usize, i);
        }
    }

    #[test]
    fn centre_fast_path_equals_resize_then_crop() {
        // The windowed resize must equal the full resize cropped.
        let img = RgbImage::from_fn(500, 333, |x, y| {
            image::Rgb([
                (x * 7 % 251) as u8,
                (y * 13 % 253) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let g = Geometry::ResizeCrop {
            resize: 224,
            crop: 224,
        };
        let fast = render(&img, &g, &Views::Centre, 0).unwrap();
        let full = render(&img, &g, &Views::FiveCrop, 0).unwrap();
        let diff: u64 = fast[0]
            .pixels
            .iter()
            .zip(&full[0].pixels)
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum();
        let mean = diff as f64 / fast[0].pixels.len() as f64;
        assert!(mean < 0.01, "mean difference {mean}");
    }

    #[test]
    fn random_views_are_seeded_and_inside() {
        let img = gradient(40, 30);
        let g = Geometry::ResizeCrop {
            resize: 30,
            crop: 20,
        };
        let views = Views::Random { n: 6, seed: 1 };
        let a = render(&img, &g, &views, 99).unwrap();
        let b = render(&img, &g, &views, 99).unwrap();
        let c = render(&img, &g, &views, 100).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 7);
        assert!(a.iter().all(|v| v.pixels.len() == 20 * 20 * 3));
    }

    #[test]
    fn squash_keeps_everything_and_refuses_crops() {
        let g = Geometry::Squash {
            width: 52,
            height: 48,
        };
        assert!(g.validate(&Views::TenCrop).is_err());
        assert!(g.validate(&Views::Centre).is_ok());
        let img = RgbImage::from_pixel(300, 100, image::Rgb([10, 200, 30]));
        let v = render(&img, &g, &Views::Centre, 0).unwrap();
        assert_eq!(v[0].pixels.len(), 52 * 48 * 3);
        assert!(v[0].pixels.chunks(3).all(|p| p == [10, 200, 30]));
        assert!(Geometry::ResizeCrop {
            resize: 200,
            crop: 224
        }
        .validate(&Views::Centre)
        .is_err());
    }
}
