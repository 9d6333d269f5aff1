//! EXIF orientation: read from the file's EXIF block (JPEG APP1, PNG eXIf, WebP, TIFF) with
//! kamadak-exif, applied to the decoded pixels so every photo comes out upright.
//!
//! A missing, unreadable or out-of-range orientation is "normal" (1): a broken EXIF block
//! never stops a photo from decoding.

use image::{imageops, RgbImage};
use std::io::Cursor;

/// The eight EXIF orientations (tag 0x0112), named by what undoes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Orientation {
    /// 1: stored upright.
    #[default]
    Normal,
    /// 2: mirrored horizontally.
    FlipH,
    /// 3: rotated 180 degrees.
    Rotate180,
    /// 4: mirrored vertically.
    FlipV,
    /// 5: mirrored across the main diagonal (transposed).
    Transpose,
    /// 6: stored rotated 90 degrees counter-clockwise: undo by rotating 90 clockwise.
    Rotate90,
    /// 7: mirrored across the anti-diagonal (transversed).
    Transverse,
    /// 8: stored rotated 90 degrees clockwise: undo by rotating 270 clockwise.
    Rotate270,
}

impl Orientation {
    /// From the EXIF tag value; anything outside 1..=8 is `Normal`.
    pub fn from_exif(v: u32) -> Orientation {
        match v {
            2 => Orientation::FlipH,
            3 => Orientation::Rotate180,
            4 => Orientation::FlipV,
            5 => Orientation::Transpose,
            6 => Orientation::Rotate90,
            7 => Orientation::Transverse,
            8 => Orientation::Rotate270,
            _ => Orientation::Normal,
        }
    }

    /// The EXIF tag value.
    pub fn exif_value(self) -> u8 {
        match self {
            Orientation::Normal => 1,
            Orientation::FlipH => 2,
            Orientation::Rotate180 => 3,
            Orientation::FlipV => 4,
            Orientation::Transpose => 5,
            Orientation::Rotate90 => 6,
            Orientation::Transverse => 7,
            Orientation::Rotate270 => 8,
        }
    }

    /// Whether applying it swaps width and height.
    pub fn swaps_axes(self) -> bool {
        matches!(
            self,
            Orientation::Transpose
                | Orientation::Rotate90
                | Orientation::Transverse
                | Orientation::Rotate270
        )
    }
}

/// The orientation recorded in the file's EXIF block, `Normal` when there is none or it
/// cannot be read.
pub fn orientation(bytes: &[u8]) -> Orientation {
    let Ok(exif) = exif::Reader::new().read_from_container(&mut Cursor::new(bytes)) else {
        return Orientation::Normal;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .map(Orientation::from_exif)
        .unwrap_or_default()
}

/// Applies `o` to the pixels, giving the upright image.
pub fn apply(img: RgbImage, o: Orientation) -> RgbImage {
    match o {
        Orientation::Normal => img,
        Orientation::FlipH => imageops::flip_horizontal(&img),
        Orientation::Rotate180 => imageops::rotate180(&img),
        Orientation::FlipV => imageops::flip_vertical(&img),
        Orientation::Transpose => imageops::flip_horizontal(&imageops::rotate90(&img)),
        Orientation::Rotate90 => imageops::rotate90(&img),
        Orientation::Transverse => imageops::flip_horizontal(&imageops::rotate270(&img)),
        Orientation::Rotate270 => imageops::rotate270(&img),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image whose pixel value encodes its stored position.
    fn grid() -> RgbImage {
        RgbImage::from_fn(3, 2, |x, y| image::Rgb([(y * 3 + x) as u8, 0, 0]))
    }

    fn values(img: &RgbImage) -> (u32, u32, Vec<u8>) {
        (
            img.width(),
            img.height(),
            img.pixels().map(|p| p[0]).collect(),
        )
    }

    /// Expected results from the EXIF specification's pictures of the eight orientations
    /// (stored rows 0 1 2 / 3 4 5), written out by hand.
    #[test]
    fn each_orientation_matches_the_exif_definition() {
        let cases = [
            (1, 3, 2, vec![0, 1, 2, 3, 4, 5]),
            (2, 3, 2, vec![2, 1, 0, 5, 4, 3]),
            (3, 3, 2, vec![5, 4, 3, 2, 1, 0]),
            (4, 3, 2, vec![3, 4, 5, 0, 1, 2]),
            (5, 2, 3, vec![0, 3, 1, 4, 2, 5]),
            (6, 2, 3, vec![3, 0, 4, 1, 5, 2]),
            (7, 2, 3, vec![5, 2, 4, 1, 3, 0]),
            (8, 2, 3, vec![2, 5, 1, 4, 0, 3]),
        ];
        for (v, w, h, px) in cases {
            let o = Orientation::from_exif(v);
            assert_eq!(o.exif_value() as u32, v);
            assert_eq!(values(&apply(grid(), o)), (w, h, px), "orientation {v}");
            assert_eq!(o.swaps_axes(), w == 2, "orientation {v}");
        }
    }

    #[test]
    fn out_of_range_is_normal() {
        assert_eq!(Orientation::from_exif(0), Orientation::Normal);
        assert_eq!(Orientation::from_exif(9), Orientation::Normal);
        assert_eq!(orientation(b"not an image"), Orientation::Normal);
    }
}
