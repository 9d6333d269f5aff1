//! `geoloc-imaging`: photos to fixed-size RGB tensors. Shared by `preprocess` (whole
//! datasets) and `predict` (new photos), so both see exactly the same pixels.
//!
//! - [`decode`]: bytes to an upright 8-bit RGB image (JPEG with DCT-domain downscaling when
//!   the target is small, PNG, GIF, WebP, BMP, TIFF, HEIF/HEIC; EXIF orientation; CMYK,
//!   palette, 16-bit and greyscale converted or refused; decompression-bomb limits on the
//!   header);
//! - [`heif`]: HEIF/HEIC through libheif, loaded at run time (none: a named refusal);
//! - [`geometry`]: resize-crop and squash, and the extra views (five-crop, ten-crop, seeded
//!   random windows);
//! - [`orient`]: EXIF orientation.
//!
//! [`prepare`] is the whole chain for one file's bytes, [`prepare_photo`] for one photo of a
//! samples dataset (read, prepare, or the reject row saying why not). Nothing here panics on
//! input data: every failure is a [`DecodeError`] with a stable reason code.
//!
//! Architecture invariant: no I/O beyond reading the photo file named (and loading
//! libheif), no datasets, no stage. The
//! output is raw u8 RGB, row-major HWC, not normalised (the consumer owns normalisation).

pub mod decode;
pub mod geometry;
pub mod heif;
pub mod orient;
pub mod synth;

pub use decode::{DecodeError, DecodeInfo, DecodeOptions, Decoded, Format, Greyscale, Limits};
pub use geometry::{Geometry, GeometryError, View, Views};
pub use orient::Orientation;

/// One photo made ready: its views and what decoding found and did.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub views: Vec<View>,
    pub info: DecodeInfo,
}

/// Options of [`prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOptions {
    pub decode: DecodeOptions,
    pub geometry: Geometry,
    pub views: Views,
    /// Decode large JPEGs at a reduced DCT scale (never below the resize target).
    pub dct_scaling: bool,
}

/// Decodes `bytes`, orients, and renders every view. `image_seed` seeds random views.
pub fn prepare(
    bytes: &[u8],
    opts: &PrepareOptions,
    image_seed: u64,
) -> Result<Prepared, DecodeError> {
    let g = opts.geometry;
    let want = move |w: u32, h: u32| g.resized_size(w, h);
    let want: Option<&dyn Fn(u32, u32) -> (u32, u32)> =
        if opts.dct_scaling { Some(&want) } else { None };
    let d = decode::decode(bytes, &opts.decode, want)?;
    let views =
        geometry::render(&d.image, &opts.geometry, &opts.views, image_seed).map_err(|e| {
            DecodeError::Corrupt {
                format: d.info.format.name(),
                msg: e.to_string(),
            }
        })?;
    Ok(Prepared {
        views,
        info: d.info,
    })
}

impl PrepareOptions {
    /// The seed of a photo's random views: its sample id hashed with the views' seed, so a
    /// photo gets the same windows in every stage and shard.
    pub fn image_seed(&self, id: &str) -> u64 {
        let seed = match self.views {
            Views::Random { seed, .. } => seed,
            _ => 0,
        };
        xxhash_rust::xxh64::xxh64(id.as_bytes(), seed)
    }
}

/// Reads one photo of a samples dataset from under `root` and prepares it, or says why it
/// gives no image as the reject row preprocess and featurize write (`missing-file`,
/// `io-error`, or a [`DecodeError::reason`]).
pub fn prepare_photo(
    photo: &geoloc_core::photos::Photo,
    root: &std::path::Path,
    opts: &PrepareOptions,
) -> Result<Prepared, geoloc_core::dataset::Reject> {
    let path = root.join(&photo.image);
    let reject = |reason: &'static str, detail: String| geoloc_core::dataset::Reject {
        id: Some(photo.id.clone()),
        input: path.display().to_string(),
        line: None,
        reason,
        detail,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(reject("missing-file", "no such file".into()))
        }
        Err(e) => return Err(reject("io-error", e.to_string())),
    };
    prepare(&bytes, opts, opts.image_seed(&photo.id)).map_err(|e| reject(e.reason(), e.to_string()))
}
