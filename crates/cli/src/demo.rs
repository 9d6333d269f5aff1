//! The demo's data: MediaEval-format metadata from `geoloc_ingest::synth` and one synthetic
//! photo per row from `geoloc_imaging::synth`, written where `pipelines/demo.toml` reads them
//! (`<out>/images/<h[0:3]>/<h[3:6]>/<h>.jpg`, the public mirror's layout).
//!
//! A few photos are broken on purpose, so the demo shows preprocess's rejects: one missing,
//! one empty, one truncated, one greyscale; and one is a PNG under a `.jpg` name (decoded:
//! formats are sniffed, never taken from the name).

use anyhow::{Context as _, Result};
use geoloc_imaging::synth;
use geoloc_ingest::synth::DemoPhoto;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What [`write_photos`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PhotosWritten {
    pub written: usize,
    pub unchanged: usize,
}

/// The relative path of a demo photo.
pub fn photo_path(hash: &str) -> PathBuf {
    let (a, b) = (
        &hash[..3.min(hash.len())],
        &hash[3.min(hash.len())..6.min(hash.len())],
    );
    Path::new(a).join(b).join(format!("{hash}.jpg"))
}

fn bytes_of(i: usize, p: &DemoPhoto, seed: u64) -> Option<Vec<u8>> {
    let s = xxhash_rust::xxh64::xxh64(p.hash.as_bytes(), seed);
    // One in five is a portrait.
    let (w, h) = if s.is_multiple_of(5) {
        (192, 256)
    } else {
        (256, 192)
    };
    let img = synth::photo(s, p.lat, p.lon, w, h);
    Some(match i {
        3 => return None, // missing
        5 => Vec::new(),  // empty
        7 => {
            let j = synth::jpeg(&img);
            j[..j.len() * 6 / 10].to_vec() // truncated
        }
        9 => {
            let grey = image::DynamicImage::ImageRgb8(img).into_luma8();
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&grey)
                .expect("in-memory encode");
            out
        }
        11 => {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .expect("in-memory encode");
            out.into_inner()
        }
        _ => synth::jpeg(&img),
    })
}

/// Writes every row's photo under `dir`. Files whose bytes would not change are left
/// untouched (their modification times are part of preprocess's fingerprint).
pub fn write_photos(dir: &Path, photos: &[DemoPhoto], seed: u64) -> Result<PhotosWritten> {
    let results: Vec<Result<bool>> = photos
        .par_iter()
        .enumerate()
        .map(|(i, p)| {
            let path = dir.join(photo_path(&p.hash));
            let Some(bytes) = bytes_of(i, p, seed) else {
                match std::fs::remove_file(&path) {
                    Ok(()) => return Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()))
                    }
                }
            };
            if std::fs::read(&path).is_ok_and(|old| old == bytes) {
                return Ok(false);
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(true)
        })
        .collect();
    let mut w = PhotosWritten::default();
    for r in results {
        if r? {
            w.written += 1;
        } else {
            w.unchanged += 1;
        }
    }
    Ok(w)
}
