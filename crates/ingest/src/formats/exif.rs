//! A folder of photos with EXIF GPS tags: the way most users hold their own data.
//!
//! Read through `kamadak-exif`, which finds EXIF in JPEG, TIFF, HEIF/HEIC/AVIF, PNG and WebP
//! containers without decoding pixels (so HEIF files give their location even where their
//! pixels cannot be decoded). Any EXIF error means "no GPS", never a failure.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// File extensions treated as photos (lower case).
pub const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "png", "webp", "heic", "heif", "avif", "tif", "tiff",
];

/// Every photo file below `root`, sorted by path, as paths relative to `root`.
pub fn list_photos(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(std::io::Error::other)?;
        if !e.file_type().is_file() {
            continue;
        }
        let ext = e
            .path()
            .extension()
            .and_then(|x| x.to_str())
            .map(str::to_ascii_lowercase);
        if ext.is_some_and(|x| PHOTO_EXTENSIONS.contains(&x.as_str())) {
            if let Ok(rel) = e.path().strip_prefix(root) {
                out.push(rel.to_owned());
            }
        }
    }
    Ok(out)
}

/// The GPS position in a photo's EXIF as `(lat, lon)`.
///
/// `Ok(None)` when the file has EXIF but no GPS position; `Err(reason)` when there is no
/// readable EXIF at all (the caller treats both as "no location").
pub fn read_gps(path: &Path) -> Result<Option<(f64, f64)>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut r = BufReader::new(file);
    let exif = exif::Reader::new()
        .read_from_container(&mut r)
        .map_err(|e| format!("no readable EXIF: {e}"))?;
    let coord = |tag, ref_tag, neg: u8| -> Option<f64> {
        let f = exif.get_field(tag, exif::In::PRIMARY)?;
        // The standard type is RATIONAL; some phones write SRATIONAL (the Nokia 8.3 does),
        // a few write floats. Degrees, minutes, seconds, or a single decimal degree value.
        let parts: Vec<f64> = match &f.value {
            exif::Value::Rational(v) => v.iter().map(|r| r.to_f64()).collect(),
            exif::Value::SRational(v) => v.iter().map(|r| r.to_f64()).collect(),
            exif::Value::Float(v) => v.iter().map(|&x| f64::from(x)).collect(),
            exif::Value::Double(v) => v.clone(),
            _ => return None,
        };
        let v = match parts.as_slice() {
            [d, m, s, ..] => d + m / 60.0 + s / 3600.0,
            [d] => *d,
            _ => return None,
        };
        if !v.is_finite() {
            return None;
        }
        let sign = match exif.get_field(ref_tag, exif::In::PRIMARY).map(|f| &f.value) {
            Some(exif::Value::Ascii(a))
                if a.first()
                    .and_then(|s| s.first())
                    .map(u8::to_ascii_uppercase)
                    == Some(neg) =>
            {
                -1.0
            }
            _ => 1.0,
        };
        Some(sign * v)
    };
    let lat = coord(exif::Tag::GPSLatitude, exif::Tag::GPSLatitudeRef, b'S');
    let lon = coord(exif::Tag::GPSLongitude, exif::Tag::GPSLongitudeRef, b'W');
    Ok(match (lat, lon) {
        (Some(a), Some(o)) => Some((a, o)),
        _ => None,
    })
}
